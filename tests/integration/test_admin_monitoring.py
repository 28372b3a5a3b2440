"""Admin REST API v2: listeners, metrics, statistics and plugins (ringmq_retainer, ringmq_sys, ringmq_admin), and the
node name everywhere. Metrics and statistics are per node, summed over the shards: with --shards 2 the traffic is
split over both shards and the deltas must still add up exactly."""

import json
import time

import mqtt_raw as m
from admin_client import (LISTENER_KEYS, METRIC_NAMES, PLUGIN_KEYS, STATS_KEYS, AdminTest, seg)
from broker import shard_variants

PLUGINS = ("ringmq_retainer", "ringmq_sys", "ringmq_admin")


class CountingClient:
    """Wraps a RawClient's send to count the bytes the broker receives from it."""

    def __init__(self, raw):
        self.raw = raw
        self.sent = 0
        orig = raw.send

        def send(data):
            self.sent += len(data)
            orig(data)

        raw.send = send


# --------------------------------------------------------------------------------------------------------------
# Listeners


class ListenerCases:
    def check_listener(self, row):
        self.assert_keys(row, LISTENER_KEYS)
        self.assertIsInstance(row["protocol"], str)
        self.assertIsInstance(row["listen"], str)
        for key in ("acceptors", "max_clients", "current_clients"):
            self.assertIs(type(row[key]), int, key)
            self.assertGreaterEqual(row[key], 0, key)
        sc = row["shutdown_count"]
        if isinstance(sc, dict):  # [] when empty, else {"reason": count, ...}
            for reason, count in sc.items():
                self.assertIsInstance(count, int, reason)
        else:
            self.assertEqual(sc, [], row)

    def mqtt_row(self, rows):
        mqtt = [r for r in rows if r["protocol"] == "mqtt:tcp"]
        self.assertEqual(len(mqtt), 1, rows)
        return mqtt[0]

    def test_listeners_all_nodes_and_one_node(self):
        clients = [self.client(self.cid(f"l{i}", i)) for i in range(3)]
        all_nodes = self.get("monitoring/listeners")
        self.assertIsInstance(all_nodes, dict, "all nodes: an object keyed by node name")
        self.assertEqual(list(all_nodes), [self.NODE])
        listed = all_nodes[self.NODE]
        one = self.get("monitoring/listeners/" + seg(self.NODE))
        self.assertIsInstance(listed, list)
        self.assertIsInstance(one, list)
        for row in listed + one:
            self.check_listener(row)
        self.assertEqual(sorted(json.dumps(r) for r in listed), sorted(json.dumps(r) for r in one),
                         "the same listeners in both views")
        row = self.mqtt_row(one)
        self.assertEqual(row["listen"], f"127.0.0.1:{self.port}")
        self.assertEqual(row["current_clients"], 3)
        self.assertGreater(row["max_clients"], 0)
        self.assertGreater(row["acceptors"], 0)

        clients[1].disconnect()
        clients[2].close()
        self.wait_equal(lambda: self.mqtt_row(self.get("monitoring/listeners/" + seg(self.NODE)))["current_clients"],
                        1, what="current_clients after two closes")
        self.assertEqual(self.mqtt_row(self.get("monitoring/listeners")[self.NODE])["current_clients"], 1)
        self.not_found("GET", "monitoring/listeners/" + seg("nobody@127.0.0.1"))


    def test_shutdown_count_names_a_publish_past_the_topic_level_limit(self):
        # The close that a PUBLISH deeper than mqtt.max_topic_levels brings is counted under its own reason (until
        # stop 73 it was a protocol error), on whichever shard the client lives.
        self.use_broker({"mqtt.max_topic_levels": 4})
        for shard in range(self.SHARDS):
            c = self.client(self.cid(f"lv{shard}", shard))
            c.send(m.publish("a/b/c/d/e", b"x", qos=1, pid=3))
            c.expect_closed(3)
        self.wait_equal(lambda: self.mqtt_row(self.get("monitoring/listeners/" + seg(self.NODE)))["shutdown_count"],
                        {"topic_levels_exceeded": self.SHARDS}, what="shutdown_count")


