"""The TOML config file: where things live, how often to check, which models to mirror.

:func:`load_config` reads the file described in docs/design.md ("Config") and
``config.example.toml`` into a frozen :class:`Config`, or raises one
:class:`~shardsync.daemon.errors.ConfigError` naming the file, the key (``interval``,
``model[2].url``) and, where it can be found, the line. Nothing here acts on the
config: the service keeps the last good one when a reload fails.

Choices beyond docs/design.md: a duration is a string of one or more ``<number><unit>``
parts with unit ``s``, ``m``, ``h`` or ``d`` (``"90s"``, ``"1h30m"``, ``"1.5h"``), or a
bare TOML number, read as seconds. ``[[model]]`` and ``[[origin]]`` blocks are numbered
from 1 in error keys (``model[1]`` is the first block), the way an operator counts them.

``[[origin]]`` blocks (docs/design.md, "Additions for the field") are read into
:class:`OriginConfig`: their files are opened here (a missing or unreadable one, a
PEM that does not load, an empty token is a ConfigError naming key, file and line),
and a token or key file that group or others may read is logged as a warning naming
it. The token itself is read here, so a reload picks up a rotated one.
``public_keys`` are checked and kept for signature checks. A model URL's
``user:password@`` is taken out of it (:func:`.urls.split_userinfo`): ``url`` is the
canonical URL that is stored and shown, ``userinfo`` the credential, sent only to URLs
in the manifest's directory. ``mirrors`` get the same checks and the same split, each
its own (:meth:`ModelConfig.sources`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import ssl
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shardsync.store import NotFoundError, UnsafePathError, check_name

from .errors import ConfigError, ManifestError
from .pagescript import PAGE_SCRIPT
from .signing import KEY_PREFIX, parse_public_key
from .tfjs import DEFAULT_MAX_TOTAL, manifest_filename
from .tls import tls_context
from .urls import file_path, origin_key, redact_url, split_userinfo
from .windows import Window, parse_windows

__all__ = [
    "DEFAULTS",
    "Config",
    "ModelConfig",
    "OriginConfig",
    "load_config",
    "origin_for",
    "parse_config",
    "parse_duration",
    "parse_listen",
    "parse_rate",
    "parse_size",
]

#: The defaults of docs/design.md's config example, as written in a config file.
DEFAULTS: dict[str, Any] = {
    "state_dir": "/var/lib/shardsync",           # FHS: persistent state of a service
    "site_dir": "/var/lib/shardsync/site",       # beside the state, on the same filesystem,
                                                 # so shards can be hardlinked, not copied
    "socket": "/run/shardsync/control.sock",     # FHS: runtime files; systemd's RuntimeDirectory
    "interval": "30m",                           # models change rarely; a check costs only 304s
    # docs/performance.md, "Download concurrency": 4 in flight beat 1 and 8 on 2 cores.
    "concurrency": 4,
    "keep_versions": 2,                          # the current version and one to roll back to
    "max_model_bytes": DEFAULT_MAX_TOTAL,        # see tfjs.DEFAULT_MAX_TOTAL
    "metrics_listen": "",                        # off: /metrics only on the control socket
    "max_rate": "0",                             # bytes/s for all downloads together; no limit
    "download_windows": [],                      # local times bodies may come in; always
}

log = logging.getLogger(__name__)

_TOP_KEYS = frozenset(DEFAULTS) | {"model", "origin"}
_MODEL_KEYS = frozenset({"name", "url", "mirrors", "interval", "public_keys"})
_ORIGIN_KEYS = frozenset({"prefix", "ca_file", "client_cert", "client_key", "token_file",
                          "headers", "proxy", "public_keys", "max_rate"})

#: Request headers an ``[[origin]]`` may not set: the ones the fetcher's protocol is
#: made of (conditional requests, resumes, raw bytes), the ones that frame the message
#: or the connection (smuggling), and the proxy's own (sent to the proxy, not to the
#: origin). ``Authorization`` comes from ``token_file`` when that is set.
_RESERVED_HEADERS = frozenset({
    "host", "range", "if-range", "if-none-match", "if-modified-since", "if-match",
    "if-unmodified-since", "accept-encoding", "content-length", "transfer-encoding",
    "content-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "expect",
    "proxy-authorization", "proxy-connection",
})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_REQUIRED_MODEL_KEYS = ("name", "url")

# Seconds per duration unit.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")

# Bytes per size unit (binary, as disk tools and TF.js shard sizes count).
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


@dataclass(frozen=True)
class ModelConfig:
    """One ``[[model]]``: ``interval`` is its own, or else the file's default (seconds).

    ``public_keys`` are raw Ed25519 public keys (32 bytes each); with any, the model must
    carry a valid signature by one of them (:func:`.signing.trusted_keys`). ``url`` is
    canonical: without the ``user:password@`` the config may have written in it, which
    is ``userinfo`` (never shown: ``repr=False``).
    """

    name: str
    url: str
    interval: float
    public_keys: tuple[bytes, ...] = ()
    userinfo: tuple[str, str] | None = field(default=None, repr=False)
    #: Canonical URLs tried in order when ``url`` fails (docs/design.md, "Mirrors");
    #: ``mirror_userinfo`` holds their credentials, one per mirror (None: none).
    mirrors: tuple[str, ...] = ()
    mirror_userinfo: tuple[tuple[str, str] | None, ...] = field(default=(), repr=False)

    def sources(self) -> tuple[ModelConfig, ...]:
        """The model as each of its sources serves it: ``url`` first, then each mirror in
        order, each with its own URL and userinfo and no mirrors of its own. A sync reads
        a whole model (manifest, signature, shards) from one of them, because shard URLs
        are relative to the manifest's; everything else (name, keys) is the model's."""
        infos = self.mirror_userinfo or (None,) * len(self.mirrors)
        return (replace(self, mirrors=(), mirror_userinfo=()),
                *(replace(self, url=u, userinfo=ui, mirrors=(), mirror_userinfo=())
                  for u, ui in zip(self.mirrors, infos, strict=True)))


@dataclass(frozen=True)
class OriginConfig:
    """One ``[[origin]]``: how every URL starting with ``prefix`` is reached.

    ``prefix`` is normalized by :func:`.urls.origin_key` (scheme and host lower-case, no
    default port, at least ``/`` as path). Paths are absolute; ``token`` is the first
    line of ``token_file``. ``token``, ``headers`` and ``proxy`` (which may hold a
    proxy password) are kept out of ``repr``: a logged config shows no secret.
    ``public_keys`` are raw Ed25519 keys (from ``"ed25519:BASE64"``), joined into every
    model under the prefix (a model trusts its own keys and its origin's).
    """

    prefix: str
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    proxy: str | None = field(default=None, repr=False)
    public_keys: tuple[bytes, ...] = ()
    #: Bytes/s for the bodies of downloads from URLs under ``prefix``; 0: no limit.
    max_rate: int = 0

    def covers(self, url: str) -> bool:
        """Whether ``url`` is under ``prefix`` (compared as :func:`.urls.origin_key`)."""
        try:
            return origin_key(url).startswith(self.prefix)
        except ValueError:
            return False


@dataclass(frozen=True)
class Config:
    """A whole config file. Paths are absolute; durations are in seconds.

    ``path`` is the absolute path of the file it was read from (relative paths in it
    were resolved against that file's directory).
    """

    path: Path
    state_dir: Path
    site_dir: Path
    socket: Path
    interval: float
    concurrency: int
    keep_versions: int
    max_model_bytes: int
    models: tuple[ModelConfig, ...]
    #: ``(host, port)`` to serve ``GET /metrics`` on over TCP, or None (the default: off).
    metrics_listen: tuple[str, int] | None = None
    origins: tuple[OriginConfig, ...] = ()
    #: Bytes/s for the bodies of all downloads together (:mod:`.ratelimit`); 0: no limit.
    max_rate: int = 0
    #: When bodies may be downloaded (:mod:`.windows`); empty: always.
    download_windows: tuple[Window, ...] = ()

    def origin_for(self, url: str) -> OriginConfig | None:
        """The ``[[origin]]`` that applies to ``url``: the longest prefix it starts with."""
        return origin_for(self.origins, url)

    @property
    def manifest_urls(self) -> frozenset[str]:
        """Every configured model's manifest URL: the sources whose download records
        (:meth:`Store.downloaded`) are kept."""
        return frozenset(s.url for m in self.models for s in m.sources())

    def model(self, name: str) -> ModelConfig:
        """Return the model called ``name``; NotFoundError if the config has none."""
        for m in self.models:
            if m.name == name:
                return m
        raise NotFoundError(f"no model {name!r} in {self.path}", model=name)


def origin_for(origins: tuple[OriginConfig, ...], url: str) -> OriginConfig | None:
    """The one of ``origins`` whose prefix is the longest that ``url`` starts with."""
    best: OriginConfig | None = None
    for o in origins:
        if o.covers(url) and (best is None or len(o.prefix) > len(best.prefix)):
            best = o
    return best


def parse_duration(value: Any) -> float:
    """Return ``value`` (``"90s"``, ``"30m"``, ``"6h"``, ``"1d"``, ``"1h30m"``, or a
    number of seconds) in seconds. Raises ValueError with the reason if it is not a
    positive duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration like \"90s\", \"30m\", \"6h\", \"1d\"")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than zero")
    return seconds


def parse_size(value: Any) -> int:
    """Return ``value`` (an integer of bytes, or ``"8GiB"``, ``"512 MiB"``) in bytes.

    Raises ValueError with the reason if it is not a positive size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)) and m[2] in _SIZE_UNITS:
        size = int(m[1]) * _SIZE_UNITS[m[2]]
    else:
        raise ValueError(f"{value!r} is not a size: an integer of bytes, or like \"8GiB\"")
    if size <= 0:
        raise ValueError(f"size {value!r} must be more than zero")
    return size


def parse_rate(value: Any) -> int:
    """Return ``value`` (bytes/s: a size, as :func:`parse_size` reads it, or ``0`` /
    ``"0"`` for no limit) as an integer; ValueError with the reason otherwise."""
    if value == 0 and not isinstance(value, bool) or isinstance(value, str) and \
            value.strip() == "0":
        return 0
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (bytes/s; \"0\" for no limit)") from None


def parse_listen(value: Any) -> tuple[str, int] | None:
    """Return ``value`` (``"127.0.0.1:9464"``, ``"[::1]:9464"``, or ``""`` for off) as
    ``(host, port)``, or None for ``""``. Raises ValueError with the reason otherwise.

    The host must be an IP address, not a name: resolving a name could bind other
    addresses than the operator meant (``localhost`` is ``::1`` too), and would make
    reading the config depend on the resolver. The port must be 1..65535; 0 (any free
    port) is refused because nobody could then find where Prometheus should scrape.
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string like \"127.0.0.1:9464\"")
    text = value.strip()
    if not text:
        return None
    example = 'an IP address and a port, like "127.0.0.1:9464" or "[::1]:9464"'
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not {example}")
        version = 6
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{value!r} is not {example} (an IPv6 address goes in brackets)")
        version = 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address; use {example}") from None
    if address.version != version:
        raise ValueError(f"{value!r} is not {example}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return str(address), int(port_text)


def load_config(path: str | Path) -> Config:
    """Read and check the config file at ``path``; raise ConfigError if it is wrong.

    The error names the file, the key and the line where they are known, for every
    problem: unreadable file, TOML syntax, unknown key, wrong type, bad duration or
    size, bad URL (only http/https with a host, naming a manifest file), bad or
    duplicate model name, non-positive concurrency, keep_versions below 1, a
    metrics_listen that is not an IP address and port.
    """
    abspath = Path(path).absolute()
    try:
        raw = abspath.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config: {exc.strerror or exc}",
                          path=str(abspath)) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("the config is not UTF-8 text", path=str(abspath), line=line) from exc
    return parse_config(text, path=abspath)


