"""Log lines under journald: `<N>` priorities when stderr is the journal stream that
``$JOURNAL_STREAM`` names (device:inode, systemd.exec(5)), plain lines otherwise.

Real processes whose stderr is a file: ``JOURNAL_STREAM`` set to that file's own
``st_dev:st_ino`` makes it "the journal"; set to another file's, it does not.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from origin import Origin
from servicehelpers import WAIT, NotifySocket, ServiceProcess, short_dir
from synchelpers import cli_command, publish_on, tfjs_model, write_config

from shardsync.daemon.logstream import JournalFormatter, priority


def journal_stream(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def run_with_stderr_in(log: Path, journal: str, *args: str | os.PathLike[str]) -> list[str]:
    """Run ``shardsync ARGS`` with stderr appended to ``log`` and ``JOURNAL_STREAM`` =
    ``journal``; the lines it wrote."""
    env = {**os.environ, "JOURNAL_STREAM": journal}
    with open(log, "ab") as err:
        subprocess.run(cli_command(*args), stdout=subprocess.DEVNULL, stderr=err, env=env,
                       stdin=subprocess.DEVNULL, timeout=WAIT)
    return log.read_text().splitlines()


def broken_config(tmp_path: Path) -> Path:
    """A config `status` warns about (an unknown key) whose socket nobody listens on,
    so `status -c` logs a warning and then an error."""
    config = tmp_path / "shardsync.toml"
    config.write_text('socket = "none.sock"\nbogus_key = 1\n')
    return config


def test_stderr_that_is_the_journal_gets_priority_prefixes(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    log.touch()
    lines = run_with_stderr_in(log, journal_stream(log), "status", "-c", broken_config(tmp_path))
    assert len(lines) == 2, lines
    warning, error = lines
    assert warning.startswith("<4>") and "bogus_key" in warning, lines
    assert error.startswith("<3>") and "not running" in error, lines
    # No timestamp or program name: journald records both itself.
    assert not any(ln[3:].startswith("shardsync:") for ln in lines), lines


def test_stderr_that_is_another_file_gets_plain_lines(tmp_path: Path) -> None:
    log, elsewhere = tmp_path / "file.log", tmp_path / "journal"
    log.touch()
    elsewhere.touch()
    # JOURNAL_STREAM inherited, but stderr was redirected: not the journal.
    lines = run_with_stderr_in(log, journal_stream(elsewhere), "status", "-c",
                               broken_config(tmp_path))
    assert len(lines) == 2, lines
    assert lines[0].startswith("shardsync: warning: ") and "bogus_key" in lines[0]
    assert lines[1].startswith("shardsync: error: ") and "not running" in lines[1]
    garbage = run_with_stderr_in(tmp_path / "g.log", "not-a-stream", "status", "-c",
                                 broken_config(tmp_path))
    assert [ln.split(":")[1] for ln in garbage] == [" warning", " error"], garbage


def test_the_service_logs_info_as_6_under_the_journal(origin: Origin, tmp_path: Path,
                                                      notify: NotifySocket) -> None:
    model = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x01" * 4096}])
    with short_dir() as sockets:
        config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", model)},
                              socket=str(sockets / "ctl.sock"))
        log = tmp_path / "service.log"
        log.touch()
        with ServiceProcess(config, log, notify=notify,
                            env={"JOURNAL_STREAM": journal_stream(log)}).start() as svc:
            svc.wait_event("published", model="a")
            assert svc.stop() == 0
    lines = log.read_text().splitlines()
    assert lines and all(ln[:3] in ("<6>", "<4>", "<3>") for ln in lines), lines
    assert any(ln.startswith("<6>shardsync ") and "running" in ln for ln in lines), lines


@pytest.mark.parametrize(("level", "prio"), [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
    (logging.DEBUG, 7), (logging.INFO + 5, 6),  # in between: the level below's
])
def test_levels_map_to_sd_daemon_priorities(level: int, prio: int) -> None:
    assert priority(level) == prio


def test_every_line_of_a_multi_line_record_carries_the_priority() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("shardsync", logging.ERROR, __file__, 1, "failed\nbadly",
                                   None, sys.exc_info())
    lines = JournalFormatter().format(record).splitlines()
    assert lines[:2] == ["<3>failed", "<3>badly"] and len(lines) > 3
    assert all(ln.startswith("<3>") for ln in lines)
