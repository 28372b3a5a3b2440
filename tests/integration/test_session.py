"""Persistent sessions (clean session 0): subscriptions kept, offline QoS 1/2 queue delivered in order,
unacknowledged messages resent with DUP, QoS 2 state kept across reconnects, takeover, clean session discards."""

import os
import random
import re
import signal
import threading
import time

import mqtt_raw as m
import admin_client
from broker import BrokerTest, packets_until_closed, read_until_closed, read_until_quiet, rss_kib, shard_variants


class FlakyQos2Peer:
    """One side of a QoS 2 exchange whose connection keeps breaking: a persistent session that, every now and then,
    drops its connection (closes it, resets it, or has its own new connection take it over while it is still open)
    and reconnects, keeping its half of the protocol state as MQTT 3.1.1 section 4.4 asks of a client. Only the
    client breaks connections: one the broker closes fails the test."""

    def __init__(self, test, client_id: str, rnd: random.Random, drop_rate: float):
        self.test, self.client_id, self.rnd, self.drop_rate = test, client_id, rnd, drop_rate
        self.drops = 0
        self.c = test.client(client_id, clean=False, keepalive=30)

    def reconnect(self) -> None:
        how = self.rnd.randrange(3)
        if how == 0:
            self.c.close()
        elif how == 1:
            self.c.abort()
        # how == 2: the new connection takes the old one over; the broker closes it
        self.c = self.test.client(self.client_id, clean=False, keepalive=30, expect=m.CONNACK_OK_SESSION)
        self.drops += 1
        self.resume()

    def resume(self) -> None:
        pass

    def packets(self):
        """The packets that came within a few milliseconds."""
        out = []
        while True:
            try:
                out.append(self.c.read_packet(0.005))
            except TimeoutError:
                return out
            except (m.Closed, OSError) as e:
                raise AssertionError(f"{self.client_id}: the broker closed the connection ({e!r})") from None

    def maybe_drop(self) -> bool:
        """Drops the connection now and then; then the packets read from the old one are not looked at any more."""
        if self.rnd.random() < self.drop_rate:
            self.reconnect()
            return True
        return False


class FlakyQos2Publisher(FlakyQos2Peer):
    """Publishes `count` QoS 2 messages (payloads "0", "1", ...) with at most `window` in flight."""

    def __init__(self, test, client_id, rnd, drop_rate, topic: str, count: int, window: int):
        super().__init__(test, client_id, rnd, drop_rate)
        self.topic, self.count, self.window = topic, count, window
        self.next_seq, self.next_pid = 0, 0
        self.unacked = {}  # pid -> [seq, "publish" or "pubrel"], in the order sent

    def send(self, data: bytes) -> None:
        self.c.send(data)

    def resume(self) -> None:
        # MQTT-4.4.0-1: resend unacknowledged PUBLISHes (DUP) and PUBRELs, in their original order.
        for pid, (seq, state) in list(self.unacked.items()):
            if state == "publish":
                self.send(m.publish(self.topic, str(seq), qos=2, pid=pid, dup=True))
            else:
                self.send(m.pubrel(pid))

    def done(self) -> bool:
        return self.next_seq == self.count and not self.unacked

    def step(self) -> None:
        while self.next_seq < self.count and len(self.unacked) < self.window:
            self.next_pid = self.next_pid % 65535 + 1
            self.unacked[self.next_pid] = [self.next_seq, "publish"]
            self.send(m.publish(self.topic, str(self.next_seq), qos=2, pid=self.next_pid))
            self.next_seq += 1
        for p in self.packets():
            pid = m.packet_id(p)
            if p.type == m.PUBREC:
                if pid in self.unacked:
                    self.unacked[pid][1] = "pubrel"
                self.send(m.pubrel(pid))
            elif p.type == m.PUBCOMP:
                if self.unacked.get(pid, [None, None])[1] != "pubrel":
                    raise AssertionError(f"PUBCOMP for packet id {pid}, which awaits no PUBCOMP: {self.unacked!r}")
                del self.unacked[pid]
            else:
                raise AssertionError(f"publisher got {p!r}")
            if self.maybe_drop():
                return


class FlakyQos2Subscriber(FlakyQos2Peer):
    """Subscribes to `topic` at QoS 2 and delivers each message once (a resend of an id awaiting PUBREL is not)."""

    def __init__(self, test, client_id, rnd, drop_rate, topic: str):
        super().__init__(test, client_id, rnd, drop_rate)
        self.c.subscribe([(topic, 2)])
        self.delivered = []
        self.awaiting_rel = set()  # PUBREC sent, PUBREL not yet received: a PUBLISH with this id is a resend

    def step(self) -> None:
        for p in self.packets():
            if p.type == m.PUBLISH:
                msg = m.parse_publish(p)
                if msg.qos != 2:
                    raise AssertionError(f"subscriber got {msg!r}")
                if msg.pid not in self.awaiting_rel:
                    self.delivered.append(int(msg.payload))
                    self.awaiting_rel.add(msg.pid)
                self.c.send(m.pubrec(msg.pid))
            elif p.type == m.PUBREL:
                self.awaiting_rel.discard(m.packet_id(p))
                self.c.send(m.pubcomp(m.packet_id(p)))
            else:
                raise AssertionError(f"subscriber got {p!r}")
            if self.maybe_drop():
                return