# --------------------------------------------------------------------------------------------------------------
# Metrics


class MetricCases:
    def delta_fn(self, before, keys):
        def delta():
            now = self.metrics()
            return {k: now[k] - before[k] for k in keys}
        return delta

    def test_metrics_shape(self):
        all_nodes = self.get("monitoring/metrics/")
        self.assertIsInstance(all_nodes, dict, "all nodes: an object keyed by node name")
        self.assertEqual(list(all_nodes), [self.NODE])
        self.assertEqual(set(self.get("monitoring/metrics")), {self.NODE}, "without the seed's trailing slash")
        for metrics in (all_nodes[self.NODE], self.metrics()):
            self.assertEqual(set(metrics), METRIC_NAMES)
            for name, value in metrics.items():
                self.assertIs(type(value), int, name)
                self.assertGreaterEqual(value, 0, name)
        self.not_found("GET", "monitoring/metrics/" + seg("nobody@127.0.0.1"))

    def test_metrics_count_mqtt_traffic(self):
        before = self.metrics()
        a = CountingClient(self.raw())
        b = CountingClient(self.raw())
        a.raw.connect(self.cid("ma", 0))
        b.raw.connect(self.cid("mb", 1))
        b.raw.subscribe([("mt/x", 2)])
        for i in range(3):
            a.raw.publish("mt/none", f"n{i}", qos=1)  # nobody subscribed: dropped
        for qos in (0, 1, 2):
            a.raw.publish("mt/x", f"m{qos}", qos=qos)
            msg = b.raw.recv_publish()  # acknowledged: PUBACK / PUBREC + PUBCOMP
            self.assertEqual((msg.payload, msg.qos), (f"m{qos}".encode(), qos))
        a.raw.send(m.puback(777))  # an acknowledgement for nothing: received and missed
        a.raw.send(m.pubrec(778))  # the same, but answered: the client holds 778 until released
        a.raw.expect(m.pubrel(778))
        self.assertTrue(a.raw.is_open())
        self.assertTrue(b.raw.is_open())
        b.raw.unsubscribe(["mt/x"])
        a.raw.disconnect()
        b.raw.disconnect()
        a.raw.expect_closed(3)
        b.raw.expect_closed(3)
        expected = {
            "packets/connect": 2, "packets/connack": 2,
            "packets/subscribe": 1, "packets/suback": 1, "packets/unsubscribe": 1, "packets/unsuback": 1,
            "packets/publish/received": 6, "messages/received": 6,
            "messages/qos0/received": 1, "messages/qos1/received": 4, "messages/qos2/received": 1,
            "packets/puback/sent": 4, "packets/pubrec/sent": 1, "packets/pubrel/received": 1,
            "packets/pubcomp/sent": 1,
            "packets/publish/sent": 3, "messages/sent": 3,
            "messages/qos0/sent": 1, "messages/qos1/sent": 1, "messages/qos2/sent": 1,
            "packets/puback/received": 2, "packets/puback/missed": 1,
            "packets/pubrec/received": 2, "packets/pubrel/sent": 2, "packets/pubcomp/received": 1,
            "packets/pingreq": 2, "packets/pingresp": 2, "packets/disconnect": 2,
            "messages/dropped": 3,
            # connect 2, subscribe 1, publish 6, puback 2, pubrec 2, pubrel 1, pubcomp 1, pingreq 2, unsubscribe 1,
            # disconnect 2
            "packets/received": 20,
            # connack 2, suback 1, puback 4, pubrec 1, pubcomp 1, publish 3, pubrel 2, pingresp 2, unsuback 1
            "packets/sent": 17,
            "messages/qos2/dropped": 0, "packets/pubrec/missed": 1, "packets/pubrel/missed": 0,
            "packets/pubcomp/missed": 0,
        }
        # Every byte the two clients wrote; to them: CONNACK 2x4, SUBACK 5, PUBACK 4x4, PUBREC 4, PUBCOMP 4,
        # PUBLISH 10+12+12, PUBREL 2x4, PINGRESP 2x2, UNSUBACK 4.
        expected["bytes/received"] = a.sent + b.sent
        expected["bytes/sent"] = 8 + 5 + 16 + 4 + 4 + 34 + 8 + 4 + 4
        self.wait_equal(self.delta_fn(before, expected), expected, what="metric deltas")

    def test_metrics_count_every_message_of_a_qos0_run(self):
        # QoS 0 PUBLISHes to one cached topic that arrive together are forwarded as one run; each still counts.
        before = self.metrics()
        a = self.client(self.cid("ra", 0))
        subs = [self.client(self.cid(f"rs{i}", i % self.SHARDS)) for i in range(2)]
        for s in subs:
            s.subscribe([("mt/run", 0)])
        a.publish("mt/run", b"first")  # routes the topic and marks it checked
        for s in subs:
            self.assertEqual(s.recv_publish().payload, b"first")
        a.send(b"".join(m.publish("mt/run", b"r%d" % i) for i in range(50)) + m.publish("mt/nobody", b"z") * 3)
        for s in subs:
            self.assertEqual([x.payload for x in s.recv_publishes(50)], [b"r%d" % i for i in range(50)])
        expected = {"packets/publish/received": 54, "messages/received": 54, "messages/qos0/received": 54,
                    "packets/publish/sent": 102, "messages/qos0/sent": 102, "messages/dropped": 3}
        self.wait_equal(self.delta_fn(before, expected), expected, what="metric deltas")

    def test_messages_a_clean_session_takes_with_it_count_as_dropped(self):
        # One in flight and four queued, never acked, as the connection of a clean subscriber ends (1 + 4); then a
        # persistent session's three, as a clean CONNECT with its client id replaces it (3); and a client's QoS 1
        # message to $SYS/, answered and dropped (1). Until stop 74 only expired sessions' messages counted.
        self.use_broker({"mqtt.max_inflight": 1})
        before = self.metrics()
        pub = self.client(self.cid("dpub", 0))
        dsub = self.cid("dsub", 1)
        sub = self.client(dsub)
        sub.subscribe([("md/clean", 1)])
        for i in range(5):
            pub.publish("md/clean", b"c%d" % i, qos=1)
        self.assertEqual(sub.recv_publish(ack=False).payload, b"c0")
        # (Acked to the publisher on shard 0 before shard 1 queued them: a DISCONNECT first would leave them nobody.)
        self.wait_equal(lambda: [(r["inflight_queue"], r["message_queue"]) for r in self.lookup("sessions/" + seg(dsub))],
                        [(1, 4)], what="the clean session's window and queue")
        sub.disconnect()
        sub.expect_closed(3)
        keep = self.cid("dkeep", 1)
        k = self.client(keep, clean=False)
        k.subscribe([("md/kept", 1)])
        k.disconnect()
        k.expect_closed(3)
        for i in range(3):
            pub.publish("md/kept", b"k%d" % i, qos=1)
        self.wait_equal(lambda: [r["message_queue"] for r in self.lookup("sessions/" + seg(keep))], [3],
                        what="the kept session's queue")
        self.client(keep, clean=True).disconnect()
        pub.publish("$SYS/md/x", b"s", qos=1)
        keys = ("messages/dropped", "messages/received", "messages/sent")
        self.wait_equal(self.delta_fn(before, keys),
                        {"messages/dropped": 9, "messages/received": 9, "messages/sent": 1},
                        what="metric deltas")

    def test_metrics_rest_publish_counts_sent_only(self):
        s = self.client(self.cid("rs", 1))
        s.subscribe([("mr/t", 1)])
        keys = ("messages/sent", "messages/qos1/sent", "packets/publish/sent", "messages/received",
                "packets/publish/received", "messages/dropped", "packets/puback/received")
        before = self.metrics()
        self.action("POST", "mqtt/publish", {"topic": "mr/t", "payload": "p", "qos": 1})
        self.assertEqual(s.recv_publish().payload, b"p")
        self.wait_equal(self.delta_fn(before, keys),
                        {"messages/sent": 1, "messages/qos1/sent": 1, "packets/publish/sent": 1,
                         "messages/received": 0, "packets/publish/received": 0, "messages/dropped": 0,
                         "packets/puback/received": 1}, what="metric deltas of a delivered REST publish")

    def test_messages_retained(self):
        pub = self.client(self.cid("mret", 0))
        for i in range(3):
            pub.publish(f"mret/{i}", b"r", qos=1, retain=True)
        self.wait_equal(lambda: self.metrics()["messages/retained"], 3, what="messages/retained")
        self.assertEqual(self.get("monitoring/metrics/")[self.NODE]["messages/retained"], 3)


