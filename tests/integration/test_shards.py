"""Cross-shard behaviour with --shards 2: client ids are chosen by FNV-1a-64(client id) % 2 so that publisher and
subscriber have different home shards (and, for comparison, the same one)."""

import os
import re
import resource
import socket
import threading
import time

import mqtt_raw as m
from broker import (BrokerTest, Collector, client_id_on_shard, cpu_seconds, fnv1a64, home_shard, rss_kib,
                    stalled_thread)


def read_exactly(s: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """n bytes from s, failing if they do not come within timeout. For the bare sockets of a test that holds
    thousands of subscribers, where a RawClient each would cost more than the test."""
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(n - len(got))
        except socket.timeout:
            raise AssertionError(f"{len(got)} of {n} bytes within {timeout}s") from None
        if not chunk:
            raise AssertionError(f"closed after {len(got)} of {n} bytes")
        got += chunk
    return got


class ShardHashTest(BrokerTest):
    AUTO_START = False

    def test_fnv1a64_reference_values(self):
        # Published FNV-1a 64-bit test vectors.
        self.assertEqual(fnv1a64(b""), 0xCBF29CE484222325)
        self.assertEqual(fnv1a64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(fnv1a64(b"foobar"), 0x85944171F73967E8)

    def test_client_id_on_shard(self):
        for shards in (1, 2, 3, 4):
            for shard in range(shards):
                cid = client_id_on_shard("x", shard, shards)
                self.assertEqual(home_shard(cid, shards), shard)
                self.assertEqual(fnv1a64(cid.encode()) % shards, shard)


class CrossShardTest(BrokerTest):
    SHARDS = 2

    def on(self, name, shard, **kw):
        return self.client(client_id_on_shard(name, shard, 2), **kw)

    def test_ids_really_differ(self):
        self.assertEqual(home_shard(self.pub_id(), 2), 0)
        self.assertEqual(home_shard(self.sub_id(), 2), 1)

    def test_each_qos_cross_and_same_shard(self):
        for pub_shard in (0, 1):
            for sub_shard in (0, 1):
                for qos in (0, 1, 2):
                    with self.subTest(pub_shard=pub_shard, sub_shard=sub_shard, qos=qos):
                        topic = f"x/{pub_shard}{sub_shard}{qos}"
                        sub = self.on(f"s{pub_shard}{sub_shard}{qos}", sub_shard)
                        sub.subscribe([(topic, 2)])
                        pub = self.on(f"p{pub_shard}{sub_shard}{qos}", pub_shard)
                        pub.publish(topic, b"hop", qos=qos)
                        msg = sub.recv_publish()
                        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain, msg.dup),
                                         (topic, b"hop", qos, False, False))
                        sub.expect_no_packet(0.2)
                        pub.disconnect()
                        sub.disconnect()

    def test_subscribers_on_both_shards_each_get_one(self):
        subs = [self.on(f"s{i}", i % 2) for i in range(4)]
        for s in subs:
            s.subscribe([("both/#", 1)])
        for shard in (0, 1):
            pub = self.on(f"p{shard}", shard)
            pub.publish("both/x", f"from{shard}", qos=1)
            for s in subs:
                msg = s.recv_publish()
                self.assertEqual(msg.payload, f"from{shard}".encode())
        for s in subs:
            s.expect_no_packet(0.2)

    def order_test(self, qos, n=1000):
        sub = self.on(f"ord{qos}", 1)
        sub.subscribe([("ord/x", qos)])
        pub = self.on(f"ordp{qos}", 0)
        col = Collector(sub, n, timeout=15)
        if qos == 0:
            pub.send(b"".join(m.publish("ord/x", str(i)) for i in range(n)))
        elif qos == 1:
            pub.send(b"".join(m.publish("ord/x", str(i), qos=1, pid=i + 1) for i in range(n)))
            for i in range(n):
                pub.expect(m.puback(i + 1), timeout=15)
        else:
            pub.publish_qos2_windows([(i + 1, m.publish("ord/x", str(i), qos=2, pid=i + 1)) for i in range(n)])
        msgs = col.join(40)
        self.assertEqual([x.payload for x in msgs], [str(i).encode() for i in range(n)])
        self.assertTrue(all(x.qos == qos for x in msgs))
        sub.expect_no_packet(0.3)

    def test_order_1000_qos0(self):
        self.order_test(0)

    def test_order_1000_qos1(self):
        self.order_test(1)

    def test_order_1000_qos2(self):
        self.order_test(2)

    def test_order_per_publisher_with_publishers_on_both_shards(self):
        sub = self.on("many", 1)
        sub.subscribe([("mp/+", 1)])
        pubs = [self.on(f"mp{i}", i % 2) for i in range(4)]
        n = 100
        col = Collector(sub, n * len(pubs), timeout=15)
        for i in range(n):
            for k, p in enumerate(pubs):
                p.send(m.publish(f"mp/{k}", str(i), qos=1, pid=i + 1))
        for p in pubs:
            for i in range(n):
                p.expect(m.puback(i + 1), timeout=15)
        msgs = col.join(30)
        for k in range(len(pubs)):
            self.assertEqual([x.payload for x in msgs if x.topic == f"mp/{k}"], [str(i).encode() for i in range(n)])

    def test_retained_across_shards(self):
        pub = self.on("rp", 0)
        # Topics hash onto both shards of the retained store.
        topics = [f"rx/{i}" for i in range(24)]
        self.assertEqual({fnv1a64(t.encode()) % 2 for t in topics}, {0, 1})
        for t in topics:
            pub.publish(t, t, qos=1, retain=True)
        for shard in (0, 1):
            with self.subTest(sub_shard=shard):
                sub = self.on(f"rs{shard}", shard)
                sub.subscribe([("rx/#", 1)])
                got = {}
                for _ in topics:
                    msg = sub.recv_publish()
                    self.assertTrue(msg.retain)
                    got[msg.topic] = msg.payload
                self.assertEqual(got, {t: t.encode() for t in topics})
                sub.expect_no_packet(0.3)
                # Exact-topic subscriptions find each one too.
                for t in topics[:6]:
                    sub.subscribe([(t, 0)])
                    msg = sub.recv_publish()
                    self.assertEqual((msg.topic, msg.retain, msg.qos), (t, True, 0))

    def test_retained_replace_and_clear_across_shards(self):
        a = self.on("ra", 0)
        b = self.on("rb", 1)
        a.publish("rc/t", b"from0", qos=1, retain=True)
        b.publish("rc/t", b"from1", qos=1, retain=True)
        s = self.on("rcs", 0)
        s.subscribe([("rc/t", 1)])
        self.assertEqual(s.recv_publish().payload, b"from1")
        a.publish("rc/t", b"", qos=1, retain=True)
        self.assertEqual(s.recv_publish().payload, b"")  # live, empty
        s2 = self.on("rcs2", 1)
        s2.subscribe([("rc/#", 1)])
        s2.expect_no_packet(0.4)

    def test_crossing_retained_updates_end_the_same_on_both_shards(self):
        # Publishers on the two shards update one retained topic at the same moment (one sets it and the other
        # clears it, or both set it): each shard applies its own update at once and the other's when it arrives,
        # so the two see them in opposite orders. Whatever the order, both shards must end with the same state.
        a, b = self.on("xa", 0), self.on("xb", 1)
        readers = [self.on("xr0", 0), self.on("xr1", 1)]
        for i in range(200):
            topic = f"cross/{i}"
            pa, pb = (b"set%d" % i, b"") if i % 2 == 0 else (b"a%d" % i, b"b%d" % i)
            a.send(m.publish(topic, pa, 1, True, pid=1))
            b.send(m.publish(topic, pb, 1, True, pid=1))
            a.expect(m.puback(1))
            b.expect(m.puback(1))
            states = []
            for r in readers:
                r.subscribe([(topic, 0)])
                r.send(m.PINGREQ_BYTES)  # retained messages are queued before the answer to a later PINGREQ
                r._wait_for(lambda p: p.type == m.PINGRESP, 5.0, "PINGRESP")
                states.append([m.parse_publish(p).payload for p in list(r.backlog) if p.type == m.PUBLISH])
                r.backlog.clear()
            self.assertEqual(states[0], states[1], f"round {i}: shard 0 and shard 1 retain different things")
            self.assertIn(states[0], ([pa], [pb], []) if i % 2 == 0 else ([pa], [pb]), f"round {i}")

    def test_will_across_shards(self):
        for owner_shard in (0, 1):
            with self.subTest(owner_shard=owner_shard):
                watch = self.on(f"ww{owner_shard}", 1 - owner_shard)
                watch.subscribe([("xw/#", 2)])
                owner = self.on(f"wo{owner_shard}", owner_shard, will=m.Will(f"xw/{owner_shard}", b"bye", qos=2))
                owner.close()
                msg = watch.recv_publish()
                self.assertEqual((msg.topic, msg.payload, msg.qos), (f"xw/{owner_shard}", b"bye", 2))
                # No will after DISCONNECT.
                owner = self.on(f"wo{owner_shard}", owner_shard, will=m.Will(f"xw/{owner_shard}", b"no", qos=2))
                owner.disconnect()
                watch.expect_no_packet(0.5)

    def test_takeover_accepted_on_different_shards(self):
        # The listening socket is SO_REUSEPORT per shard, so the kernel spreads connections over both shards by
        # 4-tuple hash; with 10 connections in a row the chance that all were accepted on the same shard is
        # 2^-9. Each new connection must take over the previous one wherever it was accepted.
        cid = client_id_on_shard("tko", 1, 2)
        conns = []
        pub = self.on("tkp", 0)
        for i in range(10):
            c = self.client(cid, clean=False, expect=m.CONNACK_OK if i == 0 else m.CONNACK_OK_SESSION)
            if i == 0:
                c.subscribe([("tk/x", 1)])
            else:
                conns[-1].expect_closed(3)
            conns.append(c)
            pub.publish("tk/x", str(i), qos=1)
            msg = c.recv_publish()
            self.assertEqual(msg.payload, str(i).encode())
        for c in conns[:-1]:
            self.assertTrue(c.closed)
        self.assertTrue(conns[-1].is_open())

    def test_takeover_concurrent_from_two_sockets(self):
        cid = client_id_on_shard("tkc", 0, 2)
        a = self.raw()
        b = self.raw()
        a.send(m.connect(cid, clean=False))
        a.expect(m.CONNACK_OK)
        b.send(m.connect(cid, clean=False))
        b.expect(m.CONNACK_OK_SESSION)
        a.expect_closed(3)
        self.assertTrue(b.is_open())

    def test_unsubscribe_across_shards_stops_routing(self):
        sub = self.on("us", 1)
        other = self.on("uo", 1)  # a second subscriber on the same remote shard
        pub = self.on("up", 0)
        sub.subscribe([("un/x", 1)])
        other.subscribe([("un/x", 1)])
        pub.publish("un/x", b"1", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"1")
        self.assertEqual(other.recv_publish().payload, b"1")
        sub.unsubscribe(["un/x"])
        pub.publish("un/x", b"2", qos=1)
        self.assertEqual(other.recv_publish().payload, b"2")  # shard still interested
        sub.expect_no_packet(0.3)
        other.unsubscribe(["un/x"])
        pub.publish("un/x", b"3", qos=1)
        other.expect_no_packet(0.3)
        sub.subscribe([("un/x", 1)])  # 0 -> 1 again
        pub.publish("un/x", b"4", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"4")

    def test_disconnect_removes_remote_interest(self):
        sub = self.on("ds", 1)
        sub.subscribe([("dr/x", 0)])
        sub.disconnect()
        sub.expect_closed(3)
        pub = self.on("dp", 0)
        pub.publish("dr/x", b"nobody", qos=1)
        sub = self.on("ds2", 1)
        sub.subscribe([("dr/x", 0)])
        pub.publish("dr/x", b"new", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"new")
        sub.expect_no_packet(0.3)

    def test_persistent_session_offline_queue_across_shards(self):
        cid = client_id_on_shard("po", 1, 2)
        c = self.client(cid, clean=False)
        c.subscribe([("po/#", 2)])
        c.disconnect()
        c.expect_closed(3)
        pubs = [self.on("pp0", 0), self.on("pp1", 1)]
        for i in range(20):
            pubs[0].publish("po/a", f"a{i}", qos=1 + i % 2)
        for i in range(20):
            pubs[1].publish("po/b", f"b{i}", qos=1 + i % 2)
        c = self.client(cid, clean=False, expect=m.CONNACK_OK_SESSION)
        msgs = c.recv_publishes(40)
        self.assertEqual([x.payload for x in msgs if x.topic == "po/a"], [f"a{i}".encode() for i in range(20)])
        self.assertEqual([x.payload for x in msgs if x.topic == "po/b"], [f"b{i}".encode() for i in range(20)])

    def test_wildcards_across_shards(self):
        sub = self.on("wc", 1)
        sub.subscribe([("wc/+/x", 1), ("wc/#", 0)], expect=[1, 0])
        pub = self.on("wcp", 0)
        pub.publish("wc/a/x", b"both", qos=1)
        msg = sub.recv_publish()
        self.assertEqual((msg.payload, msg.qos), (b"both", 1))  # once, at the highest QoS
        pub.publish("wc/a/y", b"hash only", qos=1)
        msg = sub.recv_publish()
        self.assertEqual((msg.payload, msg.qos), (b"hash only", 0))
        pub.publish("$wc/a/x", b"dollar", qos=1)
        sub.expect_no_packet(0.4)

    def test_many_clients_spread_over_shards(self):
        subs = [self.on(f"sp{i}", i % 2) for i in range(20)]
        for i, s in enumerate(subs):
            s.subscribe([(f"sp/{i}", 1), ("sp/all", 1)])
        pub = self.on("spp", 0)
        pub.publish("sp/all", b"everyone", qos=1)
        for i, s in enumerate(subs):
            self.assertEqual(s.recv_publish().payload, b"everyone")
            pub.publish(f"sp/{i}", f"only{i}", qos=1)
            self.assertEqual(s.recv_publish().payload, f"only{i}".encode())
        for s in subs:
            s.expect_no_packet(0.05)

    def test_shard_stops_cleanly_with_open_connections(self):
        # Connections on both shards stay open when SIGTERM arrives; the broker must still exit 0 (checked in
        # cleanup) and close them.
        conns = [self.on(f"open{i}", i % 2) for i in range(6)]
        conns[0].subscribe([("x/#", 1)])
        self.broker.stop()
        for c in conns:
            c.expect_closed(5)