class SessionCases:
    def persistent(self, name="sess", present=False, **kw):
        return self.client(self.sub_id(name), clean=False,
                           expect=m.CONNACK_OK_SESSION if present else m.CONNACK_OK, **kw)

    def test_a_session_going_offline_again_and_again_holds_no_copy_of_its_id_each_time(self):
        # Each time a persistent session went offline its expiry entry copied the client id, and stale entries were
        # swept only once they outnumbered the sessions by 1024: one client with a 64 KiB id going offline 2,000
        # times held 100 MB (a review). Now also swept by the bytes they hold.
        cid = self.sub_id("x" * 65000)
        c = self.client(cid, clean=False)
        c.disconnect()
        c.expect_closed(3)
        before = rss_kib(self.broker.proc.pid)
        for _ in range(600):
            c = self.client(cid, clean=False, expect=m.CONNACK_OK_SESSION)
            c.disconnect()
            c.expect_closed(3)
        grown = rss_kib(self.broker.proc.pid) - before
        self.assertLess(grown, 12 * 1024, f"RSS grew {grown} KiB over 600 times offline (600 copies: 38,000 KiB)")

    def test_offline_session_expires(self):
        # mqtt.session_expiry_interval: a persistent session offline longer than it is discarded with its
        # subscriptions and queued messages; one that comes back in time is kept, and the clock starts again at
        # its next disconnect.
        # 4 s, checked on the broker's 200 ms tick. "kept" comes back after 2 s and then 2.5 s offline, so a test
        # thread stalled for up to 1.5 s still finds it; "gone" is 6 s offline, 1.8 s past its expiry's last tick.
        self.use_broker({"mqtt.session_expiry_interval": 4000})
        gone, kept = self.persistent("gone"), self.persistent("kept")
        pub = self.client(self.pub_id())
        for c, topic in ((gone, "exp/gone"), (kept, "exp/kept")):
            c.subscribe([(topic, 1)])
        gone.disconnect()
        gone.expect_closed(3)
        pub.publish("exp/gone", b"queued", qos=1)
        time.sleep(1.0)
        kept.disconnect()
        kept.expect_closed(3)
        time.sleep(2.0)
        kept = self.persistent("kept", present=True)  # back within the interval
        time.sleep(0.5)
        kept.disconnect()
        kept.expect_closed(3)
        time.sleep(2.5)  # "gone": 6 s offline; "kept": 2.5 s since its last disconnect, 4.5 s offline in all
        self.persistent("kept", present=True).disconnect()
        fresh = self.persistent("gone", present=False)  # CONNACK session present 0
        fresh.expect_no_packet(0.3)  # the queued message went with the session
        pub.publish("exp/gone", b"after", qos=1)
        fresh.expect_no_packet(0.3)  # and so did the subscription
        log = self.broker.log().decode("utf-8", "replace")
        self.assertRegex(log, r"session .*gone.* expired: offline for \d+ ms, over mqtt.session_expiry_interval = "
                              r"4000 ms; 1 message dropped")
        self.assertRegex(log, r"1 offline session expired \(mqtt.session_expiry_interval = 4000 ms\), 1 undelivered "
                              r"message dropped")

    def test_session_present_flag(self):
        c = self.persistent()
        c.subscribe([("s/x", 1)])
        c.disconnect()
        c.expect_closed(3)
        c = self.persistent(present=True)
        c.disconnect()
        c.expect_closed(3)
        # And after an abnormal close too.
        c = self.persistent(present=True)
        c.close()
        self.persistent(present=True)

    def test_subscriptions_kept(self):
        c = self.persistent()
        c.subscribe([("s/keep", 2)])
        c.disconnect()
        c.expect_closed(3)
        c = self.persistent(present=True)
        pub = self.client(self.pub_id())
        pub.publish("s/keep", b"still subscribed", qos=2)
        msg = c.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("s/keep", b"still subscribed", 2))

    def test_offline_messages_delivered_in_order(self):
        c = self.persistent()
        c.subscribe([("s/off/#", 2)])
        c.disconnect()
        c.expect_closed(3)
        pub = self.client(self.pub_id())
        sent = []
        for i in range(30):
            qos = 1 + i % 2
            pub.publish(f"s/off/{i % 3}", f"m{i}", qos=qos)
            sent.append((f"s/off/{i % 3}", f"m{i}".encode(), qos))
        c = self.persistent(present=True)
        msgs = c.recv_publishes(30)
        self.assertEqual([(x.topic, x.payload, x.qos) for x in msgs], sent)
        self.assertFalse(any(x.retain for x in msgs))
        c.expect_no_packet(0.4)

    def test_offline_queue_downgraded_to_granted_qos(self):
        c = self.persistent()
        c.subscribe([("s/dg", 1)])
        c.disconnect()
        c.expect_closed(3)
        pub = self.client(self.pub_id())
        pub.publish("s/dg", b"two", qos=2)
        c = self.persistent(present=True)
        msg = c.recv_publish()
        self.assertEqual((msg.payload, msg.qos), (b"two", 1))

    def test_offline_messages_after_abnormal_close(self):
        c = self.persistent()
        c.subscribe([("s/ab", 1)])
        c.close()
        pub = self.client(self.pub_id())
        # The broker may notice the close a little later; QoS 1 messages are kept either way.
        for i in range(5):
            pub.publish("s/ab", str(i), qos=1)
        c = self.persistent(present=True)
        msgs = c.recv_publishes(5)
        self.assertEqual([x.payload for x in msgs], [str(i).encode() for i in range(5)])

    def test_unacked_qos1_resent_with_dup(self):
        c = self.persistent()
        c.subscribe([("s/dup", 1)])
        pub = self.client(self.pub_id())
        pub.publish("s/dup", b"ack me", qos=1)
        first = c.recv_publish(ack=False)
        self.assertFalse(first.dup)
        c.close()
        c = self.persistent(present=True)
        p = c.read_packet()
        again = m.parse_publish(p)
        self.assertEqual((again.topic, again.payload, again.qos, again.dup), ("s/dup", b"ack me", 1, True))
        self.assertEqual(again.pid, first.pid)
        self.assertEqual(p.raw(), bytes.fromhex("3a 0f 00 05") + b"s/dup" + m.u16(first.pid) + b"ack me")
        c.send(m.puback(again.pid))
        c.expect_no_packet(0.4)
        # Acknowledged: not resent on the next reconnect.
        c.disconnect()
        c.expect_closed(3)
        c = self.persistent(present=True)
        c.expect_no_packet(0.5)

    def test_large_unacked_qos1_resent_with_dup(self):
        # A payload of 1 KiB or more is sent from the stored message, behind a head that carries the packet id and
        # flags: the resend after reconnecting is the same frame with DUP set, byte for byte.
        c = self.persistent()
        c.subscribe([("s/big", 1)])
        pub = self.client(self.pub_id())
        payload = bytes(range(256)) * 40
        pub.publish("s/big", payload, qos=1)
        p1 = c.read_packet()
        first = m.parse_publish(p1)
        self.assertEqual(p1.raw(), m.publish("s/big", payload, qos=1, pid=first.pid))
        c.close()
        c = self.persistent(present=True)
        p2 = c.read_packet()
        self.assertEqual(p2.raw(), m.publish("s/big", payload, qos=1, pid=first.pid, dup=True))
        c.send(m.puback(first.pid))
        c.expect_no_packet(0.4)

    def test_unacked_resent_before_queued(self):
        c = self.persistent()
        c.subscribe([("s/rq", 1)])
        pub = self.client(self.pub_id())
        pub.publish("s/rq", b"inflight", qos=1)
        c.recv_publish(ack=False)
        # DISCONNECT and wait for the broker's close, so the next message surely arrives while offline.
        c.disconnect()
        c.expect_closed(3)
        pub.publish("s/rq", b"queued", qos=1)
        c = self.persistent(present=True)
        a = c.recv_publish()
        b = c.recv_publish()
        self.assertEqual((a.payload, a.dup), (b"inflight", True))
        self.assertEqual((b.payload, b.dup), (b"queued", False))

    def test_qos2_unreceived_publish_resent_with_dup(self):
        c = self.persistent()
        c.subscribe([("s/q2", 2)])
        pub = self.client(self.pub_id())
        pub.publish("s/q2", b"two", qos=2)
        first = c.recv_publish(ack=False)
        c.close()
        c = self.persistent(present=True)
        again = c.recv_publish(ack=False)
        self.assertEqual((again.payload, again.qos, again.dup, again.pid), (b"two", 2, True, first.pid))
        c.ack(again)
        c.expect_no_packet(0.4)

    def test_qos2_pubrel_resent_after_pubrec(self):
        c = self.persistent()
        c.subscribe([("s/rel", 2)])
        pub = self.client(self.pub_id())
        pub.publish("s/rel", b"two", qos=2)
        msg = c.recv_publish(ack=False)
        c.send(m.pubrec(msg.pid))
        c.expect(m.pubrel(msg.pid))
        c.close()
        c = self.persistent(present=True)
        # [MQTT-4.4.0-1]: PUBREL resent, not the PUBLISH.
        c.expect(m.pubrel(msg.pid))
        c.send(m.pubcomp(msg.pid))
        c.expect_no_packet(0.5)

    def test_pubrels_resent_in_the_order_the_pubrecs_came(self):
        # [MQTT-4.6.0-4]: PUBRELs go in the order of their PUBRECs, which the client may send out of PUBLISH order;
        # the PUBLISH not yet received is resent after them, with DUP.
        c = self.persistent()
        c.subscribe([("s/relorder", 2)])
        pub = self.client(self.pub_id())
        for body in (b"a", b"b", b"c", b"d"):
            pub.publish("s/relorder", body, qos=2)
        got = [c.recv_publish(ack=False) for _ in range(4)]
        self.assertEqual([g.payload for g in got], [b"a", b"b", b"c", b"d"])
        for i in (2, 0, 1):
            c.send(m.pubrec(got[i].pid))
            c.expect(m.pubrel(got[i].pid))
        c.close()
        c = self.persistent(present=True)
        for i in (2, 0, 1):
            c.expect(m.pubrel(got[i].pid))
        again = c.recv_publish(ack=False)
        self.assertEqual((again.payload, again.dup, again.pid), (b"d", True, got[3].pid))
        for i in (2, 0, 1):
            c.send(m.pubcomp(got[i].pid))
        c.ack(again)
        c.expect_no_packet(0.4)

    def test_pubrec_for_unknown_id_is_released(self):
        # The session that sent the QoS 2 PUBLISH was discarded (a clean reconnect): the client still holds the id
        # awaiting PUBREL and only a PUBREL can free it.
        c = self.persistent()
        c.subscribe([("s/lost", 2)])
        pub = self.client(self.pub_id())
        pub.publish("s/lost", b"two", qos=2)
        msg = c.recv_publish(ack=False)
        c.close()
        c = self.client(self.sub_id("sess"), clean=True)
        c.send(m.pubrec(msg.pid))
        c.expect(m.pubrel(msg.pid))
        c.send(m.pubcomp(msg.pid))
        # The connection goes on as usual: a QoS 2 message still completes.
        c.subscribe([("s/lost", 2)])
        pub.publish("s/lost", b"again", qos=2)
        again = c.recv_publish(ack=False)
        self.assertEqual(again.payload, b"again")
        c.send(m.pubrec(again.pid))
        c.expect(m.pubrel(again.pid))
        c.send(m.pubcomp(again.pid))
        c.expect_no_packet(0.4)

    def test_inbound_qos2_state_kept_across_reconnect(self):
        sub = self.client(self.cid("watch", self.SHARDS - 1))
        sub.subscribe([("s/in2", 2)])
        pid_ = self.pub_id("inpub")
        pub = self.client(pid_, clean=False)
        pub.send(m.publish("s/in2", b"exactly once", qos=2, pid=42))
        pub.expect(m.pubrec(42))
        pub.close()
        pub = self.client(pid_, clean=False, expect=m.CONNACK_OK_SESSION)
        # The client resends the PUBLISH with DUP (it never saw PUBREC, say), then PUBREL.
        pub.send(m.publish("s/in2", b"exactly once", qos=2, pid=42, dup=True))
        pub.expect(m.pubrec(42))
        pub.send(m.pubrel(42))
        pub.expect(m.pubcomp(42))
        msg = sub.recv_publish()
        self.assertEqual(msg.payload, b"exactly once")
        sub.expect_no_packet(0.6)

    def test_clean_session_discards_previous_session(self):
        c = self.persistent()
        c.subscribe([("s/clean", 1)])
        c.disconnect()
        c.expect_closed(3)
        pub = self.client(self.pub_id())
        pub.publish("s/clean", b"queued", qos=1)
        c = self.client(self.sub_id("sess"), clean=True)  # session present 0, queue and subscriptions dropped
        c.expect_no_packet(0.4)
        pub.publish("s/clean", b"not subscribed", qos=1)
        c.expect_no_packet(0.4)
        c.disconnect()
        c.expect_closed(3)
        # The clean session is not kept either.
        c = self.persistent(present=False)
        pub.publish("s/clean", b"still not", qos=1)
        c.expect_no_packet(0.4)

    def test_qos0_not_required_but_qos1_kept(self):
        c = self.persistent()
        c.subscribe([("s/mix", 2)])
        c.disconnect()
        c.expect_closed(3)
        pub = self.client(self.pub_id())
        for i in range(6):
            pub.publish("s/mix", str(i), qos=i % 3)
        c = self.persistent(present=True)
        got = []
        while True:
            try:
                got.append(c.recv_publish(timeout=0.8))
            except AssertionError:
                break
        qos12 = [(x.payload, x.qos) for x in got if x.qos > 0]
        self.assertEqual(qos12, [(b"1", 1), (b"2", 2), (b"4", 1), (b"5", 2)])
        self.assertEqual([x.payload for x in got], sorted(x.payload for x in got), "order not kept")

    def test_takeover_closes_old_connection(self):
        old = self.client(self.sub_id("tk"))
        new = self.client(self.sub_id("tk"))
        old.expect_closed(3)
        self.assertTrue(new.is_open())

    def test_takeover_persistent_keeps_session(self):
        old = self.client(self.sub_id("tk"), clean=False)
        old.subscribe([("s/tk", 1)])
        new = self.client(self.sub_id("tk"), clean=False, expect=m.CONNACK_OK_SESSION)
        old.expect_closed(3)
        pub = self.client(self.pub_id())
        pub.publish("s/tk", b"to new", qos=1)
        self.assertEqual(new.recv_publish().payload, b"to new")

    def test_takeover_moves_unacked_messages(self):
        old = self.client(self.sub_id("tk"), clean=False)
        old.subscribe([("s/tkm", 1)])
        pub = self.client(self.pub_id())
        pub.publish("s/tkm", b"unacked", qos=1)
        first = old.recv_publish(ack=False)
        new = self.client(self.sub_id("tk"), clean=False, expect=m.CONNACK_OK_SESSION)
        old.expect_closed(3)
        again = new.recv_publish()
        self.assertEqual((again.payload, again.dup, again.pid), (b"unacked", True, first.pid))

    def test_takeover_with_clean_session_discards(self):
        old = self.client(self.sub_id("tk"), clean=False)
        old.subscribe([("s/tkc", 1)])
        new = self.client(self.sub_id("tk"), clean=True, expect=m.CONNACK_OK)
        old.expect_closed(3)
        pub = self.client(self.pub_id())
        pub.publish("s/tkc", b"x", qos=1)
        new.expect_no_packet(0.5)

    def test_old_connection_after_takeover_sends_nothing_through(self):
        # Anything the old connection still has in its socket after the takeover must not be published.
        watch = self.client(self.cid("watch", 0))
        watch.subscribe([("s/ghost", 0)])
        old = self.client(self.sub_id("tk"))
        new = self.client(self.sub_id("tk"))
        old.expect_closed(3)
        try:
            old.send(m.publish("s/ghost", b"from the dead"))
        except OSError:
            pass
        watch.expect_no_packet(0.4)
        self.assertTrue(new.is_open())

    def test_repeated_takeovers(self):
        conns = []
        for i in range(6):
            conns.append(self.client(self.sub_id("many"), clean=False,
                                     expect=m.CONNACK_OK if i == 0 else m.CONNACK_OK_SESSION))
            if i == 0:
                conns[0].subscribe([("s/many", 1)])
            else:
                conns[i - 1].expect_closed(3)
        pub = self.client(self.pub_id())
        pub.publish("s/many", b"last", qos=1)
        self.assertEqual(conns[-1].recv_publish().payload, b"last")

    def test_offline_queue_large_in_order(self):
        c = self.persistent()
        c.subscribe([("s/big", 1)])
        c.disconnect()
        c.expect_closed(3)
        pub = self.client(self.pub_id())
        for i in range(200):
            pub.publish("s/big", str(i), qos=1)
        c = self.persistent(present=True)
        self.assertEqual([x.payload for x in c.recv_publishes(200)], [str(i).encode() for i in range(200)])

    def test_qos2_exactly_once_while_both_connections_keep_breaking(self):
        # Publisher and subscriber each drop their connection after about one packet in 40 (close, reset or
        # takeover) and reconnect to their sessions, resuming the QoS 2 flows in flight: every message still arrives
        # exactly once and in order. The drop decisions are seeded per peer; which packet a drop follows still depends
        # on timing.
        sub = FlakyQos2Subscriber(self, self.sub_id("eo-sub"), random.Random(1), 0.025, "s/eo")
        pub = FlakyQos2Publisher(self, self.pub_id("eo-pub"), random.Random(2), 0.025, "s/eo", 400, 20)
        deadline = time.monotonic() + 40
        while (not pub.done() or len(sub.delivered) < 400) and time.monotonic() < deadline:
            pub.step()
            sub.step()
        # Nothing more may come: a copy delivered twice could still be on its way.
        pub.drop_rate = sub.drop_rate = 0
        quiet = time.monotonic() + 0.3
        while time.monotonic() < quiet:
            pub.step()
            sub.step()
        what = f"after {pub.drops} publisher and {sub.drops} subscriber drops"
        self.assertEqual(sub.delivered, list(range(400)), what)
        self.assertTrue(pub.done(), f"{len(pub.unacked)} PUBLISHes never completed, {what}")
        self.assertGreaterEqual(pub.drops, 5)
        self.assertGreaterEqual(sub.drops, 5)
        self.assertNotIn(b"dropped", self.broker.log())


