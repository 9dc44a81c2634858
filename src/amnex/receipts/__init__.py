"""Receipts: delivery receipts and inbound messages — parsing (pure) and applying them."""
