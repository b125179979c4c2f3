"""Parsers of aiida-optddap."""