# --------------------------------------------------------------------------------------------------------------
# Statistics


class StatsCases:
    def test_max_is_the_node_peak_not_a_sum_of_shard_peaks(self):
        """One client that leaves before the next arrives (on the other shard, with 2 shards) is a node peak of 1:
        the shards' high-water marks, reached at different times, must not be added up."""
        self.use_broker()  # fresh high-water marks
        for i, name in enumerate(("peak-a", "peak-b")):
            c = self.client(self.cid(name, i), clean=True)
            self.wait_equal(lambda: self.stats()["clients/count"], 1, what=f"{name} counted")
            time.sleep(0.45)  # the shard's gauge tick (200 ms) records its peak
            c.disconnect()
            c.expect_closed(3)
            self.wait_equal(lambda: (self.stats()["clients/count"], self.stats()["sessions/count"]), (0, 0),
                            what=f"{name} gone")
        stats = self.stats()
        self.assertEqual((stats["clients/max"], stats["sessions/max"]), (1, 1), stats)

    def test_max_counts_a_peak_no_request_saw(self):
        """Notes 15.1: each .../max is the high-water mark of its count, updated whenever the count is. Eight
        clients with two subscriptions each, over the shards, come and go between two stats requests, faster than
        the shards' gauge tick: the node's peak is still 8, 8 and 16 (it used to be sampled at requests and ticks, so
        it could be as low as the largest shard's peak: 4 of the 8 on two shards)."""
        self.use_broker()  # fresh high-water marks
        self.assertEqual(self.stats()["clients/max"], 0)
        clients = [self.client(self.cid(f"hw{i}", i)) for i in range(8)]
        for i, c in enumerate(clients):
            c.subscribe([(f"hw/{i}/a", 1), (f"hw/{i}/b", 0)])
        for c in clients:
            c.disconnect()
        for c in clients:
            c.expect_closed(3)
        self.wait_equal(lambda: (self.stats()["clients/count"], self.stats()["sessions/count"]), (0, 0),
                        what="all gone")
        stats = self.stats()
        self.assertEqual({k: stats[k] for k in ("clients/max", "sessions/max", "subscriptions/max",
                                                "subscribers/max")},
                         {"clients/max": 8, "sessions/max": 8, "subscriptions/max": 16, "subscribers/max": 16})

    def test_routes_max_never_goes_down(self):
        """Notes 15.1: routes/max (and topics/max, the same) is a high-water mark. It was recomputed from each shard's
        own peak at every request, so once the routes went it fell to the largest shard's share (4 routes over two
        shards, all gone: 2)."""
        self.use_broker()
        clients = [self.client(self.cid(f"rm{i}", i)) for i in range(4)]
        for i, c in enumerate(clients):
            c.subscribe([(f"rm/{i}", 0)])
        self.wait_equal(lambda: self.stats()["routes/count"], 4, what="four routes")
        self.assertEqual((self.stats()["routes/max"], self.stats()["topics/max"]), (4, 4))
        for c in clients:
            c.disconnect()
        for c in clients:
            c.expect_closed(3)
        self.wait_equal(lambda: self.stats()["routes/count"], 0, what="routes gone")
        stats = self.stats()
        self.assertEqual((stats["routes/max"], stats["topics/max"]), (4, 4), stats)

    def test_routes_max_counts_a_shards_routes_that_lived_less_than_a_tick(self):
        """A shard raised its own routes peak at its tick only: 4 routes of one client, gone before the next tick and
        before any request looked, left routes/max at 0 (subscriptions/max had them: 4)."""
        self.use_broker()
        c = self.raw()
        c.send(m.connect(self.cid("brief", self.SHARDS - 1)) + m.subscribe(1, [(f"br/{i}", 0) for i in range(4)])
               + m.disconnect())
        c.expect_closed(3, allow=(m.CONNACK_OK, m.suback(1, [0, 0, 0, 0])))
        self.wait_equal(lambda: self.stats()["subscriptions/count"], 0, what="the session gone")
        stats = self.stats()
        self.assertEqual((stats["subscriptions/max"], stats["routes/max"], stats["topics/max"]), (4, 4, 4), stats)

    def test_stats_shape(self):
        all_nodes = self.get("monitoring/stats")
        self.assertIsInstance(all_nodes, dict, "all nodes: an object keyed by node name")
        self.assertEqual(list(all_nodes), [self.NODE])
        for stats in (all_nodes[self.NODE], self.stats(), self.get("monitoring/stats/")[self.NODE]):
            self.assert_keys(stats, STATS_KEYS, "the seed's (sorted) order")
            for name, value in stats.items():
                self.assertIs(type(value), int, name)
                self.assertGreaterEqual(value, 0, name)
            for name in STATS_KEYS[0::2]:
                self.assertGreaterEqual(stats[name.replace("/count", "/max")], stats[name], name)
        self.not_found("GET", "monitoring/stats/" + seg("nobody@127.0.0.1"))

    def test_stats_follow_state(self):
        a = self.client(self.cid("sa", 0))
        a.subscribe([("st/a1", 1), ("st/a2", 0), ("st/shared", 0)])
        b = self.client(self.cid("sb", 1))
        b.subscribe([("st/b/#", 2), ("st/shared", 1)])  # one route, held on both shards with 2 shards
        oid = self.cid("so", 1)
        o = self.client(oid, clean=False)
        o.subscribe([("st/o", 1)])
        o.disconnect()
        o.expect_closed(3)
        for i in range(2):
            a.publish(f"st/ret/{i}", b"kept", qos=1, retain=True)
        expected = {"clients/count": 2, "sessions/count": 3, "subscriptions/count": 6, "subscribers/count": 6,
                    "routes/count": 5, "topics/count": 5, "retained/count": 2}
        self.wait_equal(lambda: {k: self.stats()[k] for k in expected}, expected, what="stats")
        self.assertEqual(self.page("routes")["total_num"], 5, "routes/count agrees with the routes list")
        self.assertEqual(self.page(self.n("subscriptions"))["total_num"], 6)
        self.assertEqual(self.page(self.n("sessions"))["total_num"], 3)
        self.assertEqual(self.page(self.n("clients"))["total_num"], 2)
        time.sleep(0.45)  # let the high-water marks see the peak
        a.disconnect()  # st/shared is now b's alone: counted by b's shard
        self.wait_equal(lambda: self.stats()["routes/count"], 3, what="routes after a left")
        self.assertEqual(self.page("routes")["total_num"], 3)
        b.disconnect()
        done = {"clients/count": 0, "sessions/count": 1, "subscriptions/count": 1, "routes/count": 1,
                "retained/count": 2}
        self.wait_equal(lambda: {k: self.stats()[k] for k in done}, done, what="stats after the clean clients left")
        stats = self.stats()
        self.assertGreaterEqual(stats["clients/max"], 2)
        self.assertGreaterEqual(stats["sessions/max"], 3)
        self.assertGreaterEqual(stats["subscriptions/max"], 6)
        self.assertEqual(self.get("monitoring/stats")[self.NODE]["clients/count"], 0)


