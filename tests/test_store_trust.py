"""Trust records (``state_dir/trust/<name>.json``): what the daemon last accepted of a
model's signature, kept durably across reopenings, never silently lost when damaged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from storehelpers import store_at

from shardsync.store import IntegrityError, UnsafePathError


def test_a_trust_record_is_none_until_set_then_survives_reopening(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site) as store:
        assert store.trust_record("bert") is None
        store.set_trust_record("bert", {"version": 3, "keyid": "ab"})
        store.set_trust_record("bert", {"version": 4, "keyid": "ab"})
    with store_at(state, site) as store:  # a restart
        assert store.trust_record("bert") == {"version": 4, "keyid": "ab"}
        assert store.trust_record("other") is None
    path = state / "trust" / "bert.json"
    assert json.loads(path.read_text()) == {"version": 4, "keyid": "ab"}
    assert [p.name for p in path.parent.iterdir()] == ["bert.json"]  # no temporaries left


def test_a_damaged_trust_record_is_an_error_naming_it_not_absent(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site) as store:
        store.set_trust_record("bert", {"version": 9})
        (state / "trust" / "bert.json").write_text('{"version": 9')  # torn by hand
        with pytest.raises(IntegrityError) as info:
            store.trust_record("bert")
    assert "model bert: file trust/bert.json: trust record is damaged" in str(info.value)


def test_a_symlinked_trust_record_is_never_followed(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site) as store:
        (tmp_path / "elsewhere.json").write_text('{"version": 1}')
        os.symlink(tmp_path / "elsewhere.json", state / "trust" / "bert.json")
        with pytest.raises(UnsafePathError, match="trust/bert.json"):
            store.trust_record("bert")
        with pytest.raises(UnsafePathError):
            store.set_trust_record("../x", {"version": 1})
