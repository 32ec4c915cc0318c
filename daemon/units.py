"""How shardsync writes sizes for people: one formatter for the CLI, progress and status.

Binary units (KiB, MiB, GiB), the same ones ``max_model_bytes`` takes in the config,
so a size read off ``shardsync status`` can be written back into the config as is.
"""

from __future__ import annotations

__all__ = ["format_bytes"]


def format_bytes(n: float) -> str:
    """``538928`` -> ``"526.3 KiB"``; bytes below 1 KiB as ``"512 B"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
