"""The README's promises that code can check: its opening commands and its nginx snippet."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from shardsync.daemon.config import DEFAULTS
from shardsync.daemon.nginx import render_nginx_location

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_opens_with_make_demo_and_make_test() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first_block
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_nginx_location_is_what_the_code_renders() -> None:
    block = re.search(r"```nginx\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no nginx block"
    assert block.group(1).rstrip("\n") == render_nginx_location(DEFAULTS["site_dir"])


# -- "Install it as a service" ------------------------------------------------------------------

REPO = README.parent


def section(title: str) -> str:
    """The README's text from the heading ``## title`` to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def install_commands() -> list[str]:
    """The commands of the section's first sh block, comments dropped."""
    block = re.search(r"```sh\n(.*?)```", section("Install it as a service"), re.S)
    assert block
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()
            if line.split("#")[0].strip()]


def unit_value(key: str) -> str:
    (line,) = [ln for ln in (REPO / "systemd" / "shardsync.service").read_text().splitlines()
               if ln.startswith(f"{key}=")]
    return line.split("=", 1)[1]


def test_the_venv_is_made_with_the_system_python_outside_any_home() -> None:
    commands = install_commands()
    venvs = [c for c in commands if " -m venv " in c]
    assert venvs == ["/usr/bin/python3 -m venv /opt/shardsync"]
    # ProtectHome=yes hides these from the service, and its user cannot enter them anyway.
    assert unit_value("ProtectHome") == "yes"
    for c in commands:
        assert not re.search(r"~|\$HOME|/root\b|/home\b", c), c
        assert not re.search(r"pip install (-e|--editable)\b", c), c


def test_the_install_steps_give_the_unit_what_it_runs() -> None:
    commands = install_commands()
    (venv,) = [c.split()[-1] for c in commands if " -m venv " in c]
    (pip,) = [c for c in commands if " install " in c and "/pip " in c]
    assert pip.startswith(f"{venv}/bin/pip install ")
    installed = {c.split()[-1]: c.split()[-2] for c in commands if c.startswith("install ")}
    for source in installed.values():  # every file installed is in the checkout
        assert (REPO / source).is_file(), source
    assert installed["/etc/shardsync/config.toml"] == "config.example.toml"
    assert unit_value("ExecStart") == f"{venv}/bin/shardsync run -c /etc/shardsync/config.toml"
    assert "/etc/systemd/system/" in installed and installed[
        "/etc/systemd/system/"] == "systemd/shardsync.service"
    sysusers = (REPO / "systemd" / "shardsync.sysusers").read_text()
    assert re.search(rf"^u {unit_value('User')} ", sysusers, re.M)


def test_the_first_config_loads_in_the_example(tmp_path: Path) -> None:
    from shardsync.daemon.config import load_config

    block = re.search(r"```toml\n(.*?)```", section("Install it as a service"), re.S)
    assert block
    example = (REPO / "config.example.toml").read_text()
    settings = example[:example.index("\n[[model]]\n")]  # the example's blocks, replaced
    config = tmp_path / "config.toml"
    # The example's paths are the service's; here they point into tmp_path.
    settings = settings.replace("/var/lib/shardsync", str(tmp_path / "state"))
    settings = settings.replace("/run/shardsync", str(tmp_path))
    config.write_text(settings + "\n" + textwrap.dedent(block.group(1)))
    assert [m.name for m in load_config(config).models] == ["blazeface"]


def test_gc_beside_the_service_is_refused_as_the_readme_says(tmp_path: Path) -> None:
    from shardsync.daemon.entrypoint import rewrite_paths
    from shardsync.store import LockedError, Store

    quoted = re.search(r'is refused while the service runs\*\* \("([^"]+)"\)',
                       " ".join(section("Install it as a service").split()))
    assert quoted, "the README does not quote the refusal"
    state, site = tmp_path / "state", tmp_path / "site"
    with Store(state, site, entry_point=rewrite_paths):  # the service's open store
        with Store(state, site, entry_point=rewrite_paths) as by_hand:
            try:
                by_hand.gc()
            except LockedError as exc:
                assert quoted.group(1) in " ".join(str(exc).split()), exc
            else:
                raise AssertionError("gc beside an open store was not refused")


def test_the_interval_jitter_is_the_schedulers() -> None:
    from shardsync.daemon.scheduler import JITTER

    assert f"±{JITTER * 100:.0f} %" in section("Install it as a service")
