"""Drivers: what runs on the driver process for each job kind."""
