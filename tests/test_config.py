"""Tests of shardsync.daemon.config: real files on disk, each mistake named by file, key, line."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from shardsync.daemon.config import (
    Config,
    ModelConfig,
    load_config,
    parse_duration,
    parse_listen,
    parse_size,
)
from shardsync.daemon.errors import ConfigError
from shardsync.store import NotFoundError

REPO = Path(__file__).resolve().parent.parent

GOOD_MODEL = """
[[model]]
name = "face"
url = "https://example.com/face/model.json"
"""


def write(tmp_path: Path, text: str, name: str = "shardsync.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    return err


def test_example_config_loads_with_the_documented_defaults():
    cfg = load_config(REPO / "config.example.toml")
    assert cfg.path == REPO / "config.example.toml"
    assert cfg.state_dir == Path("/var/lib/shardsync")
    assert cfg.site_dir == Path("/var/lib/shardsync/site")
    assert cfg.socket == Path("/run/shardsync/control.sock")
    assert (cfg.interval, cfg.concurrency, cfg.keep_versions) == (1800, 4, 2)
    assert cfg.max_model_bytes == 8 << 30
    assert [m.name for m in cfg.models] == ["bodypix-resnet50", "tiny-face-detector",
                                            "movenet-lightning"]
    assert cfg.model("bodypix-resnet50").interval == 6 * 3600
    assert cfg.model("tiny-face-detector").interval == 1800  # the default
    assert cfg.metrics_listen is None  # off unless asked for


def test_example_documents_every_key():
    text = (REPO / "config.example.toml").read_text()
    for key in ("state_dir", "site_dir", "socket", "interval", "concurrency", "keep_versions",
                "max_model_bytes", "metrics_listen", "[[model]]", "name", "url",
                "[[origin]]", "prefix", "ca_file", "client_cert", "client_key", "token_file",
                "headers", "proxy", "public_keys", "mirrors"):
        assert f"\n{key}" in text or f"#   {key}" in text or f"# {key}" in text, key


def test_defaults_and_relative_paths(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, """
        state_dir = "state"
        site_dir = "../www/site"
        socket = "/tmp/x.sock"
        interval = 90
        """ + GOOD_MODEL + """
        [[model]]
        name = "b.2_x"
        url = "http://127.0.0.1:8080/b/weights_manifest.json?v=1"
        interval = "1h30m"
        """)
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.state_dir == sub / "state"
    assert cfg.site_dir == tmp_path / "www" / "site"
    assert cfg.socket == Path("/tmp/x.sock")
    assert cfg.interval == 90
    assert cfg.models == (ModelConfig("face", "https://example.com/face/model.json", 90),
                          ModelConfig("b.2_x", "http://127.0.0.1:8080/b/weights_manifest.json?v=1",
                                      5400))
    with pytest.raises(NotFoundError, match="no model 'nope'"):
        cfg.model("nope")


def test_empty_file_is_all_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.models == () and cfg.keep_versions == 2 and cfg.interval == 1800


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, GOOD_MODEL))
    with pytest.raises(AttributeError):
        cfg.interval = 5  # type: ignore[misc]


@pytest.mark.parametrize(("text", "key", "line", "why"), [
    ('state_dir = "/s"\nbogus = 1\n', "bogus", 2, "unknown key 'bogus'"),
    ('interval = "30m"\n[server]\nport = 1\n', "server", 2, "unknown key 'server'"),
    ('interval = "soon"\n', "interval", 1, "'soon' is not a duration"),
    ('interval = "30"\n', "interval", 1, "not a duration"),
    ('interval = "0s"\n', "interval", 1, "more than zero"),
    ('interval = -5\n', "interval", 1, "more than zero"),
    ('interval = true\n', "interval", 1, "not a duration"),
    ('# c\n\nconcurrency = 0\n', "concurrency", 3, "at least 1"),
    ('concurrency = "4"\n', "concurrency", 1, "must be an integer"),
    ('concurrency = 2.5\n', "concurrency", 1, "must be an integer"),
    ('concurrency = true\n', "concurrency", 1, "must be an integer"),
    ('keep_versions = 0\n', "keep_versions", 1, "at least 1"),
    ('max_model_bytes = "8 GB"\n', "max_model_bytes", 1, "not a size"),
    ('max_model_bytes = 0\n', "max_model_bytes", 1, "more than zero"),
    ('state_dir = 5\n', "state_dir", 1, "must be a path"),
    ('site_dir = ""\n', "site_dir", 1, "must be a path"),
    ('state_dir = "/srv/www/state"\nsite_dir = "/srv/www"\n', "state_dir", 1, "inside it"),
    ('state_dir = "/srv"\nsite_dir = "/srv/"\n', "state_dir", 1, "must not be site_dir"),
    ('model = "x"\n', "model", 1, "[[model]] blocks"),
    ('interval = "1m"\nmetrics_listen = "localhost:9464"\n', "metrics_listen", 2,
     "'localhost' is not an IP address"),
    ('metrics_listen = "127.0.0.1"\n', "metrics_listen", 1, "an IP address and a port"),
    ('metrics_listen = "::1:9464"\n', "metrics_listen", 1, "IPv6 address goes in brackets"),
    ('metrics_listen = "127.0.0.1:0"\n', "metrics_listen", 1, "from 1 to 65535"),
    ('metrics_listen = "127.0.0.1:65536"\n', "metrics_listen", 1, "from 1 to 65535"),
    ('metrics_listen = 9464\n', "metrics_listen", 1, "not a string"),
    ('[model]\nname = "a"\n', "model", 1, "[[model]] blocks"),
])
def test_top_level_errors_name_key_and_line(tmp_path, text, key, line, why):
    err = error_of(write(tmp_path, text))
    assert (err.key, err.line) == (key, line)
    assert why in err.reason
    assert str(err).startswith(f"{tmp_path / 'shardsync.toml'}:{line}: {key}: ")


MODELS = """
interval = "30m"

