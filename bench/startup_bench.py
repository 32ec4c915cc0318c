"""What starting ``shardsync`` costs: wall time of short commands, and the CLI's imports.

Issue 9 (start-up): a one-shot command should import only what it uses, because on a
kiosk a warm re-check is mostly start-up. This prints, in one run on one machine
(docs/performance.md: compare only figures from the same run):

* the wall time of ``python -c pass`` (the interpreter alone, the floor), ``shardsync
  --help``, ``shardsync gc --dry-run``, ``shardsync status --json`` with no service
  listening, and a warm ``shardsync sync`` of the demo's sample models (nothing changed,
  every check a 304), each the median of ``--repeat`` runs;
* the cumulative import time of ``shardsync.daemon.cli`` and of what ``--help`` and
  ``sync`` import, from ``python -X importtime`` (the self-reported figures, median of
  the same number of runs), and how many modules each has loaded.

nginx on loopback serves the samples (bench/nginx.py), as in bench/sync_bench.py.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from nginx import serve_directory  # bench/nginx.py: makes tests/ importable
from synchelpers import cli_command, write_config

from shardsync.daemon.demo.samples import write_samples

__all__ = ["main"]

# What a child prints after running main(): every module it ended up importing.
_MODULES = """\
import json, sys
from shardsync.daemon.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.__stdout__)
"""


def wall(argv: Sequence[str], repeat: int) -> float:
    """Median wall seconds of running ``argv`` to the end, output discarded."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_ms(args: Sequence[str], repeat: int) -> float:
    """Median self-reported cumulative import time (ms) of ``shardsync.daemon.cli``."""
    out = []
    for _ in range(repeat):
        run = subprocess.run([sys.executable, "-X", "importtime", "-c",
                              "import shardsync.daemon.cli", *args],
                             capture_output=True, text=True, check=True)
        m = re.search(r"\|\s*(\d+) \| shardsync\.daemon\.cli$", run.stderr, re.M)
        assert m, run.stderr[-2000:]
        out.append(int(m[1]) / 1000)
    return statistics.median(out)


def modules_of(args: Sequence[str]) -> list[str]:
    """Every module a ``shardsync ARGS`` run has imported when it ends."""
    run = subprocess.run([sys.executable, "-c", _MODULES, *args], capture_output=True,
                         text=True, check=True, stdin=subprocess.DEVNULL)
    return list(json.loads(run.stdout.splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="runs of each (default %(default)s)")
    args = p.parse_args(argv)
    n = args.repeat
    with tempfile.TemporaryDirectory(prefix="shardsync-startup-") as tmp:
        work = Path(tmp)
        samples = write_samples(work / "origin")
        with serve_directory(work / "origin", work / "nginx") as nginx:
            config = write_config(work / "conf", {s.name: nginx.url_for(s.manifest)
                                                  for s in samples})
            first = subprocess.run(cli_command("sync", "-c", config, "--json"),
                                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if first.returncode != 0:
                raise SystemExit(f"the first sync failed:\n{first.stderr[-4000:]}")
            rows = [
                ("python -c pass", wall([sys.executable, "-c", "pass"], n)),
                ("shardsync --help", wall(cli_command("--help"), n)),
                ("shardsync gc --dry-run", wall(cli_command("gc", "-c", config, "--dry-run"), n)),
                ("shardsync status --json (no service)",
                 wall(cli_command("status", "-c", config, "--json"), n)),
                (f"shardsync sync, {len(samples)} sample models, warm",
                 wall(cli_command("sync", "-c", config), n)),
            ]
            help_mods = modules_of(["--help"])
            sync_mods = modules_of(["sync", "-c", str(config)])
        cli_ms = import_ms([], n)

    print(f"shardsync start-up (median of {n} runs)")
    for what, seconds in rows:
        print(f"  {what:<44} {seconds * 1000:6.0f} ms")
    print(f"  import shardsync.daemon.cli (cumulative, -X importtime) {cli_ms:6.1f} ms")
    for what, mods in (("--help", help_mods), ("sync", sync_mods)):
        heavy = [m for m in ("trio", "httpx", "h11", "watchdog", "shardsync.store",
                             "shardsync.daemon.service", "shardsync.daemon.events")
                 if m in mods]
        print(f"  modules after {what}: {len(mods)}; of the heavy ones: {', '.join(heavy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