class CrossShardEventfdWakeTest(CrossShardTest):
    """The same cross-shard behaviour with shards woken through their eventfds (node.ring_wakeups = false), the
    path a kernel without IORING_OP_MSG_RING takes."""
    SETTINGS = {"node.ring_wakeups": False}


class CrossShardWakeTest(BrokerTest):
    """How a shard wakes another (node.ring_wakeups). Polling off and 30 QoS 1 messages 20 ms apart, so each one
    finds the subscriber's shard asleep and its crossing is a wake-up; the shards' stop lines count them by the way
    taken. At least 20 of the 30: a shard still busy (descheduled, or in a tick) when one comes needs no wake-up."""
    SHARDS = 2
    AUTO_START = False
    STOP_RE = re.compile(rb"shard (\d) stopped; it woke other shards (\d+) times through their rings and (\d+) "
                         rb"through their eventfds, and was woken (\d+) times through its ring")

    def crossings(self, ring_wakeups):
        self.use_broker({"node.ring_wakeups": ring_wakeups, "node.idle_poll_us": 0})
        sub = self.client(client_id_on_shard("wsub", 1, 2))
        sub.subscribe([("wake/x", 1)])
        pub = self.client(client_id_on_shard("wpub", 0, 2))
        for i in range(30):
            time.sleep(0.02)
            pub.publish("wake/x", str(i), qos=1)
            self.assertEqual(sub.recv_publish().payload, str(i).encode())
        stops = {int(s): tuple(int(x) for x in rest)
                 for s, *rest in self.STOP_RE.findall(self.broker.stop_and_read_log())}
        self.assertEqual(sorted(stops), [0, 1], stops)
        return stops

    def test_ring_messages_by_default(self):
        stops = self.crossings(True)
        self.assertGreaterEqual(stops[0][0], 20, stops)  # shard 0 messaged shard 1's ring for every PUBLISH
        self.assertEqual(stops[0][1] + stops[1][1], 0, stops)  # and no shard wrote an eventfd
        self.assertGreaterEqual(stops[1][2], 20, stops)  # shard 1 took those wake-ups from its ring

    def test_eventfds_when_off(self):
        stops = self.crossings(False)
        self.assertEqual(stops[0][0] + stops[1][0], 0, stops)
        self.assertGreaterEqual(stops[0][1], 20, stops)
        self.assertEqual(stops[0][2] + stops[1][2], 0, stops)


