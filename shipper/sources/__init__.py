"""Where log lines come from: discovery, identity, tailing and decoding of log files."""
