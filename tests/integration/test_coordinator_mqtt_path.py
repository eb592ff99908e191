"""The coordinator's MQTT path (coordinator/mqtt5.py) against a real mosquitto, with messages
exactly as nodes publish them (``rebuilder.publish.attestation_message``, signed status):

1. a burst far beyond the ingest queue, from several publishers, with status messages among
   the attestations: every attestation stored, every status applied, nothing dropped;
2. the same path over TLS, with packets larger than a read (a 900 KB message, an oversized
   one) among small ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.app import INGEST, MQTT, STORE, create_app
from coordinator.config import load_config
from coordinator.service import Ingest
from tests.support import free_port, publish_as_node, running_mosquitto, signed_status, wait_for
from tests.unit.coordinator.factory import Signer, coordinator_toml, serving, sha


def _stored(app, n):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await app[STORE].totals()).envelopes >= n

    return check


async def test_burst_beyond_the_ingest_queue(tmp_path: Path) -> None:
    signers = [Signer(f"rb-{i}") for i in range(3)]
    per = 200
    (tmp_path / "broker").mkdir()
    with running_mosquitto(tmp_path / "broker") as broker:
        port = free_port()
        cfg = load_config(coordinator_toml(tmp_path, signers, broker.port, port))
        # A queue of 16 messages: most of the burst must wait in aiomqtt's queue.
        limits = dataclasses.replace(cfg.limits, ingest_queue=16, ingest_batch=16)
        app = create_app(dataclasses.replace(cfg, limits=limits, verify_workers=1))
        refused = 0
        offer = Ingest.offer

        def counting_offer(self: Ingest, rebuilder_id: str, payload: bytes) -> bool:
            nonlocal refused
            taken = offer(self, rebuilder_id, payload)
            refused += not taken
            return taken

        messages = {
            s.id: [
                s.rebuild(f"p{i}", "1.0", {f"p{i}_1.0_all.deb": sha(f"{i}")}).to_bytes()
                for i in range(per)
            ]
            for s in signers
        }

        async def publish(signer: Signer) -> None:
            # Published all at once (not one acknowledgement at a time), so the coordinator
            # reads many packets in one go, and the last ones with nothing after them.
            status = signed_status(signer.key, queue=7, running=1)
            ours = messages[signer.id]
            async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=1000) as pub:
                await asyncio.gather(
                    *(publish_as_node(pub, signer.id, payload) for payload in ours[: per // 2]),
                    pub.publish(f"rq/v1/status/{signer.id}", status, qos=1),
                    *(publish_as_node(pub, signer.id, payload) for payload in ours[per // 2 :]),
                )

        Ingest.offer = counting_offer  # type: ignore[method-assign]
        try:
            async with serving(app, port):
                await asyncio.wait_for(app[MQTT].connected.wait(), 10)
                await asyncio.gather(*(publish(s) for s in signers))
                # They agree: no disagreement is published, nothing follows the burst on the socket
                # (keepalive is 30 s), and its last packets must not wait for more to arrive.
                await wait_for(_stored(app, 3 * per), 20, "every attestation of the burst")
                states = await app[STORE].rebuilder_states()
                m = app[INGEST].metrics
        finally:
            Ingest.offer = offer  # type: ignore[method-assign]
    assert refused > 0, "the burst never filled the ingest queue"
    assert m.received["mqtt"] == 3 * per
    assert m.ingested["mqtt"] == 3 * per
    assert m.dropped_total() == 0
    assert m.status_invalid == 0
    for s in signers:
        assert states[s.id].status is not None and states[s.id].status["queue"] == 7


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for p in paths:
        p.chmod(0o644)  # mosquitto reads them after dropping to its own user
    return paths


async def test_tls_and_packets_larger_than_a_read(tmp_path: Path) -> None:
    alpha = Signer("rb-alpha")
    # Not under tmp_path: mosquitto, no longer root when it loads them, could not enter it.
    with tempfile.TemporaryDirectory(prefix="rq-tls-") as tls_dir:
        Path(tls_dir).chmod(0o755)
        await _tls_test(tmp_path, alpha, *_tls_files(Path(tls_dir)))


async def _tls_test(tmp_path: Path, alpha: Signer, ca: Path, cert: Path, key: Path) -> None:
    tls_port = free_port()
    extra = f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    (tmp_path / "broker").mkdir()
    with running_mosquitto(tmp_path / "broker", extra_config=extra):
        port = free_port()
        cfg = load_config(coordinator_toml(tmp_path, [alpha], tls_port, port))
        mqtt = dataclasses.replace(cfg.mqtt, tls=True, ca_file=ca)
        app = create_app(dataclasses.replace(cfg, mqtt=mqtt))
        small = [
            alpha.rebuild(f"s{i}", "1", {f"s{i}_1_all.deb": sha(f"s{i}")}).to_bytes()
            for i in range(50)
        ]
        big = b'{"payload":"' + b"A" * 900_000 + b'"}'  # malformed, read over many recv calls
        oversized = b'{"payload":"' + b"A" * (1024 * 1024 + 10) + b'"}'
        context = ssl.create_default_context(cafile=str(ca))
        async with serving(app, port):
            await asyncio.wait_for(app[MQTT].connected.wait(), 10)
            batch: list[bytes] = []
            for i, payload in enumerate(small):
                batch.append(payload)
                if i % 10 == 0:
                    batch.append(big)
                if i == 25:
                    batch.append(oversized)
            async with aiomqtt.Client(
                "127.0.0.1", tls_port, tls_context=context, max_inflight_messages=1000
            ) as pub:
                await asyncio.gather(*(publish_as_node(pub, "rb-alpha", p) for p in batch))
            await wait_for(_stored(app, len(small)), 30, "every small attestation over TLS")
            m = app[INGEST].metrics
            await wait_for(_dropped(app, 6), 30, "the large messages dropped")
    assert m.received["mqtt"] == len(small) + 6
    assert m.dropped["malformed"] == 5
    assert m.dropped["oversized"] == 1


def _dropped(app, n):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return app[INGEST].metrics.dropped_total() >= n

    return check
