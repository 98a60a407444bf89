"""Running nodes from outside, for the rehearsal, the tests and the benchmarks: Mosquitto
processes, relays, `gibsey up` processes, a whole gallery, a Debian root booted with systemd.

Never imported by the node itself (ARCHITECTURE.md, checked by `lint-imports`)."""
