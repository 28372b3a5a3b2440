"""A byte-exact MQTT 3.1 / 3.1.1 test client over a raw TCP socket.

Written from the OASIS MQTT 3.1.1 specification (and the IBM MQTT 3.1 text for the "MQIsdp" variant); it shares
no code with the broker. Builders return the exact bytes of a packet so tests can also send deliberately broken
ones; the reader returns packets as (type, flags, body) and never interprets more than it is asked to.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import deque
from typing import Iterable, NamedTuple, Optional, Sequence, Tuple, Union

# Control packet types (fixed header, high nibble).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

TYPE_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBREC: "PUBREC",
    PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT",
}

# CONNACK return codes (3.1.1 table 3.1).
RC_ACCEPTED = 0
RC_BAD_PROTOCOL = 1
RC_ID_REJECTED = 2
RC_SERVER_UNAVAILABLE = 3
RC_BAD_CREDENTIALS = 4
RC_NOT_AUTHORIZED = 5

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_OK_SESSION = b"\x20\x02\x01\x00"
PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"

Bytesish = Union[bytes, bytearray, str]


class ProtocolError(Exception):
    """The peer sent something this client cannot frame."""


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


# --------------------------------------------------------------------------------------------------------------
# Encoding primitives
# --------------------------------------------------------------------------------------------------------------

def _b(s: Bytesish) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


def encode_remaining_length(n: int) -> bytes:
    if n < 0 or n > 268_435_455:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        digit = n % 128
        n //= 128
        if n:
            digit |= 0x80
        out.append(digit)
        if not n:
            return bytes(out)


def decode_remaining_length(data: bytes, offset: int = 1) -> Optional[Tuple[int, int]]:
    """Returns (value, bytes used) or None when more bytes are needed. Raises ProtocolError past 4 bytes."""
    value = 0
    mult = 1
    for i in range(4):
        if offset + i >= len(data):
            return None
        byte = data[offset + i]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, i + 1
        mult *= 128
    raise ProtocolError("remaining length longer than 4 bytes")


def encode_string(s: Bytesish) -> bytes:
    """Two-byte length prefix + bytes. A str is UTF-8 encoded; bytes are sent as given (for broken UTF-8)."""
    data = _b(s)
    return struct.pack("!H", len(data)) + data


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def packet(ptype: int, flags: int, body: bytes = b"") -> bytes:
    """Any packet from its type, the low-nibble flags and the body (variable header + payload)."""
    return bytes([(ptype << 4) | (flags & 0x0F)]) + encode_remaining_length(len(body)) + body


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------

class Will(NamedTuple):
    topic: Bytesish
    payload: Bytesish = b""
    qos: int = 0
    retain: bool = False


def connect(client_id: Bytesish = "", clean: bool = True, keepalive: int = 60, will: Optional[Will] = None,
            username: Optional[Bytesish] = None, password: Optional[Bytesish] = None, level: int = 4,
            proto_name: Optional[Bytesish] = None, flags: Optional[int] = None, v5_properties: bytes = b"\x00",
            fixed_flags: int = 0) -> bytes:
    """CONNECT. level 4 -> "MQTT" (3.1.1), level 3 -> "MQIsdp" (3.1), level 5 adds empty v5 property lists.

    `flags` overrides the computed connect-flags byte (for reserved bit / inconsistent flag tests); the payload
    fields present are still decided by the arguments.
    """
    if proto_name is None:
        proto_name = "MQIsdp" if level == 3 else "MQTT"
    computed = 0
    if clean:
        computed |= 0x02
    if will is not None:
        computed |= 0x04 | ((will.qos & 3) << 3) | (0x20 if will.retain else 0)
    if password is not None:
        computed |= 0x40
    if username is not None:
        computed |= 0x80
    cf = computed if flags is None else flags
    vh = encode_string(proto_name) + bytes([level, cf]) + u16(keepalive)
    if level == 5:
        vh += v5_properties
    payload = encode_string(client_id)
    if will is not None:
        if level == 5:
            payload += b"\x00"  # will properties length
        payload += encode_string(will.topic) + encode_string(will.payload)
    if username is not None:
        payload += encode_string(username)
    if password is not None:
        payload += encode_string(password)
    return packet(CONNECT, fixed_flags, vh + payload)


def publish(topic: Bytesish, payload: Bytesish = b"", qos: int = 0, retain: bool = False, dup: bool = False,
            pid: Optional[int] = None) -> bytes:
    flags = (0x08 if dup else 0) | ((qos & 3) << 1) | (0x01 if retain else 0)
    body = encode_string(topic)
    if qos > 0:
        if pid is None:
            raise ValueError("QoS > 0 PUBLISH needs a packet id")
        body += u16(pid)
    elif pid is not None:
        body += u16(pid)  # deliberately wrong: only for malformed-packet tests
    return packet(PUBLISH, flags, body + _b(payload))


def puback(pid: int) -> bytes:
    return packet(PUBACK, 0, u16(pid))


def pubrec(pid: int) -> bytes:
    return packet(PUBREC, 0, u16(pid))


def pubrel(pid: int, flags: int = 0x02) -> bytes:
    return packet(PUBREL, flags, u16(pid))


def pubcomp(pid: int) -> bytes:
    return packet(PUBCOMP, 0, u16(pid))


def subscribe(pid: int, topics: Sequence[Tuple[Bytesish, int]], flags: int = 0x02) -> bytes:
    body = u16(pid)
    for flt, qos in topics:
        body += encode_string(flt) + bytes([qos])
    return packet(SUBSCRIBE, flags, body)


def unsubscribe(pid: int, topics: Iterable[Bytesish], flags: int = 0x02) -> bytes:
    body = u16(pid)
    for flt in topics:
        body += encode_string(flt)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq() -> bytes:
    return PINGREQ_BYTES


def disconnect() -> bytes:
    return DISCONNECT_BYTES


# Expected server packets, as bytes.

def connack(session_present: bool = False, rc: int = 0) -> bytes:
    return bytes([0x20, 0x02, 0x01 if session_present else 0x00, rc])


def suback(pid: int, granted: Sequence[int]) -> bytes:
    return packet(SUBACK, 0, u16(pid) + bytes(granted))


def unsuback(pid: int) -> bytes:
    return packet(UNSUBACK, 0, u16(pid))


# --------------------------------------------------------------------------------------------------------------
# Received packets
# --------------------------------------------------------------------------------------------------------------

class Packet(NamedTuple):
    type: int
    flags: int
    body: bytes

    def raw(self) -> bytes:
        return packet(self.type, self.flags, self.body)

    def __repr__(self) -> str:
        name = TYPE_NAMES.get(self.type, f"type{self.type}")
        body = self.body if len(self.body) <= 64 else self.body[:64] + b"..."
        return f"<{name} flags=0x{self.flags:x} len={len(self.body)} body={body!r}>"


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    pid: Optional[int]


def parse_publish(p: Packet) -> Publish:
    if p.type != PUBLISH:
        raise AssertionError(f"expected PUBLISH, got {p!r}")
    qos = (p.flags >> 1) & 3
    if qos == 3:
        raise AssertionError(f"server sent PUBLISH with QoS 3: {p!r}")
    if len(p.body) < 2:
        raise AssertionError(f"PUBLISH too short: {p!r}")
    tlen = struct.unpack_from("!H", p.body, 0)[0]
    topic = p.body[2:2 + tlen].decode("utf-8")
    off = 2 + tlen
    pid = None
    if qos > 0:
        pid = struct.unpack_from("!H", p.body, off)[0]
        off += 2
        if pid == 0:
            raise AssertionError(f"server sent PUBLISH with packet id 0: {p!r}")
    return Publish(topic, bytes(p.body[off:]), qos, bool(p.flags & 1), bool(p.flags & 8), pid)


def packet_id(p: Packet) -> int:
    return struct.unpack_from("!H", p.body, 0)[0]


# --------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------

class RawClient:
    """One TCP connection. `read_packet` frames exactly one packet; packets set aside by the helpers (for example
    a PUBLISH that arrived while waiting for a PUBREL) are returned first, in arrival order."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.backlog: deque = deque()
        self.closed = False
        self._next_pid = 0

    # -- raw I/O ------------------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_pid(self) -> int:
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    def _try_frame(self) -> Optional[Packet]:
        if not self.buf:
            return None
        rl = decode_remaining_length(self.buf, 1)
        if rl is None:
            return None
        length, used = rl
        total = 1 + used + length
        if len(self.buf) < total:
            return None
        first = self.buf[0]
        pkt = Packet(first >> 4, first & 0x0F, bytes(self.buf[1 + used:total]))
        del self.buf[:total]
        return pkt

    def _recv_some(self, deadline: float) -> bytes:
        """One recv bounded by the deadline. Returns b'' on EOF/reset, raises TimeoutError on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("timed out waiting for data") from None
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                data = b""
            else:
                raise
        if not data:
            self.closed = True
        return data

    def read_packet(self, timeout: float = 5.0) -> Packet:
        """Next packet. Raises TimeoutError when none is complete in time, Closed when the peer closed."""
        if self.backlog:
            return self.backlog.popleft()
        deadline = time.monotonic() + timeout
        while True:
            pkt = self._try_frame()
            if pkt is not None:
                return pkt
            if self.closed:
                raise Closed(f"connection closed ({len(self.buf)} unframed bytes left)")
            data = self._recv_some(deadline)
            if not data:
                raise Closed(f"connection closed ({len(self.buf)} unframed bytes left)")
            self.buf += data

    def expect(self, expected: bytes, timeout: float = 5.0) -> Packet:
        """Reads one packet and asserts its exact bytes."""
        try:
            pkt = self.read_packet(timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {expected.hex(' ')}") from None
        except Closed as e:
            raise AssertionError(f"connection closed while waiting for {expected.hex(' ')}: {e}") from None
        if pkt.raw() != expected:
            raise AssertionError(f"expected {expected.hex(' ')}, got {pkt.raw().hex(' ')} {pkt!r}")
        return pkt

    def expect_type(self, ptype: int, timeout: float = 5.0) -> Packet:
        try:
            pkt = self.read_packet(timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {TYPE_NAMES[ptype]}") from None
        except Closed as e:
            raise AssertionError(f"connection closed while waiting for {TYPE_NAMES[ptype]}: {e}") from None
        if pkt.type != ptype:
            raise AssertionError(f"expected {TYPE_NAMES[ptype]}, got {pkt!r}")
        return pkt

    def expect_closed(self, timeout: float = 5.0, allow: Sequence[bytes] = ()) -> list:
        """Asserts the peer closes the connection (EOF or ECONNRESET) within `timeout` without sending anything
        but the packets listed in `allow` (exact bytes, each at most once, in that order). Returns the packets
        received before the close."""
        deadline = time.monotonic() + timeout
        got = []
        allowed = list(allow)
        while True:
            try:
                pkt = self.read_packet(max(0.0, deadline - time.monotonic()))
            except Closed:
                self.close()
                return got
            except TimeoutError:
                raise AssertionError(f"connection not closed within {timeout}s (got {got!r})") from None
            if allowed and pkt.raw() == allowed[0]:
                allowed.pop(0)
                got.append(pkt)
                continue
            raise AssertionError(f"expected the connection to be closed, got {pkt!r} (raw {pkt.raw().hex(' ')})")

    def expect_no_packet(self, timeout: float = 0.5) -> None:
        """Asserts nothing arrives (and the connection stays open) for `timeout` seconds."""
        try:
            pkt = self.read_packet(timeout)
        except TimeoutError:
            return
        except Closed:
            raise AssertionError("connection was closed while expecting silence") from None
        raise AssertionError(f"expected no packet for {timeout}s, got {pkt!r}")

    def is_open(self, timeout: float = 5.0) -> bool:
        """PINGREQ round trip: True when PINGRESP arrives (other packets are kept for later). A closed connection
        answers at once; the 5 s are for a broker busy on a shared host."""
        try:
            self.send(PINGREQ_BYTES)
            p = self._wait_for(lambda p: p.type == PINGRESP, timeout, "PINGRESP")
        except (OSError, AssertionError):
            return False
        return p.raw() == PINGRESP_BYTES

    def close(self) -> None:
        """Closes the socket without DISCONNECT (the broker sees an abnormal close)."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Closes with a TCP RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- protocol helpers ---------------------------------------------------------------------------------------

    def connect(self, client_id: Bytesish = "", clean: bool = True, keepalive: int = 60,
                will: Optional[Will] = None, username: Optional[Bytesish] = None,
                password: Optional[Bytesish] = None, level: int = 4,
                expect: Optional[bytes] = CONNACK_OK, timeout: float = 5.0) -> Packet:
        self.send(connect(client_id, clean, keepalive, will, username, password, level))
        if expect is None:
            return self.expect_type(CONNACK, timeout)
        return self.expect(expect, timeout)

    def disconnect(self) -> None:
        try:
            self.send(DISCONNECT_BYTES)
        finally:
            pass

    def subscribe(self, topics: Sequence[Tuple[Bytesish, int]], expect: Optional[Sequence[int]] = None,
                  timeout: float = 5.0) -> list:
        """SUBSCRIBE and wait for its SUBACK (asserting the exact bytes, by default every requested QoS
        granted); packets arriving before the SUBACK (e.g. retained PUBLISHes) go to the backlog."""
        pid = self.next_pid()
        self.send(subscribe(pid, topics))
        granted = list(expect) if expect is not None else [min(q, 2) for _, q in topics]
        pkt = self._wait_for(lambda p: p.type == SUBACK, timeout, "SUBACK")
        if pkt.raw() != suback(pid, granted):
            raise AssertionError(f"expected SUBACK {suback(pid, granted).hex(' ')}, got {pkt.raw().hex(' ')}")
        return list(pkt.body[2:])

    def unsubscribe(self, topics: Iterable[Bytesish], timeout: float = 5.0) -> None:
        pid = self.next_pid()
        self.send(unsubscribe(pid, list(topics)))
        pkt = self._wait_for(lambda p: p.type == UNSUBACK, timeout, "UNSUBACK")
        if pkt.raw() != unsuback(pid):
            raise AssertionError(f"expected UNSUBACK {unsuback(pid).hex(' ')}, got {pkt.raw().hex(' ')}")

    def _wait_for(self, pred, timeout: float, what: str) -> Packet:
        """Reads until a packet matching pred; others are kept (in order) for later read_packet calls."""
        deadline = time.monotonic() + timeout
        kept = []
        pending = list(self.backlog)
        self.backlog.clear()
        try:
            while pending:
                p = pending.pop(0)
                if pred(p):
                    return p
                kept.append(p)
            while True:
                try:
                    p = self.read_packet(max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise AssertionError(f"timed out waiting for {what} (got {kept!r})") from None
                except Closed as e:
                    raise AssertionError(f"connection closed waiting for {what}: {e} (got {kept!r})") from None
                if pred(p):
                    return p
                kept.append(p)
        finally:
            self.backlog.extendleft(reversed(kept + pending))

    def publish(self, topic: Bytesish, payload: Bytesish = b"", qos: int = 0, retain: bool = False,
                pid: Optional[int] = None, timeout: float = 5.0) -> Optional[int]:
        """PUBLISH and complete the flow: QoS 1 waits for the exact PUBACK, QoS 2 for PUBREC, sends PUBREL and
        waits for PUBCOMP. Unrelated packets (deliveries to this client) go to the backlog."""
        if qos > 0 and pid is None:
            pid = self.next_pid()
        self.send(publish(topic, payload, qos, retain, pid=pid))
        if qos == 1:
            p = self._wait_for(lambda p: p.type == PUBACK, timeout, "PUBACK")
            if p.raw() != puback(pid):
                raise AssertionError(f"expected PUBACK {puback(pid).hex(' ')}, got {p.raw().hex(' ')}")
        elif qos == 2:
            p = self._wait_for(lambda p: p.type == PUBREC, timeout, "PUBREC")
            if p.raw() != pubrec(pid):
                raise AssertionError(f"expected PUBREC {pubrec(pid).hex(' ')}, got {p.raw().hex(' ')}")
            self.send(pubrel(pid))
            p = self._wait_for(lambda p: p.type == PUBCOMP, timeout, "PUBCOMP")
            if p.raw() != pubcomp(pid):
                raise AssertionError(f"expected PUBCOMP {pubcomp(pid).hex(' ')}, got {p.raw().hex(' ')}")
        return pid

    def publish_qos2_windows(self, frames: Sequence[Tuple[int, bytes]], window: int = 100,
                             timeout: float = 15.0) -> None:
        """Sends QoS 2 PUBLISHes, given as (packet id, exact bytes), pipelined `window` at a time (the broker's
        default mqtt.max_awaiting_rel: more would wait unanswered): each window's PUBRECs, then its PUBRELs and
        PUBCOMPs, before the next window."""
        for w in range(0, len(frames), window):
            part = frames[w:w + window]
            self.send(b"".join(f for _, f in part))
            for pid, _ in part:
                self.expect(pubrec(pid), timeout=timeout)
            self.send(b"".join(pubrel(pid) for pid, _ in part))
            for pid, _ in part:
                self.expect(pubcomp(pid), timeout=timeout)

    def recv_publish(self, timeout: float = 5.0, ack: bool = True) -> Publish:
        """Next packet, asserted to be a PUBLISH. With ack, QoS 1 is PUBACKed and QoS 2 completed
        (PUBREC, the exact PUBREL, PUBCOMP)."""
        try:
            p = self.read_packet(timeout)
        except TimeoutError:
            raise AssertionError(f"no PUBLISH within {timeout}s") from None
        except Closed as e:
            raise AssertionError(f"connection closed waiting for PUBLISH: {e}") from None
        msg = parse_publish(p)
        if ack:
            self.ack(msg, timeout)
        return msg

    def ack(self, msg: Publish, timeout: float = 5.0) -> None:
        if msg.qos == 1:
            self.send(puback(msg.pid))
        elif msg.qos == 2:
            self.send(pubrec(msg.pid))
            p = self._wait_for(lambda p: p.type == PUBREL, timeout, "PUBREL")
            if p.raw() != pubrel(msg.pid):
                raise AssertionError(f"expected PUBREL {pubrel(msg.pid).hex(' ')}, got {p.raw().hex(' ')}")
            self.send(pubcomp(msg.pid))

    def recv_publishes(self, n: int, timeout: float = 5.0, ack: bool = True) -> list:
        return [self.recv_publish(timeout, ack) for _ in range(n)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