class CrossShardBackpressureTest(BrokerTest):
    """A shard that sends another more than it takes (a publisher on shard 0 flooding a topic whose 300 subscribers
    sit on shard 1) stops reading its publishing clients at mqtt.max_cross_shard_bytes instead of queueing without
    end; the publisher's bytes wait in its socket and are all handled once shard 1 has caught up, while a client on
    shard 0 that only pings is read throughout."""
    SHARDS = 2
    AUTO_START = False
    SUBSCRIBERS = 300
    FLOOD_SECONDS = 4.0

    def flood(self, limit):
        # Subscribers that never read, with the smallest send queue: shard 1 drops their copies, but looks at each
        # of them for every run of messages, which makes it the slower shard by far.
        # Under AddressSanitizer (build-debug) freed memory waits in a quarantine of 256 MB by default, which would
        # count as growth here; a release build ignores the variable.
        asan = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=4"]))
        b = self.start_broker(2, {"mqtt.max_outgoing_bytes": 1024, "mqtt.max_cross_shard_bytes": limit},
                              env={"ASAN_OPTIONS": asan})
        self.broker, self.port = b, b.port
        for i in range(self.SUBSCRIBERS):
            self.client(client_id_on_shard(f"bp-sub{i}", 1, 2)).subscribe([("bp/flood", 0)])
        pub = self.client(client_id_on_shard("bp-pub", 0, 2))
        pinger = self.client(client_id_on_shard("bp-ping", 0, 2))
        before = rss_kib(b.proc.pid)
        chunk = m.publish("bp/flood", b"0123456789abcdef") * 4096
        stop = threading.Event()
        sent = []

        def send():
            # Whole chunks only: a send that waits for the broker to read again finishes (timeout 30 s) before the
            # loop looks at the stop flag, so the stream is never cut inside a packet.
            pub.sock.settimeout(30)
            while not stop.is_set():
                pub.sock.sendall(chunk)
                sent.append(len(chunk))

        pongs = []

        def ping():
            while not stop.is_set():
                pinger.send(m.pingreq())
                pinger.expect(m.PINGRESP_BYTES, timeout=10)
                pongs.append(1)
                time.sleep(0.005)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        pinging = threading.Thread(target=ping, daemon=True)
        pinging.start()
        peak = before
        end = time.monotonic() + self.FLOOD_SECONDS
        while time.monotonic() < end:
            time.sleep(0.05)
            peak = max(peak, rss_kib(b.proc.pid))
        stop.set()
        sender.join(35)
        pinging.join(15)
        self.assertFalse(sender.is_alive(), "the publisher's send never finished")
        self.assertFalse(pinging.is_alive(), "a PINGRESP never came")
        self.assertGreater(len(pongs), 50)
        return pub, before, peak, len(sent)

    def test_slower_shard_holds_the_faster_ones_reads(self):
        pub, before, peak, chunks = self.flood(1 << 20)
        detail = f"RSS {before} KiB before the flood, {peak} KiB at most; {chunks} chunks of 4096 messages sent"
        self.assertLess(peak - before, 48 * 1024, detail)
        log = self.broker.log().decode("utf-8", "replace")
        self.assertRegex(log, r"shard 0 stops reading its publishing clients: \d+ bytes of its messages wait for "
                              r"another shard, over mqtt\.max_cross_shard_bytes = 1048576", detail)
        # The PINGRESP comes after every message sent before it was handled: the hold ended, and the publisher was
        # neither dropped nor closed.
        pub.send(m.pingreq())
        pub.expect(m.PINGRESP_BYTES, timeout=30)
        # Each hold kept the publisher only: the pinger, whose PINGREQs kept coming during the holds, was read on.
        held = [int(n) for n in re.findall(r"shard 0 reads its publishing clients again \((\d+) held\)",
                                           self.broker.log().decode("utf-8", "replace"))]
        self.assertTrue(held, "no hold ended")
        self.assertEqual(max(held), 1, f"{sum(h > 1 for h in held)} of {len(held)} holds kept more than the publisher")
        self.assert_broker_healthy("bp-after")


