"""The gallery's control room: `gibsey monitor` writes Prometheus and Alertmanager's files."""