shard_variants(SessionCases, globals())


class QueuedPastOutgoingLimitCases:
    """A reconnecting persistent session gets every message it queued while offline, even when they are more than
    mqtt.max_outgoing_bytes: they wait in its queue and go as the connection sends. The whole queue once went in one
    go, and every QoS 0 message past the limit was dropped as if the client did not read."""
    SETTINGS = {"mqtt.max_outgoing_bytes": 1024}

    def test_whole_offline_queue_arrives(self):
        s = self.client(self.sub_id("oq"), clean=False)
        s.subscribe([("oq/q0", 0), ("oq/q1", 1)])
        s.disconnect()
        s.expect_closed(3)  # the session is offline before anything is published (see QueueFullOfQos0Cases)
        pub = self.client(self.pub_id("oq-pub"))
        for i in range(20):
            pub.publish("oq/q0", b"%03d" % i + b"x" * 200)
        for i in range(5):
            pub.publish("oq/q1", b"%03d" % i + b"y" * 300, qos=1)
        s = self.client(self.sub_id("oq"), clean=False, expect=m.connack(session_present=True))
        got = [(msg.topic, msg.payload[:3], msg.qos) for msg in s.recv_publishes(25)]
        want = [("oq/q0", b"%03d" % i, 0) for i in range(20)] + [("oq/q1", b"%03d" % i, 1) for i in range(5)]
        self.assertEqual(got, want)
        s.expect_no_packet(0.3)
        self.assertNotIn(b"dropped", self.broker.log())


