"""CONNECT / CONNACK, protocol levels, client ids, keepalive, PINGREQ, DISCONNECT."""

import os
import re
import signal
import socket
import time

import mqtt_raw as m
from broker import home_shard, packets_until_closed, shard_variants


def server_side_state(port: int, client_port: int):
    """The TCP state, as /proc/net/tcp writes it ("01" ESTABLISHED, "03" SYN_RECV), of the server's side of the
    IPv4 connection from client_port to port, or None where there is none."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, state = line.split()[1:4]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
                return state
    return None


class ConnectCases:
    def test_connect_311(self):
        c = self.raw()
        c.send(m.connect("c311", level=4))
        c.expect(b"\x20\x02\x00\x00")
        c.send(m.pingreq())
        c.expect(b"\xd0\x00")

    def test_connect_31_mqisdp(self):
        c = self.raw()
        c.send(m.connect("c31", level=3))
        self.assertEqual(m.connect("c31", level=3)[2:10], b"\x00\x06MQIsdp")
        c.expect(b"\x20\x02\x00\x00")
        c.send(m.pingreq())
        c.expect(b"\xd0\x00")

    def test_a_31_client_id_is_limited_to_23_characters_not_bytes(self):
        # MQTT 3.1: "between 1 and 23 characters"; 12 x 'é' (24 bytes) was refused with 0x02.
        for cid, answer in (("é" * 23, b"\x20\x02\x00\x00"), ("é" * 24, b"\x20\x02\x00\x02"),
                            ("x" * 24, b"\x20\x02\x00\x02")):
            with self.subTest(length=len(cid)):
                c = self.raw()
                c.send(m.connect(cid, level=3))
                c.expect(answer)

    def test_allow_anonymous_false_refuses_a_connect_without_a_user_name_or_with_an_empty_one(self):
        # Return code 5 (not authorized) and the close; an empty user name is none (it was let in).
        self.use_broker({"mqtt.allow_anonymous": False})
        for username in (None, b""):
            with self.subTest(username=username):
                c = self.raw()
                c.send(m.connect(self.cid("anon"), username=username))
                c.expect(b"\x20\x02\x00\x05")
                c.expect_closed(3)
        c = self.raw()
        c.send(m.connect(self.cid("named"), username="u"))
        c.expect(m.CONNACK_OK)
        self.assertIn(b"anonymous connections are not allowed", self.broker.log())

    def test_connect_exact_bytes_minimal(self):
        # Hand-written CONNECT: "MQTT", level 4, clean session, keepalive 10, client id "a".
        c = self.raw()
        c.send(bytes.fromhex("10 0d 00 04 4d 51 54 54 04 02 00 0a 00 01 61"))
        c.expect(bytes.fromhex("20 02 00 00"))

    def test_protocol_level_5_refused_in_v5_form(self):
        c = self.raw()
        c.send(m.connect("c5", level=5))
        c.expect(b"\x20\x03\x00\x84\x00")
        c.expect_closed(3)
        # Level 5 with a 3.1.1 body (no property block: the client id's length is read as one) is not a well-formed
        # v5 CONNECT, but the answer is the same: the level is what the broker does not serve.
        for body in ("00 04 4d 51 54 54 05 02 00 3c 00 02 63 34", "00 04 4d 51 54 54 05 02 00 3c"):
            with self.subTest(body=body):
                c = self.raw()
                raw = bytes.fromhex(body)
                c.send(bytes([0x10, len(raw)]) + raw)
                c.expect(b"\x20\x03\x00\x84\x00")
                c.expect_closed(3)
        self.assert_broker_healthy()

    def test_unknown_protocol_level(self):
        for level in (2, 6, 0x7f):
            with self.subTest(level=level):
                c = self.raw()
                c.send(m.connect(f"lvl{level}", level=level, proto_name="MQTT"))
                c.expect(b"\x20\x02\x00\x01")
                c.expect_closed(3)
        self.assert_broker_healthy()

    def test_nothing_after_a_refused_connect_counts(self):
        # MQTT-3.2.2-5: after a refusing CONNACK the server closes the connection. Bytes that follow the refused
        # CONNECT, in the same write or the next one, must not be acted on: here a second, valid CONNECT for a
        # connected client's id, which would take that client over.
        victim_id = self.cid("victim")
        victim = self.client(victim_id)
        for i in range(20):
            with self.subTest(round=i):
                c = self.raw()
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.send(m.connect(f"bad{i}", level=6, proto_name="MQTT") + m.connect(victim_id))
                try:
                    c.send(m.pingreq())
                except OSError:
                    pass  # already closed: as it should be
                c.expect_closed(3, allow=[b"\x20\x02\x00\x01"])
        self.assertTrue(victim.is_open(), "the connected client was taken over")
        self.assert_broker_healthy()

    def test_generated_client_id(self):
        c = self.raw()
        c.send(m.connect("", clean=True))
        c.expect(b"\x20\x02\x00\x00")
        c.subscribe([("gen/t", 1)])
        c.publish("gen/t", b"self", qos=1)
        msg = c.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("gen/t", b"self", 1))

    def test_two_generated_ids_do_not_collide(self):
        # Two anonymous clients must get different generated ids: neither takes the other over.
        a = self.client("")
        b = self.client("")
        a.subscribe([("anon/a", 0)])
        b.subscribe([("anon/b", 0)])
        self.assertTrue(a.is_open())
        self.assertTrue(b.is_open())
        p = self.client(self.pub_id())
        p.publish("anon/a", b"A")
        p.publish("anon/b", b"B")
        self.assertEqual(a.recv_publish().payload, b"A")
        self.assertEqual(b.recv_publish().payload, b"B")

    def test_a_generated_id_cannot_be_guessed_by_another_client(self):
        # [MQTT-3.1.3-6] the id the broker assigns must be unique, and a 3.1.1 client is never told it: another client
        # that could guess it could take the anonymous one over and end its session. Until stop 73 the ids were
        # counted per shard ("ringmq-0-1", "ringmq-1-1", ...): a client trying the first of them took over the first
        # anonymous client of each shard.
        anons = []
        for i in range(12):  # the kernel spreads them over the shards
            a = self.client("")
            a.subscribe([(f"anon/{i}", 0)])
            anons.append(a)
        shards = self.broker.shards
        for s in range(shards):
            for i in range(1, 30):
                g = self.client(f"ringmq-{s}-{i}")
                g.disconnect()
                g.expect_closed(3)
        p = self.client(self.pub_id())
        for i, a in enumerate(anons):
            p.publish(f"anon/{i}", b"still here")
            self.assertTrue(a.is_open(), f"anonymous client {i} was taken over")
            self.assertEqual(a.recv_publish().payload, b"still here", f"anonymous client {i}")

    def test_empty_client_id_with_persistent_session_rejected(self):
        c = self.raw()
        c.send(m.connect("", clean=False))
        c.expect(b"\x20\x02\x00\x02")
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_username_and_password_accepted(self):
        c = self.raw()
        c.send(m.connect("cup", username="user", password=b"\x00\x01secret"))
        c.expect(b"\x20\x02\x00\x00")
        self.assertTrue(c.is_open())

    def test_username_only_accepted(self):
        c = self.raw()
        c.send(m.connect("cu", username="user"))
        c.expect(b"\x20\x02\x00\x00")

    def test_reserved_connect_flag_closes(self):
        # [MQTT-3.1.2-3]: the reserved bit 0 of the connect flags must be 0, else disconnect.
        c = self.raw()
        c.send(m.connect("rsv", flags=0x03))
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_will_qos_without_will_flag_closes(self):
        # [MQTT-3.1.2-13]: will flag 0 -> will QoS must be 0.
        c = self.raw()
        c.send(m.connect("wq", flags=0x02 | 0x08))
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_will_retain_without_will_flag_closes(self):
        # [MQTT-3.1.2-15]: will flag 0 -> will retain must be 0.
        c = self.raw()
        c.send(m.connect("wr", flags=0x02 | 0x20))
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_will_qos_3_closes(self):
        # [MQTT-3.1.2-14]: will QoS 3 is invalid.
        c = self.raw()
        c.send(m.connect("wq3", will=m.Will("w/t", b"x", qos=3)))
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_password_without_username_closes(self):
        # [MQTT-3.1.2-22]: username flag 0 -> password flag must be 0 (3.1.1).
        c = self.raw()
        c.send(m.connect("pw", password="secret"))
        c.expect_closed(3)
        self.assert_broker_healthy()

    def test_pingreq_pingresp(self):
        c = self.client("ping")
        for _ in range(3):
            c.send(b"\xc0\x00")
            c.expect(b"\xd0\x00")

    def test_disconnect_closes_connection(self):
        c = self.client("disc")
        c.send(b"\xe0\x00")
        c.expect_closed(3)
        # The id is free again.
        d = self.client("disc")
        self.assertTrue(d.is_open())

    def queue_offline(self, sid: str, topic: str, payloads: list) -> None:
        """Makes sid a persistent session subscribed to topic at QoS 0, offline, with payloads queued for it (a
        publisher on its home shard, whose round trip after them shows them all routed)."""
        s = self.client(sid, clean=False)
        s.subscribe([(topic, 0)])
        s.disconnect()
        s.expect_closed(3)
        pub = self.client(self.cid(sid + "-pub", home_shard(sid, self.SHARDS)))
        pub.send(b"".join(m.publish(topic, p) for p in payloads))
        self.assertTrue(pub.is_open())
        pub.disconnect()

    def test_answers_queued_before_a_disconnect_go_out_before_the_close(self):
        # Packets taken in the same read as the DISCONNECT (or a protocol error) had their answers queued, then
        # dropped by the close: a CONNECT and a DISCONNECT in one write got no CONNACK (MQTT-3.1.4-4).
        for shard in range(self.SHARDS):  # the CONNECT is handed to its home shard with the bytes after it
            with self.subTest(shard=shard):
                for clean in (True, False):
                    c = self.raw()
                    c.send(m.connect(self.cid(f"ans-{int(clean)}", shard), clean=clean) + m.disconnect())
                    self.assertEqual(len(c.expect_closed(3, allow=[m.connack()])), 1, f"clean {clean}: no CONNACK")
                c = self.raw()
                c.send(m.connect(self.cid("ans-all", shard)) + m.publish("ans/t", b"x", qos=1, pid=5)
                       + m.subscribe(6, [("ans/#", 1)]) + m.unsubscribe(7, ["ans/#"]) + m.pingreq() + m.disconnect())
                answers = [m.connack(), m.puback(5), m.suback(6, [1]), m.unsuback(7), m.PINGRESP_BYTES]
                self.assertEqual(len(c.expect_closed(3, allow=answers)), len(answers))
                # A first write longer than the first receive buffer (1 KB): the CONNACK's send is still pending
                # when the DISCONNECT is read, and the answers after it waited for nothing (they were dropped).
                for clean in (True, False):
                    c = self.raw()
                    pubs = b"".join(m.publish("ans/big", b"b" * 1500, qos=1, pid=20 + i) for i in range(40))
                    c.send(m.connect(self.cid(f"ans-big-{int(clean)}", shard), clean=clean) + pubs + m.pingreq()
                           + m.disconnect())
                    answers = [m.connack()] + [m.puback(20 + i) for i in range(40)] + [m.PINGRESP_BYTES]
                    self.assertEqual(len(c.expect_closed(3, allow=answers)), len(answers), f"clean {clean}")
                # Behind a batch of more pieces than one send takes (a persistent session's 400 queued messages of
                # 1.5 KB, each its own piece): the batch goes on to its end, then the answers (they were cut with it);
                # what stayed in the session comes on return, in order.
                sid = self.cid("ans-many", shard)
                self.queue_offline(sid, "ansm/t", [b"%04d" % i + b"m" * 1500 for i in range(400)])
                s = self.raw()
                # (Longer than the first 1 KB receive: the CONNACK and the messages are on their way when the rest
                # is read.)
                s.send(m.connect(sid, clean=False) + m.publish("ans/x", b"x" * 1500, qos=1, pid=5) + m.pingreq()
                       + m.disconnect())
                got = packets_until_closed(s)
                kinds = [p.type for p in got]
                self.assertEqual(kinds[0], m.CONNACK)
                self.assertEqual(kinds[-2:], [m.PUBACK, m.PINGRESP], kinds[-3:])
                first = [m.parse_publish(p).payload[:4] for p in got[1:-2]]
                self.assertGreater(len(first), 128, "no more than one send's worth before the answers")
                s = self.client(sid, clean=False, expect=m.connack(session_present=True))
                rest = [s.recv_publish().payload[:4] for _ in range(400 - len(first))]
                self.assertEqual(first + rest, [b"%04d" % i for i in range(400)])
                s.disconnect()
                # A protocol error after them: a second CONNECT, a malformed remaining length.
                for bad in (m.connect(self.cid("ans-err", shard)), b"\x30\xff\xff\xff\xff\x01"):
                    c = self.raw()
                    c.send(m.connect(self.cid("ans-err", shard)) + m.subscribe(3, [("ans/e", 0)]) + m.pingreq() + bad)
                    answers = [m.connack(), m.suback(3, [0]), m.PINGRESP_BYTES]
                    self.assertEqual(len(c.expect_closed(3, allow=answers)), 3, bad)
                # A persistent session's queued QoS 0 messages, queued for the connection at its CONNECT, go back to
                # the session rather than to a client that has said it is leaving; its answers go out.
                sid = self.cid("ans-q", shard)
                self.queue_offline(sid, "ansq/t", [b"q0", b"q1"])
                s = self.raw()
                s.send(m.connect(sid, clean=False) + m.pingreq() + m.disconnect())
                s.expect_closed(3, allow=[m.connack(session_present=True), m.PINGRESP_BYTES])
                s = self.client(sid, clean=False, expect=m.connack(session_present=True))
                self.assertEqual([s.recv_publish().payload for _ in range(2)], [b"q0", b"q1"])
                s.disconnect()

    def test_a_stop_does_not_wait_for_the_answers_of_a_client_that_does_not_read(self):
        # A client that does not read sends DISCONNECT behind a backlog: its close waits (up to 1 s) for the send
        # pending before its answers. The deadline's tick ends with a stop, so a stop then waited out the shard's 3 s
        # grace for the connection, warning that it was still busy.
        b = self.use_broker()
        sub = self.raw()
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sub.connect(self.cid("stop-sub", self.SHARDS - 1))
        sub.subscribe([("stop/t", 0)])
        pub = self.client(self.cid("stop-pub", 0))
        for _ in range(6):
            pub.send(m.publish("stop/t", b"s" * 4000) * 250)
        self.assertTrue(pub.is_open())
        sub.send(m.pingreq() + m.disconnect())
        time.sleep(0.1)
        start = time.monotonic()
        b.stop()
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertNotIn(b"still busy", b.log())

    def test_keepalive_enforced_at_one_and_a_half(self):
        start = time.monotonic()  # before the CONNECT: a thread late after its CONNACK cannot shorten what it measures
        c = self.client("ka", keepalive=1)
        c.expect_closed(4)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 1.2, "closed before 1.5 x keepalive")
        self.assertLessEqual(elapsed, 3.0, "keepalive not enforced near 1.5 x keepalive")

    def test_keepalive_kept_by_pings(self):
        c = self.client("kap", keepalive=1)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            time.sleep(0.4)
            c.send(b"\xc0\x00")
            c.expect(b"\xd0\x00")

    def test_keepalive_kept_by_other_traffic(self):
        c = self.client("kat", keepalive=1)
        c.subscribe([("kat/x", 0)])
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            time.sleep(0.4)
            c.publish("kat/x", b"beat")
            self.assertEqual(c.recv_publish().payload, b"beat")

    def test_keepalive_enforced_per_connection_among_many(self):
        # The broker looks only at connections whose deadline came up: the silent one among many must still be
        # found, and neither its busy twin nor the long-keepalive crowd may be touched.
        crowd = [self.client(f"kam-{i}", keepalive=60 if i % 2 else 0) for i in range(60)]
        silent = self.client("kam-silent", keepalive=1)
        busy = self.client("kam-busy", keepalive=1)
        start = time.monotonic()
        while time.monotonic() - start < 2.2:
            time.sleep(0.4)
            busy.send(b"\xc0\x00")
            busy.expect(b"\xd0\x00")
        silent.expect_closed(2)
        self.assertLessEqual(time.monotonic() - start, 4.0, "silent keepalive-1 client not closed near 1.5 s")
        for c in crowd:
            c.send(b"\xc0\x00")
            c.expect(b"\xd0\x00")

    def test_keepalive_zero_never_times_out(self):
        c = self.client("ka0", keepalive=0)
        c.expect_no_packet(1.6)
        self.assertTrue(c.is_open())

    def test_connack_session_present_zero_for_clean_session(self):
        c = self.client("cs", clean=True)
        c.disconnect()
        c.expect_closed(3)
        d = self.raw()
        d.send(m.connect("cs", clean=True))
        d.expect(b"\x20\x02\x00\x00")

    def test_every_way_of_closing_gives_the_descriptor_back(self):
        # The broker closes sockets through its ring; however a connection ends, its descriptor must be closed.
        fds = f"/proc/{self.broker.proc.pid}/fd"
        before = len(os.listdir(fds))
        for i in range(60):
            c = self.raw()
            if i % 4 == 3:
                c.send(b"\x30\x00")  # a PUBLISH before CONNECT: the broker closes it
                c.expect_closed(3)
                continue
            c.send(m.connect(f"fdgone{i}"))
            c.expect(b"\x20\x02\x00\x00")
            if i % 4 == 0:
                c.send(m.disconnect())
                c.expect_closed(3)
            elif i % 4 == 1:
                c.abort()  # RST
            else:
                c.close()  # FIN without DISCONNECT
        deadline = time.monotonic() + 5
        while len(os.listdir(fds)) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertLessEqual(len(os.listdir(fds)), before)

    def test_a_closing_connection_with_only_its_receive_pending_is_closed_without_a_worker(self):
        # A DISCONNECT, or a takeover of a connection that is not sending, leaves only the receive pending: the broker
        # cancels it where it waits instead of io_uring's SHUTDOWN (which always runs from a worker thread), and the
        # slot's close then sends the FIN. Every such client must see the close; the shards' counts at exit must show
        # the cancels (every close here, those at the broker's stop too) and no SHUTDOWN. Sockets in the ring's file
        # table (the default; set here so that a run of the suite on descriptors does not change what is tested).
        self.broker.stop()
        self.use_broker({"node.fixed_files": True})
        if b"has it cancelled" not in self.broker.log():
            self.skipTest("this kernel closes with SHUTDOWN (before Linux 6.13, or a ring without DEFER_TASKRUN)")
        n = 40
        for i in range(n):
            c = self.client(f"cancel-{i}")
            if i % 2:
                c.send(m.disconnect())
            else:
                taker = self.client(f"cancel-{i}")
                self.assertTrue(taker.is_open())
            c.expect_closed(3)
        log = self.broker.stop_and_read_log()
        counts = re.findall(rb"ended the pending operations of closing connections (\d+) times by cancelling the "
                            rb"receive, (\d+) times by SHUTDOWN", log)
        self.assertEqual(len(counts), self.SHARDS, "one count per shard")
        cancels = sum(int(a) for a, _ in counts)
        shutdowns = sum(int(b) for _, b in counts)
        self.assertGreaterEqual(cancels, n + n // 2, "the closes, the takeovers' and the stop's")
        self.assertEqual(shutdowns, 0)
        self.assertNotIn(b"has not ended in", log)  # no receive outlived its cancel

    def test_connects_beyond_the_first_packet_buffers_are_all_answered(self):
        # A shard takes each connection's first packet into one of 32 small buffers; first packets that arrive in the
        # same loop turn beyond those wait a turn (ENOBUFS, re-armed). The broker is stopped while 200 clients connect
        # and write CONNECT and PINGREQ at once, so all of them land together: every one must get both answers, and
        # the shard must say at shutdown that its first-packet buffers ran out.
        n = 200
        log = open(self.broker.log_path, "rb")  # still readable after stop() removes the file
        self.addCleanup(log.close)
        pid = self.broker.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            clients = [self.raw() for _ in range(n)]
            for i, c in enumerate(clients):
                c.send(m.connect(f"fpb{i}") + m.pingreq())
        finally:
            os.kill(pid, signal.SIGCONT)
        for c in clients:
            c.expect(m.connack())
            c.expect(m.PINGRESP_BYTES)
        self.broker.stop()
        ran_out = [int(n) for n in re.findall(rb"first packets (\d+)", log.read())]
        self.assertGreater(sum(ran_out), 0, "no shard ran out of first-packet buffers")

    def test_a_connection_reaches_the_broker_with_its_first_bytes(self):
        # mqtt.defer_accept (the default): the kernel holds a connection that has sent nothing (its server side in
        # SYN_RECV) until its first bytes come, so that a shard wakes once for the handshake and the CONNECT; a
        # silent one is handed over after about a second all the same. Off: accepted at the handshake. The broker's
        # descriptors show which: it holds one per accepted connection until its CONNECT (then, with node.fixed_files,
        # a slot of its ring instead). Eight connections, so that with two shards both listening sockets likely take
        # some.
        fd_dir = f"/proc/{self.broker.proc.pid}/fd"
        for defer, silent in ((True, "03"), (False, "01")):
            with self.subTest(defer=defer):
                if not defer:  # the first round has setUp's broker, on the defaults
                    self.use_broker({"mqtt.defer_accept": False})
                    fd_dir = f"/proc/{self.broker.proc.pid}/fd"
                fds = len(os.listdir(fd_dir))
                opened = time.monotonic()  # before the first connect: each one's deferral starts at its handshake
                conns = [self.raw() for _ in range(8)]
                ports = [c.sock.getsockname()[1] for c in conns]
                deadline = time.monotonic() + 2  # (off: the handshake's last ACK may still be on its way)
                while (len(os.listdir(fd_dir)) != fds + (0 if defer else 8)
                       or [server_side_state(self.port, p) for p in ports] != [silent] * 8) and \
                        time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertEqual([server_side_state(self.port, p) for p in ports], [silent] * 8)
                self.assertEqual(len(os.listdir(fd_dir)) - fds, 0 if defer else 8, "descriptors the broker took")
                if defer:
                    self.assertLess(time.monotonic() - opened, 0.9, "checked too late to tell: the deferral is 1 s")
                for i, c in enumerate(conns[:4]):
                    c.send(m.connect(f"fb{int(defer)}-{i}"))
                    c.expect(m.connack())
                self.assertEqual([server_side_state(self.port, p) for p in ports[:4]], ["01"] * 4)
                if defer:
                    while time.monotonic() < opened + 5 and server_side_state(self.port, ports[4]) != "01":
                        time.sleep(0.05)
                    self.assertEqual(server_side_state(self.port, ports[4]), "01", "never handed over")
                    self.assertGreaterEqual(time.monotonic() - opened, 0.5, "handed over before its first bytes")
                for i, c in enumerate(conns[4:]):
                    c.send(m.connect(f"fb{int(defer)}-late{i}"))
                    c.expect(m.connack())

    def test_31_client_interoperates_with_311(self):
        sub = self.client(self.sub_id("old"), level=3)
        sub.subscribe([("mix/#", 1)])
        pub = self.client(self.pub_id("new"), level=4)
        pub.publish("mix/a", b"to31", qos=1)
        msg = sub.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("mix/a", b"to31", 1))
        sub.publish("mix/b", b"from31", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"from31")


shard_variants(ConnectCases, globals())
