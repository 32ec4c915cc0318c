"""The store's surface is ``shardsync.store.__all__``: every name in it exists, and the
daemon imports nothing else of the store (no ``shardsync.store.<module>``), so the
store's modules can change without the daemon noticing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from storehelpers import publish_model, versioned_model

import shardsync.daemon
import shardsync.store
from shardsync.store import NotFoundError, StorageError, Store, StoreStats
from shardsync.store._objects import CHUNK

STORE = "shardsync.store"
DAEMON_DIR = Path(shardsync.daemon.__file__).parent


def test_every_exported_name_exists() -> None:
    missing = [n for n in shardsync.store.__all__ if not hasattr(shardsync.store, n)]
    assert missing == []
    assert len(set(shardsync.store.__all__)) == len(shardsync.store.__all__)


def _module_name(path: Path) -> str:
    """``shardsync.daemon.x.y`` for ``daemon/x/y.py`` (a package for ``__init__.py``)."""
    parts = list(path.relative_to(DAEMON_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["shardsync", "daemon", *parts])


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (``level`` dots, relative to ``importer``)."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def surface_violations(source: str, importer: str, *, is_package: bool = False) -> list[str]:
    """Every import in ``source`` that reaches into the store past its package."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith(STORE + ".")]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module, node.level, importer, is_package)
            if target.startswith(STORE + "."):
                out.append(target)
            elif target == STORE:
                # `from shardsync.store import objects` imports a module of it all the same
                out += [f"{STORE}.{a.name}" for a in node.names
                        if a.name != "*" and a.name not in shardsync.store.__all__]
    return out


@pytest.mark.parametrize("source", [
    "import shardsync.store.objects",
    "import shardsync.store.objects as o",
    "from shardsync.store._objects import CHUNK",
    "from shardsync.store import objects",
    "from ..store.errors import StorageError",
    "from ..store import paths",
    "def f():\n    from shardsync.store.atomic import write_all\n",
])
def test_the_check_sees_every_form(source: str) -> None:
    assert surface_violations(source, "shardsync.daemon.sync") != []


@pytest.mark.parametrize("source", [
    "import shardsync.store",
    "from shardsync.store import Store, StorageError",
    "from shardsync import store",
    "from ..store import Store",
    "from .errors import StorageError",
    "from . import store",  # shardsync.daemon.store, not the store
])
def test_the_check_allows_the_package(source: str) -> None:
    assert surface_violations(source, "shardsync.daemon.sync") == []


def test_daemon_uses_only_the_store_package() -> None:
    files = sorted(DAEMON_DIR.rglob("*.py"))
    assert len(files) > 10
    found = {}
    for path in files:
        bad = surface_violations(path.read_text(), _module_name(path),
                                 is_package=path.name == "__init__.py")
        if bad:
            found[str(path.relative_to(DAEMON_DIR))] = bad
    assert found == {}


# -- the facade's read methods -------------------------------------------------------


def test_facade_reads_models_versions_and_objects(store: Store) -> None:
    v1 = publish_model(store, "m", versioned_model(1), now=1000.0)
    v2 = publish_model(store, "m", versioned_model(2, words=300_000), now=2000.0)
    assert store.model_names() == ["m"]
    assert store.current_id("m") == v2.id
    assert store.current_id("other") is None
    assert [h["version"] for h in store.history("m")] == [v1.id, v2.id]
    assert store.version("m", v1.id) == v1
    with pytest.raises(NotFoundError):
        store.version("m", "0" * 16)
    big = max(v2.files, key=lambda e: e.size)
    assert big.size > CHUNK
    blocks = list(store.iter_object(big.digest))
    assert len(blocks) > 1 and all(len(b) <= CHUNK for b in blocks)
    assert b"".join(blocks) == store.read_object(big.digest)
    assert store.has_object(big.digest)
    assert not store.has_object("0" * 64)
    with pytest.raises(NotFoundError):
        list(store.iter_object("0" * 64))


def test_stats_count_objects_and_what_dedupe_saved(store: Store) -> None:
    assert store.stats() == StoreStats(objects=0, bytes=0, saved=0)
    model = versioned_model(1)
    publish_model(store, "a", model)
    publish_model(store, "b", model)  # the same files: stored once, referenced twice
    size = len(model.manifest) + sum(len(b) for b in model.shards.values())
    assert store.stats() == StoreStats(objects=1 + len(model.shards), bytes=size, saved=size)


def test_iter_object_translates_oserror(store: Store, dirs: tuple[Path, Path]) -> None:
    digest = store.put_bytes(b"x" * 10)
    path = dirs[0] / "objects" / "sha256" / digest[:2] / digest
    path.unlink()
    path.mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(StorageError) as err:
        list(store.iter_object(digest, model="m"))
    assert err.value.model == "m" and err.value.file == digest
