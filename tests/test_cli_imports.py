"""What each one-shot `shardsync` command imports (daemon/cli.py), on the real import graph.

A warm re-check on a kiosk is mostly start-up (docs/performance.md, "Start-up"), so a
one-shot command loads only what it uses: never the service, its control socket, the
event log or watchdog; ``--help`` not even trio, httpx or the store; ``gc`` no trio or
httpx. Each case runs the command in a fresh interpreter (a real ``sync`` against the
real origin) and reads ``sys.modules`` when it has ended: the import graph itself, not
a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from origin import Origin
from synchelpers import publish_on, tfjs_model, write_config

#: Only ``shardsync run`` (and the demo) needs these.
SERVICE_ONLY = (
    "watchdog",
    "shardsync.daemon.service",
    "shardsync.daemon.control",
    "shardsync.daemon.control_socket",
    "shardsync.daemon.api",
    "shardsync.daemon.events",
    "shardsync.daemon.scheduler",
    "shardsync.daemon.watch",
    "shardsync.daemon.notify",
    "shardsync.daemon.demo",
)

# Runs main() as the console script does, then prints every module loaded by then.
_CHILD = """\
import json, sys
from shardsync.daemon.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:  # --help exits from argparse
    status = exc.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.__stdout__)
"""


def modules_after(*args: str | Path) -> tuple[int, set[str]]:
    """(exit status, every module imported) of ``shardsync ARGS`` in a fresh interpreter."""
    run = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout.splitlines()[-1])
    return doc["status"], set(doc["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` that are in ``modules``, as packages or their submodules."""
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


@pytest.fixture
def config(origin: Origin, tmp_path: Path) -> Path:
    model = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x01" * 4096}])
    return write_config(tmp_path / "conf", {"m": publish_on(origin, "m", model)})


def test_sync_imports_no_service_control_socket_event_log_or_watchdog(config: Path) -> None:
    status, modules = modules_after("sync", "-c", config)
    assert status == 0
    assert "shardsync.daemon.sync" in modules  # it did sync: the check below means something
    assert loaded(modules, SERVICE_ONLY) == []


def test_a_sync_of_unsigned_models_does_not_import_cryptography(config: Path) -> None:
    """~90 ms of start-up (daemon/signing.py) that only signed models need."""
    status, modules = modules_after("sync", "-c", config)
    assert status == 0 and "shardsync.daemon.signing" in modules
    assert loaded(modules, ("cryptography",)) == []


def test_help_imports_neither_trio_nor_httpx_nor_the_store() -> None:
    status, modules = modules_after("--help")
    assert status == 0
    assert loaded(modules, ("trio", "httpx", "httpcore", "shardsync.store",
                            *SERVICE_ONLY)) == []


@pytest.mark.parametrize("command", [["gc", "--dry-run"], ["verify"]])
def test_gc_and_verify_import_neither_trio_nor_httpx(config: Path, command: list[str]) -> None:
    assert modules_after("sync", "-c", config)[0] == 0  # something to check and keep
    status, modules = modules_after(*command, "-c", config)
    assert status == 0
    assert "shardsync.store" in modules
    assert loaded(modules, ("trio", "httpx", "httpcore", *SERVICE_ONLY)) == []


def test_pin_commands_without_a_service_import_no_service_or_trio(config: Path) -> None:
    """Without a service they act on the store: the socket's client (httpcore loads
    trio, as for ``status``) and the store, none of the service's modules."""
    status, modules = modules_after("unpin", "-c", config, "m")
    assert status == 0 and "shardsync.daemon.pinning" in modules
    assert loaded(modules, SERVICE_ONLY) == []
