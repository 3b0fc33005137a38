"""Faust web views: HTTP API, streams, health and the console page."""