shard_variants(QueuedPastOutgoingLimitCases, globals())


class QueueFullOfQos0Cases:
    """An offline session's full queue drops its oldest QoS 0 messages for a QoS 1 one [MQTT-3.1.2-5: QoS 1 and 2 must
    be stored, QoS 0 may be]: a queue full of QoS 0 made the QoS 1 message the one dropped. (Its publisher not held:
    a held client's message is taken past the limit, test_limits.)"""
    SETTINGS = {"mqtt.max_queued_messages": 5, "mqtt.publisher_hold_ms": 0}

    def test_qos1_message_takes_the_place_of_the_oldest_qos0(self):
        s = self.client(self.sub_id("mix"), clean=False)
        s.subscribe([("mix/#", 1)])
        s.disconnect()
        # The broker's close says the session is offline. Without waiting for it, a session's shard that did not run
        # for a while (a loaded host) could take the DISCONNECT and the other shard's messages in one turn and route
        # the messages first, to the connection still attached: QoS 0 then goes out to a client that has left.
        s.expect_closed(3)
        pub = self.client(self.pub_id("mix-pub"))
        for i in range(5):
            pub.publish("mix/a", f"q0-{i}")
        pub.publish("mix/b", b"q1", qos=1)
        pub.publish("mix/a", b"q0-late")  # the queue is full of QoS 0 and a QoS 1: dropped
        # With 2 shards the QoS 0 message may still be on its way to the session's shard: reconnecting before it
        # arrives would have it delivered live. Its drop is logged (the session's 2nd).
        deadline = time.monotonic() + 5
        while b"queue full (mqtt.max_queued_messages = 5)" not in self.broker.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        s = self.client(self.sub_id("mix"), clean=False, expect=m.connack(session_present=True))
        got = [(msg.payload, msg.qos) for msg in s.recv_publishes(5)]
        self.assertEqual(got, [(b"q0-1", 0), (b"q0-2", 0), (b"q0-3", 0), (b"q0-4", 0), (b"q1", 1)])
        s.expect_no_packet(0.3)
        # The warning names the QoS 1 message the drop made room for, not as dropped (it was, until stop 73).
        log = self.broker.log()
        self.assertRegex(log, rb"queue full: its oldest QoS 0 messages dropped to make room for a QoS 1 message on "
                              rb"mix/b \(1 so far\)")
        self.assertNotIn(b"message on mix/b dropped", log)


