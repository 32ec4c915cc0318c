"""What `shardsync sync` draws on a terminal (shardsync.daemon.progress), into a buffer."""

from __future__ import annotations

import io

from shardsync.daemon.progress import ProgressDisplay
from shardsync.daemon.sync import Progress


def drawn(**models: Progress) -> list[str]:
    out = io.StringIO()
    ProgressDisplay(dict(models), out).draw()
    return [line.removeprefix("\x1b[2K") for line in out.getvalue().splitlines()]


def test_a_model_waiting_for_a_slot_says_queued_not_a_rate_of_zero() -> None:
    waiting = Progress(state="queued", bytes_total=160 * 2**20, files_total=40)
    moving = Progress(state="downloading", bytes_done=2**20, bytes_total=4 * 2**20,
                      files_total=3, received=2**20)
    big, small = drawn(big=waiting, small=moving)
    assert big.split()[1] == "queued"
    assert "waiting for a slot" in big and "B/s" not in big
    assert small.split()[1] == "downloading" and "/s" in small
