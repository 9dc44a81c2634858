"""Channels: SMS over SMPP 3.4 — our own codec and text encodings (session and connector next)."""
