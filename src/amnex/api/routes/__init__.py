"""API: thin routers, one per resource; each calls services and renders their results."""
