"""The demo (`shardsync demo`, in :mod:`.run`), its local origin and its sample models.

Not the product: nothing outside this package and the tests imports it. The package
imports nothing itself, so ``python -m shardsync.daemon.demo.origin`` runs cleanly.
"""
