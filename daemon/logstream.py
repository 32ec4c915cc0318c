"""Log lines on stderr: `<N>` syslog priorities when stderr is the journal, plain lines otherwise.

Under systemd, stderr is a stream to journald, which logs every line at the unit's
default priority (info) unless the line starts with ``<N>`` (sd-daemon(3)). Without
the prefixes ``journalctl -p warning`` would show nothing of a failing service, so
when stderr is the journal each line carries its record's priority, and no
timestamp or program name (journald records both itself). A terminal, a file or a
pipe gets plain ``shardsync: level: message`` lines.

Whether stderr is the journal is decided as systemd documents it (systemd.exec(5),
``$JOURNAL_STREAM``): the variable holds the device and inode of the stream systemd
connected, and it counts only if stderr is still that file. A child that inherited
the variable but whose stderr was redirected (``shardsync sync 2>log``) writes plain
lines.

Only the standard library, so the CLI can set logging up without loading anything.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = ["JournalFormatter", "PlainFormatter", "configure", "is_journal"]

#: sd-daemon(3)'s priorities (syslog's) for logging's levels: <3> error, <4> warning,
#: <6> info, <7> debug; critical is <2>. A level in between takes the one of the level
#: below it: it is at least that severe.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))
DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (see :data:`PRIORITIES`)."""
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return DEBUG_PRIORITY


def is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream ``$JOURNAL_STREAM`` (``dev:ino``) names.

    Anything unparsable, a stream without a file descriptor, or one that is another
    file is not the journal: a plain line is never wrong, only less precise.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class PlainFormatter(logging.Formatter):
    """``shardsync: warning: message``, for terminals, files and pipes."""

    def format(self, record: logging.LogRecord) -> str:
        return f"shardsync: {record.levelname.lower()}: {super().format(record)}"


class JournalFormatter(logging.Formatter):
    """``<N>message``: every line of a record (a traceback too) prefixed with the
    record's priority, since journald reads each line as its own entry."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def configure(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Send the process's log records to ``stream`` (stderr), formatted for the journal
    when it is one; debug records only with ``verbose``. Replaces any handler a
    previous call installed, so calling it twice does not double every line."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if is_journal(stream) else PlainFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise
