"""shardsync.daemon: config, TF.js manifests, fetching, sync, the service and the CLI."""

__version__ = "0.1.0"
