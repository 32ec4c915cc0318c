"""The unit file passes systemd's own checks: `verify` clean, `security` exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "shardsync.service"
INSTALLED = "/opt/shardsync/bin/shardsync"


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's shardsync (verify checks it exists)."""
    exe = shutil.which("shardsync", path=str(Path(sys.executable).parent))
    assert exe, "the shardsync console script is not installed in this venv"
    text = UNIT.read_text()
    assert INSTALLED in text
    out = tmp_path / "shardsync.service"
    out.write_text(text.replace(INSTALLED, exe))
    return out


def test_unit_has_the_contract_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "User=shardsync", "StateDirectory=shardsync", "RuntimeDirectory=shardsync"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    # Above systemd's default soft limit of 1024 open files (issue 14: an idle-client flood
    # and the downloads shared it).
    m = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
    assert m and int(m[1]) > 1024
    # DynamicUser= would put StateDirectory= under /var/lib/private (0700): nginx could
    # not reach site_dir. The static user comes from the sysusers file instead.
    assert "DynamicUser=yes" not in text.splitlines()
    sysusers = (UNIT.parent / "shardsync.sysusers").read_text().splitlines()
    assert any(re.match(r"^u\s+shardsync\s", line) for line in sysusers)


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stderr + r.stdout


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
