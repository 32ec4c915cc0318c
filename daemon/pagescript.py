"""The page side's script: ``shardsync.js``, packaged with the daemon and published into site_dir.

The source is package data (``pagejs/shardsync.js``, plain ES2017, no build step), so
the wheel carries exactly the bytes the tests load in Chromium. :func:`publish` puts it
at ``site_dir/shardsync.js`` through the store's :meth:`~shardsync.store.Store.put_site_file`
(atomic, mode 0644, rewritten only when its bytes differ), which a kiosk page loads
from the site's root (``/models/shardsync.js`` with ``shardsync nginx-config``).
``shardsync sync`` and ``shardsync run`` publish it whenever they open the store, so an
upgraded shardsync brings its pages the matching script.
"""

from __future__ import annotations

from importlib.resources import files

from shardsync.store import Store

__all__ = ["PAGE_SCRIPT", "publish", "source"]

#: The script's file name, in the package and in site_dir; no model may have this name
#: (config.py refuses it), since site_dir/<name>/ is a model's directory.
PAGE_SCRIPT = "shardsync.js"


def source() -> bytes:
    """The packaged ``shardsync.js``, byte for byte."""
    return files("shardsync.daemon").joinpath("pagejs", PAGE_SCRIPT).read_bytes()


def publish(store: Store) -> bool:
    """Make ``site_dir/shardsync.js`` the packaged source; return whether it was rewritten.

    Raises StorageError (a disk error, or a directory of that name in the way).
    """
    return store.put_site_file(PAGE_SCRIPT, source())
