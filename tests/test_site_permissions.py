"""site_dir is readable by a web server running as another user, whatever the umask of
whoever ran the sync; and `verify` names what such a server could not read.

Real parts: `shardsync sync` as a subprocess under umask 077, nginx (shardsync's own
``nginx-config``) with its workers as a system user made for the test, so that file
modes decide, as they do on a kiosk (root's workers would read anything).
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
from pathlib import Path

from e2e.webserver import run_nginx
from origin import Origin
from storehelpers import ModelFiles, tfjs_model
from synchelpers import cli_command, publish_on, write_config
from userhelpers import public_dir, system_user

from shardsync.daemon.nginx import render_nginx_config


def small() -> ModelFiles:
    """A graph-model of two shards in a subdirectory (a directory inside a version)."""
    return tfjs_model("graph-model", [{"w/group1-shard1of2.bin": b"\x01" * 8192,
                                       "w/group1-shard2of2.bin": b"\x02" * 4096}])


def site_files(site: Path) -> dict[str, bytes]:
    """Every regular file below ``site`` (temporaries aside): relative path -> bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(site):
        for f in files:
            p = Path(dirpath) / f
            if not f.startswith(".tmp-"):
                out[str(p.relative_to(site))] = p.read_bytes()
    return out


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sync_under_umask_077(origin: Origin, base: Path) -> Path:
    """`shardsync sync` (a real process, umask 077) of model m into base/state/site."""
    url = publish_on(origin, "m", small())
    state = base / "state"
    config = write_config(base / "conf", {"m": url}, state_dir=str(state),
                          site_dir=str(state / "site"))
    run = subprocess.run(cli_command("sync", "-c", config), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL, umask=0o077)
    assert run.returncode == 0, run.stderr
    return state / "site"


def test_a_sync_under_umask_077_is_served_by_nginx_as_another_user(
    origin: Origin, tmp_path: Path
) -> None:
    with public_dir() as base, system_user("ssweb") as web:
        site = sync_under_umask_077(origin, base)
        files = site_files(site)
        assert "m/model.json" in files and any("/w/group1-shard1of2.bin" in p for p in files)
        for dirpath, dirs, _files in os.walk(base / "state"):
            for d in [dirpath, *(os.path.join(dirpath, d) for d in dirs)]:
                assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
        with run_nginx(tmp_path / "nginx", lambda listen: render_nginx_config(
                site, listen=listen), user=web.name) as server:
            for rel, data in files.items():
                assert get(server.port, f"/models/{rel}") == (200, data), rel


def test_verify_names_what_the_web_server_cannot_read_and_repair_fixes_it(
    origin: Origin, tmp_path: Path
) -> None:
    """A shard without o+r and a version directory without o+x: nginx (as another user)
    answers 404 for them; verify reports each as site-unreadable by its full path (exit
    1), --repair gives back the bits, and nginx then serves them."""
    with public_dir() as base, system_user("ssweb") as web:
        site = sync_under_umask_077(origin, base)
        files = site_files(site)
        shard = next(p for p in files if p.endswith("w/group1-shard2of2.bin"))
        (site / shard).chmod(0o400)
        version_dir = site / "m" / "versions" / shard.split("/")[2]
        version_dir.chmod(0o700)
        config = base / "conf" / "shardsync.toml"
        with run_nginx(tmp_path / "nginx", lambda listen: render_nginx_config(
                site, listen=listen), user=web.name) as server:
            assert get(server.port, f"/models/{shard}")[0] == 404

            run = subprocess.run(cli_command("verify", "-c", config, "--json"),
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 1, run.stderr
            unreadable = {p["path"]: p for p in json.loads(run.stdout)["problems"]
                          if p["kind"] == "site-unreadable"}
            assert set(unreadable) == {str(version_dir), str(site / shard)}
            assert "mode 0700" in unreadable[str(version_dir)]["detail"]
            assert "mode 0400" in unreadable[str(site / shard)]["detail"]

            run = subprocess.run(cli_command("verify", "-c", config, "--repair"),
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            assert f"site-unreadable: file {site / shard}: " in run.stdout + run.stderr
            for rel, data in files.items():
                assert get(server.port, f"/models/{rel}") == (200, data), rel
        run = subprocess.run(cli_command("verify", "-c", config), capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and "site-unreadable" not in run.stdout + run.stderr