[[model]]
name = "first"
url = "https://example.com/a/model.json"

[[model]]
# the second block
name = {name}
url = {url}
{extra}
"""


@pytest.mark.parametrize(("name", "url", "extra", "key", "line", "why"), [
    ('"second"', '"ftp://example.com/m.json"', "", "model[2].url", 10, "http:// or https://"),
    ('"second"', '"https:///m.json"', "", "model[2].url", 10, "no host"),
    ('"second"', '"https://example.com/dir/"', "", "model[2].url", 10, "names no file"),
    ('"second"', '"https://exa mple.com/m.json"', "", "model[2].url", 10, "whitespace"),
    ('"second"', '"https://example.com:99999/m.json"', "", "model[2].url", 10, "not valid"),
    ('"second"', '"example.com/m.json"', "", "model[2].url", 10, "http:// or https://"),
    ('"second"', "42", "", "model[2].url", 10, "must be a string"),
    ('"Second"', '"https://e.com/m.json"', "", "model[2].name", 9, "invalid model name"),
    ('"../up"', '"https://e.com/m.json"', "", "model[2].name", 9, "invalid model name"),
    ('".."', '"https://e.com/m.json"', "", "model[2].name", 9, "invalid model name"),
    ('"' + "m" * 300 + '"', '"https://e.com/m.json"', "", "model[2].name", 9,
     "longer than 128 characters"),
    ("7", '"https://e.com/m.json"', "", "model[2].name", 9, "must be a string"),
    # site_dir/shardsync.js is the page script, so no model directory may take its name
    ('"shardsync.js"', '"https://e.com/m.json"', "", "model[2].name", 9,
     "reserved for the page script"),
    ('"first"', '"https://e.com/m.json"', "", "model[2].name", 9,
     "duplicate model name 'first' (first at line 4)"),
    ('"second"', '"https://e.com/m.json"', 'interval = "fortnightly"', "model[2].interval", 11,
     "not a duration"),
    ('"second"', '"https://e.com/m.json"', 'mirror = true', "model[2].mirror", 11,
     "unknown key 'mirror'"),
])
def test_model_errors_name_block_key_and_line(tmp_path, name, url, extra, key, line, why):
    err = error_of(write(tmp_path, MODELS.format(name=name, url=url, extra=extra)))
    assert (err.key, err.line) == (key, line)
    assert why in err.reason
    assert f":{line}: {key}: " in str(err)


def test_missing_model_key_points_at_its_block(tmp_path):
    err = error_of(write(tmp_path, GOOD_MODEL + '\n[[model]]\nname = "b"\n'))
    assert (err.key, err.line) == ("model[2].url", 5)
    assert "missing 'url'" in err.reason


def test_same_key_in_an_earlier_block_is_not_taken_for_the_line(tmp_path):
    text = (GOOD_MODEL + '\ninterval = "1h"\n' +
            '\n[[model]]\nname = "b"\nurl = "https://e.com/m.json"\ninterval = "never"\n')
    err = error_of(write(tmp_path, text))
    assert (err.key, err.line) == ("model[2].interval", 10)


def test_toml_syntax_error_keeps_line_and_column(tmp_path):
    err = error_of(write(tmp_path, 'state_dir = "/s"\n\ninterval = 30m\n'))
    assert err.line == 3
    assert "TOML syntax error" in err.reason and "column" in err.reason


def test_unreadable_and_non_utf8_files(tmp_path):
    missing = tmp_path / "nope.toml"
    err = error_of(missing)
    assert "cannot read" in err.reason
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'state_dir = "/s"\n# caf\xe9\n')
    err = error_of(bad)
    assert err.line == 2 and "UTF-8" in err.reason


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90), ("30m", 1800), ("6h", 21600), ("1d", 86400), ("1h30m", 5400), ("1.5h", 5400),
    (45, 45), (0.5, 0.5), (" 2m ", 120),
])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "m", "5", "5 m", "5w", "1h-5m", "-5s", "0m", 0, None,
                                   False, float("inf"), "nan"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(("value", "size"), [
    (1, 1), ("512MiB", 512 << 20), ("8 GiB", 8 << 30), ("10KiB", 10240), ("7B", 7), ("3", 3),
    ("1TiB", 1 << 40),
])
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["8GB", "1.5GiB", "-1", 0, -3, True, "", "GiB", 2.0])
def test_bad_sizes(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_public_surface():
    import shardsync.daemon.config as config

    assert all(hasattr(config, name) for name in config.__all__)


@pytest.mark.parametrize(("value", "address"), [
    ("", None),
    ("  ", None),
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9464", ("::1", 9464)),
    ("[0:0::1]:65535", ("::1", 65535)),  # written the short way, as it will be logged
])
def test_listen_addresses(value, address):
    assert parse_listen(value) == address


@pytest.mark.parametrize("value", [
    "127.0.0.1", ":9464", "127.0.0.1:", "127.0.0.1:port", "127.0.0.1:-1", "127.0.0.1: 9464",
    "[::1]", "[::1]9464", "[127.0.0.1]:9464", "::1:9464", "256.0.0.1:9464", "localhost:9464",
    "example.com:80", None, 9464, True,
])
def test_bad_listen_addresses(value):
    with pytest.raises(ValueError):
        parse_listen(value)


def test_metrics_listen_is_read_from_the_file(tmp_path):
    cfg = load_config(write(tmp_path, 'metrics_listen = "[::1]:9464"\n'))
    assert cfg.metrics_listen == ("::1", 9464)


# -- [[origin]] -------------------------------------------------------------------------

ORIGIN_MODEL = """
[[model]]
name = "face"
url = "https://models.example.com/private/face/model.json"
"""


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A CA, a client certificate and key, a token (0600) as files beside the config."""
    from tlshelpers import make_pki

    pki = make_pki(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("s3cret\nsecond line ignored\n")
    token.chmod(0o600)
    return {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key, "token": token,
            "server_key": pki.server_key}


def test_origin_blocks_are_read_with_paths_relative_to_the_config(tmp_path, pem):
    key = "ed25519:" + "A" * 43 + "="
    cfg = load_config(write(tmp_path, f"""
        [[origin]]
        prefix = "HTTPS://Models.Example.com:443/private/"
        ca_file = "pki/ca.pem"
        client_cert = "pki/client.pem"
        client_key = "pki/client.key"
        token_file = "token"
        headers = {{ "X-Fleet" = "north" }}
        proxy = "http://proxy.lan:3128"
        public_keys = ["{key}"]

        [[origin]]
        prefix = "https://models.example.com"
        """ + ORIGIN_MODEL))
    private, host = cfg.origins
    assert private.prefix == "https://models.example.com/private/"
    assert host.prefix == "https://models.example.com/"  # the whole host, not a name prefix
    assert (private.ca_file, private.client_cert, private.client_key, private.token_file) == (
        pem["ca"], pem["cert"], pem["key"], pem["token"])
    assert private.token == "s3cret"
    assert private.headers == (("X-Fleet", "north"),)
    assert private.proxy == "http://proxy.lan:3128"
    assert private.public_keys == (bytes(32),)  # raw, as the signature check uses them
    assert "s3cret" not in repr(cfg) and "north" not in repr(cfg)
    # the longest prefix wins; another host (even one whose name starts alike) has none
    assert cfg.origin_for(cfg.models[0].url) is private
    assert cfg.origin_for("https://models.example.com/public/m.json") is host
    assert cfg.origin_for("https://models.example.com.evil.example/private/m.json") is None
    assert cfg.origin_for("http://models.example.com/private/m.json") is None


def test_userinfo_is_taken_out_of_a_model_url(tmp_path):
    cfg = load_config(write(tmp_path, """
        [[model]]
        name = "m"
        url = "https://kiosk:p%40ss@example.com/m/model.json"
        """))
    (m,) = cfg.models
    assert m.url == "https://example.com/m/model.json"
    assert m.userinfo == ("kiosk", "p@ss")
    assert "p%40ss" not in repr(m) and "p@ss" not in repr(m)


def test_a_bad_model_url_with_userinfo_is_named_without_the_password(tmp_path):
    err = error_of(write(tmp_path, """
        [[model]]
        name = "m"
        url = "ftp://kiosk:hunter2@example.com/m/model.json"
        """))
    assert err.key == "model[1].url" and "hunter2" not in str(err) and "***@" in str(err)


def test_a_token_or_key_others_can_read_is_a_warning_naming_the_file(tmp_path, pem, caplog):
    pem["token"].chmod(0o644)
    path = write(tmp_path, f"""
        [[origin]]
        prefix = "https://e.com/"
        token_file = "{pem['token']}"
        """)
    load_config(path)
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert str(pem["token"]) in record.getMessage()
    assert "origin[1].token_file" in record.getMessage() and "0644" in record.getMessage()
    pem["token"].chmod(0o600)
    caplog.clear()
    load_config(path)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


ORIGIN_ERRORS = [
    ('prefix = "https://e.com/"\nbogus = 1', "bogus", 3, "unknown key 'bogus'"),
    ('prefix = "https://e.com/"\nmax_rate = "fast"', "max_rate", 3, "'fast' is not a size"),
    ('prefix = "https://e.com/"\nmax_rate = -1', "max_rate", 3, "must be more than zero"),
    ('ca_file = "ca.pem"', "prefix", 1, "missing 'prefix'"),
    ('prefix = 5', "prefix", 2, "must be a string"),
    ('prefix = "ftp://e.com/"', "prefix", 2, "http:// or https://"),
    ('prefix = "https:///x/"', "prefix", 2, "with a host"),
    ('prefix = "https://u:pw@e.com/"', "prefix", 2, "must not hold user:password@"),
    ('prefix = "https://e.com/?a=1"', "prefix", 2, "query or fragment"),
    ('prefix = "https://e.com/"\nca_file = "missing.pem"', "ca_file", 3,
     "cannot read {dir}/missing.pem: No such file or directory"),
    ('prefix = "https://e.com/"\nca_file = "."', "ca_file", 3, "is not a regular file"),
    ('prefix = "https://e.com/"\nca_file = "token"', "ca_file", 3,
     "{dir}/token is not a PEM file of CA certificates"),
    ('prefix = "https://e.com/"\ntoken_file = "nope"', "token_file", 3,
     "cannot read {dir}/nope"),
    ('prefix = "https://e.com/"\ntoken_file = "empty"', "token_file", 3,
     "the first line of {dir}/empty is empty"),
    ('prefix = "https://e.com/"\nclient_cert = "pki/client.pem"', "client_cert", 3,
     "client_cert needs client_key too (both or neither)"),
    ('prefix = "https://e.com/"\nclient_key = "pki/client.key"', "client_key", 3,
     "client_key needs client_cert too"),
    ('prefix = "https://e.com/"\nclient_cert = "pki/client.pem"\nclient_key = "pki/server.key"',
     "client_cert", 3, "are not a PEM certificate and its unencrypted key"),
    ('prefix = "https://e.com/"\nheaders = { "X-A" = "1\\r\\nX-Evil: 2" }', "headers", 3,
     "CR, LF or another control character"),
    ('prefix = "https://e.com/"\nheaders = { "X A" = "1" }', "headers", 3,
     "'X A' is not a valid header name"),
    ('prefix = "https://e.com/"\nheaders = { "host" = "x" }', "headers", 3,
     "'host' may not be set here"),
    ('prefix = "https://e.com/"\nheaders = { "Range" = "bytes=0-" }', "headers", 3,
     "'Range' may not be set here"),
    ('prefix = "https://e.com/"\nheaders = { "If-None-Match" = "x" }', "headers", 3,
     "may not be set here"),
    ('prefix = "https://e.com/"\nheaders = { "X-N" = 5 }', "headers", 3, "string value"),
    ('prefix = "https://e.com/"\nheaders = "X: y"', "headers", 3, "must be a table"),
    ('prefix = "https://e.com/"\ntoken_file = "token"\nheaders = { "Authorization" = "x" }',
     "headers", 4, "as well as token_file"),
    ('prefix = "https://e.com/"\nproxy = "socks://p.lan"', "proxy", 3,
     "http:// or https:// URL"),
    ('prefix = "https://e.com/"\nproxy = "http://u:hunter2@p.lan:99999"', "proxy", 3,
     "not a valid URL"),
    ('prefix = "https://e.com/"\npublic_keys = "ed25519:x"', "public_keys", 3, "must be a list"),
    ('prefix = "https://e.com/"\npublic_keys = ["rsa:AAAA"]', "public_keys", 3,
     "is not a public key like \"ed25519:BASE64\""),
    ('prefix = "https://e.com/"\npublic_keys = ["ed25519:AAAA"]', "public_keys", 3,
     "32 bytes"),
]


@pytest.mark.parametrize(("body", "key", "offset", "why"), ORIGIN_ERRORS)
def test_origin_errors_name_block_key_and_line(tmp_path, pem, body, key, offset, why):
    (tmp_path / "empty").write_text("\n")
    text = 'interval = "1h"\n\n[[origin]]\nprefix = "https://other.example/"\n\n' \
           f"[[origin]]\n{body}\n"
    err = error_of(write(tmp_path, text))
    assert err.key == f"origin[2].{key}"
    assert err.line == 5 + offset
    assert why.format(dir=tmp_path) in err.reason
    assert "hunter2" not in str(err)


def test_duplicate_origin_prefixes_are_refused(tmp_path):
    err = error_of(write(tmp_path, '[[origin]]\nprefix = "https://e.com"\n'
                                   '[[origin]]\nprefix = "HTTPS://E.COM:443/"\n'))
    assert (err.key, err.line) == ("origin[2].prefix", 4)
    assert "duplicate prefix 'https://e.com/' (also in origin[1])" in err.reason


def test_origin_must_be_blocks(tmp_path):
    err = error_of(write(tmp_path, 'origin = "https://e.com/"\n'))
    assert (err.key, err.line) == ("origin", 1)


def test_a_model_trusts_its_own_keys_and_its_origins(tmp_path):
    # DESIGN.md: public_keys "per model, in addition to its origin's".
    own, theirs = "ed25519:" + "A" * 43 + "=", "ed25519:" + "B" * 43 + "="
    path = tmp_path / "shardsync.toml"
    path.write_text(f"""
[[origin]]
prefix = "https://models.example.com/"
public_keys = ["{theirs}"]

[[model]]
name = "a"
url = "https://models.example.com/a/model.json"
public_keys = ["{own}"]

[[model]]
name = "b"
url = "https://other.example.com/b/model.json"
""")
    cfg = load_config(path)
    assert set(cfg.model("a").public_keys) == {bytes(32), base64.b64decode("B" * 43 + "=")}
    assert cfg.model("b").public_keys == ()
