"""Kafka transport security (services.common.kafka.KafkaSecurity): the --kafka-* flags
and env vars reach every Kafka client the services build, and those clients speak
TLS / mutual TLS with the given files.

The local broker (Tansu 0.6) does not complete a TLS handshake with aiokafka (its
`--cert` listener closes the connection) and with `--authentication` refuses even its
own `tansu user create`, so no SCRAM user can be made on a memory-only broker. The TLS
handshakes here are therefore made against a real TLS server (Python's ssl, the tests'
throwaway PKI) that records the certificate each client presented; SASL is checked where
aiokafka holds it (its connection settings).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from services.actions.consumer import ActionsConsumer
from services.actions.projection import ActionMetrics, ActionTable
from services.actions.records import KeyRing
from services.actions.sink import KafkaActionSink
from services.common.errors import ConfigError, Unavailable
from services.common.kafka import KafkaPublisher, KafkaSecurity, ProducerConfig, PublisherMetrics
from services.common.spool import Spool
from services.enforcer.settings import EnforcerSettings
from services.monitor.settings import MonitorSettings
from tests.certs import Pki

CLIENT_URI = "spiffe://mesh/enforcer"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("kafka-pki"))


class TlsPeer:
    """A TLS server requiring client certificates; records the SAN each client presented."""

    def __init__(self, pki: Pki) -> None:
        cert, key = pki.server()
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.folder / "ca.pem"))
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.seen: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            cert = writer.get_extra_info("peercert") or {}
            self.seen += [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
            writer.close()  # not a Kafka broker: the handshake is what is checked

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ctx)
        return f"localhost:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def mtls(pki: Pki, tmp: Path) -> KafkaSecurity:
    cert, key = pki.client("enforcer", CLIENT_URI)
    return KafkaSecurity(protocol="SSL", ca_file=str(pki.folder / "ca.pem"), cert_file=str(cert), key_file=str(key))


def test_flags_and_env_vars_become_the_clients_security(tmp_path, monkeypatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = EnforcerSettings.parse(
        ["--plaintext", "--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", "SCRAM-SHA-512",
         "--kafka-sasl-username", "enforcer", "--kafka-sasl-password-file", str(pw)]
    )  # fmt: skip
    kwargs = s.kafka_security().client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "enforcer" and kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    monkeypatch.setenv("MONITOR_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("MONITOR_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("MONITOR_KAFKA_SASL_USERNAME", "monitor")
    monkeypatch.setenv("MONITOR_KAFKA_SASL_PASSWORD_FILE", str(pw))
    m = MonitorSettings.parse(["--plaintext"]).kafka_security()
    assert (m.protocol, m.sasl_mechanism, m.sasl_username) == ("SASL_PLAINTEXT", "PLAIN", "monitor")
    assert "ssl_context" not in m.client_kwargs()
    assert EnforcerSettings.parse(["--plaintext"]).kafka_security().client_kwargs() == {
        "security_protocol": "PLAINTEXT"
    }


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (dict(protocol="PLAINTEXT", ca_file="ca.pem"), "need --kafka-security-protocol SSL"),
        (dict(protocol="SSL", cert_file="c.pem"), "go together"),
        (dict(protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u"), "--kafka-sasl-password-file"),
        (dict(protocol="SSL", sasl_mechanism="PLAIN"), "SASL_PLAINTEXT or SASL_SSL"),
    ],
)
def test_inconsistent_settings_are_refused(fields, error) -> None:
    with pytest.raises(ConfigError, match=error):
        KafkaSecurity(**fields)


def test_a_missing_file_names_itself(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.pem"):
        KafkaSecurity(protocol="SSL", ca_file=str(tmp_path / "missing.pem")).client_kwargs()
    with pytest.raises(SystemExit):  # the settings refuse a bad protocol name at parse time
        EnforcerSettings.parse(["--plaintext", "--kafka-security-protocol", "TLS"])


async def test_every_kafka_client_presents_its_certificate_over_tls(pki, tmp_path) -> None:
    security = mtls(pki, tmp_path)
    peer = TlsPeer(pki)
    async with peer as bootstrap:
        # The action sink (acks=all producer): TLS handshake with the client certificate, then no Kafka.
        sink = KafkaActionSink(
            bootstrap, keys=KeyRing.insecure_dev(), idempotence=False, timeout_s=3, client_id="t", security=security
        )
        with pytest.raises(Unavailable):
            await sink.send("safeguards.actions.t", b"k", b"v")
        await sink.close()
        assert peer.seen.count(CLIENT_URI) >= 1, "the action sink did not present its certificate"
        # The actions consumer.
        seen = len(peer.seen)
        table = ActionTable("t", ActionMetrics(CollectorRegistry()))
        consumer = ActionsConsumer(
            table, keys=KeyRing.insecure_dev(), bootstrap=bootstrap, client_id="t", security=security,
            catchup_timeout_s=2,
        )  # fmt: skip
        await consumer.start()
        await consumer.stop()
        assert len(peer.seen) > seen, "the actions consumer did not present its certificate"
        # The signal publisher.
        seen = len(peer.seen)
        publisher = KafkaPublisher(
            ProducerConfig(bootstrap=bootstrap, client_id="t", security=security, close_timeout_s=1),
            Spool(tmp_path / "spool.db", 1 << 20),
            PublisherMetrics(CollectorRegistry()),
        )
        await publisher.start()
        for _ in range(50):
            if len(peer.seen) > seen:
                break
            await asyncio.sleep(0.1)
        await publisher.close()
        assert len(peer.seen) > seen, "the signal publisher did not present its certificate"
        assert set(peer.seen) == {CLIENT_URI}


async def test_a_broker_certificate_from_another_ca_is_refused(pki, tmp_path) -> None:
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other")
    cert, key = pki.client("enforcer", CLIENT_URI)
    wrong_ca = KafkaSecurity(
        protocol="SSL", ca_file=str(other.folder / "ca.pem"), cert_file=str(cert), key_file=str(key)
    )
    peer = TlsPeer(pki)
    async with peer as bootstrap:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=2000, **wrong_ca.client_kwargs())
        with pytest.raises(KafkaError):
            await producer.start()
        await producer.stop()
    assert peer.seen == []  # no handshake completed


async def test_sasl_settings_reach_aiokafkas_connections(tmp_path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    security = KafkaSecurity(
        protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="alice", sasl_password_file=str(pw)
    )
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **security.client_kwargs())
    client = producer.client
    assert (client._security_protocol, client._sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
    assert (client._sasl_plain_username, client._sasl_plain_password) == ("alice", "s3cret")
