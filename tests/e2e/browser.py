"""Drive headless Chromium on the pages in tests/e2e/ and judge what TF.js loaded.

The only judge of a mirrored model is the browser that loads it. A test starts
a :class:`Collector` (a small HTTP server on 127.0.0.1 that serves the pages,
TF.js itself, and receives the pages' JSON reports), then calls
:func:`run_page` / :func:`load_models`, which start Chromium with a fresh
profile on a page URL, wait for the page's POST, and kill Chromium. Failure
messages carry Chromium's stderr and the page's own error and log.

:func:`compare_loads` / :func:`assert_same_load` compare a model loaded from
the origin with the same model loaded from the mirror, and say which model,
which weight (or prediction output) and what differed.

Where TF.js comes from: ``tests/setup-deps.sh`` npm-installs it into
``$SHARDSYNC_TEST_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/shardsync-tests``);
:func:`tfjs_path` finds ``tf.min.js`` there by the same rule.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "CHROMIUM_FLAGS",
    "E2E_DIR",
    "PAGE_TIMEOUT",
    "TFJS_VERSION",
    "Collector",
    "assert_progress",
    "assert_same_load",
    "assert_whole_versions",
    "chromium_path",
    "compare_loads",
    "load_models",
    "read_during_updates",
    "run_chromium",
    "run_page",
    "tfjs_path",
]

#: The folder holding the pages, served at ``/e2e/`` by the Collector.
E2E_DIR = Path(__file__).resolve().parent

#: The TF.js release tests/setup-deps.sh installs (keep the two equal).
TFJS_VERSION = "4.22.0"

#: Exactly these, plus a fresh --user-data-dir: without the networking flags
#: Chromium tries to reach Google's hosts, and this machine's network is closed.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)

#: Seconds a page may take to report: Chromium starts in 1-2 s, but the machine
#: has 2 shared cores and the CPU backend runs a prediction per model.
PAGE_TIMEOUT = 60.0

#: How often the wait for a report also checks that Chromium is still alive.
_ALIVE_CHECK = 0.25

#: Bytes per chunk hash in a page's digests: common.js CHUNK_BYTES (keep equal).
_CHUNK_BYTES = 4096

#: Seconds Chromium gets to exit on SIGTERM before SIGKILL (it exits in well under 1 s).
_STOP_GRACE = 10.0

#: Lines of Chromium's stderr quoted in a failure message.
_STDERR_TAIL = 40

#: Differences listed in one assertion message before "and N more".
_MAX_DIFFS = 8

_PAGE_FILE_RE = re.compile(r"^/e2e/([a-z0-9_-]+\.(?:html|js))$")
_POST_RE = re.compile(r"^/(report|log|gate)/([0-9a-f]+)$")
_CTYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def tfjs_path() -> Path:
    """``tf.min.js`` as tests/setup-deps.sh installed it; AssertionError if it is missing."""
    cache = os.environ.get("SHARDSYNC_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shardsync-tests"
    )
    path = Path(cache) / "npm" / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js"
    pkg = path.parent.parent / "package.json"
    assert path.is_file() and pkg.is_file(), (
        f"TF.js is not installed at {path}: run `bash tests/setup-deps.sh` first"
    )
    version = json.loads(pkg.read_text()).get("version")
    assert version == TFJS_VERSION, (
        f"{pkg} is TF.js {version}, the tests pin {TFJS_VERSION}: run `bash tests/setup-deps.sh`"
    )
    return path


def chromium_path() -> str:
    """Debian's chromium; AssertionError saying how to install it if it is missing."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    assert found, "chromium is not installed: run `bash tests/setup-deps.sh` (as root) first"
    return found


@dataclass
class _Expected:
    """What the collector knows about one page visit, keyed by its token."""

    gate: Callable[[dict[str, Any]], Any] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    log: list[str] = field(default_factory=list)
    gate_error: BaseException | None = None


