"""Messages: accept — request schemas, the message table, the status machine, the submit path."""
