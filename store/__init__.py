"""shardsync.store: the content-addressed store and atomic publishing (no network, no trio)."""
