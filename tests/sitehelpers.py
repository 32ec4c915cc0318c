"""A shardsync site as another shardsync's origin: the upstream's site_dir served by a
real nginx exactly as ``shardsync nginx-config`` prints it, and that nginx's access log
as the account of what a downstream cost (tests/test_upstream.py,
tests/test_upstream_signed.py).

The log is nginx's ``combined`` format (the throwaway nginx.conf's, outside the server
block under test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.webserver import NginxServer, run_nginx
from storehelpers import ModelFiles, tfjs_model
from synchelpers import run_cli, write_config

from shardsync.daemon.nginx import render_nginx_config

SHARD = 96 * 1024  # bytes per shard: big enough that a body is told from a 304 at a glance


def model(changed: bytes = b"\x02") -> ModelFiles:
    """Three shards of one group; ``changed`` fills the second, so two releases differ
    in that shard only (the manifest, sized by the group, stays the same)."""
    return tfjs_model("layers-model", [{"group1-shard1of3.bin": b"\x01" * SHARD,
                                        "group1-shard2of3.bin": changed * SHARD,
                                        "group1-shard3of3.bin": b"\x03" * SHARD}])


@dataclass
class Hit:
    method: str
    uri: str
    status: int
    body_bytes: int


# nginx's "combined": ... "GET /models/m/model.json HTTP/1.1" 200 1234 "-" "python-httpx/..."
_COMBINED = re.compile(r'[^"]*"(\w+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+) .*')


def hits(server: NginxServer) -> list[Hit]:
    """Every request nginx logged so far, oldest first; the log is emptied."""
    log = server.dir / "access.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    out = []
    for line in lines:
        m = _COMBINED.fullmatch(line)
        assert m, f"unexpected access log line {line!r}"
        out.append(Hit(m[1], m[2], int(m[3]), int(m[4])))
    return out


@contextmanager
def serve_site(tmp_path: Path) -> Iterator[NginxServer]:
    """nginx serving the upstream's site_dir (``tmp_path/up/site``, created here) as
    nginx-config has it, from ``tmp_path/nginx``."""
    up_site = tmp_path / "up" / "site"
    up_site.mkdir(parents=True)
    with run_nginx(tmp_path / "nginx", lambda listen: render_nginx_config(
            up_site, listen=listen)) as server:
        yield server


def sync_result(base: Path, url: str, **model_keys: Any) -> dict[str, Any]:
    """``shardsync sync --json`` of the model ``m`` at ``url`` in ``base`` (``model_keys``
    go into its ``[[model]]``, e.g. ``public_keys``); its result, ok or not."""
    keys: Mapping[str, Mapping[str, Any]] = {"m": model_keys}
    config = write_config(base, {"m": url}, model_keys=keys)
    done = run_cli("sync", "-c", config, "--json")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    (result,) = json.loads(done.stdout)["models"]
    assert result["ok"] == (done.returncode == 0), done.stdout + done.stderr
    return dict(result)


def sync(base: Path, url: str, **model_keys: Any) -> str:
    """:func:`sync_result`, which must succeed; the version id."""
    result = sync_result(base, url, **model_keys)
    assert result["ok"], result
    return str(result["version"])
