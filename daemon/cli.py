"""The `shardsync` command: parses arguments, calls the library, turns errors into exit codes.

Exit status (docs/design.md): 0 all went well, 1 some model failed (the others were still
done), 2 bad usage or config. Only this module decides exit statuses; everything
below it raises :class:`~shardsync.daemon.errors.ShardsyncError`.

Each command imports what it uses inside its own function, and this module imports only
the standard library at the top: a one-shot command on a kiosk is mostly start-up, so
``--help`` loads no trio, httpx or store, ``gc`` and ``status`` no trio, and nothing
but ``run`` loads the service, the control socket, the event log or watchdog
(docs/performance.md, "Start-up"; tests/test_cli_imports.py holds it to that).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .sync import SyncResult

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("shardsync")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)  # --help, --version and bad usage exit here
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="shardsync: %(levelname)s: %(message)s", stream=sys.stderr,
    )
    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from shardsync.store import ShardsyncError

    from .errors import ConfigError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"shardsync: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShardsyncError as exc:
        print(f"shardsync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardsync", description="Mirror TensorFlow.js models for offline devices.")
    p.add_argument("--version", action="version", version=f"shardsync {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name: str, func: object, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("-v", "--verbose", action="store_true", help="log more")
        return sp

    sp = cmd("run", _cmd_run, "run the service (foreground; sd_notify under systemd)")
    sp.add_argument("-c", "--config", required=True, type=Path)

    sp = cmd("sync", _cmd_sync, "one pass over all (or the named) models, then exit")
    sp.add_argument("-c", "--config", required=True, type=Path)
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    sp = cmd("status", _cmd_status, "ask the running service what every model is doing")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", type=Path)
    g.add_argument("--socket", type=Path)
    sp.add_argument("--json", action="store_true")

    sp = cmd("verify", _cmd_verify, "re-hash every object and check every published file")
    sp.add_argument("-c", "--config", required=True, type=Path)
    sp.add_argument("--repair", action="store_true",
                    help="put back what is wrong (re-downloading where needed)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("gc", _cmd_gc, "drop what no kept version references")
    sp.add_argument("-c", "--config", required=True, type=Path)
    sp.add_argument("--dry-run", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = cmd("demo", _cmd_demo, "the whole path on built-in sample models, no network")
    sp.add_argument("--dir", type=Path, help="keep the demo here (default: a temp dir)")

    sp = cmd("nginx-config", _cmd_nginx, "print an nginx server block serving site_dir")
    sp.add_argument("-c", "--config", required=True, type=Path)
    sp.add_argument("--listen", default="127.0.0.1:8080")
    sp.add_argument("--location", default="/models/")
    return p


# -- sync ---------------------------------------------------------------------------


def _cmd_sync(args: argparse.Namespace) -> int:
    import json

    import trio

    from shardsync.store import NotFoundError

    from .config import load_config
    from .oneshot import open_store, sync_models
    from .progress import result_line

    config = load_config(args.config)
    names = args.names or [m.name for m in config.models]
    try:
        for n in names:
            config.model(n)
    except NotFoundError as exc:
        print(f"shardsync: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    with open_store(config) as store:  # progress: bars on a terminal, else plain lines
        results = trio.run(sync_models, config, store, names, not args.json)
    if args.json:
        json.dump({"models": [r.to_json() for r in results]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(result_line(r), file=sys.stderr)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


# -- verify and gc ------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    import json

    from .config import load_config
    from .oneshot import open_store

    config = load_config(args.config)
    with open_store(config) as store:
        problems = store.verify(repair=args.repair)
        resynced: list[SyncResult] = []
        if args.repair and any(p.kind == "object-missing" for p in problems):
            import trio

            from .oneshot import sync_models

            names = sorted({p.model for p in problems if p.kind == "object-missing" and p.model}
                           & {m.name for m in config.models})
            resynced = trio.run(sync_models, config, store, names)
            problems = [p for p in store.verify(repair=True) if not p.repaired] + [
                p for p in problems if p.repaired]
        remaining = [p for p in problems if not p.repaired]
    if args.json:
        json.dump({"problems": [p.__dict__ for p in problems],
                   "resynced": [r.to_json() for r in resynced],
                   "ok": not remaining}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for p in problems:
            print(p, file=sys.stderr)
        if resynced:
            from .progress import result_line
        for r in resynced:
            print(result_line(r), file=sys.stderr)
        print(f"verify: {len(problems)} problem(s), {len(remaining)} remaining",
              file=sys.stderr)
    return EXIT_OK if not remaining else EXIT_FAILED


def _cmd_gc(args: argparse.Namespace) -> int:
    import json

    from .config import load_config
    from .oneshot import open_store

    config = load_config(args.config)
    with open_store(config) as store:
        report = store.gc(dry_run=args.dry_run, sources=config.manifest_urls)
    if args.json:
        json.dump({"dry_run": args.dry_run, "objects_removed": report.objects_removed,
                   "bytes_freed": report.bytes_freed, "objects_kept": report.objects_kept,
                   "partials_removed": report.partials_removed}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        verb = "would free" if args.dry_run else "freed"
        print(f"gc: {verb} {report.bytes_freed} bytes in {report.objects_removed} object(s); "
              f"{report.objects_kept} kept", file=sys.stderr)
    return EXIT_OK


# -- the rest -----------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from .service import run_service

    return run_service(args.config)


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from shardsync.store import ShardsyncError

    from .client import get_json
    from .config import DEFAULTS
    from .statustable import format_status_table

    sock = args.socket or (_socket_of(args.config) if args.config else None)
    sock = sock or Path(str(DEFAULTS["socket"]))
    try:
        status = get_json(str(sock), "/v1/status")
    except ShardsyncError as exc:
        if not args.json:
            raise
        # --json promises one JSON document on stdout, also when nobody answers.
        json.dump({"running": False, "socket": str(sock), "error": str(exc)}, sys.stdout)
        sys.stdout.write("\n")
        return EXIT_FAILED
    if args.json:
        json.dump(status, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_status_table(status))
    return EXIT_OK


def _socket_of(config_path: Path) -> Path:
    """The socket a config names. A config the service refused to reload must still
    lead to the service (it reports that error), so a broken file falls back to its
    ``socket`` key alone, then to the default."""
    import tomllib

    from .config import DEFAULTS, load_config
    from .errors import ConfigError

    try:
        return Path(load_config(config_path).socket)
    except ConfigError as exc:
        print(f"shardsync: warning: {exc}", file=sys.stderr)
    try:
        raw = tomllib.loads(config_path.read_text()).get("socket")
    except (OSError, ValueError):
        raw = None
    if isinstance(raw, str) and raw:
        return (config_path.parent / raw).resolve()
    return Path(str(DEFAULTS["socket"]))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(args.dir)


def _cmd_nginx(args: argparse.Namespace) -> int:
    from .config import load_config
    from .nginx import render_nginx_config

    config = load_config(args.config)
    print(render_nginx_config(config.site_dir, listen=args.listen, location=args.location),
          end="")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
