"""The node daemon: event spine, router and the parts that hang off it."""
