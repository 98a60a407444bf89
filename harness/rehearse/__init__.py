"""The rehearsal: a whole gallery on one machine (`gibsey rehearse`, issue 11).

`gallery.py` starts N complete nodes (each its own `gibsey up`, Mosquitto, data directory,
gateway and mesh endpoint, meshed in network namespaces on a bridge when run as root, else
through loopback relays; either way a node can be partitioned); `visitors.py` is
the seeded stream of visitors; `live.py` the terminal view; `report.py` the HTML report.
"""
