"""Tests against a real Docker daemon (Debian's docker.io), isolated from any other daemon."""
