"""Operators' and developers' commands, registered with faust's CLI (``faust -A app <command> --help``)."""
