"""Two publishes of one model at once: threads sharing a Store, and separate processes.

This happens in the service: a reload cancels a sync task whose worker thread keeps
publishing while a new task syncs the same model; or a `shardsync sync` runs beside the
service. With one version kept and no grace, every publish prunes the other's
versions, so without serialization a prune deletes the version the other publish is
about to make current.

Each publish first reads the current version; a ref naming a pruned record shows there
as the store's warning (Store.current() logs it and carries on), so the writers
themselves observe every moment the race broke the store, not only the end state.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from storehelpers import assert_store_ok, publish_model, record_model, store_at, versioned_model

from shardsync.store import Store

#: Publishes per writer: the unserialized race showed within a few dozen here; ten
#: times that makes a pass meaningful.
ROUNDS = 300

#: What Store.current() logs when the ref names a record that is gone.
DANGLING = "whose record is unusable"


def _check_current(store: Store, site: Path) -> list[str]:
    """What is wrong with model ``m`` now (empty: its ref's record and directory exist)."""
    version = store.current("m")
    if version is None:
        return ["no current version"]
    problems = []
    if not (site / "m" / "versions" / version.id / version.manifest.path).is_file():
        problems.append(f"current version {version.id} has no directory")
    return problems


def test_two_threads_publishing_one_model_keep_the_store_consistent(
    dirs, caplog: pytest.LogCaptureFixture
) -> None:
    state, site = dirs
    caplog.set_level(logging.WARNING, logger="shardsync.store")
    errors: list[BaseException] = []
    with store_at(*dirs, keep_versions=1, grace=0) as store:
        versions = [record_model(store, "m", versioned_model(n)) for n in (1, 2)]
        start = threading.Barrier(2)

        def writer(i: int) -> None:
            try:
                start.wait()
                for _ in range(ROUNDS):
                    # the recorded version may have been pruned by the other writer:
                    # publish records it again, as a sync would
                    store.publish(versions[i])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert [r.getMessage() for r in caplog.records if DANGLING in r.getMessage()] == []
        assert _check_current(store, site) == []
    assert_store_ok(state, site)


_WRITER = """
import sys
sys.path.insert(0, sys.argv[4])
import pytest
from storehelpers import publish_model, versioned_model
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
with Store(sys.argv[1], sys.argv[2], keep_versions=1, grace=0, entry_point=rewrite_paths) as store:
    model = versioned_model(int(sys.argv[3]))
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[5])):
        publish_model(store, "m", model)
"""


def test_two_processes_publishing_one_model_keep_the_store_consistent(dirs) -> None:
    state, site = dirs
    with store_at(*dirs, keep_versions=1, grace=0) as store:
        publish_model(store, "m", versioned_model(1))
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(state), str(site), str(n), here,
                          str(ROUNDS)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for n in (1, 2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert DANGLING not in err
    assert_store_ok(state, site)
    with store_at(*dirs, keep_versions=1, grace=0) as store:
        assert _check_current(store, site) == []
        assert store.verify() == []
