"""Private origins through a real nginx with TLS: CAs, client certificates, tokens,
headers, redirects, and the TLS errors a kiosk meets (issue 10, items 1-3).

Every certificate is made by the test (:mod:`tlshelpers`); nginx is the origin and its
logs are the account of what arrived: which headers reached which site, and how many
TLS handshakes failed. Syncs run through :func:`shardsync.daemon.oneshot.sync_models`
(what ``shardsync sync`` runs) on a config file read from disk, or as the CLI itself.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from servicehelpers import NotifySocket, ServiceProcess, short_dir
from storehelpers import ModelFiles, tfjs_model, write_model
from synchelpers import assert_published, cli_command, run_cli
from tlshelpers import Pki, Site, SiteLog, make_pki, serve_sites

from shardsync.daemon.config import load_config
from shardsync.daemon.errors import TLSError, UpstreamError
from shardsync.daemon.oneshot import open_store, sync_models
from shardsync.daemon.sync import SyncResult

TOKEN = "tok-5ecr3t-xyz"
PASSWORD = "pw-5ecr3t-42"

#: nginx refuses requests without the token (before any location: also redirects).
TOKEN_CHECK = f'    if ($http_authorization != "Bearer {TOKEN}") {{ return 401; }}\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def small(fill: int = 1) -> ModelFiles:
    return tfjs_model("graph-model", [{"group1-shard1of2.bin": bytes([fill]) * 8192,
                                       "group1-shard2of2.bin": bytes([fill + 1]) * 4096}])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The origin directory every site serves: model ``m`` under ``m/``."""
    r = tmp_path / "origin"
    write_model(r / "m", small())
    return r


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "conf"
    d.mkdir()
    return d


@pytest.fixture
def sites(request: pytest.FixtureRequest, root: Path, tmp_path: Path) -> Iterator[list[SiteLog]]:
    """nginx with the sites the test is parametrized with (indirect)."""
    with serve_sites(root, tmp_path / "nginx", request.param) as logs:
        yield logs


def config(conf_dir: Path, models: dict[str, str], origins: Sequence[str] = (),
           socket: str = "ctl.sock") -> Path:
    """A config file naming ``models`` (name -> URL) and ``origins`` (TOML bodies)."""
    lines = ['state_dir = "state"', 'site_dir = "site"', f'socket = "{socket}"']
    for body in origins:
        lines += ["", "[[origin]]", body]
    for name, url in models.items():
        lines += ["", "[[model]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}"]
    path = conf_dir / "shardsync.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def sync(path: Path, *names: str) -> list[SyncResult]:
    """One pass as ``shardsync sync -c path`` runs it (the config read from disk)."""
    cfg = load_config(path)
    with open_store(cfg) as store:
        return await sync_models(cfg, store, names or [m.name for m in cfg.models])


def token_file(conf_dir: Path, token: str = TOKEN) -> Path:
    p = conf_dir / "token"
    p.write_text(token + "\n")
    p.chmod(0o600)
    return p


def ca(pki: Pki) -> str:
    return f'ca_file = "{pki.ca}"'


# -- mTLS ----------------------------------------------------------------------------


def mtls_site(pki: Pki) -> Site:
    return Site(pki.server_cert, pki.server_key,
                f"    ssl_client_certificate {pki.ca};\n    ssl_verify_client on;\n")


@pytest.fixture
def mtls(pki: Pki, root: Path, tmp_path: Path) -> Iterator[SiteLog]:
    with serve_sites(root, tmp_path / "nginx", [mtls_site(pki)]) as logs:
        yield logs[0]


async def test_mtls_sync_succeeds_with_the_client_certificate(
        mtls: SiteLog, pki: Pki, conf_dir: Path) -> None:
    path = config(conf_dir, {"m": mtls.url_for("m/model.json")}, [
        f'prefix = "{mtls.url}/"\n{ca(pki)}\n'
        f'client_cert = "{pki.client_cert}"\nclient_key = "{pki.client_key}"'])
    [result] = await sync(path)
    assert result.ok, result.error
    assert_published(conf_dir / "site", "m", small())
    assert {h.status for h in mtls.hits()} == {200} and len(mtls.hits()) == 3
    # the warm check's conditional requests (Fetcher._get's fast path) use the same pool
    [result] = await sync(path)
    assert result.ok and not result.changed, result.error
    assert [h.status for h in mtls.hits()[3:]] == [304] * 3


