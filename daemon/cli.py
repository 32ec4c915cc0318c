"""The `shardsync` command: parses arguments, calls the library, turns errors into exit codes.

Exit status (docs/design.md, "Exit status"): 0 all went well, 1 some model failed (the
others were still done), 2 bad usage or config, 3 the store or the service is not
available to this command (another shardsync holds the store or the socket; for
``status``, no service answers), 130 interrupted (Ctrl-C), 141 stdout was closed
before the report was written. Only this module decides exit statuses; everything
below it raises :class:`~shardsync.daemon.errors.ShardsyncError`, mapped in
:func:`_failure`, the one place.

Reports go to stdout, diagnostics (one ``shardsync: error: ...`` line, never a
traceback for an error the library reports) to stderr. With ``--json`` stdout gets
exactly one JSON document, an error too: ``{"ok": false, "error": ..., "exit": N}``.

Each command imports what it uses inside its own function, and this module imports only
the standard library at the top: a one-shot command on a kiosk is mostly start-up, so
``--help`` loads no trio, httpx or store, ``gc`` and ``status`` no trio, and nothing
but ``run`` loads the service, the control socket, the event log or watchdog
(docs/performance.md, "Start-up"; tests/test_cli_imports.py holds it to that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, logstream

if TYPE_CHECKING:
    from .config import Config
    from .sync import SyncResult

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Busy or absent: another shardsync holds the store or the socket, or no service
#: answers ``status`` (LSB's and ``systemctl status``'s code for "not running").
EXIT_UNAVAILABLE = 3
#: 128 + SIGINT: what a shell reports for a command Ctrl-C killed, so scripts that
#: test for it see an interrupted shardsync the same way.
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for every C tool whose reader went away
#: (``yes | head``). Not the command's own status: its report was cut off.
EXIT_BROKEN_PIPE = 141

#: The config every command reads without ``-c``: where a package puts it (FHS /etc).
DEFAULT_CONFIG = Path("/etc/shardsync/config.toml")

log = logging.getLogger("shardsync")


class UsageError(Exception):
    """A command line that cannot run (argparse's own complaints, an unknown NAME): exit 2.

    argparse would print and exit by itself; raising lets ``--json`` still get its one
    document. ``usage`` is the parser's usage text, printed above the message.
    """

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse, raising :class:`UsageError` instead of exiting (subparsers too: they
    are made of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("shardsync").strip()  # "sync", or "" at the top
        raise UsageError(f"{command}: {message}" if command else message, self.format_usage())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    A closed stdout (``shardsync status --json | head -c1``) ends the command quietly
    with :data:`EXIT_BROKEN_PIPE`: stdout is pointed at /dev/null, as the Python docs'
    note on SIGPIPE recommends, so the interpreter's own flush at exit cannot raise
    again. stdout is flushed here so that such an error shows while it can be handled.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _main(args)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        return EXIT_INTERRUPTED
    return status


def _main(argv: list[str]) -> int:
    wants_json = "--json" in argv  # until argparse has said what argv means
    try:
        logstream.configure()
        parser = _parser()
        try:
            args = parser.parse_args(argv)  # --help and --version exit here
        except UsageError as exc:
            sys.stderr.write(exc.usage)
            return _fail(wants_json, exc)
        wants_json = bool(getattr(args, "json", False))
        if getattr(args, "verbose", False):
            logstream.configure(verbose=True)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args.func(args))
    except BaseException as exc:
        if _failure(exc) is None:
            raise  # a bug (with its traceback), SystemExit, or a closed pipe for main()
        return _fail(wants_json, exc)


def _failure(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for an exception the CLI reports, or None for
    one it must not swallow. A trio nursery may wrap a Ctrl-C, or the one error that
    stopped it, in an exception group: the group counts as what it holds."""
    if isinstance(exc, BaseExceptionGroup):
        if exc.subgroup(KeyboardInterrupt) is not None:
            return EXIT_INTERRUPTED, "interrupted"
        if len(exc.exceptions) == 1:
            return _failure(exc.exceptions[0])
        return None
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if not isinstance(exc, Exception) or "shardsync.store" not in sys.modules:
        return None  # no ShardsyncError can exist before the store is imported
    from shardsync.store import LockedError, ShardsyncError

    from .errors import ConfigError, UnreachableError, WrongUserError

    if isinstance(exc, ConfigError):
        return EXIT_USAGE, f"config error: {exc}"
    if isinstance(exc, WrongUserError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, (LockedError, UnreachableError)):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, ShardsyncError):
        return EXIT_FAILED, str(exc)
    return None


