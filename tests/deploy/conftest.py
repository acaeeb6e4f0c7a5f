"""Helpers for the deploy/ tests: load a deploy/ script as a module, and TLS material.

`deploy/` is a folder of admin recipes, not an installed package, so its Python files are
loaded from their paths. The TLS fixture writes a throw-away CA and a certificate it signed
(for 127.0.0.1/localhost, usable as server and client) with `cryptography`.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load_deploy(relpath: str) -> ModuleType:
    """Import ``deploy/<relpath>`` as a module (cached under a private name)."""
    name = "_emunet_deploy_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEPLOY / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def security(self, require_encryption: bool = True):
        """A `Security` using this certificate for every role (scheduler, worker, client)."""
        from distributed.security import Security

        roles = {
            f"tls_{role}_{kind}": str(path)
            for role in ("scheduler", "worker", "client")
            for kind, path in (("cert", self.cert), ("key", self.key))
        }
        return Security(tls_ca_file=str(self.ca), require_encryption=require_encryption, **roles)


def profiler_on() -> bool:
    """On a worker (``client.run``): whether Dask's sampling profiler is on there."""
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


def write_tls_files(folder: Path, name: str = "node") -> TlsFiles:
    """A self-signed CA and a CA-signed EC certificate for 127.0.0.1 (server and client auth)."""
    x509 = pytest.importorskip("cryptography.x509", reason="TLS tests need the `cryptography` package")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)

    def cert(subject: str, key, issuer: str, issuer_key, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True)
        else:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    node_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert(f"{name}-ca", ca_key, f"{name}-ca", ca_key, ca=True)
    node_cert = cert(name, node_key, f"{name}-ca", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    files = TlsFiles(folder / f"{name}-ca.pem", folder / f"{name}.pem", folder / f"{name}.key")
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.cert.write_bytes(node_cert.public_bytes(pem))
    files.key.write_bytes(
        node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files.key.chmod(0o600)
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))
