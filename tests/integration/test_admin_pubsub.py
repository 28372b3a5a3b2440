"""Admin REST API v2: POST mqtt/publish, mqtt/subscribe and mqtt/unsubscribe, checked end to end over MQTT, and
their error codes (107 missing parameter, 108 wrong type, 109 body not JSON, 102 invalid topic / unknown client / a
PUBLISH over mqtt.max_packet_size).
With --shards 2 the API's target client and the MQTT publisher/subscriber have different home shards."""


import mqtt_raw as m
from admin_client import SUBSCRIPTION_KEYS, AdminTest, seg
from broker import shard_variants

# Bodies that are valid JSON but not an object: ringmq answers 107 where EMQ X dropped the connection (or 107 for
# arrays, which fail the presence check).
NOT_OBJECTS = ["123", '"abc"', "[]", '[{"topic": "a"}]', "null", "true", "1.5"]
NOT_JSON = ["not json", "{", '{"topic": }', "{'topic': 'a'}", '{"topic": "a",}']


class PublishCases:
    def test_publish_reaches_subscribers_on_every_shard(self):
        s1 = self.client(self.cid("s1", 0))
        s1.subscribe([("ap/t", 2)])
        s2 = self.client(self.cid("s2", 1))
        s2.subscribe([("ap/#", 0)])
        self.action("POST", "mqtt/publish",
                    {"topic": "ap/t", "payload": "hello", "qos": 1, "retain": False, "client_id": "api-pub"})
        msg = s1.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain, msg.dup), ("ap/t", b"hello", 1, False, False))
        msg = s2.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("ap/t", b"hello", 0, False))
        self.action("POST", "mqtt/publish", {"topic": "ap/t", "payload": "two", "qos": 2})
        msg = s1.recv_publish()
        self.assertEqual((msg.payload, msg.qos), (b"two", 2))
        self.assertEqual((s2.recv_publish().payload), b"two")
        s1.expect_no_packet(0.2)
        s2.expect_no_packet(0.1)

    def test_publish_defaults(self):
        s = self.client(self.cid("dflt", 1))
        s.subscribe([("ap/d", 2)])
        self.action("POST", "mqtt/publish", {"topic": "ap/d"})  # payload "", qos 0, retain false
        msg = s.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("ap/d", b"", 0, False))
        # Not retained: a later subscriber gets nothing.
        late = self.client(self.cid("late", 0))
        late.subscribe([("ap/d", 2)])
        late.expect_no_packet(0.3)

    def test_publish_utf8_payload_any_content_type(self):
        s = self.client(self.cid("utf", 1))
        s.subscribe([("ap/ü/✓", 1)])
        # The notes: Content-Type is not looked at.
        self.action("POST", "mqtt/publish", {"topic": "ap/ü/✓", "payload": "héllo ✓ \u0000 end", "qos": 1},
                    headers={"Content-Type": "text/plain"})
        msg = s.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("ap/ü/✓", "héllo ✓ \u0000 end".encode(), 1))

    def test_publish_retained(self):
        live = self.client(self.cid("live", 0))
        live.subscribe([("ap/r", 2)])
        self.action("POST", "mqtt/publish", {"topic": "ap/r", "payload": "kept", "qos": 1, "retain": True})
        msg = live.recv_publish()
        self.assertEqual((msg.payload, msg.retain), (b"kept", False), "live forwarding has retain 0")
        late = self.client(self.cid("late", 1))
        late.subscribe([("ap/r", 2)])
        msg = late.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("ap/r", b"kept", 1, True))
        self.wait_equal(lambda: self.stats()["retained/count"], 1, what="retained/count")
        # An empty retained payload clears it.
        self.action("POST", "mqtt/publish", {"topic": "ap/r", "payload": "", "retain": True})
        self.assertEqual(live.recv_publish().payload, b"")
        self.assertEqual(late.recv_publish().payload, b"")
        later = self.client(self.cid("later", 0))
        later.subscribe([("ap/r", 2)])
        later.expect_no_packet(0.3)

    def test_publish_without_subscriber_counts_dropped_not_received(self):
        before = self.metrics()
        self.action("POST", "mqtt/publish", {"topic": "ap/nobody", "payload": "x", "qos": 1})

        def delta():
            now = self.metrics()
            return {k: now[k] - before[k] for k in ("messages/dropped", "messages/received", "packets/received",
                                                     "packets/publish/received", "messages/qos1/received")}

        self.wait_equal(delta, {"messages/dropped": 1, "messages/received": 0, "packets/received": 0,
                                "packets/publish/received": 0, "messages/qos1/received": 0},
                        what="metrics after a REST publish nobody receives")

    def test_publish_errors(self):
        watch = self.client(self.cid("watch", 1))
        watch.subscribe([("#", 2)])
        cases = [
            ({}, 107), ({"payload": "x", "qos": 1}, 107), ({"Topic": "a"}, 107),
            ({"topic": 5}, 108), ({"topic": None}, 108), ({"topic": ["a"]}, 108), ({"topic": {"a": 1}}, 108),
            ({"topic": True}, 108),
            ({"topic": ""}, 102), ({"topic": "a/+"}, 102), ({"topic": "a/#"}, 102), ({"topic": "#"}, 102),
            ({"topic": "+"}, 102), ({"topic": "a\u0000b"}, 102),
            (b"", 107),
            # JSON with a number too large for 64 bits (or a double) was "Body not json"; an integer past int64 was
            # "wrong type" where one within it was 102.
            ('{"topic": "a", "qos": 123456789012345678901234567890}', 108),
            ('{"topic": "a", "qos": -9223372036854775809}', 108), ('{"topic": "a", "qos": 1e400}', 108),
            ('{"topic": "a", "extra": [1, {"n": -1.5e999}]}', 108),
            ('{"topic": "a", "qos": 18446744073709551615}', 102), ('{"topic": "a", "qos": 9223372036854775807}', 102),
            # Numbers JSON does not allow stay 109, also where one is past 64 bits.
            ('{"topic": "a", "qos": 01}', 109), ('{"topic": "a", "qos": 1.}', 109), ('{"topic": "a", "qos": -}', 109),
            ('{"topic": "a", "qos": 1e}', 109), ('{"topic": "a", "q": 1e400, "qos": 00}', 109),
            ('{"topic": "a", "qos": 1.5.1}', 109),
            # Nor what follows a number that JSON does not allow, nor a body broken after one past 64 bits.
            ('{"topic": "a", "qos": 0x10}', 109), ('{"topic": "a", "qos": 1_0}', 109), ('{"topic": "a", "qos": 1a}', 109),
            ('{"topic": "a", "qos": 1true}', 109), ('{"topic": "a", "qos": --1}', 109),
            ('{"topic": "a", "qos": 1e5e3}', 109), ('{"topic": "a", "x": 1e400 "qos": 1}', 109),
            ('{"topic": "a", "x": 1e400,}', 109), ('{"topic": "a", "x": 1e400}}}', 109),
            ('{"topic": "a", "x": 1e400, "qos": Infinity}', 109), ('{"topic": "a", "x": 1e400, "qos": .5}', 109),
            ('{"topic": "a\\"1e400", "x": 1e400}', 108),
            # JSON but no object, as "1" or "[1]".
            ("1e400", 107), ("[1e400]", 107),
        ] + [(text, 107) for text in NOT_OBJECTS] + [(text, 109) for text in NOT_JSON]
        for body, code in cases:
            with self.subTest(body=body):
                self.err("POST", "mqtt/publish", body, code)
        watch.expect_no_packet(0.3)

    def test_publish_bad_qos_is_refused(self):
        watch = self.client(self.cid("watch", 0))
        watch.subscribe([("ap/q", 2)])
        for qos in (3, -1, "1"):
            with self.subTest(qos=qos):
                r = self.api("POST", "mqtt/publish", {"topic": "ap/q", "payload": "x", "qos": qos})
                # EMQ X: an exception in the handler -> HTTP 404; an error code would do as well. Not success.
                if r.status == 404:
                    self.assert_json_error(r, 404)
                else:
                    self.assertEqual(r.status, 200, r)
                    self.assertNotEqual(r.json().get("code"), 0, r)
        watch.expect_no_packet(0.3)

    def test_publish_empty_topic_level_and_dollar_topics_are_valid(self):
        s = self.client(self.cid("lv", 1))
        s.subscribe([("ap//x", 1), ("$ap/t", 1)])
        self.action("POST", "mqtt/publish", {"topic": "ap//x", "payload": "1", "qos": 1})
        self.assertEqual(s.recv_publish().topic, "ap//x")
        self.action("POST", "mqtt/publish", {"topic": "$ap/t", "payload": "2", "qos": 1})
        self.assertEqual(s.recv_publish().topic, "$ap/t")


