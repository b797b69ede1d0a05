"""What shipper tells its operators: named counters and gauges, and its own JSON logs."""
