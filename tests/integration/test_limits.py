"""Configurable limits (--set mqtt.*): max_inflight, max_queued_messages, max_outgoing_bytes, max_packet_size,
max_topic_levels, max_connections, max_client_id_len, keepalive_multiplier; and the shards' step sizes (node.*_turn,
node.retained_read_slice). Each test starts its own broker."""

import os
import random
import re
import socket
import threading
import time

import mqtt_raw as m
from admin_client import request
from broker import (BrokerTest, Collector, assert_bursts_in_order, client_id_on_shard, cpu_seconds, kernel_at_least,
                    no_quarantine_env, not_taken, packets_until_closed, read_until_closed, read_until_quiet, rss_kib, send_rounds,
                    shard_variants)


def publish_acked(pub, topic: str, total: int, filler: bytes, step: int = 50) -> None:
    """total QoS 1 PUBLISHes numbered from 0 (6 digits, then filler), step of them to a write, each write's PUBACKs
    awaited before the next."""
    for start in range(0, total, step):
        pub.send(b"".join(m.publish(topic, b"%06d" % i + filler, qos=1, pid=i + 1) for i in range(start, start + step)))
        for i in range(start, start + step):
            pub.expect(m.puback(i + 1), timeout=10)


class LimitCases:
    AUTO_START = False

    def test_route_cache_holds_bounded_bytes(self):
        # Each shard remembers the routes of 4096 topics. Long distinct topics used to stay there whole: 4000 topics
        # of 30 KB kept some 120 MB per shard that routed them. The cache now holds at most 16 MiB: reaching that
        # empties it, and every message is routed all the same (a wildcard subscriber gets each, in order).
        b = self.use_broker({}, env=no_quarantine_env())
        sub = self.client(self.sub_id())
        sub.subscribe([("rc/#", 0)])
        pub = self.client(self.pub_id())
        pub.publish("rc/warm", b"w")
        self.assertEqual(sub.recv_publish().topic, "rc/warm")
        before = rss_kib(b.proc.pid)
        filler = "x" * 30000
        for batch in range(40):
            topics = [f"rc/{batch * 100 + i:05d}/{filler}" for i in range(100)]
            for t in topics:
                pub.publish(t, b"p")
            got = [sub.recv_publish(timeout=10).topic for _ in topics]
            self.assertEqual(got, topics, f"batch {batch}")
        grown = rss_kib(b.proc.pid) - before
        self.assertLess(grown, 64 * 1024, f"RSS grew by {grown} KiB over 4000 distinct 30 KB topics")
        self.assertIn(b"the route cache reached 16 MiB of topics and matches and was emptied (1 times so far)",
                      b.log())

    def test_max_inflight_qos1(self):
        self.use_broker({"mqtt.max_inflight": 3})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/if", 1)])
        pub = self.client(self.pub_id())
        for i in range(8):
            pub.publish("lim/if", str(i), qos=1)
        first = sub.recv_publishes(3, ack=False)
        self.assertEqual([x.payload for x in first], [b"0", b"1", b"2"])
        sub.expect_no_packet(0.5)
        sub.send(m.puback(first[0].pid))
        nxt = sub.recv_publish(ack=False)
        self.assertEqual(nxt.payload, b"3")
        sub.expect_no_packet(0.4)
        for x in first[1:] + [nxt]:
            sub.send(m.puback(x.pid))
        rest = sub.recv_publishes(4)
        self.assertEqual([x.payload for x in rest], [b"4", b"5", b"6", b"7"])
        sub.expect_no_packet(0.3)

    def test_max_inflight_qos2(self):
        self.use_broker({"mqtt.max_inflight": 2})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/if2", 2)])
        pub = self.client(self.pub_id())
        for i in range(5):
            pub.publish("lim/if2", str(i), qos=2)
        first = sub.recv_publishes(2, ack=False)
        self.assertEqual([x.payload for x in first], [b"0", b"1"])
        sub.expect_no_packet(0.5)
        sub.ack(first[0])  # PUBREC, PUBREL, PUBCOMP: the slot is free
        self.assertEqual(sub.recv_publish(ack=False).payload, b"2")
        sub.expect_no_packet(0.3)

    def test_max_awaiting_rel(self):
        # Incoming QoS 2 messages awaiting their PUBREL are limited per session (EMQ X 2.x's max_awaiting_rel): one
        # more is dropped without a PUBREC, so the client still holds it; a resent one of those waiting is still
        # answered, and a released id makes room.
        self.use_broker({"mqtt.max_awaiting_rel": 3})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/rel", 2)])
        pub_id = self.pub_id()
        pub = self.client(pub_id)
        for pid in (1, 2, 3):
            pub.send(m.publish("lim/rel", f"m{pid}", qos=2, pid=pid))
            pub.expect(m.pubrec(pid))
        pub.send(m.publish("lim/rel", "m4", qos=2, pid=4))
        pub.expect_no_packet(0.5)
        pub.send(m.publish("lim/rel", "m2", qos=2, pid=2, dup=True))
        pub.expect(m.pubrec(2))
        pub.send(m.pubrel(1))
        pub.expect(m.pubcomp(1))
        pub.send(m.publish("lim/rel", "m4", qos=2, pid=4, dup=True))
        pub.expect(m.pubrec(4))
        got = [x.payload for x in sub.recv_publishes(4)]
        self.assertEqual(got, [b"m1", b"m2", b"m3", b"m4"], "each delivered once, the dropped one when resent")
        sub.expect_no_packet(0.3)
        self.assertRegex(self.broker.log().decode("utf-8", "replace"),
                         rf"client {pub_id}: 3 QoS 2 messages await PUBREL \(mqtt\.max_awaiting_rel\), message "
                         r"on lim/rel dropped without PUBREC \(1 on this shard so far\)")

    def test_qos0_not_limited_by_inflight(self):
        self.use_broker({"mqtt.max_inflight": 1})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/q0", 0)])
        pub = self.client(self.pub_id())
        for i in range(20):
            pub.publish("lim/q0", str(i), qos=0)
        self.assertEqual([x.payload for x in sub.recv_publishes(20)], [str(i).encode() for i in range(20)])

    def test_max_queued_messages_offline(self):
        # The offline queue's own limit: its publisher not held (PublisherHoldCases holds it until the hold's limit).
        self.use_broker({"mqtt.max_queued_messages": 5, "mqtt.publisher_hold_ms": 0})
        sub = self.client(self.sub_id(), clean=False)
        sub.subscribe([("lim/q", 1)])
        sub.disconnect()
        sub.expect_closed(3)
        pub = self.client(self.pub_id())
        for i in range(12):
            pub.publish("lim/q", str(i), qos=1)  # still acknowledged to the publisher
        sub = self.client(self.sub_id(), clean=False, expect=m.CONNACK_OK_SESSION)
        msgs = sub.recv_publishes(5)
        self.assertEqual([x.payload for x in msgs], [b"0", b"1", b"2", b"3", b"4"])
        # 7 dropped: warned at the 1st, 2nd and 4th drop, naming the key; the other four only counted.
        warns = [l for l in self.broker.log().decode("utf-8", "replace").splitlines()
                 if "[warn]" in l and "queue full" in l]
        self.assertEqual(len(warns), 3, warns)
        self.assertIn("mqtt.max_queued_messages = 5", warns[0])
        self.assertTrue(warns[2].endswith("dropped (4 so far)"), warns[2])
        sub.expect_no_packet(0.6)
        # The session works normally afterwards.
        pub.publish("lim/q", b"after", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"after")

    def test_max_queued_bytes_offline(self):
        # Topic "lim/qb" and a 94-byte payload: 100 bytes a message; 450 bytes hold four, whatever their count.
        self.use_broker({"mqtt.max_queued_bytes": 450, "mqtt.max_queued_messages": 100, "mqtt.publisher_hold_ms": 0})
        sub = self.client(self.sub_id(), clean=False)
        sub.subscribe([("lim/qb", 1)])
        sub.disconnect()
        sub.expect_closed(3)
        pub = self.client(self.pub_id())
        payloads = [f"{i:02d}".encode() * 47 for i in range(9)]
        for p in payloads:
            pub.publish("lim/qb", p, qos=1)  # still acknowledged to the publisher
        pub.publish("lim/qb", b"x" * 44, qos=1)  # 50 bytes: fits beside the four (400 + 50)
        sub = self.client(self.sub_id(), clean=False, expect=m.CONNACK_OK_SESSION)
        msgs = sub.recv_publishes(5)
        self.assertEqual([x.payload for x in msgs], payloads[:4] + [b"x" * 44])
        warns = [l for l in self.broker.log().decode("utf-8", "replace").splitlines()
                 if "[warn]" in l and "dropped" in l]
        self.assertTrue(warns, "no warning for the dropped messages")
        self.assertIn("its queue would pass mqtt.max_queued_bytes = 450", warns[0])
        sub.expect_no_packet(0.6)
        # The queue gave its bytes back: a session that took its messages queues again.
        sub.disconnect()
        sub.expect_closed(3)
        for p in payloads[:4]:
            pub.publish("lim/qb", p, qos=1)
        sub = self.client(self.sub_id(), clean=False, expect=m.CONNACK_OK_SESSION)
        self.assertEqual([x.payload for x in sub.recv_publishes(4)], payloads[:4])

    def test_max_queued_messages_online_slow_consumer(self):
        # The drop at the limit itself: without holding the publisher (PublisherHoldTest) for the stuck reader.
        self.use_broker({"mqtt.max_queued_messages": 4, "mqtt.max_inflight": 1, "mqtt.publisher_hold_ms": 0})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/slow", 1)])
        pub = self.client(self.pub_id())
        for i in range(15):
            pub.publish("lim/slow", str(i), qos=1)
        got = read_until_quiet(sub, quiet=0.8)
        # One in flight plus at most 4 queued (or 4 in all); the rest dropped, the order kept.
        self.assertIn(len(got), (4, 5), got)
        self.assertEqual(got, [str(i).encode() for i in range(len(got))])

    def test_max_outgoing_bytes_drops_qos0_for_a_stalled_reader(self):
        # A subscriber that stops reading: once the kernel's buffers are full, QoS 0 beyond max_outgoing_bytes is
        # dropped (whole runs of same-topic PUBLISHes included), what does arrive is in order, and the broker and
        # the subscriber keep working.
        self.use_broker({"mqtt.max_outgoing_bytes": 1024})
        sub = self.client(self.sub_id())
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sub.subscribe([("lim/flood", 0)])
        pub = self.client(self.pub_id())
        filler = b"x" * 4000
        total = 3000  # 12 MB: more than loopback socket buffers hold
        for start in range(0, total, 50):
            pub.send(b"".join(m.publish("lim/flood", b"%06d" % i + filler) for i in range(start, start + 50)))
        pub.publish("lim/flood", b"sync", qos=1, pid=1)  # every flood PUBLISH has been handled
        seqs = [int(p[:6]) for p in read_until_quiet(sub, stop=b"sync")]
        self.assertGreater(len(seqs), 0)
        self.assertLess(len(seqs), total, "nothing was dropped: the limit did not act")
        self.assertEqual(seqs, sorted(set(seqs)), "delivered out of order or twice")
        # The drops are in the log, named by the limit, at 1, 2, 4, 8... drops: a handful of lines, not thousands.
        dropped = total - len(seqs)
        warns = [l for l in self.broker.log().decode("utf-8", "replace").splitlines()
                 if "[warn]" in l and "over mqtt.max_outgoing_bytes = 1024" in l]
        self.assertGreaterEqual(len(warns), 1)
        self.assertLessEqual(len(warns), dropped.bit_length(), warns)
        pub.publish("lim/flood", b"after", qos=0)
        self.assertEqual(sub.recv_publish().payload, b"after")
        self.assert_broker_healthy()

    def test_client_that_sends_but_never_reads_is_closed(self):
        # PINGREQ after PINGREQ from a client that reads nothing: each answer must be queued, so without a bound the
        # broker's memory would follow the client's sending. Once its queue is over max_outgoing_bytes and it has
        # sent that much more, it is closed (its will published), and the log says why.
        self.use_broker({"mqtt.max_outgoing_bytes": 65536})
        watcher = self.client(self.sub_id("watch"))
        watcher.subscribe([("lim/will", 0)])
        flooder = self.client(self.pub_id("flood"), will=m.Will("lim/will", b"gone"))
        flooder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = m.PINGREQ_BYTES * 32768  # 64 KiB
        sent, closed = 0, False
        deadline = time.monotonic() + 20
        flooder.sock.settimeout(5)
        try:
            while sent < (256 << 20) and time.monotonic() < deadline:  # far beyond loopback buffers and the limit
                flooder.sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        except socket.timeout:
            pass  # the broker stopped reading: it must be closing
        if not closed:
            try:  # whatever PINGRESPs were queued, then EOF or a reset; a broker that still serves it never ends
                while time.monotonic() < deadline and flooder.sock.recv(1 << 20):
                    pass
                closed = time.monotonic() < deadline
            except ConnectionResetError:
                closed = True
            except socket.timeout:
                pass
        self.assertTrue(closed, f"a client that sent {sent} bytes and read nothing is still connected")
        self.assertLess(sent, 256 << 20)
        self.assertEqual(watcher.recv_publish(timeout=5).payload, b"gone", "an abnormal close publishes the will")
        log = self.broker.log().decode("utf-8", "replace")
        self.assertRegex(log, r"\[warn\].*closing .*flood.*: not reading; \d+ bytes wait to be sent, over "
                              r"mqtt.max_outgoing_bytes = 65536")
        self.assert_broker_healthy()

    def test_a_slow_reader_that_publishes_is_not_taken_for_one_that_never_reads(self):
        # A subscriber reading slower than its topic is flooded keeps its queue over mqtt.max_outgoing_bytes (QoS 0
        # beyond it is dropped) while it publishes too. It reads, so it must not be closed as "not reading": what it
        # sends counts against the limit only while nothing it was sent is taken.
        self.use_broker({"mqtt.max_outgoing_bytes": 65536})
        slow = self.client(self.sub_id("slow"))
        slow.subscribe([("flood/t", 0)])
        flood = self.client(self.pub_id("flood"))
        done = threading.Event()

        def flooder() -> None:  # as fast as the broker takes it: the kernel's send buffer to `slow` fills at once
            frame = m.publish("flood/t", b"f" * 100) * 200
            while not done.is_set():
                flood.sock.sendall(frame)

        t = threading.Thread(target=flooder)
        t.start()
        slow.sock.settimeout(0.05)
        own = m.publish("slow/own", b"s" * 1000)
        published = taken = 0
        cap = time.monotonic() + 30
        try:
            while published < 150 and time.monotonic() < cap:
                try:
                    slow.sock.sendall(own)  # 1 kB of its own each round: 100s of kB in all, far over the limit
                except OSError as e:
                    self.fail(f"the slow reader was closed after {published} publishes ({e}): " + "; ".join(
                        l for l in self.broker.log().decode().splitlines() if "closing" in l))
                published += 1
                try:
                    data = slow.sock.recv(65536)  # and it reads 64 kB each round: slower than the flood
                except socket.timeout:
                    continue
                except OSError as e:
                    self.fail(f"the slow reader was closed after {published} publishes ({e}): " + "; ".join(
                        l for l in self.broker.log().decode().splitlines() if "closing" in l))
                self.assertTrue(data, f"the slow reader was closed after {published} publishes")
                taken += len(data)
                time.sleep(0.01)
        finally:
            done.set()
            t.join(10)
        self.assertEqual(published, 150)
        self.assertGreater(taken, 1 << 20, "the slow reader read")
        self.assertIn(b"client not reading, over mqtt.max_outgoing_bytes = 65536, message on flood/t dropped",
                      self.broker.log(), "its queue was over the limit")
        self.assertNotIn(b": not reading;", self.broker.log())

    def test_stalled_subscriber_among_a_large_fan_out(self):
        # Two subscribers share each 4 KiB frame (sent from one copy); one reads, one stops reading. The reader gets
        # every message, whole and in order; the stalled one's sends stay blocked on frames the reader has long
        # finished with, and what it reads later is whole frames, in order, with what went past the kernel's
        # buffers and max_outgoing_bytes dropped. (10 MB: more than loopback socket buffers hold.)
        self.use_broker({"mqtt.max_outgoing_bytes": 256 * 1024})
        stalled = self.client(self.sub_id("stalled"))
        stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        stalled.subscribe([("lim/big", 0)])
        reader = self.client(self.sub_id("reader"))
        reader.subscribe([("lim/big", 0)])
        pub = self.client(self.pub_id())
        total, step, filler = 2500, 20, b"y" * 4000
        payload = [b"%06d" % i + filler for i in range(total)]
        col = Collector(reader, total, timeout=10)
        for start in range(0, total, step):
            pub.send(b"".join(m.publish("lim/big", payload[i]) for i in range(start, start + step)))
            deadline = time.monotonic() + 10  # the reader keeps up, so it never reaches the limit itself
            while len(col.messages) < start + step and time.monotonic() < deadline:
                time.sleep(0.001)
        self.assertEqual([x.payload for x in col.join(30)], payload)
        got = read_until_quiet(stalled)
        seqs = [int(p[:6]) for p in got]
        for p, k in zip(got, seqs):
            self.assertEqual(p, payload[k])
        self.assertGreater(len(seqs), 0)
        self.assertLess(len(seqs), total, "nothing was dropped: the limit did not act")
        self.assertEqual(seqs, sorted(set(seqs)), "delivered out of order or twice")
        pub.publish("lim/big", b"after", qos=0)
        self.assertEqual(stalled.recv_publish().payload, b"after")
        self.assertEqual(reader.recv_publish().payload, b"after")
        self.assert_broker_healthy()

    def test_max_packet_size(self):
        self.use_broker({"mqtt.max_packet_size": 1024})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/ps", 1)])
        pub = self.client(self.pub_id())
        pub.publish("lim/ps", b"s" * 900, qos=1)
        self.assertEqual(len(sub.recv_publish().payload), 900)
        pub.send(m.publish("lim/ps", b"L" * 1500, qos=1, pid=2))
        pub.expect_closed(3)
        sub.expect_no_packet(0.3)
        self.assert_broker_healthy()

    def test_max_packet_size_checked_from_fixed_header(self):
        self.use_broker({"mqtt.max_packet_size": 1024})
        sub = self.client(self.sub_id())
        sub.subscribe([("lim/#", 0)])
        c = self.client(self.pub_id())
        # Announce 100 MB and send only a few body bytes: closed without waiting for the rest.
        c.send(b"\x30" + m.encode_remaining_length(100 * 1024 * 1024) + b"\x00\x05lim/x")
        start = time.monotonic()
        c.expect_closed(3)
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertTrue(sub.is_open())
        self.assert_broker_healthy()

    def test_max_packet_size_applies_to_connect(self):
        self.use_broker({"mqtt.max_packet_size": 256})
        c = self.raw()
        c.send(m.connect("big", will=m.Will("w", b"x" * 1000)))
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_max_topic_levels(self):
        self.use_broker({"mqtt.max_topic_levels": 4})
        sub = self.client(self.sub_id())
        sub.subscribe([("a/b/c/d", 1), ("a/b/c/d/e", 1), ("a/+/+/#", 1)], expect=[1, 0x80, 1])
        pub = self.client(self.pub_id(), will=m.Will("a/b/c/will", b"gone"))
        pub.publish("a/b/c/d", b"four", qos=1)
        msg = sub.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("a/b/c/d", b"four"))
        sub.expect_no_packet(0.2)
        # A publish to a topic deeper than the limit closes the connection (a 3.1.1 PUBACK cannot refuse it), is
        # never delivered, and the client's will is published; the log names the limit, not a protocol error (MQTT
        # sets none).
        pub.send(m.publish("a/b/c/d/e", b"five", qos=1, pid=7))
        pub.expect_closed(3)
        msg = sub.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("a/b/c/will", b"gone"))
        sub.expect_no_packet(0.3)
        # A will topic deeper than the limit refuses the CONNECT: closed without a CONNACK.
        deep = self.raw()
        deep.send(m.connect(self.cid("lv-deep", 0), will=m.Will("a/b/c/d/e", b"w")))
        deep.expect_closed(3)
        log = self.broker.log().decode("utf-8", "replace")
        self.assertIn("PUBLISH to a topic of more than mqtt.max_topic_levels = 4 levels", log)
        self.assertIn("will topic of more than mqtt.max_topic_levels = 4 levels", log)
        self.assertNotIn("protocol error", log)
        self.assert_broker_healthy()

    def test_max_sessions(self):
        # 4 sessions per node: a connected watcher (clean) and three offline persistent sessions fill it.
        self.use_broker({"mqtt.max_sessions": 4})
        watcher = self.client(self.cid("ms-watch", 0))
        watcher.subscribe([("lim/will", 0)])
        for i in range(3):
            c = self.client(self.cid(f"ms{i}", i), clean=False)
            c.disconnect()
            c.expect_closed(3)
        # A fifth, persistent or clean, is refused (server unavailable), and its will is not published.
        for clean in (False, True):
            self.client(self.cid("ms-new", 1), clean=clean, will=m.Will("lim/will", b"refused"),
                        expect=m.connack(False, m.RC_SERVER_UNAVAILABLE)).expect_closed(3)
        watcher.expect_no_packet(0.5)
        self.assertIn("max_sessions reached", self.broker.log().decode("utf-8", "replace"))
        # A client with a session of its own still comes back to it.
        back = self.client(self.cid("ms0", 0), clean=False, expect=m.CONNACK_OK_SESSION)
        back.disconnect()
        back.expect_closed(3)
        # A clean reconnect replaces its session (4 still), and its end frees the place.
        clean = self.client(self.cid("ms1", 1), clean=True)
        clean.disconnect()
        clean.expect_closed(3)
        # The session is dropped as the broker handles the DISCONNECT.
        self.assertTrue(self.connect_once_room(self.cid("ms-new", 1), clean=False).is_open())

    def test_max_subscriptions(self):
        # 3 filters per session: a SUBSCRIBE entry for a 4th gets 0x80 while the rest of the packet is granted; a
        # filter the session has can always be subscribed again (new QoS); an UNSUBSCRIBE makes room; a persistent
        # session keeps its count across a reconnect.
        self.use_broker({"mqtt.max_subscriptions": 3})
        cid = self.sub_id("msub")
        c = self.client(cid, clean=False)
        c.subscribe([("ms/a", 0), ("ms/b", 1)])
        c.subscribe([("ms/c", 1), ("ms/d", 1), ("ms/a", 2), ("ms/e", 0)], expect=[1, 0x80, 2, 0x80])
        pub = self.client(self.pub_id())
        for t in ("ms/d", "ms/e", "ms/a", "ms/c"):
            pub.publish(t, t, qos=2)
        got = [(x.topic, x.qos) for x in c.recv_publishes(2)]
        self.assertEqual(got, [("ms/a", 2), ("ms/c", 1)], "nothing for the refused filters; ms/a at its new QoS")
        c.expect_no_packet(0.2)
        c.unsubscribe(["ms/b"])
        c.subscribe([("ms/d", 0)])
        c.disconnect()
        c.expect_closed(3)
        c = self.client(cid, clean=False, expect=m.CONNACK_OK_SESSION)
        c.subscribe([("ms/f", 0), ("ms/d", 1)], expect=[0x80, 1])
        log = self.broker.log()
        self.assertIn(f"client {cid}: refusing subscription to 'ms/d': it has mqtt.max_subscriptions = 3 (1 refused "
                      f"on this shard so far)".encode(), log)
        self.assertIn(b"refusing subscription to 'ms/e'", log)
        # ms/d, ms/e, then ms/f: the 3rd refusal is not logged
        self.assertEqual(self.broker.doubling_counts(b"it has mqtt.max_subscriptions = 3"), [1, 2])

    def connect_once_room(self, client_id, timeout=3.0, **kw):
        """Connects client_id, trying again while the broker refuses it, until `timeout`: a place freed by a close is
        counted as the broker handles the close."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.raw()
            try:
                c.connect(client_id, **kw)
                return c
            except (AssertionError, OSError):
                c.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def test_max_connections(self):
        self.use_broker({"mqtt.max_connections": 3})
        conns = [self.client(self.cid(f"mc{i}", i)) for i in range(3)]
        extra = self.raw()
        try:
            extra.send(m.connect("mc-extra"))
        except OSError:
            pass
        extra.expect_closed(3, allow=[m.connack(False, m.RC_SERVER_UNAVAILABLE)])
        for c in conns:
            self.assertTrue(c.is_open())
        conns[0].disconnect()
        conns[0].expect_closed(3)
        # A slot is free again (the broker may need a moment to count the close).
        self.assertTrue(self.connect_once_room("mc-again").is_open())

    def test_connection_past_max_connections_is_refused_at_its_connect_header(self):
        # Past the limit the CONNECT is refused whatever it says: at its first bytes, not once a CONNECT of up to
        # max_packet_size has been gathered (hundreds of such sockets held hundreds of MB).
        self.use_broker({"mqtt.max_connections": 1})
        self.client(self.cid("mh-holder", 0))
        big = m.connect("mh-extra", will=m.Will("mh/will", b"w" * 60000))
        extra = self.raw()
        extra.send(big[:1000])
        extra.expect(m.connack(False, m.RC_SERVER_UNAVAILABLE), timeout=3)
        extra.expect_closed(3)

    def test_before_its_connect_a_connection_holds_no_more_than_a_connect_can_be(self):
        # Checked only once whole, a first packet of another type, or a CONNECT announcing more than 3.1.1 allows,
        # held up to mqtt.max_packet_size until the connect timeout (a review: 200 sockets with 1 MB each of one
        # held 300 MB; 20 with 16 MB PUBLISHes at max_packet_size = 16 MiB, 370 MB). Now closed at the header.
        self.use_broker({"mqtt.max_packet_size": 16 << 20, "mqtt.connect_timeout": 10000})
        largest = 2 + 6 + 1 + 1 + 2 + 5 * (2 + 65535)
        for what, head in (("PUBLISH first", b"\x30" + m.encode_remaining_length(1 << 20) + b"\x00\x01t"),
                           ("CONNECT too long", b"\x10" + m.encode_remaining_length(largest + 1) + b"\x00\x04MQTT")):
            with self.subTest(what=what):
                c = self.raw()
                c.send(head + b"x" * 1000)
                start = time.monotonic()
                c.expect_closed(3)
                self.assertLess(time.monotonic() - start, 1.0, "closed by the connect timeout, not at the header")
        self.assertIn(b"first packet is PUBLISH instead of CONNECT", self.broker.log())
        self.assertIn(b"more than an MQTT 3.1/3.1.1 CONNECT can hold", self.broker.log())
        # The largest CONNECT 3.1 can make is read whole and answered (its 65535-byte id refused as 3.1 says).
        c = self.raw()
        full = m.connect("i" * 65535, level=3, will=m.Will("w" * 65535, b"m" * 65535), username="u" * 65535,
                         password=b"p" * 65535)
        self.assertEqual(len(full), 1 + 3 + largest)
        c.send(full)
        c.expect(m.connack(False, m.RC_ID_REJECTED), timeout=5)

    def assert_logged_within_budget(self, line: str, total: int, elapsed: float, shards: int = 1) -> tuple:
        """Lines matching `line` and the lines the per-shard budget of connection lines held back account for all
        `total` events, and at most 20 a second a shard were written (waits up to 5 s for the count): (lines, held)."""
        def accounted():
            log = self.broker.log().decode("utf-8", "replace")
            lines = re.findall(line, log)
            held = sum(int(x) for x in re.findall(r"\(after (\d+) lines like it held back: at most", log))
            held += sum(int(x) for x in re.findall(r"(\d+) more lines about refused or closed connections held back",
                                                   log))
            return len(lines), held

        deadline = time.monotonic() + 5
        while sum(accounted()) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        lines, held = accounted()
        self.assertEqual(lines + held, total, f"{lines} lines, {held} held back")
        self.assertLessEqual(lines, 20 * shards * (int(elapsed) + 2), f"{lines} lines in {elapsed:.1f} s")
        return lines, held

    def test_refusals_are_logged_within_a_budget_and_every_one_counted(self):
        # A client reconnecting in a loop past max_connections: one log line each would be thousands a second. At
        # most 20 lines a second are written, and the lines held back are counted (by the next line, or once the
        # flood is over), so the log still accounts for every refusal.
        self.use_broker({"mqtt.max_connections": 1})
        self.client(self.cid("rb-holder", 0))
        start = time.monotonic()
        total = 300
        for i in range(total):
            c = m.RawClient(self.port)
            try:
                c.send(m.connect(f"rb-{i}"))
                c.expect(m.connack(False, m.RC_SERVER_UNAVAILABLE), timeout=3)
            finally:
                c.close()
        elapsed = time.monotonic() - start
        _, held = self.assert_logged_within_budget(r"refusing CONNECT from [^\n]*max_connections reached[^\n]*", total,
                                                   elapsed, self.SHARDS)
        if elapsed < 1.0:
            self.assertGreater(held, 0)

    def test_part_of_a_packet_with_keepalive_0_is_not_kept_for_ever(self):
        # Keepalive 0 sets no deadline: a client that sent part of a packet and went quiet held its memory for good (a
        # review: 100 clients with 990 KB each of a 1 MB PUBLISH kept 107 MB as long as they liked). No whole packet
        # for mqtt.connect_timeout while part of one waits: closed, and its will published.
        self.use_broker({"mqtt.connect_timeout": 1000})
        watcher = self.client(self.cid("pw", 0))
        watcher.subscribe([("will/part", 1)])
        c = self.client(self.cid("part", 0), keepalive=0, will=m.Will("will/part", b"cut", qos=1))
        frame = m.publish("part/t", b"x" * 100000)
        c.send(frame[:50000])
        start = time.monotonic()
        c.expect_closed(5)
        self.assertGreaterEqual(time.monotonic() - start, 0.5)
        self.assertEqual(watcher.recv_publish().payload, b"cut")
        self.assertRegex(self.broker.log(), rb"keepalive 0, and part of a packet \(\d+ bytes\) waited \d+ ms")
        # A packet that comes slowly but steadily, over longer than the limit, is not cut (a review of the first
        # version found it timed from the last whole packet).
        slow = self.client(self.cid("slow", 0), keepalive=0)
        step = -(-len(frame) // 10)
        for k in range(10):
            slow.send(frame[k * step:(k + 1) * step])
            time.sleep(0.25)
        slow.publish("part/slow", b"fine", qos=1)
        # Idle with keepalive 0 is fine, and so is a packet that comes in parts within the limit.
        ok = self.client(self.cid("idle", 0), keepalive=0)
        time.sleep(1.5)
        ok.send(frame[:50000])
        time.sleep(0.4)
        ok.send(frame[50000:])
        time.sleep(0.8)
        ok.publish("part/ok", b"fine", qos=1)
        self.assertTrue(ok.is_open())

    def test_takeovers_are_logged_within_the_budget(self):
        # Two devices sharing a client id take each other over in a loop: one info line per takeover was thousands a
        # second (a review measured 5,800). They share the budget of the refusals above; every one is accounted for.
        self.use_broker()
        cid = self.cid("duel", 0)
        start = time.monotonic()
        total = 200
        prev = self.client(cid)
        for _ in range(total):
            nxt = self.client(cid)  # takes prev over
            prev.close()
            prev = nxt
        elapsed = time.monotonic() - start
        self.assert_logged_within_budget(r"client " + re.escape(cid) + r" taken over: closing the connection", total,
                                         elapsed)

    def test_max_client_id_len(self):
        # MQTT-3.1.3-5: ids of 1..23 bytes must always be accepted, so the limit cannot go below 23.
        self.use_broker({"mqtt.max_client_id_len": 30})
        ok = self.client("c" * 30)
        self.assertTrue(ok.is_open())
        c = self.raw()
        c.send(m.connect("c" * 31))
        c.expect(b"\x20\x02\x00\x02")
        c.expect_closed(3)

    def test_keepalive_multiplier(self):
        self.use_broker({"mqtt.keepalive_multiplier": 2.5})
        start = time.monotonic()  # before the CONNECT, as in the keepalive test
        c = self.client(self.sub_id(), keepalive=1)
        c.expect_closed(6)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 2.2)
        self.assertLessEqual(elapsed, 4.0)

    def test_turn_budgets_reach_every_shard(self):
        # node.* step sizes are read by each shard; its start-up line says what it runs with, and a read of 10
        # retained topics no longer fits in one step of 3 (it does in the default 256).
        for settings, steps in (({"node.sends_per_turn": 5, "node.retained_reads_per_turn": 7,
                                  "node.retained_read_slice": 3, "node.turn_work_us": 777}, True), ({}, False)):
            self.use_broker(settings)
            if steps:
                line = (b"per turn 5 sends, 7 retained topics, 3 per session, 777 us of routing work; idle poll 50 us "
                        b"from 16 packets a wake-up while 75% of polls find work, weighed against sleeping per CPU-second)")
                started = self.broker.log().count(line)
                self.assertEqual(started, self.SHARDS)
            pub = self.client(self.pub_id())
            for i in range(10):
                pub.publish(f"steps/{i}", b"r", qos=1, retain=True)
            sub = self.client(self.sub_id())
            sub.subscribe([("steps/#", 0)])
            self.assertEqual(sorted(x.topic for x in sub.recv_publishes(10)), sorted(f"steps/{i}" for i in range(10)))
            self.assertEqual(b"continue over the next turns" in self.broker.log(), steps, settings)

    def test_the_send_backlog_holds_one_id_per_connection_at_most(self):
        # node.sends_per_turn = 1 and eight clients pipelining PINGREQs: most turns leave connections in the send
        # backlog, and each PINGRESP (a reply) moves its connection out of it again. Ids left behind used to pile up
        # (21-33 for 8 connections in 5-15 s); the backlog holds one per connection at most, and every PINGREQ is
        # answered.
        self.use_broker({"node.sends_per_turn": 1})
        stop = time.monotonic() + 2
        sent = [0] * 8
        got = [0] * 8

        def pinger(i: int) -> None:
            c = self.raw()
            c.send(m.connect(self.cid(f"piper{i}", i)))
            c.expect(m.connack())
            sock = c.sock
            sock.settimeout(0.2)
            written = threading.Event()

            def reader() -> None:
                deadline = stop + 10
                while not written.is_set() or got[i] < 2 * sent[i]:
                    if time.monotonic() > deadline:
                        return
                    try:
                        data = sock.recv(65536)
                    except socket.timeout:
                        continue
                    if not data:
                        return
                    got[i] += len(data)

            t = threading.Thread(target=reader)
            t.start()
            burst = m.pingreq() * 64
            while time.monotonic() < stop:
                if 2 * sent[i] - got[i] > 2 * 512:  # at most 512 unanswered: the answers stay bounded in time
                    time.sleep(0.001)
                    continue
                sock.sendall(burst)
                sent[i] += 64
            written.set()
            t.join(15)

        threads = [threading.Thread(target=pinger, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual(got, [2 * n for n in sent], "PINGRESP bytes against PINGREQs sent")
        self.assertGreater(min(sent), 0)
        log = self.broker.stop_and_read_log()
        peaks = [int(x) for x in re.findall(rb"its send backlog held at most (\d+) ids", log)]
        self.assertEqual(len(peaks), self.SHARDS, "one stop line per shard")
        self.assertLessEqual(max(peaks), 8, "more backlog ids than connections")

    def ping_2ms_apart(self, n: int) -> None:
        """A new client sends n PINGREQs, each about 2 ms after the last PINGRESP: one packet a wake-up."""
        c = self.raw()
        c.send(m.connect(self.sub_id()))
        c.expect(m.connack())
        for _ in range(n):
            time.sleep(0.002)
            c.send(m.pingreq())
            c.expect(m.PINGRESP_BYTES)

    def test_idle_poll_finds_packets_and_sleeps_when_none_come(self):
        # node.idle_poll_us: an idle shard polls its ring for that long before it sleeps. Each PINGREQ below follows
        # the last PINGRESP by about 2 ms, well inside a 10 ms window, so polls find them; with nothing coming in, the
        # shards must still fall asleep: polling through a quiet second would cost a shard that whole second. Each
        # wake-up brings one packet, so polls are asked for after every wake-up (node.idle_poll_min_batch = 0).
        # node.idle_poll_min_found = 0: a test thread descheduled past a window on a busy host makes that poll miss,
        # and under the default 75% a few misses would stop the polls for the rest of the pings; that rule has its
        # own test below, as has weighing against sleeping.
        self.use_broker({"node.idle_poll_us": 10000, "node.idle_poll_min_batch": 0, "node.idle_poll_min_found": 0,
                         "node.idle_poll_by_cpu": False})
        self.assertEqual(self.broker.log().count(b"idle poll 10000 us from 0 packets a wake-up while 0% of polls "
                                                 b"find work)"), self.SHARDS)
        self.ping_2ms_apart(20)

        before = cpu_seconds(self.broker.proc.pid)
        time.sleep(1.0)
        self.assertLess(cpu_seconds(self.broker.proc.pid) - before, 0.5,
                        "the broker kept polling through a quiet second")
        text = self.broker.stop_and_read_log()
        polls = re.findall(rb"polled \d+ times when idle: (\d+) found work, (\d+) slept", text)
        self.assertEqual(len(polls), self.SHARDS)
        # Most of the 20 (a poll that never sees completions finds none; a test thread descheduled for 10 ms may
        # miss a window now and then: CI once saw 4 such misses in 20). A shard that never polled finds none.
        self.assertGreaterEqual(sum(int(f) for f, _ in polls), 12, polls)
        self.assertGreater(sum(int(s) for _, s in polls), 0, polls)

    def test_idle_poll_waits_for_batches(self):
        # With node.idle_poll_min_batch, a shard polls only while its wake-ups bring that many packets each: one
        # PINGREQ a wake-up never starts a poll, 40 PUBLISHes in one write at a time do. (node.idle_poll_min_found = 0
        # as above: a test thread late for a few bursts must not stop the polls for the rest.)
        self.use_broker({"node.idle_poll_us": 10000, "node.idle_poll_min_batch": 8, "node.idle_poll_min_found": 0,
                         "node.idle_poll_by_cpu": False})
        self.ping_2ms_apart(20)
        pub = self.client(self.pub_id())
        for _ in range(20):
            time.sleep(0.002)
            pub.send(b"".join(m.publish("poll/batch", b"x", qos=0) for _ in range(40)) + m.pingreq())
            pub.expect(m.PINGRESP_BYTES)
        text = self.broker.stop_and_read_log()
        polls = re.findall(rb"polled \d+ times when idle: (\d+) found work, (\d+) slept after \d+ us; "
                           rb"(\d+) times it slept at once \(under 8 packets", text)
        self.assertEqual(len(polls), self.SHARDS, text[-2000:])
        # The sparse pings leave the average under 8 (so the shard slept at once); the bursts lift it over, and then
        # each burst's idle point polls, whether the poll finds the next burst (most do) or times out (a late thread).
        self.assertGreaterEqual(sum(int(sp) for _, _, sp in polls), 15, polls)
        self.assertGreaterEqual(sum(int(f) + int(sl) for f, sl, _ in polls), 15, polls)
        self.assertGreaterEqual(sum(int(f) for f, _, _ in polls), 5, polls)

    def test_idle_poll_stops_when_polls_find_nothing(self):
        # node.idle_poll_min_found: a poll that times out spent its whole length for nothing. Here every PINGREQ comes
        # about 2 ms after the last PINGRESP, past a 1 ms poll, so polls find nothing; after a few the shard sleeps at
        # once, probing now and then (16, 32, 64... idle points apart) to see whether that changed.
        self.use_broker({"node.idle_poll_us": 1000, "node.idle_poll_min_batch": 0, "node.idle_poll_by_cpu": False})
        self.ping_2ms_apart(96)
        text = self.broker.stop_and_read_log()
        polls = re.findall(rb"polled (\d+) times when idle: \d+ found work, \d+ slept after 1000 us; \d+ times it slept "
                           rb"at once \(under 0 packets a wake-up\), (\d+) times as polls had found work under 75% of "
                           rb"the time", text)
        self.assertEqual(len(polls), self.SHARDS, text[-2000:])
        # The client's shard has about 96 idle points (a PINGRESP that completes as it is submitted is not one; a few
        # more with the connect and the ticks): three polls take its average under 75%, then probes 16, 32, 64... idle
        # points apart (each that finds nothing doubles the gap), about 5 polls in all. A shard thread preempted for
        # 2 ms starts a poll late enough to find the next ping, which lifts the average and gives a few more polls;
        # the bounds leave room for several. It does keep polling now and then.
        self.assertGreaterEqual(max(int(p) for p, _ in polls), 4, polls)
        self.assertGreaterEqual(max(int(f) for _, f in polls), 60, polls)
        p, f = max(((int(p), int(f)) for p, f in polls), key=lambda pf: pf[1])  # the client's shard
        self.assertGreaterEqual(f, 2 * p, polls)

    def test_idle_poll_weighed_against_sleeping(self):
        # node.idle_poll_by_cpu: bursts of 300 PUBLISHes about 1 ms apart. A 10 ms poll finds each burst (so neither
        # rule above stops it) but spins about 1 ms for it, where a sleep costs a wake-up: sleeping handles several
        # times the packets per CPU-second. Weighed, the shard sleeps once it has tried both; unweighed, it polls.
        burst = b"".join(m.publish("poll/cpu", b"x", qos=0) for _ in range(300)) + m.pingreq()
        for weighed in (False, True):
            self.use_broker({"node.idle_poll_us": 10000, "node.idle_poll_min_batch": 0, "node.idle_poll_min_found": 0,
                             "node.idle_poll_by_cpu": weighed})
            pub = self.client(self.pub_id())
            bursts = 0
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                time.sleep(0.001)
                pub.send(burst)
                pub.expect(m.PINGRESP_BYTES)
                bursts += 1
            text = self.broker.stop_and_read_log()
            shards = re.findall(rb"polled (\d+) times when idle: (\d+) found work.* (\d+) times in sleeping epochs "
                                rb"\((\d+) packets per CPU-ms sleeping against (\d+) polling", text)
            self.assertEqual(len(shards), self.SHARDS, text[-2000:])
            polls, found, slept_by_epoch, sleeping, polling = max((tuple(map(int, s)) for s in shards), key=lambda s: s[1])
            detail = f"weighed {weighed}: {bursts} bursts, {shards}"
            if weighed:
                # Polling in the first epoch and one in 32 after (25 ms each), most bursts after a sleep.
                self.assertGreater(sleeping, polling, detail)
                self.assertLess(polls, bursts // 4, detail)
                self.assertGreater(slept_by_epoch, bursts // 2, detail)
            else:
                # (Most: a burst that comes more than 10 ms late, the test thread descheduled, is not found.)
                self.assertGreater(found, bursts // 2, detail)
                self.assertEqual(slept_by_epoch, 0, detail)

    def ping_rtts(self, c, n: int, gap: float) -> list:
        """Round-trip times of n PINGREQs on c, each sent `gap` seconds after the last PINGRESP."""
        rtts = []
        for _ in range(n):
            time.sleep(gap)
            t = time.monotonic()
            c.send(m.pingreq())
            c.expect(m.PINGRESP_BYTES)
            rtts.append(time.monotonic() - t)
        return sorted(rtts)

    def test_wake_batch_waits_for_company_only_under_load(self):
        # node.wake_batch_us: completions within that time of a shard going to sleep wait until it has passed (unless
        # node.wake_batch of them come first), while its first completions mostly come within it. A PINGREQ sent
        # as soon as the last PINGRESP arrives comes a few microseconds into the shard's sleep: after the first few
        # such sleeps (which show the shard that its first completions come at once) each waits out the 20 ms. A
        # PINGREQ after a quiet 60 ms wakes the shard at once, whichever kind of sleep it is in: the minimum wait has
        # run out, and after a few such sleeps the shard stops batching. Counts rather than every ping, so that a test
        # thread descheduled now and then (or a housekeeping tick just before a ping, which starts a new sleep) does
        # not decide. Nothing is lost in a burst, and an idle shard stays asleep.
        self.use_broker({"node.wake_batch_us": 20000, "node.wake_batch": 64, "node.idle_poll_us": 0,
                         "node.wake_batch_by_cpu": False})
        if b"has no minimum wait" in self.broker.log():
            self.skipTest("this kernel's io_uring has no minimum wait (before Linux 6.12)")
        self.assertEqual(self.broker.log().count(b"wakes for 64 completions, or 20000 us after it went to sleep"),
                         self.SHARDS)
        c = self.raw()
        c.send(m.connect(self.sub_id()))
        c.expect(m.connack())
        busy = self.ping_rtts(c, 40, 0)
        busy_log = self.broker.log()
        quiet = self.ping_rtts(c, 15, 0.06)
        quiet_log = self.broker.log()
        flips = re.compile(rb"shard \d+ (waits for a batch of completions|wakes at its first completion again)")
        self.assertEqual([f.group(1) for f in flips.finditer(busy_log)][-1:], [b"waits for a batch of completions"],
                         busy_log[-2000:])
        self.assertEqual([f.group(1) for f in flips.finditer(quiet_log)][-1:],
                         [b"wakes at its first completion again"], quiet_log[-2000:])
        # (About 6 to 16 of the busy pings go before the shard has seen enough short sleeps to batch.)
        self.assertGreaterEqual(sum(t >= 0.010 for t in busy), 15, f"back-to-back pings did not wait for company: {busy}")
        self.assertLess(busy[-1], 0.5, f"a ping waited past the minimum wait: {busy}")
        self.assertGreaterEqual(sum(t < 0.010 for t in quiet), 10,
                                f"pings to a shard asleep past the minimum wait waited: {quiet}")

        sub = self.client(self.sub_id("wb-sub"))
        sub.subscribe([("wb/#", 1)])
        col = Collector(sub, 300)
        pub = self.client(self.pub_id("wb-pub"))
        pub.send(b"".join(m.publish("wb/t", str(i).encode(), qos=0) for i in range(300)))
        self.assertEqual([msg.payload for msg in col.join()], [str(i).encode() for i in range(300)])

        before = cpu_seconds(self.broker.proc.pid)
        time.sleep(1.0)
        self.assertLess(cpu_seconds(self.broker.proc.pid) - before, 0.3, "the broker did not sleep through a quiet second")
        text = self.broker.stop_and_read_log()
        sleeps = [(int(b), int(p)) for b, p in re.findall(
            rb"slept (\d+) times waiting for a batch of completions and (\d+) times for the first", text)]
        self.assertEqual(len(sleeps), self.SHARDS, text[-2000:])
        batched, plain = max(sleeps)  # the pinging client's shard
        self.assertGreaterEqual(batched, 15, sleeps)
        self.assertGreaterEqual(plain, 15, sleeps)  # at least 6 busy ones before batching, 9 quiet ones after

    def test_wake_batch_weighed_against_plain_sleeps(self):
        # node.wake_batch_by_cpu: a publisher sends rounds of 200 PUBLISHes, one send() each, a few microseconds
        # apart. Waking at each, a shard received about 3 packets a wake-up here; a batched sleep (1 ms) takes the
        # whole round, and handled 1.6-2.5 times the packets per CPU-second. The epochs that weigh them (25 ms each)
        # try plain sleeps first, then batched ones, and then run the better, trying the other one epoch in 32 (the
        # log counts the epochs that were scored).
        self.use_broker({"node.wake_batch_us": 1000, "node.wake_batch": 4096, "node.idle_poll_us": 0,
                         "node.wake_batch_by_cpu": True})
        packets = [m.publish("wb/cpu", b"x", qos=0) for _ in range(200)]
        pub = self.client(self.pub_id())
        rounds, end = 0, time.monotonic() + 2.0
        while time.monotonic() < end:
            for p in packets:
                pub.send(p)
            pub.send(m.pingreq())
            pub.expect(m.PINGRESP_BYTES)
            rounds += 1
        text = self.broker.stop_and_read_log()
        if b"has no minimum wait" in text:
            # A kernel before Linux 6.12: warned once, and no shard weighs what it cannot do.
            self.assertEqual(text.count(b"has no minimum wait"), 1, text[-2000:])
            self.assertNotIn(b"weighed batched sleeps", text)
            self.assertNotIn(b"waits for a batch of completions", text)
            return
        weighed = [tuple(float(x) for x in w) for w in re.findall(
            rb"weighed batched sleeps against plain ones: (\d+) packets per CPU-ms with batched sleeps in (\d+) epochs "
            rb"against (\d+) with plain ones in (\d+)", text)]
        self.assertEqual(len(weighed), self.SHARDS, text[-2000:])
        batched, batched_epochs, plain, plain_epochs = max(weighed, key=lambda w: w[1] + w[3])  # the publisher's shard
        detail = f"{rounds} rounds of 200 packets; {weighed}"
        # Batched sleeps scored better: usually 1.6-2.5 times, but a full suite run on a busy host (stop 59) scored
        # 1048 against 953 (1.1x) with plain sleeps weighed in 3 epochs only, so the margin is not asserted.
        self.assertGreater(batched, plain, detail)
        # (At least one plain epoch before the first batched one; a noisy first score for batched sleeps can leave
        # plain ones running until the next exploring epoch, 32 epochs on.)
        self.assertGreater(batched_epochs, plain_epochs, detail)
        self.assertGreaterEqual(plain_epochs, 1, detail)

shard_variants(LimitCases, globals())


HOLD_LINE = rb"queued, three quarters of its limit: client \S+ is not read until"


class PublisherHoldBase:
    AUTO_START = False
    # One in flight, 8 queued: the publisher is held at 6 queued.
    LIMITS = {"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 8}

    def flood(self, pub, topic: str, n: int, size: int = 8, qos: int = 1, dup: bool = False, first: int = 0) -> list:
        frames = [m.publish(topic, b"%06d" % i + b"x" * (size - 6), qos=qos, pid=i + 1, dup=dup)
                  for i in range(first, first + n)]
        pub.send(b"".join(frames))
        return frames

    def on0(self, name: str, **kw):
        return self.client(self.cid(name, 0), **kw)

    def assert_held_lost_nothing(self) -> None:
        log = self.broker.log()
        self.assertRegex(log, HOLD_LINE)
        self.assertNotIn(b"dropped", log)

    def put_one_in_flight(self, to, name: str, shard: int = 0) -> None:
        """A QoS 1 message in flight to client `to` (subscribing to to/<name>), sent by another client on `shard`,
        left unanswered."""
        to.subscribe([(f"to/{name}", 1)])
        self.client(self.cid(f"to-{name}-", shard)).publish(f"to/{name}", b"x", qos=1)
        self.assertEqual(to.recv_publish(5, ack=False).topic, f"to/{name}")  # in flight to it, unanswered

    @staticmethod
    def take_acking(c, n_acks: int, n_pubs=None, timeout: float = 8.0, quiet: float = 0.5) -> tuple:
        """Reads c, PUBACKing each PUBLISH it gets (the int of its payload's first 6 bytes recorded), until it has had
        n_acks PUBACKs and n_pubs PUBLISHes (None: until none came for `quiet` s past the last PUBACK) or timeout
        passes: (the PUBACKs' bytes, the numbers got, when the last PUBACK wanted came or None)."""
        acks, got, acked_at = set(), [], None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if acked_at is not None and (len(got) >= n_pubs if n_pubs is not None else
                                         time.monotonic() - acked_at >= quiet):
                break
            try:
                p = c.read_packet(0.1)
            except TimeoutError:
                continue
            if p.type == m.PUBLISH:
                x = m.parse_publish(p)
                got.append(int(x.payload[:6]))
                c.send(m.puback(x.pid))
            elif p.type == m.PUBACK:
                acks.add(p.raw())
                if len(acks) == n_acks:
                    acked_at = time.monotonic()
        return acks, got, acked_at

    def close_and_wait(self, client, client_id: str) -> None:
        """Closes client's socket and waits (5 s at most) until the broker logs that it saw the close."""
        client.close()
        line = rb"client " + re.escape(client_id.encode()) + rb" \(.*\) closed"
        self.wait_until(lambda: re.search(line, self.broker.log()), 5, f"the broker seeing {client_id} close")

    def held_pair(self, topic: str, hold_ms: int, sub_kw=None, pub_kw=None) -> tuple:
        """A subscriber that takes nothing and a publisher of 20 pipelined QoS 1 messages, held at its 8th (1 in the
        window, 6 queued, and the one that found the queue at its mark): (sub, pub)."""
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": hold_ms})
        sub = self.on0("sub", **(sub_kw or {}))
        sub.subscribe([(topic, 1)])
        pub = self.on0("pub", **(pub_kw or {}))
        self.flood(pub, topic, 20)
        for i in range(8):
            pub.expect(m.puback(i + 1))
        return sub, pub

    def held_at_300(self, topic: str, hold_ms: int) -> tuple:
        """A queue of 400 (its mark at 300) whose subscriber takes nothing, and a publisher of 400 pipelined QoS 1
        messages held at its 302nd (1 in the window, 300 queued and the one that found the queue at its mark)."""
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 400, "mqtt.publisher_hold_ms": hold_ms})
        sub = self.on0("sub")
        sub.subscribe([(topic, 1)])
        pub = self.on0("first")
        self.flood(pub, topic, 400)
        for i in range(302):
            pub.expect(m.puback(i + 1))
        return sub, pub

    def large_messages_lose_nothing(self, pub_shard: int) -> None:
        """mqtt.max_queued_bytes 200000 and 70 KB QoS 1 messages from a client on pub_shard to a subscriber on shard 0
        that takes one at a time: the queue at 140 KB is below its mark (150 KB) and the next would pass the limit. It
        was not held, and that message and every one after it were dropped though answered (4 of 40 delivered)."""
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_bytes": 200000, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("big/x", 1)])
        pub = self.client(self.cid("pub", pub_shard))
        n = 30
        writer = threading.Thread(target=self.flood, args=(pub, "big/x", n, 70000))  # held: its send blocks
        writer.start()
        got = []
        for _ in range(n):
            msg = sub.recv_publish(timeout=10, ack=False)
            got.append(int(msg.payload[:6]))
            time.sleep(0.01)
            sub.ack(msg)
        writer.join(10)
        self.assertEqual(got, list(range(n)))
        for i in range(n):
            pub.expect(m.puback(i + 1), timeout=10)
        self.assertNotIn(b"dropped", self.broker.log())

    def many_clients_with_one_message_each(self, pub_shard: int, n: int = 60, retain: bool = False,
                                           sent_to_each: bool = False) -> bytes:
        """A wildcard subscriber on shard 0 (a window of 1, a queue of 8) that takes nothing at first, and n clients on
        pub_shard that each write one message on a topic of their own at once, QoS 1 and 2 in turn: far more than the
        queue takes past its mark (its quarter and four times its limit more, 2 + 32). Once the subscriber reads,
        every client is answered and the subscriber gets each message once: none is dropped (each past the room waited
        unanswered, unread, for its client's turn). Retained (retain): each is stored once too, and a later
        subscriber on either shard gets all n. sent_to_each: each client has a QoS 1 message in flight to it first,
        unanswered. Returns the broker's log."""
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("many/#", 2)])
        pubs = [self.client(self.cid(f"one{i}-", pub_shard)) for i in range(n)]
        if sent_to_each:
            for i, p in enumerate(pubs):
                p.subscribe([(f"back/{i}", 1)])
            feeder = self.client(self.cid("feeder", pub_shard))
            for i in range(n):
                feeder.publish(f"back/{i}", b"to it", qos=1)
            for i, p in enumerate(pubs):
                self.assertEqual(p.recv_publish(5, ack=False).topic, f"back/{i}")  # in flight to it, unanswered
        for i, p in enumerate(pubs):
            p.send(m.publish(f"many/{i}", b"%03d" % i, qos=1 + i % 2, pid=1, retain=retain))
        time.sleep(0.5)  # all routed (or refused) before the subscriber takes any
        got = Collector(sub, n, timeout=5)
        for i, p in enumerate(pubs):
            if i % 2 == 0:
                p.expect(m.puback(1), timeout=10)
            else:
                p.expect(m.pubrec(1), timeout=10)
                p.send(m.pubrel(1))
                p.expect(m.pubcomp(1))
        live = got.join()
        self.assertEqual(sorted(int(x.payload) for x in live), list(range(n)))
        self.assertFalse(any(x.retain for x in live), "live copies carry no retain flag")
        sub.expect_no_packet(0.2)
        if retain:
            for shard in range(self.SHARDS):
                later = self.client(self.cid(f"later{shard}-", shard))
                later.subscribe([("many/#", 0)])
                stored = [later.recv_publish(5) for _ in range(n)]
                self.assertTrue(all(x.retain for x in stored))
                self.assertEqual(sorted(int(x.payload) for x in stored), list(range(n)), f"stored on shard {shard}")
                later.expect_no_packet(0.2)
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assert_broker_healthy("after-many")
        return log

    def held_qos2_client_drops(self, limits: dict, pub_shard: int, n: int, sent_to_it: bool = False) -> None:
        """A subscriber on shard 0 (not reading at first) and a persistent QoS 2 publisher on pub_shard that writes n
        PUBLISHes at once, is held, and closes its socket with most of them unread (sent_to_it: with a QoS 1 message
        to it in flight, unanswered); it reconnects, resends those without a PUBREC (DUP) and releases all: the
        subscriber (reading from the reconnect on) gets each once, in order, and nothing is dropped."""
        self.use_broker({**limits, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/q2", 1)])
        cid = self.cid("q2pub", pub_shard)
        pub = self.client(cid, clean=False)
        if sent_to_it:
            pub.subscribe([("hold/q2back", 1)])
        pub.send(b"".join(m.publish("hold/q2", b"%06d" % i, qos=2, pid=i + 1) for i in range(n)))
        self.wait_until(lambda: re.search(rb"client \S+ is not read until", self.broker.log()), 5, "the publisher held")
        if sent_to_it:
            self.client(self.cid("other", 0)).publish("hold/q2back", b"to it", qos=1)
        recs, to_it = set(), []
        while True:
            try:
                p = pub.read_packet(0.3)
            except TimeoutError:
                break
            if sent_to_it and p.type == m.PUBLISH:
                to_it.append(p)  # (not answered)
                continue
            self.assertEqual(p.type, m.PUBREC)
            recs.add(p.raw())
        self.assertEqual(len(to_it), int(sent_to_it), "the message to it")
        self.assertLess(len(recs), n - 10)  # the rest unread as it leaves
        self.close_and_wait(pub, cid)
        got = Collector(sub, n, timeout=5)
        again = self.client(cid, clean=False, expect=m.connack(session_present=True))
        if sent_to_it:
            back = again.recv_publish()  # resent to it as DUP
            self.assertEqual((back.topic, back.payload, back.dup), ("hold/q2back", b"to it", True))
        for i in range(n):
            if m.pubrec(i + 1) not in recs:
                again.send(m.publish("hold/q2", b"%06d" % i, qos=2, pid=i + 1, dup=True))
                again.expect(m.pubrec(i + 1))
        for i in range(n):
            again.send(m.pubrel(i + 1))
            again.expect(m.pubcomp(i + 1))
        self.assertEqual([int(x.payload) for x in got.join()], list(range(n)))
        sub.expect_no_packet(0.3)
        self.assertNotIn(b"dropped", self.broker.log())

    def assert_dropped_not_held(self, limit: int) -> None:
        self.assertIn(b"queue full (mqtt.max_queued_messages = %d)" % limit, self.broker.log())
        self.assertNotRegex(self.broker.log(), HOLD_LINE)


class PublisherHoldCases(PublisherHoldBase):
    """mqtt.publisher_hold_ms: a client publishing QoS 1/2 faster than a connected subscriber on its shard takes them is
    not read while that subscriber's queue is at three quarters of its limit, instead of having what passes the
    limit dropped; a queue that stays at its mark for publisher_hold_ms lets its publishers go and drops past its limit
    until it drains. Every client here is homed on shard 0, so with 2 shards too the publisher shares the subscriber's
    shard (PublisherHoldAcrossShards has them apart)."""

    def slow_reader(self, dup: bool) -> None:
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 5000})
        sub = self.on0("sub")
        sub.subscribe([("hold/slow", 1)])
        pub = self.on0("pub")
        n = 300
        self.flood(pub, "hold/slow", n, dup=dup)
        got = []
        for _ in range(n):
            msg = sub.recv_publish(ack=False)
            got.append(int(msg.payload[:6]))
            if len(got) % 50 == 0:
                time.sleep(0.05)  # slower now and then: the queue fills behind the window
            sub.ack(msg)
        self.assertEqual(got, list(range(n)))
        for i in range(n):
            pub.expect(m.puback(i + 1))
        sub.expect_no_packet(0.2)
        self.assert_held_lost_nothing()
        self.assertNotIn(b"nothing taken from its queue", self.broker.log())

    def test_a_slow_subscriber_holds_the_publisher_and_loses_nothing(self):
        self.slow_reader(dup=False)

    def test_messages_over_a_quarter_of_the_byte_limit_hold_their_publisher_and_lose_nothing(self):
        self.large_messages_lose_nothing(0)

    def test_a_message_past_the_byte_limits_slack_is_dropped_and_the_shard_reads_on(self):
        # 600 KB for a queue of 100 KB below its mark (its slack and burst room end at 525 KB), the subscriber's
        # window full: it cannot be taken, and is dropped though answered, as documented. Held for it (the first form
        # of the hold above), its publisher was read again at once and refused again, for ever: the shard spun, a
        # client beside it got no PINGRESP and the broker did not stop.
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_bytes": 100000, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("big/y", 1)])
        pub = self.on0("pub")
        beside = self.on0("beside")
        pub.publish("big/y", b"first", qos=1, pid=1)
        first = sub.recv_publish(ack=False)
        pub.send(m.publish("big/y", b"B" * 600000, qos=1, pid=2))
        pub.expect(m.puback(2), timeout=5)
        beside.send(m.pingreq())
        beside.expect(m.PINGRESP_BYTES, timeout=3)
        sub.ack(first)
        sub.expect_no_packet(0.3)
        self.assertIn(b"its queue would pass mqtt.max_queued_bytes = 100000", self.broker.log())

    def test_held_on_the_full_decode_too(self):
        # DUP set: not the fast path's PUBLISH, so each goes through the general decode and dispatch.
        self.slow_reader(dup=True)

    def test_qos2_publisher_held_loses_nothing(self):
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 5000})
        sub = self.on0("sub")
        sub.subscribe([("hold/q2", 2)])
        pub = self.on0("pub")
        n = 90  # within mqtt.max_awaiting_rel (100): all sent before any PUBREL
        got = Collector(sub, n, timeout=10)
        self.flood(pub, "hold/q2", n, qos=2)
        for i in range(n):
            pub.expect(m.pubrec(i + 1), timeout=10)
        pub.send(b"".join(m.pubrel(i + 1) for i in range(n)))
        for i in range(n):
            pub.expect(m.pubcomp(i + 1), timeout=10)
        self.assertEqual([(int(x.payload[:6]), x.qos) for x in got.join()], [(i, 2) for i in range(n)])
        self.assertRegex(self.broker.log(), HOLD_LINE)
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_turn_waits_for_room_for_several_and_others_wait_behind_it(self):
        # A queue of 400 (its mark at 300): a held client is read again once an eighth of the mark, at most 32, is
        # free below it, not for each slot its subscriber's ack frees (each batch of its PUBACKs wakes it); a client
        # not held that publishes meanwhile is held behind it rather than take that room.
        sub, first = self.held_at_300("hold/turn", 60000)
        first.expect_no_packet(0.3)
        got = [int(x.payload[:6]) for x in sub.recv_publishes(10)]  # 9 free below the mark now
        first.expect_no_packet(0.3)
        later = self.on0("later")
        self.flood(later, "hold/turn", 2, first=1000)
        later.expect(m.puback(1001))  # taken, and held behind the first
        later.expect_no_packet(0.3)
        got += [int(x.payload[:6]) for x in sub.recv_publishes(40)]  # 49 free: the first's turn
        first.expect(m.puback(303), timeout=2)
        got += [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual([i for i in got if i < 1000], list(range(400)))
        self.assertEqual([i for i in got if i >= 1000], [1000, 1001])
        later.expect(m.puback(1002))
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertRegex(log, rb"clients held for it wait for room: client later\S* is not read until its turn")

    def test_a_very_slow_subscriber_gives_a_turn_before_room_for_several(self):
        # The longest held has waited an eighth of publisher_hold_ms (250 ms): it is read again for the little room
        # there is, long before its hold would run out.
        sub, pub = self.held_at_300("hold/trickle", 2000)
        held = time.monotonic()
        sub.recv_publishes(3)  # 2 free below the mark
        pub.expect(m.puback(303), timeout=3)
        self.assertLess(time.monotonic() - held, 1.5)
        self.assertNotIn(b"is read again", self.broker.log())  # not its hold's end

    def test_a_held_client_that_closes_holds_nobody_behind_it(self):
        # The held client goes away while its turn waits for room for several (9 free below the mark): a client that
        # publishes then is not held behind the one gone, which would hold it until that room came (or an eighth of
        # the hold's 60 s passed). The one gone sent nothing past the message it was held at: what a closing client
        # sent is all handled, held or not.
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 400, "mqtt.publisher_hold_ms": 60000})
        sub = self.on0("sub")
        sub.subscribe([("hold/gone", 1)])
        first = self.on0("first")
        self.flood(first, "hold/gone", 302)
        for i in range(302):
            first.expect(m.puback(i + 1))
        got = [int(x.payload[:6]) for x in sub.recv_publishes(10)]  # 9 free below the mark now
        self.close_and_wait(first, self.cid("first", 0))
        later = self.on0("later")
        self.flood(later, "hold/gone", 2, first=1000)
        later.expect(m.puback(1001))
        later.expect(m.puback(1002), timeout=2)
        got += [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual([i for i in got if i < 1000], list(range(302)))
        self.assertEqual([i for i in got if i >= 1000], [1000, 1001])
        self.assert_held_lost_nothing()

    def test_a_subscriber_that_keeps_taking_slowly_never_expires_the_hold(self):
        # 50 publishers held in turn for a subscriber that takes a message every 10 ms: the queue stays at its mark
        # longer than the hold's 0.3 s, but it moves all the while, so it never counts as stuck and nothing drops.
        # (A queue of 200, held from 150: its quarter past the limit holds what each client not held yet brings.)
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 200, "mqtt.publisher_hold_ms": 300})
        sub = self.on0("sub")
        sub.subscribe([("hold/many/#", 1)])
        pubs = [self.on0(f"p{k}") for k in range(50)]
        for k, p in enumerate(pubs):
            p.send(b"".join(m.publish(f"hold/many/{k}", b"%02d%04d" % (k, i), qos=1, pid=i + 1) for i in range(4)))
        got = {}
        for _ in range(200):
            x = sub.recv_publish()
            got.setdefault(int(x.payload[:2]), []).append(int(x.payload[2:]))
            time.sleep(0.01)
        self.assertEqual(got, {k: [0, 1, 2, 3] for k in range(50)})
        for p in pubs:
            for i in range(4):
                p.expect(m.puback(i + 1))
        log = self.broker.log()
        self.assertRegex(log, HOLD_LINE)
        self.assertNotIn(b"nothing taken from its queue", log)
        self.assertNotIn(b"dropped", log)

    def test_a_client_held_while_others_keep_the_queue_at_its_mark_is_read_again(self):
        # A client that cannot be held (its messages go to another subscriber too) keeps the queue at its mark while
        # its subscriber takes slowly: the held client is read again after the hold's 0.3 s, not when the queue drains
        # (it never does here), and the queue never counts as stuck. (Until stop 60 a client with a message in flight
        # to it played that part: such a client, and one publishing to its own queue, are held now.)
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 300})
        sub = self.on0("sub")
        sub.subscribe([("hold/mix/#", 1)])
        self.on0("other").subscribe([("hold/mix/fl", 0)])  # (QoS 0: it need not read during the test)
        flooder = self.on0("fl")
        pub = self.on0("pub")
        stop = threading.Event()

        def flood():
            pid = 0
            while not stop.is_set():
                pid = pid % 60000 + 1
                flooder.send(m.publish("hold/mix/fl", b"fl", qos=1, pid=pid))
                time.sleep(0.003)

        def slow_reader():
            while not stop.is_set():
                try:
                    sub.recv_publish(timeout=0.5)
                except AssertionError:
                    pass
                time.sleep(0.02)

        threads = [threading.Thread(target=flood, daemon=True), threading.Thread(target=slow_reader, daemon=True)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)  # the queue is full now
            self.flood(pub, "hold/mix/q1", 20)
            pub.expect(m.puback(1), timeout=3)  # found the queue at its mark: queued past it, and held
            pub.expect_no_packet(0.2)
            pub.expect(m.puback(2), timeout=1.5)  # read again after 0.3 s (each tick: 0.2 s)
        finally:
            stop.set()
            for t in threads:
                t.join(2)
        log = self.broker.log()
        self.assertIn(b"is read again while messages it cannot hold keep the queue at its mark", log)
        self.assertNotIn(b"nothing taken from its queue", log)

    def test_what_a_held_client_sends_past_16_kib_waits_in_its_socket(self):
        # Its receive is cancelled: the rest stays in its socket and TCP stops it, rather than the broker taking in
        # whatever it sends (64 MB here) while it is held.
        sub, pub = self.held_pair("hold/big", 10000)
        frame = m.publish("hold/big", b"x" * 65536, qos=1, pid=100)
        pub.sock.settimeout(2)
        sent = 0
        try:
            while sent < 64 << 20:
                pub.sock.sendall(frame)
                sent += len(frame)
        except socket.timeout:
            pass
        self.assertLess(sent, 64 << 20)
        self.assertTrue(self.broker.alive())

    def test_a_stuck_subscriber_whose_session_ends_lets_its_publisher_go_at_once(self):
        # Its session gone (clean): nothing to wait for, long before the hold's 10 s.
        sub, pub = self.held_pair("hold/gone", 10000, sub_kw={"clean": True})
        pub.expect_no_packet(0.2)
        sub.disconnect()
        for i in range(8, 20):
            pub.expect(m.puback(i + 1), timeout=2)
        self.assert_broker_healthy()

    def test_a_persistent_subscriber_that_leaves_and_comes_back_loses_nothing(self):
        # Offline, its session takes nothing, as before it left: its publisher stays held, and the subscriber back
        # within the hold's limit (a reconnect, a takeover by its new connection) gets all 20, in order. Until stop 61
        # the hold let its publisher go as the session went offline: 9 of the 20 arrived, the rest dropped though
        # answered (a seeded test of everything at once found it, test_chaos).
        for how in ("disconnect", "abort", "takeover"):
            with self.subTest(how=how):
                sub, pub = self.held_pair(f"hold/back/{how}", 10000, sub_kw={"clean": False})
                if how == "disconnect":
                    sub.disconnect()
                    read_until_closed(sub, 3)  # (the message in flight to it may come first)
                elif how == "abort":
                    sub.abort()
                if how != "takeover":
                    pub.expect_no_packet(0.5)  # still held, the session offline
                sub = self.on0("sub", clean=False, expect=m.connack(session_present=True))
                got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
                self.assertEqual(got, list(range(20)))
                for i in range(8, 20):
                    pub.expect(m.puback(i + 1), timeout=2)
                self.assert_held_lost_nothing()
                self.broker.stop()

    def test_a_held_client_taken_over_or_kicked_after_its_disconnect_leaves_no_will(self):
        # Its DISCONNECT, read and kept behind the message it waits with, is handled before the takeover (or the admin
        # API's kick) closes it: no will [MQTT-3.14.4-3]. Until stop 61 the close came first and published the will
        # (a review found it).
        for how in ("takeover", "kick"):
            with self.subTest(how=how):
                b = self.start_broker(self.SHARDS, {**self.LIMITS, "mqtt.publisher_hold_ms": 10000}, admin=True)
                self.broker, self.port, self.admin_port = b, b.port, b.admin_port
                watcher = self.on0("watch")
                watcher.subscribe([("will/held", 1)])
                sub = self.on0("sub")
                sub.subscribe([("hold/will", 1)])
                pub = self.on0("pub", will=m.Will("will/held", b"gone", qos=1))
                self.flood(pub, "hold/will", 20)
                for i in range(8):
                    pub.expect(m.puback(i + 1))
                pub.send(m.disconnect())
                time.sleep(0.3)  # read, and kept behind the message it waits with
                if how == "takeover":
                    self.on0("pub")
                else:
                    r = request(self.admin_port, "DELETE", "/api/v2/clients/" + self.cid("pub", 0))
                    self.assertEqual(r.status, 200, r)
                # The kept PUBLISHes handled as it leaves are answered before the close (their PUBACKs, in order:
                # since stop 63 what comes before a DISCONNECT is answered), and nothing else comes.
                got = packets_until_closed(pub, 3)
                self.assertEqual({p.type for p in got} - {m.PUBACK}, set(), got)
                acked = [m.packet_id(p) for p in got]
                self.assertEqual(acked, sorted(acked))
                self.assertTrue(all(9 <= a <= 20 for a in acked), acked)
                watcher.expect_no_packet(0.5)
                self.assertRegex(b.log(), HOLD_LINE)
                b.stop()

    def test_a_persistent_subscriber_offline_past_the_hold_lets_its_publisher_go(self):
        # Offline longer than mqtt.publisher_hold_ms, its queue is stuck: the publisher is read again, what passes the
        # limit is dropped (as for a subscriber online that takes nothing), and the session keeps the rest in order.
        sub, pub = self.held_pair("hold/away", 1000, sub_kw={"clean": False})
        sub.disconnect()
        read_until_closed(sub, 3)
        gone = time.monotonic()
        for i in range(8, 20):
            pub.expect(m.puback(i + 1), timeout=5)
        self.assertGreaterEqual(time.monotonic() - gone, 0.5)
        self.assertRegex(self.broker.log(), rb"nothing taken from its queue \(\d+ messages\) for mqtt.publisher_hold_ms")
        dropped = self.broker.log().count(b"dropped")
        # Back, it is stuck no more: what its publisher sends at once, while the queue is still full, holds it again
        # (a review of the first version found the mark of stuck kept, and 40 of 40 dropped while it read).
        sub = self.on0("sub", clean=False, expect=m.connack(session_present=True))
        self.flood(pub, "hold/away", 40, first=100)
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        old = [i for i in got if i < 100]
        self.assertEqual(old, list(range(len(old))))
        self.assertGreaterEqual(len(old), 8)
        self.assertLess(len(old), 20)
        self.assertEqual([i for i in got if i >= 100], list(range(100, 140)))
        self.assertEqual(self.broker.log().count(b"dropped"), dropped)

    def test_a_persistent_subscriber_offline_longer_than_the_hold_holds_nobody(self):
        # Away longer than mqtt.publisher_hold_ms before its queue reaches its mark, it holds no publisher at all: a
        # client publishing to many sessions (a backend to its devices) is not stalled once for each one switched off
        # whose queue fills (a review of the first version found it held each for the hold's limit).
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 3000})
        sub = self.on0("sub", clean=False)
        sub.subscribe([("hold/off", 1)])
        sub.disconnect()
        read_until_closed(sub, 3)
        time.sleep(3.2)
        pub = self.on0("pub")
        self.flood(pub, "hold/off", 20)
        for i in range(20):
            pub.expect(m.puback(i + 1), timeout=1.5)  # not held (the hold's limit is 3 s)
        self.assertNotRegex(self.broker.log(), HOLD_LINE)
        sub = self.on0("sub", clean=False, expect=m.connack(session_present=True))
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(8)))  # its queue's limit; the rest dropped, as offline queues do

    def test_a_stuck_subscriber_that_unsubscribes_lets_its_publisher_go_at_once(self):
        # The publisher's messages go nowhere once the subscriber (connected, taking nothing) unsubscribes: it is read
        # again at once, not after the hold's 10 s. Another filter of the same subscriber that takes every topic the
        # one it leaves did (hold/# for hold/unsub1) keeps it held: its messages still go to the same queue (until stop
        # 76 it was read again and held again at its next message, past the mark; with a gate on another shard what its
        # publishers had on the way passed the queue's limit). Filters that match no held topic change nothing.
        for keep in (False, True):
            with self.subTest(keep=keep):
                topic = f"hold/unsub{int(keep)}"
                sub, pub = self.held_pair(topic, 10000)
                sub.subscribe([("other/#", 1)])
                if keep:
                    sub.subscribe([("hold/#", 1)])  # its own: no other subscriber for the topic
                sub.unsubscribe(["other/#"])
                pub.expect_no_packet(0.3)
                sub.send(m.unsubscribe(7, [topic]))
                if not keep:
                    for i in range(8, 20):
                        pub.expect(m.puback(i + 1), timeout=2)
                    self.assertNotIn(b"dropped", self.broker.log())
                else:
                    pub.expect_no_packet(1.0)  # still held, by the one hold
                    self.assertEqual(len(re.findall(HOLD_LINE, self.broker.log())), 1)
                self.assert_broker_healthy()

    def test_a_subscriber_that_joins_a_held_topic_lets_its_publisher_go_at_once(self):
        # A slow subscriber may not slow the fast ones: one subscribing to the held topic gets the held publisher's
        # messages at once, not after the hold's 10 s; the slow one's queue then drops past its limit (as where the
        # message had several subscribers from the start).
        sub, pub = self.held_pair("hold/join", 10000)
        pub.expect_no_packet(0.2)
        fast = self.on0("fast")
        fast.subscribe([("hold/+", 1)])
        for i in range(8, 20):
            pub.expect(m.puback(i + 1), timeout=2)
        # Read again, its 12 reach the new one in one go: its window's 1 and its queue's 8 (LIMITS are everybody's).
        self.assertEqual([int(p[:6]) for p in read_until_quiet(fast, quiet=0.5)], list(range(8, 17)))
        self.assertIn(b"queue full (mqtt.max_queued_messages = 8)", self.broker.log())
        self.assert_broker_healthy()

    def test_a_held_clients_keepalive_does_not_run_out(self):
        # Keep-alive 1 s (closed past 1.5 s of silence), held for 3 s: what it sent was not read, so the time held
        # does not count as its silence.
        sub, pub = self.held_pair("hold/ka", 10000, pub_kw={"keepalive": 1})
        for _ in range(6):
            time.sleep(0.5)
            pub.send(m.pingreq())  # kept unread behind its PUBLISHes
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(20)))
        acks = [p.raw() for p in [pub.read_packet() for _ in range(12 + 6)]]
        self.assertEqual([a for a in acks if a[0] == 0x40], [m.puback(i + 1) for i in range(8, 20)])
        self.assertEqual(acks.count(m.PINGRESP_BYTES), 6)
        pub.send(m.pingreq())
        pub.expect(m.PINGRESP_BYTES)
        self.assertNotIn(b"keepalive 1 s exceeded", self.broker.log())

    def test_without_the_hold_the_same_flood_is_dropped_past_the_limit(self):
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 0})
        sub = self.on0("sub")
        sub.subscribe([("hold/slow", 1)])
        pub = self.on0("pub")
        n = 300
        self.flood(pub, "hold/slow", n)
        for i in range(n):
            pub.expect(m.puback(i + 1))
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(len(got))))
        self.assertLessEqual(len(got), 9)
        self.assert_dropped_not_held(8)

    def test_a_stuck_subscriber_holds_the_publisher_at_most_publisher_hold_ms(self):
        sub, pub = self.held_pair("hold/stuck", 400)
        held = time.monotonic()
        pub.expect_no_packet(0.2)
        # Others go on meanwhile, and the held client's acks are not needed for it.
        witness_sub = self.client(self.sub_id("w-sub"))
        witness_sub.subscribe([("hold/other", 1)])
        witness = self.client(self.pub_id("w-pub"))
        witness.publish("hold/other", b"meanwhile", qos=1)
        self.assertEqual(witness_sub.recv_publish().payload, b"meanwhile")
        # Past the hold the rest is handled: 1 more queued (the limit), 11 dropped.
        for i in range(8, 20):
            pub.expect(m.puback(i + 1), timeout=5)
        self.assertGreaterEqual(time.monotonic() - held, 0.3)
        log = self.broker.log()
        self.assertIn(b"nothing taken from its queue (7 messages) for mqtt.publisher_hold_ms = 400", log)
        self.assertIn(b"queue full (mqtt.max_queued_messages = 8)", log)
        # Its queue drops until it drains to half: a slow reader now gets what was kept, in order, nothing held.
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(9)))
        # Drained: the next flood holds the publisher again, and loses nothing this time.
        self.flood(pub, "hold/stuck", 30)
        got = [int(sub.recv_publish().payload[:6]) for _ in range(30)]
        self.assertEqual(got, list(range(30)))
        self.assertGreaterEqual(len(re.findall(HOLD_LINE, self.broker.log())), 2)  # holds are logged at doublings

    def test_a_message_another_subscriber_gets_too_does_not_hold_its_publisher(self):
        # A slow subscriber may not slow the fast ones: where a message has other subscribers, the slow one's queue
        # drops past its limit as without holds. (Queues of 200: the fast one's holds a round of 100.)
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 200, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("hold/both", 1)])
        fast = self.on0("fast")
        fast.subscribe([("hold/#", 1)])
        pub = self.on0("pub")
        msgs = send_rounds(pub, "hold/both", Collector(fast, 400))
        self.assertEqual([int(x.payload) for x in msgs], list(range(400)))
        self.assertEqual([int(p) for p in read_until_quiet(slow, quiet=0.5)], list(range(201)))
        self.assert_dropped_not_held(200)

    def test_a_client_publishing_to_its_own_full_queue_is_held_and_loses_nothing(self):
        # Its acks of what it receives are what drains the queue: until stop 60 it was never held for its own queue,
        # and what passed the limit was dropped though answered (9 of 40 arrived). Its acks are handled while it is
        # held, so it is held now, at the pace at which it takes its own messages.
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        c = self.on0("sub")
        c.subscribe([("hold/self", 1)])
        n = 40
        self.flood(c, "hold/self", n)
        acks, got, _ = self.take_acking(c, n, n, timeout=5)
        self.assertEqual(acks, {m.puback(i + 1) for i in range(n)})
        self.assertEqual(got, list(range(n)))
        self.assert_held_lost_nothing()

    def test_a_client_with_a_message_in_flight_to_it_sending_large_messages_one_at_a_time_loses_nothing(self):
        # What a held client may leave unread (16 KiB) counts past the first packet it kept: a 20 KiB message waiting
        # for its turn would pass it alone, and with a message in flight to it the client was let go at once and what
        # passed the queue's limit dropped (63d91e2, which counted from the start of what it kept: 13 of 15 arrived).
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("big/#", 1)])
        pub = self.on0("pub")
        self.put_one_in_flight(pub, "pub")
        got, stop = [], threading.Event()

        def slow_reader():
            while not stop.is_set() and len(got) < 15:
                try:
                    got.append(int(sub.recv_publish(timeout=0.5).payload[:6]))
                except AssertionError:
                    pass
                time.sleep(0.05)

        reader = threading.Thread(target=slow_reader, daemon=True)
        reader.start()
        try:
            for i in range(15):
                pub.send(m.publish("big/a", b"%06d" % i + b"x" * 20474, qos=1, pid=i + 1))
                pub.expect(m.puback(i + 1), timeout=8)
            self.wait_until(lambda: len(got) >= 15, 8, lambda: f"{len(got)} of 15 delivered")
        finally:
            stop.set()
            reader.join(2)
        self.assertEqual(got, list(range(15)))
        self.assert_held_lost_nothing()

    def test_a_client_held_again_for_its_own_queue_as_it_is_read_again_reads_on(self):
        # Held for another's queue with nothing in flight to it, it sends more than it may leave unread: its receive
        # stops (nothing to wait for its acks). In its turn its messages to itself fill its own window and queue, and
        # it is held again, for its own queue, which only its acks drain: its receive goes on (a build that left it
        # stopped waited for the hold's limit, 10 s, and then dropped past the limit).
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        d = self.on0("d")
        d.subscribe([("other/d", 1)])
        c = self.on0("c")
        c.subscribe([("self/c", 1)])
        to_d, to_self = 8, 20  # held at d's 8th: one in flight, 6 queued (its mark)
        c.send(b"".join(m.publish("other/d", b"%06d" % i + b"d" * 994, qos=1, pid=i + 1) for i in range(to_d)) +
               b"".join(m.publish("self/c", b"%06d" % i + b"c" * 994, qos=1, pid=to_d + i + 1) for i in range(to_self)))
        self.wait_until(lambda: re.search(HOLD_LINE, self.broker.log()), 5, "c held for d's queue")
        time.sleep(0.3)  # all it sent is kept or waits in its socket
        start = time.monotonic()
        result = {}

        def run_c():
            result["c"] = self.take_acking(c, to_d + to_self, to_self)

        thread = threading.Thread(target=run_c, daemon=True)
        thread.start()
        got_d = [int(x.payload[:6]) for x in Collector(d, to_d, timeout=8).join()]
        thread.join(10)
        acks, got, done = result["c"]
        self.assertEqual(got_d, list(range(to_d)))
        self.assertEqual(acks, {m.puback(i + 1) for i in range(to_d + to_self)})
        self.assertEqual(got, list(range(to_self)))
        self.assertLess(done - start, 5)
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertNotIn(b"nothing taken from its queue", log)

    def test_two_clients_publishing_to_each_other_more_than_a_hold_leaves_unread_are_not_stalled(self):
        # Each is held for the other's queue, and each has sent more than a held client may leave unread (16 KiB), so
        # its receive stops, and its acks of what the other sends it wait behind in its socket: neither queue drains.
        # Since stop 60 a client with messages in flight to it is held; once its acks would wait so, its hold is
        # waived (it is read again, and what passes the queue's limit is dropped, as before) rather than both waiting
        # for the hold's limit (10 s here).
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        a, b = self.on0("a"), self.on0("b")
        a.subscribe([("mut/a", 1)])
        b.subscribe([("mut/b", 1)])
        n = 150
        start = time.monotonic()
        a.send(b"".join(m.publish("mut/b", b"%06d" % i + b"a" * 194, qos=1, pid=i + 1) for i in range(n)))
        b.send(b"".join(m.publish("mut/a", b"%06d" % i + b"b" * 194, qos=1, pid=i + 1) for i in range(n)))
        results = {}

        def run(name, c):
            results[name] = self.take_acking(c, n)

        threads = [threading.Thread(target=run, args=(name, c), daemon=True) for name, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for name in ("a", "b"):
            acks, got, took = results[name]
            self.assertEqual(acks, {m.puback(i + 1) for i in range(n)}, name)
            self.assertLess(took - start, 5, f"{name} answered only after {took - start:.1f} s")
            self.assertEqual(got, sorted(set(got)), f"{name}: in order, each once")
            self.assertGreaterEqual(len(got), 9, name)
        self.assertIn(b"bytes past the first packet it kept: it is read again", self.broker.log())
        self.assert_broker_healthy("after-mutual")

    def test_what_a_held_client_sent_before_it_left_is_handled(self):
        # Held, then DISCONNECT and the end of its stream (SHUT_WR): what it sent is handled, its last PUBLISHes and the
        # DISCONNECT included, which ends it normally (no will). "big" sends more than a held client may leave unread
        # (its receive is cancelled and the rest waits in its socket until the hold expires); "small" sends a few
        # bytes, kept unread until its end of stream comes. QoS 1, unanswered: past the limit they are dropped as
        # without holds (a held client's QoS 2 ones are not: test_a_held_qos2_client_whose_connection_drops_...).
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 400})
        sub = self.on0("sub")
        sub.subscribe([("hold/left", 1)])
        watcher = self.on0("watch")
        watcher.subscribe([("hold/will/#", 0)])
        for name, count, size in (("big", 40, 1000), ("small", 10, 8)):
            pub = self.on0(name, will=m.Will(f"hold/will/{name}", b"gone"))
            before = len(re.findall(HOLD_LINE, self.broker.log()))
            self.flood(pub, "hold/left", count, size)
            for i in range(8):
                pub.expect(m.puback(i + 1))
            deadline = time.monotonic() + 3
            while len(re.findall(HOLD_LINE, self.broker.log())) == before and time.monotonic() < deadline:
                time.sleep(0.01)
            pub.send(m.disconnect())
            pub.sock.shutdown(socket.SHUT_WR)
            # Acks still queued when the DISCONNECT closes it are not sent (as for any client that leaves so).
            pub.expect_closed(5, allow=[m.puback(i + 1) for i in range(8, count)])
            watcher.expect_no_packet(0.3)
            # The window's 1 and the queue's 8: the queue had 6 at the hold, so the parked ones were handled too.
            got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
            self.assertEqual(got, list(range(9)), name)
        self.assertEqual(len(re.findall(HOLD_LINE, self.broker.log())), 2)
        self.assert_broker_healthy()

    def test_many_clients_with_one_message_each_lose_nothing_acknowledged(self):
        # Each client is held after its first message: those that found the queue past its room had that message
        # dropped though answered (before stop 58: 43 of 60 arrived). Now it is refused, and taken in their turn.
        log = self.many_clients_with_one_message_each(0)
        self.assertIn(b"is not taken nor answered, it is read again in its turn", log)

    def test_many_clients_each_with_a_message_in_flight_to_it_lose_nothing_acknowledged(self):
        # Until stop 60 a client with a message in flight to it was never held (its acks may be what drains a queue),
        # so past the queue's room its message was dropped though answered (43 of 60 arrived, 9 with 2 shards). It is held
        # now: its acks among what it sends meanwhile are handled at once.
        log = self.many_clients_with_one_message_each(0, sent_to_each=True)
        self.assertIn(b"is not taken nor answered, it is read again in its turn", log)

    def test_many_clients_with_one_retained_message_each_lose_nothing_acknowledged(self):
        # The same with retain: until stop 59 the store took each message before it was routed, so one past the room
        # could not be refused and was dropped though answered (43 of 60 arrived).
        log = self.many_clients_with_one_message_each(0, retain=True)
        self.assertIn(b"is not taken nor answered, it is read again in its turn", log)

    def test_a_held_client_is_answered_the_acks_and_pingreqs_it_sends_behind_the_message_that_holds_it(self):
        # Held, a client is not read further. Until stop 59 that held its PUBACKs of messages sent to it and its
        # PINGREQs too, behind the PUBLISH it waits with, for as long as its turn took: its window stalled, and with
        # many clients held for a slow subscriber its own keepalive timer (no PINGRESP) could close it. Now they are
        # handled at once; its PUBLISHes keep their order.
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/p", 1)])
        pub = self.on0("pub")
        pub.subscribe([("to/pub", 1)])
        frames = [m.publish("hold/p", b"%06d" % i + b"xx", qos=1, pid=i + 1) for i in range(20)]
        pub.send(b"".join(frames) + m.pingreq())  # held at its 8th, with 12 more and a PINGREQ in the same write
        for i in range(8):
            pub.expect(m.puback(i + 1))
        self.assertEqual(pub.read_packet(5).type, m.PINGRESP)
        other = self.on0("other")
        other.publish("to/pub", b"first", qos=1)
        other.publish("to/pub", b"second", qos=1)  # queued for pub: its window is 1
        first = pub.recv_publish(5, ack=False)
        self.assertEqual(first.payload, b"first")
        pub.send(m.puback(first.pid) + m.pingreq())
        second = pub.recv_publish(5, ack=False)  # sent once that PUBACK freed the window
        self.assertEqual(second.payload, b"second")
        self.assertEqual(pub.read_packet(5).type, m.PINGRESP)
        pub.send(m.puback(second.pid))
        pub.expect_no_packet(0.3)  # still held: its 9th message is not answered
        got = Collector(sub, 20, timeout=5)
        for i in range(8, 20):
            pub.expect(m.puback(i + 1), timeout=5)
        self.assertEqual([int(x.payload[:6]) for x in got.join()], list(range(20)))
        self.assertNotIn(b"dropped", self.broker.log())
        self.assert_broker_healthy("after-held-acks")

    def test_a_held_client_s_pingreq_behind_a_packet_that_closes_it_is_not_answered(self):
        # Nothing it sent after a packet that closes it counts: a PINGREQ behind a QoS 0 PUBLISH with DUP set (bad
        # flags) is not answered while it waits, and its turn closes it.
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/p", 1)])
        pub = self.on0("pub")
        self.flood(pub, "hold/p", 20)
        for i in range(8):
            pub.expect(m.puback(i + 1))  # held at its 8th
        pub.send(m.publish("hold/p", b"bad", qos=0, dup=True) + m.pingreq())
        pub.expect_no_packet(0.5)
        got = Collector(sub, 20, timeout=5)
        pub.expect_closed(5, allow=[m.puback(i + 1) for i in range(8, 20)])
        self.assertEqual([int(x.payload[:6]) for x in got.join()], list(range(20)))

    def test_a_held_qos2_client_s_pubrel_behind_a_resend_of_its_message_waits_for_it(self):
        # A QoS 2 client whose retry resent a message (DUP) before that message's PUBREC reached it, and then sent its
        # PUBREL, both behind the message it is held at: the PUBREL is not handled ahead of the resend, which would
        # then be taken as new and delivered twice. It waits, and the resend is answered as a duplicate.
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/q2", 2)])
        pub = self.on0("pub")
        pub.send(b"".join(m.publish("hold/q2", b"%06d" % i, qos=2, pid=i + 1) for i in range(20)))
        for i in range(8):
            pub.expect(m.pubrec(i + 1))  # held at its 8th
        pub.send(m.publish("hold/q2", b"%06d" % 7, qos=2, pid=8, dup=True) + m.pubrel(8) + m.pingreq())
        self.assertEqual(pub.read_packet(5).type, m.PINGRESP)  # (after the PUBREL: that one was looked at)
        pub.expect_no_packet(0.3)  # no PUBCOMP for 8 while the resend waits
        got = Collector(sub, 20, timeout=5)
        for i in range(8, 20):
            pub.expect(m.pubrec(i + 1), timeout=5)
        pub.expect(m.pubrec(8), timeout=5)  # the resend, a duplicate
        pub.expect(m.pubcomp(8), timeout=5)
        for i in range(8, 20):
            pub.send(m.pubrel(i + 1))
            pub.expect(m.pubcomp(i + 1), timeout=5)
        self.assertEqual([int(x.payload) for x in got.join()], list(range(20)))
        sub.expect_no_packet(0.3)  # 7 once

    def test_a_held_qos2_client_whose_connection_drops_loses_nothing_it_resends(self):
        # A QoS 2 publisher on a persistent session, held with PUBLISHes it sent meanwhile unread, loses its connection
        # (no DISCONNECT). Those are handled as it leaves, their ids recorded as received, so after it reconnects its
        # resends (DUP) are answered as duplicates and not routed again: they must not have been dropped as it left.
        # They are taken as a held client's were, past the queue's limit within its burst room (it is not held, it has
        # left). Until stop 57 a full queue dropped them and the subscriber never got them.
        self.held_qos2_client_drops(self.LIMITS, 0, 30)

    def test_a_held_qos2_client_that_leaves_more_than_the_burst_room_unread_loses_nothing_it_resends(self):
        # 90 to a queue of 8 (its burst room 42): those that find no room as it leaves are forgotten unanswered, their
        # ids not recorded, so that its resends are fresh. Until stop 58 they were dropped with their ids recorded.
        self.held_qos2_client_drops(self.LIMITS, 0, 90)
        self.assertIn(b"forgotten unanswered", self.broker.log())

    def test_a_held_qos2_client_with_a_message_in_flight_to_it_whose_connection_drops_loses_nothing_it_resends(self):
        # The same for a client with a message in flight to it once held (until stop 60 a queue never held such a
        # client), which is not held as it leaves either.
        self.held_qos2_client_drops(self.LIMITS, 0, 30, sent_to_it=True)


