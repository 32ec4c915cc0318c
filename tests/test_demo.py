"""`shardsync demo` runs the whole path offline and says what it did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_offline_and_publishes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "shardsync.daemon.cli", "demo", "--dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "body bytes sent by the origin: 0 " in r.stdout
    assert "FAILED" not in r.stdout
    assert "0 problem(s)" in r.stdout
    site = tmp_path / "site"
    entry = json.loads((site / "dense-4mib" / "model.json").read_text())
    paths = entry["weightsManifest"][0]["paths"]
    assert all(p.startswith("versions/") for p in paths)
    for p in paths:
        assert (site / "dense-4mib" / p).is_file()
    # two versions of the retrained model are kept (keep_versions = 2)
    assert len(list((site / "dense-4mib" / "versions").iterdir())) == 2