def subscribe_and_leave(prefix: str, first: int, n: int, filler: str) -> bytes:
    """SUBSCRIBE and UNSUBSCRIBE of n new filters `prefix/i/filler` (i from first): each pair makes the client's
    shard send the others a route add and a route delete."""
    return b"".join(m.subscribe(1 + i % 60000, [(f"{prefix}/{i}/{filler}", 0)]) +
                    m.unsubscribe(1 + i % 60000, [f"{prefix}/{i}/{filler}"]) for i in range(first, first + n))


class CrossShardRouteUpdatesTest(BrokerTest):
    """Route updates toward a shard that takes nothing weigh what they hold in mqtt.max_cross_shard_bytes, and the
    client whose SUBSCRIBEs and UNSUBSCRIBEs make them is held as a publisher is."""
    SHARDS = 2
    AUTO_START = False

    def test_a_client_churning_filters_toward_a_stalled_shard_is_held(self):
        # A client on shard 0 subscribes and unsubscribes 20 KB filters while shard 1 is stopped: each pair sends
        # shard 1 two copies of the filter. They weighed nothing (one unit each) and the client was never held: 4,000
        # pairs in 2 s grew the broker by 147 MiB, without bound. Now its reads stop at the limit (1 MiB) and go on
        # once shard 1 has taken half; every SUBACK and UNSUBACK comes.
        b = self.start_broker(2, {"mqtt.max_cross_shard_bytes": 1 << 20})
        self.broker, self.port = b, b.port
        churner = self.client(client_id_on_shard("rc-churn", 0, 2))
        pinger = self.client(client_id_on_shard("rc-ping", 0, 2))
        got = bytearray()
        stop = threading.Event()

        def read_acks() -> None:
            churner.sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = churner.sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:  # closed by the test's cleanup
                    return
                if not data:
                    return
                got.extend(data)

        reader = threading.Thread(target=read_acks, daemon=True)
        reader.start()
        self.addCleanup(stop.set)
        filler = "f" * 20000
        pairs = 0
        before = peak = rss_kib(b.proc.pid)
        with stalled_thread(b.proc.pid, "ringmq-shard1"):
            churner.sock.settimeout(0.5)
            end = time.monotonic() + 2
            try:
                while time.monotonic() < end:
                    # A batch cut by the timeout ends the loop; `pairs` counts whole ones.
                    churner.sock.sendall(subscribe_and_leave("rc", pairs, 20, filler))
                    pairs += 20
                    peak = max(peak, rss_kib(b.proc.pid))
            except socket.timeout:
                pass  # held: the broker stopped reading it
            # Shard 0 reads its other clients on: only the churner is held.
            pinger.send(m.pingreq())
            pinger.expect(m.PINGRESP_BYTES, timeout=5)
            peak = max(peak, rss_kib(b.proc.pid))
        detail = f"{pairs} pairs; RSS {before} KiB before, {peak} KiB at most"
        self.assertLess(peak - before, 24 * 1024, detail)
        self.assertRegex(b.log().decode("utf-8", "replace"),
                         r"shard 0 stops reading its publishing clients: \d+ bytes of its messages wait for another "
                         r"shard, over mqtt\.max_cross_shard_bytes = 1048576", detail)
        deadline = time.monotonic() + 30
        while len(got) < 9 * pairs and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertGreaterEqual(len(got), 9 * pairs, f"SUBACK (5 bytes) and UNSUBACK (4) for each pair: {detail}")
        self.assert_broker_healthy("rc-after")

    def test_a_takeover_is_not_held_for_the_routes_of_the_session_it_replaces(self):
        # During a hold, a CONNECT taking over a clean session drops that session's subscriptions: the route deletes
        # it sends shard 1 are not the new client's, which must be read on (it was held until the hold ended).
        b = self.start_broker(2, {"mqtt.max_cross_shard_bytes": 65536})
        self.broker, self.port = b, b.port
        xid = client_id_on_shard("tk-x", 0, 2)
        self.client(xid).subscribe([("tk/x/only", 0)])
        churner = self.client(client_id_on_shard("tk-churn", 0, 2))
        spare = [self.raw() for _ in range(8)]  # accepted by either shard: those on the stopped one stay unanswered
        filler = "f" * 5000
        with stalled_thread(b.proc.pid, "ringmq-shard1"):
            churner.sock.settimeout(2)
            try:
                churner.sock.sendall(subscribe_and_leave("tk", 0, 40, filler))
            except socket.timeout:
                pass  # held already
            self.wait_until(lambda: b"stops reading its publishing clients" in b.log(), what="the hold")
            taker = None
            while spare and taker is None:
                c = spare.pop()
                c.send(m.connect(xid))
                try:
                    c.expect(m.CONNACK_OK, timeout=1)
                    taker = c
                except (AssertionError, OSError):
                    continue
            self.assertIsNotNone(taker, "no connection was accepted by shard 0")
            taker.send(m.pingreq())
            taker.expect(m.PINGRESP_BYTES, timeout=3)