class Collector:
    """HTTP server on 127.0.0.1 for the pages: serves them, TF.js, and takes their reports.

    ``GET /e2e/<file>`` serves this folder's .html/.js (or a page a test gave
    :meth:`add_page`), ``GET /tfjs/tf.min.js`` serves TF.js.
    ``POST /report/<token>`` stores a page's result,
    ``POST /log/<token>`` appends a line to its log, and ``POST /gate/<token>``
    calls the visit's ``gate`` (in the server's thread, so the page waits until
    it returns) and answers its return value as JSON. Use as a context manager;
    the server thread stops on exit.
    """

    def __init__(self) -> None:
        self._tfjs = tfjs_path()
        self._visits: dict[str, _Expected] = {}
        self._pages: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Collector:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the tests report what matters; keep pytest's output clean

            def do_GET(self) -> None:  # noqa: N802
                collector._get(self)

            def do_POST(self) -> None:  # noqa: N802
                collector._post(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        assert self._server is not None, "use Collector as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_page(self, name: str, html: str) -> None:
        """Serve ``html`` at ``/e2e/<name>`` (e.g. a page copied out of the README)."""
        assert _PAGE_FILE_RE.match(f"/e2e/{name}") and name.endswith(".html"), name
        with self._lock:
            self._pages[name] = html.encode()

    def expect(self, gate: Callable[[dict[str, Any]], Any] | None = None) -> str:
        """Register a page visit; return its token."""
        token = secrets.token_hex(8)
        with self._lock:
            self._visits[token] = _Expected(gate=gate)
        return token

    def log(self, token: str) -> list[str]:
        """Lines the visit's page POSTed to its log so far."""
        return list(self._visits[token].log)

    def wait(self, token: str, timeout: float, alive: Callable[[], str | None]) -> Any:
        """Wait for the visit's report and return it.

        ``alive()`` returns None while the browser runs, or why it stopped.
        Raises AssertionError on timeout, on a dead browser, or if the gate raised.
        """
        visit = self._visits[token]
        deadline = time.monotonic() + timeout
        while not visit.done.wait(_ALIVE_CHECK):
            dead = alive()
            if dead is not None:
                raise AssertionError(f"the browser stopped before the page reported: {dead}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not report within {timeout} s")
        if visit.gate_error is not None:
            raise AssertionError(f"the test's gate failed: {visit.gate_error!r}") from (
                visit.gate_error
            )
        return visit.result

    # -- request handling (server threads) --

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser was killed after it had what it needed

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        m = _PAGE_FILE_RE.match(path)
        if m and m.group(1) in self._pages:
            self._send(h, 200, self._pages[m.group(1)], _CTYPES[".html"])
        elif m and (E2E_DIR / m.group(1)).is_file():
            name = m.group(1)
            self._send(h, 200, (E2E_DIR / name).read_bytes(), _CTYPES[Path(name).suffix])
        elif path == "/tfjs/tf.min.js":
            self._send(h, 200, self._tfjs.read_bytes(), _CTYPES[".js"])
        else:
            self._send(h, 404, b"not found\n", "text/plain")

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        m = _POST_RE.match(h.path)
        visit = self._visits.get(m.group(2)) if m else None
        if m is None or visit is None:
            self._send(h, 404, b"{}", "application/json")
            return
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        kind = m.group(1)
        answer: Any = {}
        status = 200
        if kind == "report":
            # Answer before telling the test, which then kills the browser.
            self._send(h, 200, b"{}", "application/json")
            visit.result = json.loads(body)
            visit.done.set()
            return
        if kind == "log":
            visit.log.append(json.loads(body).get("line", ""))
        elif visit.gate is None:
            status = 404
        else:
            try:
                answer = visit.gate(json.loads(body))
            except BaseException as exc:  # handed to the test by wait()
                visit.gate_error = exc
                visit.done.set()
                status = 500
        self._send(h, status, json.dumps(answer).encode(), "application/json")


@contextmanager
def run_chromium(
    url: str, workdir: Path, *, profile: Path | None = None
) -> Iterator[Callable[[], str | None]]:
    """Run headless Chromium on ``url`` with a fresh profile in ``workdir``; kill it on exit.

    With ``profile``, that profile directory is used (created if missing) and kept
    afterwards, so that a later run is "the same browser, reopened": its Cache API
    storage, HTTP cache and service workers are still there. Yields ``alive()``:
    None while Chromium runs, else its exit status. An AssertionError raised inside
    gets Chromium's stderr tail appended. Chromium runs in its own process group,
    which is killed whole.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    keep = profile is not None
    if profile is None:
        profile = workdir / f"chromium-profile-{secrets.token_hex(4)}"
    profile.mkdir(parents=True, exist_ok=keep)
    stderr_path = workdir / f"{profile.name}-{secrets.token_hex(4)}.stderr"
    # Chromium puts its singleton socket in $TMPDIR (a socket path must stay
    # under 108 bytes, so a short directory of our own in /tmp, not the test's
    # deep tmp_path) and crash reports under $XDG_CONFIG_HOME (not ~/.config).
    tmpdir = Path(tempfile.mkdtemp(prefix="shardsync-chromium-"))
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmpdir), "XDG_CONFIG_HOME": str(tmpdir),
                 "XDG_CACHE_HOME": str(tmpdir)},
        )

    def alive() -> str | None:
        if proc.poll() is None:
            return None
        return f"chromium exited with status {proc.returncode}"

    try:
        yield alive
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- chromium stderr (tail) ---\n{_tail(stderr_path)}") from (
            exc.__cause__
        )
    finally:
        _kill_group(proc)
        if not keep:
            shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop Chromium's process group (ours: it was started in a new session)."""
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()
    # Helpers (renderer, zygote) may outlive the browser for a moment; the group
    # is ours alone, so make sure none stays behind.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no stderr)"
    return "\n".join(lines[-_STDERR_TAIL:])


def run_page(
    collector: Collector,
    page: str,
    spec: dict[str, Any],
    *,
    workdir: Path,
    timeout: float = PAGE_TIMEOUT,
    gate: Callable[[dict[str, Any]], Any] | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Open ``/e2e/<page>?spec=<json>`` in Chromium; return the page's report.

    ``spec`` gets ``report``, ``log`` and (with ``gate``) ``gate`` URLs added.
    ``profile`` is :func:`run_chromium`'s (a kept profile, to reopen).
    Raises AssertionError, with Chromium's stderr and the page's log and error,
    if the page does not report in time or reports ``ok: false``.
    """
    token = collector.expect(gate)
    spec = {**spec, "report": f"/report/{token}", "log": f"/log/{token}",
            "gate": f"/gate/{token}" if gate else None}
    url = f"{collector.url}/e2e/{page}?spec={quote(json.dumps(spec, separators=(',', ':')))}"
    with run_chromium(url, workdir, profile=profile) as alive:
        try:
            result = collector.wait(token, timeout, alive)
        except AssertionError as exc:
            raise AssertionError(f"{page}: {exc}{_page_log(collector, token)}") from exc
        if not result.get("ok"):
            raise AssertionError(
                f"{page} reported an error: {result.get('error')}{_page_log(collector, token)}"
            )
    return result


def _page_log(collector: Collector, token: str) -> str:
    lines = collector.log(token)
    return ("\n--- page log ---\n" + "\n".join(lines)) if lines else ""


def load_models(
    collector: Collector, models: list[dict[str, Any]], *, workdir: Path,
    timeout: float = PAGE_TIMEOUT, script: str | None = None,
    gate: Callable[[dict[str, Any]], Any] | None = None, profile: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Load ``models`` in one page visit (load.html); return each model's result by id.

    Each model is ``{"id", "kind": "graph"|"layers"|"weights", "url"}``, optionally
    ``"predict": False`` or ``"inputShapes"``. A result holds ``ok``, ``error``,
    ``weights`` (name -> dtype, shape, bytes, sha256, chunks, head, stats),
    ``outputs`` (the prediction's digests, or None) and ``fetched`` (every URL the
    browser requested for that model). A model that fails to load does not stop
    the others: its result has ``ok: False`` and the error.

    ``script`` is the URL of shardsync.js, added to the page: a model with
    ``"via": "shardsync"`` is loaded by ``shardsync.load`` and its result adds
    ``progress`` (every fraction reported), ``version``, ``offline``, ``format``,
    ``fromCache``, ``evicted``, ``cacheError`` and ``cached`` (the versions its
    cache holds whole afterwards). A model with ``"gateBefore": True`` is loaded
    only after ``gate({"id": ...})`` returned (so a test can publish in between).
    """
    spec = {"models": models, "script": script}
    report = run_page(collector, "load.html", spec, workdir=workdir, timeout=timeout,
                      gate=gate, profile=profile)
    return {m["id"]: m for m in report["models"]}


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else "(no error text)"


def _describe(d: dict[str, Any]) -> str:
    return f"{d.get('dtype')} {d.get('shape')}"


def _where(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where two digests of one tensor first differ, from their chunk hashes."""
    ca, cb = a.get("chunks") or [], b.get("chunks") or []
    first = next((i for i, (x, y) in enumerate(zip(ca, cb, strict=False)) if x != y), None)
    if first is None:
        return ""
    start, end = first * _CHUNK_BYTES, min((first + 1) * _CHUNK_BYTES, a["bytes"])
    count = math.prod(a.get("shape") or [])
    if a.get("dtype") != "string" and count and a["bytes"] % count == 0:
        size = a["bytes"] // count
        return (f"; first difference in elements {start // size}..{end // size} "
                f"of {count} (bytes {start}..{end})")
    return f"; first difference in bytes {start}..{end} of {a['bytes']}"


def _diff_tensor(what: str, a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if (a.get("dtype"), a.get("shape")) != (b.get("dtype"), b.get("shape")):
        return f"{what}: origin is {_describe(a)}, mirror is {_describe(b)}"
    if a.get("sha256") == b.get("sha256"):
        return None
    return (
        f"{what} ({_describe(a)}) differs: sha256 origin {a['sha256'][:16]}, "
        f"mirror {b['sha256'][:16]}{_where(a, b)}; origin head {a.get('head')} "
        f"stats {a.get('stats')}, mirror head {b.get('head')} stats {b.get('stats')}"
    )


def compare_loads(origin: dict[str, Any], mirror: dict[str, Any]) -> list[str]:
    """Every difference between two load results of one model (empty if identical)."""
    if not origin.get("ok"):
        return [f"loading from the origin failed ({origin.get('url')}): "
                f"{_first_line(origin.get('error'))}"]
    if not mirror.get("ok"):
        return [f"loading from the mirror failed ({mirror.get('url')}): "
                f"{_first_line(mirror.get('error'))}"]
    diffs = []
    wa, wb = origin["weights"], mirror["weights"]
    diffs += [f"weight {n!r} is missing from the mirror's load" for n in wa if n not in wb]
    diffs += [f"weight {n!r} is only in the mirror's load" for n in wb if n not in wa]
    for name in wa:
        if name in wb and (d := _diff_tensor(f"weight {name!r}", wa[name], wb[name])):
            diffs.append(d)
    oa, ob = origin.get("outputs"), mirror.get("outputs")
    if (oa is None) != (ob is None) or (oa and len(oa) != len(ob)):
        diffs.append(f"prediction: origin gave {oa and len(oa)} outputs, "
                     f"mirror {ob and len(ob)}")
    elif oa:
        for i, (x, y) in enumerate(zip(oa, ob, strict=True)):
            if d := _diff_tensor(f"prediction output {i}", x, y):
                diffs.append(d)
    return diffs


def assert_same_load(origin: dict[str, Any], mirror: dict[str, Any], *, model: str) -> None:
    """AssertionError naming ``model`` and each differing weight/output, if any differ."""
    diffs = compare_loads(origin, mirror)
    if diffs:
        more = f"\n  ... and {len(diffs) - _MAX_DIFFS} more" if len(diffs) > _MAX_DIFFS else ""
        raise AssertionError(
            f"model {model}: the mirror's load differs from the origin's "
            f"({len(diffs)} differences):\n  " + "\n  ".join(diffs[:_MAX_DIFFS]) + more
        )


def read_during_updates(
    collector: Collector,
    model: dict[str, Any],
    *,
    workdir: Path,
    loads: int,
    gate: Callable[[dict[str, Any]], Any] | None = None,
    pause_ms: int = 0,
    references: dict[str, dict[str, Any]] | None = None,
    service_worker: bool = False,
    timeout: float = PAGE_TIMEOUT,
    script: str | None = None,
) -> dict[str, Any]:
    """Run readers.html: load ``model`` ``loads`` times, each paused between manifest and shards.

    Before the first shard request of load ``i``, the page POSTs
    ``{"i": i, "manifestVersions": [...]}`` to ``gate`` (called in the
    collector's thread; the page waits for it, so a test can publish a new
    version exactly there; its return value is kept as the load's ``gate``),
    then waits ``pause_ms``. ``references`` maps an id to a model spec
    (``{"kind", "url"}``, e.g. the origin's copy of one state of the model),
    loaded once each after the loop; :func:`assert_whole_versions` compares a
    load of version V with the reference whose ``id`` is V (a caller that
    learns the versions only during the run renames the ids afterwards). With
    ``service_worker`` the page runs under sw.js, which caches shards by URL;
    the report's ``sw`` then holds its hits and misses. With ``script`` (the URL
    of shardsync.js) and ``"via": "shardsync"`` in ``model``, each load is
    ``shardsync.load`` through the same held fetchFunc; a load then also has
    ``version``, ``offline`` and ``fromCache`` (shard URLs its cache served, which
    count in ``shardVersions``).
    Returns the report: ``loads`` (each: ``i``, ``ok``, ``error``,
    ``manifestVersions``, ``shardUrls``, ``shardVersions``, ``statuses``,
    ``weights`` name -> sha256, ``gate``), ``references`` (as load_models
    gives them, with the ids given), ``sw``.
    """
    refs = [{**r, "id": v} for v, r in (references or {}).items()]
    spec = {"model": model, "loads": loads, "pauseMs": pause_ms, "sw": service_worker,
            "references": refs, "script": script}
    return run_page(collector, "readers.html", spec, workdir=workdir, timeout=timeout, gate=gate)


def assert_whole_versions(report: dict[str, Any], *, model: str) -> None:
    """AssertionError unless every load in a readers.html report is one version, whole.

    A load is whole when its manifest names one version, every shard URL names
    that same version and answered 200, and its weights equal, name for name
    and byte for byte, the reference loaded for that version. The message names
    the model, the load, the version and the weights that differ.
    """
    refs = {r["id"]: r for r in report.get("references", [])}
    problems = []
    for load in report["loads"]:
        where = f"load {load['i']}"
        if not load.get("ok"):
            problems.append(f"{where} failed: {_first_line(load.get('error'))}")
            continue
        versions = load["manifestVersions"]
        if len(versions) != 1 or versions[0] is None:
            problems.append(f"{where}: its manifest names versions {versions}, not exactly one")
            continue
        version = versions[0]
        where += f" (version {version})"
        if load["shardVersions"] != [version]:
            problems.append(f"{where}: shards came from versions {load['shardVersions']}: "
                            f"{load['shardUrls']}")
        if any(status != 200 for status in load["statuses"]):
            problems.append(f"{where}: shard statuses {load['statuses']}")
        ref = refs.get(version)
        if ref is None or not ref.get("ok"):
            problems.append(f"{where}: no reference load for this version "
                            f"({ref and _first_line(ref.get('error'))})")
            continue
        want = {name: d["sha256"] for name, d in ref["weights"].items()}
        got = load["weights"]
        wrong = sorted(n for n in want.keys() | got.keys() if want.get(n) != got.get(n))
        if wrong:
            shown = ", ".join(repr(n) for n in wrong[:_MAX_DIFFS])
            more = f" and {len(wrong) - _MAX_DIFFS} more" if len(wrong) > _MAX_DIFFS else ""
            problems.append(f"{where}: weights {shown}{more} differ from that version's "
                            f"reference ({ref.get('url')})")
    if problems:
        raise AssertionError(
            f"model {model}: {len(problems)} problem(s) in {len(report['loads'])} loads "
            f"during updates:\n  " + "\n  ".join(problems)
        )


def assert_progress(fractions: list[Any], *, model: str) -> None:
    """AssertionError unless ``fractions`` (what onProgress got) rise strictly to exactly 1.

    At least two (a start and the end), every one a number in [0, 1], each above
    the one before, the last exactly 1 and no earlier one 1.
    """
    problems = []
    if len(fractions) < 2:
        problems.append(f"only {len(fractions)} report(s)")
    if any(not isinstance(f, int | float) or not 0 <= f <= 1 for f in fractions):
        problems.append("a fraction outside [0, 1] or not a number")
    elif any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
        problems.append("a fraction did not rise")
    if not fractions or fractions[-1] != 1:
        problems.append(f"the last is {fractions[-1] if fractions else None}, not exactly 1")
    if problems:
        shown = fractions if len(fractions) <= _MAX_DIFFS else [*fractions[:_MAX_DIFFS], "..."]
        raise AssertionError(f"model {model}: progress {shown}: " + "; ".join(problems))
