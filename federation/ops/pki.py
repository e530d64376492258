"""A local certificate authority for ``fed up --tls``: a CA, a server certificate and a client
certificate, written with private keys readable by their owner only (0600).

Real deployments bring their own certificates (``--tls-ca/--tls-cert/--tls-key``); this module
exists so that one machine can run the whole federation with TLS on, and so the tests can show
what TLS refuses (a plaintext client, a certificate from another CA).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.identity import TlsFiles

VALID_DAYS = 365


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nats-federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: list[x509.ObjectIdentifier] | None = None,
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def local_authority(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> tuple[TlsFiles, TlsFiles]:
    """Create (or reuse) a CA in ``directory`` and issue a server and a client certificate from it.

    Returns (server files, client files). Existing files are kept: a restart reuses them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_path = directory / "ca.pem"
    server = TlsFiles(str(ca_path), str(directory / "server.pem"), str(directory / "server-key.pem"))
    client = TlsFiles(str(ca_path), str(directory / "client.pem"), str(directory / "client-key.pem"))
    if all(Path(p).exists() for p in (server.cert, server.key, client.cert, client.key, server.ca)):
        return server, client
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("nats-federation local CA")
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for files, common, usage, names in (
        (server, "nats-server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], hosts),
        (client, "fed", [ExtendedKeyUsageOID.CLIENT_AUTH], ()),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name(common), key, ca_name, ca_key, ca=False, usage=usage, hosts=names)
        Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(Path(files.key), key)
    return server, client


__all__ = ["TlsFiles", "local_authority"]