class CrossShardBacklogSleepTest(BrokerTest):
    """A shard whose messages for another shard wait for room in a full queue (under mqtt.max_cross_shard_bytes, so
    no hold) sleeps until that shard has emptied the queue, instead of going round its loop: a burst on shard 0 for
    subscribers on shard 1, which takes much longer to handle it than shard 0 takes to read it, costs shard 0 a
    small part of what it costs shard 1, and every message of it arrives."""
    SHARDS = 2
    AUTO_START = False
    OFFLINE = 200
    CHUNKS = 112  # of 4096 28-byte PUBLISHes (112 KiB each): 12.8 MB, under the 16 MiB limit

    def test_a_shard_with_a_backlog_sleeps_until_the_queue_is_empty(self):
        b = self.start_broker(2, {"node.smp_queue_size": 64, "mqtt.max_queued_messages": 16,
                                  "mqtt.max_outgoing_bytes": 64 << 20})
        self.broker, self.port = b, b.port
        # Offline persistent sessions make shard 1 handle each message one by one (queue it, or count it dropped).
        for i in range(self.OFFLINE):
            c = self.client(client_id_on_shard(f"bl-off{i}", 1, 2), clean=False)
            c.subscribe([("bl/burst", 0)])
            c.disconnect()
        # One subscriber on shard 1 reads everything, counting bytes: each PUBLISH reaches it as it was sent.
        reader = self.client(client_id_on_shard("bl-reader", 1, 2))
        reader.subscribe([("bl/burst", 0), ("bl/end", 0)])
        frame = m.publish("bl/burst", b"0123456789abcdef")
        end = m.publish("bl/end", b"done")
        want = len(frame) * 4096 * self.CHUNKS + len(end)
        seen = {"bytes": 0, "tail": b""}

        def read():
            reader.sock.settimeout(120)
            while seen["bytes"] < want:
                data = reader.sock.recv(1 << 20)
                if not data:
                    break
                seen["bytes"] += len(data)
                seen["tail"] = (seen["tail"] + data)[-len(end):]

        pub = self.client(client_id_on_shard("bl-pub", 0, 2))
        time.sleep(0.3)  # the SUBSCRIBEs' routes reach shard 0, and the shards go idle
        cpu0, cpu1 = cpu_seconds(b.proc.pid, "ringmq-shard0"), cpu_seconds(b.proc.pid, "ringmq-shard1")
        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        chunk = frame * 4096
        pub.sock.settimeout(60)
        for _ in range(self.CHUNKS):
            pub.sock.sendall(chunk)
        pub.send(end)
        reading.join(120)
        self.assertFalse(reading.is_alive(), f"the reader got {seen['bytes']} of {want} bytes")
        used0 = cpu_seconds(b.proc.pid, "ringmq-shard0") - cpu0
        used1 = cpu_seconds(b.proc.pid, "ringmq-shard1") - cpu1
        detail = f"shard 0 used {used0:.2f} CPU-s, shard 1 {used1:.2f} CPU-s"
        # Nothing lost or added on the way, and the last message came last.
        self.assertEqual(seen["bytes"], want, detail)
        self.assertEqual(seen["tail"], end, detail)
        log = b.log().decode("utf-8", "replace")
        self.assertNotIn("stops reading its publishing clients", log, "a hold would sleep anyway: " + detail)
        self.assertGreater(used1, 0.3, "shard 1 was not the slower shard by enough to tell: " + detail)
        self.assertLess(used0, 0.3 * used1, detail)
        self.assert_broker_healthy("bl-after")