# --------------------------------------------------------------------------------------------------------------
# Plugins


class PluginCases:
    def plugins(self, path=None):
        rows = self.get(path or self.n("plugins"))
        self.assertIsInstance(rows, list)
        for row in rows:
            self.assert_keys(row, PLUGIN_KEYS)
            self.assertIsInstance(row["name"], str)
            self.assertIsInstance(row["version"], str)
            self.assertIsInstance(row["description"], str)
            self.assertIs(type(row["active"]), bool, row)
        names = [r["name"] for r in rows]
        self.assertEqual(len(names), len(set(names)), names)
        return {r["name"]: r for r in rows}

    def set_plugin(self, name, active):
        self.action("PUT", self.n("plugins", name), {"active": active})

    def test_plugin_list(self):
        plugins = self.plugins()
        for name in PLUGINS:
            self.assertIn(name, plugins)
            self.assertIs(plugins[name]["active"], True, name)
            self.assertTrue(plugins[name]["version"], name)
        self.assertEqual(self.plugins(self.n("plugins") + "/"), plugins, "the seed's trailing slash")
        self.not_found("GET", "nodes/" + seg("nobody@127.0.0.1") + "/plugins")

    def test_retainer_stop_and_start(self):
        pub = self.client(self.cid("rp", 0))
        pub.publish("rt/old", b"before", qos=1, retain=True)
        self.set_plugin("ringmq_retainer", False)
        self.assertIs(self.plugins()["ringmq_retainer"]["active"], False)
        self.err("PUT", self.n("plugins", "ringmq_retainer"), {"active": False}, 111)
        # Stopped: nothing is stored, and nothing stored is delivered.
        pub.publish("rt/a", b"not kept", qos=1, retain=True)
        self.action("POST", "mqtt/publish", {"topic": "rt/b", "payload": "not kept", "retain": True})
        s = self.client(self.cid("rs", 1))
        s.subscribe([("rt/#", 1)])
        s.expect_no_packet(0.4)

        self.set_plugin("ringmq_retainer", True)
        self.assertIs(self.plugins()["ringmq_retainer"]["active"], True)
        self.err("PUT", self.n("plugins", "ringmq_retainer"), {"active": True}, 110)
        for topic in ("rt/a", "rt/b"):
            probe = self.client(self.cid("probe" + topic[-1], 1))
            probe.subscribe([(topic, 1)])
            probe.expect_no_packet(0.2)  # not stored while the retainer was stopped
        pub.publish("rt/c", b"kept", qos=1, retain=True)
        msg = s.recv_publish()  # live forwarding never depended on the retainer
        self.assertEqual((msg.topic, msg.retain), ("rt/c", False))
        s2 = self.client(self.cid("rs2", 1))
        s2.subscribe([("rt/c", 1)])
        msg = s2.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.retain), ("rt/c", b"kept", True))

    def test_plugin_errors(self):
        path = self.n("plugins", "ringmq_retainer")
        # Notes 12.2: starting an unknown plugin is 102 "unknown"; stopping one, which is not running, 111 first.
        for active, code, message in ((True, 102, "unknown"), (False, 111, "not_started")):
            self.assertEqual(self.err("PUT", self.n("plugins", "ringmq_nope"), {"active": active}, code)["message"],
                             message)
        for body, code in [({}, 107), ({"Active": True}, 107), (b"", 107), ("true", 107), ("[true]", 107),
                           ({"active": "true"}, 108), ({"active": 1}, 108), ({"active": None}, 108),
                           ("{active: true}", 109), ("nope", 109)]:
            with self.subTest(body=body):
                self.err("PUT", path, body, code)
        self.assertIs(self.plugins()["ringmq_retainer"]["active"], True, "no change")
        self.err("PUT", self.n("plugins", "ringmq_admin"), {"active": True}, 110)
        # An unknown node: EMQ X's HTTP 200 with 102 "unknown" (the body is checked first), not the 404 of the GETs.
        other = "nodes/" + seg("nobody@127.0.0.1") + "/plugins/ringmq_retainer"
        self.assertEqual(self.err("PUT", other, {"active": False}, 102), {"code": 102, "message": "unknown"})
        self.err("PUT", other, {}, 107)
        self.assertIs(self.plugins()["ringmq_retainer"]["active"], True)


