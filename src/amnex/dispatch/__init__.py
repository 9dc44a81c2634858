"""Dispatch: claiming due messages with leases, sending them, retrying, recording outcomes."""