shard_variants(QueueFullOfQos0Cases, globals())


class UnsentQos0GoesBackToTheSession(BrokerTest):
    """QoS 0 messages queued for a persistent session's connection that never reached its socket (routed in the turn
    that also handles its DISCONNECT, or waiting behind a stuck send when another connection takes the session over)
    go back to the session and arrive when the client returns, neither lost nor twice. (They were lost: nothing else
    keeps a QoS 0 message.)"""

    # The admin API (for the sent counters, assert_sent_once_each) only in the tests that read them: its shard's
    # periodic work lowers the odds that the SIGSTOP test's two packets fall into one turn (1 of 30 rounds under ASan).
    COUNTED = ("test_what_a_pending_send_had_not_handed_to_the_socket_goes_back_on_disconnect",
               "test_what_a_pending_send_had_not_handed_to_the_socket_goes_to_the_connection_that_takes_over")

    @property
    def ADMIN(self) -> bool:
        return self._testMethodName in self.COUNTED

    def test_a_message_routed_in_the_turn_of_the_disconnect_arrives_on_return(self):
        went_back = 0
        r = 0
        while went_back < 2 and r < 30:
            sid = f"unsent-{r}"
            s = self.client(sid, clean=False)
            s.subscribe([("un/#", 0)])
            pub = self.client(f"unsent-pub-{r}")
            payload = b"m%d" % r
            # Stopped, the broker reads nothing; resumed, it takes both, the PUBLISH first (it came first), routed
            # to the connection still attached, then the DISCONNECT: in one turn about every other round here, else
            # the PUBLISH in a turn of its own, whose message then goes out before the close.
            os.kill(self.broker.proc.pid, signal.SIGSTOP)
            try:
                pub.send(m.publish("un/a", payload))
                time.sleep(0.05)
                s.send(m.DISCONNECT_BYTES)
                time.sleep(0.05)
            finally:
                os.kill(self.broker.proc.pid, signal.SIGCONT)
            # Should the two fall into different turns after all, the message goes out before the close.
            before = [p.body for p in s.expect_closed(3, allow=[m.publish("un/a", payload)])]
            s = self.client(sid, clean=False, expect=m.connack(session_present=True))
            after = read_until_quiet(s, quiet=0.5)
            self.assertEqual(len(before) + len(after), 1, f"round {r}: before the close {before}, after {after}")
            if after:
                self.assertEqual(after, [payload])
            # Only the broker's log tells this path from the DISCONNECT handled first (the message then queued for the
            # offline session as usual).
            if f"client {sid}: 1 QoS 0 message not yet sent went back to its session".encode() in self.broker.log():
                went_back += 1
            s.disconnect()
            s.expect_closed(3)
            pub.disconnect()
            r += 1
        # About every other round takes the path under test here; 30 without one would mean it is not reached.
        self.assertEqual(went_back, 2, f"{r} rounds")

    def test_messages_waiting_behind_a_stuck_send_go_to_the_connection_that_takes_over(self):
        # The subscriber does not read: the broker's send stalls once the socket buffers are full (about 4 MB on
        # loopback here; 10 MB of filler is sent), and what comes after waits in the connection's send queue. A new
        # connection with the same client id takes the session over: the waiting QoS 0 messages go to it, in order,
        # once each, rather than down with the old connection.
        old = self.client("stuck", clean=False)
        old.subscribe([("st/#", 0)])
        pub = self.client("stuck-pub")
        filler = b"f" * 65536
        for _ in range(160):
            pub.publish("st/filler", filler)
        time.sleep(0.3)  # the filler is in the socket or waiting behind it
        for i in range(10):
            pub.publish("st/marked", b"m%d" % i)
        time.sleep(0.3)
        new = self.client("stuck", clean=False, expect=m.connack(session_present=True))
        marked = []
        deadline = time.monotonic() + 20
        while len(marked) < 10 and time.monotonic() < deadline:
            msg = new.recv_publish(timeout=max(0.1, deadline - time.monotonic()))
            if msg.topic == "st/marked":
                marked.append(msg.payload)
            else:
                self.assertEqual(marked, [], "filler after a marked message")
        self.assertEqual(marked, [b"m%d" % i for i in range(10)])
        new.expect_no_packet(0.3)
        self.assertRegex(self.broker.log(), rb"client stuck: \d+ QoS 0 messages not yet sent went back to its session "
                                            rb"\(\d+ from the batch in flight, 0 dropped\)")
        old.close()

    def flood(self, prefix: str, n: int, topic_each: bool = False) -> list:
        """A subscriber that does not read gets n numbered QoS 0 messages of 64 KiB on prefix/f (10 MiB for 160: its
        send stalls at about 4 MiB of socket buffers, with a batch of megabytes in flight), or with topic_each on
        prefix/00000, prefix/00001... Returns their numbers."""
        pub = self.client(f"{prefix}-pub")
        pad = b"." * 65530
        for i in range(n):
            pub.publish(f"{prefix}/{i:05d}" if topic_each else f"{prefix}/f", b"%05d" % i + pad)
        self.assertTrue(pub.is_open())  # PINGRESP after them: all routed
        time.sleep(0.3)  # the send stalls
        pub.disconnect()
        return [b"%05d" % i for i in range(n)]

    def assert_sent_once_each(self, n: int) -> None:
        """The node's sent counters step back by what went back and count it again when it goes: after n messages
        reached the subscriber's connections once each, they must say n (the publisher gets nothing)."""
        node = admin_client.seg(admin_client.DEFAULT_NODE)
        r = admin_client.request(self.admin_port, "GET", "/api/v2/monitoring/metrics/" + node)
        self.assertEqual(r.status, 200, repr(r))
        got = r.json()["result"]
        self.assertEqual((got["messages/qos0/sent"], got["packets/publish/sent"]), (n, n), "sent counters")

    def went_back(self, sid: str) -> list:
        """(messages, of them from the batch in flight) of each 'went back' line the broker logged for sid."""
        pat = rb"client %s: (\d+) QoS 0 messages? not yet sent went back to its session \((\d+) from the batch in " \
              rb"flight, 0 dropped\)" % re.escape(sid.encode())
        return [(int(a), int(b)) for a, b in re.findall(pat, self.broker.log())]

    def wait_went_back_from_flight(self, sid: str) -> None:
        # Reconnecting first would find the send still pending, and the session's queue waiting for it: waiting
        # here keeps the tests' reads after the requeue.
        deadline = time.monotonic() + 10
        while not any(k > 0 for _, k in self.went_back(sid)):
            self.assertLess(time.monotonic(), deadline, f"{sid}: nothing from the batch in flight went back in 10 s")
            time.sleep(0.05)

    def read_until_closed(self, c) -> list:
        """The numbers of the PUBLISHes c receives until the broker's close (20 s at most)."""
        return [p[:5] for p in read_until_closed(c)]

    def read_through(self, c, last: bytes) -> list:
        """The numbers of the PUBLISHes c receives up to the one numbered `last` (20 s at most: 10 MiB on a busy host)."""
        got = []
        deadline = time.monotonic() + 20
        while not got or got[-1] != last:
            got.append(c.recv_publish(timeout=max(0.1, deadline - time.monotonic())).payload[:5])
        c.expect_no_packet(0.3)
        return got

    def test_a_drop_on_the_way_back_is_logged_with_a_message_that_was_dropped(self):
        # With room for 20 in the session's queue, what the stuck connection had not sent goes back only in part: the
        # newest 20, the older ones dropped. The warning names one of those dropped; it named the newest message of
        # all, which went back and was delivered, until stop 73. Each message has a topic of its own here.
        self.use_broker({"mqtt.max_queued_messages": 20})
        old = self.client("dq", clean=False)
        old.subscribe([("dq/#", 0)])
        self.flood("dq", 160, topic_each=True)
        new = self.client("dq", clean=False, expect=m.connack(session_present=True))
        pat = rb"session dq: queue full \(mqtt.max_queued_messages = 20\) for what its connection had not sent, " \
              rb"message on dq/(\d+) dropped"
        found = self.wait_until(lambda: re.search(pat, self.broker.log()), timeout=10, what="a drop logged")
        named = int(found.group(1))
        before = [int(m.parse_publish(p).topic.split("/")[1]) for p in packets_until_closed(old, timeout=20)]
        after = [int(new.recv_publish(timeout=20).topic.split("/")[1]) for _ in range(20)]
        new.expect_no_packet(0.3)
        self.assertEqual(after, list(range(140, 160)), f"{len(before)} to the old connection")
        self.assertNotIn(named, before + after, f"the warning named dq/{named:05d}, which was delivered")
        self.assertLess(named, 140)

    def test_what_a_pending_send_had_not_handed_to_the_socket_goes_back_on_disconnect(self):
        # The DISCONNECT closes the connection while its send is pending; that ends the send. The socket's bytes go
        # out before the FIN, so the client gets what the socket took; every other message must arrive once, in
        # order, after it reconnects: the queued ones and those of the batch in flight alike (these were lost).
        s = self.client("cut", clean=False)
        s.subscribe([("cut/#", 0)])
        sent = self.flood("cut", 160)
        s.disconnect()
        # Not read until the broker has closed: reading would make room, and the pending send could then finish its
        # batch before the close ends it.
        deadline = time.monotonic() + 10
        while b"client cut (" not in self.broker.log():
            self.assertLess(time.monotonic(), deadline, "no close logged within 10 s of the DISCONNECT")
            time.sleep(0.05)
        self.wait_went_back_from_flight("cut")
        before = self.read_until_closed(s)
        s = self.client("cut", clean=False, expect=m.connack(session_present=True))
        after = self.read_through(s, sent[-1])
        self.assertEqual(before + after, sent, f"{len(before)} before the close, {len(after)} after")
        self.assertGreater(len(before), 0)
        self.assertEqual(sum(n for n, _ in self.went_back("cut")), len(after))
        self.assert_sent_once_each(len(sent))

    def test_what_a_pending_send_had_not_handed_to_the_socket_goes_to_the_connection_that_takes_over(self):
        # A new connection takes the session over while the old one's send is pending (the old client does not
        # read). The takeover's close ends that send; the old client still gets what its socket took, and the new
        # one every other message once, in order: the batch in flight's leftovers first, then what was queued behind
        # them. Those leftovers were lost: the new connection could be sent newer messages before the send ended,
        # so the session's queue now waits for it.
        old = self.client("over", clean=False)
        old.subscribe([("over/#", 0)])
        sent = self.flood("over", 160)
        new = self.client("over", clean=False, expect=m.connack(session_present=True))
        # Not read before the leftovers went back: reading would make room, and the send could finish its batch.
        self.wait_went_back_from_flight("over")
        before = self.read_until_closed(old)
        after = self.read_through(new, sent[-1])
        self.assertEqual(before + after, sent, f"{len(before)} to the old connection, {len(after)} to the new")
        self.assertGreater(len(before), 0)
        self.assertEqual(sum(n for n, _ in self.went_back("over")), len(after))
        self.assertIn(b"client over: its connection closes with a send pending", self.broker.log())
        self.assert_sent_once_each(len(sent))

    def test_a_flooded_session_taken_over_again_and_again_loses_its_order_nowhere(self):
        # A publisher floods a persistent subscriber (16 KiB QoS 0 messages, numbered) while the session is taken
        # over ten times by new connections that do not read until they are taken over in turn: most takeovers find
        # a send pending, and the session's queue waits for it each time. Each old connection is read until the
        # broker's close. What the connections got, taken in the order they attached, must be strictly increasing:
        # none twice, none before an older one (limits may drop some: QoS 0, counted). The last connection, read at
        # last, must get a marker published after the flood, so the session's queue did not stay waiting.
        sid = "churn"
        conns = [self.client(sid, clean=False)]
        conns[0].subscribe([("churn/#", 0)])
        pub = self.client("churn-pub")
        pad = b"." * 16384
        got = {}
        readers = []

        def drain(i, c):
            got[i] = self.read_until_closed(c)

        n = 0
        for i in range(1, 11):
            for _ in range(300):
                pub.publish("churn/f", b"%05d" % n + pad)
                n += 1
            self.assertTrue(pub.is_open())  # PINGRESP: all routed
            time.sleep(0.05)
            conns.append(self.client(sid, clean=False, expect=m.connack(session_present=True)))
            t = threading.Thread(target=drain, args=(i - 1, conns[i - 1]), daemon=True)
            t.start()
            readers.append(t)
        for t in readers:
            t.join(30)
            self.assertFalse(t.is_alive(), "an old connection was not closed within 30 s")
        last = conns[-1]
        pub.publish("churn/f", b"99999")
        got[len(conns) - 1] = self.read_through(last, b"99999")
        seq = [int(x) for i in range(len(conns)) for x in got[i]]
        self.assertEqual(seq, sorted(set(seq)), "out of order or twice across the connections")
        self.assertEqual(seq[-1], 99999)
        self.assertGreater(len(seq), n // 2, f"{len(seq)} of {n + 1} arrived")
        self.assertGreater(sum(k for _, k in self.went_back(sid)), 0, "no takeover found a pending send")
        self.assertNotIn(b"has not ended in", self.broker.log())

    def test_what_a_failed_send_had_not_handed_to_the_socket_goes_back_after_a_reset(self):
        # The client resets the connection: what the socket took is gone with it (it may have reached the client, so
        # it is not sent again); the messages it had not taken, of the failed batch and queued behind it, must
        # arrive once, in order, after the client reconnects: the newest ones, up to the last, as many as the broker
        # says went back. The reset ends the pending send and the receive in either order; the failed send's own
        # path (the send's error handled first) is what the test waits for, at most 5 rounds (it came first in
        # every run seen here).
        failed_first = 0
        r = 0
        while failed_first == 0 and r < 5:
            sid = f"reset-{r}"
            s = self.client(sid, clean=False)
            s.subscribe([(f"{sid}/#", 0)])
            sent = self.flood(sid, 160)
            s.abort()
            self.wait_went_back_from_flight(sid)
            s = self.client(sid, clean=False, expect=m.connack(session_present=True))
            after = self.read_through(s, sent[-1])
            self.assertEqual(after, sent[len(sent) - len(after):], f"round {r}: {len(after)} after the reset")
            self.assertEqual(sum(n for n, _ in self.went_back(sid)), len(after), f"round {r}")
            failed_first += f"client {sid}: a send failed".encode() in self.broker.log()
            s.disconnect()
            s.expect_closed(3)
            r += 1
        self.assertEqual(failed_first, 1, f"{r} rounds")


class UnsentQos0GoesBackToTheSessionShards2(UnsentQos0GoesBackToTheSession):
    """The same on two shards: publishers and the returning or taking-over connection may land on the shard that is
    not the session's (a handoff), and the messages cross shards."""

    SHARDS = 2