class ApiSubscribeHelpers:
    def target(self, name="target", shard=1):
        tid = self.cid(name, shard)
        return tid, self.client(tid)

    def subs_of(self, cid):
        return sorted((r["client_id"], r["topic"], r["qos"])
                      for r in self.lookup("subscriptions/" + seg(cid), SUBSCRIPTION_KEYS))


class ApiSubscribeCases(ApiSubscribeHelpers):

    def test_api_subscribe_then_mqtt_publish_arrives(self):
        tid, t = self.target()
        pub = self.client(self.cid("pub", 0))
        self.action("POST", "mqtt/subscribe", {"topic": "as/t", "qos": 1, "client_id": tid})
        self.assertEqual(self.subs_of(tid), [(tid, "as/t", 1)])
        self.assertEqual(self.lookup("routes/" + seg("as/t")), [{"topic": "as/t", "node": self.NODE}])
        pub.publish("as/t", b"via api", qos=1)
        p = t.read_packet()  # no SUBACK reaches the client: the PUBLISH is the first packet
        msg = m.parse_publish(p)
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("as/t", b"via api", 1, False))
        t.send(m.puback(msg.pid))
        pub.publish("as/t", b"qos2 capped", qos=2)
        msg = t.recv_publish()
        self.assertEqual((msg.payload, msg.qos), (b"qos2 capped", 1))
        t.expect_no_packet(0.2)

    def test_api_subscribe_wildcard_default_qos(self):
        tid, t = self.target()
        pub = self.client(self.cid("pub", 0))
        self.action("POST", "mqtt/subscribe", {"topic": "as/#", "client_id": tid})
        self.assertEqual(self.subs_of(tid), [(tid, "as/#", 0)])
        pub.publish("as/x/y", b"deep", qos=2)
        msg = t.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("as/x/y", b"deep", 0))
        self.action("POST", "mqtt/subscribe", {"topic": "as/+/z", "qos": 2, "client_id": tid})
        self.assertEqual(self.subs_of(tid), [(tid, "as/#", 0), (tid, "as/+/z", 2)])
        pub.publish("as/q/z", b"both", qos=2)
        msg = t.recv_publish()  # overlapping filters: one copy at the highest granted QoS
        self.assertEqual((msg.topic, msg.qos), ("as/q/z", 2))
        t.expect_no_packet(0.3)

    def test_api_subscribe_delivers_retained(self):
        pub = self.client(self.cid("pub", 0))
        pub.publish("as/ret", b"stored", qos=1, retain=True)
        tid, t = self.target()
        self.action("POST", "mqtt/subscribe", {"topic": "as/ret", "qos": 1, "client_id": tid})
        msg = t.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("as/ret", b"stored", 1, True))

    def test_api_unsubscribe(self):
        tid, t = self.target()
        pub = self.client(self.cid("pub", 0))
        t.subscribe([("mq/t", 1)])  # an MQTT subscription, removed through the API
        self.action("POST", "mqtt/subscribe", {"topic": "as/u", "qos": 1, "client_id": tid})
        self.assertEqual(self.subs_of(tid), [(tid, "as/u", 1), (tid, "mq/t", 1)])
        self.action("POST", "mqtt/unsubscribe", {"topic": "as/u", "client_id": tid})
        self.action("POST", "mqtt/unsubscribe", {"topic": "mq/t", "client_id": tid})
        self.assertEqual(self.subs_of(tid), [])
        pub.publish("as/u", b"nobody", qos=1)
        pub.publish("mq/t", b"nobody", qos=1)
        t.expect_no_packet(0.4)
        # Unsubscribing a filter the client does not have is not an error.
        self.action("POST", "mqtt/unsubscribe", {"topic": "as/never", "client_id": tid})
        self.wait_equal(lambda: self.lookup("routes/" + seg("as/u")), [], what="route gone")
        self.assertTrue(t.is_open())

    def test_api_subscribe_offline_persistent_session(self):
        tid = self.cid("sleeper", 1)
        c = self.client(tid, clean=False)
        c.disconnect()
        c.expect_closed(3)
        self.wait_equal(lambda: self.lookup("clients/" + seg(tid)), [], what="offline")
        self.action("POST", "mqtt/subscribe", {"topic": "as/off", "qos": 1, "client_id": tid})
        pub = self.client(self.cid("pub", 0))
        pub.publish("as/off", b"queued", qos=1)
        back = self.client(tid, clean=False, expect=m.CONNACK_OK_SESSION)
        msg = back.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("as/off", b"queued", 1))

    def test_api_subscribe_errors(self):
        tid, t = self.target()
        for path in ("mqtt/subscribe", "mqtt/unsubscribe"):
            cases = [
                ({"topic": "x", "qos": 0, "client_id": "nobody"}, 102),
                ({"topic": "x"}, 107), ({"client_id": tid}, 107), ({}, 107), (b"", 107),
                ({"topic": 1, "client_id": tid}, 108), ({"topic": "x", "client_id": 5}, 108),
                ({"topic": None, "client_id": tid}, 108),
                ({"topic": "a/#/b", "client_id": tid}, 102), ({"topic": "", "client_id": tid}, 102),
                ({"topic": "a+/b", "client_id": tid}, 102), ({"topic": "a/b#", "client_id": tid}, 102),
                ({"topic": "a" * 65536, "client_id": tid}, 102),  # longer than any SUBSCRIBE can carry
            ] + [(text, 107) for text in NOT_OBJECTS] + [(text, 109) for text in NOT_JSON]
            for body, code in cases:
                with self.subTest(path=path, body=str(body)[:80]):
                    self.err("POST", path, body, code)
        self.assertEqual(self.subs_of(tid), [])
        self.action("POST", "mqtt/subscribe", {"topic": "a" * 65535, "client_id": tid})  # the longest there is
        self.assertEqual([topic for _, topic, _ in self.subs_of(tid)], ["a" * 65535])
        self.action("POST", "mqtt/unsubscribe", {"topic": "a" * 65535, "client_id": tid})
        self.assertEqual(self.subs_of(tid), [])
        # A clean session that has gone is unknown too.
        gone = self.cid("gone", 0)
        g = self.client(gone)
        g.disconnect()
        g.expect_closed(3)
        self.wait_equal(lambda: self.lookup("sessions/" + seg(gone)), [], what="clean session ended")
        self.err("POST", "mqtt/subscribe", {"topic": "x", "client_id": gone}, 102)
        self.assertTrue(t.is_open())


