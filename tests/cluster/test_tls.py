"""HTTPS for the HTTP API: a cluster serving TLS, clients verifying it, redirects staying https."""

import asyncio
import datetime
import http.client
import ipaddress
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftmq import AsyncClient, Client
from raftmq.errors import ConnectionFailed
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, free_port, request


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path  # server certificate for IP 127.0.0.1
    key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
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
    else:
        assert usage is not None
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM files."""
    root = tmp_path / "pki"
    root.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("raftmq test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "raftmq node", server_key, ca_cert, ca_key, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "raftmq client",
        client_key,
        ca_cert,
        ca_key,
        ca=False,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    _write(root / "ca.pem", ca_cert, None)
    _write(root / "server.pem", server, server_key)
    _write(root / "client.pem", client, client_key)
    return Pki(
        ca=root / "ca.pem",
        cert=root / "server.pem",
        key=root / "server.key",
        client_cert=root / "client.pem",
        client_key=root / "client.key",
    )


def _tls_args(pki: Pki) -> list[str]:
    return ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca)]


def _verifying(pki: Pki, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _ca_path(pki: Pki) -> str:
    return str(pki.ca)


async def _async_round_trip(url: str, ca: str, queue: str) -> list[str]:
    async with AsyncClient([url], ca=ca) as client:
        await client.declare_queue(queue)
        await client.publish(queue, "async one")
        await client.publish(queue, "async two")
        received = await client.receive(queue, max=10)
        result = await client.ack(queue, [m.receipt for m in received])
        assert result.acked == len(received)
        return sorted(str(m.body) for m in received)


def test_https_cluster_redirects_and_verifies(make_cluster: ClusterFactory, pki: Pki) -> None:
    cluster: LocalTestCluster = make_cluster(
        extra_args=_tls_args(pki), scheme="https", context=_verifying(pki)
    ).start()
    leader = cluster.wait_leader()
    follower = cluster.follower()
    assert follower.url.startswith("https://")

    # The follower sends writes to the leader's advertised https URL.
    resp = request("PUT", follower.url + "/v1/queues/raw", {}, context=cluster.context)
    assert resp.status == 307
    assert resp.headers["location"] == leader.url + "/v1/queues/raw"

    with Client([follower.url], ca=_ca_path(pki)) as client:
        client.declare_queue("sync")
        client.publish("sync", "one")
        client.publish("sync", "two")
        received = client.receive("sync", max=10)
        assert sorted(m.body for m in received) == ["one", "two"]
        assert client.ack("sync", [m.receipt for m in received]).acked == 2

    assert asyncio.run(_async_round_trip(follower.url, _ca_path(pki), "async")) == [
        "async one",
        "async two",
    ]

    if shutil.which("curl"):
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(pki.ca),
                "-L",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}",
                "-w",
                "\n%{http_code}",
                follower.url + "/v1/queues/curl",
            ],
            capture_output=True,
            check=True,
            text=True,
            timeout=30,
        )
        body, status = out.stdout.rsplit("\n", 1)
        assert status == "201", out.stdout
        assert orjson.loads(body)["queue"] == "curl"

    # Without the CA: a certificate verification error, as a raftmq error, not retried
    # until the deadline (a configuration error does not heal by itself).
    started = time.monotonic()
    with (
        Client([follower.url], retry_deadline=60.0) as stranger,
        pytest.raises(ConnectionFailed) as failed,
    ):
        stranger.queues()
    assert time.monotonic() - started < 10
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value.last_error)
    assert "does not verify" in str(failed.value)

    async def async_stranger() -> None:
        async with AsyncClient([follower.url], retry_deadline=60.0) as client:
            await client.queues()

    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as async_failed:
        asyncio.run(async_stranger())
    assert time.monotonic() - started < 10
    assert "CERTIFICATE_VERIFY_FAILED" in str(async_failed.value.last_error)

    # Plain http to the TLS port gets no HTTP answer.
    plain = f"http://127.0.0.1:{follower.http_port}"
    with pytest.raises((http.client.HTTPException, OSError)):
        request("GET", plain + "/healthz")
    with Client([plain], retry_deadline=0.5) as confused, pytest.raises(ConnectionFailed):
        confused.queues()

    # A node joins over https, verifying the cluster with --tls-ca.
    joined = cluster.add_node(join_via=follower)
    cluster.wait_leader()
    statuses = cluster.wait_converged()
    assert len(statuses) == 4
    members = {m["http"] for m in cluster.status(leader)["members"]}
    assert joined.url in members
    assert all(url.startswith("https://") for url in members)


def test_client_certificates_required(make_cluster: ClusterFactory, pki: Pki) -> None:
    args = [*_tls_args(pki), "--tls-client-ca", str(pki.ca)]
    cluster = make_cluster(
        size=1, extra_args=args, scheme="https", context=_verifying(pki, client_cert=True)
    ).start()
    [node] = cluster.nodes
    cert, key = str(pki.client_cert), str(pki.client_key)
    with Client([node.url], ca=_ca_path(pki), cert=cert, key=key) as client:
        client.declare_queue("mtls")
        client.publish("mtls", "hello")
        assert [m.body for m in client.receive("mtls")] == ["hello"]
    with (
        Client([node.url], ca=_ca_path(pki), retry_deadline=0.5) as anonymous,
        pytest.raises(ConnectionFailed),
    ):
        anonymous.queues()
    with pytest.raises((http.client.HTTPException, OSError)):
        request("GET", node.url + "/healthz", context=_verifying(pki))


def _run_node(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "--id",
            "n1",
            "--data-dir",
            str(tmp_path / "data"),
            "--raft",
            f"127.0.0.1:{free_port()}",
            "--http",
            f"127.0.0.1:{free_port()}",
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "--tls-cert {missing}: no such file"),
        (["--tls-cert", "{ca}", "--tls-key", "{ca}"], "not a certificate and its private key"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{key}"],
            "--tls-client-ca",
        ),
        (["--tls-ca", "{missing}"], "--tls-ca {missing}: no such file"),
    ],
)
def test_bad_tls_files_exit_2(tmp_path: Path, pki: Pki, flags: list[str], message: str) -> None:
    values = {
        "missing": str(tmp_path / "missing.pem"),
        "ca": str(pki.ca),
        "cert": str(pki.cert),
        "key": str(pki.key),
    }
    out = _run_node(tmp_path, *(f.format(**values) for f in flags))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert message.format(**values) in lines[0]


def test_tls_flags_go_together(tmp_path: Path, pki: Pki) -> None:
    out = _run_node(tmp_path, "--tls-cert", str(pki.cert))
    assert out.returncode == 2
    assert "--tls-cert and --tls-key go together" in out.stderr
