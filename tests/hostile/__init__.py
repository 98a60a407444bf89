"""The hostile-client suite (issue 16): what an outsider, a full disk or a flood does to a node."""
