"""What happens to records between reading and the outputs: container metadata, and more."""