class CrossShardAckAfterBacklogTest(BrokerTest):
    """An ack that tells a client its SUBSCRIBE or retained PUBLISH is in place goes out only once what that packet
    sent the other shards (route adds, retained updates) is in their queues: with node.smp_queue_size = 64 a
    SUBSCRIBE of thousands of filters, or a burst of retained PUBLISHes, leaves most of them waiting for room, and a
    client on the other shard that acts the moment the ack arrives must still find them there."""
    SHARDS = 2
    SETTINGS = {"node.smp_queue_size": 64}
    FILTERS = 4000
    ROUNDS = 4

    def test_publish_right_after_a_suback_reaches_the_new_subscriber(self):
        pub = self.client(self.cid("ab-pub", 1))
        for r in range(self.ROUNDS):
            sub = self.client(self.cid(f"ab-sub{r}", 0))
            sub.send(m.subscribe(1, [(f"ab/{r}/{i}", 0) for i in range(self.FILTERS)]))
            sub.expect(m.suback(1, [0] * self.FILTERS), timeout=20)
            pub.publish(f"ab/{r}/{self.FILTERS - 1}", b"last")
            msg = sub.recv_publish(timeout=5)
            self.assertEqual((msg.topic, msg.payload), (f"ab/{r}/{self.FILTERS - 1}", b"last"), f"round {r}")
            sub.disconnect()

    def test_publish_right_after_a_suback_before_a_disconnect_reaches_the_offline_session(self):
        # The SUBACK of a SUBSCRIBE sent with a DISCONNECT behind it goes with the close's answers, which waited for
        # nothing until stop 71: with the route adds past a full queue, the publish below was lost to the session.
        # Every other round the CONNECT is in the same write and the client ends its side right after it: the close
        # then finds its receive ended, nothing pending, and must keep the connection for its answers.
        pub = self.client(self.cid("ad-pub", 1))
        for r in range(self.ROUNDS):
            name = self.cid(f"ad-sub{r}", 0)
            packets = m.subscribe(1, [(f"ad/{r}/{i}", 1) for i in range(self.FILTERS)]) + m.disconnect()
            if r % 2:
                sub = self.raw()
                sub.send(m.connect(name, clean=False) + packets)
                sub.sock.shutdown(socket.SHUT_WR)
                sub.expect(m.connack(), timeout=20)
            else:
                sub = self.client(name, clean=False)
                sub.send(packets)
            sub.expect(m.suback(1, [1] * self.FILTERS), timeout=20)
            pub.publish(f"ad/{r}/{self.FILTERS - 1}", b"kept", qos=1)
            sub.expect_closed()
            back = self.client(name, clean=False, expect=m.connack(session_present=True))
            msg = back.recv_publish(timeout=5)
            self.assertEqual((msg.topic, msg.payload), (f"ad/{r}/{self.FILTERS - 1}", b"kept"), f"round {r}")
            back.send(m.disconnect())

    def test_subscribe_right_after_a_puback_gets_the_retained_message(self):
        pub = self.client(self.cid("ar-pub", 0))
        for r in range(self.ROUNDS):
            burst = b"".join(m.publish(f"ar/{r}/{i}", b"x", retain=True) for i in range(self.FILTERS))
            pub.send(burst + m.publish(f"ar/{r}/last", b"kept", qos=1, retain=True, pid=r + 1))
            pub.expect(m.puback(r + 1), timeout=20)
            sub = self.client(self.cid(f"ar-sub{r}", 1))
            sub.subscribe([(f"ar/{r}/last", 0)])
            msg = sub.recv_publish(timeout=10)  # after 4000 retained PUBLISHes: a busy host may take a while
            self.assertEqual((msg.topic, msg.payload, msg.retain), (f"ar/{r}/last", b"kept", True), f"round {r}")
            sub.disconnect()