class SysPluginTest(AdminTest):
    """ringmq_sys publishes $SYS/brokers/<node>/... every sys.interval; stopping it stops them."""

    SHARDS = 2
    SETTINGS = {"sys.interval": 1000}

    def drain(self, c, seconds):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                c.read_packet(left)
            except TimeoutError:
                return

    def test_sys_stop_and_start(self):
        prefix = f"$SYS/brokers/{self.NODE}/"
        s = self.client(self.cid("sys", 1))
        s.subscribe([(prefix + "#", 0)])
        msg = s.recv_publish(timeout=3.0)
        self.assertTrue(msg.topic.startswith(prefix), msg)
        self.action("PUT", self.n("plugins", "ringmq_sys"), {"active": False})
        self.assertIs({r["name"]: r for r in self.get(self.n("plugins"))}["ringmq_sys"]["active"], False)
        self.err("PUT", self.n("plugins", "ringmq_sys"), {"active": False}, 111)
        self.drain(s, 1.2)
        s.expect_no_packet(2.0)
        self.action("PUT", self.n("plugins", "ringmq_sys"), {"active": True})
        msg = s.recv_publish(timeout=3.0)
        self.assertTrue(msg.topic.startswith(prefix), msg)


class SysTopicsTest(AdminTest):
    """One round of $SYS topics on 2 shards: every stat and metric of the REST API, the node's figures (the retained
    count once, not once per shard), and none of it counted as sent (EMQ X left $SYS out of every sent counter)."""

    SHARDS = 2
    SETTINGS = {"sys.interval": 1000}

    def sys_round(self, s, prefix):
        # The first topic of a round is "version"; a round ends with the metrics, the next starts with "version".
        values = {}
        seen_version = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            msg = s.recv_publish(timeout=3)
            if msg.retain:
                continue  # the retained version and sysdescr of an earlier round, sent on subscribing
            name = msg.topic[len(prefix):]
            if name == "version":
                seen_version += 1
                if seen_version == 2:
                    return values
            if seen_version == 1:
                values[name] = msg.payload.decode()
        self.fail(f"no whole $SYS round in 6 s: {sorted(values)}")

    def test_every_stat_and_metric_once_per_node_and_not_counted_sent(self):
        prefix = f"$SYS/brokers/{self.NODE}/"
        for shard in (0, 1):
            self.client(self.cid(f"ret{shard}", shard)).publish(f"sys/ret/{shard}", b"kept", retain=True)
        # The first round (1 s after start-up) also retains $SYS/brokers and the node's version and sysdescr.
        self.wait_equal(lambda: self.stats()["retained/count"], 2 + 3, timeout=5, what="retained/count")
        s = self.client(self.cid("sys", 1))
        s.subscribe([(prefix + "#", 0)])
        values = self.sys_round(s, prefix)
        stats = {k[len("stats/"):]: int(v) for k, v in values.items() if k.startswith("stats/")}
        metrics = {k[len("metrics/"):]: int(v) for k, v in values.items() if k.startswith("metrics/")}
        self.assertEqual(sorted(stats), sorted(self.stats()))
        self.assertEqual(sorted(metrics), sorted(self.metrics()))
        self.assertEqual(stats["retained/count"], 5)
        self.assertEqual(metrics["messages/retained"], 5, "summed over the shards' copies")
        self.assertGreaterEqual(len(values), 40)
        m = self.metrics()
        self.assertEqual((m["messages/sent"], m["packets/publish/sent"], m["messages/qos0/sent"]), (0, 0, 0),
                         f"{len(values)} $SYS messages were delivered")
        self.assertEqual(m["messages/forward"], 0, "$SYS messages counted as forwarded to the other shard")


