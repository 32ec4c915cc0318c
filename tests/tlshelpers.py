"""Certificates made by the test, and nginx sites with TLS: private origins as a kiosk meets them.

:func:`make_pki` writes a CA, a server certificate it signed (for ``127.0.0.1``), a
client certificate it signed, and the certificates that fail in each way an operator
meets (self-signed, expired, for another host) with ``cryptography``: nothing is
checked in, nothing expires by itself.

:func:`serve_sites` runs one real nginx (``tests/e2e/webserver.py``'s
:func:`run_nginx`, the same runner every nginx test uses) with several ``server``
blocks on ports of their own, each a :class:`Site` (TLS or plain, any extra
directives: ``ssl_verify_client``, a token check, a redirect). Each site has its own
access log of what arrived (status, body bytes, URI, ``Authorization``, ``X-Fleet``)
and an ``info`` error log, in which nginx notes every failed TLS handshake: the
count of connections that a client gave up on.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2e.webserver import run_nginx

__all__ = ["Pki", "Site", "SiteLog", "make_pki", "serve_sites"]

_Key = ec.EllipticCurvePrivateKey


@dataclass
class Pki:
    """Paths of PEM files (see :func:`make_pki`); keys are written mode 0600."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    self_signed_cert: Path
    self_signed_key: Path
    expired_cert: Path
    expired_key: Path
    other_host_cert: Path
    other_host_key: Path
    other_ca: Path = field(default_factory=Path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: _Key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _cert(subject: str, key: _Key, issuer: tuple[x509.Name, _Key] | None, *,
          ca: bool = False, san_ip: str | None = None, san_dns: str | None = None,
          client: bool = False, days: tuple[int, int] = (-1, 30)) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(days=days[0]))
         .not_valid_after(now + datetime.timedelta(days=days[1]))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
    else:
        names: list[x509.GeneralName] = []
        if san_ip:
            names.append(x509.IPAddress(ipaddress.ip_address(san_ip)))
        if san_dns:
            names.append(x509.DNSName(san_dns))
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path) -> Pki:
    """Write under ``directory``: ``ca.pem`` (a CA); ``server.pem``/``.key`` (signed by
    it, for IP 127.0.0.1); ``client.pem``/``.key`` (signed by it, client auth);
    ``selfsigned``, ``expired`` (signed by the CA, ended yesterday) and ``otherhost``
    (signed by the CA, for ``other.example`` only) server certificates; ``other-ca.pem``,
    a second CA that signed none of them."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ec.SECP256R1()
    ca_key = ec.generate_private_key(curve)
    ca_cert = _cert("shardsync test CA", ca_key, None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    paths: dict[str, Path] = {"ca": _write_cert(directory / "ca.pem", ca_cert)}
    for stem, kwargs in {
        "server": {"san_ip": "127.0.0.1"},
        "client": {"client": True},
        "expired": {"san_ip": "127.0.0.1", "days": (-30, -1)},
        "other_host": {"san_dns": "other.example"},
    }.items():
        key = ec.generate_private_key(curve)
        cert = _cert(f"{stem} cert", key, issuer, **kwargs)  # type: ignore[arg-type]
        paths[f"{stem}_cert"] = _write_cert(directory / f"{stem}.pem", cert)
        paths[f"{stem}_key"] = _write_key(directory / f"{stem}.key", key)
    key = ec.generate_private_key(curve)
    paths["self_signed_cert"] = _write_cert(
        directory / "selfsigned.pem", _cert("self-signed", key, None, san_ip="127.0.0.1"))
    paths["self_signed_key"] = _write_key(directory / "selfsigned.key", key)
    other_key = ec.generate_private_key(curve)
    paths["other_ca"] = _write_cert(directory / "other-ca.pem",
                                    _cert("another CA", other_key, None, ca=True))
    return Pki(dir=directory, **paths)


@dataclass
class Site:
    """One nginx ``server`` block: TLS with ``cert``/``key`` (else plain HTTP), and
    ``extra`` directives (``{port[N]}`` in them is the port of site N)."""

    cert: Path | None = None
    key: Path | None = None
    extra: str = ""


@dataclass
class Hit:
    """One request as a site logged it."""

    status: int
    body_bytes: int
    uri: str
    authorization: str
    x_fleet: str


@dataclass
class SiteLog:
    """A running site: its base URL and its logs."""

    url: str
    port: int
    access_log: Path
    error_log: Path

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path}"

    def hits(self) -> list[Hit]:
        """Every request logged, oldest first (``-`` in nginx means an absent header)."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            status, body, uri, auth, fleet = line.split("\t")
            out.append(Hit(int(status), int(body), uri, auth, fleet))
        return out

    def failed_handshakes(self) -> int:
        """TLS handshakes nginx saw fail (it logs each at ``info``), not counting the
        one connection :func:`run_nginx` opens and closes to see nginx listening."""
        if not self.error_log.exists():
            return 0
        lines = self.error_log.read_text().splitlines()
        return sum(1 for line in lines if re.search(r"SSL.handshak", line, re.IGNORECASE)
                   and "client closed connection while SSL handshaking" not in line)


_LOG_FORMAT = "$status\\t$body_bytes_sent\\t$request_uri\\t$http_authorization\\t$http_x_fleet"

_SERVER = """\
server {{
    listen {listen}{ssl};
    root {root};
    access_log {log} shardsync_sites;
    error_log {errlog} info;
    types {{ application/json json; }}
    default_type application/octet-stream;
{tls}{extra}
    location / {{ }}
}}
"""


@contextmanager
def serve_sites(root: Path, workdir: Path, sites: Sequence[Site]) -> Iterator[list[SiteLog]]:
    """Run one nginx serving ``root`` on one port per site (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)

    def conf(*listens: str) -> str:
        ports = [int(x.rpartition(":")[2]) for x in listens]
        blocks = [f"log_format shardsync_sites escape=none '{_LOG_FORMAT}';"]
        for i, (site, listen) in enumerate(zip(sites, listens, strict=True)):
            tls = ""
            if site.cert:
                tls = (f"    ssl_certificate {site.cert};\n"
                       f"    ssl_certificate_key {site.key};\n")
            blocks.append(_SERVER.format(
                listen=listen, ssl=" ssl" if site.cert else "", root=root,
                log=workdir / f"site{i}-access.log", errlog=workdir / f"site{i}-error.log",
                tls=tls, extra=re.sub(r"\{port\[(\d+)\]\}", lambda m: str(ports[int(m[1])]),
                                     site.extra)))
        return "\n".join(blocks)

    with run_nginx(workdir, conf, ports=len(sites)) as server:
        yield [SiteLog(f"{'https' if s.cert else 'http'}://127.0.0.1:{p}", p,
                       workdir / f"site{i}-access.log", workdir / f"site{i}-error.log")
               for i, (s, p) in enumerate(zip(sites, server.ports, strict=True))]
