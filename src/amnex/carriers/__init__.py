"""Carriers: configured carrier connections (connectors), the routes to them, and routing."""