def _fail(wants_json: bool, exc: BaseException, **extra: Any) -> int:
    """Report ``exc`` (one of :func:`_failure`'s) in one line on stderr and, for
    ``--json``, as the one document on stdout; return its exit status."""
    failure = _failure(exc)
    assert failure is not None
    status, message = failure
    log.error("%s", message)
    if wants_json:
        _print_json({"ok": False, "error": message, "exit": status, **extra})
    return status


def _print_json(doc: object) -> None:
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _config_path(args: argparse.Namespace) -> Path:
    """``-c``, or :data:`DEFAULT_CONFIG`; a default that does not exist is a config
    error saying so (a missing file named by ``-c`` is load_config's to report)."""
    if args.config is not None:
        return Path(args.config)
    if not DEFAULT_CONFIG.exists():
        from .errors import ConfigError

        raise ConfigError("no such file (the default config; -c FILE chooses another)",
                          path=str(DEFAULT_CONFIG))
    return DEFAULT_CONFIG


def _load_config(args: argparse.Namespace) -> Config:
    from .config import load_config

    return load_config(_config_path(args))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shardsync", description="Mirror TensorFlow.js models for offline devices.")
    p.add_argument("--version", action="version", version=f"shardsync {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name: str, func: object, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("-v", "--verbose", action="store_true", help="log more (debug lines)")
        return sp

    def config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help=f"the config file (default: {DEFAULT_CONFIG})")

    def json_option(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--json", action="store_true",
                        help=f"{what} as one JSON document on stdout (errors too)")

    sp = cmd("run", _cmd_run, "run the service (foreground; sd_notify under systemd)")
    config(sp)

    sp = cmd("sync", _cmd_sync, "one pass over all (or the named) models, then exit")
    config(sp)
    sp.add_argument("names", nargs="*", metavar="NAME",
                    help="models to sync, as named in the config (default: all)")
    json_option(sp, "each model's result")

    sp = cmd("export", _cmd_export, "write the current version of each (or the named) model "
             "into DIR/<name>/: a plain TF.js directory (origin's manifest, shards, signature)")
    config(sp)
    sp.add_argument("dir", type=Path, metavar="DIR", help="where to write (e.g. a USB stick)")
    sp.add_argument("names", nargs="*", metavar="NAME",
                    help="models to export, as named in the config (default: all)")
    json_option(sp, "each model's export")

    sp = cmd("import", _cmd_import, "publish each configured model found in DIR/<name>/, "
             "verified like a download, with no network")
    config(sp)
    sp.add_argument("dir", type=Path, metavar="DIR", help="an export, or copies of the "
                    "origin's directories, one per model")
    sp.add_argument("names", nargs="*", metavar="NAME",
                    help="models to import, as named in the config (default: all found in DIR)")
    json_option(sp, "each model's result")

    sp = cmd("status", _cmd_status, "ask the running service what every model is doing "
             "(exit 1 if a model's last sync failed, 3 if no service answers)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", type=Path, metavar="FILE",
                   help=f"ask the service of this config (default: {DEFAULT_CONFIG}, "
                        "if it exists, else the default socket)")
    g.add_argument("--socket", type=Path, metavar="PATH",
                   help="ask the service on this control socket")
    json_option(sp, "the service's status")

    sp = cmd("verify", _cmd_verify, "re-hash every object and check every published file")
    config(sp)
    sp.add_argument("--repair", action="store_true",
                    help="put back what is wrong (re-downloading where needed)")
    json_option(sp, "the problems found")

    sp = cmd("gc", _cmd_gc, "drop what no kept version references "
             "(refused, exit 3, while the service runs: it runs gc itself)")
    config(sp)
    sp.add_argument("--dry-run", action="store_true",
                    help="only say what would be freed; remove nothing")
    json_option(sp, "what was (or would be) freed")

    for action, help, version_help in (
        ("rollback", "make a kept version current again and pin it",
         "the kept version (default: the one before the current)"),
        ("pin", "hold a model at a version: it is still checked, but nothing new is "
         "published", "a kept version (default: the current one)"),
        ("unpin", "let a pinned model's updates through again", None),
    ):
        sp = cmd(action, _cmd_pin, help + " (through the service when it runs)")
        sp.set_defaults(action=action)
        config(sp)
        sp.add_argument("name", metavar="NAME", help="the model, as named in the config")
        if version_help:
            sp.add_argument("version", nargs="?", metavar="VERSION", help=version_help)
        json_option(sp, "the model's version and pin")

    sp = cmd("demo", _cmd_demo, "the whole path on built-in sample models, no network")
    sp.add_argument("--dir", type=Path, help="keep the demo here (default: a temp dir)")

    sp = cmd("keygen", _cmd_keygen,
             "write a new Ed25519 private key for signing models; print its public key")
    sp.add_argument("keyfile", type=Path, metavar="KEYFILE",
                    help="where to write the private key (PEM, mode 0600; never overwritten)")

    sp = cmd("sign", _cmd_sign, "sign a model directory: write MANIFEST.sig.json beside it")
    sp.add_argument("--key", required=True, type=Path, metavar="KEYFILE",
                    help="the private key `shardsync keygen` wrote")
    sp.add_argument("manifest", type=Path, metavar="MANIFEST",
                    help="the model's manifest (model.json), its shards beside it")
    sp.add_argument("--expires", default="90d", type=_duration, metavar="DURATION",
                    help="how long the signature is valid (default %(default)s)")
    sp.add_argument("--version", type=_positive, metavar="N", dest="sig_version",
                    help="the signature's version (default: the previous file's + 1)")

    sp = cmd("nginx-config", _cmd_nginx, "print an nginx server block serving site_dir")
    config(sp)
    sp.add_argument("--listen", default="127.0.0.1:8080", metavar="ADDR",
                    help="nginx's listen address (default: %(default)s)")
    sp.add_argument("--location", default="/models/", metavar="PATH",
                    help="the URL path site_dir is served under (default: %(default)s)")
    return p