async def test_mtls_without_a_client_certificate_fails_saying_so(
        mtls: SiteLog, pki: Pki, conf_dir: Path) -> None:
    path = config(conf_dir, {"m": mtls.url_for("m/model.json")}, [
        f'prefix = "{mtls.url}/"\n{ca(pki)}'])
    [result] = await sync(path)
    assert isinstance(result.error, UpstreamError) and result.error.status == 400
    message = str(result.error)
    assert "No required SSL certificate was sent" in message
    assert "client_cert and client_key" in message
    assert len(mtls.hits()) == 1  # a 400 is not retried
    assert not (conf_dir / "site" / "m").exists()


# -- a bearer token -------------------------------------------------------------------


@pytest.mark.parametrize("sites", [[Site(extra=TOKEN_CHECK)]], indirect=True)
async def test_the_token_is_sent_and_nginx_accepts_it(
        sites: list[SiteLog], conf_dir: Path) -> None:
    [site] = sites
    path = config(conf_dir, {"m": site.url_for("m/model.json")}, [
        f'prefix = "{site.url}/m/"\ntoken_file = "token"\nheaders = {{ "X-Fleet" = "north" }}'])
    token_file(conf_dir)  # relative to the config file
    [result] = await sync(path)
    assert result.ok, result.error
    assert [(h.status, h.authorization, h.x_fleet) for h in site.hits()] == \
        [(200, f"Bearer {TOKEN}", "north")] * 3
    # a warm check (conditional requests: Fetcher._get's fast path) carries them too
    [result] = await sync(path)
    assert result.ok and not result.changed, result.error
    assert [(h.status, h.authorization, h.x_fleet) for h in site.hits()[3:]] == \
        [(304, f"Bearer {TOKEN}", "north")] * 3


@pytest.mark.parametrize("sites", [[Site(extra=TOKEN_CHECK)]], indirect=True)
async def test_without_the_token_nginx_says_401(sites: list[SiteLog], conf_dir: Path) -> None:
    [site] = sites
    # an [[origin]] for another prefix of the same host: its token is not sent here
    path = config(conf_dir, {"m": site.url_for("m/model.json")}, [
        f'prefix = "{site.url}/other/"\ntoken_file = "token"'])
    token_file(conf_dir)
    [result] = await sync(path)
    assert isinstance(result.error, UpstreamError) and result.error.status == 401
    assert [(h.status, h.authorization) for h in site.hits()] == [(401, "")]


# -- redirects ------------------------------------------------------------------------

#: Site 0 (TLS, token checked) sends /moved/... to site 1 (TLS) and /clear/... to
#: site 2 (plain HTTP).
REDIRECTS = (TOKEN_CHECK +
             "    rewrite ^/moved/(.*)$ https://127.0.0.1:{port[1]}/$1 redirect;\n"
             "    rewrite ^/clear/(.*)$ http://127.0.0.1:{port[2]}/$1 redirect;\n")


@pytest.fixture
def redirecting(pki: Pki, root: Path, tmp_path: Path) -> Iterator[list[SiteLog]]:
    sites = [Site(pki.server_cert, pki.server_key, REDIRECTS),
             Site(pki.server_cert, pki.server_key), Site()]
    with serve_sites(root, tmp_path / "nginx", sites) as logs:
        yield logs


async def test_a_redirect_to_another_origin_carries_no_credentials(
        redirecting: list[SiteLog], pki: Pki, conf_dir: Path) -> None:
    a, b, _ = redirecting
    path = config(conf_dir, {"m": a.url_for("moved/m/model.json")}, [
        f'prefix = "{a.url}"\n{ca(pki)}\ntoken_file = "token"\n'
        'headers = { "X-Fleet" = "north" }',
        f'prefix = "{b.url}/"\n{ca(pki)}'])
    token_file(conf_dir)
    [result] = await sync(path)
    assert result.ok, result.error
    assert_published(conf_dir / "site", "m", small())
    # the token and the header reached their origin, which redirected every file ...
    assert [(h.status, h.authorization, h.x_fleet) for h in a.hits()] == \
        [(302, f"Bearer {TOKEN}", "north")] * 3
    # ... and neither arrived at the other one
    assert [(h.status, h.authorization, h.x_fleet) for h in b.hits()] == [(200, "", "")] * 3
    # the canonical URL (not the redirect target) is what the snapshot records
    snapshots = "".join(p.read_text() for p in (conf_dir / "state" / "snapshots").rglob("*.json"))
    assert a.url_for("moved/m/model.json") in snapshots and b.url not in snapshots