def parse_config(text: str, *, path: Path) -> Config:
    """Check the config ``text`` as if read from ``path`` (relative paths resolve
    against its directory); raise ConfigError as :func:`load_config` does.
    """
    path = Path(path).absolute()
    where = _Locator(text, str(path))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"TOML syntax error: {exc}", path=str(path),
                          line=int(m[1]) if m else None) from exc

    for key in doc:
        if key not in _TOP_KEYS:
            raise where.error(f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})",
                              key)
    values = {**DEFAULTS, **{k: v for k, v in doc.items() if k != "model"}}

    def directory(key: str) -> Path:
        value = values[key]
        if not isinstance(value, str) or not value.strip():
            raise where.error(f"must be a path (a non-empty string), not {value!r}", key)
        # relative to the file's directory; an absolute value replaces it
        return Path(os.path.normpath(path.parent / value))

    state_dir, site_dir, socket = directory("state_dir"), directory("site_dir"), directory("socket")
    if state_dir == site_dir or site_dir in state_dir.parents:
        raise where.error("state_dir must not be site_dir or inside it: the web server "
                          "would serve the store's internals", "state_dir")

    interval = _checked(where, "interval", parse_duration, values["interval"])
    max_model_bytes = _checked(where, "max_model_bytes", parse_size, values["max_model_bytes"])
    concurrency = _positive_int(where, "concurrency", values["concurrency"], 1)
    keep_versions = _positive_int(where, "keep_versions", values["keep_versions"], 1)
    metrics_listen = _checked(where, "metrics_listen", parse_listen, values["metrics_listen"])
    max_rate = _checked(where, "max_rate", parse_rate, values["max_rate"])
    download_windows = _checked(where, "download_windows", parse_windows,
                                values["download_windows"])

    blocks = doc.get("model", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise where.error("must be [[model]] blocks (an array of tables)", "model")
    models: list[ModelConfig] = []
    first_line: dict[str, int | None] = {}
    for i, block in enumerate(blocks):
        model = _model(where, i, block, interval)
        if model.name in first_line:
            other = first_line[model.name]
            at = f" (first at line {other})" if other else ""
            raise where.error(f"duplicate model name {model.name!r}{at}", "name", model=i)
        first_line[model.name] = where.line("name", model=i)
        models.append(model)

    origin_blocks = doc.get("origin", [])
    if not isinstance(origin_blocks, list) or not all(isinstance(b, dict)
                                                      for b in origin_blocks):
        raise where.error("must be [[origin]] blocks (an array of tables)", "origin")
    origins: list[OriginConfig] = []
    prefixes: dict[str, int] = {}
    for i, block in enumerate(origin_blocks):
        origin = _origin(where, i, block, path.parent)
        if origin.prefix in prefixes:
            raise where.error(f"duplicate prefix {origin.prefix!r} (also in "
                              f"origin[{prefixes[origin.prefix] + 1}])", "prefix", origin=i)
        prefixes[origin.prefix] = i
        origins.append(origin)

    # A model trusts its own keys and its origin's (docs/design.md: "per model, in addition to
    # its origin's"): joined here, once, so signing.trusted_keys reads the model alone.
    # A mirror's origin counts as the model's too: its keys then hold whichever source
    # serves the model, so a mirror cannot bring in unsigned what its origin signs.
    for n, model in enumerate(models):
        joined = model.public_keys
        for source in model.sources():
            home = origin_for(tuple(origins), source.url)
            if home is not None and home.public_keys:
                joined = tuple(dict.fromkeys(joined + home.public_keys))
        if joined != model.public_keys:
            models[n] = replace(model, public_keys=joined)

    return Config(path=path, state_dir=state_dir, site_dir=site_dir, socket=socket,
                  interval=interval, concurrency=concurrency, keep_versions=keep_versions,
                  max_model_bytes=max_model_bytes, models=tuple(models),
                  metrics_listen=metrics_listen, origins=tuple(origins),
                  max_rate=max_rate, download_windows=download_windows)


def _model(where: _Locator, i: int, block: dict[str, Any], default_interval: float) -> ModelConfig:
    for key in block:
        if key not in _MODEL_KEYS:
            raise where.error(f"unknown key {key!r} (known: {', '.join(sorted(_MODEL_KEYS))})",
                              key, model=i)
    for key in _REQUIRED_MODEL_KEYS:
        if key not in block:
            raise where.error(f"missing {key!r}", key, model=i)
    name, url = block["name"], block["url"]
    if not isinstance(name, str):
        raise where.error(f"must be a string, not {name!r}", "name", model=i)
    try:
        check_name(name)
    except UnsafePathError as exc:
        raise where.error(exc.reason, "name", model=i) from exc
    if name == PAGE_SCRIPT:
        # site_dir/<name>/ is the model's directory, and this name is the page script's.
        raise where.error(f"{name!r} is reserved for the page script in site_dir", "name",
                          model=i)
    if not isinstance(url, str):
        raise where.error(f"must be a string, not {url!r}", "url", model=i)
    _checked(where, "url", _check_url, url, model=i)
    url, userinfo = split_userinfo(url)
    interval = default_interval
    if "interval" in block:
        interval = _checked(where, "interval", parse_duration, block["interval"], model=i)
    keys = block.get("public_keys", [])
    if not isinstance(keys, list):
        raise where.error(f"must be a list of \"{KEY_PREFIX}BASE64\" strings, not {keys!r}",
                          "public_keys", model=i)
    public_keys = tuple(_checked(where, "public_keys", parse_public_key, k, model=i)
                        for k in keys)
    mirrors, mirror_userinfo = _mirrors(where, i, block.get("mirrors", []), url)
    return ModelConfig(name=name, url=url, interval=interval, public_keys=public_keys,
                       userinfo=userinfo, mirrors=mirrors, mirror_userinfo=mirror_userinfo)


def _mirrors(where: _Locator, i: int, value: Any, url: str
             ) -> tuple[tuple[str, ...], tuple[tuple[str, str] | None, ...]]:
    """``mirrors`` of model ``i`` (canonical ``url``): checked like ``url``, userinfo
    split off, and named like ``url``'s manifest file, since the file name is part of a
    version's identity (its tree digest) and of the published entry point: a mirror
    with another name could not serve the same version. A duplicate (of ``url`` or of
    another mirror) is refused: it would only try the same failure twice."""
    if not isinstance(value, list):
        raise where.error(f"must be a list of URL strings, not {value!r}", "mirrors", model=i)
    seen = {url}
    urls: list[str] = []
    infos: list[tuple[str, str] | None] = []
    for n, mirror in enumerate(value, 1):
        if not isinstance(mirror, str):
            raise where.error(f"mirror {n} must be a string, not {mirror!r}", "mirrors",
                              model=i)
        try:
            _check_url(mirror)
        except ValueError as exc:
            raise where.error(f"mirror {n}: {exc}", "mirrors", model=i) from exc
        canonical, info = split_userinfo(mirror)
        if manifest_filename(canonical) != manifest_filename(url):
            raise where.error(
                f"mirror {n}: {redact_url(mirror)!r} names the manifest "
                f"{manifest_filename(canonical)!r}, not {manifest_filename(url)!r} as url does "
                "(the same version must have the same file names from every source)",
                "mirrors", model=i)
        if canonical in seen:
            raise where.error(f"mirror {n}: {redact_url(mirror)!r} is listed twice "
                              "(as url or as another mirror)", "mirrors", model=i)
        seen.add(canonical)
        urls.append(canonical)
        infos.append(info)
    return tuple(urls), tuple(infos)


def _check_url(url: str) -> str:
    shown = redact_url(url)  # a password in the URL must not land in a log
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(f"URL {shown!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"URL {shown!r} is not valid: {exc}") from exc
    if parts.scheme == "file":  # a mounted directory (daemon/filesource.py)
        file_path(url)  # ValueError naming what is wrong
    elif parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {shown!r} must start with http:// or https://, or be file:///path")
    elif not parts.hostname:
        raise ValueError(f"URL {shown!r} has no host")
    try:
        manifest_filename(url)
    except ManifestError as exc:
        raise ValueError(redact_url(exc.reason)) from exc
    return url


def _origin(where: _Locator, i: int, block: dict[str, Any], base: Path) -> OriginConfig:
    """Check one ``[[origin]]`` block and read its files (see the module docstring)."""
    for key in block:
        if key not in _ORIGIN_KEYS:
            raise where.error(f"unknown key {key!r} (known: {', '.join(sorted(_ORIGIN_KEYS))})",
                              key, origin=i)
    if "prefix" not in block:
        raise where.error("missing 'prefix'", "prefix", origin=i)

    def err(key: str, reason: str) -> ConfigError:
        return where.error(reason, key, origin=i)

    prefix = _origin_prefix(block["prefix"], lambda r: err("prefix", r))

    def file(key: str) -> Path | None:
        if key not in block:
            return None
        value = block[key]
        if not isinstance(value, str) or not value.strip():
            raise err(key, f"must be a path (a non-empty string), not {value!r}")
        p = Path(os.path.normpath(base / value))
        try:
            mode = os.stat(p).st_mode
            if not stat.S_ISREG(mode):  # checked before open: a FIFO would block it
                raise err(key, f"{p} is not a regular file")
            with open(p, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise err(key, f"cannot read {p}: {exc.strerror or exc}") from exc
        if key in ("token_file", "client_key") and mode & 0o077:
            log.warning("%s: %s: %s can be read by group or others (mode %04o): "
                        "chmod 600 it", where.path, where.dotted(key, origin=i), p,
                        stat.S_IMODE(mode))
        return p

    ca_file, cert, cert_key, token_file = (
        file(k) for k in ("ca_file", "client_cert", "client_key", "token_file"))
    if (cert is None) != (cert_key is None):
        given, missing = ("client_cert", "client_key") if cert else ("client_key", "client_cert")
        raise err(given, f"{given} needs {missing} too (both or neither)")
    # Loaded once here, apart, so a bad file is named as its own key's error.
    if ca_file is not None:
        try:
            tls_context(ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise err("ca_file", f"{ca_file} is not a PEM file of CA certificates: "
                                 f"{exc}") from exc
    if cert is not None:
        try:
            tls_context(None, cert, cert_key)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise err("client_cert", f"{cert} and {cert_key} are not a PEM certificate and its "
                                     f"unencrypted key: {exc}") from exc

    token = None
    if token_file is not None:
        token = _read_token(token_file, lambda r: err("token_file", r))

    headers = _origin_headers(block.get("headers", {}), token is not None,
                              lambda r: err("headers", r))

    proxy = block.get("proxy")
    if proxy is not None:
        if not isinstance(proxy, str):
            raise err("proxy", f"must be a string, not {type(proxy).__name__}")
        try:
            pparts = urlsplit(proxy)
            pparts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise err("proxy", f"{redact_url(proxy)!r} is not a valid URL: {exc}") from exc
        if pparts.scheme not in ("http", "https") or not pparts.hostname:
            raise err("proxy", f"{redact_url(proxy)!r} must be an http:// or https:// URL "
                               "with a host")

    keys = block.get("public_keys", [])
    if not isinstance(keys, list):
        raise err("public_keys", f"must be a list of \"{KEY_PREFIX}BASE64\" strings")
    raw_keys = []
    for k in keys:
        try:
            raw_keys.append(parse_public_key(k))
        except ValueError as exc:
            raise err("public_keys", str(exc)) from None

    max_rate = 0
    if "max_rate" in block:
        try:
            max_rate = parse_rate(block["max_rate"])
        except ValueError as exc:
            raise err("max_rate", str(exc)) from None

    return OriginConfig(prefix=prefix, ca_file=ca_file, client_cert=cert, client_key=cert_key,
                        token_file=token_file, token=token, headers=headers, proxy=proxy,
                        public_keys=tuple(raw_keys), max_rate=max_rate)


def _origin_prefix(value: Any, fail: Any) -> str:
    if not isinstance(value, str):
        raise fail(f"must be a string, not {value!r}")
    shown = redact_url(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise fail(f"{shown!r} is not a valid URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise fail(f"{shown!r} must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise fail(f"{shown!r} must not hold user:password@ (use token_file, or put the "
                   "userinfo in the model's url)")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise fail(f"{shown!r} must not have a query or fragment")
    prefix = origin_key(value)
    # "https://host" means the whole host, never "https://host.evil.example/".
    return prefix if parts.path else prefix + "/"


def _read_token(p: Path, fail: Any) -> str:
    try:
        first = p.read_bytes().split(b"\n", 1)[0].rstrip(b"\r").strip()
    except OSError as exc:
        raise fail(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        token = first.decode("ascii")
    except UnicodeDecodeError:
        raise fail(f"the first line of {p} is not ASCII text") from None
    if not token:
        raise fail(f"the first line of {p} is empty: it should be the token")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in token):
        raise fail(f"the first line of {p} holds control characters")
    return token


def _origin_headers(value: Any, has_token: bool, fail: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise fail("must be a table of header names to string values")
    out = []
    for name, v in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise fail(f"{name!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise fail(f"{name!r} may not be set here: shardsync's requests depend on it")
        if name.lower() == "authorization" and has_token:
            raise fail("'Authorization' may not be set here as well as token_file")
        if not isinstance(v, str):
            raise fail(f"{name!r} must have a string value, not {type(v).__name__}")
        if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in v):
            raise fail(f"the value of {name!r} holds CR, LF or another control character")
        out.append((name, v))
    return tuple(out)


def _checked(where: _Locator, key: str, check: Any, value: Any, *, model: int | None = None) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise where.error(str(exc), key, model=model) from exc


def _positive_int(where: _Locator, key: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"must be an integer, not {value!r}", key)
    if value < least:
        raise where.error(f"must be at least {least}, not {value}", key)
    return value


class _Locator:
    """Finds the line of a key in the config text (tomllib reports no positions).

    A plain scan, good for configs written by hand: top-level keys are looked for
    before the first table header, a model's keys inside its ``[[model]]`` block
    (falling back to the block's header line); ``None`` when not found.
    """

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def error(self, reason: str, key: str, *, model: int | None = None,
              origin: int | None = None) -> ConfigError:
        return ConfigError(reason, path=self.path, key=self.dotted(key, model=model,
                                                                   origin=origin),
                           line=self.line(key, model=model, origin=origin))

    @staticmethod
    def dotted(key: str, *, model: int | None = None, origin: int | None = None) -> str:
        if model is not None:
            return f"model[{model + 1}].{key}"
        if origin is not None:
            return f"origin[{origin + 1}].{key}"
        return key

    def line(self, key: str, *, model: int | None = None,
             origin: int | None = None) -> int | None:
        assign = re.compile(r"\s*(?:" + re.escape(key) + r'|"' + re.escape(key) + r'")\s*[=.]')
        header = re.compile(r"\s*\[\[?\s*" + re.escape(key) + r"\s*[\].]")
        block_header = re.compile(r"\[\[\s*(model|origin)\s*\]\]")
        target = None if model is None and origin is None else \
            ("model", model) if model is not None else ("origin", origin)
        # None: top level; ("other", -1): another table; (kind, n): the nth block of kind
        section: tuple[str, int | None] | None = None
        blocks = {"model": -1, "origin": -1}
        block_line = None
        for no, text in enumerate(self.lines, 1):
            stripped = text.strip()
            if stripped.startswith("["):
                if target is None and header.match(text):
                    return no
                m = block_header.match(stripped)
                if m:
                    blocks[m[1]] += 1
                    section = (m[1], blocks[m[1]])
                    if section == target:
                        block_line = no
                else:
                    section = ("other", -1)
                continue
            if section == target and assign.match(text):
                return no
        return block_line
