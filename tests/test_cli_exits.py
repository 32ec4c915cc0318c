"""`shardsync`'s exit statuses, error output and closed pipes, from real processes.

docs/design.md "Exit status": 0 all went well, 1 some model failed, 2 bad usage or
config, 3 the store or the service is not available (another shardsync holds the
store or the socket; for ``status``, no service answers), 130 interrupted (a real
SIGINT, one line, no traceback), 141 stdout closed before the report. ``--json``
prints exactly one JSON document, errors included. Every option has help text.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from origin import Origin
from servicehelpers import WAIT, NotifySocket, ServiceProcess
from storehelpers import ModelFiles, object_path, sha256
from synchelpers import (
    assert_published,
    big_model,
    cli_command,
    publish_on,
    run_cli,
    tfjs_model,
    write_config,
)

from shardsync.daemon.cli import DEFAULT_CONFIG

INTERRUPTED = "shardsync: error: interrupted"


def small(tag: str, fill: int) -> ModelFiles:
    return tfjs_model("graph-model", [{"group1-shard1of1.bin": bytes([fill]) * 8192}], tag=tag)


def one_document(stdout: str) -> dict:
    """The one JSON document ``stdout`` holds (a second one, or anything else, fails)."""
    doc = json.loads(stdout)
    assert isinstance(doc, dict)
    return doc


def assert_one_error_line(stderr: str, line: str) -> None:
    """``line`` is said once, as the last line, and nothing on stderr is a traceback."""
    assert "Traceback" not in stderr and "Error:" not in stderr, stderr
    lines = stderr.splitlines()
    assert lines and lines[-1] == line, stderr
    assert sum(line in ln for ln in lines) == 1, stderr


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """SIGINT, as Ctrl-C sends it; (exit status, stdout, stderr) once it has exited."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def wait_until(what: str, proc: subprocess.Popen[str], predicate: object) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, f"exited before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


def popen(*args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cli_command(*args), stdin=subprocess.DEVNULL, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# -- 130: Ctrl-C ------------------------------------------------------------------------


def test_ctrl_c_mid_download_exits_130_keeping_the_partials(
        origin: Origin, tmp_path: Path) -> None:
    assert origin.root is not None
    big_model(origin.root, 8 * 1024 * 1024, seed=3, name="m")
    config = write_config(tmp_path / "conf", {"big": origin.url_for("m/model.json")})
    origin.fault_drip("m/*.bin", chunk=16 * 1024, interval=0.05)  # ~6 s for the model
    proc = popen("sync", "-c", config, "--json")
    try:
        wait_until("downloading", proc, lambda: origin.bytes_sent("m/*.bin") > 128 * 1024)
        status, out, err = interrupt(proc)
    finally:
        proc.kill()
        proc.wait()
    assert status == 130, err
    assert_one_error_line(err, INTERRUPTED)
    assert one_document(out) == {"ok": False, "error": "interrupted", "exit": 130}
    partials = list((tmp_path / "conf" / "state" / "partial").glob("*.data"))
    assert partials and sum(p.stat().st_size for p in partials) > 0  # kept for the next run
    assert not (tmp_path / "conf" / "site" / "big").exists()


def test_ctrl_c_stops_the_service_cleanly_and_exits_130(
        origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket) -> None:
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", small("a", 1))},
                          socket=str(sockets / "ctl.sock"))
    with ServiceProcess(config, tmp_path / "service.log", notify=notify).start() as svc:
        svc.signal(signal.SIGINT)
        assert svc.wait() == 130, svc.log_tail()
        notify.wait_for("STOPPING", "1")  # the same clean stop as SIGTERM's
    assert_one_error_line(svc.log(), INTERRUPTED)
    assert not (sockets / "ctl.sock").exists()
    # SIGTERM (systemd's stop) is still a clean 0.
    with ServiceProcess(config, tmp_path / "service2.log", notify=notify).start() as svc:
        assert svc.stop() == 0, svc.log_tail()


def test_ctrl_c_while_status_waits_for_the_service_exits_130(sockets: Path) -> None:
    path = str(sockets / "mute.sock")
    with socket.socket(socket.AF_UNIX) as mute:  # accepts, reads, never answers
        mute.bind(path)
        mute.listen()
        mute.settimeout(WAIT)
        proc = popen("status", "--socket", path)
        try:
            conn, _ = mute.accept()
            with conn:
                conn.settimeout(WAIT)
                assert conn.recv(4096).startswith(b"GET /v1/status")
                status, out, err = interrupt(proc)
        finally:
            proc.kill()
            proc.wait()
    assert status == 130, err
    assert out == ""
    assert_one_error_line(err, INTERRUPTED)


