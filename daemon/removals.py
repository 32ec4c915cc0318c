"""When each model left the config: `state_dir/removals.json`, so its grace survives restarts.

A model removed from the config stays published for the grace period, counted from
when it left the config (docs/design.md, "The service: reload, model removal, gc,
watchdog"). Counted from a moment held only in memory, a restart in between would
start the grace again (seen: a model gone from the config ~10.5 min before it left
site_dir, for a grace of 5). So the moment is recorded here, durably, when the
service first finds the model gone (at a reload, or at a start that finds it in the
store but not in the config), and dropped when the model is back in the config or
unpublished.

The file is one JSON object, model name -> Unix time it left the config, replaced
atomically (``write_atomic``: a crash leaves the old content or the new one). A file
that cannot be read or parsed counts as empty, and a failed write is logged: either
way the only loss is that a removal waits a whole grace period from now, as it did
before this file existed; a report of that kind never stops the service.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from shardsync.store import write_atomic

__all__ = ["FILE_NAME", "RemovalTimes"]

log = logging.getLogger(__name__)

FILE_NAME = "removals.json"
# Readable by the control socket's group, like the event log: it is part of the history.
_FILE_MODE = 0o640


class RemovalTimes:
    """The recorded moments, read from ``state_dir`` at :meth:`open`; each change written at once.

    Used from the trio thread: a write is one small fsynced file, and happens only when
    a model leaves or comes back, not per check.
    """

    def __init__(self, state_dir: Path, times: dict[str, float],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._times = times
        self._clock = clock

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str],
             clock: Callable[[], float] = time.time) -> RemovalTimes:
        """What ``state_dir`` holds (nothing if the file is missing or unreadable)."""
        path = Path(state_dir) / FILE_NAME
        times: dict[str, float] = {}
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            times = {str(k): float(v) for k, v in doc.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: ignored (%s); a removed model waits a whole grace period "
                        "from now", path, exc)
        return cls(Path(state_dir), times, clock)

    def left(self, name: str) -> float:
        """When ``name`` left the config: as recorded, or now (and recorded now)."""
        if name not in self._times:
            self._times[name] = round(self._clock(), 3)
            self._write()
        return self._times[name]

    def forget(self, name: str) -> None:
        """``name`` is back in the config, or unpublished: nothing to count any more."""
        if self._times.pop(name, None) is not None:
            self._write()

    def keep_only(self, names: Iterable[str]) -> None:
        """Drop every record but those of ``names`` (at start-up: the models the store
        holds that the config does not name; the others came back or are gone)."""
        keep = set(names)
        stale = [n for n in self._times if n not in keep]
        for n in stale:
            del self._times[n]
        if stale:
            self._write()

    def remaining(self, name: str, grace: float) -> float:
        """Seconds until ``name`` is due for removal: ``grace`` after it left, never
        more than ``grace`` from now (a clock set back must not postpone it further)."""
        return max(0.0, min(grace, self.left(name) + grace - self._clock()))

    def __contains__(self, name: object) -> bool:
        return name in self._times

    def _write(self) -> None:
        data = json.dumps(self._times, sort_keys=True).encode() + b"\n"
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                write_atomic(dir_fd, self.path.name, data, mode=_FILE_MODE)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.error("cannot record when models left the config in %s: %s (after a "
                      "restart their grace period starts again)", self.path, exc)
