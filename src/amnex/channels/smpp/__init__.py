"""Channels: SMS over SMPP 3.4 — our own codec, text encodings, session and connector."""