shard_variants(PublisherHoldCases, globals())


GATE_LINE = rb"queued, three quarters of its limit: shard 1 holds its clients publishing \S+ to it"


class PublisherHoldAcrossShards(PublisherHoldBase, BrokerTest):
    """The same hold for a publisher on another shard than its subscriber: the subscriber's shard tells the publisher's
    to hold its clients on that topic's filter (k_gate_close); a client there whose message finds no credit has it
    refused (not answered, left unread) and waits, and the queue's shard gives that shard credit in the client's turn
    as the queue drains."""

    SHARDS = 2

    # One in flight, 40 queued: held from 30 queued. (A quarter of the limit past it, 10 here, takes what the
    # publisher's shard routes before the word to hold reaches it.)
    FAR_LIMITS = {"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 40}

    def held_far(self, topic: str, hold_ms: int, sub_kw=None) -> tuple:
        """A subscriber on shard 0 that takes nothing and a publisher on shard 1 that sends one QoS 1 message at a time
        until one is not answered: (sub, pub, messages sent). 1 in flight and 30 queued; the next finds the queue at
        its mark and closes the gate; the first past its credit is refused and holds the publisher."""
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": hold_ms})
        sub = self.on0("sub", **(sub_kw or {}))
        sub.subscribe([(topic, 1)])
        pub = self.client(self.cid("pub", 1))
        sent = self.send_until_held(pub, topic, 0)
        self.assertNotIn(b"dropped", self.broker.log())
        return sub, pub, sent

    def send_until_held(self, pub, topic: str, first: int) -> int:
        """Sends QoS 1 messages first, first + 1, ... one at a time to an empty queue of 40 (at its mark at 30) until
        one is not answered; returns how many were sent in all (the last one unanswered)."""
        for i in range(first, first + 60):
            if i - first > 30:
                time.sleep(0.05)  # the word to hold comes back through the subscriber's shard: a busy host is slow
            pub.send(m.publish(topic, b"%06d" % i + b"xx", qos=1, pid=i % 65535 + 1))
            try:
                pub.expect(m.puback(i % 65535 + 1), timeout=0.5)
            except AssertionError:
                self.assertGreaterEqual(i - first, 32)
                self.assertLess(i - first, 41)
                return i + 1
        self.fail("the publisher was never held: " + self.broker.log().decode()[-5000:])

    def test_a_publisher_on_another_shard_is_held_and_loses_nothing(self):
        sub, pub, sent = self.held_far("hold/far", 10000)
        self.assertRegex(self.broker.log(), GATE_LINE)
        # Two more on that shard, 100 pipelined each: the first message of each finds the credit spent and is
        # refused, and they are read again in turn as credit comes.
        others = [self.client(self.cid(f"pub{k}", 1)) for k in range(2)]
        for k, o in enumerate(others):
            o.send(b"".join(m.publish("hold/far", b"%d%05d" % (k + 1, i) + b"xx", qos=1, pid=i + 1) for i in range(100)))
        got = {}
        for n in range(sent + 200):
            try:
                x = sub.recv_publish(timeout=5)
            except AssertionError:
                print(n, got, self.broker.log().decode())
                raise
            got.setdefault(int(x.payload[:1]), []).append(int(x.payload[1:6]))
            if n % 40 == 0:
                time.sleep(0.05)  # slower now and then: the queue fills again
        self.assertEqual(got, {0: list(range(sent)), 1: list(range(100)), 2: list(range(100))})
        pub.expect(m.puback(sent))
        for o in others:
            for i in range(100):
                o.expect(m.puback(i + 1))
        sub.expect_no_packet(0.2)
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertNotIn(b"nothing taken from its queue", log)
        self.assertRegex(log, rb"client \S+ is not read until a queue on shard 0 it publishes hold/far to is below")

    def test_messages_over_a_quarter_of_the_byte_limit_hold_their_publisher_and_lose_nothing(self):
        self.large_messages_lose_nothing(1)

    def test_its_first_gate_closed_is_logged_after_holds_of_its_own(self):
        # Two clients of the subscriber's shard held for its queue (logged as the 1st and 2nd holds), then a client of
        # the other shard's message finds it closed: that gate is logged too, as the first of its kind (with one count
        # for every kind it was the 3rd, not logged; the fan-in across shards missed it in CI so).
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/far", 1)])
        for k in range(2):
            self.flood(self.on0(f"near{k}"), "hold/far", 60, first=k * 1000)
            self.wait_until(lambda: len(re.findall(rb"client \S+ is not read until", self.broker.log())) > k, 5,
                            f"near{k} held")
        self.assertNotRegex(self.broker.log(), rb"holds its clients publishing")
        self.client(self.cid("far", 1)).send(m.publish("hold/far", b"far", qos=1, pid=1))
        self.wait_until(lambda: re.search(rb"queued, [^:]+: shard 1 holds its clients publishing hold/far to it until",
                                          self.broker.log()), 5, "the gate closed for shard 1 logged")
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_burst_on_another_shard_before_its_gate_closes_loses_nothing(self):
        # 200 in one write, routed by the publisher's shard before the word to hold comes back, and offered to the
        # queue of 40 in one go (its subscriber, a window of 1, cannot take any meanwhile): it takes what was on its
        # way past its quarter of slack (within mqtt.max_cross_shard_bytes), not one dropped.
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/+", 1), ("more/+", 1)])
        got = Collector(sub, 200, timeout=5)
        pub = self.client(self.cid("pub", 1))
        pub.send(b"".join(m.publish("hold/burst", b"%06d" % i, qos=1, pid=i + 1) for i in range(200)))
        for i in range(200):
            pub.expect(m.puback(i + 1), timeout=5)
        self.assertEqual([int(x.payload) for x in got.join()], list(range(200)))
        self.assertNotIn(b"dropped", self.broker.log())
        self.assertRegex(self.broker.log(), GATE_LINE)
        # 2000 in one write on a topic of another filter, not gated yet (the gate closed for hold/+): more than the
        # queue's burst room (four times its limit more than its quarter, 50 + 160, and 1 in the window), which
        # dropped the rest when the publisher's shard routed the whole write before the word to close came back
        # (before stop 57: 211 of 300 arrived). That shard now has
        # at most a third of the room (60) on its way there for queues that cannot hold yet: the message that would
        # pass it is refused (59 on their way) and its client waits, unread, until the queue's shard has taken the
        # older half, and then its gate holds it.
        got = Collector(sub, 2000, timeout=10)
        pub.send(b"".join(m.publish("more/new", b"%06d" % i, qos=1, pid=i + 1) for i in range(2000)))
        for i in range(2000):
            pub.expect(m.puback(i + 1), timeout=10)
        self.assertEqual([int(x.payload) for x in got.join()], list(range(2000)))
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertRegex(log, rb"client \S+ is not read until shard 0 has taken more of the messages routed to it "
                              rb"for queues that could not hold their publishers yet \(59 on their way")
        self.assertIn(b"holds its clients publishing more/new to it", log)

    def test_many_clients_on_another_shard_with_one_message_each_lose_nothing_acknowledged(self):
        # Across shards each new topic had to close a gate of its own, a round trip after its message was answered
        # (before stop 58: 43 of 60 arrived). Now the gate closes for the subscriber's filter (many/#), and the
        # message that would pass the bound on what is on its way, or the gate's credit, is refused instead.
        log = self.many_clients_with_one_message_each(1)
        self.assertRegex(log, rb"shard 1 holds its clients publishing many/\d+ to it")
        self.assertRegex(log, rb"is not read until a queue on shard 0 it publishes many/\d+ to")

    def test_many_clients_on_another_shard_each_with_a_message_in_flight_to_it_lose_nothing_acknowledged(self):
        # The same across shards (until stop 60 they were sent on past their gate: 9 of 60 arrived).
        log = self.many_clients_with_one_message_each(1, sent_to_each=True)
        self.assertRegex(log, rb"is not read until a queue on shard 0 it publishes many/\d+ to")

    def test_many_clients_on_another_shard_with_one_retained_message_each_lose_nothing_acknowledged(self):
        # Retained, the update every other shard stores is its live copy; for one shard's subscribers alone it now goes
        # there as a message a gate may refuse, stored as it arrives (until stop 59 it was not gated, and a queue
        # past its room dropped it though it was answered: 9 of 60 arrived).
        log = self.many_clients_with_one_message_each(1, retain=True)
        self.assertRegex(log, rb"is not read until a queue on shard 0 it publishes many/\d+ to")

    def test_a_retained_message_whose_client_a_closed_gate_cannot_hold_is_stored_and_delivered_unflagged(self):
        # A client whose hold is waived (it has a message in flight to it and sent more than it may leave unread while
        # held) cannot be held: its retained message, refused at the closed gate, is handled again and goes on as a
        # plain message (push_gated). It carries the retained update, which the queue's shard must store (the
        # publishers' shard sends it no other copy) and deliver without the retain flag. (Until stop 60 a client with
        # a message in flight to it was never held, and played this part without the rest.)
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("st/#", 1)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "st/a", 0)  # the gate is closed for st/#, its credit spent
        b = self.client(self.cid("b", 1))
        self.put_one_in_flight(b, "b", shard=1)
        b.send(m.publish("st/b", b"state", qos=1, retain=True, pid=1))
        b.expect_no_packet(0.3)  # refused: held at the gate
        # 20 KiB more (QoS 0, to a topic nobody reads) while held: its hold is waived and what it kept is handled.
        b.send(b"".join(m.publish("junk/b", b"j" * 1000, qos=0) for _ in range(20)))
        b.expect(m.puback(1), timeout=5)
        for shard in range(2):
            later = self.client(self.cid(f"later{shard}-", shard))
            later.subscribe([("st/b", 0)])
            stored = later.recv_publish(5)
            self.assertEqual((stored.payload, stored.retain), (b"state", True), f"stored on shard {shard}")
        got = Collector(slow, sent + 1, timeout=5)
        a.expect(m.puback(sent), timeout=5)
        live = [x for x in got.join() if x.topic == "st/b"]
        self.assertEqual([(x.payload, x.retain) for x in live], [(b"state", False)])
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertIn(b"held with messages in flight to it, sent more than 16384 bytes past the first packet it kept", log)

    def test_a_queue_of_large_messages_at_its_mark_takes_smaller_ones_on_their_way_past_its_quarter(self):
        # No mqtt.max_queued_bytes: past its quarter a queue takes what was on its way from another shard up to
        # mqtt.max_cross_shard_bytes (64 KiB here) of those messages. Until stop 59 that counted the queue's whole bytes,
        # so a queue whose 9.5 KiB messages at its mark passed 64 KiB had no such room, and the smaller messages another
        # client's shard routed to it on another filter (not gated yet) were dropped past the quarter though answered.
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 8, "mqtt.max_cross_shard_bytes": 65536,
                         "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("big/#", 1), ("small/#", 1)])
        a = self.client(self.cid("a", 1))
        sent = 0
        for i in range(20):
            a.send(m.publish("big/a", b"%06d" % i + b"x" * 9722, qos=1, pid=i + 1))
            try:
                a.expect(m.puback(i + 1), timeout=1.5)  # (a wait for the bound on what is on its way ends sooner)
            except AssertionError:
                sent = i + 1  # refused: the gate for big/# is closed
                break
        # 1 in the window, 6 queued, the one that found the queue at its mark (68 KB queued), and the refused one.
        self.assertGreaterEqual(sent, 9)
        b = self.client(self.cid("b", 1))
        b.send(b"".join(m.publish("small/b", b"%06d" % (100 + k), qos=1, pid=k + 1) for k in range(20)))
        time.sleep(0.5)  # all routed (or refused) before the subscriber takes any
        got = Collector(sub, sent + 20, timeout=5)
        a.expect(m.puback(sent), timeout=5)
        for k in range(20):
            b.expect(m.puback(k + 1), timeout=5)
        self.assertEqual(sorted(int(x.payload[:6]) for x in got.join()), list(range(sent)) + list(range(100, 120)))
        sub.expect_no_packet(0.2)
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_wildcard_gate_lets_a_topic_another_subscriber_gets_too_go_ungated(self):
        # The gate closes for the slow subscriber's filter (ex/#), and a fast subscriber on its shard gets ex/fast too,
        # by a filter of its own: the publishers' shard sees a filter there that no gate holds take ex/fast, and lets
        # that topic go ungated from its first message (until stop 74 the first one was refused and waited for a turn
        # of the slow queue, and only the word that it had reached others too, k_gate_drop, let the topic go). The
        # fast subscriber is not held to the slow one's pace (the slow queue drops those past its limit), while the
        # gate goes on holding the filter's other topics.
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("ex/#", 1)])
        fast = self.on0("fast")
        fast.subscribe([("ex/fast", 1)])
        probe = self.client(self.cid("probe", 1))
        probe.subscribe([("probe/x", 0)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow", 0)  # its last one refused
        b = self.client(self.cid("b", 1))
        fast_got = Collector(fast, 31, timeout=5)
        # 31 pipelined (within the fast one's queue) go at once though the slow subscriber takes nothing meanwhile.
        b.send(b"".join(m.publish("ex/fast", b"%06d" % (900000 + k), qos=1, pid=k + 1) for k in range(31)))
        for k in range(31):
            b.expect(m.puback(k + 1), timeout=5)
        self.assertEqual([int(x.payload[:6]) for x in fast_got.join()], list(range(900000, 900031)))
        with self.assertRaises(AssertionError):
            a.expect(m.puback(sent), timeout=0.5)  # still held: the slow queue took nothing
        got = [int(x.payload[:6]) for x in slow.recv_publishes(15)]  # room below the mark: a turn, with credit
        a.expect(m.puback(sent), timeout=5)
        # The gate still holds ex/slow: past its turn's credit, a's next message is refused, not taken past the mark.
        self.flood(a, "ex/slow", 20, first=sent)
        answered = 0
        with self.assertRaises(AssertionError):
            for i in range(20):
                a.expect(m.puback(sent + i + 1), timeout=0.5)
                answered += 1
        got += [int(p[:6]) for p in read_until_quiet(slow, quiet=1.0)]
        for i in range(answered, 20):
            a.expect(m.puback(sent + i + 1), timeout=5)
        got += [int(p[:6]) for p in read_until_quiet(slow, quiet=0.5)]
        self.assertEqual([i for i in got if i < 900000], list(range(sent + 20)))
        mine = [i for i in got if i >= 900000]
        self.assertEqual(mine, sorted(set(mine)))
        log = self.broker.log()
        self.assertNotIn(b"message on ex/slow dropped", log)
        self.assertIn(b"message on ex/fast dropped", log)  # the slow one's, past its limit
        # The fast one leaves: ex/fast goes to the slow one alone again, and the end of its route (k_route_del) has
        # the gate hold ex/fast again. 300 in one write, more than the slow queue's burst room (210): none lost.
        fast.unsubscribe(["ex/fast"])
        # A message from shard 0 to a subscriber on shard 1, sent after the unsubscribe, comes after the route's end
        # in that queue: once it arrives, shard 1 has gated ex/fast again.
        probe.publish("probe/x", b"after", qos=0)
        self.assertEqual(probe.recv_publish().payload, b"after")
        b.send(b"".join(m.publish("ex/fast", b"%06d" % (910000 + k), qos=1, pid=1000 + k) for k in range(300)))
        time.sleep(0.5)  # routed, or refused, before the slow one reads
        got = Collector(slow, 300, timeout=5)
        for k in range(300):
            b.expect(m.puback(1000 + k), timeout=10)
        self.assertEqual([int(x.payload[:6]) for x in got.join()], list(range(910000, 910300)))

    def test_publishers_on_new_topics_a_gated_subscriber_takes_by_two_filters_lose_nothing(self):
        # Eight publishers, each on a topic of its own that the slow queue takes alone by ex/# and ex/two/+ (no gate
        # holds the latter): each topic is asked about, and its publisher held for the answer. (Sent on while asking,
        # as in a2e9f4a's first version, each new topic's first messages passed the queue's mark: 88 of these 400 were
        # dropped.)
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("ex/#", 1), ("ex/two/+", 1)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow", 0)
        pubs = [self.client(self.cid(f"b{t}", 1)) for t in range(8)]
        for t, b in enumerate(pubs):
            b.send(b"".join(m.publish(f"ex/two/t{t}", b"%06d" % (900000 + 50 * t + k), qos=1, pid=k + 1)
                            for k in range(50)))
            time.sleep(0.2)  # each asked about and answered before the next
        got = Collector(slow, sent + 400, timeout=20)
        for b in pubs:
            for k in range(50):
                b.expect(m.puback(k + 1), timeout=20)
        a.expect(m.puback(sent), timeout=5)
        msgs = [int(x.payload[:6]) for x in got.join()]
        self.assertEqual([i for i in msgs if i < 900000], list(range(sent)))
        for t in range(8):
            self.assertEqual([i for i in msgs if 900000 + 50 * t <= i < 900050 + 50 * t],
                             list(range(900000 + 50 * t, 900050 + 50 * t)))
        self.assertNotIn(b"dropped", self.broker.log())

    def test_past_64_new_topics_a_fast_subscriber_gets_too_each_is_answered_in_a_round_trip(self):
        # The gate closed for ex/# keeps the answers for 64 topics (exempt, pinned); a fast subscriber on the slow
        # one's shard takes ex/fast/+. 100 new topics in one write: each asked about in turn and let go, the 65th
        # and later in an earlier one's place (until stop 75 they waited for a turn of the slow queue, which takes
        # nothing here: the hold's limit let the client go and the next message found the gate again).
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("ex/#", 1)])
        fast = self.on0("fast")
        fast.subscribe([("ex/fast/+", 1)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow", 0)
        b = self.client(self.cid("b", 1))
        # (In writes of 20: those let go at once stay within the fast one's queue, which holds nobody for a topic
        # another subscriber gets too.) 36 of the first round's topics were forgotten for the last 36 and are asked
        # about again: the second round goes the same way.
        for base in (900000, 910000):
            for w in range(5):
                fast_got = Collector(fast, 20, timeout=8)
                b.send(b"".join(m.publish(f"ex/fast/t{k}", b"%06d" % (base + k), qos=1, pid=base % 1000 + k + 1)
                                for k in range(20 * w, 20 * w + 20)))
                for k in range(20 * w, 20 * w + 20):
                    b.expect(m.puback(base % 1000 + k + 1), timeout=8)
                self.assertEqual([int(x.payload[:6]) for x in fast_got.join()],
                                 list(range(base + 20 * w, base + 20 * w + 20)))
        with self.assertRaises(AssertionError):
            a.expect(m.puback(sent), timeout=0.5)  # the gate still holds ex/slow: the slow queue took nothing
        got = [int(p[:6]) for p in read_until_quiet(slow, quiet=1.0)]
        a.expect(m.puback(sent), timeout=5)
        got += [int(p[:6]) for p in read_until_quiet(slow, quiet=0.5)]
        self.assertEqual([i for i in got if i < 900000], list(range(sent)))
        self.assertNotIn(b"message on ex/slow dropped", self.broker.log())

    def test_publishers_on_more_new_topics_than_a_gate_keeps_answers_for_lose_nothing(self):
        # 100 topics the slow queue takes alone by ex/# and ex/two/+, more than the 64 a gate keeps pinned: each
        # answer may take the place of another publisher's topic before that one is read again. A client read again
        # takes the answer to its own question with it, so it is not sent to ask again (a version that kept only
        # the sets spun, clients held and read again 262,144 times in 6 s, and its queue, taking nothing, counted as
        # stuck and dropped). Ten publishers, three rounds over their ten topics each in one write: none lost.
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("ex/#", 1), ("ex/two/+", 1)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow", 0)
        pubs = [self.client(self.cid(f"b{t}", 1)) for t in range(10)]
        for t, b in enumerate(pubs):
            b.send(b"".join(m.publish(f"ex/two/p{t}k{k % 10}", b"%06d" % (900000 + 30 * t + k), qos=1, pid=k + 1)
                            for k in range(30)))
        got = Collector(slow, sent + 300, timeout=30)
        for b in pubs:
            for k in range(30):
                b.expect(m.puback(k + 1), timeout=30)
        a.expect(m.puback(sent), timeout=5)
        msgs = [int(x.payload[:6]) for x in got.join()]
        self.assertEqual([i for i in msgs if i < 900000], list(range(sent)))
        for t in range(10):
            self.assertEqual([i for i in msgs if 900000 + 30 * t <= i < 900030 + 30 * t],
                             list(range(900000 + 30 * t, 900030 + 30 * t)))
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_topic_let_go_for_a_subscriber_that_left_a_filter_the_slow_one_keeps_is_held_again(self):
        # ex/t reaches the slow session by ex/# and by its ex/+ at QoS 0, and a fast subscriber's ex/+: the answer is
        # that others get it, and the gate lets it go. The fast one unsubscribes; the slow one keeps ex/+, so no
        # route's end tells the publishers' shard. The next message finds the slow queue alone at its mark: its shard
        # tells the gate to hold the topic again (k_gate_pin). 300 in one write, past the burst room: none lost.
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("ex/#", 1), ("ex/+", 0)])
        fast = self.on0("fast")
        fast.subscribe([("ex/+", 1)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow/x", 0)
        b = self.client(self.cid("b", 1))
        # (Five: within the slow queue's limit, which past its mark would drop what others get too.)
        b.send(b"".join(m.publish("ex/t", b"%06d" % (800000 + k), qos=1, pid=k + 1) for k in range(5)))
        for k in range(5):
            b.expect(m.puback(k + 1), timeout=5)  # let go: the fast one gets them at once
        self.assertEqual([int(x.payload[:6]) for x in fast.recv_publishes(5)], list(range(800000, 800005)))
        fast.unsubscribe(["ex/+"])  # (the slow one keeps ex/+: no route's end goes to shard 1)
        b.send(b"".join(m.publish("ex/t", b"%06d" % (900000 + k), qos=1, pid=100 + k) for k in range(300)))
        time.sleep(0.5)  # routed, or refused, before the slow one reads
        got = Collector(slow, sent + 305, timeout=20)
        for k in range(300):
            b.expect(m.puback(100 + k), timeout=20)
        a.expect(m.puback(sent), timeout=5)
        msgs = [int(x.payload[:6]) for x in got.join()]
        self.assertEqual([i for i in msgs if i < 800000], list(range(sent)))
        self.assertEqual([i for i in msgs if 800000 <= i < 900000], list(range(800000, 800005)))
        self.assertEqual([i for i in msgs if i >= 900000], list(range(900000, 900300)))
        log = self.broker.log()
        self.assertNotIn(b"message on ex/t dropped", log)
        self.assertNotIn(b"message on ex/slow/x dropped", log)

    def gated_alone_by_two_filters(self, filters: list, topic: str) -> None:
        """The slow subscriber takes `topic` alone, by two of its filters, one of which no gate holds: the publishers'
        shard lets the topic go and asks, and the queue's shard answers that the queue is its only subscriber there
        (k_gate_pin), so the topic is gated again. After a client is held on ex/slow, 300 in one write to `topic`, more
        than the queue's burst room past its mark: none lost."""
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe(filters)
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow", 0)
        b = self.client(self.cid("b", 1))
        b.send(b"".join(m.publish(topic, b"%06d" % (900000 + k), qos=1, pid=k + 1) for k in range(300)))
        time.sleep(0.5)  # routed, or refused, before the slow one reads
        got = Collector(slow, sent + 300, timeout=20)
        for k in range(300):
            b.expect(m.puback(k + 1), timeout=20)
        a.expect(m.puback(sent), timeout=5)
        msgs = [int(x.payload[:6]) for x in got.join()]
        self.assertEqual([i for i in msgs if i < 900000], list(range(sent)))
        self.assertEqual([i for i in msgs if i >= 900000], list(range(900000, 900300)))
        self.assertNotIn(b"dropped", self.broker.log())

    def refused_on_a_pinned_topic(self, shards: int = 2):
        """ex/two/t reaches the slow session alone, by ex/# and by its ex/two/+ at QoS 0: the gate pins it, and c's
        message on it is refused (held behind a, whose last message the gate holds: asked about, answered, then held
        for credit). (slow, a, a's sent, c)."""
        self.SHARDS = shards
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe([("ex/#", 1), ("ex/two/+", 0)])
        a = self.client(self.cid("a", 1))
        sent = self.send_until_held(a, "ex/slow", 0)
        c_id = self.cid("c", 1)
        c = self.client(c_id)
        c.send(m.publish("ex/two/t", b"%06d" % 800000, qos=1, pid=1))
        # As the log says, at the shard's 1st, 2nd, 4th... gated hold: c's is the 2nd (a's the 1st). Should a have
        # been held twice, the line does not come, and the check below alone says that c is held.
        held = f"client {c_id} is not read until a queue on shard 0 it publishes ex/two/t to".encode()
        deadline = time.monotonic() + 5
        while held not in self.broker.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.assertRaises(AssertionError):
            c.expect(m.puback(1), timeout=0.5)  # pinned, and held behind a
        return slow, a, sent, c

    def a_answered_once_slow_reads(self, slow, a, sent) -> list:
        """a's last message stays held until the slow one reads, then it is answered and all of a's arrive in order;
        returns what the slow one got (6-digit numbers)."""
        with self.assertRaises(AssertionError):
            a.expect(m.puback(sent), timeout=0.5)  # the gate still holds ex/slow
        got = [int(p[:6]) for p in read_until_quiet(slow, quiet=1.0)]
        a.expect(m.puback(sent), timeout=10)
        got += [int(p[:6]) for p in read_until_quiet(slow, quiet=1.0)]
        self.assertEqual([i for i in got if i < 800000], list(range(sent)))
        return got

    def test_a_client_refused_on_a_pinned_topic_goes_at_a_new_routes_start(self):
        # A fast subscriber takes ex/+/t, a filter new on the slow one's shard: the route's start (k_route_add)
        # unpins ex/two/t at the publishers' shard, where c, refused its message on it, is read again, asked about
        # and let go in a round trip (until stop 76 it waited for a turn of the slow queue, which takes nothing here:
        # 10 s, the hold's limit).
        slow, a, sent, c = self.refused_on_a_pinned_topic()
        fast = self.on0("fast")
        fast.subscribe([("ex/+/t", 1)])
        c.expect(m.puback(1), timeout=5)  # (not 10 s, the hold's limit)
        self.assertEqual(fast.recv_publish(timeout=5).payload, b"800000")
        self.a_answered_once_slow_reads(slow, a, sent)

    def refused_goes_when_subscribed_on(self, shard: int, shards: int):
        """c, refused its message on the pinned ex/two/t, is answered within 5 s (not the hold's 10 s) of a subscriber
        of ex/two/t on `shard` (not the slow one's), which gets the message."""
        slow, a, sent, c = self.refused_on_a_pinned_topic(shards)
        other = self.client(self.cid("other", shard))
        other.subscribe([("ex/two/t", 1)])
        c.expect(m.puback(1), timeout=5)
        self.assertEqual(other.recv_publish(timeout=5).payload, b"800000")
        self.a_answered_once_slow_reads(slow, a, sent)

    def test_a_client_refused_on_a_pinned_topic_goes_when_a_subscriber_on_its_shard_takes_it(self):
        # A subscriber on the publishers' own shard takes ex/two/t: c's message is for two shards now, which no gate
        # holds, so c, refused its message on it, is read again at the SUBACK and its message goes (until stop 76 it
        # waited for a turn of the slow queue, which takes nothing here: 10 s, the hold's limit).
        self.refused_goes_when_subscribed_on(1, shards=2)

    def test_a_client_refused_on_a_pinned_topic_goes_when_a_subscriber_on_a_third_shard_takes_it(self):
        # A route's start on a third shard (k_route_add there): c's message is for two shards now, which no gate holds,
        # so c is read again and its message goes (until stop 76 it waited for a turn of the slow queue: 10 s here).
        self.refused_goes_when_subscribed_on(2, shards=3)

    def test_a_pinned_topic_is_asked_about_anew_when_a_subscriber_takes_a_filter_the_slow_one_has(self):
        # ex/two/t reaches the slow session alone, by ex/# and by its ex/two/+ at QoS 0: the gate pins it (c is held
        # behind a). A fast subscriber then takes ex/two/+ too, on the slow one's shard; the route was there already
        # (the slow session's), so no route's start goes to the publishers' shard, but the queue's shard tells it
        # (k_gate_join): the topic is asked about anew, and b's 31 messages go to the fast one at once, not at the
        # pace of a slow queue that takes nothing meanwhile (until stop 75 they waited behind a and c). c, refused
        # its message on the topic, is read again at the word and its message goes too (until stop 76 it waited for
        # the slow queue's turn, and here for the slow one to read).
        slow, a, sent, c = self.refused_on_a_pinned_topic()
        fast = self.on0("fast")
        fast.subscribe([("ex/two/+", 1)])
        # A message from the fast one's shard to a subscriber on the publishers' comes after the word in that queue.
        probe = self.client(self.cid("probe", 1))
        probe.subscribe([("probe/x", 0)])
        self.on0("probe0").publish("probe/x", b"after", qos=0)
        self.assertEqual(probe.recv_publish().payload, b"after")
        fast_got = Collector(fast, 32, timeout=5)
        c.expect(m.puback(1), timeout=5)  # a round trip: asked about, let go (not 10 s, the hold's limit)
        b = self.client(self.cid("b", 1))
        b.send(b"".join(m.publish("ex/two/t", b"%06d" % (900000 + k), qos=1, pid=k + 1) for k in range(31)))
        for k in range(31):
            b.expect(m.puback(k + 1), timeout=5)
        self.assertEqual([int(x.payload[:6]) for x in fast_got.join()], [800000] + list(range(900000, 900031)))
        got = self.a_answered_once_slow_reads(slow, a, sent)
        # (ex/two/t's, not held for the slow one now others get them, may be dropped past its limit: in order.)
        shared = [i for i in got if i >= 800000]
        self.assertEqual(shared, sorted(shared))
        self.assertNotIn(b"message on ex/slow dropped", self.broker.log())

    def test_a_slow_session_leaving_a_filter_another_of_its_own_covers_still_holds_its_publishers(self):
        # The slow session takes ex/p/t by ex/# and ex/p/+ and leaves ex/p/+: ex/# still brings every such topic to the
        # same queue, so its gate stays closed and a stays held. (Until stop 76 the gate opened, a's held message went,
        # and 100 more in one write passed the queue's limit: dropped, though acknowledged.)
        slow, a, sent = self.slow_holding_a([("ex/#", 1), ("ex/p/+", 1)], "ex/p/t")
        slow.unsubscribe(["ex/p/+"])
        self.held_then_all_taken(slow, a, sent, "ex/p/t")

    def slow_holding_a(self, filters: list, topic: str) -> tuple:
        """A slow session on shard 0 with `filters` that takes nothing (a queue of 40, hold limit 10 s), and a on shard 1
        held publishing to `topic`; returns them and how many a sent."""
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        slow = self.on0("slow")
        slow.subscribe(filters)
        a = self.client(self.cid("a", 1))
        return slow, a, self.send_until_held(a, topic, 0)

    def held_then_all_taken(self, slow, a, sent: int, topic: str):
        """a, held with `sent` messages out, stays held; 100 more in one write, and the slow one (reading now) gets every
        one in order, none dropped."""
        with self.assertRaises(AssertionError):
            a.expect(m.puback(sent), timeout=1.0)  # still held
        a.send(b"".join(m.publish(topic, b"%06d" % (sent + k) + b"xx", qos=1, pid=sent + k + 1) for k in range(100)))
        got = Collector(slow, sent + 100, timeout=30)
        for k in range(101):
            a.expect(m.puback(sent + k), timeout=30)
        self.assertEqual([int(x.payload[:6]) for x in got.join()], list(range(sent + 100)))
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_slow_session_leaving_a_filter_whose_held_topic_another_of_its_own_takes_still_holds_its_publishers(self):
        # The slow session takes ex/p/t/x by ex/p/+/x and ex/p/#, and leaves ex/p/#: ex/p/+/x does not cover it (not
        # ex/p/y), but takes the topic a was held on, so a stays held. (Until stop 77 the gate opened, and what a had
        # on the way passed the queue's limit: a probe lost 398 acknowledged messages in 20 s.) b, refused its message
        # on ex/p/y, ex/p/#'s alone, is read again when the gate drops ex/p/# (k_gate_unfilter).
        slow, a, sent = self.slow_holding_a([("ex/p/+/x", 1), ("ex/p/#", 1)], "ex/p/t/x")
        b = self.client(self.cid("b", 1))
        b.send(m.publish("ex/p/y", b"b", qos=1, pid=1))
        with self.assertRaises(AssertionError):
            b.expect(m.puback(1), timeout=1.0)  # held by the gate of ex/p/#
        slow.unsubscribe(["ex/p/#"])
        b.expect(m.puback(1), timeout=5)  # (not 10 s, the hold's limit)
        self.held_then_all_taken(slow, a, sent, "ex/p/t/x")

    def test_a_slow_session_leaving_the_one_filter_its_gate_was_told_still_holds_its_publishers(self):
        # The gate on a's shard closed for ex/p/+ alone; the slow session then takes ex/# too (no gate is told of it)
        # and leaves ex/p/+: the gate is told ex/# before it drops ex/p/+, so a stays held. (Without that, in a review
        # of 79f8922, the gate, left holding nothing, went, and a was let go though the queue was still fed.)
        slow, a, sent = self.slow_holding_a([("ex/p/+", 1)], "ex/p/t")
        slow.subscribe([("ex/#", 1)])
        slow.unsubscribe(["ex/p/+"])
        self.held_then_all_taken(slow, a, sent, "ex/p/t")

    def test_a_gated_subscriber_whose_other_filter_takes_a_topic_still_holds_its_publisher(self):
        # The gate closed for ex/# (the topic ex/slow is not ex/two/+'s).
        self.gated_alone_by_two_filters([("ex/#", 1), ("ex/two/+", 1)], "ex/two/a")

    def test_a_gated_subscriber_whose_qos0_filter_takes_a_topic_too_still_holds_its_publisher(self):
        # A QoS 0 filter is never told to a gate: ex/+ takes ex/slow too.
        self.gated_alone_by_two_filters([("ex/#", 1), ("ex/+", 0)], "ex/slow")

    def test_a_topic_gate_whose_session_has_a_qos0_filter_for_it_too_still_holds_its_publisher(self):
        # The gate closed for the exact filter ex/slow alone: ex/+ at QoS 0 takes it too.
        self.gated_alone_by_two_filters([("ex/slow", 1), ("ex/+", 0)], "ex/slow")

    def test_a_subscription_overlapping_a_gated_filter_on_no_held_topic_lets_nobody_go(self):
        # The gate holds the slow subscriber's filter hold/#: clients subscribing, on either shard, to filters that
        # overlap it but match no topic held (hold/other/x, hold/+/y) change nothing for hold/far, whose publisher
        # stays held (a wildcard subscriber would otherwise let its publishers go at every such subscription).
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/#", 1)])
        pub = self.client(self.cid("pub", 1))
        sent = self.send_until_held(pub, "hold/far", 0)
        for shard, f in ((0, "hold/other/x"), (1, "hold/+/y")):
            self.client(self.cid(f"o{shard}", shard)).subscribe([(f, 1)])
        with self.assertRaises(AssertionError):
            pub.expect(m.puback(sent), timeout=1.0)
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        pub.expect(m.puback(sent), timeout=5)
        got += [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(sent)))
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_held_qos2_client_on_another_shard_whose_connection_drops_loses_nothing_it_resends(self):
        # As within a shard: what it left unread is routed as it leaves as if no gate had closed, and the queue takes it
        # past its limit within the burst room.
        self.held_qos2_client_drops(self.FAR_LIMITS, 1, 90)  # (within mqtt.max_awaiting_rel = 100)

    def test_a_held_qos2_client_on_another_shard_that_leaves_more_than_the_burst_room_unread_loses_nothing(self):
        # 90 to a queue of 8: past the bound on what is on its way there, what it left is forgotten unanswered.
        self.held_qos2_client_drops(self.LIMITS, 1, 90)
        self.assertIn(b"forgotten unanswered", self.broker.log())

    def test_a_publisher_on_another_shard_waits_behind_those_held_below_the_mark(self):
        # A client of the queue's shard waits for room for a turn (9 free below the mark of 300, fewer than 32): a
        # client on the other shard that publishes then has its topic's gate closed, though the queue is below its
        # mark, rather than take that room; its next message goes still and holds it.
        sub, first = self.held_at_300("hold/line", 60000)
        got = [int(x.payload[:6]) for x in sub.recv_publishes(10)]
        far = self.client(self.cid("far", 1))
        # One at a time until one is not answered: the first is taken and closes the gate; once that reaches shard 1,
        # the next finds no credit there, is refused and holds its client. (50 ms before each after the first: the word
        # to close comes back through shard 0, which a loaded host may wake late, while shard 1 answers at once; seen
        # in a full run with all 8 answered before it came.)
        sent = self.until_unanswered(far, "hold/line", 1000, 8, slow_from=1)
        self.assertGreaterEqual(sent, 2)
        first.expect_no_packet(0.1)
        got += [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual([i for i in got if i < 1000], list(range(400)))
        self.assertEqual([i for i in got if i >= 1000], list(range(1000, 999 + sent + 1)))
        far.expect(m.puback(sent))
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertRegex(log, rb"clients held for it wait for room: shard 1 holds its clients publishing hold/line")

    def until_unanswered(self, client, topic: str, first: int, most: int, slow_from: int = 0) -> int:
        """Sends QoS 1 messages first, first + 1, ... (pids 1, 2, ...) one at a time until one is not answered within a
        second; returns how many were sent (the last unanswered). From the slow_from-th on, a pause before each: the
        word to hold comes back through the subscriber's shard."""
        for sent in range(1, most + 1):
            if slow_from and sent > slow_from:
                time.sleep(0.05)
            client.send(m.publish(topic, b"%06d" % (first + sent - 1), qos=1, pid=sent))
            try:
                client.expect(m.puback(sent), timeout=1)
            except AssertionError:
                return sent
        self.fail("the publisher was never held: " + self.broker.log().decode()[-3000:])

    def test_credit_nobody_on_the_other_shard_needs_comes_back_at_once(self):
        # A window of 40 and a queue of 40: the subscriber acks its 40 in one write, so the queue (30 and the held
        # message) moves into the window at once and the held client's turn gets all 30 free as credit. It has one
        # message left to send: its shard gives the rest back (k_gate_return), else the queue's shard would count it as
        # queued and hold its own publishers at an empty queue until it ran out (publisher_hold_ms, 10 s here).
        self.use_broker({"mqtt.max_inflight": 40, "mqtt.max_queued_messages": 40, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/back", 1)])
        pub = self.client(self.cid("pub", 1))
        sent = self.until_unanswered(pub, "hold/back", 0, 100, slow_from=60)
        first = sub.recv_publishes(40, ack=False)
        sub.send(b"".join(m.puback(x.pid) for x in first))
        pub.expect(m.puback(sent), timeout=2)  # its turn: the last one is read
        time.sleep(0.3)
        near = self.on0("near")
        self.flood(near, "hold/back", 20, first=1000)
        for i in range(20):
            near.expect(m.puback(1000 + i + 1), timeout=2)
        got = [int(x.payload) for x in first] + [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(sent)) + list(range(1000, 1020)))
        self.assertNotIn(b"dropped", self.broker.log())

    def test_publishers_on_both_shards_share_the_queue_and_lose_nothing(self):
        # One held on the other shard, then one there and one on the subscriber's shard, 100 pipelined each: the
        # subscriber's shard's own client waits its turn too, and counts the credit given to the other shard as
        # queued, so together they never take the queue past its limit's quarter of slack.
        sub, pub, sent = self.held_far("hold/mix", 10000)
        far = self.client(self.cid("far", 1))
        near = self.on0("near")
        for k, o in ((1, far), (2, near)):
            o.send(b"".join(m.publish("hold/mix", b"%d%05d" % (k, i) + b"xx", qos=1, pid=i + 1) for i in range(100)))
        got = {}
        for n in range(sent + 200):
            x = sub.recv_publish(timeout=5)
            got.setdefault(int(x.payload[:1]), []).append(int(x.payload[1:6]))
            if n % 25 == 0:
                time.sleep(0.03)  # slower now and then: the queue fills again
        self.assertEqual(got, {0: list(range(sent)), 1: list(range(100)), 2: list(range(100))})
        for o in (far, near):
            for i in range(100):
                o.expect(m.puback(i + 1))
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertNotIn(b"is read again", log)  # no hold ran out
        self.assertRegex(log, HOLD_LINE)  # the subscriber's shard's own client was held too

    def test_a_client_held_on_another_shard_that_closes_holds_nobody_behind_it(self):
        # The client on shard 1 waits at its gate for a turn that needs room for several (6-15 free below the mark of
        # a queue of 400); it closes, and its shard withdraws the turn asked for it (k_gate_unwait): a client of the
        # queue's shard that publishes then is not held behind a turn for a client gone.
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 400, "mqtt.publisher_hold_ms": 60000})
        sub = self.on0("sub")
        sub.subscribe([("hold/gonefar", 1)])
        far = self.client(self.cid("far", 1))
        self.flood(far, "hold/gonefar", 310)  # routed before the gate closes: all taken, the gate closed behind them
        for i in range(310):
            far.expect(m.puback(i + 1))
        # Its PUBACKs come before shard 0 has taken the flood (with node.smp_queue_size = 64 most of it waits in shard
        # 1's backlog): the gate is closed once shard 0 has found the queue at its mark.
        self.wait_until(lambda: re.search(GATE_LINE, self.broker.log()), 5, "the gate closed")
        # One at a time until one is not answered: the first past the gate's credit is answered and holds it (the word
        # to close the gate may reach shard 1 a message or two late).
        sent = 310
        while True:
            self.assertLess(sent, 320, "never held at its gate")
            far.send(m.publish("hold/gonefar", b"%06dxx" % sent, qos=1, pid=sent + 1))
            sent += 1
            try:
                far.expect(m.puback(sent), timeout=0.5)
            except AssertionError:
                break
        got = [int(x.payload[:6]) for x in sub.recv_publishes(25)]  # 326 - (sent - 1) free below the mark: no turn
        self.close_and_wait(far, self.cid("far", 1))
        time.sleep(0.2)  # its shard's word reaches the queue's
        later = self.on0("later")
        self.flood(later, "hold/gonefar", 2, first=1000)
        later.expect(m.puback(1001))
        later.expect(m.puback(1002), timeout=2)
        got += [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual([i for i in got if i < 1000], list(range(sent)))  # (its last one handled as it closed)
        self.assertEqual([i for i in got if i >= 1000], [1000, 1001])
        self.assertNotIn(b"dropped", self.broker.log())

    def test_publishers_on_two_other_shards_share_a_held_queue_and_lose_nothing(self):
        # Three shards: a subscriber on shard 0 and a publisher on each shard, 60 pipelined each (the first bursts of
        # shards 1 and 2 are routed before their gates close: the burst allowance takes both, with room for a slow
        # host to route some of what follows before the gates close too), then 100 more each in runs of 10 once the
        # queue is past its mark: each other shard's client is held at its gate and gets credit in its turn.
        self.use_broker({**self.FAR_LIMITS, "mqtt.publisher_hold_ms": 10000, "mqtt.publisher_hold_burst": 16},
                        shards=3)
        sub = self.client(client_id_on_shard("sub", 0, 3))
        sub.subscribe([("hold/three", 1)])
        pubs = [self.client(client_id_on_shard(f"p{k}", k, 3)) for k in range(3)]

        def send(first: int, n: int) -> None:
            for k, p in enumerate(pubs):
                p.send(b"".join(m.publish("hold/three", b"%d%05d" % (k, i) + b"xx", qos=1, pid=i + 1)
                                for i in range(first, first + n)))

        send(0, 60)
        for first in range(60, 160, 10):
            time.sleep(0.05)
            send(first, 10)
        got = {}
        for n in range(480):
            x = sub.recv_publish(timeout=5)
            got.setdefault(int(x.payload[:1]), []).append(int(x.payload[1:6]))
            if n % 25 == 0:
                time.sleep(0.03)  # slower now and then: the queue fills again
        self.assertEqual(got, {k: list(range(160)) for k in range(3)})
        for p in pubs:
            for i in range(160):
                p.expect(m.puback(i + 1))
        log = self.broker.log()
        self.assertNotIn(b"dropped", log)
        self.assertNotIn(b"is read again", log)  # no hold ran out
        for k in (1, 2):
            cid = re.escape(client_id_on_shard(f"p{k}", k, 3).encode())
            self.assertRegex(log, rb"client " + cid + rb" is not read until a queue on shard 0")

    def test_publishers_that_come_and_go_on_every_shard_lose_nothing_acknowledged(self):
        # Seeded churn on two and three shards: 12 publishers spread over the shards send QoS 1 in pipelined runs to a
        # slow subscriber on shard 0 (a queue of 50), and now and then one drops its connection in the middle of a run
        # (held or not, its gate's credit in flight or not) and connects again. Every PUBACKed message arrives, each
        # publisher's in the order sent, no PUBACK takes 5 s (the hold's limit is 2 s), the broker stays healthy.
        for shards in (2, 3):
            with self.subTest(shards=shards):
                self.churn(shards, random.Random(55 + shards))
                self.broker.stop()

    def churn(self, shards: int, rng: "random.Random") -> None:
        self.use_broker({"mqtt.max_inflight": 4, "mqtt.max_queued_messages": 50, "mqtt.publisher_hold_ms": 2000},
                        shards=shards)
        sub = self.client(client_id_on_shard("csub", 0, shards))
        sub.subscribe([("churn/#", 1)])
        stop = threading.Event()
        got = {}
        errors = []

        def reader() -> None:
            quiet_since = None
            while True:
                try:
                    x = sub.recv_publish(timeout=0.2)
                except AssertionError:
                    if stop.is_set():
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since > 1.0:
                            return
                    continue
                quiet_since = None
                k, seq = x.payload.split(b":")
                got.setdefault(int(k), []).append(int(seq))
                time.sleep(0.03 if rng.random() < 0.02 else 0.0005)

        acked = {}
        plans = [(k, random.Random(rng.random())) for k in range(12)]

        def publisher(k: int, prng: "random.Random") -> None:
            cid = client_id_on_shard(f"cp{k}", k % shards, shards)
            seq, pid = 0, 0
            deadline = time.monotonic() + 4
            try:
                pub = self.client(cid)
                while time.monotonic() < deadline:
                    run = []
                    for _ in range(prng.randint(1, 12)):
                        pid = pid % 65535 + 1
                        run.append((pid, seq))
                        seq += 1
                    pub.send(b"".join(m.publish(f"churn/{k}", b"%d:%d" % (k, s), qos=1, pid=p) for p, s in run))
                    if prng.random() < 0.15:
                        time.sleep(prng.random() * 0.01)
                        (pub.abort if prng.random() < 0.5 else pub.close)()
                        pub = self.client(cid)
                        continue
                    for p, s in run:
                        pub.expect(m.puback(p), timeout=5)
                        acked.setdefault(k, []).append(s)
            except Exception as e:  # noqa: BLE001 (reported by the main thread)
                errors.append(f"publisher {k}: {e!r}")

        threads = [threading.Thread(target=reader, daemon=True)]
        threads += [threading.Thread(target=publisher, args=p, daemon=True) for p in plans]
        for t in threads[1:]:
            t.start()
        threads[0].start()
        for t in threads[1:]:
            t.join(timeout=30)
        stop.set()
        threads[0].join(timeout=30)
        self.assertEqual(errors, [])
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread never finished")
        for k in range(12):
            mine = got.get(k, [])
            self.assertEqual(mine, sorted(set(mine)), f"publisher {k}: out of order or twice")
            missing = sorted(set(acked.get(k, [])) - set(mine))
            self.assertEqual(missing, [], f"publisher {k}: acknowledged but never delivered")
            self.assertGreater(len(acked.get(k, [])), 0)
        log = self.broker.log()
        self.assertRegex(log, HOLD_LINE)
        self.assertRegex(log, rb"is not read until a queue on shard 0")
        self.assert_broker_healthy("after-churn")

    def test_a_stuck_subscriber_on_another_shard_holds_its_publisher_at_most_publisher_hold_ms(self):
        sub, pub, sent = self.held_far("hold/far", 1000)
        held = time.monotonic()  # half a second after the hold began (held_far's wait)
        pub.expect(m.puback(sent), timeout=5)
        self.assertGreaterEqual(time.monotonic() - held, 0.3)
        # Let go: what it sends now passes the limit and is dropped, until the queue drains to half.
        self.flood(pub, "hold/far", 20, first=sent)
        for i in range(sent, sent + 20):
            pub.expect(m.puback(i + 1), timeout=5)
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]  # (the log is complete once they are routed)
        log = self.broker.log()
        self.assertRegex(log, rb"nothing taken from its queue \(\d+ messages\) for mqtt.publisher_hold_ms = 1000")
        self.assertIn(b"queue full (mqtt.max_queued_messages = 40)", log)
        self.assertEqual(got, list(range(len(got))))
        self.assertGreaterEqual(len(got), 41)
        self.assertLess(len(got), sent + 20)

    def test_a_subscriber_on_another_shard_whose_session_ends_lets_its_publisher_go_at_once(self):
        sub, pub, sent = self.held_far("hold/gone", 10000, sub_kw={"clean": True})
        sub.disconnect()
        pub.expect(m.puback(sent), timeout=2)
        pub.publish("hold/gone", b"after", qos=1)  # read as it comes (publish waits for its PUBACK)

    def test_a_persistent_subscriber_on_another_shard_that_leaves_and_comes_back_loses_nothing(self):
        # Its publisher's gate stays closed while the session is offline; back in time, the subscriber gets all.
        sub, pub, sent = self.held_far("hold/back", 10000, sub_kw={"clean": False})
        sub.abort()
        pub.expect_no_packet(0.5)
        sub = self.on0("sub", clean=False, expect=m.connack(session_present=True))
        got = [int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)]
        self.assertEqual(got, list(range(sent)))
        pub.expect(m.puback(sent), timeout=3)
        pub.publish("hold/back", b"999999after", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"999999after")
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_stuck_subscriber_on_another_shard_that_unsubscribes_lets_its_publisher_go_at_once(self):
        # The gate on the publisher's shard opens as the subscriber's shard drops the hold: the held message and the
        # next are answered at once, long before the hold's 10 s.
        sub, pub, sent = self.held_far("hold/unsub", 10000)
        sub.send(m.unsubscribe(7, ["hold/unsub"]))
        pub.expect(m.puback(sent), timeout=2)
        pub.publish("hold/unsub", b"after", qos=1)
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_subscriber_that_joins_a_topic_held_across_shards_lets_its_publisher_go_at_once(self):
        # On either shard: the queue's shard hears of the new route (from its own client or by k_route_add) and opens
        # the gate on the publisher's shard, long before the hold's 10 s.
        for shard in (0, 1):
            with self.subTest(shard=shard):
                sub, pub, sent = self.held_far(f"hold/join{shard}", 10000)
                fast = self.client(self.cid(f"fast{shard}", shard))
                fast.subscribe([(f"hold/join{shard}", 1)])
                pub.expect(m.puback(sent), timeout=2)
                # (Earlier ones, answered before, reach it only if its subscription came first on a slow host.)
                got = []
                while not got or got[-1] < sent - 1:
                    got.append(int(fast.recv_publish(timeout=2).payload[:6]))
                self.assertEqual(got[-1], sent - 1)
                pub.publish(f"hold/join{shard}", b"after", qos=1)
                self.assertEqual(fast.recv_publish(timeout=2).payload, b"after")

    def test_publishes_handed_over_with_the_connect_are_held_too(self):
        # Twelve clients homed on the subscriber's shard (0) each write CONNECT and 20 QoS 1 PUBLISHes at once. Those
        # the kernel gives to shard 1 (about half: at least one, or the test says so) reach shard 0 in the handover,
        # PUBLISHes and all, and are handled there as the connection's first bytes: they are held like any other
        # client's (they were routed unheld, and the queue dropped what passed its limit though it was PUBACKed).
        self.use_broker({"mqtt.max_inflight": 1, "mqtt.max_queued_messages": 40, "mqtt.publisher_hold_ms": 10000})
        sub = self.on0("sub")
        sub.subscribe([("hold/pipe", 1)])
        for k in range(12):
            c = self.raw()
            c.send(m.connect(self.cid(f"pipe{k}", 0)) +
                   b"".join(m.publish("hold/pipe", b"%02d%04d" % (k, i), qos=1, pid=i + 1) for i in range(20)))
            c.expect(m.CONNACK_OK)
        time.sleep(0.3)
        self.assertRegex(self.broker.log(), rb"client pipe\d+-\d+ \(\S+\) handed to shard 0")
        assert_bursts_in_order(self, sub.recv_publishes(12 * 20, timeout=5), 12, 20, 2, size=6)
        sub.expect_no_packet(0.3)
        self.assertNotIn(b"dropped", self.broker.log())

    def test_a_message_another_subscriber_gets_too_ends_the_hold_across_shards(self):
        # A second subscriber on the queue's shard: the held publisher's messages reach it too, so they can no longer
        # hold it there. Once it has spent the credit its slow subscriber gave, its next message finds no queue to
        # wait for and its shard is told to let it go (k_gate_drop): from then on the fast subscriber gets everything
        # at once and the slow one's queue drops past its limit, as within a shard.
        sub, pub, sent = self.held_far("hold/far", 10000)
        fast = self.on0("fast")
        fast.subscribe([("hold/#", 1)])
        for _ in range(5):  # the slow one takes a few: below its mark, it gives credit
            sub.recv_publish()
            time.sleep(0.02)
        # The held message and 10 rounds of 30 (each within the fast one's queue of 40).
        got = Collector(fast, 301, timeout=10)
        for r in range(10):
            self.flood(pub, "hold/far", 30, first=sent + 30 * r)
            deadline = time.monotonic() + 5
            while len(got.messages) < 1 + 30 * (r + 1) and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            msgs = got.join()
        except AssertionError:
            print(self.broker.log().decode()[-8000:])
            raise
        self.assertEqual([int(x.payload[:6]) for x in msgs], list(range(sent - 1, sent + 300)))
        for i in range(sent - 1, sent + 300):
            pub.expect(m.puback(i + 1), timeout=5)
        log = self.broker.log()
        self.assertIn(b"queue full (mqtt.max_queued_messages = 40)", log)
        self.assertNotRegex(log, rb"session fast\S*: queue full")
        self.assertNotIn(b"for mqtt.publisher_hold_ms = 10000 is read again", log)  # let go, not expired
        # The fast one leaves and the slow one drains: at its mark again, its queue closes a gate anew (the
        # publisher's shard told it it let the old one go), and what is sent then is held, not dropped.
        fast.disconnect()
        read_until_quiet(sub, quiet=0.5)
        first = sent + 300
        held_at = self.send_until_held(pub, "hold/far", first)
        got = [int(x.payload[:6]) for x in sub.recv_publishes(held_at - first - 1)]
        self.assertEqual(got, list(range(first, held_at - 1)))
        pub.expect(m.puback(held_at % 65535))  # read again once the queue is below its mark
        self.assertEqual(int(sub.recv_publish().payload[:6]), held_at - 1)

    def test_without_the_hold_a_publisher_on_another_shard_is_dropped_past_the_limit(self):
        self.use_broker({**self.LIMITS, "mqtt.publisher_hold_ms": 0})
        sub = self.on0("sub")
        sub.subscribe([("hold/far", 1)])
        pub = self.client(self.cid("pub", 1))
        for i in range(30):
            pub.publish("hold/far", b"%06d" % i, qos=1)
        self.assertEqual([int(p[:6]) for p in read_until_quiet(sub, quiet=0.5)], list(range(9)))
        self.assert_dropped_not_held(8)
        self.assertNotRegex(self.broker.log(), GATE_LINE)


