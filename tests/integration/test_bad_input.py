"""Bad input: each case closes the offending connection without a response (no CONNACK/SUBACK/PUBACK), and a
well-behaved witness client connected before it - subscribed to "#" - sees nothing of it and keeps working, as
does a fresh publisher/subscriber pair afterwards."""

import time

import mqtt_raw as m
from broker import shard_variants


def raw_publish(topic: bytes, payload: bytes = b"x", flags: int = 0, pid: bytes = b"") -> bytes:
    return m.packet(m.PUBLISH, flags, m.encode_string(topic) + pid + payload)


class BadInputCases:
    SETTINGS = {"mqtt.connect_timeout": 500, "mqtt.max_packet_size": 65536}

    def setUp(self):
        super().setUp()
        self.witness = self.client(self.sub_id("witness"))
        self.witness.subscribe([("#", 1)])
        self.will_watch = self.client(self.cid("willwatch", 1))
        self.will_watch.subscribe([("$bad/#", 1)])
        self._n = 0

    def bad_client(self, will=None, keepalive=60):
        """A connected client that will misbehave (ids alternate between shards)."""
        self._n += 1
        return self.client(self.cid(f"bad{self._n}", self._n), will=will, keepalive=keepalive)

    def send_and_expect_closed(self, c, data: bytes, timeout: float = 3.0):
        try:
            c.send(data)
        except OSError:
            pass  # already closed by the broker: fine
        c.expect_closed(timeout)

    def check_others(self):
        """The witness saw nothing of the bad clients and still works; the broker still serves new clients."""
        pub = self.client(self.pub_id("checker"))
        pub.publish("check/witness", b"alive", qos=1)
        msg = self.witness.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("check/witness", b"alive"),
                         "the witness received something else first")
        self.witness.expect_no_packet(0.1)
        self.assert_broker_healthy()
        # The health check's messages went to the witness too.
        for _ in range(3):
            self.assertTrue(self.witness.recv_publish().topic.startswith("health/"))

    def each(self, cases, after_connect=True, will=None):
        for name, data in cases:
            with self.subTest(case=name):
                if after_connect:
                    c = self.bad_client(will=will)
                else:
                    c = self.raw()
                self.send_and_expect_closed(c, data)

    # -- the cases ---------------------------------------------------------------------------------------------------

    def test_bad_packet_inside_a_run_of_cached_qos0_publishes(self):
        # Same-topic QoS 0 PUBLISHes in one write are forwarded as a run once the topic is cached; a bad packet in
        # the middle must stop everything after it, and what came before it is delivered once, in order.
        bad_tails = [
            ("topic longer than the packet", m.packet(m.PUBLISH, 0, b"\x00\x10run/x")),
            ("DUP on QoS 0", m.packet(m.PUBLISH, 0x08, m.encode_string("run/x") + b"dup")),
            ("invalid UTF-8 topic", raw_publish(b"run/\xff", b"bad")),
        ]
        for name, bad in bad_tails:
            with self.subTest(case=name):
                c = self.bad_client()
                c.publish("run/x", b"warm")
                self.assertEqual(self.witness.recv_publish().payload, b"warm")
                good = b"".join(m.publish("run/x", b"g%d" % i) for i in range(3))
                after = b"".join(m.publish("run/x", b"late%d" % i) for i in range(2))
                self.send_and_expect_closed(c, good + bad + after)
                self.assertEqual([x.payload for x in self.witness.recv_publishes(3)], [b"g0", b"g1", b"g2"])
                self.witness.expect_no_packet(0.2)
        self.check_others()

    def test_qos1_and_qos2_publish_like_a_cached_topic_is_still_checked(self):
        # Once a topic is in its shard's route cache as checked, a QoS 1 or 2 PUBLISH to it skips the topic checks; a
        # topic that differs from it in any byte, or does not fit its packet, is checked in full.
        for qos in (1, 2):
            f = qos << 1
            bad = [
                ("wildcard, same length", raw_publish(b"cq1/+", b"bad", flags=f, pid=b"\x00\x07")),
                ("invalid UTF-8, same length", raw_publish(b"cq1/\xff", b"bad", flags=f, pid=b"\x00\x07")),
                ("NUL, same length", raw_publish(b"cq1/\x00", b"bad", flags=f, pid=b"\x00\x07")),
                ("wildcard level added", raw_publish(b"cq1/x/#", b"bad", flags=f, pid=b"\x00\x07")),
                ("topic longer than the packet", m.packet(m.PUBLISH, f, b"\x00\x10cq1/x\x00\x07")),
                ("packet id 0, same topic", raw_publish(b"cq1/x", b"bad", flags=f, pid=b"\x00\x00")),
                ("no room for the packet id", m.packet(m.PUBLISH, f, b"\x00\x05cq1/x\x00")),
            ]
            for name, data in bad:
                with self.subTest(qos=qos, case=name):
                    c = self.bad_client()
                    for i in range(2):
                        c.publish("cq1/x", b"warm%d" % i, qos=qos)
                    self.assertEqual([x.payload for x in self.witness.recv_publishes(2)], [b"warm0", b"warm1"])
                    self.send_and_expect_closed(c, data)
                    self.witness.expect_no_packet(0.2)
        self.check_others()

    def test_malformed_remaining_length(self):
        self.each([
            ("five bytes", b"\x30\xff\xff\xff\xff\x01"),
            ("continuation on 4th byte", b"\x30\x80\x80\x80\x80\x00"),
            ("pingreq long length", b"\xc0\xff\xff\xff\xff\x7f"),
        ])
        self.each([("before CONNECT", b"\x10\xff\xff\xff\xff\x01")], after_connect=False)
        self.check_others()

    def test_remaining_length_inconsistent_with_contents(self):
        self.each([
            # SUBSCRIBE whose topic length runs past the packet.
            ("subscribe string overrun", b"\x82\x06\x00\x01\x00\x09ab"),
            # PUBLISH QoS 1 too short to hold the packet id.
            ("publish without packet id", b"\x32\x04\x00\x02ab"),
            # PUBACK with a 1-byte body.
            ("short puback", b"\x40\x01\x00"),
            # SUBSCRIBE with no topic at all [MQTT-3.8.3-3].
            ("subscribe without topics", b"\x82\x02\x00\x01"),
            # UNSUBSCRIBE with no topic at all [MQTT-3.10.3-2].
            ("unsubscribe without topics", b"\xa2\x02\x00\x01"),
            # SUBSCRIBE topic without its QoS byte.
            ("subscribe missing qos", b"\x82\x05\x00\x01\x00\x01a"),
        ])
        self.check_others()

    def test_reserved_flag_bits(self):
        self.each([
            ("SUBSCRIBE flags 0", m.subscribe(1, [("r/a", 0)], flags=0x0)),
            ("SUBSCRIBE flags 3", m.subscribe(1, [("r/a", 0)], flags=0x3)),
            ("UNSUBSCRIBE flags 0", m.unsubscribe(1, ["r/a"], flags=0x0)),
            ("PUBREL flags 0", m.pubrel(1, flags=0x0)),
            ("PUBACK flags 2", m.packet(m.PUBACK, 0x2, b"\x00\x01")),
            ("PUBREC flags 1", m.packet(m.PUBREC, 0x1, b"\x00\x01")),
            ("PUBCOMP flags 8", m.packet(m.PUBCOMP, 0x8, b"\x00\x01")),
            ("PINGREQ flags 1", b"\xc1\x00"),
            ("DISCONNECT flags 4", b"\xe4\x00"),
            ("SUBSCRIBE reserved bits in QoS byte", m.subscribe(1, [("r/a", 0x41)])),
        ])
        self.each([("CONNECT flags 1", m.connect("rf", fixed_flags=0x1))], after_connect=False)
        self.check_others()

    def test_reserved_and_server_only_packet_types(self):
        self.each([
            ("type 0", b"\x00\x00"),
            ("type 15", b"\xf0\x00"),
            ("CONNACK from client", b"\x20\x02\x00\x00"),
            ("SUBACK from client", b"\x90\x03\x00\x01\x00"),
            ("UNSUBACK from client", b"\xb0\x02\x00\x01"),
            ("PINGRESP from client", b"\xd0\x00"),
        ])
        self.check_others()

    def test_qos3(self):
        self.each([
            ("qos 3", raw_publish(b"bad/q3", flags=0x6, pid=b"\x00\x01")),
            ("qos 3 retain", raw_publish(b"bad/q3", flags=0x7, pid=b"\x00\x01")),
            ("qos 3 dup", raw_publish(b"bad/q3", flags=0xe, pid=b"\x00\x01")),
        ], will=m.Will("$bad/q3", b"will", qos=1))
        # A protocol error publishes the will: three bad clients, three wills.
        for _ in range(3):
            msg = self.will_watch.recv_publish()
            self.assertEqual((msg.topic, msg.payload), ("$bad/q3", b"will"))
        # [MQTT-3.8.3-4]: a requested QoS of 3 in SUBSCRIBE is malformed (not granted as 2).
        self.each([
            ("SUBSCRIBE requested QoS 3", m.subscribe(1, [("r/a", 3)])),
            ("SUBSCRIBE second filter QoS 3", m.subscribe(1, [("r/a", 1), ("r/b", 3)])),
        ])
        self.each([("will QoS 3", m.connect("wq3", will=m.Will("$bad/w", b"x", qos=3)))], after_connect=False)
        self.check_others()

    def test_packet_id_zero(self):
        self.each([
            ("PUBLISH qos1 pid 0", raw_publish(b"bad/p0", flags=0x2, pid=b"\x00\x00")),
            ("PUBLISH qos2 pid 0", raw_publish(b"bad/p0", flags=0x4, pid=b"\x00\x00")),
            ("SUBSCRIBE pid 0", m.subscribe(0, [("bad/#", 0)])),
            ("UNSUBSCRIBE pid 0", m.unsubscribe(0, ["bad/#"])),
            ("PUBACK pid 0", m.puback(0)),
            ("PUBACK with reserved flags", m.packet(m.PUBACK, 0x1, b"\x00\x01")),
            ("PUBACK too long", m.packet(m.PUBACK, 0, b"\x00\x01\x00")),
            ("PUBREC pid 0", m.pubrec(0)),
            ("PUBREL pid 0", m.pubrel(0)),
            ("PUBCOMP pid 0", m.pubcomp(0)),
            ("PUBREC too long", m.packet(m.PUBREC, 0, b"\x00\x01\x00")),
            ("PUBREL too long", m.packet(m.PUBREL, 0x2, b"\x00\x01\x00")),
            ("PUBCOMP too short", m.packet(m.PUBCOMP, 0, b"\x00")),
        ])
        self.check_others()

    def test_invalid_utf8(self):
        bad_strings = [
            ("0xff", b"bad/\xff"),
            ("lone continuation", b"bad/\x80"),
            ("overlong NUL", b"bad/\xc0\x80"),
            ("overlong slash", b"bad/\xe0\x80\xaf"),
            ("surrogate half", b"bad/\xed\xa0\x80"),
            ("truncated sequence", b"bad/\xe2\x82"),
            ("above U+10FFFF", b"bad/\xf4\x90\x80\x80"),
        ]
        self.each([(f"topic {n}", raw_publish(s)) for n, s in bad_strings])
        self.each([(f"filter {n}", m.subscribe(1, [(s, 0)])) for n, s in bad_strings[:3]])
        self.each([(f"unsubscribe {n}", m.unsubscribe(1, [s])) for n, s in bad_strings[:2]])
        self.each([
            ("client id", m.connect(b"id\xff")),
            ("client id surrogate", m.connect(b"id\xed\xb0\x80")),
            ("will topic", m.connect("wt", will=m.Will(b"$bad/\xfe", b"x"))),
            ("username", m.connect("un", username=b"user\xc3")),
        ], after_connect=False)
        self.check_others()

    def test_nul_character(self):
        self.each([
            ("topic", raw_publish(b"bad/\x00x")),
            ("filter", m.subscribe(1, [(b"bad/\x00", 0)])),
            ("unsubscribe filter", m.unsubscribe(1, [b"\x00"])),
        ])
        self.each([
            ("client id", m.connect(b"id\x00")),
            ("will topic", m.connect("wn", will=m.Will(b"$bad/\x00", b"x"))),
        ], after_connect=False)
        self.check_others()

    def test_control_characters_cannot_forge_log_lines(self):
        # MQTT lets topics, filters and client ids carry line breaks; the log quotes them, so it writes every control
        # character as \xNN: no line of the log is the client's. And one refusal repeated (an invalid filter, answered
        # 0x80 without closing the client) is logged at the 1st, 2nd, 4th... time only.
        forged = b"2026-12-01T00:00:00.000 [error] shard0: forged"
        c = self.client(b"inj\r\n" + forged)
        c.subscribe([(b"bad/#/x\n" + forged, 0)], expect=[0x80])
        c.subscribe([(f"bad/#/{i}", 0) for i in range(40)], expect=[0x80] * 40)
        c.publish("check/inj", b"still served", qos=1)
        self.assertEqual(self.witness.recv_publish().payload, b"still served")
        log = self.broker.log()
        for line in log.split(b"\n"):
            self.assertFalse(line.startswith(b"2026-12-01T00:00:00.000"), line)
        self.assertIn(b"client inj\\x0d\\x0a" + forged + b": refusing subscription to invalid filter 'bad/#/x\\x0a"
                      + forged + b"' (1 invalid filters refused on this shard so far)", log)
        self.assertEqual(self.broker.doubling_counts(b"refusing subscription to invalid filter"), [1, 2, 4, 8, 16, 32])
        self.check_others()

    def test_wildcard_in_publish_topic(self):
        self.each([
            ("plus", raw_publish(b"bad/+")),
            ("hash", raw_publish(b"bad/#")),
            ("bare hash", raw_publish(b"#")),
            ("bare plus", raw_publish(b"+")),
            ("plus mid-level qos1", raw_publish(b"bad/+/x", flags=0x2, pid=b"\x00\x05")),
            ("hash qos2 retained", raw_publish(b"bad/#", flags=0x5, pid=b"\x00\x06")),
        ])
        self.check_others()

    def test_empty_topic_in_publish(self):
        self.each([
            ("qos 0", raw_publish(b"")),
            ("qos 1", raw_publish(b"", flags=0x2, pid=b"\x00\x01")),
            ("retained", raw_publish(b"", flags=0x1)),
        ])
        self.check_others()

    def test_first_packet_not_connect(self):
        self.each([
            ("PINGREQ", b"\xc0\x00"),
            ("PUBLISH", raw_publish(b"bad/first")),
            ("SUBSCRIBE", m.subscribe(1, [("#", 0)])),
            ("PUBACK", m.puback(1)),
        ], after_connect=False)
        self.check_others()

    def test_second_connect(self):
        self.each([
            ("same id", m.connect(self.cid("bad1", 1))),  # the first bad_client() is bad1-N
            ("other id", m.connect("someone-else")),
            ("3.1 connect", m.connect("old", level=3)),
        ])
        self.check_others()

    def test_oversized_packet(self):
        c = self.bad_client()
        # Only the fixed header: the broker must not wait for (or allocate) 1 MB.
        c.send(b"\x30" + m.encode_remaining_length(1_000_000))
        start = time.monotonic()
        c.expect_closed(3)
        self.assertLess(time.monotonic() - start, 2.0)
        c = self.bad_client()
        self.send_and_expect_closed(c, m.publish("bad/big", b"B" * 70_000, qos=0))
        c = self.raw()  # oversized CONNECT
        self.send_and_expect_closed(c, m.connect("big", will=m.Will("$bad/w", b"w" * 65_000),
                                                     username="u", password=b"p" * 6000))
        # Largest legal remaining length announced before CONNECT.
        c = self.raw()
        self.send_and_expect_closed(c, b"\x10\xff\xff\xff\x7f")
        self.check_others()

    def test_no_connect_within_connect_timeout(self):
        # Accepted at the handshake, the connect timeout counts from there; with mqtt.defer_accept (the default) from
        # when the kernel hands the silent connection over, about a second later (its SYN-ACK resent once).
        for defer, low, high in ((True, 1.3, 4.0), (False, 0.3, 2.5)):
            with self.subTest(defer=defer):
                if not defer:  # the first round has setUp's broker, on the defaults
                    self.use_broker({"mqtt.defer_accept": False})
                    self.witness = self.client(self.sub_id("witness"))
                    self.witness.subscribe([("#", 1)])
                start = time.monotonic()  # before the connection: a late thread cannot shorten what it measures
                c = self.raw()
                c.expect_closed(high + 1)
                elapsed = time.monotonic() - start
                self.assertGreaterEqual(elapsed, low, "closed before the 500 ms connect timeout had run")
                self.assertLessEqual(elapsed, high, "connect timeout (500 ms) not enforced")
                self.check_others()

    def test_half_connect_and_stall(self):
        c = self.raw()
        data = m.connect("halfway", keepalive=60)
        c.send(data[:len(data) // 2])
        start = time.monotonic()
        c.expect_closed(4)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.3)
        self.assertLessEqual(elapsed, 2.5)
        c = self.raw()
        c.send(b"\x10")  # only the first byte
        c.expect_closed(4)
        self.check_others()

    def test_half_packet_and_stall_after_connect(self):
        c = self.bad_client(will=m.Will("$bad/half", b"stalled", qos=1), keepalive=1)
        data = m.publish("bad/half", b"never finished", qos=1, pid=3)
        start = time.monotonic()
        c.send(data[:6])
        c.expect_closed(4.5)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 1.2, "closed before 1.5 x keepalive")
        self.assertLessEqual(elapsed, 3.5, "half packet not cut off by the keepalive")
        msg = self.will_watch.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("$bad/half", b"stalled"))
        self.check_others()

    def test_a_packet_trickled_byte_by_byte_is_cut_off_by_the_keepalive(self):
        # Keep-alive counts whole control packets [MQTT-3.1.2-24]: a byte every 0.3 s of a packet never finished
        # does not keep the connection (and the memory of its partial packet) alive.
        c = self.bad_client(will=m.Will("$bad/trickle", b"trickled", qos=1), keepalive=1)
        data = m.publish("bad/trickle", b"t" * 50_000, qos=1, pid=4)  # under the class max_packet_size
        c.send(b"\xc0\x00")  # the last whole packet: the keepalive runs from its PINGRESP
        c.expect(b"\xd0\x00")
        start = time.monotonic()
        sent = 0
        closed = False
        while time.monotonic() - start < 6.0:
            try:
                c.send(data[sent:sent + 1])
            except OSError:
                closed = True
                break
            sent += 1
            try:
                c.read_packet(0.3)
            except m.Closed:
                closed = True
                break
            except TimeoutError:
                continue
            self.fail("the broker answered a packet that was never finished")
        elapsed = time.monotonic() - start
        self.assertTrue(closed, f"still open after {elapsed:.1f} s and {sent} bytes trickled")
        self.assertGreaterEqual(elapsed, 1.2, "closed before 1.5 x keepalive")
        self.assertLessEqual(elapsed, 3.5, "a trickled packet kept the connection past its keepalive")
        msg = self.will_watch.recv_publish()
        self.assertEqual((msg.topic, msg.payload), ("$bad/trickle", b"trickled"))
        self.check_others()

    def test_garbage_stream(self):
        import random
        rnd = random.Random(1234)
        for i in range(5):
            with self.subTest(i=i):
                c = self.bad_client()
                junk = bytes(rnd.randrange(256) for _ in range(200))
                try:
                    c.send(b"\xf0" + m.encode_remaining_length(len(junk)) + junk)  # reserved type 15
                except OSError:
                    pass
                c.expect_closed(3)
        self.check_others()


shard_variants(BadInputCases, globals())
