"""Accounts: the businesses that send, their API keys and senders, and the named operators."""
