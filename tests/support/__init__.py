"""Helpers shared by the tests: real servers, isolated topics and databases, worker processes."""
