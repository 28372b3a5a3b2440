"""SUBSCRIBE / UNSUBSCRIBE: SUBACK bytes, granted QoS, 0x80 for invalid filters, wildcard matching, $-topics,
overlapping subscriptions, resubscribe."""

import mqtt_raw as m
from broker import shard_variants

# (filter, topic, matches) per the 3.1.1 spec section 4.7.
WILDCARD_TABLE = [
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b", "a", False),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a", False),
    ("a/+", "a/", True),
    ("+/b", "a/b", True),
    ("+/b", "/b", True),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+", "/a", False),
    ("+/+", "/a", True),
    ("/+", "/a", True),
    ("a/#", "a", True),
    ("a/#", "a/b", True),
    ("a/#", "a/b/c/d", True),
    ("a/#", "ab/c", False),
    ("a/+/c/#", "a/x/c", True),
    ("a/+/c/#", "a/x/c/d/e", True),
    ("a/+/c/#", "a/x/d/c", False),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("a/b/+", "a/b/c", True),
    ("+/+/+", "a/b/c", True),
    ("+/+/+", "a/b", False),
    ("A/B", "a/b", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
]

TOPICS = sorted({t for _, t, _ in WILDCARD_TABLE})


class SubscribeCases:
    def test_suback_exact_bytes(self):
        c = self.client(self.sub_id())
        c.send(m.subscribe(0x0102, [("a/b", 0), ("a/+", 1), ("a/#", 2)]))
        c.expect(bytes.fromhex("90 05 01 02 00 01 02"))

    def test_single_filter_each_qos(self):
        c = self.client(self.sub_id())
        for qos in (0, 1, 2):
            c.send(m.subscribe(10 + qos, [(f"q/{qos}", qos)]))
            c.expect(bytes([0x90, 0x03, 0x00, 10 + qos, qos]))

    def test_invalid_filters_get_0x80_others_granted(self):
        c = self.client(self.sub_id())
        c.send(m.subscribe(3, [("x/y", 1), ("a/#/b", 1), ("z", 2), ("a/b#", 0), ("a+/b", 2), ("+a", 1),
                               ("#/a", 0), ("ok/+/#", 2)]))
        c.expect(bytes.fromhex("90 0a 00 03 01 80 02 80 80 80 80 02"))
        # The valid ones work; the connection is still up.
        pub = self.client(self.pub_id())
        pub.publish("z", b"zz", qos=2)
        msg = c.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("z", b"zz", 2))
        pub.publish("ok/1/2/3", b"deep", qos=1)
        self.assertEqual(c.recv_publish().payload, b"deep")

    def test_wildcard_matching_table(self):
        pub = self.client(self.pub_id())
        filters = sorted({f for f, _, _ in WILDCARD_TABLE})
        subs = {}
        for i, flt in enumerate(filters):
            s = self.client(self.cid(f"w{i}", i))
            s.subscribe([(flt, 0), (f"end/{i}", 0)])
            subs[flt] = (i, s)
        for t in TOPICS:
            pub.publish(t, t, qos=0)
        for i in range(len(filters)):
            pub.publish(f"end/{i}", b"", qos=0)
        for flt, (i, s) in subs.items():
            got = set()
            while True:
                msg = s.recv_publish()
                if msg.topic == f"end/{i}":
                    break
                if msg.topic.startswith("end/"):
                    continue
                self.assertEqual(msg.payload, msg.topic.encode())
                got.add(msg.topic)
            expected = {t for f, t, ok in WILDCARD_TABLE if f == flt and ok}
            not_expected = {t for f, t, ok in WILDCARD_TABLE if f == flt and not ok}
            with self.subTest(filter=flt):
                self.assertTrue(expected <= got, f"{flt!r} missed {expected - got}")
                self.assertFalse(got & not_expected, f"{flt!r} wrongly matched {got & not_expected}")

    def test_dollar_topics_not_matched_by_leading_wildcards(self):
        wild = self.client(self.sub_id("wild"))
        wild.subscribe([("#", 1), ("+/x", 1), ("+/#", 1), ("+", 1)])
        exact = self.client(self.sub_id("exact"))
        exact.subscribe([("$test/x", 1), ("$test/#", 1)], expect=[1, 1])
        plus = self.client(self.sub_id("plus"))
        plus.subscribe([("$test/+", 1)])
        pub = self.client(self.pub_id())
        pub.publish("$test/x", b"dollar", qos=1)
        pub.publish("normal/x", b"plain", qos=1)
        # exact: subscribed twice (overlap) -> once.
        msg = exact.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("$test/x", b"dollar"))
        exact.expect_no_packet(0.3)
        msg = plus.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("$test/x", b"dollar"))
        # The wildcard subscriber sees only the normal topic.
        msg = wild.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("normal/x", b"plain"))
        wild.expect_no_packet(0.3)

    def test_overlapping_subscriptions_deliver_once_at_highest_qos(self):
        sub = self.client(self.sub_id())
        sub.subscribe([("o/#", 1), ("o/+", 2), ("o/x", 0), ("+/x", 1)])
        pub = self.client(self.pub_id())
        pub.publish("o/x", b"ov", qos=2)
        msg = sub.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("o/x", b"ov", 2))
        sub.expect_no_packet(0.5)
        # Limited by the publish QoS.
        pub.publish("o/x", b"ov1", qos=1)
        msg = sub.recv_publish()
        self.assertEqual((msg.payload, msg.qos), (b"ov1", 1))
        sub.expect_no_packet(0.5)

    def test_resubscribe_replaces_qos(self):
        sub = self.client(self.sub_id())
        sub.subscribe([("r/x", 0)])
        sub.subscribe([("r/x", 2)])
        pub = self.client(self.pub_id())
        pub.publish("r/x", b"q", qos=2)
        msg = sub.recv_publish()
        self.assertEqual(msg.qos, 2)
        sub.expect_no_packet(0.4)
        sub.subscribe([("r/x", 1)])
        pub.publish("r/x", b"q", qos=2)
        self.assertEqual(sub.recv_publish().qos, 1)
        sub.expect_no_packet(0.4)

    def test_unsubscribe(self):
        sub = self.client(self.sub_id())
        sub.subscribe([("u/a", 1), ("u/+", 1)])
        sub.send(m.unsubscribe(0x0a0b, ["u/a"]))
        sub.expect(bytes.fromhex("b0 02 0a 0b"))
        pub = self.client(self.pub_id())
        pub.publish("u/a", b"still", qos=1)  # matched by u/+ still
        self.assertEqual(sub.recv_publish().payload, b"still")
        sub.expect_no_packet(0.3)
        sub.unsubscribe(["u/+"])
        pub.publish("u/a", b"gone", qos=1)
        sub.expect_no_packet(0.5)

    def test_unsubscribe_multiple_and_unknown(self):
        sub = self.client(self.sub_id())
        sub.subscribe([("m/1", 0), ("m/2", 0)])
        sub.send(m.unsubscribe(77, ["m/1", "never/subscribed", "m/2"]))
        sub.expect(bytes.fromhex("b0 02 00 4d"))
        pub = self.client(self.pub_id())
        pub.publish("m/1", b"x")
        pub.publish("m/2", b"x")
        sub.expect_no_packet(0.5)

    def test_unsubscribe_wildcard_filter_is_literal(self):
        # Unsubscribing "a/+" removes that filter only, not "a/b".
        sub = self.client(self.sub_id())
        sub.subscribe([("l/b", 0), ("l/+", 0)])
        sub.unsubscribe(["l/+"])
        pub = self.client(self.pub_id())
        pub.publish("l/b", b"lit")
        pub.publish("l/c", b"other")
        self.assertEqual(sub.recv_publish().topic, "l/b")
        sub.expect_no_packet(0.4)

    def test_subscription_per_client_isolated(self):
        a = self.client(self.sub_id("a"))
        b = self.client(self.cid("b", 0))
        a.subscribe([("iso/a", 0)])
        b.subscribe([("iso/b", 0)])
        pub = self.client(self.pub_id())
        pub.publish("iso/a", b"A")
        pub.publish("iso/b", b"B")
        self.assertEqual(a.recv_publish().payload, b"A")
        self.assertEqual(b.recv_publish().payload, b"B")
        a.expect_no_packet(0.3)
        b.expect_no_packet(0.1)

    def test_subscriptions_end_with_clean_session_connection(self):
        sub = self.client(self.sub_id(), clean=True)
        sub.subscribe([("gone/x", 1)])
        sub.disconnect()
        sub.expect_closed(3)
        again = self.client(self.sub_id(), clean=True)
        pub = self.client(self.pub_id())
        pub.publish("gone/x", b"x", qos=1)
        again.expect_no_packet(0.5)

    def test_many_filters_in_one_subscribe(self):
        sub = self.client(self.sub_id())
        topics = [(f"many/{i}", i % 3) for i in range(100)]
        sub.subscribe(topics)
        pub = self.client(self.pub_id())
        for i in range(0, 100, 11):
            pub.publish(f"many/{i}", str(i), qos=2)
            msg = sub.recv_publish()
            self.assertEqual((msg.topic, msg.qos), (f"many/{i}", i % 3))


shard_variants(SubscribeCases, globals())