class DescriptorLimitTest(BrokerTest):
    AUTO_START = False

    def test_out_of_descriptors_pauses_accepts_then_recovers(self):
        # With RLIMIT_NOFILE at 64 the accepts start failing with EMFILE while connections wait in the backlog. The
        # broker must neither spin on the failing accept nor log each attempt; once descriptors free up, the waiting
        # MQTT client and an admin request that came meanwhile are served.
        # Descriptors only (node.fixed_files = false): with the file table (the default), settled connections hold no
        # descriptor (see the next test).
        b = self.start_broker(1, {"node.fixed_files": False}, admin=True, nofile=64)
        self.port, self.admin_port = b.port, b.admin_port
        self.assertRegex(b.log().decode(), r"open-file limit 64 ")
        clients, waiting = [], None
        for i in range(80):
            c = self.raw()
            c.send(m.connect(f"fd{i}"))
            try:
                c.expect(m.CONNACK_OK, timeout=1.0)
            except AssertionError:
                # No CONNACK within 1 s: stuck in the backlog, if the broker says its accepts fail; else only slow on
                # a busy host, and then it must still be answered.
                failed, deadline = b"mqtt: accept failed: Too many open files", time.monotonic() + 5
                while time.monotonic() < deadline and failed not in b.log():
                    time.sleep(0.05)
                if failed in b.log():
                    waiting = c
                    break
                c.expect(m.CONNACK_OK, timeout=10.0)
            clients.append(c)
        self.assertIsNotNone(waiting, "80 connections fitted in 64 descriptors")
        self.assertGreater(len(clients), 20)
        answer = {}
        admin = threading.Thread(target=lambda: answer.update(r=request(self.admin_port, "GET", "/status",
                                                                        auth=None, timeout=20)))
        admin.start()
        self.addCleanup(admin.join, 25)
        time.sleep(0.3)
        before = cpu_seconds(b.proc.pid)
        time.sleep(2.0)
        used = cpu_seconds(b.proc.pid) - before
        self.assertLess(used, 0.5, f"{used:.2f} CPU-s in 2 s with accepts failing: spinning")
        log = b.log().decode("utf-8", "replace")
        for what in ("mqtt", "admin"):
            fails = re.findall(rf"{what}: accept failed: Too many open files", log)
            self.assertEqual(len(fails), 1, f"{what}: one warning per episode, not one per attempt: {fails}")
        for c in clients[:10]:
            c.close()
        waiting.expect(m.CONNACK_OK, timeout=3.0)
        admin.join(5)
        self.assertEqual(answer["r"].status, 200)
        log = b.log().decode("utf-8", "replace")
        self.assertRegex(log, r"mqtt: accepting again after \d+ failed attempts?")
        self.assertRegex(log, r"admin: accepting again after \d+ failed attempts?")

    def test_settled_sockets_leave_the_descriptor_table(self):
        # Each shard's ring keeps the sockets of the connections settled on it in a file table of as many slots as the
        # open-file limit (64 here), and closes their descriptors: two shards hold 140 clients with 64 descriptors,
        # the 12 past the tables' 128 slots keep theirs, and a closed client's slot serves the next one.
        b = self.start_broker(2, {"node.fixed_files": True}, nofile=64)
        self.port = b.port
        fd_dir = f"/proc/{b.proc.pid}/fd"
        base = len(os.listdir(fd_dir))

        def on(shard, name):
            return client_id_on_shard(name, shard, 2)

        def settled_fds(want, what):
            deadline = time.monotonic() + 5
            while len(os.listdir(fd_dir)) - base > want and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertLessEqual(len(os.listdir(fd_dir)) - base, want, what)

        clients = {0: [], 1: []}
        for i in range(70):
            for shard in (0, 1):
                clients[shard].append(self.client(on(shard, f"ft{shard}-{i}")))
        settled_fds(12, "140 clients on two shards of 64 slots: only the 12 past the slots keep descriptors")
        log = b.log().decode("utf-8", "replace")
        for shard in (0, 1):
            self.assertEqual(len(re.findall(rf"shard {shard}: no room in its ring's file table of 64 slots", log)),
                             1, "one warning per shard")
        # Messages flow between clients in slots and clients with descriptors, on both shards.
        sub = clients[1][0]
        sub.subscribe([("ft/#", 1)])
        for pub, topic in ((clients[0][0], "ft/slot"), (clients[0][-1], "ft/fd"), (clients[1][-1], "ft/fd1")):
            pub.publish(topic, b"x", qos=1)
            got = sub.recv_publish()
            self.assertEqual((got.topic, got.payload), (topic, b"x"))
        # Twenty clients in slots leave; twenty new ones take their slots, not descriptors.
        for c in clients[0][:20]:
            c.disconnect()
        time.sleep(0.2)
        for i in range(20):
            clients[0].append(self.client(on(0, f"ft-again-{i}")))
        settled_fds(12, "twenty new clients in the freed slots")
        self.assertTrue(b.alive())


