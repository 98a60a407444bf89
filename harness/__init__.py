"""Running nodes from outside, for the rehearsal, the tests and the benchmarks. One job a module:

- waiting.py: deadlines (wait_until, wait_port, stop_process) and GalleryError
- ports.py: free TCP ports below the ephemeral range
- mosquitto.py: a Mosquitto process (the gallery's brokers, the tests' and benchmarks')
- turns.py: visitors' glyph turns and the node's answers across a broker kill -9 and restart
- flood.py: a flood of turns under thousands of names, /api/status probed, every turn accounted
- loopthread.py: an asyncio loop in a daemon thread, for synchronous callers
- relay.py: loopback TCP relays between nodes, to cut a node off the mesh
- watch.py: a client (core/mqtt.py) on a node's broker: the virtual dial and the event tap
- nodeproc.py: one `gibsey up` process (start, ready, gateway, ledger, stop)
- gallery.py: N nodes meshed in a room (loopback or network namespaces)
- testroot.py: a Debian root booted with systemd-nspawn
- rehearse/: `gibsey rehearse`

Never imported by the node itself (ARCHITECTURE.md, checked by `lint-imports`)."""
