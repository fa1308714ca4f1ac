"""Certificates of the local cluster: a CA, serving and client certificates, the service-account key pair.

Everything is made in-process (``cryptography``), valid for a week, in one directory (``<run_dir>/pki``).
Which identity each certificate carries: docs/e2e.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "gpupool-e2e-ca"
VALIDITY = dt.timedelta(days=7)
#: names every serving certificate answers to (loopback, and the in-cluster service names)
SERVING_SANS: tuple[str, ...] = ("127.0.0.1", "localhost", "10.0.0.1", "kubernetes.default.svc")


def _not_before() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def _save_key(key: Any, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def write_ca(pki: Path) -> None:
    """``ca.crt`` and ``ca.key`` in *pki* (created)."""
    pki.mkdir(parents=True, exist_ok=True)
    now = _not_before()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _save_key(ca_key, pki / "ca.key")


def issue(
    pki: Path, name: str, cn: str, orgs: Sequence[str] = (), *, server: bool = False, sans: Sequence[str] = SERVING_SANS
) -> tuple[Path, Path]:
    """Sign ``<name>.crt``/``<name>.key`` with the CA in *pki*: a client certificate for user *cn* in groups
    *orgs*, or (*server*) a serving certificate for *sans*. Returns (cert, key)."""
    ca_key: Any = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    now = _not_before()
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    crt, keyfile = pki / f"{name}.crt", pki / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _save_key(key, keyfile)
    return crt, keyfile


def write_pki(pki: Path) -> None:
    """CA, apiserver/webhook serving certs, client certs (admin, scheduler, kcm), SA key pair."""
    write_ca(pki)
    issue(pki, "apiserver", "kube-apiserver", server=True)
    issue(pki, "webhook", "gpupool-webhook", server=True)  # the controller's admission server on 127.0.0.1
    issue(pki, "admin", "e2e-admin", ["system:masters"])
    issue(pki, "scheduler", "system:kube-scheduler")
    issue(pki, "kcm", "system:kube-controller-manager")
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _save_key(sa, pki / "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