class OutgoingMemory(BrokerTest):
    """A subscriber reading 8 MB/s while its topic gets some 40 MB/s keeps its queue at mqtt.max_outgoing_bytes (24 MiB
    here) for 4.5 s. Its whole queue used to go as one batch, freed only once the socket had taken all of it while the
    queue refilled behind it in a doubling buffer: the broker grew by 3.1-3.4x the limit (2.05x for 2 KB frames
    shared with a subscriber that keeps up, and still 2.06x when only bytes copied into the queue made chunks). A
    backlog now goes in chunks of 256 KiB, each freed once sent: 1.1-1.3x (some 5 MB of it the shard's, not the
    connection's; 1.3-1.5x under AddressSanitizer)."""
    AUTO_START = False

    def slow_reader(self, payload: int, fast_reader: bool) -> None:
        limit = 24 << 20
        b = self.use_broker({"mqtt.max_outgoing_bytes": limit}, env=no_quarantine_env())
        slow = self.client(self.sub_id("slow"))
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.subscribe([("mem/t", 0)])
        slow.sock.settimeout(0.5)
        fast = None
        if fast_reader:  # a second subscriber makes frames of 1 KiB and more shared: copied once for both queues
            fast = self.client(self.sub_id("fast"))
            fast.subscribe([("mem/t", 0)])
            fast.sock.settimeout(0.5)
        pub = self.client(self.pub_id())
        before = rss_kib(b.proc.pid)  # now, not the start-up peak, which may be higher
        done = threading.Event()
        closed = []

        def flooder() -> None:
            block = m.publish("mem/t", b"m" * payload) * (200_000 // payload)
            try:
                while not done.is_set():
                    pub.sock.sendall(block)
                    time.sleep(0.005)
            except OSError as e:
                closed.append(f"publisher: {e!r}")

        taken = 0

        def read_all() -> None:
            while not done.is_set():
                try:
                    if not fast.sock.recv(1 << 20):
                        closed.append("fast")
                        return
                except socket.timeout:
                    pass

        threads = [threading.Thread(target=flooder)] + ([threading.Thread(target=read_all)] if fast else [])
        for t in threads:
            t.start()
        try:
            start = time.monotonic()
            while time.monotonic() - start < 4.5:  # 8 MB/s
                time.sleep(max(0.0, start + taken / 8e6 - time.monotonic()))
                try:
                    data = slow.sock.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    closed.append("slow")
                    break
                taken += len(data)
        finally:
            done.set()
            for t in threads:
                t.join(10)
        grown = (rss_kib(b.proc.pid, "VmHWM") - before) * 1024
        self.assertEqual(closed, [], "a client was closed")
        # Every byte of a first queue went: the batch that held it was freed.
        self.assertGreater(taken, 1.2 * limit, "it read more than its queue holds")
        self.assertIn(b"client not reading, over mqtt.max_outgoing_bytes", b.log(), "its queue was at the limit")
        self.assertLess(grown, 1.75 * limit, f"the broker grew by {grown / limit:.2f}x mqtt.max_outgoing_bytes")
        self.assert_broker_healthy()

    def test_a_slow_reader_holds_about_max_outgoing_bytes(self):
        self.slow_reader(1000, fast_reader=False)  # frames copied into its queue

    def test_a_slow_reader_of_shared_frames_holds_about_max_outgoing_bytes(self):
        self.slow_reader(2000, fast_reader=True)


class OutgoingWindow(BrokerTest):
    """A QoS 1 window wide enough to pass mqtt.max_outgoing_bytes many times over (mqtt.max_inflight 2000 of 64 KB
    messages, a 64 KiB limit) to a subscriber that does not read. Each message went into the window and its send queue
    at once, whatever that queue held: 600 messages, 38 MB, against the limit (a probe saw 21 MB held against 1 MiB).
    A connection over its limit now takes nothing more into its window: what comes waits in the session's queue, under
    its own limits, and goes as the connection sends; nothing is lost."""
    AUTO_START = False
    ADMIN = True

    def session_counts(self, cid: str) -> dict:
        r = request(self.admin_port, "GET", "/api/v2/sessions/" + cid)
        self.assertEqual(r.status, 200, r)
        rows = r.json()["result"]["objects"]
        self.assertEqual(len(rows), 1, rows)
        return rows[0]

    def test_a_window_to_a_client_not_reading_stays_within_max_outgoing_bytes(self):
        self.use_broker({"mqtt.max_outgoing_bytes": 65536, "mqtt.max_inflight": 2000})
        cid = self.sub_id()
        sub = self.client(cid)
        sub.subscribe([("win/t", 1)])
        pub = self.client(self.pub_id())
        total = 600
        publish_acked(pub, "win/t", total, b"w" * 64000)
        s = self.session_counts(cid)
        self.assertEqual(s["message_dropped"], 0, s)
        self.assertEqual(s["inflight_queue"] + s["message_queue"], total, s)
        # What went into the window is what the kernel's socket buffers took (a few MB on loopback), plus the limit:
        # not the 38 MB that the window allows.
        self.assertLess(s["inflight_queue"] * 64000, 16 << 20, s)
        self.assertGreater(s["message_queue"], 0, s)
        got = [int(p.payload[:6]) for p in sub.recv_publishes(total, timeout=10)]
        self.assertEqual(got, list(range(total)), "lost, repeated or out of order")
        sub.expect_no_packet(0.3)
        self.assert_broker_healthy()

    def test_the_answers_before_a_disconnect_come_after_a_backlog_past_the_sockets_mark(self):
        # 4 MB of QoS 0 wait for a subscriber that has not read, then it sends a QoS 1 PUBLISH and DISCONNECT: it must
        # get the backlog, then its PUBACK, then the close. The shutdown came right behind the send that joined them,
        # which a socket with mqtt.tcp_notsent_lowat takes only part of at once: the rest was cut, PUBACK and all
        # (found by a review: 37 of 800 messages and no PUBACK behind 8 MB with the mark at 128 KiB). Clean and
        # persistent sessions (a persistent one's untaken QoS 0 messages go back to its queue, as before).
        for clean in (True, False):
            with self.subTest(clean=clean):
                self.use_broker({"mqtt.tcp_notsent_lowat": 131072})
                sub = self.client(self.sub_id(), clean=clean)
                sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sub.subscribe([("bk/t", 0)])
                pub = self.client(self.pub_id())
                n, pay = 400, 10000
                pub.send(b"".join(m.publish("bk/t", b"%06d" % i + b"b" * (pay - 6)) for i in range(n)))
                pub.publish("bk/sync", b"s", qos=1)  # every one of them has been routed
                time.sleep(0.3)
                sub.send(m.publish("bk/own", b"mine", qos=1, pid=77) + m.disconnect())
                got = packets_until_closed(sub, 20)
                self.assertEqual(got[-1].raw(), m.puback(77), "the PUBACK did not come last, or not at all")
                seqs = [int(m.parse_publish(p).payload[:6]) for p in got[:-1]]
                if clean:
                    self.assertEqual(seqs, list(range(n)))
                else:
                    self.assertEqual(seqs, list(range(len(seqs))))

    def steady_reader(self, settings: dict) -> dict:
        """A subscriber taking a steady 1.1 MB/s (200 KB, then 150 ms of rest) from a publisher of 1500 QoS 1 messages
        of 8 KB that keeps 50 in flight, through a window wider than the socket's buffers; returns its session's counts
        and what it got."""
        self.use_broker({"mqtt.max_outgoing_bytes": 65536, "mqtt.max_queued_messages": 200, "mqtt.max_inflight": 2000,
                         **settings})
        cid = self.sub_id()
        sub = self.client(cid)
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 131072)
        sub.subscribe([("steady/t", 1)])
        pub = self.client(self.pub_id())
        total, filler = 1500, b"s" * 8000
        errors = []

        def publish() -> None:
            try:
                for start in range(0, total, 50):
                    pub.send(b"".join(m.publish("steady/t", b"%06d" % i + filler, qos=1, pid=i + 1)
                                      for i in range(start, start + 50)))
                    for i in range(start, start + 50):
                        pub.expect(m.puback(i + 1), timeout=30)
            except Exception as e:  # reported on the test's thread
                errors.append(e)

        t = threading.Thread(target=publish)
        t.start()
        got, taken = [], 0
        deadline = time.monotonic() + 40
        try:
            while t.is_alive() and time.monotonic() < deadline:
                try:
                    msg = sub.recv_publish(timeout=0.5)
                except AssertionError:
                    continue
                got.append(int(msg.payload[:6]))
                taken += len(msg.payload)
                if taken >= 200_000:
                    taken = 0
                    time.sleep(0.15)
            while True:  # the rest, as fast as it comes
                try:
                    got.append(int(sub.recv_publish(timeout=1).payload[:6]))
                except AssertionError:
                    break
        finally:
            t.join(30)
        self.assertEqual(errors, [])
        return {"got": got, "total": total, **self.session_counts(cid)}

    def test_a_subscriber_reading_slowly_but_steadily_holds_its_publisher_and_loses_nothing(self):
        # The kernel said a socket could take more only once a third of its send buffer (some 1.3 MB) had gone: a
        # reader at 1.1 MB/s was seen taking nothing for more than mqtt.publisher_hold_ms (1 s), its queue counted
        # stuck, and what passed its limit was dropped though acknowledged (1080 of 3000 in a review's probe).
        # mqtt.tcp_notsent_lowat has the socket say so once half of its 128 KiB of unsent bytes have gone.
        r = self.steady_reader({})
        self.assertEqual(r["message_dropped"], 0, r)
        self.assertEqual(r["got"], list(range(r["total"])), "lost, repeated or out of order")
        self.assertNotIn(b"nothing taken from its queue", self.broker.log())


