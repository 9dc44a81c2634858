"""Compliance: pure checks a message passes before it is stored (addresses now)."""
