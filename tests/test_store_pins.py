"""Pins in the store (store/_pins.py, Store.pin/unpin/rollback/hold): a pinned model keeps
its version current across publishes, reopenings and a crash inside pin(); the kept
rules never remove the pinned or the held-back version; rollback refuses what is not
kept, listing what is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from storehelpers import (
    assert_published,
    publish_model,
    record_model,
    store_at,
    store_problems,
    versioned_model,
)

from shardsync.store import IntegrityError, NotFoundError, Pin


def test_rollback_publishes_the_previous_version_again_and_pins_it(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    m1, m2 = versioned_model(1), versioned_model(2)
    with store_at(state, site) as store:
        v1 = publish_model(store, "m", m1, now=100.0)
        v2 = publish_model(store, "m", m2, now=200.0)
        pin = store.rollback("m", now=300.0)
        assert pin == Pin(v1.id, 300.0, None)
        assert store.current_id("m") == v1.id
        assert assert_published(site, "m", m1) == v1.id
        assert store.kept("m", now=300.0)[:2] == [v1.id, v2.id]
        # Rolling back again, by default, goes to the other one.
        assert store.rollback("m", now=400.0).version == v2.id
        assert assert_published(site, "m", m2) == v2.id
    assert store_problems(state, site) == []


def test_a_pin_holds_back_what_a_publish_brings_and_survives_reopening(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    m1, m2, m3 = versioned_model(1), versioned_model(2), versioned_model(3)
    with store_at(state, site, keep_versions=1, grace=0) as store:
        v1 = publish_model(store, "m", m1, now=100.0)
        store.pin("m", now=150.0)
        v2 = record_model(store, "m", m2)
        assert store.publish(v2, now=200.0) is False
        assert store.pinned("m") == Pin(v1.id, 150.0, v2.id)
    assert json.loads((state / "pins" / "m.json").read_text()) == {
        "since": 150.0, "version": v1.id, "waiting": v2.id}
    with store_at(state, site, keep_versions=1, grace=0) as store:
        assert store.pinned("m") == Pin(v1.id, 150.0, v2.id)
        assert assert_published(site, "m", m1) == v1.id
        # A newer offer replaces the one waiting; the older one goes (keep_versions=1).
        v3 = record_model(store, "m", m3)
        assert store.publish(v3, now=300.0) is False
        assert store.kept("m", now=300.0) == [v1.id, v3.id]
        assert set(store.versions.ids("m")) == {v1.id, v3.id}
        # The origin back at the pinned version: nothing waits.
        assert store.hold(v1, now=310.0) is True
        assert store.pinned("m") == Pin(v1.id, 150.0, None)
        assert store.hold(v3) is True and store.pinned("m") == Pin(v1.id, 150.0, v3.id)
        # Unpinning publishes what was held back, from the store alone.
        assert store.unpin("m", now=400.0) == Pin(v1.id, 150.0, v3.id)
        assert store.pinned("m") is None and not (state / "pins" / "m.json").exists()
        assert store.current_id("m") == v3.id
        assert assert_published(site, "m", m3) == v3.id
        assert store.hold(v1) is False  # not pinned: changes nothing
        assert store.publish(v1, now=500.0) is True
        assert assert_published(site, "m", m1) == v1.id
        assert store.unpin("m") is None  # nothing pinned, nothing published
        assert store.current_id("m") == v1.id
    assert store_problems(state, site) == []


def test_the_pinned_version_is_kept_past_keep_versions_and_grace(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    models = [versioned_model(n) for n in range(1, 5)]
    with store_at(state, site, keep_versions=1, grace=0) as store:
        v1 = publish_model(store, "m", models[0], now=100.0)
        store.pin("m", now=110.0)
        for n, model in enumerate(models[1:], start=2):
            assert store.publish(record_model(store, "m", model), now=100.0 * n) is False
        assert store.prune("m", now=1000.0) == []
        assert (site / "m" / "versions" / v1.id).is_dir()
        assert assert_published(site, "m", models[0]) == v1.id


def test_rollback_to_a_version_not_kept_lists_the_kept_ones(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site, keep_versions=2, grace=0) as store:
        v1 = publish_model(store, "m", versioned_model(1), now=100.0)
        v2 = publish_model(store, "m", versioned_model(2), now=200.0)
        v3 = publish_model(store, "m", versioned_model(3), now=300.0)
        with pytest.raises(NotFoundError) as exc:
            store.rollback("m", v1.id, now=400.0)
        assert str(exc.value) == (f"model m: version {v1.id} is not kept "
                                  f"(kept: {v3.id}, {v2.id})")
        assert store.pinned("m") is None and store.current_id("m") == v3.id
        with pytest.raises(NotFoundError, match="not kept"):
            store.pin("m", "0123456789abcdef")
    with store_at(state, site) as store:
        with pytest.raises(NotFoundError, match="no version is published"):
            store.pin("other")
        publish_model(store, "one", versioned_model(1))
        with pytest.raises(NotFoundError, match="no earlier version is kept"):
            store.rollback("one")


def test_a_crash_between_the_pin_and_its_publish_is_finished_on_open(tmp_path: Path) -> None:
    # pin() writes the pin first; a crash before the publish leaves the pin naming a
    # version that is not current. Opening the store publishes it.
    state, site = tmp_path / "state", tmp_path / "site"
    m1 = versioned_model(1)
    with store_at(state, site) as store:
        v1 = publish_model(store, "m", m1, now=100.0)
        publish_model(store, "m", versioned_model(2), now=200.0)
    (state / "pins" / "m.json").write_text(json.dumps(
        {"version": v1.id, "since": 250.0, "waiting": None}))
    with store_at(state, site) as store:
        assert store.current_id("m") == v1.id
        assert assert_published(site, "m", m1) == v1.id
    assert store_problems(state, site) == []


def test_a_damaged_pin_stops_publishing_until_unpinned(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site) as store:
        v1 = publish_model(store, "m", versioned_model(1))
        store.pin("m")
        (state / "pins" / "m.json").write_text("{torn")
        v2 = record_model(store, "m", versioned_model(2))
        with pytest.raises(IntegrityError, match="pin is damaged"):
            store.publish(v2)
        assert store.current_id("m") == v1.id
        assert store.unpin("m") is None
        assert store.publish(v2) is True


def test_removing_a_model_removes_its_pin(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site) as store:
        publish_model(store, "m", versioned_model(1))
        store.pin("m")
        store.remove_model("m")
        assert store.pinned("m") is None
