"""Shared helpers for the fetch and sync tests: TF.js models on a real origin, a config
file on disk, ``shardsync`` as a real subprocess, and checks of what got published.

Models are :class:`storehelpers.ModelFiles` (manifest bytes + shards by path), so the
store's helpers (``write_model``, ``assert_store_ok``, ``tree_snapshot``) apply to them.
The real and big models come from :mod:`shardsync.daemon.demo.samples` (written to disk,
read back with :func:`model_files`); :func:`tfjs_model` builds small models of any of
the three TF.js formats around given shard bytes, for tests that change or break them.

What is published is checked from the raw files in site_dir (:func:`assert_published`),
never through ``shardsync.store``, so a bug in the store cannot hide itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from e2e.webserver import NginxServer, run_nginx
from origin import Origin
from storehelpers import (
    ModelFiles,
    assert_published,
    published_files,
    store_at,
    tfjs_model,
    write_model,
)

from shardsync.daemon.config import ModelConfig
from shardsync.daemon.demo.samples import make_big_model, write_samples
from shardsync.daemon.entrypoint import manifest_groups, shard_relpath
from shardsync.daemon.fetch import Fetcher
from shardsync.daemon.httpclient import FetchPolicy, make_client
from shardsync.daemon.sync import Progress, Syncer, SyncResult
from shardsync.store import Store

__all__ = [
    "Hit",
    "NginxOrigin",
    "FAST",
    "SyncEnv",
    "assert_published",
    "big_model",
    "cli_command",
    "files_outside",
    "model_config",
    "model_files",
    "open_syncer",
    "origin_server",
    "publish_on",
    "published_files",
    "run_cli",
    "sample_models",
    "serve_directory",
    "sync",
    "sync_together",
    "tfjs_model",
    "write_config",
]

#: A FetchPolicy for tests: the same behaviour as the default, in milliseconds instead
#: of seconds (a retry waits at most 20 ms; a dead origin is noticed in 5 s). min_rate is
#: the default's (8 KiB/s) but over a short window; tests of slow origins set their own.
FAST = FetchPolicy(attempts=3, backoff_base=0.005, backoff_cap=0.02, retry_after_cap=5.0,
                   connect_timeout=5.0, read_timeout=5.0, rate_window=1.0)



# -- models ----------------------------------------------------------------------------


def model_files(directory: Path, manifest: str) -> ModelFiles:
    """The model whose manifest is ``directory/manifest``, read from disk: its shards by
    the file path each manifest path names (``./x.bin`` is ``x.bin``)."""
    data = (directory / manifest).read_bytes()
    groups = manifest_groups(json.loads(data)) or []
    paths = [shard_relpath(p) for g in groups for p in g["paths"]]
    shards = {p: (directory / p).read_bytes() for p in paths}
    return ModelFiles(manifest, data, shards)


def big_model(root: Path, total: int, *, seed: int = 0, name: str = "big") -> ModelFiles:
    """A layers-model of about ``total`` bytes in 4 MiB ``group1-shardKofM.bin`` shards,
    written to ``root/name/`` by :func:`shardsync.daemon.demo.samples.make_big_model`."""
    sample = make_big_model(root, total, seed=seed, name=name)
    return model_files(root / name, Path(sample.manifest).name)


def sample_models(root: Path) -> dict[str, ModelFiles]:
    """Every sample model of :func:`shardsync.daemon.demo.samples.write_samples`, written
    under ``root`` (each in ``root/<name>/``): name -> its files."""
    out = {}
    for sample in write_samples(root):
        out[sample.name] = model_files(root / sample.name, Path(sample.manifest).name)
    return out


def publish_on(origin: Origin, prefix: str, model: ModelFiles) -> str:
    """Write ``model`` under the origin's root at ``prefix/``; return its manifest URL."""
    assert origin.root is not None
    write_model(origin.root / prefix, model)
    return origin.url_for(f"{prefix}/{model.manifest_name}")


def files_outside(root: Path, *inside: Path) -> set[str]:
    """Every path below ``root`` except those below the directories ``inside``."""
    skip = {str(p) for p in inside}
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return out


# -- running a sync in-process --------------------------------------------------------------


@dataclass
class SyncEnv:
    """A store under ``state`` / ``site`` and a Syncer over one client (see open_syncer)."""

    state: Path
    site: Path
    store: Store
    syncer: Syncer


@asynccontextmanager
async def open_syncer(
    root: Path, *, policy: FetchPolicy = FAST, keep_versions: int = 2,
    concurrency: int = 4, max_model_bytes: int | None = None,
) -> AsyncIterator[SyncEnv]:
    """A Store in ``root/state`` publishing into ``root/site`` (no grace period, so
    ``keep_versions`` alone decides what is kept) and a Syncer with ``policy``."""
    state, site = root / "state", root / "site"
    with store_at(state, site, keep_versions=keep_versions, grace=0) as store:
        async with make_client(policy) as client:
            syncer = Syncer(store, Fetcher(client, policy), concurrency=concurrency,
                            max_model_bytes=max_model_bytes)
            yield SyncEnv(state, site, store, syncer)


