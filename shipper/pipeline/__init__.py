"""The stages between reading and the outputs: acks, batching, sending, and the pipeline itself."""
