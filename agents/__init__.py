"""Stream agents, one module per input topic; each registers itself on the app when faust scans it."""