class CrossShardAckAfterDrainTest(CrossShardAckAfterBacklogTest):
    """The same at the default node.smp_queue_size (16384): 12000 route adds fit the queue, so the SUBACK goes at once;
    the other shard must still take all of them before it handles the PUBLISH sent on the SUBACK (it took 4096 a turn,
    and the PUBLISH could come in between)."""
    SETTINGS = {}
    FILTERS = 12000


class CrossShardAckBeforeAFullSubmissionQueueTest(BrokerTest):
    """A SUBACK goes out only once its route adds are visible to the other shard, even in a turn with more sends than
    the shard's io_uring submission queue holds (4096): the queue is submitted when it fills, midway through the
    turn's sends, and a SUBACK among the first of them reached the client before the shard published the route adds
    after the sends (a publish on the other shard, sent on the SUBACK, was routed without the new subscriber and
    lost: every round, until stop 71). Here a client SUBSCRIBEs and, in the same write, PUBLISHes to a topic with more
    subscribers on its shard than that queue holds, with node.sends_per_turn raised so that one turn starts every
    send."""
    SHARDS = 2
    AUTO_START = False
    ROUNDS = 4

    def test_publish_right_after_a_suback_in_a_turn_of_more_sends_than_the_submission_queue_holds(self):
        b = self.start_broker(self.SHARDS, {"node.sends_per_turn": 65536})
        self.broker, self.port = b, b.port
        sq = re.search(rb"shard 0 started \(io_uring [^,]+, (\d+)-entry submission queue", b.log())
        self.assertIsNotNone(sq, "the shard's start-up line")
        fanout = int(sq.group(1)) + 200
        want = fanout + 500
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
            except (ValueError, OSError):
                self.skipTest(f"the open-file limit ({soft}/{hard}) cannot be raised to {want}")
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        ids = []
        i = 0
        while len(ids) < fanout:
            if home_shard(f"sq-fan-{i}", self.SHARDS) == 0:
                ids.append(f"sq-fan-{i}")
            i += 1
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for cid in ids:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            socks.append(s)
            s.sendall(m.connect(cid, keepalive=600) + m.subscribe(1, [("sq/fan", 0)]))
        greeting = m.connack() + m.suback(1, [0])
        for s in socks:
            self.assertEqual(read_exactly(s, len(greeting)), greeting)
        sub = self.client(self.cid("sq-sub", 0))
        pub = self.client(self.cid("sq-pub", 1))
        fan = m.publish("sq/fan", b"f" * 256)
        for r in range(self.ROUNDS):
            sub.send(m.subscribe(10 + r, [(f"sq/new/{r}", 0)]) + fan)
            sub.expect(m.suback(10 + r, [0]), timeout=10)
            pub.publish(f"sq/new/{r}", b"after the suback")
            msg = sub.recv_publish(timeout=5)
            self.assertEqual((msg.topic, msg.payload), (f"sq/new/{r}", b"after the suback"), f"round {r}")
        # The fan-out itself went to every subscriber, each round, in order.
        for k, s in enumerate(socks):
            self.assertEqual(read_exactly(s, len(fan) * self.ROUNDS), fan * self.ROUNDS, f"subscriber {k}")
        # A check that the queue did fill midway through turns before the stop, as the rounds need it to.
        log = b.stop_and_read_log().decode("utf-8", "replace")
        forced = re.search(r"shard 0 entered io_uring .* submission queue was submitted (\d+) times midway through a "
                           r"turn before the stop", log)
        self.assertIsNotNone(forced, "the shard's stop line")
        self.assertGreaterEqual(int(forced.group(1)), self.ROUNDS, forced.group(0))