class SysPacketSizeTest(AdminTest):
    """No $SYS message reaches a subscriber in a PUBLISH larger than mqtt.max_packet_size (the limit can be below the
    length of some $SYS topics): those are left out, and the broker says so."""

    SETTINGS = {"sys.interval": 1000, "mqtt.max_packet_size": 64}

    def test_sys_messages_over_max_packet_size_are_not_published(self):
        prefix = f"$SYS/brokers/{self.NODE}/"
        s = self.client(self.cid("sys"))
        s.subscribe([(prefix + "#", 0)])
        names = []
        deadline = time.monotonic() + 4  # three rounds or more
        while time.monotonic() < deadline:
            try:
                p = s.read_packet(deadline - time.monotonic())
            except TimeoutError:
                break
            size = 1 + len(m.encode_remaining_length(len(p.body))) + len(p.body)
            msg = m.parse_publish(p)
            self.assertLessEqual(size, 64, f"{msg.topic} {msg.payload!r}")
            names.append(msg.topic[len(prefix):])
        self.assertIn("version", names)
        self.assertIn("stats/topics/count", names)  # 53 bytes or so: under the limit
        self.assertNotIn("metrics/packets/publish/received", names)  # 67 bytes or more
        self.assertIn(b"$SYS message " + prefix.encode() + b"metrics/", self.broker.log())


