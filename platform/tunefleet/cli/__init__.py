"""The `tunefleet` command line."""
