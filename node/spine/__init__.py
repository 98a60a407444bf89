"""The event spine: the node's MQTT connection, the router that validates and dispatches every
event, the embedded broker, and Home Assistant discovery."""
