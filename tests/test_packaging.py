"""What a built wheel holds for a packager and a `pip install` user: the unit, the
sysusers and tmpfiles files and config.example.toml under ``share/shardsync/``, the
README and LICENSE under ``share/doc/shardsync/`` (pip installs a wheel's data scheme
under the prefix: ``/opt/shardsync/share/...`` for the unit's venv), and the LICENSE in
the metadata. The wheel is built by pip from a copy of this tree, and read as a zip."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Where each shipped file comes from in the tree, by its path below the install prefix.
SHIPPED = {
    "share/shardsync/shardsync.service": "systemd/shardsync.service",
    "share/shardsync/shardsync.sysusers": "systemd/shardsync.sysusers",
    "share/shardsync/shardsync.tmpfiles": "systemd/shardsync.tmpfiles",
    "share/shardsync/config.example.toml": "config.example.toml",
    "share/doc/shardsync/README.md": "README.md",
    "share/doc/shardsync/LICENSE": "LICENSE",
}

_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                     ".*_cache", ".typecheck")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel `pip wheel . --no-deps` builds, from a copy of the tree (a build in place
    would race another test run's build/ directory). pip's build isolation brings the
    setuptools pyproject.toml requires (>= 77, for `license-files`)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE, symlinks=True)
    out = base / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(out),
                        "--no-deps", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("shardsync-*.whl")
    return zipfile.ZipFile(whl)


def _data_dir(wheel: zipfile.ZipFile) -> str:
    (dist_info,) = {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n}
    return dist_info.removesuffix(".dist-info") + ".data/data/"


@pytest.mark.parametrize("installed", sorted(SHIPPED))
def test_the_wheel_ships_the_file_as_the_tree_has_it(wheel: zipfile.ZipFile,
                                                     installed: str) -> None:
    assert wheel.read(_data_dir(wheel) + installed) == (ROOT / SHIPPED[installed]).read_bytes()


def test_the_wheel_carries_the_license_it_declares(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    headers = wheel.read(meta).decode()
    assert "License-Expression: Apache-2.0" in headers.splitlines()
    assert "License-File: LICENSE" in headers.splitlines()
    (lic,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(lic).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole text, not a stub


def test_everything_shipped_is_named_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    data = _data_dir(wheel)
    assert sorted(n.removeprefix(data) for n in wheel.namelist() if n.startswith(data)) == \
        sorted(SHIPPED)
