"""Data paths: the pumps that carry bytes between two connected sockets."""
