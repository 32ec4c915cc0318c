"""The page script: ``shardsync sync`` and ``shardsync run`` publish the packaged
``shardsync.js`` at site_dir's root, keep it equal to the source, and the wheel ships it.

What the script does in a browser is tests/test_e2e_browser.py's part.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess, short_dir
from synchelpers import publish_on, run_cli, tfjs_model, write_config

from shardsync.daemon.pagescript import PAGE_SCRIPT, source

#: The script as it is in the repository (the package data setuptools installs).
REPO_SOURCE = Path(__file__).resolve().parent.parent / "daemon" / "pagejs" / PAGE_SCRIPT


def _config(origin: Origin, tmp_path: Path, **keys: str) -> Path:
    model = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x01" * 4096}], tag="p")
    return write_config(tmp_path / "conf", {"m": publish_on(origin, "m", model)}, **keys)


def _sync(config: Path) -> None:
    run = run_cli("sync", "-c", config)
    assert run.returncode == 0, run.stderr


def test_the_packaged_source_is_the_repository_file() -> None:
    assert source() == REPO_SOURCE.read_bytes()
    assert b"window.shardsync" in source()


def test_sync_publishes_the_script_and_rewrites_it_when_it_differs(
    origin: Origin, tmp_path: Path
) -> None:
    config = _config(origin, tmp_path)
    published = tmp_path / "conf" / "site" / PAGE_SCRIPT
    _sync(config)
    assert published.read_bytes() == source()
    assert stat.S_IMODE(published.stat().st_mode) == 0o644
    ino = published.stat().st_ino

    _sync(config)  # nothing to do: the same file, not rewritten
    assert published.stat().st_ino == ino

    published.write_bytes(b"// an older shardsync's script\n")  # as an upgrade finds it
    _sync(config)
    assert published.read_bytes() == source()
    assert published.stat().st_ino != ino  # replaced by a rename, not written in place


def test_sync_replaces_a_symlinked_script_without_following_it(
    origin: Origin, tmp_path: Path
) -> None:
    config = _config(origin, tmp_path)
    site = tmp_path / "conf" / "site"
    site.mkdir(parents=True)
    outside = tmp_path / "outside.js"
    outside.write_bytes(b"someone else's file")
    (site / PAGE_SCRIPT).symlink_to(outside)
    _sync(config)
    assert outside.read_bytes() == b"someone else's file"
    assert not (site / PAGE_SCRIPT).is_symlink()
    assert (site / PAGE_SCRIPT).read_bytes() == source()


def test_the_service_publishes_the_script_when_it_starts(origin: Origin, tmp_path: Path) -> None:
    with short_dir() as sockets:
        config = _config(origin, tmp_path, socket=str(sockets / "ctl.sock"))
        published = tmp_path / "conf" / "site" / PAGE_SCRIPT
        published.parent.mkdir(parents=True)
        published.write_bytes(b"// stale\n")
        notify = NotifySocket(sockets / "notify")
        try:
            with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
                svc.start()  # READY=1: the script was published before
                assert published.read_bytes() == source()
                assert stat.S_IMODE(published.stat().st_mode) == 0o644
                assert svc.stop() == 0
        finally:
            notify.close()


def test_the_wheel_ships_the_script(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ beside the sources it builds.
    tree = tmp_path / "src"
    shutil.copytree(REPO_SOURCE.parent.parent.parent, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".typecheck", "*cache*", "build", "*.egg-info", "__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(tree)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("shardsync-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read(f"shardsync/daemon/pagejs/{PAGE_SCRIPT}") == source()


#: Syntax newer than ES2017 (the script's promise: kiosk browsers can be old): object
#: spread/rest, optional chaining, nullish coalescing, async iteration, optional catch
#: binding, numeric separators between digits, private fields.
_AFTER_ES2017 = [r"\.\.\.", r"\?\.(?!\d)", r"\?\?", r"\bfor\s+await\b", r"\bcatch\s*\{",
                 r"\d_\d", r"#[A-Za-z_]"]


def test_the_script_uses_no_syntax_after_es2017() -> None:
    """A token check, not a parser: a line comment is dropped before matching."""
    code = [(i, re.sub(r"(^|\s)//.*$", "", line))
            for i, line in enumerate(source().decode().splitlines(), 1)]
    found = [(i, pat, line.strip()) for i, line in code for pat in _AFTER_ES2017
             if re.search(pat, line)]
    assert found == []
    # Self-check: each pattern catches what it is for.
    for sample in ("f(...xs)", "a?.b", "a ?? b", "for await (x of y)", "catch {", "1_000",
                   "this.#x"):
        assert any(re.search(p, sample) for p in _AFTER_ES2017), sample
