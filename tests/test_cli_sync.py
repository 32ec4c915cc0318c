"""`shardsync sync`, `verify` and `gc` as an operator runs them: real processes, a real
config file on disk, a real origin on 127.0.0.1.

Exit statuses are docs/design.md's: 0 all went well, 1 some model failed (the others are
still published), 2 bad usage or config (3 and 130: tests/test_cli_exits.py). ``--json``
prints one JSON document on stdout.
A `shardsync sync` killed with SIGKILL mid-download resumes on the next run without
fetching again what it already had.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from origin import Origin
from storehelpers import ModelFiles, object_path, sha256
from synchelpers import (
    assert_published,
    big_model,
    cli_command,
    publish_on,
    published_files,
    run_cli,
    tfjs_model,
    write_config,
)

from shardsync.daemon.resume import resume_start

#: The model killed mid-download: six 4 MiB shards (and a short seventh), enough to be
#: caught mid-way while the origin drips.
KILL_TOTAL = 24 * 1024 * 1024


def small(tag: str, fill: int) -> ModelFiles:
    """One group of two small shards filled with ``fill`` and ``fill + 1``."""
    return tfjs_model("graph-model", [{"group1-shard1of2.bin": bytes([fill]) * 8192,
                                       "group1-shard2of2.bin": bytes([fill + 1]) * 4096}],
                      tag=tag)


def two_models(origin: Origin, tmp_path: Path) -> tuple[Path, ModelFiles, ModelFiles]:
    """Models a and b on the origin and a config naming both; returns (config, a, b)."""
    a, b = small("a", 1), small("b", 7)
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", a),
                                              "b": publish_on(origin, "b", b)})
    return config, a, b


def test_sync_json_is_one_document_and_exit_0(origin: Origin, tmp_path: Path) -> None:
    config, a, b = two_models(origin, tmp_path)
    run = run_cli("sync", "-c", config, "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)  # one document: a second one would not parse
    assert [(m["name"], m["ok"], m["changed"], m["error"]) for m in doc["models"]] == [
        ("a", True, True, None), ("b", True, True, None)]
    site = tmp_path / "conf" / "site"
    assert doc["models"][0]["version"] == assert_published(site, "a", a)
    assert doc["models"][1]["version"] == assert_published(site, "b", b)
    # Again: nothing changed, still 0; without --json, one plain line per model.
    again = run_cli("sync", "-c", config)
    assert again.returncode == 0 and again.stdout == ""
    lines = [ln for ln in again.stderr.splitlines() if ln.startswith("ok ")]
    assert len(lines) == 2 and all("up to date" in ln for ln in lines), again.stderr


def test_named_models_only(origin: Origin, tmp_path: Path) -> None:
    config, a, _ = two_models(origin, tmp_path)
    run = run_cli("sync", "-c", config, "a", "--json")
    assert run.returncode == 0, run.stderr
    assert [m["name"] for m in json.loads(run.stdout)["models"]] == ["a"]
    assert {e.path.split("/")[0] for e in origin.requests()} == {"a"}
    assert not (tmp_path / "conf" / "site" / "b").exists()


def test_one_model_failing_is_exit_1_and_the_others_are_published(
    origin: Origin, tmp_path: Path
) -> None:
    a = small("a", 1)
    config = write_config(tmp_path / "conf", {"gone": origin.url_for("gone/model.json"),
                                              "a": publish_on(origin, "a", a)})
    run = run_cli("sync", "-c", config, "--json")
    assert run.returncode == 1, run.stderr
    by_name = {m["name"]: m for m in json.loads(run.stdout)["models"]}
    assert by_name["a"]["ok"] and not by_name["gone"]["ok"]
    error = by_name["gone"]["error"]
    assert "model gone" in error and "gone/model.json" in error and "404" in error
    assert_published(tmp_path / "conf" / "site", "a", a)
    plain = run_cli("sync", "-c", config)
    assert plain.returncode == 1
    assert any(ln.startswith("FAILED") and "gone" in ln and "404" in ln
               for ln in plain.stderr.splitlines()), plain.stderr


def test_a_bad_config_is_exit_2_naming_file_key_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", {"a": "http://127.0.0.1:9/a/model.json"},
                          intervall="5m")
    run = run_cli("sync", "-c", config)
    assert run.returncode == 2
    assert f"{config}:4" in run.stderr and "intervall" in run.stderr, run.stderr
    assert not (tmp_path / "conf" / "state").exists()
    missing = run_cli("sync", "-c", tmp_path / "nope.toml", "--json")
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    doc = json.loads(missing.stdout)  # --json: one document, the error too
    assert (doc["ok"], doc["exit"]) == (False, 2) and "nope.toml" in doc["error"]


def test_an_unknown_model_name_is_exit_2(origin: Origin, tmp_path: Path) -> None:
    config, _, _ = two_models(origin, tmp_path)
    run = run_cli("sync", "-c", config, "a", "nosuch")
    assert run.returncode == 2
    assert "nosuch" in run.stderr, run.stderr
    assert origin.requests() == []  # nothing synced, not even the valid name


# -- verify and gc -------------------------------------------------------------------------------


def test_verify_repair_puts_back_a_corrupt_object_and_a_damaged_published_file(
    origin: Origin, tmp_path: Path
) -> None:
    config, a, b = two_models(origin, tmp_path)
    assert run_cli("sync", "-c", config).returncode == 0
    state, site = tmp_path / "conf" / "state", tmp_path / "conf" / "site"
    assert run_cli("verify", "-c", config).returncode == 0

    # An object rots on disk (and with it its hardlinked published copy) ...
    shard_a = a.shards["group1-shard1of2.bin"]
    obj = object_path(state, sha256(shard_a))
    obj.chmod(0o644)
    obj.write_bytes(b"\xff" * len(shard_a))
    # ... and someone overwrites a published file of the other model.
    version_b, _, _ = published_files(site, "b")
    damaged = site / "b" / "versions" / version_b / "group1-shard2of2.bin"
    damaged.unlink()
    damaged.write_bytes(b"\0" * 10)

    check = run_cli("verify", "-c", config, "--json")
    assert check.returncode == 1
    kinds = {(p["kind"], p["model"]) for p in json.loads(check.stdout)["problems"]}
    assert ("object-corrupt", None) in kinds and ("file-differs", "b") in kinds, kinds

    origin.reset_counters()
    repair = run_cli("verify", "-c", config, "--repair", "--json")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    doc = json.loads(repair.stdout)
    assert doc["ok"] and [r["name"] for r in doc["resynced"]] == ["a"]
    assert sha256(obj.read_bytes()) == obj.name  # fetched again ...
    assert origin.bytes_sent("a/group1-shard1of2.bin") == len(shard_a)  # ... from the origin
    assert origin.bytes_sent("b/*") == 0
    assert_published(site, "a", a)
    assert_published(site, "b", b)
    assert run_cli("verify", "-c", config).returncode == 0


def test_gc_dry_run_and_gc(origin: Origin, tmp_path: Path) -> None:
    a = small("a", 1)
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", a)})
    assert run_cli("sync", "-c", config).returncode == 0
    # A shard of the wrong size: downloaded (an object) but never part of a version.
    bad = b"\x09" * 4000
    origin.set_file("a/group1-shard2of2.bin", bad)
    failed = run_cli("sync", "-c", config, "--json")
    assert failed.returncode == 1 and "weight group 1" in failed.stdout
    state = tmp_path / "conf" / "state"
    orphan = object_path(state, sha256(bad))
    assert orphan.exists()
    # Its download record keeps it while the model is configured (the next sync may
    # need it) ...
    kept = json.loads(run_cli("gc", "-c", config, "--dry-run", "--json").stdout)
    assert kept["objects_removed"] == 0
    # ... until the origin serves other bytes under that URL.
    origin.set_file("a/group1-shard2of2.bin", a.shards["group1-shard2of2.bin"])
    assert run_cli("sync", "-c", config).returncode == 0

    dry = run_cli("gc", "-c", config, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["objects_removed"], report["bytes_freed"]) == (
        True, 1, len(bad))
    assert report["objects_kept"] == 1 + len(a.shards)
    assert orphan.exists()

    real = run_cli("gc", "-c", config, "--json")
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["objects_removed"] == 1
    assert not orphan.exists()
    assert run_cli("verify", "-c", config).returncode == 0
    assert_published(tmp_path / "conf" / "site", "a", a)
    again = run_cli("gc", "-c", config)
    assert again.returncode == 0 and "0 object(s)" in again.stdout  # a report: stdout


# -- SIGKILL -----------------------------------------------------------------------------------


def test_a_sync_killed_mid_download_resumes_without_fetching_twice(
    origin: Origin, tmp_path: Path
) -> None:
    assert origin.root is not None
    model = big_model(origin.root, KILL_TOTAL, seed=7, name="m")
    config = write_config(tmp_path / "conf", {"big": origin.url_for("m/model.json")})
    partial = tmp_path / "conf" / "state" / "partial"
    # Slow enough (64 KiB per 20 ms per connection) to be caught mid-download.
    origin.fault_drip("m/*.bin", chunk=64 * 1024, interval=0.02)
    proc = subprocess.Popen(cli_command("sync", "-c", config), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while origin.bytes_sent("m/*.bin") < KILL_TOTAL // 3:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the sync made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    held_sizes = [p.stat().st_size for p in partial.glob("*.data")]
    held = sum(held_sizes)
    assert held > 0  # it was killed with downloads in progress
    # Files that finished before the kill: their download records name them.
    finished = sum(json.loads(p.read_text())["size"]
                   for p in (tmp_path / "conf" / "state" / "downloads").glob("*.json"))
    assert not (tmp_path / "conf" / "site" / "big").exists()

    origin.clear_faults()
    log_len = len(origin.requests())
    run = run_cli("sync", "-c", config, "--json")
    assert run.returncode == 0, run.stderr
    second = origin.requests()[log_len:]
    resumed = [e for e in second if "range" in e.headers]
    assert resumed and all(e.status == 206 for e in resumed)
    # The second run sent exactly what the partials lacked, plus the overlap each resume
    # re-asks to compare: every byte on disk was kept, and no finished file fetched again.
    overlap = sum(h - resume_start(h) for h in held_sizes)
    assert sum(e.body_bytes for e in second) == model.size - held - finished + overlap
    # Both runs together, bytes lost in flight at the kill included.
    assert origin.bytes_sent() <= 1.05 * model.size
    assert_published(tmp_path / "conf" / "site", "big", model)
    assert run_cli("verify", "-c", config).returncode == 0
    assert os.listdir(partial) == []


def test_a_planted_symlink_ref_fails_that_model_naming_the_file(
        origin: Origin, tmp_path: Path) -> None:
    # Issue 14 (6): state_dir/refs/a as a symlink (O_NOFOLLOW: ELOOP). Model a fails with
    # a message naming it and the file; b is published; the symlink's target is untouched.
    config, a, b = two_models(origin, tmp_path)
    state = tmp_path / "conf" / "state"
    (state / "refs").mkdir(parents=True)
    bait = tmp_path / "bait"
    bait.write_bytes(b"not shardsync's\n")
    (state / "refs" / "a").symlink_to(bait)
    run = run_cli("sync", "-c", config, "--json")
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.returncode == 1, run.stderr
    doc = {m["name"]: m for m in json.loads(run.stdout)["models"]}
    assert doc["b"]["ok"] and not doc["a"]["ok"], [m["error"] for m in doc.values()]
    assert "model a" in doc["a"]["error"] and "refs/a" in doc["a"]["error"], doc["a"]["error"]
    assert "symlink" in doc["a"]["error"]
    assert_published(tmp_path / "conf" / "site", "b", b)
    assert bait.read_bytes() == b"not shardsync's\n" and (state / "refs" / "a").is_symlink()
