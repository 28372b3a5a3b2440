"""Will messages: published on abnormal close (socket closed, reset, keepalive timeout, protocol error), not after
DISCONNECT; will QoS and retain honoured. The will's owner is on shard 0, the watcher on the last shard."""

import threading
import time

import mqtt_raw as m
from broker import shard_variants
from mqtt_raw import RawClient


class WillCases:
    def watcher(self, flt="will/#", qos=2, name="watch"):
        w = self.client(self.sub_id(name))
        w.subscribe([(flt, qos)])
        return w

    def owner(self, will, keepalive=60, clean=True, name="owner", level=4):
        return self.client(self.pub_id(name), clean=clean, keepalive=keepalive, will=will, level=level)

    def test_will_on_socket_close(self):
        w = self.watcher()
        o = self.owner(m.Will("will/a", b"gone", qos=0))
        o.close()
        p = w.read_packet()
        self.assertEqual(p.raw(), bytes.fromhex("30 0c 00 06") + b"will/a" + b"gone")

    def test_will_on_connection_reset(self):
        w = self.watcher()
        o = self.owner(m.Will("will/rst", b"reset", qos=1))
        o.abort()
        msg = w.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("will/rst", b"reset", 1, False))

    def test_connect_larger_than_a_first_receive_buffer(self):
        # The first recv of a connection takes a 1 KiB buffer: a 20 KB CONNECT (with a publish behind it in the same
        # write) is reassembled across several of them.
        w = self.watcher()
        payload = bytes(i % 251 for i in range(20000))
        o = self.raw()
        o.send(m.connect(self.pub_id("big"), will=m.Will("will/big", payload, qos=1)) + m.publish("will/x", b"after"))
        o.expect(m.connack())
        msg = w.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("will/x", b"after"))
        o.abort()
        msg = w.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("will/big", payload))

    def test_no_will_after_disconnect(self):
        w = self.watcher()
        o = self.owner(m.Will("will/no", b"should not", qos=1))
        o.send(m.disconnect())
        o.expect_closed(3)
        w.expect_no_packet(1.0)

    def test_will_on_keepalive_timeout(self):
        w = self.watcher()
        start = time.monotonic()  # before the CONNECT, as in the keepalive test
        o = self.owner(m.Will("will/ka", b"timeout", qos=1), keepalive=1)
        msg = w.recv_publish(timeout=5)
        elapsed = time.monotonic() - start
        self.assertEqual((msg.topic, msg.payload), ("will/ka", b"timeout"))
        self.assertGreaterEqual(elapsed, 1.2)
        self.assertLessEqual(elapsed, 3.5)
        o.expect_closed(2)

    def test_will_on_protocol_error(self):
        w = self.watcher()
        o = self.owner(m.Will("will/err", b"bad client", qos=1))
        o.send(m.publish("will/+", b"wildcard topic is a protocol error"))
        o.expect_closed(3)
        msg = w.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("will/err", b"bad client"))
        w.expect_no_packet(0.3)

    def test_will_on_second_connect(self):
        w = self.watcher()
        o = self.owner(m.Will("will/2nd", b"twice", qos=0))
        o.send(m.connect(self.pub_id("owner")))
        o.expect_closed(3)
        self.assertEqual(w.recv_publish().payload, b"twice")

    def test_will_qos_honoured(self):
        for will_qos in (0, 1, 2):
            for sub_qos in (0, 1, 2):
                with self.subTest(will_qos=will_qos, sub_qos=sub_qos):
                    topic = f"will/q{will_qos}{sub_qos}"
                    w = self.watcher(topic, sub_qos, name=f"w{will_qos}{sub_qos}")
                    o = self.owner(m.Will(topic, b"q", qos=will_qos), name=f"o{will_qos}{sub_qos}")
                    o.close()
                    msg = w.recv_publish()
                    self.assertEqual((msg.topic, msg.qos, msg.retain), (topic, min(will_qos, sub_qos), False))
                    w.disconnect()

    def test_will_retain(self):
        w = self.watcher()
        o = self.owner(m.Will("will/ret", b"last words", qos=1, retain=True))
        o.close()
        msg = w.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.retain), ("will/ret", b"last words", False))
        late = self.client(self.sub_id("late"))
        late.subscribe([("will/ret", 1)])
        msg = late.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("will/ret", b"last words", 1, True))

    def test_will_without_retain_not_stored(self):
        o = self.owner(m.Will("will/nr", b"x", qos=1, retain=False))
        o.close()
        time.sleep(0.3)
        late = self.client(self.sub_id("late"))
        late.subscribe([("will/nr", 1)])
        late.expect_no_packet(0.5)

    def test_will_empty_payload_and_mqtt31(self):
        w = self.watcher()
        o = self.owner(m.Will("will/31", b"", qos=1), level=3)
        o.close()
        msg = w.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("will/31", b""))

    def test_will_with_persistent_session(self):
        w = self.watcher()
        o = self.owner(m.Will("will/ps", b"persistent", qos=1), clean=False)
        o.close()
        self.assertEqual(w.recv_publish().payload, b"persistent")
        # The next connection of that client (no will) is quiet.
        o2 = self.client(self.pub_id("owner"), clean=False, expect=m.CONNACK_OK_SESSION)
        o2.close()
        w.expect_no_packet(0.5)

    def test_will_published_once(self):
        w = self.watcher()
        o = self.owner(m.Will("will/once", b"1", qos=2))
        o.send(m.publish("will/#", b"bad"))  # protocol error, then the socket closes too
        o.close()
        self.assertEqual(w.recv_publish().payload, b"1")
        w.expect_no_packet(0.6)

    def test_no_will_after_disconnect_under_traffic(self):
        # A client receiving a stream sends DISCONNECT and closes with bytes unread: its socket resets, and a send to
        # it can fail before the DISCONNECT is read. The DISCONNECT still withdraws the will [MQTT-3.14.4-3]; without
        # it (the second group) the will is published, once.
        w = self.watcher("will/#", qos=0)
        stop = threading.Event()
        deadline = time.monotonic() + 60

        def flood():
            p = RawClient(self.port)
            try:
                p.connect(self.pub_id("flood"))
                burst = m.publish("flood/x", b"x" * 200) * 50
                while not stop.is_set() and time.monotonic() < deadline:
                    p.send(burst)
            finally:
                p.close()

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)
        self.addCleanup(stop.set)
        for i in range(40):
            v = self.client(self.sub_id(f"vd{i}"), will=m.Will("will/disconnected", b"d%d" % i))
            v.subscribe([("flood/x", 0)])
            time.sleep(0.02)
            v.send(m.disconnect())
            v.close()
        for i in range(10):
            v = self.client(self.sub_id(f"vc{i}"), will=m.Will("will/closed", b"c%d" % i))
            v.subscribe([("flood/x", 0)])
            time.sleep(0.02)
            v.close()
        stop.set()
        got = []
        end = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < end:
            got.append(w.recv_publish(timeout=max(0.1, end - time.monotonic())))
        w.expect_no_packet(0.5)
        self.assertEqual(sorted((x.topic, x.payload) for x in got),
                         sorted(("will/closed", b"c%d" % i) for i in range(10)))

    def test_will_not_delivered_to_unsubscribed(self):
        w = self.watcher("other/#")
        o = self.owner(m.Will("will/x", b"x"))
        o.close()
        w.expect_no_packet(0.5)


shard_variants(WillCases, globals())