# -- sync ---------------------------------------------------------------------------


def _cmd_sync(args: argparse.Namespace) -> int:
    """Sync, then report. A Ctrl-C cancels the downloads where they are (their partials
    are checkpointed for the next run) before it reaches :func:`_failure`."""
    import trio

    from shardsync.store import NotFoundError

    from .oneshot import open_store, sync_models
    from .progress import result_line

    config = _load_config(args)
    names = args.names or [m.name for m in config.models]
    try:
        for n in names:
            config.model(n)
    except NotFoundError as exc:
        raise UsageError(exc.reason) from None
    with open_store(config) as store:  # progress: bars on a terminal, else plain lines
        results = trio.run(sync_models, config, store, names, not args.json)
    if args.json:
        _print_json({"models": [r.to_json() for r in results]})
    else:
        for r in results:
            print(result_line(r), file=sys.stderr)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


# -- export and import ----------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    """Export, then report one line per model (stderr) or one JSON document."""
    from shardsync.store import NotFoundError

    from .exchange import export_models
    from .oneshot import open_store
    from .units import format_bytes

    config = _load_config(args)
    names = args.names or [m.name for m in config.models]
    try:
        for n in names:
            config.model(n)
    except NotFoundError as exc:
        raise UsageError(exc.reason) from None
    with open_store(config) as store:
        results = export_models(store, args.dir, names)
    if args.json:
        _print_json({"models": [r.to_json() for r in results]})
    else:
        for r in results:
            line = (f"FAILED  {r.name}: {r.error}" if r.error else
                    f"ok      {r.name}: exported {r.version}; {r.files} files, "
                    f"{format_bytes(r.bytes)} into {r.directory}")
            print(line, file=sys.stderr)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _cmd_import(args: argparse.Namespace) -> int:
    """Import (a sync from ``file://`` URLs), then report as ``sync`` does. Without NAMEs
    a configured model with no ``DIR/<name>/`` is skipped and named; none found: exit 1."""
    import trio

    from shardsync.store import NotFoundError, ShardsyncError

    from .exchange import import_models, import_sources
    from .oneshot import open_store
    from .progress import result_line

    config = _load_config(args)
    try:
        models, absent = import_sources(config, args.dir, args.names)
    except NotFoundError as exc:
        raise UsageError(exc.reason) from None
    if not models:
        raise ShardsyncError("no configured model found there (expected DIR/<name>/ "
                             "holding the model's manifest)", file=str(args.dir))
    with open_store(config) as store:
        results = trio.run(import_models, config, store, models, not args.json)
    if args.json:
        _print_json({"models": [r.to_json() for r in results], "not_found": absent})
    else:
        for r in results:
            print(result_line(r), file=sys.stderr)
        for name in absent:
            print(f"skipped {name}: not in {args.dir}", file=sys.stderr)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