shard_variants(PublishCases, globals(), base=AdminTest)
shard_variants(ApiSubscribeCases, globals(), base=AdminTest)


class PublishSizeTest(AdminTest):
    """mqtt/publish makes no packet larger than an MQTT client may publish (mqtt.max_packet_size, whole packet)."""
    SETTINGS = {"mqtt.max_packet_size": 256}

    def test_publish_larger_than_max_packet_size_is_refused(self):
        s = self.client(self.cid("big"))
        s.subscribe([("ap/big", 2)])
        # 1 + 2 (remaining length 253) + 2 + 6 + 2 (packet id) + 243 = 256 bytes at QoS 1; 245 at QoS 0.
        for qos, fits in ((1, 243), (0, 245)):
            with self.subTest(qos=qos):
                obj = self.err("POST", "mqtt/publish", {"topic": "ap/big", "payload": "y" * (fits + 1), "qos": qos},
                               102)
                self.assertEqual(obj["message"], "a PUBLISH of 257 bytes exceeds mqtt.max_packet_size = 256")
                self.action("POST", "mqtt/publish", {"topic": "ap/big", "payload": "x" * fits, "qos": qos})
                msg = s.recv_publish()
                self.assertEqual((msg.payload, msg.qos), (b"x" * fits, qos))
        s.expect_no_packet(0.2)