def test_ctrl_c_during_verify_repair_exits_130(origin: Origin, tmp_path: Path) -> None:
    shard = os.urandom(1024 * 1024)
    model = tfjs_model("graph-model", [{"group1-shard1of1.bin": shard}])
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", model)})
    assert run_cli("sync", "-c", config).returncode == 0
    object_path(tmp_path / "conf" / "state", sha256(shard)).unlink()  # repair re-downloads it
    origin.reset_counters()
    origin.fault_drip("a/*.bin", chunk=8 * 1024, interval=0.05)  # ~6 s
    proc = popen("verify", "-c", config, "--repair")
    try:
        wait_until("re-downloading", proc, lambda: origin.bytes_sent("a/*.bin") > 0)
        status, out, err = interrupt(proc)
    finally:
        proc.kill()
        proc.wait()
    assert status == 130, err
    assert_one_error_line(err, INTERRUPTED)


# -- 3: busy, or no service -----------------------------------------------------------


def test_gc_beside_the_service_and_a_second_service_on_its_socket_exit_3(
        origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket) -> None:
    a = small("a", 1)
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", a)},
                          socket=str(sockets / "ctl.sock"))
    with ServiceProcess(config, tmp_path / "service.log", notify=notify).start() as svc:
        svc.wait_status(lambda s: s["models"][0]["version"] is not None, "a published")
        gc = run_cli("gc", "-c", config)
        assert gc.returncode == 3, gc.stderr
        assert gc.stdout == ""
        assert_one_error_line(gc.stderr, gc.stderr.splitlines()[-1])
        assert "the store is in use by another process" in gc.stderr
        gc_json = run_cli("gc", "-c", config, "--json")
        assert gc_json.returncode == 3
        doc = one_document(gc_json.stdout)
        assert (doc["ok"], doc["exit"]) == (False, 3)
        assert "the store is in use by another process" in doc["error"]
        # Another store, the same socket: the socket is busy.
        other = write_config(tmp_path / "other", {}, socket=str(sockets / "ctl.sock"))
        second = subprocess.run(cli_command("run", "-c", other), capture_output=True,
                                text=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        assert second.returncode == 3, second.stderr
        assert "already running" in second.stderr and "Traceback" not in second.stderr
        svc.check_alive()  # the first service was not disturbed
        assert svc.stop() == 0
    assert_published(tmp_path / "conf" / "site", "a", a)


def test_status_without_a_service_exits_3_and_json_says_not_running(sockets: Path) -> None:
    path = sockets / "none.sock"
    plain = run_cli("status", "--socket", path)
    assert plain.returncode == 3 and plain.stdout == ""
    assert_one_error_line(plain.stderr, f"shardsync: error: shardsync is not running "
                                        f"(no socket at {path})")
    with_json = run_cli("status", "--socket", path, "--json")
    assert with_json.returncode == 3
    doc = one_document(with_json.stdout)
    assert (doc["ok"], doc["exit"], doc["running"], doc["socket"]) == (False, 3, False, str(path))
    assert "not running" in doc["error"]


# -- 1 and 0: status of failing and healthy models ------------------------------------


def test_status_exits_1_while_a_model_is_failing_and_0_once_it_is_not(
        origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket) -> None:
    gone = small("gone", 9)
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", small("a", 1)),
                                              "gone": origin.url_for("gone/model.json")},
                          socket=str(sockets / "ctl.sock"))
    with ServiceProcess(config, tmp_path / "service.log", notify=notify).start() as svc:
        svc.wait_status(lambda s: svc.model("gone")["last_error"] is not None
                        and svc.model("a")["version"] is not None, "gone failing, a published")
        table = run_cli("status", "-c", config)
        assert table.returncode == 1, table.stderr
        assert "model gone" in table.stdout  # the table is printed all the same
        doc = run_cli("status", "-c", config, "--json")
        assert doc.returncode == 1
        assert "404" in {m["name"]: m for m in one_document(doc.stdout)["models"]}[
            "gone"]["last_error"]
        publish_on(origin, "gone", gone)
        svc.client.post("/v1/models/gone/sync")
        svc.wait_status(lambda s: svc.model("gone")["last_error"] is None, "gone published")
        healthy = run_cli("status", "-c", config)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert svc.stop() == 0


# -- 2: usage and config --------------------------------------------------------------


@pytest.mark.parametrize("command", ["sync", "run", "verify", "gc", "nginx-config"])
def test_without_c_a_missing_default_config_is_exit_2_naming_it(command: str) -> None:
    # A machine with a real /etc/shardsync/config.toml cannot run this test; say so
    # rather than skip it (a skipped test proves nothing).
    assert not DEFAULT_CONFIG.exists(), f"this test needs a machine without {DEFAULT_CONFIG}"
    run = run_cli(command)
    assert run.returncode == 2
    assert_one_error_line(run.stderr, run.stderr.splitlines()[-1])
    assert str(DEFAULT_CONFIG) in run.stderr and "-c FILE" in run.stderr, run.stderr


