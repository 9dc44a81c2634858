"""Email: what the email channel needs beyond SMTP — one-click unsubscribe links and tokens."""