class ApiSubscribeLimitCases(ApiSubscribeHelpers):
    SETTINGS = {"mqtt.max_subscriptions": 2}

    def test_api_subscribe_beyond_max_subscriptions(self):
        # The API's subscriptions count against mqtt.max_subscriptions like the client's own: one more is answered
        # 102 and not made; a filter the session has can be subscribed again.
        tid, t = self.target()
        t.subscribe([("asl/mqtt", 1)])
        self.action("POST", "mqtt/subscribe", {"topic": "asl/api", "qos": 1, "client_id": tid})
        obj = self.err("POST", "mqtt/subscribe", {"topic": "asl/more", "qos": 1, "client_id": tid}, 102)
        self.assertEqual(obj["message"], f"Clientid: {tid} has mqtt.max_subscriptions = 2 subscriptions")
        self.action("POST", "mqtt/subscribe", {"topic": "asl/mqtt", "qos": 0, "client_id": tid})
        self.assertEqual(self.subs_of(tid), [(tid, "asl/api", 1), (tid, "asl/mqtt", 0)])
        self.action("POST", "mqtt/unsubscribe", {"topic": "asl/api", "client_id": tid})
        self.action("POST", "mqtt/subscribe", {"topic": "asl/more", "qos": 1, "client_id": tid})
        self.assertEqual(self.subs_of(tid), [(tid, "asl/more", 1), (tid, "asl/mqtt", 0)])


