"""Experiments: config schemas, the `galen` command line, entry points (train now; search, sweep, report later)."""