class SysRetainedTest(AdminTest):
    """As in EMQ X, $SYS/brokers and the node's version and sysdescr are retained (the rest of a round is not), so a
    later subscriber gets them at once; a subscription to "#" does not see them [MQTT-4.7.2-1]."""

    SHARDS = 2
    SETTINGS = {"sys.interval": 1000}

    def test_version_sysdescr_and_brokers_retained(self):
        prefix = f"$SYS/brokers/{self.NODE}/"
        self.wait_equal(lambda: self.stats()["retained/count"], 3, timeout=5, what="retained/count")
        every = self.client(self.cid("every", 0))
        every.subscribe([("#", 0)])
        every.expect_no_packet(0.3)
        for shard in (0, 1):
            with self.subTest(shard=shard):
                s = self.client(self.cid(f"late{shard}", shard))
                s.subscribe([("$SYS/brokers", 0), (prefix + "version", 0), (prefix + "sysdescr", 0),
                             (prefix + "uptime", 0)])
                got = {}
                deadline = time.monotonic() + 3
                while len(got) < 3 and time.monotonic() < deadline:
                    msg = s.recv_publish(timeout=3)
                    if msg.retain:  # a live round's messages do not carry the flag [MQTT-3.3.1-9]
                        self.assertNotIn(msg.topic, got)
                        got[msg.topic] = msg.payload.decode()
                self.assertEqual(got, {"$SYS/brokers": self.NODE, prefix + "version": self.get("management/nodes")[0]
                                       ["version"], prefix + "sysdescr": "ringmq MQTT broker"})
                s.close()
        every.expect_no_packet(1.5)


