"""The unit file passes systemd's own checks (`verify` clean, `security` exposure <= 1.1),
and the files beside it (sysusers, tmpfiles) do what the unit expects, by systemd's own
tools run on a scratch root."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "shardsync.service"
INSTALLED = "/opt/shardsync/bin/shardsync"


SYSUSERS = UNIT.parent / "shardsync.sysusers"
TMPFILES = UNIT.parent / "shardsync.tmpfiles"

#: The most `systemd-analyze security` may score the unit (it scores 1.1 today; issue 13).
MAX_EXPOSURE = 1.1


def _unit_for_this_machine(tmp_path: Path, text: str | None = None) -> Path:
    """The unit (or ``text``) with ExecStart pointing at this venv's shardsync (verify
    checks that it exists)."""
    exe = shutil.which("shardsync", path=str(Path(sys.executable).parent))
    assert exe, "the shardsync console script is not installed in this venv"
    text = UNIT.read_text() if text is None else text
    assert INSTALLED in text
    out = tmp_path / "shardsync.service"
    out.write_text(text.replace(INSTALLED, exe))
    return out


def _verify(unit: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stderr + r.stdout


def _exposure(unit: Path) -> float:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def _setting(text: str, key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", text, re.M)
    assert m, f"the unit has no {key}="
    return m[1]


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
    sysusers = SYSUSERS.read_text().splitlines()
    assert any(re.match(r"^u\s+shardsync\s", line) for line in sysusers)


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    _verify(_unit_for_this_machine(tmp_path))


def test_security_exposure_at_most_1_1(tmp_path: Path) -> None:
    assert _exposure(_unit_for_this_machine(tmp_path)) <= MAX_EXPOSURE


def test_a_bad_config_stops_the_unit_instead_of_restarting_it(tmp_path: Path) -> None:
    """`shardsync run` on a bad config exits 2 (a real process), and the unit tells systemd
    not to restart on 2: Restart=on-failure every 5 s would never reach the start limit."""
    text = UNIT.read_text()
    assert _setting(text, "Restart") == "on-failure"
    assert "2" in _setting(text, "RestartPreventExitStatus").split()
    bad = tmp_path / "config.toml"
    bad.write_text('state_dir = "state"\nno_such_key = 1\n')
    r = subprocess.run([sys.executable, "-m", "shardsync.daemon.cli", "run", "-c", str(bad)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr


def test_documentation_is_a_file_that_pip_installs() -> None:
    """Documentation= names a file under the prefix ExecStart= runs from, which the wheel's
    data scheme installs there (tests/test_packaging.py checks the wheel holds it)."""
    text = UNIT.read_text()
    doc = _setting(text, "Documentation")
    prefix = INSTALLED.removesuffix("/bin/shardsync")
    assert doc.startswith(f"file://{prefix}/"), doc
    rel = doc.removeprefix(f"file://{prefix}/")
    assert rel == "share/doc/shardsync/README.md"
    pyproject = tomllib.loads((UNIT.parent.parent / "pyproject.toml").read_text())
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    assert "README.md" in data_files[str(Path(rel).parent)]


def test_read_write_paths_is_explained_and_works_once_uncommented(tmp_path: Path) -> None:
    """The commented ReadWritePaths= line says why (ProtectSystem=strict), and the unit an
    operator makes by uncommenting it is still clean and as tightly confined."""
    text = UNIT.read_text()
    assert _setting(text, "ProtectSystem") == "strict"
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("#ReadWritePaths=/"))
    comment = "\n".join(lines[max(0, i - 6):i])
    assert "ProtectSystem=strict" in comment and "site_dir" in comment
    assert not re.search(r"^ReadWritePaths=", text, re.M)  # nothing opened by default
    edited = _unit_for_this_machine(tmp_path, text.replace("#ReadWritePaths=", "ReadWritePaths="))
    _verify(edited)
    assert _exposure(edited) <= MAX_EXPOSURE


def test_sysusers_and_tmpfiles_make_what_the_unit_expects(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles, on a scratch root, create user shardsync and
    its directories with the unit's StateDirectoryMode= and RuntimeDirectoryMode=."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in
              (root / "etc" / "passwd").read_text().splitlines()}
    assert "shardsync" in passwd
    uid, gid = int(passwd["shardsync"][2]), int(passwd["shardsync"][3])
    r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(TMPFILES)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = UNIT.read_text()
    for path, key in (("var/lib/shardsync", "StateDirectoryMode"),
                      ("run/shardsync", "RuntimeDirectoryMode")):
        st = (root / path).stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), path
        assert stat.S_IMODE(st.st_mode) == int(_setting(text, key), 8), path
    assert f"/{passwd['shardsync'][5].lstrip('/')}" == "/var/lib/shardsync"