async def test_httpx_alone_would_carry_a_custom_header_across_origins(
        redirecting: list[SiteLog], pki: Pki) -> None:
    """Why the headers are added below the client (httpclient.OriginTransport): httpx
    strips Authorization from a redirect to another origin, but keeps every other header
    a client was made with."""
    a, b, _ = redirecting
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Fleet": "north"}
    async with httpx.AsyncClient(verify=ctx, headers=headers, follow_redirects=True,
                                 trust_env=False) as client:
        r = await client.get(a.url_for("moved/m/model.json"))
        assert r.status_code == 200
    assert [(h.authorization, h.x_fleet) for h in b.hits()] == [("", "north")]


async def test_a_redirect_from_https_to_http_is_refused(
        redirecting: list[SiteLog], pki: Pki, conf_dir: Path) -> None:
    a, _, plain = redirecting
    path = config(conf_dir, {"m": a.url_for("clear/m/model.json")}, [
        f'prefix = "{a.url}/"\n{ca(pki)}\ntoken_file = "token"'])
    token_file(conf_dir)
    [result] = await sync(path)
    assert isinstance(result.error, UpstreamError)
    assert "refused a redirect from https to http" in str(result.error)
    assert plain.url_for("m/model.json") in str(result.error)
    assert plain.hits() == []  # nothing went out in clear
    assert len(a.hits()) == 1  # and it was not retried


# -- TLS errors -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "words"), [
    ("unknown CA", "signed by an unknown CA"),
    ("self-signed", "self-signed"),
    ("expired", "has expired"),
    ("hostname mismatch", "hostname mismatch"),
    ("handshake refused", "refused the TLS handshake"),
])
async def test_each_tls_error_is_named_and_not_retried(
        pki: Pki, root: Path, tmp_path: Path, conf_dir: Path, kind: str, words: str) -> None:
    site = {
        "unknown CA": Site(pki.server_cert, pki.server_key),
        "self-signed": Site(pki.self_signed_cert, pki.self_signed_key),
        "expired": Site(pki.expired_cert, pki.expired_key),
        "hostname mismatch": Site(pki.other_host_cert, pki.other_host_key),
        "handshake refused": Site(pki.server_cert, pki.server_key,
                                  "    ssl_reject_handshake on;\n"),
    }[kind]
    # Trusting our CA, except for "unknown CA", where the system store is all there is.
    origins = [] if kind == "unknown CA" else ["prefix = \"https://127.0.0.1/\"\n" + ca(pki)]
    with serve_sites(root, tmp_path / "nginx", [site]) as (s,):
        origins = [o.replace("https://127.0.0.1/", f"{s.url}/") for o in origins]
        path = config(conf_dir, {"m": s.url_for("m/model.json")}, origins)
        [result] = await sync(path)
        assert isinstance(result.error, TLSError), result.error
        message = str(result.error)
        assert words in message and "m/model.json" in message and "model m" in message
        assert s.hits() == []
        # nginx logs a failed handshake once it notices the close: wait for ours, then
        # long enough that a retry (which would come within ~1 s) is logged too
        deadline = time.monotonic() + 10
        while s.failed_handshakes() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        assert s.failed_handshakes() == 1, s.error_log.read_text()


