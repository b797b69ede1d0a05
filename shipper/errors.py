"""The exceptions shipper raises: one tree, so callers catch as broadly or as narrowly as they need.

```
ShipperError                    every error shipper raises on purpose
├── ConfigError                 the config file is unreadable, malformed or invalid (exit code 2)
├── CheckpointError             the checkpoint file cannot be read or written
│   └── CheckpointCorruptError  the checkpoint file exists but its content is unusable
└── SinkError                   an output could not deliver a batch
    ├── RetryableSinkError      worth retrying: timeout, connection reset, 429, 5xx …
    └── FatalSinkError          retrying cannot help: bad credentials, unknown index …
```

Messages must not quote configuration values or log content: either may hold a secret.
"""

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "ConfigError",
    "FatalSinkError",
    "RetryableSinkError",
    "ShipperError",
    "SinkError",
]


class ShipperError(Exception):
    """Base class of every error shipper raises on purpose."""


class ConfigError(ShipperError):
    """The configuration cannot be used; the message names the file and key path of each problem."""


class CheckpointError(ShipperError):
    """The checkpoint file cannot be read or written."""


class CheckpointCorruptError(CheckpointError):
    """The checkpoint file exists but its content cannot be trusted."""


class SinkError(ShipperError):
    """An output could not deliver a batch."""


class RetryableSinkError(SinkError):
    """A delivery failure that may succeed if the same batch is sent again later."""


class HeldSinkError(RetryableSinkError):
    """The destination refuses for a reason only an operator can fix (credentials, privileges, a
    missing index): retried without limit and reported loudly at every attempt, never
    dead-lettered, so no checkpoint moves past what was refused."""


class FatalSinkError(SinkError):
    """A delivery failure that sending the same batch again cannot fix."""
