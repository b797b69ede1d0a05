"""shipper: a log shipping agent that follows Docker json-file logs and ships every line once."""

__version__ = "0.1.0"