class NodeNameTest(AdminTest):
    """--node-name changes the name in every response and path; the default name is then unknown."""

    NODE = "rmq-it@10.1.2.3"
    ARGS = ("--node-name", "rmq-it@10.1.2.3")
    SETTINGS = {"sys.interval": 1000}

    def test_node_name_everywhere(self):
        c = self.client("named")
        c.subscribe([("nn/t", 1)])
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE)
        self.assertEqual(self.get("monitoring/nodes")[0]["name"], self.NODE)
        self.assertEqual(self.get("monitoring/nodes/" + seg(self.NODE))["name"], self.NODE)
        self.get("management/nodes/" + seg(self.NODE))
        for path in ("monitoring/listeners", "monitoring/metrics", "monitoring/stats"):
            self.assertEqual(list(self.get(path)), [self.NODE], path)
        self.assertEqual(self.rows("routes"), [{"topic": "nn/t", "node": self.NODE}])
        self.assertEqual([r["client_id"] for r in self.rows(self.n("clients"))], ["named"])
        self.assertIn("ringmq_sys", {r["name"] for r in self.get(self.n("plugins"))})
        old = seg("ringmq@127.0.0.1")
        for path in ("management/nodes/" + old, "monitoring/nodes/" + old, "monitoring/listeners/" + old,
                     "monitoring/metrics/" + old, "monitoring/stats/" + old, "nodes/" + old + "/clients",
                     "nodes/" + old + "/sessions", "nodes/" + old + "/subscriptions", "nodes/" + old + "/plugins"):
            with self.subTest(path=path):
                self.not_found("GET", path)

    def test_sys_topics_carry_node_name(self):
        s = self.client("sysnamed")
        s.subscribe([("$SYS/brokers/+/#", 0)])
        msg = s.recv_publish(timeout=3.0)
        self.assertTrue(msg.topic.startswith(f"$SYS/brokers/{self.NODE}/"), msg)


shard_variants(ListenerCases, globals(), base=AdminTest)
shard_variants(MetricCases, globals(), base=AdminTest)
shard_variants(StatsCases, globals(), base=AdminTest)
shard_variants(PluginCases, globals(), base=AdminTest)