class LongTurnKeepalive(BrokerTest):
    """A burst of PUBLISHes each matching thousands of overlapping wildcard filters holds a shard for seconds (README:
    "Wildcard filters"). Clients of that shard that sent their PINGREQs in time meanwhile were closed as silent once it
    went on: the tick that judged their keepalives came up among the completions of what they had sent, before those
    were handled, and a packet handled late in that long turn carried the clock of the turn's start. With the work
    spread over more connections than a turn reaps (256), their PINGREQs waited behind it for several turns. And since
    node.turn_work_us, the work itself is cut into turns: other clients are served between them."""
    AUTO_START = False
    DONE = m.publish("lt/done", b"", qos=1, pid=1)  # answered once every PUBLISH before it is handled (not a PINGREQ:
    DONE_ACK = b"\x40\x02\x00\x01"                 # one behind a paused client's PUBLISHes is answered at once)

    def costly_topics(self, depth: int = 13, subscribers: int = 1):
        """Subscribes 2^depth filters (for each of `subscribers` clients on the last shard), each a level or '+' at
        every level of a `depth`-level prefix, then '#': every one matches every topic under the prefix, so each new
        topic's route walks them all. Returns the prefix and the publisher, and the seconds one such PUBLISH takes."""
        levels = [f"l{i}" for i in range(depth)]
        topic = "/".join(levels)
        filters = ["/".join("+" if (mask >> i) & 1 else levels[i] for i in range(depth)) + "/#"
                   for mask in range(1 << depth)]
        self.sub = self.client(self.sub_id(), keepalive=0)
        for sub in [self.sub] + [self.client(self.sub_id(f"sub{j}"), keepalive=0) for j in range(1, subscribers)]:
            for start in range(0, len(filters), 2048):
                sub.subscribe([(f, 0) for f in filters[start:start + 2048]], timeout=30)
        pub = self.client(self.pub_id(), keepalive=0)
        # The fastest pace of three runs of 100: one run that meets a stall of the host (in one CI run the pace of
        # 200 was 2-3 times a long burst's) would have the tests size their bursts too short to tell.
        paces = []
        for k in range(3):
            start = time.monotonic()
            pub.send(b"".join(m.publish(f"{topic}/c{k}/{i}", b"x") for i in range(100)) + self.DONE)
            pub.expect(self.DONE_ACK, timeout=60)
            paces.append((time.monotonic() - start) / 100)
        return topic, pub, max(min(paces), 1e-4)

    def with_pingers(self, work) -> tuple:
        """Runs work() while six keepalive-1 clients ping every 0.3 s; returns what it took (s), how many clients the
        broker closed for their keepalive, and the pingers' send errors."""
        before = self.broker.log().count(b"keepalive 1 s exceeded")
        self.rounds = getattr(self, "rounds", 0) + 1
        pingers = [self.client(self.cid(f"ka{i}-{self.rounds}"), keepalive=1) for i in range(6)]
        stop = threading.Event()
        failures = []

        def ping(c):
            try:
                while not stop.wait(0.3):
                    c.send(m.pingreq())
            except OSError as e:
                failures.append(e)

        threads = [threading.Thread(target=ping, args=(c,), daemon=True) for c in pingers]
        for t in threads:
            t.start()
        try:
            took = work()
            time.sleep(1.0)  # more PINGREQs, and ticks, after the long turns
            closed = self.broker.log().count(b"keepalive 1 s exceeded") - before  # (while they still ping)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        for c in pingers:
            try:
                c.disconnect()
            except OSError:  # closed by the broker: counted above
                pass
        return took, closed, failures

    def test_clients_that_pinged_in_time_during_a_long_turn_keep_their_connection(self):
        self.use_broker({"node.turn_work_us": 0})  # turns as long as the work (the bound: the test below)
        topic, pub, per_publish = self.costly_topics()

        def burst(n: int, tag: str) -> float:
            start = time.monotonic()
            pub.send(b"".join(m.publish(f"{topic}/{tag}{i}", b"x") for i in range(n)) + self.DONE)
            pub.expect(self.DONE_ACK, timeout=60)
            return time.monotonic() - start

        # Sized for about 4 s of work on this host (a turn of 4 s before node.turn_work_us). The pace of the first
        # PUBLISHes (costly_topics) may be far off the burst's (in one CI run 2.1-2.8 ms each, against about 1 ms in
        # its bursts): a burst too short to tell is sized again from its own pace, once.
        n = min(20000, max(100, int(4.0 / per_publish)))
        for attempt in "bc":
            took, closed, failures = self.with_pingers(lambda: burst(n, attempt))
            self.assertEqual((closed, failures), (0, []), "clients that pinged every 0.3 s were closed (one connection)")
            if took > 2.0 or n == 20000 or attempt == "c":
                break
            n = min(20000, int(n * 4.0 / max(took, 0.1)))
        self.assertGreater(took, 2.0, f"the burst of {n} PUBLISHes held the shard only {took:.2f} s: no long turn")
        per_publish = took / n  # (the pace of a long burst, for the 600 connections' share below)

        # The same work from 600 connections at once: turns of 256 of them, the PINGREQs behind all 600 (in the ring,
        # or held back by the kernel until the shard next enters it).
        flooders = [self.client(self.cid(f"fl{i}"), keepalive=0) for i in range(600)]
        each = max(2, int(5.0 / per_publish) // len(flooders))

        def spread() -> float:
            start = time.monotonic()
            for j, f in enumerate(flooders):
                f.send(b"".join(m.publish(f"{topic}/s{j}/{i}", b"x") for i in range(each)) + self.DONE)
            for f in flooders:
                f.expect(self.DONE_ACK, timeout=120)
            return time.monotonic() - start

        took, closed, failures = self.with_pingers(spread)
        self.assertGreater(took, 2.0, f"{600 * each} PUBLISHes from 600 connections took only {took:.2f} s")
        self.assertEqual((closed, failures), (0, []), "clients that pinged every 0.3 s were closed (600 connections)")
        # A client silent meanwhile is still closed, once the backlog is through.
        silent = self.client(self.cid("silent"), keepalive=1)
        start = time.monotonic()
        spread_took = spread()
        silent.expect_closed(spread_took + 4)
        self.assertLess(time.monotonic() - start, spread_took + 4)

    def ping_during_burst(self, settings: dict, shards: int = 1, close: bool = False, ping_at: float = 0.3,
                          most: int = 20000) -> tuple:
        """A client on the publisher's shard sends a PINGREQ `ping_at` seconds into the publisher's burst of (at most
        `most`) PUBLISHes that each cost a millisecond or so (the subscriber of the filters on the last shard; `close`:
        the publisher closes its socket after the burst). Returns the types of the first two packets it gets (the
        PINGRESP and the PUBLISH the burst ends with, in the order they came) with when each came, in seconds from the
        PINGREQ."""
        self.SHARDS = shards
        self.use_broker(settings)
        topic, pub, per_publish = self.costly_topics()
        watcher = self.client(self.cid("watcher"), keepalive=0)
        watcher.subscribe([("lt/after", 0)])
        n = min(most, max(100, int(3.0 / per_publish)))
        burst = b"".join(m.publish(f"{topic}/b{i}", b"x") for i in range(n)) + m.publish("lt/after", b"end")

        def send():
            pub.send(burst)
            if close:
                pub.sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)  # (the PINGREQ goes out on time however long it takes)
        sender.start()
        time.sleep(ping_at)
        pinged = time.monotonic()
        watcher.send(m.pingreq())
        got = []
        for _ in range(2):
            pkt = watcher.read_packet(timeout=60)
            got.append((pkt.type, round(time.monotonic() - pinged, 2)))
        sender.join(10)
        return got, n

    def assert_served_between(self, got, n, what):
        self.assertEqual([t for t, _ in got], [m.PINGRESP, m.PUBLISH],
                         f"{what}: (packet type, s) after a PINGREQ 0.3 s into {n} costly PUBLISHes: {got}")
        self.assertGreater(got[1][1], 0.7, f"{what}: {n} PUBLISHes took only {got[1][1] + 0.3} s: too short to tell")
        self.assertLess(got[0][1], 0.5, f"{what}: the PINGREQ waited: {got}")

    def test_other_clients_are_served_between_the_turns_of_a_costly_burst(self):
        got, n = self.ping_during_burst({})
        self.assert_served_between(got, n, "1 shard")

    def test_the_walk_through_filters_of_another_shard_counts_too(self):
        # The filters' subscriber on the other shard: the publisher's shard walks the filters' nodes for each new topic
        # without a local match, work that the bound counts too.
        got, n = self.ping_during_burst({}, shards=2)
        self.assert_served_between(got, n, "2 shards")

    def assert_served_on_the_subscribers_shard(self, shards: int, what: str):
        """The filters' subscriber and a watcher on the last shard, a costly burst from the publisher on shard 0: the
        publisher's shard sends what each PUBLISH matched there, and the subscriber's shard routes it through its own
        filters. Every 50 ms of the burst the watcher sends a PINGREQ (and with 3 shards a client on shard 1 publishes
        to it): checks that no round waited 0.5 s for its answers, that there were enough to tell, and that the
        subscriber's shard did leave deliveries for later. With 2 shards a client on shard 0 subscribes during the
        burst, and the watcher publishes to it once it has its SUBACK: the route, queued behind the flood, is applied
        ahead of it."""
        self.SHARDS = shards
        self.use_broker({})
        # Two subscribers of the filters: their shard does twice the publisher's shard's work for each PUBLISH (the
        # publisher's walks the filters once for both), so what it is sent piles up whatever else runs on the host.
        topic, pub, per_publish = self.costly_topics(subscribers=2)
        watcher = self.client(self.cid("watcher", shards - 1), keepalive=0)
        watcher.subscribe([("lt/after", 0), ("lt/tick", 0)])
        relay = self.client(self.cid("relay", 1), keepalive=0) if shards > 2 else None
        late = self.client(self.cid("late", 0), keepalive=0) if shards == 2 else None
        late_took = []
        n = min(20000, max(100, int(3.0 / per_publish)))
        burst = b"".join(m.publish(f"{topic}/b{i}", b"x") for i in range(n))
        # With 2 shards the burst goes on, a second's worth more at a time once the publisher's shard has handled
        # what it had (up to ten times), until the late probes are done: in one CI run none of up to eight of them
        # found deliveries left before its route, the burst having been sized from a pace of its first PUBLISHes
        # several times too slow.
        more = threading.Event()
        if late:
            more.set()
        chunk = min(5000, max(100, int(1.0 / per_publish)))

        sender_errors = []
        begun = time.monotonic()

        def send():
            try:
                pub.send(burst + self.DONE)
                pub.expect(self.DONE_ACK, timeout=60)
                for k in range(10):
                    if not more.is_set() or time.monotonic() - begun > 30:
                        break
                    pub.send(b"".join(m.publish(f"{topic}/e{k}/{i}", b"x") for i in range(chunk)) + self.DONE)
                    pub.expect(self.DONE_ACK, timeout=60)
                pub.send(m.publish("lt/after", b"end"))
            except (OSError, AssertionError) as e:  # (reported below, not lost with the thread)
                sender_errors.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        waits, ended = [], False
        try:
            while not ended and time.monotonic() - begun < 60:
                asked = time.monotonic()
                watcher.send(m.pingreq())
                want = {"pingresp"}
                if relay:
                    relay.send(m.publish("lt/tick", b"t"))
                    want.add("tick")
                while want:
                    pkt = watcher.read_packet(timeout=60)
                    if pkt.type == m.PINGRESP:
                        want.discard("pingresp")
                        continue
                    topic_got = m.parse_publish(pkt).topic
                    if topic_got == "lt/after":  # the burst's end: what this round waits for follows, it has waited
                        ended = True             # this long at least
                        break
                    self.assertEqual(topic_got, "lt/tick")
                    want.discard("tick")
                waits.append(round(time.monotonic() - asked, 2))
                # (Once the subscriber's shard has left deliveries for later: the route is queued behind those. Up to
                # eight times, every other round, until one is taken ahead: one whose route that shard found with
                # nothing left before it, in a turn that took its whole queue, was not, as once in stop 74's runs, and
                # all three of stop 75's once in stop 76's.)
                log = self.broker.log() if late and more.is_set() else b""
                if late and more.is_set() and (len(late_took) == 8 or b"handled a route update from shard 0" in log):
                    more.clear()
                if (late and more.is_set() and len(waits) >= 2 * (len(late_took) + 1) and
                        b"left deliveries from other" in log):
                    late.subscribe([(f"lt/late{len(late_took)}", 0)])
                    sent = time.monotonic()
                    watcher.send(m.publish(f"lt/late{len(late_took)}", b"l"))
                    self.assertEqual(m.parse_publish(late.read_packet(timeout=30)).topic, f"lt/late{len(late_took)}")
                    late_took.append(round(time.monotonic() - sent, 2))
                time.sleep(0.05)
        finally:
            more.clear()  # (the sender adds no more, whatever ended the rounds)
        took = time.monotonic() - begun
        sender.join(10)
        self.assertEqual(sender_errors, [], "the publisher's burst failed")
        self.assertTrue(ended and not sender.is_alive(), f"the burst had not ended after {took:.2f} s")
        self.assertTrue(waits, f"no round ended before the burst did ({took:.2f} s)")
        self.assertLess(max(waits), 0.5, f"seconds each round waited during {n} costly PUBLISHes ({what}): {waits}")
        self.assertGreater(len(waits), 5, f"{n} PUBLISHes took only {took:.2f} s: too short to tell")
        self.assertTrue(self.broker.log().count(b"left deliveries from other shards for a later turn"),
                        "the subscriber's shard never left deliveries for a later turn")
        if late:
            self.assertTrue(late_took, "the burst ended before the subscriber's shard left deliveries for later")
            # (One of up to eight may meet a stall of the host; before routes were taken ahead each took seconds.)
            self.assertLessEqual(len([t for t in late_took if t >= 0.5]), 1,
                                 f"seconds messages to filters subscribed during the burst took: {late_took}")
            self.assertLess(max(late_took), 2.0, f"seconds messages to filters subscribed during the burst took: "
                                                 f"{late_took}")
            ahead = re.search(rb"shard 1 left deliveries from other shards for a later turn \d+ times, and handled (\d+)",
                              self.broker.stop_and_read_log())
            self.assertTrue(ahead and int(ahead.group(1)) >= 1, "no route update was handled ahead of the deliveries")

    def test_deliveries_from_another_shard_are_taken_in_turns(self):
        # That shard took a queueful of them in one turn (its clients' packets waited behind it, up to 4 s); it now
        # leaves the rest for a later turn once the turn's work is spent.
        self.assert_served_on_the_subscribers_shard(2, "a PINGREQ")

    def test_one_shards_costly_deliveries_do_not_stop_anothers(self):
        # The third shard's message to the watcher is taken between slices of the flood too (each queue gets a share
        # of the turn, not only the first one drained).
        self.assert_served_on_the_subscribers_shard(3, "a PINGREQ and a message from shard 1")

    def test_an_admin_publish_after_a_subscribe_on_another_shard_reaches_it_during_a_burst(self):
        # An mqtt/publish run on one shard to a filter just subscribed on another (its route published there before
        # the SUBACK) is routed once the route is applied: the admin shard's queue is taken after every MQTT shard's,
        # and only up to what it held before those were read. A drain of milliseconds (a turn that leaves deliveries
        # for later; a whole queueful before stop 70) read a call that came meanwhile, and the route published
        # before it was still unread: every other such message during the burst was lost (one before stop 70).
        self.SHARDS = 2
        self.ADMIN = True
        self.use_broker({})
        topic, pub, per_publish = self.costly_topics(subscribers=2)
        n = min(20000, max(100, int(3.0 / per_publish)))
        burst = b"".join(m.publish(f"{topic}/a{i}", b"x") for i in range(n)) + self.DONE
        sender = threading.Thread(target=pub.send, args=(burst,), daemon=True)
        sender.start()
        done_at = []  # when the burst had been handled (its DONE answered)
        acker = threading.Thread(target=lambda: (pub.expect(self.DONE_ACK, timeout=90),
                                                 done_at.append(time.monotonic())), daemon=True)
        acker.start()
        self.wait_until(lambda: b"left deliveries from other" in self.broker.log(), timeout=20,
                        what="the subscriber's shard left deliveries for later")
        lost = []
        for i in range(20):
            c = self.client(self.cid(f"adm{i}", 0), keepalive=0)
            c.subscribe([(f"lt/adm/{i}", 0)])
            r = request(self.admin_port, "POST", "/api/v2/mqtt/publish",
                        {"topic": f"lt/adm/{i}", "payload": "x", "qos": 0, "client_id": self.cid(f"api{i}", 1)})
            self.assertEqual((r.status, r.json()), (200, {"code": 0, "result": []}), f"{r!r}")
            try:
                self.assertEqual(m.parse_publish(c.read_packet(timeout=10)).topic, f"lt/adm/{i}")
            except TimeoutError:
                lost.append(i)
                break
        rounds_ended = time.monotonic()
        sender.join(30)
        acker.join(90)
        self.assertEqual(lost, [], "admin publishes to filters just subscribed on the other shard that never came")
        self.assertTrue(done_at and done_at[0] > rounds_ended, "the burst was over before the rounds were")

    def test_a_client_that_closes_after_its_burst_is_still_handled_in_turns(self):
        # Its socket's end, reaped while it waits for its next turn, used to have everything it had received handled
        # at once: the whole burst where it fits in the socket's buffer (about 100 KB). The last message still comes
        # (handled, then the connection closed).
        got, n = self.ping_during_burst({}, close=True, ping_at=0.1, most=1800)
        self.assertEqual([t for t, _ in got], [m.PINGRESP, m.PUBLISH],
                         f"(packet type, s) after a PINGREQ 0.1 s into {n} costly PUBLISHes and a close: {got}")
        self.assertGreater(got[1][1], 0.4, f"{n} PUBLISHes took only {got[1][1] + 0.1} s: too short to tell")
        self.assertLess(got[0][1], 0.3, f"the PINGREQ waited: {got}")

    def test_a_client_that_disconnects_and_closes_after_its_burst_leaves_no_will(self):
        # Its socket's end is reaped while it waits for its turns, the PUBACKs sent later fail (the client has gone:
        # a reset), and its DISCONNECT is still among what it sent: the failed send must not close it with its will
        # and drop the rest (MQTT-3.14.4-3); it is closed once its DISCONNECT is handled.
        self.use_broker({})
        # 2^15 filters: a burst that fits the socket's buffer and takes its turns for more than a second.
        topic, _, per_publish = self.costly_topics(15)
        watcher = self.client(self.cid("watcher"), keepalive=0)
        watcher.subscribe([("lt/after", 0), ("lt/mid", 0), ("lt/will", 0)])
        pub = self.client(self.pub_id("willed"), keepalive=0, will=m.Will("lt/will", b"gone"))
        n = min(1600, max(100, int(3.0 / per_publish)))
        burst = [m.publish(f"{topic}/w{i}", b"x", qos=1, pid=i % 65535 + 1) for i in range(n)]
        # What follows the mark (12 KB) fits what a paused client keeps: read by the time the mark is handled.
        burst.insert(n - 12000 // len(burst[-1]), m.publish("lt/mid", b"mid"))
        pub.send(b"".join(burst) + m.publish("lt/after", b"end") + m.DISCONNECT_BYTES)
        pub.sock.shutdown(socket.SHUT_WR)  # its end: a FIN after its bytes (then it reads nothing)
        mid = watcher.read_packet(timeout=60)
        self.assertEqual((mid.type, mid.body[2:8]), (m.PUBLISH, b"lt/mid"), f"{mid}")
        pub.sock.close()  # with PUBACKs unread: a reset, and the broker's next send to it fails
        first = watcher.read_packet(timeout=60)
        self.assertEqual((first.type, first.body[2:10]), (m.PUBLISH, b"lt/after"),
                         f"the burst's last message, not the will, after {n} costly QoS 1 PUBLISHes: {first}")
        with self.assertRaises(TimeoutError, msg="a will after the client's DISCONNECT"):
            watcher.read_packet(timeout=1.0)
        self.assertTrue(self.broker.log().count(b"read on in a later turn"), "the client was never paused")

    def test_paused_clients_keep_little_of_what_they_sent(self):
        # A multishot receive from a client with much sent took buffers while the shard's ring had them, before the
        # shard saw any: paused in the first, the client kept all the rest, about the whole ring (1 MiB), and again at
        # each later pause. Since Linux 6.17 a receive ends after a limit (the shard's start-up line says it): the rest
        # waits in the socket. Three clients, each sending as much as its socket takes of a costly burst. (That a
        # receive ended by the limit is armed again: the publish suite's bursts of 640 KiB a publisher.)
        if not kernel_at_least(6, 17):
            self.skipTest("a multishot receive has no limit before Linux 6.17")
        self.use_broker({})
        found = re.search(rb"receives re-armed every (\d+) B", self.broker.log())
        if found is None:  # (test_kernel_paths checks that the limit is used where the kernel has it)
            self.skipTest("receives not limited: node.io_uring_kernel below 6.17, or node.receive_limit = 0")
        limit = int(found.group(1))
        topic, pub, _ = self.costly_topics()
        read_until_quiet(self.sub, quiet=0.5)  # costly_topics' own messages
        pauses = self.broker.log().count(b"read on in a later turn")
        pubs = [pub] + [self.client(self.pub_id(f"more{j}"), keepalive=0) for j in (1, 2)]
        bursts = [b"".join(m.publish(f"{topic}/k{j}/{i:06d}", b"x") for i in range(40000)) for j in range(3)]
        size = len(bursts[0]) // 40000
        sent, got, stop = [0, 0, 0], [0, 0, 0], threading.Event()

        def count():
            while not stop.is_set():
                try:
                    msg = m.parse_publish(self.sub.read_packet(timeout=0.2))
                except TimeoutError:
                    continue
                if f"{topic}/k" in msg.topic:
                    got[int(msg.topic[len(topic) + 2])] += 1

        def send(j):
            # Counts what the kernel took, not what is still to be written.
            pubs[j].sock.settimeout(0.2)
            while not stop.is_set() and sent[j] < len(bursts[j]):
                try:
                    sent[j] += pubs[j].sock.send(bursts[j][sent[j]:sent[j] + 65536])
                except (socket.timeout, BlockingIOError):
                    pass

        threads = [threading.Thread(target=count, daemon=True)]
        threads += [threading.Thread(target=send, args=(j,), daemon=True) for j in range(3)]
        for t in threads:
            t.start()
        kept = [[], [], []]
        try:
            for _ in range(8):
                time.sleep(0.25)
                for j in range(3):
                    kept[j].append(sent[j] - not_taken(pubs[j].sock) - got[j] * size)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        self.assertGreater(self.broker.log().count(b"read on in a later turn"), pauses, "no client was paused")
        self.assertGreater(min(got), 0, f"{got} of the bursts' messages handled: a client was never read on")
        # The limit, the 16 KiB a paused client keeps before its receive stops, the buffer that passes the limit, and
        # what the turn has in hand or the subscriber's reader has not counted yet.
        bound = limit + 16384 + 16384 + 65536
        self.assertLess(max(max(k) for k in kept), bound,
                        f"bytes the broker took from each client but has not handled, every 0.25 s: {kept}")

    def test_without_the_bound_the_ping_waits_for_the_burst(self):
        got, n = self.ping_during_burst({"node.turn_work_us": 0})
        self.assertGreater(got[0][1], 0.5, f"without node.turn_work_us: {got}")


class OutgoingTotalCases:
    """mqtt.max_outgoing_bytes_total bounds the bytes waiting to be sent over all connections, where
    mqtt.max_outgoing_bytes bounds one connection's: subscribers that stop reading each held up to that limit (16 MiB),
    so a few hundred of them could take the machine's memory. Past a shard's share no send queue is given more once it
    holds 64 KiB (QoS 0 past it dropped, QoS 1/2 waiting in their sessions), and a connection whose socket took less
    than that in mqtt.send_stall_timeout is closed, the largest first, until the queues are under seven eighths of the
    share."""
    AUTO_START = False
    ADMIN = True

    def total_broker(self, share: int, more=None):
        # With mqtt.tcp_notsent_lowat at 128 KiB a socket's sends complete in steps of some 64 KiB, so that the slow
        # reader's 320 kB/s is seen as such within the 1 s timeout (at the default 1 MiB, in 512 KiB steps).
        settings = {"mqtt.max_outgoing_bytes_total": share * self.SHARDS, "mqtt.send_stall_timeout": 1000,
                    "mqtt.tcp_notsent_lowat": 131072}
        settings.update(more or {})
        return self.use_broker(settings, env=no_quarantine_env())

    def stalled(self, name: str, topic: str, qos: int = 0, clean: bool = True):
        c = self.client(self.sub_id(name), clean=clean)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.subscribe([(topic, qos)])
        return c

    def flood_stalled(self, share: int) -> tuple:
        """Twelve subscribers that never read, each on its own topic, get 98 MB between them (no one connection
        near mqtt.max_outgoing_bytes), while a reader on another topic keeps up and a slow reader on a third (8 MB)
        reads some 320 kB/s; returns the growth of the broker's peak RSS in bytes, the reader's payloads and the slow
        reader's state."""
        b = self.total_broker(share)
        stalled = [self.stalled(f"stall{i}", f"tot/s{i}") for i in range(12)]
        reader = self.client(self.sub_id("reader"))
        reader.subscribe([("tot/r", 0)])
        slow = self.client(self.sub_id("slow"))
        slow.subscribe([("tot/slow", 0)])
        slow.sock.settimeout(0.5)
        pub = self.client(self.pub_id())
        before = rss_kib(b.proc.pid)
        rounds, filler = 64, b"s" * 16000
        col = Collector(reader, rounds, timeout=60)
        done = threading.Event()
        slow_state = {"taken": 0, "closed": False}

        def slow_reader() -> None:  # some 320 kB/s: behind its topic's 2.5 MB/s, and past 64 KiB in every second
            while not done.is_set():
                try:
                    data = slow.sock.recv(16384)
                except socket.timeout:
                    continue
                except OSError:
                    slow_state["closed"] = True
                    return
                if not data:
                    slow_state["closed"] = True
                    return
                slow_state["taken"] += len(data)
                time.sleep(0.05)

        t = threading.Thread(target=slow_reader)
        t.start()
        try:
            for r in range(rounds):  # 1.5 MB for the stalled subscribers each round
                block = [m.publish(f"tot/s{i}", b"%06d" % r + filler) for i in range(12) for _ in range(8)]
                block += [m.publish("tot/slow", b"%06d" % r + filler) for _ in range(8)]
                block.append(m.publish("tot/r", b"%06d" % r))
                pub.send(b"".join(block))
                time.sleep(0.05)  # 3.2 s in all: past mqtt.send_stall_timeout
            got = [p.payload for p in col.join(30)]
            time.sleep(1.5)  # a tick past the last stall
        finally:
            done.set()
            t.join(10)
        grown = (rss_kib(b.proc.pid, "VmHWM") - before) * 1024
        for c in stalled:
            c.close()
        return grown, got, slow_state

    def test_subscribers_that_stop_reading_hold_at_most_the_share_and_are_closed(self):
        share = 4 << 20
        grown, got, slow = self.flood_stalled(share)
        self.assertEqual(got, [b"%06d" % r for r in range(64)], "the reader lost messages")
        # 98 MB went to subscribers that do not read: what the broker holds is the share and a mark per connection,
        # not all of it (a build without the bound grew by some 100 MB here).
        self.assertLess(grown, 32 << 20, f"the broker grew by {grown >> 20} MiB")
        log = self.broker.log().decode("utf-8", "replace")
        on = f"shard{self.SHARDS - 1}"  # the subscribers' shard
        self.assertRegex(log, rf"\[warn\] {on}: \d+ bytes wait to be sent to \d+ connections .* over the shard's "
                              rf"share \({share}\) of mqtt.max_outgoing_bytes_total = {share * self.SHARDS}")
        closes = re.findall(r"closed (\S+) .*: its socket took (\d+) bytes in the last (\d+) ms \(less than 65536 "
                            r"in mqtt.send_stall_timeout = 1000\)", log)
        self.assertGreater(len(closes), 0, "no stalled connection was closed")
        for cid, _, _ in closes:
            self.assertIn("stall", cid, "a connection that reads was closed")
        self.assertRegex(log, rf"\[info\] {on}: \d+ bytes wait to be sent to connections with more than 32768 each, "
                              rf"under {share - share // 8} again", "the shard never went under seven eighths of its share")
        self.assertRegex(log, rf"session stall\S*: client behind while the shard's send queues are over its share "
                              rf"\({share}\) of mqtt.max_outgoing_bytes_total, message on tot/s\d+ dropped",
                         "no drop was logged")
        # The slow reader fell behind its topic (its queue went past the limit that held it), yet it was not closed.
        self.assertRegex(log, r"session slow\S*: client (behind|not reading).* message on tot/slow dropped")
        self.assertFalse(slow["closed"], "the slow reader was closed")
        self.assertGreater(slow["taken"], 640 << 10)
        self.assert_broker_healthy()

    def test_a_persistent_subscriber_closed_for_a_stalled_socket_loses_nothing(self):
        # Its QoS 1 window goes into its send queue until the share is passed, then its messages wait in its session;
        # closed after a second of taking nothing, it gets every message when it comes back.
        self.total_broker(1 << 20, {"mqtt.max_inflight": 400})
        cid = self.sub_id("persist")
        sub = self.stalled("persist", "tot/q", qos=1, clean=False)
        pub = self.client(self.pub_id())
        total = 300
        publish_acked(pub, "tot/q", total, b"q" * 16000)
        self.wait_until(lambda: re.search(rb"closed " + cid.encode() + rb" .*: its socket took \d+ bytes in the last",
                                          self.broker.log()), timeout=5, what="the stalled subscriber's close")
        sub.close()
        # An operator sees the close under its own reason.
        r = request(self.admin_port, "GET", "/api/v2/monitoring/listeners")
        self.assertEqual(r.status, 200, r)
        rows = [row for rows in r.json()["result"].values() for row in rows if row["protocol"] == "mqtt:tcp"]
        self.assertEqual(rows[0]["shutdown_count"], {"send_stalled": 1}, rows)
        again = self.client(cid, clean=False, expect=m.CONNACK_OK_SESSION)
        seqs = []
        deadline = time.monotonic() + 20
        while len(set(seqs)) < total and time.monotonic() < deadline:
            seqs.append(int(again.recv_publish(timeout=5).payload[:6]))
        self.assertEqual(sorted(set(seqs)), list(range(total)), "lost messages")
        self.assert_broker_healthy()


# With two shards the publisher is on one and the subscribers on the other: their shard weighs the queues of what the
# other routes to it, and each shard has half of the total.
shard_variants(OutgoingTotalCases, globals())