# -- verify and gc ------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    """Verify (and repair); the report, problems and re-syncs alike, goes to stdout."""
    from .oneshot import open_store

    config = _load_config(args)
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
        _print_json({"problems": [p.__dict__ for p in problems],
                     "resynced": [r.to_json() for r in resynced],
                     "ok": not remaining})
    else:
        for p in problems:
            print(p)
        if resynced:
            from .progress import result_line
        for r in resynced:
            print(result_line(r))
        print(f"verify: {len(problems)} problem(s), {len(remaining)} remaining")
    return EXIT_OK if not remaining else EXIT_FAILED


def _cmd_gc(args: argparse.Namespace) -> int:
    """gc by hand; beside a running service the store's LockedError makes it exit 3."""
    from .oneshot import open_store

    config = _load_config(args)
    with open_store(config) as store:
        report = store.gc(dry_run=args.dry_run, sources=config.manifest_urls)
    if args.json:
        _print_json({"dry_run": args.dry_run, "objects_removed": report.objects_removed,
                     "bytes_freed": report.bytes_freed, "objects_kept": report.objects_kept,
                     "partials_removed": report.partials_removed})
    else:
        verb = "would free" if args.dry_run else "freed"
        print(f"gc: {verb} {report.bytes_freed} bytes in {report.objects_removed} object(s); "
              f"{report.objects_kept} kept")
    return EXIT_OK


# -- signing ------------------------------------------------------------------------


def _duration(text: str) -> float:
    """argparse type: a duration as the config writes one (``90d``, ``12h``)."""
    from .config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer of at least 1")
    return int(text)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .signing import generate_key

    print(generate_key(args.keyfile))
    return EXIT_OK


def _cmd_sign(args: argparse.Namespace) -> int:
    from .signing import sign_manifest

    path, doc = sign_manifest(args.key, args.manifest, expires_in=args.expires,
                              version=args.sig_version)
    signed = doc["signed"]
    print(f"{path}: version {signed['version']}, {len(signed['files'])} files, "
          f"expires {signed['expires']}, key id {doc['signatures'][0]['keyid']}",
          file=sys.stderr)
    return EXIT_OK


# -- pin, unpin, rollback -----------------------------------------------------------


def _cmd_pin(args: argparse.Namespace) -> int:
    """pin, unpin and rollback: through the service's socket when one answers (so its
    status knows at once), else on the store itself, whose model lock orders it with
    any other writer. A model or version that does not exist, or is not kept: exit 2."""
    from shardsync.store import NotFoundError

    from .client import post_json
    from .errors import UnreachableError

    config = _load_config(args)
    name, action = args.name, args.action
    version = getattr(args, "version", None)
    try:
        config.model(name)
        try:
            doc = post_json(str(config.socket), f"/v1/models/{name}/{action}",
                            {"version": version} if version else None)
            doc["via"] = "service"
        except UnreachableError:
            from .oneshot import open_store
            from .pinning import apply

            with open_store(config) as store:
                doc = apply(store, name, action, version)
            doc["via"] = "store"
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _print_json(doc)
    elif action == "unpin":
        print(f"{name}: unpinned, current {doc['version']}; "
              + ("checking for updates now" if doc["via"] == "service"
                 else "the next sync publishes what the origin offers"))
    else:
        verb = "rolled back to" if action == "rollback" else "pinned at"
        print(f"{name}: {verb} {doc['version']}" + (", pinned" if action == "rollback" else ""))
    return EXIT_OK


# -- the rest -----------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from .service import run_service

    return run_service(_config_path(args))


def _cmd_status(args: argparse.Namespace) -> int:
    """The service's status; exit 1 when a model's last sync failed (what a monitor
    checks), 3 when no service answers (with ``--json``, a document that says
    ``"running": false`` and which socket was asked)."""
    from .client import get_json
    from .config import DEFAULTS
    from .errors import UnreachableError
    from .statustable import format_status_table

    config = args.config
    if config is None and args.socket is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    sock = args.socket or (_socket_of(config) if config else None)
    sock = sock or Path(str(DEFAULTS["socket"]))
    try:
        status = get_json(str(sock), "/v1/status")
    except UnreachableError as exc:
        return _fail(args.json, exc, running=False, socket=str(sock))
    if args.json:
        _print_json(status)
    else:
        print(format_status_table(status))
    failing = any(m.get("state") == "error" or m.get("last_error")
                  for m in status.get("models", []))
    return EXIT_FAILED if failing else EXIT_OK


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
        log.warning("%s", exc)
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
    from .nginx import render_nginx_config

    config = _load_config(args)
    print(render_nginx_config(config.site_dir, listen=args.listen, location=args.location),
          end="")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
