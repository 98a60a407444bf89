"""The node's HTTP gateway, live dashboard and metrics (issue 8)."""
