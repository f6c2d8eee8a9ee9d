"""The collector's shared-key handshake and TLS, through real sockets, real processes and real certificates.

Clients: mona_client's own Sender, the client facade (``init_client``), raw sockets that speak the
handshake by hand, the ``mona collect`` command, and @fluent-org/logger (node) as an independent peer.
Certificates are made with the ``openssl`` command in a temporary directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

from mona_client import client
from mona_client.forward import pack_entry, pack_ping, shared_key_digest
from mona_client.transport import Sender, SenderOptions, client_ssl_context
from mona_collector import Collector
from tests.support.collector import (
    BASE,
    TAG,
    MonaCollect,
    RawClient,
    bin32,
    entry,
    packed_message,
    record,
    run_mona,
    stats,
    stored_arcs,
    time_fixext8,
)

from .test_interop import _node_client

ROOT = Path(__file__).resolve().parents[2]
KEY = "correct horse battery staple"
COLLECTOR_LOG = "mona_collector"


# --- certificates ---------------------------------------------------------------------------------


class Certs(NamedTuple):
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=mona test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    for name, usage, san in (
        ("server", "serverAuth", "DNS:localhost,IP:127.0.0.1"),
        ("client", "clientAuth", "DNS:client"),
    ):
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return Certs(*(str(d / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "secure.db"


def start(db: Path, **options) -> Collector:
    collector = Collector(port=0, db_path=db, stall_timeout=2.0, synchronous="NORMAL", udp_heartbeat=False, **options)
    collector.start()
    return collector


def entries(context: str, count: int) -> List[bytes]:
    return [
        pack_entry(BASE + i, record(context if i == 0 else f"{context}.s{i}", {"i": i}, BASE + i)) for i in range(count)
    ]


def sender(port: int, **options) -> Sender:
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("max_backoff", 0.2)
    return Sender(SenderOptions("127.0.0.1", port, **options))


def send(port: int, context: str, count: int = 10, timeout: float = 10.0, **options) -> Sender:
    """A Sender that put ``count`` records and flushed them within ``timeout``; closed, returned for its stats."""
    s = sender(port, **options)
    for data in entries(context, count):
        s.put(data)
    s.delivered = s.flush(timeout)  # type: ignore[attr-defined]
    s.close(0.1)
    return s


def refusal_lines(caplog, text: str) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == COLLECTOR_LOG and "refused connection" in r.getMessage() and text in r.getMessage()
    ]


class Handshaker(RawClient):
    """A raw client (in TLS when given a context) that reads HELO and sends the PING it is told to."""

    def __init__(self, port: int, context: Optional[ssl.SSLContext] = None) -> None:
        super().__init__(port)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.sock.settimeout(10)

    receive = RawClient.answer

    @property
    def pending(self) -> list:
        return self.answers

    def closed(self) -> bool:
        try:
            self.wait_closed()
        except ssl.SSLError:
            pass
        return True


# --- shared key: mona_client's Sender ---------------------------------------------------------------


def test_right_key_stores_records(db):
    with start(db, shared_key=KEY) as collector:
        s = send(collector.port, "key-ok", 25, shared_key=KEY)
        assert s.delivered and s.stats()["acked"] == 25
        assert collector.wait_for_records(25, 5)
    arc = stored_arcs(db, "key-ok")[0]
    assert arc["export_count"] == 25 and len(arc["sub_arcs"]) == 24


def test_wrong_key_is_refused_logged_once_and_the_sender_keeps_the_records(db, caplog):
    caplog.set_level(logging.INFO)
    with start(db, shared_key=KEY) as collector:
        s = sender(collector.port, shared_key="not the key")
        for data in entries("key-wrong", 10):
            s.put(data)
        assert s.flush(1.5) is False  # several attempts, each refused
        assert s.pending() == 10 and s.stats()["acked"] == 0
        client_lines = [r.getMessage() for r in caplog.records if r.name == "mona-logger"]
        assert any("refused the shared key: shared_key mismatch" in line for line in client_lines), client_lines
        lines = refusal_lines(caplog, "shared_key mismatch")
        assert len(lines) == 1, lines  # one line, however often the client retries
        assert re.search(r"refused connection from 127\.0\.0\.1:\d+: shared_key mismatch", lines[0])
        assert collector.processed_records == 0
        # The records were kept: the same sender delivers them once it has the right key.
        s.options = dataclasses.replace(s.options, shared_key=KEY)
        assert s.flush(10) and collector.wait_for_records(10, 5)
        s.close(1)
    assert stats(db)["tags"][TAG]["events"] == 10


def test_client_without_a_key_is_refused_and_nothing_is_stored(db, caplog):
    caplog.set_level(logging.INFO)
    with start(db, shared_key=KEY) as collector:
        s = send(collector.port, "no-key", 5, timeout=1.0)
        assert not s.delivered and s.stats()["acked"] == 0
        assert refusal_lines(caplog, "before the shared-key handshake")
        assert collector.processed_records == 0
    assert stats(db)["events"] == 0


def test_collector_without_a_key_is_unchanged(db):
    with start(db) as collector:
        assert send(collector.port, "plain", 5).delivered
        assert collector.wait_for_records(5, 5)


def test_user_authentication(db, caplog):
    caplog.set_level(logging.INFO)
    with start(db, shared_key=KEY, users={"alice": "wonderland"}) as collector:
        assert send(collector.port, "user-ok", 3, shared_key=KEY, username="alice", password="wonderland").delivered
        assert not send(
            collector.port, "user-bad", 3, timeout=0.8, shared_key=KEY, username="alice", password="nope"
        ).delivered
        assert refusal_lines(caplog, "username/password mismatch")
        assert collector.wait_for_records(3, 5)
    assert stats(db)["events"] == 3


# --- shared key: the wire, byte by byte -----------------------------------------------------------------


def test_handshake_messages_on_the_wire(db, caplog):
    caplog.set_level(logging.INFO)
    with start(db, shared_key=KEY, hostname="collector-under-test") as collector:
        good = Handshaker(collector.port)
        tag, helo = good.receive()
        assert tag == "HELO" and len(helo["nonce"]) == 16 and helo["auth"] and helo["keepalive"] is True
        ping, salt = pack_ping("raw-client", KEY, helo["nonce"], helo["auth"])
        good.sock.sendall(ping)
        assert good.receive() == [
            "PONG",
            True,
            "",
            "collector-under-test",
            shared_key_digest(salt, "collector-under-test", helo["nonce"], KEY),
        ]
        good.sock.sendall(
            packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("wire-ok", {"v": 1}))), {"chunk": "c1"})
        )
        assert good.receive() == {"ack": "c1"}

        bad = Handshaker(collector.port)
        _, helo2 = bad.receive()
        assert helo2["nonce"] != helo["nonce"]  # a fresh nonce per connection
        bad.sock.sendall(pack_ping("raw-client", KEY, helo["nonce"])[0])  # replays the first nonce
        assert bad.receive() == ["PONG", False, "shared_key mismatch", "", ""]
        assert bad.closed()

        early = Handshaker(collector.port)  # data instead of PING
        early.receive()
        early.sock.sendall(
            packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("wire-early", {"v": 1}))), {"chunk": "c2"})
        )
        assert early.receive() == ["PONG", False, "invalid ping message", "", ""]
        assert early.closed()

        junk = Handshaker(collector.port)  # not msgpack at all
        junk.receive()
        junk.sock.sendall(b"\xc1" * 10)
        assert junk.receive()[:2] == ["PONG", False] and junk.closed()
        assert collector.wait_for_records(1, 5)
        time.sleep(0.2)
        assert collector.processed_records == 1
    assert stored_arcs(db, "wire-ok") and not stored_arcs(db, "wire-early")
    assert len(refusal_lines(caplog, "")) == 3


# --- TLS ------------------------------------------------------------------------------------------


def tls_context(certs: Certs, version: Optional[ssl.TLSVersion] = None, with_cert: bool = False) -> ssl.SSLContext:
    context = client_ssl_context(
        certs.ca, certs.client_cert if with_cert else None, certs.client_key if with_cert else None
    )
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_versions(db, certs, version):
    with start(db, tls_cert_file=certs.server_cert, tls_key_file=certs.server_key) as collector:
        raw = Handshaker(collector.port, tls_context(certs, version))
        assert raw.sock.version() == version.name.replace("_", ".")  # "TLSv1.2" / "TLSv1.3"
        raw.sock.sendall(
            packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("tls-raw", {"v": 1}))), {"chunk": "t"})
        )
        assert raw.receive() == {"ack": "t"}
        assert send(collector.port, "tls-sender", 5, ssl_context=tls_context(certs, version)).delivered
        assert collector.wait_for_records(6, 5)


def test_tls_client_without_the_ca_fails_verification(db, certs, caplog):
    caplog.set_level(logging.INFO)
    with start(db, tls_cert_file=certs.server_cert, tls_key_file=certs.server_key) as collector:
        s = send(collector.port, "tls-untrusted", 3, timeout=1.0, ssl_context=client_ssl_context())  # system store
        assert not s.delivered
        lines = [r.getMessage() for r in caplog.records if r.name == "mona-logger"]
        assert any("CERTIFICATE_VERIFY_FAILED" in line for line in lines), lines
        assert refusal_lines(caplog, "TLS handshake failed")
        plain = Handshaker(collector.port)  # a plain-text client gets no service either
        plain.sock.sendall(
            packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("plain", {}))), {"chunk": "p"})
        )
        assert plain.closed() and not any(isinstance(answer, dict) for answer in plain.pending)
        assert collector.processed_records == 0
    assert stats(db)["events"] == 0


def test_tls_client_certificates_required(db, certs, caplog):
    caplog.set_level(logging.INFO)
    with start(db, tls_cert_file=certs.server_cert, tls_key_file=certs.server_key, tls_ca_file=certs.ca) as collector:
        assert not send(collector.port, "no-cert", 2, timeout=1.0, ssl_context=tls_context(certs)).delivered
        assert refusal_lines(caplog, "TLS handshake failed")
        assert send(collector.port, "with-cert", 2, ssl_context=tls_context(certs, with_cert=True)).delivered
        assert collector.wait_for_records(2, 5)
    assert stored_arcs(db, "with-cert") and not stored_arcs(db, "no-cert")


def test_tls_and_shared_key_through_init_client(db, certs, tmp_path):
    options = dict(tls_cert_file=certs.server_cert, tls_key_file=certs.server_key, shared_key=KEY)
    with start(db, **options) as collector:
        config = tmp_path / "mona_client_config.json"
        config.write_text('{"disable_all": false}')
        client.init_client(
            host="127.0.0.1",
            port=collector.port,
            user_id="secure-user",
            config_file=str(config),
            print_logs=False,
            spool_dir=str(tmp_path / "spool"),
            shared_key=KEY,
            tls=True,
            tls_ca_file=certs.ca,
        )
        try:
            with client.new_mona_context(arc_class="secure", context_id="facade-run"):
                for i in range(10):
                    assert client.export({f"k{i}": i}) is True
            assert client.flush(10)
        finally:
            client.reset()
            client.close(1)
        # Both layers really are on: a TLS client without the key is refused.
        assert not send(collector.port, "tls-no-key", 2, timeout=0.8, ssl_context=tls_context(certs)).delivered
    arc = stored_arcs(db, "facade-run")[0]
    assert arc["arc_class"] == "secure" and arc["fields"] == {f"k{i}": i for i in range(10)}


# --- the mona collect command -------------------------------------------------------------------------


def test_mona_collect_with_key_file_and_tls(tmp_path, certs):
    key_file = tmp_path / "shared.key"
    key_file.write_text(KEY + "\n")
    db = tmp_path / "cli.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MONA_COLLECTOR_SHARED_KEY", None)
    tls = ("--tls-cert", certs.server_cert, "--tls-key", certs.server_key)
    running = MonaCollect(db, "--shared-key-file", str(key_file), *tls, env=env)
    try:
        line = running.listening_line
        assert re.search(r"\(TLS, shared key.*storing in", line), line
        port = running.port
        assert send(port, "cli-secure", 4, ssl_context=tls_context(certs), shared_key=KEY).delivered
        assert not send(port, "cli-wrong", 1, timeout=0.8, ssl_context=tls_context(certs), shared_key="x").delivered
        running.process.terminate()
        assert running.process.wait(timeout=30) == 0
        assert running.process.stderr is not None
        log = running.process.stderr.read()
        assert re.search(r"refused connection from 127\.0\.0\.1:\d+: shared_key mismatch", log), log
    finally:
        running.kill()
    assert stored_arcs(db, "cli-secure") and not stored_arcs(db, "cli-wrong")


def test_mona_collect_rejects_half_a_tls_configuration(tmp_path, certs):
    result = run_mona(
        "collect",
        "--port",
        "0",
        "--db",
        str(tmp_path / "x.db"),
        "--tls-cert",
        certs.server_cert,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2 and "both a certificate file and a key file" in result.stderr


# --- an independent client: @fluent-org/logger (node) --------------------------------------------------


def node_send(port: int, context: str, key: str = "-", ca: str = "-", timeout_ms: int = 15000):
    script = _node_client("fluent_org_secure.js")
    return subprocess.run(
        ["node", str(script), str(port), "20", context, key, ca, str(timeout_ms)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def node_ready():
    _node_client("fluent_org_secure.js")  # installs once, or skips without node/npm


@pytest.mark.parametrize("layers", ["key", "tls", "tls+key"])
def test_fluent_org_logger_with_shared_key_and_tls(node_ready, db, certs, layers):
    options = {}
    if "key" in layers:
        options["shared_key"] = KEY
    if "tls" in layers:
        options.update(tls_cert_file=certs.server_cert, tls_key_file=certs.server_key)
    with start(db, **options) as collector:
        result = node_send(
            collector.port, f"node-{layers}", KEY if "key" in layers else "-", certs.ca if "tls" in layers else "-"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert collector.wait_for_records(20, 5)
    arc = stored_arcs(db, f"node-{layers}")[0]
    assert arc["arc_class"] == "node-secure" and arc["export_count"] == 20


def test_fluent_org_logger_with_a_wrong_key_stores_nothing(node_ready, db, caplog):
    caplog.set_level(logging.INFO)
    with start(db, shared_key=KEY) as collector:
        result = node_send(collector.port, "node-wrong", "wrong key", timeout_ms=2500)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "shared_key mismatch" in result.stderr, result.stderr  # the node client saw why
        assert len(refusal_lines(caplog, "shared_key mismatch")) == 1
        assert collector.processed_records == 0
    assert stats(db)["events"] == 0


# --- the TLS set-up docs/collector.md documents -----------------------------------------------------


def _doc_block(containing: str) -> str:
    text = (ROOT / "docs" / "collector.md").read_text()
    blocks = [b for b in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) if containing in b]
    assert len(blocks) == 1, f"one documented block with {containing!r}"
    return blocks[0]


def _setting(block: str, key: str) -> str:
    match = re.search(rf"^\s*{key} (\S+)$", block, re.M)
    assert match, f"no {key} in the documented example"
    return match.group(1)


def test_the_documented_certificate_verifies_by_ip_and_by_the_fluentd_server_name(db, tmp_path):
    """Fluentd checks the certificate against the <server> name when host is an IP; the mona client
    against MONA_HOST. The certificate made exactly as documented must pass both, as Python's ssl
    (the same OpenSSL check) sees it."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the documented certificate")
    subprocess.run(
        ["bash", "-e", "-c", _doc_block("openssl req -x509")], cwd=tmp_path, check=True, capture_output=True, timeout=60
    )
    fluentd = _doc_block("transport tls")
    assert re.search(r"^\s*tls_verify_hostname true$", fluentd, re.M)
    name, host = (_setting(fluentd, key) for key in ("name", "host"))
    assert host == "127.0.0.1" and name != host
    with start(db, tls_cert_file=tmp_path / "server.pem", tls_key_file=tmp_path / "server.key") as collector:
        for number, server_hostname in enumerate((name, host, "localhost")):
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            client = RawClient(collector.port)
            client.sock = context.wrap_socket(client.sock, server_hostname=server_hostname)
            client.send(
                packed_message(
                    TAG, bin32(entry(time_fixext8(BASE, 0), record(f"doc-tls-{number}", {}))), {"chunk": str(number)}
                )
            )
            assert client.answer() == {"ack": str(number)}, server_hostname
            client.close()
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(RawClient(collector.port).sock, server_hostname="mona-collector")
