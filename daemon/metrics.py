"""Prometheus text exposition (format 0.0.4) for ``GET /metrics``, without a client library.

The service knows its numbers already (bytes fetched, syncs done, each model's
state); it only needs to print them in the format a Prometheus scraper reads. So
this module renders a snapshot: the caller builds an :class:`Exposition` on each
scrape, adds samples, and serves :meth:`Exposition.render` with :data:`CONTENT_TYPE`.

Why not prometheus_client (weighed again when ``process_*`` metrics and the TCP
listener were added, 2026-12, prometheus_client 0.26 on the 2-core test machine,
``python -X importtime``): alone it imports in 61-72 ms (three runs); on top of
what ``shardsync run`` imports anyway, 14-23 ms, against about 2 ms for this module
and 1.2 ms for :mod:`.processmetrics`. It pulls in http.server, wsgiref and a global
registry at import. The cost is not large, but neither is the gain: the format is
these lines; its ``ProcessCollector`` is a few procfs reads, done the same way in
:mod:`.processmetrics`; its HTTP server would be a second server beside the control
socket's, which serves ``metrics_listen`` already (:mod:`.metricsserver`); and its
model (global, mutable metric objects updated as things happen) would duplicate the
state the scheduler holds. The tests do use its parser, so what is served is checked
by Prometheus' own reading of the format.

Escaping follows the format's rules: in label values ``\\``, ``"`` and newline
become ``\\\\``, ``\\"`` and ``\\n``; in ``# HELP`` text ``\\`` and newline do.
Names are checked, so a typo fails loudly in a test instead of silently breaking a
scrape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CONTENT_TYPE", "Exposition", "escape_help", "escape_label_value", "format_value"]

# The Content-Type Prometheus expects for the text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Kind = Literal["counter", "gauge"]


def escape_label_value(value: str) -> str:
    """Escape a label value for use between double quotes."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    """Escape ``# HELP`` text (backslash and newline only; quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as the format spells it: integers without ``.0``, ``NaN``, ``+Inf``."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


@dataclass
class _Family:
    kind: Kind
    help: str
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


class Exposition:
    """A snapshot of metrics, rendered to the text format.

    Families appear in the order they were first added, samples in the order
    added, labels in the order given. Adding to an existing name with another
    kind or help text, repeating a label set, or using a bad name raises
    ``ValueError``.
    """

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(
        self, name: str, help: str, value: float, labels: Mapping[str, str] | None = None
    ) -> None:
        """Add a counter sample (a total that only grows; by convention ``name`` ends ``_total``).

        A negative value raises ``ValueError``.
        """
        if isinstance(value, int | float) and value < 0:
            raise ValueError(f"counter {name} cannot be negative: {value}")
        self._add(name, "counter", help, value, labels)

    def gauge(
        self, name: str, help: str, value: float, labels: Mapping[str, str] | None = None
    ) -> None:
        """Add a gauge sample (a value that goes up and down)."""
        self._add(name, "gauge", help, value, labels)

    def declare(self, name: str, kind: Kind, help: str) -> None:
        """Declare a family with no samples yet, so ``# HELP``/``# TYPE`` appear even when empty."""
        self._family(name, kind, help)

    def render(self) -> str:
        """The exposition text, newline-terminated (empty string if nothing was added)."""
        lines: list[str] = []
        for name, fam in self._families.items():
            lines.append(f"# HELP {name} {escape_help(fam.help)}")
            lines.append(f"# TYPE {name} {fam.kind}")
            for labels, value in fam.samples.items():
                if labels:
                    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{inner}}} {format_value(value)}")
                else:
                    lines.append(f"{name} {format_value(value)}")
        return "".join(line + "\n" for line in lines)

    def _family(self, name: str, kind: Kind, help: str) -> _Family:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(kind, help)
        elif fam.kind != kind or fam.help != help:
            raise ValueError(f"metric {name} already declared as {fam.kind} with other help text")
        return fam

    def _add(
        self, name: str, kind: Kind, help: str, value: float, labels: Mapping[str, str] | None
    ) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {name} value must be a number: {value!r}")
        fam = self._family(name, kind, help)
        key = tuple((labels or {}).items())
        for label, label_value in key:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} on metric {name}")
            if not isinstance(label_value, str):
                raise ValueError(f"label {label} of metric {name} must be a str: {label_value!r}")
        if key in fam.samples:
            raise ValueError(f"metric {name} already has a sample with labels {dict(key)}")
        fam.samples[key] = value
