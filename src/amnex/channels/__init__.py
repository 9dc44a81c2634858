"""Channels: carrier connections behind one small protocol (see `base`)."""
