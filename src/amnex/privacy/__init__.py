"""Privacy: audit log now; encryption, retention and subject requests as they are built."""
