"""A really full disk (a small tmpfs): the failing model is named with its file and the
reason, the other models are still done, what was published stays published, and the
next sync after space is freed completes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from origin import Origin
from storehelpers import mounted_tmpfs

from shardsync.daemon.demo.samples import make_big_model, write_samples

TMPFS_SIZE = "6m"  # holds the small models, not the 12 MiB one


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", TMPFS_SIZE) as mnt:
        yield mnt


def _sync(conf: Path) -> tuple[int, dict, str]:
    r = subprocess.run([sys.executable, "-m", "shardsync.daemon.cli", "sync", "-c", str(conf),
                        "--json"], capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout), r.stderr


def test_full_disk_fails_one_model_clearly_and_loses_nothing(tmp_path: Path,
                                                              small_disk: Path) -> None:
    root = tmp_path / "origin"
    write_samples(root)
    make_big_model(root, 12 * 1024 * 1024, name="big")
    with Origin(root) as origin:
        conf = tmp_path / "shardsync.toml"
        models = [("blazeface", "blazeface/blazeface.json")]
        text = [f'state_dir = "{small_disk}/state"', f'site_dir = "{small_disk}/site"',
                'socket = "ctl.sock"']
        for name, path in models:
            text += ["[[model]]", f'name = "{name}"', f'url = "{origin.url_for(path)}"']
        conf.write_text("\n".join(text) + "\n")
        code, out, _ = _sync(conf)
        assert code == 0, out
        entry = small_disk / "site/blazeface/blazeface.json"
        before = entry.read_bytes()

        conf.write_text(conf.read_text() + "[[model]]\nname = \"big\"\n"
                        f'url = "{origin.url_for("big/model.json")}"\n')
        code, out, err = _sync(conf)
        assert code == 1
        results = {m["name"]: m for m in out["models"]}
        assert results["blazeface"]["ok"] is True
        error = results["big"]["error"]
        assert results["big"]["ok"] is False
        assert "model big" in error and "No space left on device" in error
        assert "group1-shard" in error  # the file it was writing
        assert entry.read_bytes() == before  # the published version is untouched
        assert not (small_disk / "site/big").exists()
        assert json.loads(entry.read_bytes())["weightsManifest"][0]["paths"][0].startswith(
            "versions/")

        # more room (remount bigger), and the next sync completes from the partials
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        origin.reset_counters()
        code, out, _ = _sync(conf)
        assert code == 0, out
        assert (small_disk / "site/big/model.json").is_file()
        big_bytes = sum(p.stat().st_size for p in (root / "big").glob("*.bin"))
        assert origin.bytes_sent("big/*.bin") < big_bytes  # resumed, not started over
