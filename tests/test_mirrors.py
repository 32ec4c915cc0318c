"""``mirrors`` (docs/design.md, "Mirrors and file:// URLs"): tried in order when ``url``
fails, the whole model from one source, the same version id whichever served it.

Sources are real: test origins on 127.0.0.1 (one stopped, one failing by its fault
switches), directories read as ``file://`` URLs, and the real ``shardsync`` CLI and
service for the config and the status. What moved is judged from each origin's own
request log.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest
from synchelpers import run_cli

from shardsync.daemon.config import load_config
from shardsync.daemon.errors import ConfigError

# -- config ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardsync.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_mirrors_are_read_like_url_with_their_userinfo_split_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
        [[model]]
        name = "m"
        url = "https://origin.example/m/model.json"
        mirrors = ["http://gw:s%40cret@gateway.lan/m/model.json", "file:///media/usb/m/model.json"]
        """))
    (m,) = cfg.models
    assert m.mirrors == ("http://gateway.lan/m/model.json", "file:///media/usb/m/model.json")
    assert m.mirror_userinfo == (("gw", "s@cret"), None)
    assert "cret" not in repr(m)
    assert [(s.url, s.userinfo, s.mirrors) for s in m.sources()] == [
        ("https://origin.example/m/model.json", None, ()),
        ("http://gateway.lan/m/model.json", ("gw", "s@cret"), ()),
        ("file:///media/usb/m/model.json", None, ())]
    # A mirror's download records are kept like url's (gc and prune_downloads).
    assert cfg.manifest_urls == {s.url for s in m.sources()}


@pytest.mark.parametrize(("value", "why"), [
    ('"http://gw/m/model.json"', "must be a list"),
    ('[3]', "mirror 1 must be a string"),
    ('["http://gw/m/model.json", "ftp://u:hunter2@gw/m/model.json"]', "mirror 2: URL"),
    ('["file:///media/../m/model.json"]', "mirror 1: file URL"),
    ('["http://gw/m/other.json"]', "names the manifest 'other.json', not 'model.json'"),
    ('["https://origin.example/m/model.json"]', "listed twice"),
    ('["http://gw/m/model.json", "http://gw/m/model.json"]', "mirror 2: 'http://gw/m/model.json' "
                                                             "is listed twice"),
])
def test_a_bad_mirror_is_a_config_error_naming_the_key_and_line(
    tmp_path: Path, value: str, why: str
) -> None:
    path = write(tmp_path, f"""
        interval = "1h"

        [[model]]
        name = "m"
        url = "https://origin.example/m/model.json"
        mirrors = {value}
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.key, err.line) == ("model[1].mirrors", 6), str(err)
    assert why in str(err) and "hunter2" not in str(err)
    run = run_cli("sync", "-c", path)
    assert run.returncode == 2 and "model[1].mirrors" in run.stderr, run.stderr


def test_an_origin_that_signs_what_a_mirror_serves_holds_the_model_to_its_keys(
    tmp_path: Path,
) -> None:
    key = "ed25519:" + base64.b64encode(bytes(range(32))).decode()
    cfg = load_config(write(tmp_path, f"""
        [[origin]]
        prefix = "http://gateway.lan/"
        public_keys = ["{key}"]

        [[model]]
        name = "m"
        url = "https://origin.example/m/model.json"
        mirrors = ["http://gateway.lan/m/model.json"]
        """))
    assert cfg.models[0].public_keys == (bytes(range(32)),)
