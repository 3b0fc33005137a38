"""Operator and CI tools beside the service: migrations, dead-letter inspection, the schema drift check."""