def test_json_errors_are_one_document_with_the_exit_status(
        origin: Origin, tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", small("a", 1))})
    unknown = run_cli("sync", "-c", config, "nosuch", "--json")
    missing = run_cli("verify", "-c", tmp_path / "nope.toml", "--json")
    usage = run_cli("gc", "-c", config, "--json", "--bogus")
    for run, says in ((unknown, "nosuch"), (missing, "nope.toml"), (usage, "--bogus")):
        assert run.returncode == 2, run.stderr
        doc = one_document(run.stdout)
        assert (doc["ok"], doc["exit"]) == (False, 2) and says in doc["error"], doc
        assert says in run.stderr and "Traceback" not in run.stderr
    assert origin.requests() == []


# -- closed pipes ---------------------------------------------------------------------


def run_into_closed_pipe(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``shardsync ARGS`` with stdout a pipe whose reader has already gone (as after
    ``| head -c1`` has read its byte), stderr captured."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(cli_command(*args), stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=WAIT)
    finally:
        os.close(write_end)


def assert_quiet(stderr: str) -> None:
    """Nothing about the pipe: no traceback, no "Exception ignored" at exit, no error."""
    for noise in ("Traceback", "BrokenPipe", "Exception ignored", "error"):
        assert noise not in stderr, stderr


def test_a_closed_stdout_is_quiet_and_exits_141(origin: Origin, tmp_path: Path,
                                                sockets: Path) -> None:
    status = run_into_closed_pipe("status", "--socket", sockets / "none.sock", "--json")
    assert status.returncode == 141  # not status's own 3: its report was cut off
    assert "Traceback" not in status.stderr and "BrokenPipe" not in status.stderr
    a = small("a", 1)
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", a)})
    sync = run_into_closed_pipe("sync", "-c", config, "--json")
    assert sync.returncode == 141, sync.stderr
    assert_quiet(sync.stderr)
    assert_published(tmp_path / "conf" / "site", "a", a)  # the work was done all the same
    verify = run_into_closed_pipe("verify", "-c", config)
    assert verify.returncode == 141
    assert_quiet(verify.stderr)


def test_sync_json_into_true_in_a_shell_pipeline(origin: Origin, tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", small("a", 1))})
    command = " ".join(cli_command("sync", "-c", config, "--json"))
    shell = subprocess.run(["bash", "-c", f'{command} | true; echo "${{PIPESTATUS[0]}}"'],
                           capture_output=True, text=True, timeout=WAIT)
    assert shell.stdout.strip() == "141", shell.stderr
    assert_quiet(shell.stderr)


# -- reports on stdout ----------------------------------------------------------------


def test_verify_and_gc_reports_go_to_stdout(origin: Origin, tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", small("a", 1))})
    assert run_cli("sync", "-c", config).returncode == 0
    verify = run_cli("verify", "-c", config)
    gc = run_cli("gc", "-c", config, "--dry-run")
    assert (verify.returncode, gc.returncode) == (0, 0)
    assert verify.stdout == "verify: 0 problem(s), 0 remaining\n" and verify.stderr == ""
    assert gc.stdout.startswith("gc: would free 0 bytes") and gc.stderr == ""


# -- help -----------------------------------------------------------------------------


def help_entries(text: str) -> dict[str, str]:
    """Each argument of an argparse ``--help`` (its invocation) -> its description.

    argparse starts an entry 2 columns in (4 for a subcommand under its group) and puts
    a description beside it or, for a long invocation, on lines indented to the help
    column (further in than any entry starts).
    """
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent == 0:
            current = None  # a blank line, the usage, a section heading ("options:")
        elif indent <= 4:
            invocation, _, description = line.strip().partition("  ")
            current = invocation
            entries[current] = description.strip()
        elif current is not None:
            entries[current] = (entries[current] + " " + line.strip()).strip()
    return entries


def test_every_command_and_option_has_help_text() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    commands = help_entries(top.stdout)
    commands.pop("COMMAND", None)
    names = [c for c in commands if not c.startswith("-")]
    assert {"run", "sync", "status", "verify", "gc", "demo", "nginx-config"} <= set(names)
    assert [c for c, text in commands.items() if not text] == []
    for name in names:
        page = run_cli(name, "--help")
        assert page.returncode == 0, page.stderr
        entries = help_entries(page.stdout)
        assert "-h, --help" in entries and len(entries) > 2, page.stdout
        assert [arg for arg, text in entries.items() if not text] == [], page.stdout
