"""Checking a weight group's bytes: do its shards hold exactly its weights?

TF.js never checks that a group's shards add up to its weights (a short shard or a 404
page loads as garbage weights), so before a version is published daemon/sync.py checks
every group with :func:`check_group_bytes` (or, streaming, :class:`GroupChecker`) against
the :class:`~.tfjs.Group` that :func:`~.tfjs.parse_manifest` gave. Kept apart from
:mod:`.tfjs`, which parses manifests, because this walks the data: fixed-size groups by
total, groups with string weights element by element through their length prefixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shardsync.store import IntegrityError

from .tfjs import _STRING_PREFIX, Group

__all__ = ["GroupChecker", "check_group_bytes"]


class GroupChecker:
    """Checks, chunk by chunk, that a group's shards hold exactly its weights.

    Feed the concatenated shard bytes in ``paths`` order with :meth:`feed` (any chunk
    sizes, nothing is kept), then call :meth:`finish`. A fixed-size group must total
    ``expected_size``; a group with string weights is walked in weight order (fixed
    weights by size, string elements by their little-endian uint32 length prefixes;
    the bytes after a prefix are not otherwise checked, as TF.js keeps them as raw
    bytes) and must end exactly where the last weight ends.
    """

    def __init__(self, group: Group, *, model: str | None = None) -> None:
        self.group = group
        self.model = model
        self.total = 0
        self._walk = group.expected_size is None
        self._weight = -1           # index of the weight being walked
        self._elements_left = 0     # string elements still to come in that weight
        self._skip = 0              # bytes of the current item still to pass over
        self._prefix = b""          # partial length prefix of a string element
        self._element_end = 0       # offset where the current string element ends
        self._element_no = 0        # 1-based number of that element, for messages
        self._overrun_at: int | None = None  # offset where the data went past the weights

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Account for the next ``chunk`` of the group's bytes. Never raises."""
        view = memoryview(chunk).cast("B")
        n = view.nbytes
        start = self.total
        self.total += n
        if not self._walk or self._overrun_at is not None:
            return
        pos = 0
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
            elif self._elements_left:
                if not self._prefix:
                    self._element_no = self.group.weights[self._weight].count \
                        - self._elements_left + 1
                need = _STRING_PREFIX - len(self._prefix)
                self._prefix += bytes(view[pos:pos + need])
                pos += min(need, n - pos)
                if len(self._prefix) == _STRING_PREFIX:
                    length = int.from_bytes(self._prefix, "little")
                    self._prefix = b""
                    self._elements_left -= 1
                    self._skip = length
                    self._element_end = start + pos + length
            elif not self._next_weight():
                self._overrun_at = start + pos
                return

    def _next_weight(self) -> bool:
        """Move to the next weight that takes bytes; False if there is none."""
        weights = self.group.weights
        while self._weight + 1 < len(weights):
            self._weight += 1
            w = weights[self._weight]
            if w.nbytes is None:
                self._elements_left = w.count
            else:
                self._skip = w.nbytes
            if self._skip or self._elements_left:
                return True
        return False

    def finish(self) -> int:
        """Return the total byte count if the group checks out, else raise IntegrityError.

        The message names the group and, when the data is short or a length prefix is
        wrong, the weight where it went wrong.
        """
        g = self.group
        where = f"weight group {g.index + 1}"
        if not self._walk:
            expected = g.expected_size
            if self.total == expected:
                return self.total
            if self.total > expected:  # type: ignore[operator]
                extra = self.total - expected  # type: ignore[operator]
                why = f"{where}: the shards hold {extra} bytes more than its weights"
            else:
                why = (f"{where}: the shards end before the end of weight "
                       f"{self._weight_at(self.total)!r}")
            raise self._error(why, expected, self.total)
        if self._overrun_at is not None:
            raise self._error(
                f"{where}: the data goes on past its last weight, at byte {self._overrun_at}",
                self._overrun_at, self.total)
        if self._skip or self._prefix or self._elements_left or self._next_weight():
            w = g.weights[self._weight]
            if w.nbytes is None:
                mid_element = bool(self._skip or self._prefix)
                element = self._element_no if mid_element else w.count - self._elements_left + 1
                needed = (self._element_end if self._skip
                          else self.total + _STRING_PREFIX - len(self._prefix))
                why = (f"{where}: the data ends before the end of string weight {w.name!r} "
                       f"(element {element} of {w.count}): a shard is short or a length "
                       f"prefix is wrong")
            else:
                needed = self.total + self._skip
                why = f"{where}: the data ends before the end of weight {w.name!r}"
            raise self._error(why, f"at least {needed}", self.total)
        return self.total

    def _weight_at(self, offset: int) -> str:
        """Name of the fixed-size weight that byte ``offset`` falls in (or the last one)."""
        pos = 0
        for w in self.group.weights:
            pos += w.nbytes or 0
            if offset < pos:
                return w.name
        return self.group.weights[-1].name if self.group.weights else "?"

    def _error(self, reason: str, expected: Any, actual: int) -> IntegrityError:
        return IntegrityError(reason, model=self.model, file=self.group.label,
                              expected=expected, actual=actual)


def check_group_bytes(
    group: Group, data: int | Iterable[bytes], *, model: str | None = None
) -> int:
    """Check a group's shards; return their total size or raise IntegrityError.

    ``data`` is the concatenated shard bytes as an iterable of chunks (read lazily,
    one chunk at a time), or, for a group without string weights, just their total
    size. Raises ValueError if only a size is given for a group with string weights.
    See :class:`GroupChecker` for what is checked.
    """
    checker = GroupChecker(group, model=model)
    if isinstance(data, int):
        if group.expected_size is None:
            raise ValueError(f"weight group {group.index + 1} has string weights: "
                             f"its bytes are needed, not only their size")
        checker.total = data
    else:
        for chunk in data:
            checker.feed(chunk)
    return checker.finish()
