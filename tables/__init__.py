"""Faust tables of per-session state, and (later) the Redis table store."""
