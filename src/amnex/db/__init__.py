"""Storage: engines, the unit of work (the only committer), model base, column types."""
