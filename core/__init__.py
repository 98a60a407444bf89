"""The kernel every part shares: the event envelope and its topics, identity and keys, the Lamport
clock, the configuration loader, the QDPI symbol space and the one MQTT layer.

It imports no other part of gibsey (gibsey.dialcore's pure QDPI tables aside): the ledger, the
mesh and the node build on it, never the other way round (ARCHITECTURE.md, checked by
`lint-imports`).
"""