shard_variants(ApiSubscribeLimitCases, globals(), base=AdminTest)


class ApiSubscribeBehindBacklogTest(ApiSubscribeHelpers, AdminTest):
    """mqtt/subscribe answers once the route it made is in the other shard's queue: behind a SUBSCRIBE of 20000
    filters on the same shard, whose route adds wait for room in a queue of node.smp_queue_size = 64, a PUBLISH on
    the other shard sent the moment the answer arrives still reaches the API's subscriber."""
    SHARDS = 2
    SETTINGS = {"node.smp_queue_size": 64}
    FILTERS = 20000

    def test_publish_right_after_the_answer_arrives(self):
        pub = self.client(self.cid("bpub", 1))
        for r in range(3):
            tid, t = self.target(f"btarget{r}", 0)
            crowd = self.client(self.cid(f"bcrowd{r}", 0))
            crowd.send(m.subscribe(1, [(f"bc/{r}/{i}", 0) for i in range(self.FILTERS)]))
            self.action("POST", "mqtt/subscribe", {"topic": f"bt/{r}", "qos": 0, "client_id": tid})
            pub.publish(f"bt/{r}", b"now")
            msg = t.recv_publish(timeout=5)
            self.assertEqual((msg.topic, msg.payload), (f"bt/{r}", b"now"), f"round {r}")
            crowd.expect(m.suback(1, [0] * self.FILTERS), timeout=20)
