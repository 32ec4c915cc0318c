"""The TOML config file: where things live, how often to check, which models to mirror.

:func:`load_config` reads the file described in docs/design.md ("Config") and
``config.example.toml`` into a frozen :class:`Config`, or raises one
:class:`~shardsync.daemon.errors.ConfigError` naming the file, the key (``interval``,
``model[2].url``) and, where it can be found, the line. Nothing here acts on the
config: the service keeps the last good one when a reload fails.

Choices beyond docs/design.md: a duration is a string of one or more ``<number><unit>``
parts with unit ``s``, ``m``, ``h`` or ``d`` (``"90s"``, ``"1h30m"``, ``"1.5h"``), or a
bare TOML number, read as seconds. ``[[model]]`` blocks are numbered from 1 in error
keys (``model[1]`` is the first block), the way an operator counts them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shardsync.store import NotFoundError, UnsafePathError, check_name

from .errors import ConfigError, ManifestError
from .pagescript import PAGE_SCRIPT
from .signing import KEY_PREFIX, parse_public_key
from .tfjs import DEFAULT_MAX_TOTAL, manifest_filename

__all__ = [
    "DEFAULTS",
    "Config",
    "ModelConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_listen",
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
}

_TOP_KEYS = frozenset(DEFAULTS) | {"model"}
_MODEL_KEYS = frozenset({"name", "url", "interval", "public_keys"})
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
    carry a valid signature by one of them (:func:`.signing.trusted_keys`).
    """

    name: str
    url: str
    interval: float
    public_keys: tuple[bytes, ...] = ()


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

    @property
    def manifest_urls(self) -> frozenset[str]:
        """Every configured model's manifest URL: the sources whose download records
        (:meth:`Store.downloaded`) are kept."""
        return frozenset(m.url for m in self.models)

    def model(self, name: str) -> ModelConfig:
        """Return the model called ``name``; NotFoundError if the config has none."""
        for m in self.models:
            if m.name == name:
                return m
        raise NotFoundError(f"no model {name!r} in {self.path}", model=name)


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

    return Config(path=path, state_dir=state_dir, site_dir=site_dir, socket=socket,
                  interval=interval, concurrency=concurrency, keep_versions=keep_versions,
                  max_model_bytes=max_model_bytes, models=tuple(models),
                  metrics_listen=metrics_listen)


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
    interval = default_interval
    if "interval" in block:
        interval = _checked(where, "interval", parse_duration, block["interval"], model=i)
    keys = block.get("public_keys", [])
    if not isinstance(keys, list):
        raise where.error(f"must be a list of \"{KEY_PREFIX}BASE64\" strings, not {keys!r}",
                          "public_keys", model=i)
    public_keys = tuple(_checked(where, "public_keys", parse_public_key, k, model=i)
                        for k in keys)
    return ModelConfig(name=name, url=url, interval=interval, public_keys=public_keys)


def _check_url(url: str) -> str:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(f"URL {url!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"URL {url!r} is not valid: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"URL {url!r} has no host")
    try:
        manifest_filename(url)
    except ManifestError as exc:
        raise ValueError(exc.reason) from exc
    return url


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

    def error(self, reason: str, key: str, *, model: int | None = None) -> ConfigError:
        dotted = key if model is None else f"model[{model + 1}].{key}"
        return ConfigError(reason, path=self.path, key=dotted, line=self.line(key, model=model))

    def line(self, key: str, *, model: int | None = None) -> int | None:
        assign = re.compile(r"\s*(?:" + re.escape(key) + r'|"' + re.escape(key) + r'")\s*[=.]')
        header = re.compile(r"\s*\[\[?\s*" + re.escape(key) + r"\s*[\].]")
        section: int | None = None   # None: top level; -1: another table; n: model block n
        blocks = -1
        block_line = None
        for no, text in enumerate(self.lines, 1):
            stripped = text.strip()
            if stripped.startswith("["):
                if model is None and header.match(text):
                    return no
                if re.match(r"\[\[\s*model\s*\]\]", stripped):
                    blocks += 1
                    section = blocks
                    if blocks == model:
                        block_line = no
                else:
                    section = -1
                continue
            if section == model and assign.match(text):
                return no
        return block_line
