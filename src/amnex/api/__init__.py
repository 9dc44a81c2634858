"""API: the HTTP surface — `/v1` for clients, `/admin/v1` for operators, health and metrics."""