def test_ssl_cert_file_is_honoured(pki: Pki, root: Path, tmp_path: Path,
                                   conf_dir: Path) -> None:
    with serve_sites(root, tmp_path / "nginx", [Site(pki.server_cert, pki.server_key)]) as (s,):
        path = config(conf_dir, {"m": s.url_for("m/model.json")})
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT")}
        refused = subprocess.run(cli_command("sync", "-c", path, "--json"), env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1
        assert "signed by an unknown CA" in json.loads(refused.stdout)["models"][0]["error"]
        trusted = subprocess.run(cli_command("sync", "-c", path, "--json"),
                                 env={**env, "SSL_CERT_FILE": str(pki.ca)},
                                 capture_output=True, text=True, timeout=120)
        assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert_published(conf_dir / "site", "m", small())


# -- no secret anywhere ---------------------------------------------------------------


def test_no_secret_in_state_site_or_any_output(
        pki: Pki, root: Path, tmp_path: Path, conf_dir: Path) -> None:
    basic = __import__("base64").b64encode(f"kiosk:{PASSWORD}".encode()).decode()
    write_model(root / "n", small(5))
    sites = [Site(pki.server_cert, pki.server_key, TOKEN_CHECK),
             Site(pki.server_cert, pki.server_key,
                  f'    if ($http_authorization != "Basic {basic}") {{ return 401; }}\n')]
    with serve_sites(root, tmp_path / "nginx", sites) as (a, b):
        userinfo = f"https://kiosk:{PASSWORD}@127.0.0.1:{b.port}"
        path = config(conf_dir, {
            "m": a.url_for("m/model.json"),
            "n": f"{userinfo}/n/model.json",
            "gone": f"{userinfo}/gone/model.json",  # fails: its URL is in the error
        }, [f'prefix = "{a.url}/"\n{ca(pki)}\ntoken_file = "token"',
            f'prefix = "{b.url}/"\n{ca(pki)}'])
        token_file(conf_dir)
        outputs = []
        for args in (("sync", "-v", "-c", path), ("sync", "-v", "--json", "-c", path)):
            done = run_cli(*args)
            assert done.returncode == 1, done.stderr  # "gone" fails, the others work
            outputs += [done.stdout, done.stderr]
        result = json.loads(outputs[2])
        assert [m["ok"] for m in result["models"]] == [True, True, False]
        gone = result["models"][2]["error"]
        assert f"127.0.0.1:{b.port}/gone/model.json" in gone and "***" not in gone
    assert_published(conf_dir / "site", "n", small(5))
    for secret in (TOKEN, PASSWORD, basic):
        for text in outputs:
            assert secret not in text
        for d in (conf_dir / "state", conf_dir / "site"):
            for p in d.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    assert secret.encode() not in p.read_bytes(), p
    snapshots = "".join(p.read_text()
                        for p in (conf_dir / "state" / "snapshots").rglob("*.json"))
    assert f"https://127.0.0.1:{b.port}/n/model.json" in snapshots


def test_no_secret_in_the_services_status_events_metrics_or_log(
        pki: Pki, root: Path, tmp_path: Path, conf_dir: Path) -> None:
    basic = __import__("base64").b64encode(f"kiosk:{PASSWORD}".encode()).decode()
    sites = [Site(pki.server_cert, pki.server_key, TOKEN_CHECK),
             Site(pki.server_cert, pki.server_key,
                  f'    if ($http_authorization != "Basic {basic}") {{ return 401; }}\n'),
             Site(pki.self_signed_cert, pki.self_signed_key)]
    with serve_sites(root, tmp_path / "nginx", sites) as (a, b, c), short_dir() as sock:
        userinfo = f"https://kiosk:{PASSWORD}@127.0.0.1:{b.port}"
        path = config(conf_dir, {"m": a.url_for("m/model.json"), "n": f"{userinfo}/m/model.json",
                                 "gone": f"{userinfo}/gone/model.json",
                                 "untrusted": c.url_for("m/model.json")},
                      [f'prefix = "{a.url}/"\n{ca(pki)}\ntoken_file = "token"',
                       f'prefix = "{b.url}/"\n{ca(pki)}'], socket=f"{sock}/ctl.sock")
        token_file(conf_dir)
        notify = NotifySocket(Path(sock) / "notify")
        with ServiceProcess(path, tmp_path / "service.log", notify=notify) as svc:
            svc.start()
            svc.wait_event("published", model="m")
            svc.wait_event("published", model="n")
            svc.wait_event("sync-failed", model="gone")
            # a TLS error says what is wrong in the event and the status too
            failed = svc.wait_event("sync-failed", model="untrusted")
            assert "self-signed" in json.dumps(failed)
            status = svc.status()
            assert "self-signed" in {m["name"]: m["last_error"]
                                     for m in status["models"]}["untrusted"]
            assert {m["name"]: m["url"] for m in status["models"]}["n"] == \
                f"https://127.0.0.1:{b.port}/m/model.json"
            outputs = [json.dumps(status), json.dumps(svc.events_since(0)),
                       svc.get_text("/metrics"),
                       run_cli("status", "--json", "-c", path).stdout,
                       run_cli("status", "-c", path).stdout]
            assert "gone/model.json" in outputs[1]  # the failure is there, without secrets
            assert svc.stop() == 0
            outputs.append(svc.log())
    for secret in (TOKEN, PASSWORD, basic):
        for text in outputs:
            assert secret not in text
        for p in (conf_dir / "state").rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert secret.encode() not in p.read_bytes(), p


# -- reload ---------------------------------------------------------------------------


@pytest.mark.parametrize("sites", [[Site(extra=TOKEN_CHECK)]], indirect=True)
def test_a_reload_applies_changed_origins(sites: list[SiteLog], conf_dir: Path,
                                          tmp_path: Path) -> None:
    [site] = sites
    with short_dir() as sock:
        wrong = f'prefix = "{site.url}/"\ntoken_file = "token"'
        path = config(conf_dir, {"m": site.url_for("m/model.json")}, [wrong],
                      socket=f"{sock}/ctl.sock")
        token_file(conf_dir, "not-the-token")
        notify = NotifySocket(Path(sock) / "notify")
        with ServiceProcess(path, tmp_path / "service.log", notify=notify) as svc:
            svc.start()
            svc.wait_event("sync-failed", model="m")
            assert [(h.status, h.authorization) for h in site.hits()] == \
                [(401, "Bearer not-the-token")]
            # a new token file, named by a changed [[origin]]: applied without a restart
            (conf_dir / "token2").write_text(TOKEN + "\n")
            (conf_dir / "token2").chmod(0o600)
            cursor = svc.last_event_id()
            config(conf_dir, {"m": site.url_for("m/model.json")},
                   [wrong.replace('"token"', '"token2"')], socket=f"{sock}/ctl.sock")
            svc.wait_event("config-reloaded", since=cursor)
            svc.client.post("/v1/models/m/sync")
            svc.wait_event("published", model="m", since=cursor)
            assert svc.stop() == 0
    assert [h.authorization for h in site.hits()[1:]] == [f"Bearer {TOKEN}"] * 3


# -- proxy ----------------------------------------------------------------------------


def test_the_proxy_is_the_configured_one_never_the_environments(
        root: Path, tmp_path: Path, conf_dir: Path) -> None:
    # site 1 is a forward proxy (nginx takes the absolute-form request line) to site 0
    proxy = Site(extra="    location /m/ { proxy_pass http://127.0.0.1:{port[0]}; }\n")
    with serve_sites(root, tmp_path / "nginx", [Site(), proxy]) as (origin, via):
        env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy":
               "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"}
        path = config(conf_dir, {"m": origin.url_for("m/model.json")})
        direct = subprocess.run(cli_command("sync", "-c", path), env=env, capture_output=True,
                                text=True, timeout=120)
        assert direct.returncode == 0, direct.stderr  # the environment's proxy is ignored
        assert via.hits() == [] and len(origin.hits()) == 3
        path = config(conf_dir, {"m": origin.url_for("m/model.json")},
                      [f'prefix = "{origin.url}/"\nproxy = "{via.url}"'])
        proxied = subprocess.run(cli_command("sync", "-c", path), env=env,
                                 capture_output=True, text=True, timeout=120)
        assert proxied.returncode == 0, proxied.stderr
        # every request went through it (nginx logs the path of the absolute-form URI)
        assert sorted(h.uri for h in via.hits()) == [
            "/m/group1-shard1of2.bin", "/m/group1-shard2of2.bin", "/m/model.json"]
        assert len(origin.hits()) == 6


