"""`shardsync sync` in a real terminal: tmux, read back with ``capture-pane``.

Two models against the test origin: ``slow`` drips its shards (a few seconds of
bars to watch), ``broken`` lacks a shard whose 404 comes slowly (its headers drip), so
its warning is logged while the bars are on screen. At 80 and 120 columns, in
snapshots taken while ``slow`` downloads and after the command ended: no row is
longer than the width (``-J`` joins what the terminal wrapped, so a wrapped row would
show as one long line; a log line may wrap, it is written once and never redrawn),
each model's row is on screen exactly once (a stale row left by a redraw would be a
second), the warning sits above the rows, and the final state and result lines are
there.

Each test runs its own tmux server (``-L``, a socket of its own), killed at the end:
nothing else's terminal is touched.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from origin import Origin
from storehelpers import ModelFiles, tfjs_model
from synchelpers import cli_command, publish_on, run_cli, write_config

#: Deadline for the command (and each wait): far above the few seconds the drip takes.
WAIT = 120.0
#: Pause between two snapshots: the drip lasts seconds, rows redraw 5 times a second.
_POLL = 0.1

_ROW = re.compile(r"^(slow|broken) +(idle|queued|checking|downloading|publishing|done|failed)\b")


class Tmux:
    """One detached tmux session of a given size on a private server."""

    def __init__(self, columns: int, lines: int) -> None:
        self.server = f"shardsync-test-{uuid.uuid4().hex[:12]}"
        self.columns, self.lines = columns, lines

    def tmux(self, *args: str) -> str:
        run = subprocess.run(["tmux", "-L", self.server, "-f", "/dev/null", *args],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        return run.stdout

    def start(self, command: str, cwd: Path) -> None:
        # The shell stays after the command, so the final screen can still be read.
        shell = f"{command}; echo \"[exit $?]\"; exec sleep 600"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(self.columns), "-y",
                  str(self.lines), "-c", str(cwd), "sh", "-c", shell)

    def snapshot(self) -> list[str]:
        """The visible screen, wrapped lines joined, trailing blanks dropped."""
        text = self.tmux("capture-pane", "-p", "-J", "-t", "t")
        return [line.rstrip() for line in text.rstrip("\n").split("\n")]

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True,
                       timeout=30)


@pytest.fixture
def terminal(request: pytest.FixtureRequest) -> Iterator[Tmux]:
    columns: int = request.param
    t = Tmux(columns, 24)
    try:
        yield t
    finally:
        t.kill()


def slow_model() -> ModelFiles:
    """Four shards of 256 KiB: at 4 KiB per 50 ms each takes about three seconds."""
    return tfjs_model("graph-model", [{f"group1-shard{i}of4.bin": bytes([i]) * 256 * 1024
                                       for i in range(1, 5)}], tag="slow")


def rows(screen: list[str]) -> list[tuple[int, str, str]]:
    """(line number, model, state) of every model row on the screen."""
    return [(i, m.group(1), m.group(2)) for i, line in enumerate(screen)
            if (m := _ROW.match(line))]


def check_screen(screen: list[str], width: int) -> tuple[dict[str, str], int]:
    """The rules every snapshot keeps; returns ({model: state}, line of the first row)."""
    found = rows(screen)
    # Rows are cut to the width; a log or result line may wrap (it is written once and
    # never redrawn over), but must then be whole: no row drawn into it.
    too_long = [screen[i] for i, _, _ in found if len(screen[i]) > width]
    assert not too_long, "\n".join(screen)
    assert not [line for line in screen if re.search(r"\S(slow|broken) +(downloading|queued)",
                                                     line)], "\n".join(screen)
    names = [name for _, name, _ in found]
    assert sorted(names) == ["broken", "slow"], "\n".join(screen)  # each exactly once
    first = found[0][0]
    assert [i for i, _, _ in found] == [first, first + 1], "\n".join(screen)  # together
    return {name: state for _, name, state in found}, first


@pytest.mark.parametrize("terminal", [80, 120], indirect=True)
def test_sync_in_a_real_terminal_fits_keeps_logs_above_and_ends_with_the_states(
    terminal: Tmux, origin: Origin, tmp_path: Path
) -> None:
    width = terminal.columns
    slow = slow_model()
    broken = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x07" * 4096}],
                        tag="broken")
    config = write_config(tmp_path / "conf", {"slow": publish_on(origin, "slow", slow),
                                              "broken": publish_on(origin, "broken", broken)},
                          concurrency=8)  # slow's four shards leave broken a slot
    (tmp_path / "origin" / "broken" / "group1-shard1of1.bin").unlink()
    origin.fault_drip("slow/*.bin", chunk=4096, interval=0.05)
    origin.fault_drip_headers("broken/*.bin", interval=0.01)  # its 404 takes ~1 s
    terminal.start(shlex.join(cli_command("sync", "-c", config)), tmp_path)

    during: list[list[str]] = []
    deadline = time.monotonic() + WAIT
    while True:
        screen = terminal.snapshot()
        if any(line.startswith("[exit ") for line in screen):
            break
        if rows(screen):
            states, first = check_screen(screen, width)
            warned = [i for i, line in enumerate(screen) if "shardsync: warning:" in line]
            if states["slow"] == "downloading" and warned:
                assert warned[-1] < first, "\n".join(screen)  # the warning above the rows
                during.append(screen)
        assert time.monotonic() < deadline, "\n".join(screen)
        time.sleep(_POLL)
    assert during, "never saw the warning while slow was downloading:\n" + "\n".join(screen)
    assert any("%" in line and "/s" in line and "ETA" in line
               for s in during for line in s if line.startswith("slow ")), during[-1]

    # After: the final states, the warning above them, one result line per model below.
    final = terminal.snapshot()
    states, first = check_screen(final, width)
    assert states == {"slow": "done", "broken": "failed"}, "\n".join(final)
    warned = [i for i, line in enumerate(final)
              if "shardsync: warning:" in line and "broken" in line]
    assert len(warned) == 1 and warned[0] < first, "\n".join(final)
    below = final[first + 2:]
    assert any(line.startswith("ok      slow: published") for line in below), "\n".join(final)
    assert any(line.startswith("FAILED  broken:") and "404" in line for line in below)
    assert "[exit 1]" in final


def test_off_a_terminal_sync_prints_a_plain_line_per_state_change(origin: Origin,
                                                                  tmp_path: Path) -> None:
    """stderr a pipe (cron, CI, a log file): lines, no escape codes, no carriage returns."""
    config = write_config(tmp_path / "conf", {"slow": publish_on(origin, "slow", slow_model())})
    origin.fault_drip("slow/*.bin", chunk=16 * 1024, interval=0.05)
    run = run_cli("sync", "-c", config)
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stderr and "\r" not in run.stderr
    lines = run.stderr.splitlines()
    states = [ln.split()[1] for ln in lines if ln.startswith("slow: ")]
    # A state shorter than a redraw may be skipped; a download of seconds is not.
    assert "downloading" in states and states[-1] == "done", lines
    assert all(a != b for a, b in zip(states, states[1:], strict=False))  # only changes
    assert any(ln.startswith("ok      slow: published") for ln in lines)
