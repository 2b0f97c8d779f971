"""A real syslog-over-TLS receiver for the tests (RFC 5425): a TLS server on a free port
of 127.0.0.1 that reads octet-counted frames, and an RFC 5424 parser (written from the
RFC's ABNF, apart from the code under test) that splits each message into its header,
structured data (unescaped) and MSG. With ``client_ca`` the receiver requires a client
certificate that CA issued (``ssl.CERT_REQUIRED``, as rsyslog's ``x509/certvalid`` or
syslog-ng's ``peer-verify(required-trusted)``) and keeps the subject of each one it
accepted and why it refused each handshake it did not."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tlsrig import Pki


@dataclass(frozen=True)
class Message:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, list[tuple[str, str]]]  # SD-ID → its params, in order
    msg: bytes

    def params(self, sd_id: str) -> dict[str, str]:
        return dict(self.sd[sd_id])


def _sd_name(text: str, at: int, stop: str) -> tuple[str, int]:
    end = at
    while end < len(text) and text[end] not in stop:
        char = text[end]
        assert 33 <= ord(char) <= 126, f"bad SD-NAME char {char!r}"
        assert char not in '="]', f"bad SD-NAME char {char!r}"
        end += 1
    name = text[at:end]
    assert 1 <= len(name) <= 32, f"bad SD-NAME {name!r}"
    return name, end


def parse(raw: bytes) -> Message:
    """One RFC 5424 message; an AssertionError names what does not conform."""
    assert raw[:1] == b"<", "no PRI"
    close = raw.index(b">")
    pri = int(raw[1:close])
    assert 0 <= pri <= 191
    head, rest = raw[close + 1 :], b""
    fields = head.split(b" ", 6)
    version, timestamp, hostname, app, procid, msgid, rest = fields
    for value, limit in ((hostname, 255), (app, 48), (procid, 128), (msgid, 32)):
        assert 1 <= len(value) <= limit, value
        assert all(33 <= b <= 126 for b in value), value
    text = rest.decode("utf-8")
    sd: dict[str, list[tuple[str, str]]] = {}
    at = 0
    if text.startswith("-"):
        at = 1
    else:
        while at < len(text) and text[at] == "[":
            sd_id, at = _sd_name(text, at + 1, " ]")
            assert sd_id not in sd, f"SD-ID {sd_id} twice"
            params: list[tuple[str, str]] = []
            while text[at] == " ":
                name, at = _sd_name(text, at + 1, "=")
                assert text[at : at + 2] == '="', "no opening quote"
                at += 2
                value: list[str] = []
                while text[at] != '"':
                    if text[at] == "\\" and text[at + 1] in '"\\]':
                        value.append(text[at + 1])
                        at += 2
                        continue
                    assert text[at] not in '"]', f"unescaped {text[at]!r} in a value"
                    value.append(text[at])
                    at += 1
                params.append((name, "".join(value)))
                at += 1
            assert text[at] == "]", "SD-ELEMENT not closed"
            sd[sd_id] = params
            at += 1
    msg = text[at + 1 :].encode() if at < len(text) else b""
    if at < len(text):
        assert text[at] == " ", "no space before MSG"
    return Message(
        pri,
        int(version),
        timestamp.decode(),
        hostname.decode(),
        app.decode(),
        procid.decode(),
        msgid.decode(),
        sd,
        msg,
    )


@dataclass
class SyslogReceiver:
    """Every frame received (``frames``: the raw messages); ``hang_up_after``: close
    each connection after that many frames (None: never)."""

    sock: socket.socket
    context: ssl.SSLContext
    frames: list[bytes] = field(default_factory=list)
    connections: int = 0
    hung_up: int = 0  # connections this side closed
    hang_up_after: int | None = None
    arrived: threading.Condition = field(default_factory=threading.Condition)
    #: Per connection accepted: the client certificate's subject (RDN type → value), or
    #: None when the receiver asks for none.
    peers: list[dict[str, str] | None] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why, per handshake refused

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.frames) >= count, timeout)
            return list(self.frames)

    def wait_refused(self, count: int, timeout: float = 10.0) -> list[str]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.refused) >= count, timeout)
            return list(self.refused)

    def wait_hung_up(self, count: int, timeout: float = 10.0) -> None:
        with self.arrived:
            self.arrived.wait_for(lambda: self.hung_up >= count, timeout)

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except OSError as exc:
            raw.close()
            with self.arrived:
                self.refused.append(str(exc))
                self.arrived.notify_all()
            return
        self.connections += 1
        self.peers.append(_subject(conn) if self.context.verify_mode else None)
        reader = conn.makefile("rb")
        count = 0
        try:
            while self.hang_up_after is None or count < self.hang_up_after:
                digits = b""
                while (char := reader.read(1)) != b" ":
                    if not char:
                        return
                    assert char.isdigit(), f"bad MSG-LEN byte {char!r}"
                    digits += char
                assert digits[:1] != b"0", "MSG-LEN has no leading zero"
                frame = reader.read(int(digits))
                with self.arrived:
                    self.frames.append(frame)
                    self.arrived.notify_all()
                count += 1
        finally:
            reader.close()
            conn.close()
            with self.arrived:
                self.hung_up += 1
                self.arrived.notify_all()


def _subject(conn: ssl.SSLSocket) -> dict[str, str]:
    cert = conn.getpeercert()
    assert cert, "a verified client presented no certificate"
    return {key: value for rdn in cert["subject"] for key, value in rdn}


def syslog_receiver(pki: Pki, client_ca: Path | None = None) -> Iterator[SyslogReceiver]:
    sock = socket.create_server(("127.0.0.1", 0))
    context = pki.server_context()
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    rig = SyslogReceiver(sock, context)
    thread = threading.Thread(target=rig.serve, daemon=True)
    thread.start()
    try:
        yield rig
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        sock.close()
        thread.join(5)
