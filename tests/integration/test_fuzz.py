"""Mutated packet streams: MQTT sequences (a CONNECT, 3.1.1 or 5.0 with properties, then 3.1.1 PUBLISH, SUBSCRIBE,
UNSUBSCRIBE, acks, PINGREQ, DISCONNECT and packets of any type) with bit flips, truncations, changed length bytes and
inserted or removed bytes, sent in random splits on up to 400 short connections, some closed with a reset. The broker
refuses a 5.0 CONNECT for now, so 5.0 is fuzzed here only as far as CONNECT (the decoders' unit test and
tests/fuzz/fuzz_mqtt_decode.cpp cover the rest). Whatever comes, the broker must answer each with a
CONNACK refusal or a close and go on serving everybody else: a control client's pings are answered all along, a
witness gets exactly the message meant for it, and the broker stops cleanly (exit code 0, which a sanitizer build
turns non-zero on any finding). Seeded, so a failure repeats; bounded in count and time."""

import random
import socket
import struct
import time
import unittest

import mqtt_raw as m
from broker import BrokerTest, shard_variants

SESSIONS = 400
TIME_BOUND_S = 25.0


def _properties(rnd: random.Random) -> bytes:
    # A few MQTT 5 properties, known ids and unknown ones, with value bytes of any length.
    out = b""
    for _ in range(rnd.randrange(4)):
        pid = rnd.choice([0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x15, 0x16, 0x17, 0x19, 0x1F, 0x21, 0x22, 0x23,
                          0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x7F])
        out += bytes([pid]) + rnd.randbytes(rnd.choice([0, 1, 2, 4, 6]))
    return m.encode_remaining_length(len(out)) + out


def _connect5(rnd: random.Random, cid: str) -> bytes:
    flags = rnd.choice([0x02, 0x00, 0x06, 0x0E, 0x36, 0xC2, 0x01])
    body = m.encode_string("MQTT") + bytes([5, flags]) + m.u16(rnd.choice([0, 5, 60])) + _properties(rnd)
    body += m.encode_string(cid)
    if flags & 0x04:
        body += _properties(rnd) + m.encode_string("w/" + cid) + m.encode_string("will")
    if flags & 0x80:
        body += m.encode_string("user")
    if flags & 0x40:
        body += m.encode_string("pw")
    return m.packet(1, 0, body)


def _packets(rnd: random.Random, cid: str) -> list:
    topic = rnd.choice(["a/b", "fz/" + cid, "$SYS/x", "", "a//b", "x" * 300, "\u00e9/t", "fz/\u0000"])
    filt = rnd.choice(["a/#", "+/+", "#", "fz/+", "a/b", "$share/g/a/b", "/", "a/#/b", "+x", "\u0000"])
    pid = rnd.randrange(65536)
    qos = rnd.randrange(3)
    return [
        m.publish(topic, rnd.randbytes(rnd.randrange(64)), qos=qos, retain=rnd.random() < 0.2,
                  pid=(pid or 1) if qos else None),
        m.subscribe(pid or 1, [(filt, rnd.randrange(4))]),
        m.unsubscribe(pid or 1, [filt]),
        m.puback(pid), m.pubrec(pid), m.pubrel(pid), m.pubcomp(pid), m.pingreq(), m.disconnect(),
        m.packet(rnd.randrange(16), rnd.randrange(16), rnd.randbytes(rnd.randrange(12))),
    ]


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randrange(1, 4)):
        if not b:
            b.append(rnd.randrange(256))
        i = rnd.randrange(len(b))
        op = rnd.randrange(7)
        if op == 0:
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[i] = rnd.choice([0, 0xFF, 0x7F, 0x80, rnd.randrange(256)])
        elif op == 2:
            del b[i:i + rnd.randrange(1, 4)]
        elif op == 3:
            b[i:i] = rnd.randbytes(rnd.randrange(1, 5))
        elif op == 4:
            del b[i:]
        elif op == 5 and len(b) > 2:
            b[1] = rnd.randrange(256)  # the remaining length's first byte
        else:
            b += rnd.randbytes(rnd.randrange(1, 8))
    return bytes(b)


def _one_session(port: int, rnd: random.Random, n: int) -> None:
    cid = f"fz{n % 50}"  # ids repeat, so sessions are taken over and resumed too
    con = _connect5(rnd, cid) if rnd.random() < 0.3 else m.connect(cid, clean=rnd.random() < 0.5,
                                                                       keepalive=rnd.choice([0, 2, 60]))
    stream = [con if rnd.random() < 0.8 else _mutate(rnd, con)]
    for _ in range(rnd.randrange(1, 12)):
        p = rnd.choice(_packets(rnd, cid))
        stream.append(_mutate(rnd, p) if rnd.random() < 0.5 else p)
    data = b"".join(stream)
    splits = [rnd.randrange(1, 64) for _ in range(len(data))]
    reset = rnd.random() < 0.2
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each split its own segment, no Nagle wait
        if reset:  # close with RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            i = k = 0
            while i < len(data):
                s.sendall(data[i:i + splits[k]])
                i += splits[k]
                k += 1
            s.settimeout(0.05)
            while s.recv(65536):
                pass
        except OSError:  # closed by the broker, or the read's short timeout: both are answers
            pass


class MutatedStreamCases:
    SETTINGS = {"mqtt.connect_timeout": 500, "mqtt.max_packet_size": 65536}

    def test_mutated_packet_streams_never_stop_the_broker(self):
        control = self.client(self.pub_id("fz-control"))
        witness = self.client(self.sub_id("fz-witness"))
        witness.subscribe([("witness/only", 1)])
        rnd = random.Random(20261202 + self.SHARDS)
        deadline = time.monotonic() + TIME_BOUND_S
        done = 0
        while done < SESSIONS and time.monotonic() < deadline:
            _one_session(self.port, rnd, done)
            done += 1
            if done % 50 == 0:
                control.send(m.pingreq())
                control.expect(m.packet(m.PINGRESP, 0), timeout=5)
        self.assertGreaterEqual(done, 100, "too few sessions within the time bound to have tested anything")
        pub = self.client(self.pub_id("fz-pub"))
        pub.publish("witness/only", b"still here", qos=1)
        msg = witness.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("witness/only", b"still here"))
        witness.expect_no_packet(0.2)
        self.assert_broker_healthy()


shard_variants(MutatedStreamCases, globals())

if __name__ == "__main__":
    unittest.main()
