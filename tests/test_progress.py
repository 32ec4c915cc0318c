"""What `shardsync sync` draws (shardsync.daemon.progress), into a buffer.

The rows' width, the current rate and the plain lines are checked here with a chosen
terminal size and clock; tests/test_progress_terminal.py runs the real command in a
real terminal (tmux) at 80 and 120 columns.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest
import trio

from shardsync.daemon.progress import RATE_WINDOW, ProgressDisplay, fit_row
from shardsync.daemon.sync import Progress

MiB = 2**20


def terminal(models: dict[str, Progress], columns: int = 120, lines: int = 24,
             clock: list[float] | None = None) -> tuple[ProgressDisplay, io.StringIO]:
    """A display drawing as on a terminal of that size into a buffer; ``clock[0]`` is now."""
    out = io.StringIO()
    now = clock if clock is not None else [0.0]
    return ProgressDisplay(models, out, terminal=True,
                           size=lambda: os.terminal_size((columns, lines)),
                           clock=lambda: now[0]), out


def drawn(columns: int = 120, **models: Progress) -> list[str]:
    display, out = terminal(dict(models), columns)
    display.draw()
    return [line.removeprefix("\x1b[2K") for line in out.getvalue().splitlines()]


def test_a_model_waiting_for_a_slot_says_queued_not_a_rate_of_zero() -> None:
    waiting = Progress(state="queued", bytes_total=160 * MiB, files_total=40)
    moving = Progress(state="downloading", bytes_done=MiB, bytes_total=4 * MiB,
                      files_total=3, received=MiB)
    big, small = drawn(big=waiting, small=moving)
    assert big.split()[1] == "queued"
    assert "waiting for a download slot" in big and "B/s" not in big
    assert small.split()[1] == "downloading" and "%" in small


def every_kind_of_row() -> Iterator[tuple[str, Progress]]:
    yield "a", Progress(state="queued", bytes_total=160 * MiB, files_total=40)
    yield "bodypix-resnet50-float-stride16", Progress(
        state="downloading", bytes_done=999 * MiB, bytes_total=1023 * MiB, files_done=87,
        files_total=245, received=999 * MiB)
    yield "m", Progress(state="checking")
    yield "p", Progress(state="publishing", bytes_done=5 * MiB, bytes_total=5 * MiB,
                        files_done=7, files_total=7)
    yield "e", Progress(state="error", files_done=1, files_total=7)


@pytest.mark.parametrize("columns", [10, 20, 40, 60, 80, 100, 120, 200])
def test_every_row_fits_the_width_and_never_wraps(columns: int) -> None:
    models = dict(every_kind_of_row())
    clock = [0.0]
    display, out = terminal(models, columns, clock=clock)
    display.draw()
    models["bodypix-resnet50-float-stride16"].received += 10 * MiB
    clock[0] = 2.0
    display.draw()  # now with a rate and an ETA
    rows = display.rows()
    assert len(rows) == len(models)
    assert all(len(row) < columns for row in rows), rows
    assert all("\n" not in row for row in rows)
    if columns >= 80:  # at 80 columns the name and every field of a download fit
        row = rows[1]
        assert row.startswith("bodypix-resnet50-") and "downloading" in row
        assert "MiB/s" in row and "ETA" in row and "[" in row, row


def test_the_width_is_read_at_every_redraw() -> None:
    columns = [120]
    models = dict(every_kind_of_row())
    display = ProgressDisplay(models, io.StringIO(), terminal=True,
                              size=lambda: os.terminal_size((columns[0], 24)))
    wide = display.rows()
    columns[0] = 50
    narrow = display.rows()
    assert max(map(len, wide)) > 50 and max(map(len, narrow)) < 50


def test_more_models_than_lines_keep_the_rows_on_the_screen() -> None:
    models = {f"m{i}": Progress(state="checking") for i in range(30)}
    display, _ = terminal(models, 80, lines=10)
    rows = display.rows()
    assert len(rows) < 10 and rows[-1].startswith("... and ")


def test_the_rate_is_the_current_one_not_the_average_since_the_start() -> None:
    p = Progress(state="downloading", bytes_total=100 * MiB, files_total=10)
    clock = [0.0]
    display, _ = terminal({"m": p}, clock=clock)
    display.rows()
    for t in range(1, 11):  # 10 s at 4 MiB/s ...
        clock[0], p.received, p.bytes_done = float(t), 4 * MiB * t, 4 * MiB * t
        display.rows()
    assert "4.0 MiB/s" in display.rows()[0]
    assert "ETA 15s" in display.rows()[0]  # 60 MiB left at 4 MiB/s
    for t in range(11, 11 + int(RATE_WINDOW) + 2):  # ... then a stall: the average would
        clock[0] = float(t)                         # still say 2.3 MiB/s
        row = display.rows()[0]
    assert " 0 B/s" in row and "ETA -" in row, row


def test_a_reset_progress_starts_a_new_rate() -> None:
    p = Progress(state="downloading", bytes_total=10 * MiB)
    clock = [0.0]
    display, _ = terminal({"m": p}, clock=clock)
    display.rows()
    clock[0], p.received = 1.0, 8 * MiB
    assert "8.0 MiB/s" in display.rows()[0]
    p.reset("downloading")  # the next sync of the model
    p.bytes_total = 10 * MiB
    clock[0] = 2.0
    assert "/s" not in display.rows()[0]  # one sample of the new sync: no rate yet


def test_fit_row_cuts_a_long_name_rather_than_overflowing() -> None:
    row = fit_row("x" * 100, 100, "checking", Progress(state="checking"), None, 30)
    assert len(row) <= 30 and "~" in row and "checking" in row


def test_a_log_record_goes_above_the_rows_and_the_handler_is_given_back() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    p = Progress(state="downloading", bytes_total=MiB, files_total=1)
    display = ProgressDisplay({"m": p}, out, terminal=True,
                              size=lambda: os.terminal_size((80, 24)))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(display.run)
            await trio.sleep(0.05)
            assert handler.stream is not out  # routed through the display
            logging.getLogger("shardsync.test").warning("model x: HTTP 404")
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        root.removeHandler(handler)
    assert handler.stream is out
    text = out.getvalue()
    before, warning, after = text.partition("model x: HTTP 404\n")
    assert warning, text
    # The rows were cleared (back over them, erase below) just before the warning...
    assert before.endswith("\x1b[1F\x1b[J")
    # ... and drawn again after it.
    assert after.startswith("m ") and "downloading" in after.splitlines()[0]


def test_plain_lines_one_per_state_change_and_no_escape_codes() -> None:
    out = io.StringIO()
    p = Progress()
    display = ProgressDisplay({"m": p}, out)  # a StringIO is no terminal
    assert not display.terminal
    display.draw()
    p.reset("queued")
    display.draw()
    display.draw()  # no change: no line
    p.state, p.files_total, p.bytes_total = "downloading", 2, 3 * MiB
    display.draw()
    p.bytes_done, p.files_done = MiB, 1
    display.draw()  # bytes moved, the state did not: no line
    p.state = "idle"
    p.files_done, p.bytes_done = 2, 3 * MiB
    display.draw()
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == [  # none for "idle" before the sync began
        "m: queued, waiting for a download slot",
        "m: downloading (0/2 files, 0 B/3.0 MiB)",
        "m: done (2/2 files, 3.0 MiB/3.0 MiB)",
    ]