def model_config(name: str, url: str) -> ModelConfig:
    """A model as a config file declares it (the interval matters only to the service)."""
    return ModelConfig(name=name, url=url, interval=1800.0)


async def sync(env: SyncEnv, name: str, url: str, progress: Progress | None = None) -> SyncResult:
    """One sync of the model ``name`` at ``url`` by ``env``'s syncer."""
    return await env.syncer.sync(model_config(name, url), progress)


async def sync_together(env: SyncEnv, urls: dict[str, str]) -> dict[str, SyncResult]:
    """Sync the models ``name -> url`` concurrently in one syncer; their results by name."""
    results: dict[str, SyncResult] = {}

    async def run(name: str, url: str) -> None:
        results[name] = await sync(env, name, url)

    async with trio.open_nursery() as nursery:
        for name, url in urls.items():
            nursery.start_soon(run, name, url)
    return results


# -- nginx as the origin ------------------------------------------------------------------

# One access-log line, tab-separated, unescaped (ETags hold quotes): status, body bytes,
# URI, the request's Range / If-Range / If-None-Match ("" when absent), and the serial
# number of the TCP connection it came on.
_LOG_FORMAT = ("$status\t$body_bytes_sent\t$request_uri\t$http_range\t$http_if_range\t"
               "$http_if_none_match\t$connection")
_LOG_LINE = re.compile(r"(\d{3})\t(\d+)\t([^\t]+)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(\d+)")

_NGINX_SERVER = """\
log_format shardsync_sync escape=none '{fmt}';
server {{
    listen {listen};
    root {root};
    access_log {log} shardsync_sync;
    types {{ application/json json; }}
    default_type application/octet-stream;
    location / {{ }}
}}
"""


def origin_server(listen: str, root: Path, log: Path, fmt: str = _LOG_FORMAT) -> str:
    """The nginx server block of a plain origin serving ``root`` at ``listen``, logging
    every request to ``log`` in the log format ``fmt`` (default: what :class:`Hit` reads)."""
    return _NGINX_SERVER.format(fmt=fmt, listen=listen, root=root, log=log)


@dataclass
class Hit:
    """One request as nginx logged it."""

    status: int
    body_bytes: int
    uri: str
    range: str
    if_range: str
    if_none_match: str
    connection: int


@dataclass
class NginxOrigin:
    """nginx serving ``root`` (see serve_directory); ``hits()`` reads its access log."""

    server: NginxServer
    root: Path
    log: Path

    def url_for(self, path: str) -> str:
        """The URL of ``path`` (relative to root)."""
        return f"{self.server.url}/{path}"

    def hits(self) -> list[Hit]:
        """Every request logged since the last clear(), oldest first."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            m = _LOG_LINE.fullmatch(line)
            assert m, f"unexpected access log line {line!r}"
            out.append(Hit(int(m[1]), int(m[2]), m[3], m[4], m[5], m[6], int(m[7])))
        return out

    def clear(self) -> None:
        """Empty the log (nginx keeps appending to the same file, O_APPEND)."""
        if self.log.exists():
            self.log.write_text("")


@contextmanager
def serve_directory(root: Path, workdir: Path) -> Iterator[NginxOrigin]:
    """Run a throwaway nginx on 127.0.0.1 serving ``root`` as a plain origin: nginx's own
    ETag / Last-Modified / Range / If-Range handling and sendfile, JSON typed as such,
    everything else application/octet-stream, and an access log of every request's
    status, body bytes, Range, If-Range, If-None-Match and connection. ``workdir`` holds nginx's
    config, pid, logs and temp files (tests/e2e/webserver.py runs it).
    """
    log = workdir / "origin-access.log"
    workdir.mkdir(parents=True, exist_ok=True)
    with run_nginx(workdir, lambda listen: origin_server(listen, root, log)) as server:
        yield NginxOrigin(server, root, log)


# -- the CLI as a subprocess -------------------------------------------------------------------


def write_config(
    directory: Path, models: Mapping[str, str], *,
    model_keys: Mapping[str, Mapping[str, Any]] | None = None, **keys: Any
) -> Path:
    """Write ``directory/shardsync.toml`` naming ``models`` (name -> URL); return its path.

    state_dir, site_dir and socket are ``state``, ``site`` and ``ctl.sock`` in
    ``directory`` unless ``keys`` says otherwise; other ``keys`` go in as they are.
    ``model_keys`` adds keys to a model's block (name -> {"public_keys": [...]}).
    """
    values: dict[str, Any] = {"state_dir": "state", "site_dir": "site", "socket": "ctl.sock",
                              **keys}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    for name, url in models.items():
        lines += ["", "[[model]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in (model_keys or {}).get(name, {}).items()]
    path = directory / "shardsync.toml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_command(*args: str | os.PathLike[str]) -> list[str]:
    """The argv of ``shardsync ARGS`` with this venv's interpreter."""
    return [sys.executable, "-m", "shardsync.daemon.cli", *map(str, args)]


def run_cli(
    *args: str | os.PathLike[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``shardsync ARGS`` to the end; return it (stdout and stderr captured as text)."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
