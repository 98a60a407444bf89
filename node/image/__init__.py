"""The SD image: the files that turn a card into a node, and first boot."""
