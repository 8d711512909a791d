"""TLS: the CLI verifies the API's certificate against the CA certificates of the system
(``SSL_CERT_FILE`` here), which it reads only when it first makes a TLS connection."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

import orjson
import pytest

from harvester.sim import SimConfig
from tests.conftest import PAST, assert_lake_equals, cli, dataset, sim_args, sim_env

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        off = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment"]
        usage = dict.fromkeys([*off, "key_agreement", "encipher_only", "decipher_only"], False)
        b = b.add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
    else:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return b.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA."""
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "other_ca", "server", "server_key")}
    paths["ca"].write_bytes(_pem(_cert("test CA", ca_key, "test CA", ca_key, ca=True)))
    paths["other_ca"].write_bytes(_pem(_cert("other CA", other_key, "other CA", other_key, ca=True)))
    paths["server"].write_bytes(_pem(_cert("127.0.0.1", server_key, "test CA", ca_key, ca=False)))
    paths["server_key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "no-ca-dir").mkdir()
    return paths


async def _tls_sim(start_sim, pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["server"], pki["server_key"])
    config = SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=150, end_date=PAST))
    return await start_sim(config, ssl_context=server)


def _env(sim, pki: dict[str, Path], ca: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOBIZ_", "SSL_CERT_"))}
    return env | sim_env(sim, SSL_CERT_FILE=str(pki[ca]), SSL_CERT_DIR=str(pki["ca"].parent / "no-ca-dir"))


async def test_https_harvest_trusts_the_system_ca_read_on_first_use(start_sim, pki, tmp_path: Path) -> None:
    sim = await _tls_sim(start_sim, pki)
    assert sim.base_url.startswith("https://127.0.0.1:")
    code, _, err = await cli(*sim_args(sim, tmp_path / "lake"), "--quiet", env=_env(sim, pki, "ca"))
    assert code == 0, err
    ids = [c.auth_id for c in sim.data.customer_list]
    assert_lake_equals(tmp_path / "lake", sim.data.records(ids, sim.data.day_list))


async def test_https_harvest_refuses_a_certificate_no_trusted_ca_signed(
    start_sim, pki, tmp_path: Path
) -> None:
    sim = await _tls_sim(start_sim, pki)
    args = [*sim_args(sim, tmp_path / "lake"), "--json", "--quiet"]
    code, out, err = await cli(*args, env=_env(sim, pki, "other_ca"))
    rep = orjson.loads(out)
    assert code == rep["exit_code"] != 0
    assert "TLS certificate is not trusted (unable to get local issuer certificate)" in rep["error"]
    assert "SSL_CERT_FILE" in rep["error"] and "\n" not in rep["error"]
    assert rep["requests"] == 1  # not retried: no retry makes a certificate trusted
    assert "Traceback" not in err and sim.config.auth_token not in out + err
    assert not sim.shard_requests and not list((tmp_path / "lake").rglob("*.parquet"))
