"""The README's promises that code can check: its opening commands and its nginx snippet."""

from __future__ import annotations

import re
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
