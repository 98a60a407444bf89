"""ZeroMQ gossip of the ledger's feeds between the nodes of a gallery (issue 5)."""
