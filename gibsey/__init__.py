"""Gibsey node: every part of the node lives under this one import namespace.

gibsey.node   - the daemon: event spine, router, runtime, agents, gateway, watchdog
gibsey.ledger - signed hash-chained feeds and the gift economy
gibsey.mesh   - ZeroMQ gossip of the feeds between nodes
gibsey.bench  - benchmarks run by `gibsey bench`
"""

__version__ = "0.1.0"
