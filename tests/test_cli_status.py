"""`shardsync status` finds the service from a config even when that config is broken
(the service runs the previous one and reports the error), and `--json` always prints
one JSON document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardsync.daemon.cli", "status", *args],
                          capture_output=True, text=True, timeout=60)


def test_status_of_a_broken_config_still_asks_its_socket(tmp_path: Path) -> None:
    conf = tmp_path / "shardsync.toml"
    conf.write_text('socket = "run/ctl.sock"\nbogus_key = 1\n')
    r = _status("-c", str(conf), "--json")
    assert r.returncode == 3  # nobody answers
    doc = json.loads(r.stdout)
    assert doc["running"] is False
    assert doc["socket"] == str(tmp_path / "run" / "ctl.sock")
    assert "bogus_key" in r.stderr  # the config error is still said


def test_status_table_when_not_running_says_so(tmp_path: Path) -> None:
    r = _status("--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 3
    assert r.stdout == ""
    assert "not running" in r.stderr and str(tmp_path / "none.sock") in r.stderr