async def test_url_userinfo_goes_to_its_directory_with_its_origins_trust_and_headers(
        pki: Pki, root: Path, tmp_path: Path, conf_dir: Path) -> None:
    """A model URL's userinfo is Basic auth for its manifest's directory, replacing the
    covering origin's token there; the origin's CA and headers still apply."""
    basic = __import__("base64").b64encode(f"kiosk:{PASSWORD}".encode()).decode()
    write_model(root / "n", small(5))
    check = f'    if ($http_authorization != "Basic {basic}") {{ return 401; }}\n'
    site = Site(pki.server_cert, pki.server_key,
                f"    location /n/ {{\n{check}    }}\n")
    with serve_sites(root, tmp_path / "nginx", [site]) as (s,):
        host = f"127.0.0.1:{s.port}"
        path = config(conf_dir, {"n": f"https://kiosk:{PASSWORD}@{host}/n/model.json",
                                 "m": s.url_for("m/model.json")},
                      [f'prefix = "{s.url}/"\n{ca(pki)}\ntoken_file = "token"\n'
                       'headers = { "X-Fleet" = "north" }',
                       # the very prefix of the userinfo's directory: the userinfo still wins
                       f'prefix = "{s.url}/n/"\n{ca(pki)}\ntoken_file = "token"\n'
                       'headers = { "X-Fleet" = "n-fleet" }'])
        token_file(conf_dir)
        results = await sync(path)
        assert all(r.ok for r in results), [r.error for r in results]
        by_dir = {(h.uri.split("/")[1], h.authorization, h.x_fleet) for h in s.hits()}
        assert by_dir == {("n", f"Basic {basic}", "n-fleet"), ("m", f"Bearer {TOKEN}", "north")}