class CrossShardRetainedRaceTest(BrokerTest):
    """A retained update published on shard 0 while a client subscribes on shard 1 reaches that subscriber, as its
    retained message or live: shard 1 delivers the update to its own subscribers as it stores it. Sent apart, the
    live copy went only where shard 0 knew of a route; the subscriber was sent the older retained message by shard 1
    before the update arrived there, and the update never (the SUBSCRIBE's 2000 other filters keep shard 1 busy long
    enough for the PUBLISH to be handled meanwhile)."""
    SHARDS = 2
    ROUNDS = 15

    def test_update_during_a_subscribe_on_another_shard_is_not_missed(self):
        pub = self.client(self.cid("rr-pub", 0))
        missed = []
        for r in range(self.ROUNDS):
            topic = f"rr/{r}"
            pub.publish(topic, b"old", qos=1, retain=True)
            time.sleep(0.05)  # every shard has stored "old"
            sub = self.client(self.cid(f"rr-sub{r}", 1))
            sub.send(m.subscribe(1, [(topic, 0)] + [(f"rr-other/{r}/{i}", 0) for i in range(2000)]))
            pub.send(m.publish(topic, b"new", qos=1, retain=True, pid=1000 + r))
            pub.expect(m.puback(1000 + r), timeout=10)
            seen = []
            # Until the SUBACK (the 2000 filters take a while on a busy host), then 1 s for what follows it.
            deadline, subacked = time.monotonic() + 10, False
            while time.monotonic() < deadline:
                try:
                    p = sub.read_packet(max(deadline - time.monotonic(), 0.01))
                except TimeoutError:
                    break
                if p.type == m.PUBLISH:
                    seen.append(m.parse_publish(p).payload)
                elif p.type == m.SUBACK and not subacked:
                    subacked, deadline = True, time.monotonic() + 1.0
            if not subacked:
                missed.append((r, "no SUBACK", seen))
            elif not seen or seen[-1] != b"new":
                missed.append((r, seen))
            sub.disconnect()
        self.assertEqual(missed, [], "rounds whose subscriber ended with the older message")

    def test_retained_publishes_reach_other_shards_once(self):
        # The retained update is the other shards' live copy: a PUBLISH, a will and a QoS 1 PUBLISH that are
        # retained each reach a subscriber on the other shard exactly once, live, without the retain flag.
        sub = self.client(self.cid("ro-sub", 1))
        sub.subscribe([("ro/#", 1)])
        pub = self.client(self.cid("ro-pub", 0))
        pub.publish("ro/a", b"p0", retain=True)
        pub.publish("ro/b", b"p1", qos=1, retain=True)
        owner = self.client(self.cid("ro-owner", 0), will=m.Will("ro/w", b"gone", qos=1, retain=True))
        owner.abort()
        got = sorted((x.topic, x.payload, x.qos, x.retain) for x in sub.recv_publishes(3))
        self.assertEqual(got, [("ro/a", b"p0", 0, False), ("ro/b", b"p1", 1, False), ("ro/w", b"gone", 1, False)])
        sub.expect_no_packet(0.3)
        late = self.client(self.cid("ro-late", 1))
        late.subscribe([("ro/#", 1)])
        got = sorted((x.topic, x.payload, x.retain) for x in late.recv_publishes(3))
        self.assertEqual(got, [("ro/a", b"p0", True), ("ro/b", b"p1", True), ("ro/w", b"gone", True)])
