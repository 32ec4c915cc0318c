"""A throwaway nginx on loopback serving a directory, for the benchmarks.

The benchmarks measure shardsync against a real web server, as the kiosks' origins
are. Running nginx for tests already exists (``tests/e2e/webserver.py`` starts
``nginx -p DIR -c CONF -g 'daemon off;'`` with every path in a temporary directory)
and so does serving a directory as an origin with an access log of body bytes
(``tests/synchelpers.serve_directory``); this module makes ``tests/`` importable from
``bench/`` and re-exports that, so there is one nginx setup, not two.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from synchelpers import Hit, NginxOrigin, serve_directory  # noqa: E402

__all__ = ["Hit", "NginxOrigin", "serve_directory"]
