"""The rehearsal: a whole gallery on one machine (`gibsey rehearse`, issue 11).

The gallery itself (N complete nodes, each its own `gibsey up`, Mosquitto, data directory,
gateway and mesh endpoint, meshed in network namespaces on a bridge when run as root, else
through loopback relays; either way a node can be partitioned) is gibsey.harness.gallery;
here `visitors.py` is the seeded stream of visitors, `cli.py` the command and its live terminal
view, `report.py` the HTML report.
"""
