"""Everything at once, seeded, on one, two and three shards with the admin API: QoS 1 and QoS 2 flows whose connections keep
breaking must keep their promises (every acknowledged message arrives, QoS 2 exactly once, each in order) while other
clients churn around them: a sink that stops reading (so its publishers are held), publishers that subscribe to what
they publish, take their own connections over and write retained messages, clients with wills that end every way,
and admin calls that list, publish and kick. The broker answers a control client throughout, publishes exactly the
wills it owes, keeps the last acknowledged retained messages, and stays healthy."""

import os
import random
import threading
import time

import mqtt_raw as m
from admin_client import AdminTest, seg
from broker import client_id_on_shard, shard_variants
from test_session import FlakyQos2Peer, FlakyQos2Publisher, FlakyQos2Subscriber

CHAOS_SETTINGS = {"mqtt.max_queued_messages": 200, "mqtt.publisher_hold_ms": 1000, "mqtt.max_inflight": 8}
CHAOS_SECONDS = 8  # how long the tracked flows send new messages while the rest churns
ACK_TIMEOUT = 8.0  # a held publisher waits at most mqtt.publisher_hold_ms at a time; the rest is a loaded host


class FlakyQos1Publisher(FlakyQos2Peer):
    """Publishes `count` QoS 1 messages (payloads "0", "1", ...) with at most `window` in flight, resending the
    unacknowledged ones with DUP after each reconnect [MQTT-4.4.0-1]."""

    def __init__(self, test, client_id, rnd, drop_rate, topic: str, count: int, window: int):
        super().__init__(test, client_id, rnd, drop_rate)
        self.topic, self.count, self.window = topic, count, window
        self.next_seq, self.next_pid = 0, 0
        self.unacked = {}  # pid -> seq, in the order sent
        self.acked = set()

    def resume(self) -> None:
        for pid, seq in list(self.unacked.items()):
            self.c.send(m.publish(self.topic, str(seq), qos=1, pid=pid, dup=True))

    def done(self) -> bool:
        return self.next_seq == self.count and not self.unacked

    def step(self) -> None:
        while self.next_seq < self.count and len(self.unacked) < self.window:
            self.next_pid = self.next_pid % 65535 + 1
            self.unacked[self.next_pid] = self.next_seq
            self.c.send(m.publish(self.topic, str(self.next_seq), qos=1, pid=self.next_pid))
            self.next_seq += 1
        for p in self.packets():
            pid = m.packet_id(p) if p.type == m.PUBACK else None
            if pid not in self.unacked:
                raise AssertionError(f"QoS 1 publisher got {p!r}, in flight: {list(self.unacked)}")
            self.acked.add(self.unacked.pop(pid))
            if self.maybe_drop():
                return


class FlakyQos1Subscriber(FlakyQos2Peer):
    """Subscribes to `topic` at QoS 1 and records every copy it gets (a resend after a reconnect may repeat one)."""

    def __init__(self, test, client_id, rnd, drop_rate, topic: str):
        super().__init__(test, client_id, rnd, drop_rate)
        self.c.subscribe([(topic, 1)])
        self.seen = []

    def step(self) -> None:
        for p in self.packets():
            msg = m.parse_publish(p) if p.type == m.PUBLISH else None
            if msg is None or msg.qos != 1:
                raise AssertionError(f"QoS 1 subscriber got {p!r}")
            self.seen.append(int(msg.payload))
            self.c.send(m.puback(msg.pid))
            if self.maybe_drop():
                return


def answer(c: m.RawClient, p: m.Packet):
    """Answers a packet that came to c as a receiver must (PUBACK, PUBREC, PUBCOMP); returns it parsed if a PUBLISH."""
    if p.type == m.PUBREL:
        c.send(m.pubcomp(m.packet_id(p)))
    if p.type != m.PUBLISH:
        return None
    msg = m.parse_publish(p)
    if msg.qos == 1:
        c.send(m.puback(msg.pid))
    elif msg.qos == 2:
        c.send(m.pubrec(msg.pid))
    return msg


def closed_error(e: BaseException) -> bool:
    """A connection the broker closed (a takeover, a kick, a held client let go): expected of the churning clients."""
    return isinstance(e, (m.Closed, OSError)) or "connection closed" in str(e)


class ChaosCases:
    def settings(self):
        return dict(CHAOS_SETTINGS)

    def setUp(self) -> None:
        super().setUp()
        self.rng = random.Random(int(os.environ.get("RINGMQ_CHAOS_SEED", "6100")) + self.SHARDS)
        self.stop = threading.Event()
        self.errors = []
        self.lock = threading.Lock()

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def connect(self, cid: str, clean: bool = True, **kw) -> m.RawClient:
        c = self.raw()
        p = c.connect(cid, clean=clean, expect=None, **kw)
        if p.body[1] != 0:
            raise AssertionError(f"{cid}: CONNACK {p.raw().hex(' ')}")
        return c

    def drain(self, c: m.RawClient, timeout: float = 0.0) -> int:
        """Answers what came to a churning client (PUBACK, PUBREC, PUBCOMP as due); returns the PUBLISHes."""
        n = 0
        while True:
            try:
                p = c.read_packet(timeout)
            except TimeoutError:
                return n
            n += answer(c, p) is not None
            timeout = 0.0

    def thread(self, name: str, fn, *args) -> threading.Thread:
        def run() -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 (reported by the main thread)
                self.error(f"{name}: {e!r}")

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t

    # -- the churning clients ---------------------------------------------------------------------------------------

    def control(self) -> None:
        """Pings every 20 ms; the broker must answer each within 3 s."""
        c = self.connect(self.cid("ctl", 0))
        worst = 0.0
        while not self.stop.is_set():
            t0 = time.monotonic()
            if not c.is_open(3.0):
                raise AssertionError("the control client's PINGREQ went unanswered for 3 s")
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
        self.worst_ping = worst

    def sink(self, rng: random.Random) -> None:
        """A persistent wildcard subscriber that stops reading for up to 1.5 s at a time: its queue fills and holds
        the publishers of c/; now and then it leaves (cleanly or not) and comes back to its session."""
        cid = self.cid("sink", 0)
        c = None
        while not self.stop.is_set():
            try:
                if c is None:
                    c = self.connect(cid, clean=False)
                    c.subscribe([("c/#", 1)])
                time.sleep(rng.uniform(0, 1.5))
                end = time.monotonic() + rng.uniform(0.05, 0.4)
                while time.monotonic() < end:
                    self.drain(c, 0.02)
                if rng.random() < 0.3:
                    (c.disconnect if rng.random() < 0.5 else c.abort)()
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001
                if not closed_error(e):
                    raise
                c = None

    def publisher(self, k: int, rng: random.Random) -> None:
        """Bursts of QoS 0-2 to c/ topics, retained writes to its own topics, subscriptions to what it publishes,
        takeovers of its own connection and every kind of end. Each acknowledgement must come within ACK_TIMEOUT."""
        cid = self.cid(f"cp{k}", k)
        c = None
        while not self.stop.is_set():
            try:
                if c is None:
                    c = self.connect(cid, clean=rng.random() < 0.5)
                op = rng.random()
                if op < 0.5:
                    qos = rng.choice((0, 1, 1, 2))
                    topic = f"c/{rng.choice('ab')}/{rng.choice('xy')}"
                    if qos < 2:
                        pids = [c.next_pid() if qos else None for _ in range(rng.randint(1, 30))]
                        c.send(b"".join(m.publish(topic, b"p%d" % k, qos=qos, pid=p) for p in pids))
                        for p in pids if qos else ():
                            c._wait_for(lambda x, p=p: x.type == m.PUBACK and m.packet_id(x) == p, ACK_TIMEOUT,
                                        f"PUBACK {p}")
                    else:
                        c.publish(topic, b"q2", qos=2, timeout=ACK_TIMEOUT)
                elif op < 0.65:
                    topic = f"c/r/{k}/{rng.randrange(3)}"
                    value = b"" if rng.random() < 0.2 else b"%d" % rng.randrange(10 ** 6)
                    with self.lock:
                        self.retained.setdefault(topic, {b""}).add(value)  # it may be written or not, until acked
                    c.publish(topic, value, qos=1, retain=True, timeout=ACK_TIMEOUT)
                    with self.lock:
                        self.retained[topic] = {value}
                elif op < 0.75:
                    f = rng.choice(("c/a/x", "c/+/y", "c/#", "c/r/#", f"c/r/{k}/+"))
                    c.subscribe([(f, rng.randrange(3))], timeout=ACK_TIMEOUT)
                    if rng.random() < 0.5:
                        c.unsubscribe([f], timeout=ACK_TIMEOUT)
                elif op < 0.85:
                    new = self.connect(cid, clean=rng.random() < 0.5)  # takes the old connection over
                    c.close()
                    c = new
                else:
                    rng.choice((c.disconnect, c.abort, c.close))()
                    c.close()
                    c = None
                if c is not None:
                    self.drain(c)
            except Exception as e:  # noqa: BLE001
                if not closed_error(e):
                    raise
                c = None

    def wills(self, rng: random.Random) -> None:
        """Clients with a will on a topic of their own that end with DISCONNECT (no will), a reset or close (will) or
        silence past their keep-alive (will, 1.5 s later). The watcher must get exactly the wills owed."""
        n = 0
        silent = []
        while not self.stop.is_set():
            n += 1
            how = rng.choice(("disconnect", "abort", "close", "silent"))
            cid = self.cid(f"w{n}", rng.randrange(self.SHARDS))
            will = m.Will(f"c/w/{n}", b"%s" % cid.encode(), qos=rng.randrange(3))
            c = self.connect(cid, keepalive=1 if how == "silent" else 60, will=will)
            with self.lock:
                self.will_ends[f"c/w/{n}"] = how
            if how == "disconnect":
                c.disconnect()
                c.expect_closed(5)
            elif how == "abort":
                c.abort()
            elif how == "close":
                c.close()
            else:
                silent.append(c)
            time.sleep(rng.uniform(0, 0.05))
        self.silent = silent

    def watcher(self, c: m.RawClient) -> None:
        while True:
            try:
                p = c.read_packet(0.1)
            except TimeoutError:
                if self.watch_done.is_set():
                    return
                continue
            msg = answer(c, p)
            if msg is not None:
                with self.lock:
                    self.wills_got.append(msg.topic)

    def admin(self, rng: random.Random) -> None:
        """Lists, publishes and kicks through the REST API; every answer is 200 with code 0 (a kick of a client
        that has just gone: code 112, as EMQ X)."""
        gets = [(self.n("clients"), None), (self.n("sessions"), None), (self.n("subscriptions"), None),
                ("routes", None), ("monitoring/metrics/" + seg(self.NODE), None),
                ("monitoring/stats/" + seg(self.NODE), None), ("management/nodes", None), ("monitoring/listeners", None),
                (self.n("clients"), {"_page": 2, "_limit": 3})]
        while not self.stop.is_set():
            op = rng.random()
            if op < 0.6:
                path, query = rng.choice(gets)
                r = self.api("GET", path, query=query)
                ok = r.status == 200 and r.json().get("code") == 0
            elif op < 0.85:
                body = {"topic": f"c/admin/{rng.randrange(3)}", "payload": "api", "qos": rng.randrange(3),
                        "retain": False, "client_id": "api"}
                r = self.api("POST", "mqtt/publish", body)
                ok = r.status == 200 and r.json().get("code") == 0
            else:
                with self.lock:
                    victim = rng.choice(sorted(self.kickable))
                r = self.api("DELETE", "clients/" + seg(victim))
                ok = r.status == 200 and r.json().get("code") in (0, 112)
            if not ok:
                raise AssertionError(f"admin call answered {r.status} {r.body[:200]!r}")
            time.sleep(rng.uniform(0.005, 0.05))

    # -- the test -----------------------------------------------------------------------------------------------------

    def test_flows_keep_their_promises_while_everything_else_churns(self):
        rng = self.rng
        self.retained = {}
        self.will_ends = {}
        self.wills_got = []
        self.watch_done = threading.Event()
        self.silent = []
        self.worst_ping = None
        shards = self.SHARDS
        flows = []
        for i in range(2):
            sub = FlakyQos2Subscriber(self, client_id_on_shard(f"t2s{i}", (i + 1) % shards, shards),
                                      random.Random(rng.random()), 0.02, f"t/2/{i}")
            pub = FlakyQos2Publisher(self, client_id_on_shard(f"t2p{i}", i % shards, shards),
                                     random.Random(rng.random()), 0.02, f"t/2/{i}", 10 ** 9, 20)
            flows.append((pub, sub))
            sub = FlakyQos1Subscriber(self, client_id_on_shard(f"t1s{i}", i % shards, shards),
                                      random.Random(rng.random()), 0.02, f"t/1/{i}")
            pub = FlakyQos1Publisher(self, client_id_on_shard(f"t1p{i}", (i + 1) % shards, shards),
                                     random.Random(rng.random()), 0.02, f"t/1/{i}", 10 ** 9, 20)
            flows.append((pub, sub))
        self.kickable = {self.cid("sink", 0)} | {self.cid(f"cp{k}", k) for k in range(3)}
        c = self.connect(self.cid("watch", self.SHARDS - 1))
        c.subscribe([("c/w/#", 2)])  # before the first will
        watcher = self.thread("watcher", self.watcher, c)
        churn = [self.thread("control", self.control), self.thread("sink", self.sink, random.Random(rng.random())),
                 self.thread("wills", self.wills, random.Random(rng.random()))]
        churn += [self.thread(f"publisher{k}", self.publisher, k, random.Random(rng.random())) for k in range(3)]
        churn.append(self.thread("admin", self.admin, random.Random(rng.random())))

        def done(pub, sub) -> bool:
            return pub.done() and len(set(getattr(sub, "delivered", None) or sub.seen)) >= pub.count

        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline and not self.errors:
            for pub, sub in flows:
                pub.step()
                sub.step()
        for pub, _ in flows:
            pub.count = pub.next_seq  # no new ones: the rest of the flows completes
        deadline = time.monotonic() + 20
        while not all(done(p, s) for p, s in flows) and time.monotonic() < deadline and not self.errors:
            for pub, sub in flows:
                pub.step()
                sub.step()
        self.stop.set()
        for t in churn:
            t.join(timeout=15)
        self.assertFalse([t.name for t in churn if t.is_alive()], "churning clients that never finished")
        for pub, sub in flows:
            pub.drop_rate = sub.drop_rate = 0
        quiet = time.monotonic() + 0.5
        while time.monotonic() < quiet:
            for pub, sub in flows:
                pub.step()
                sub.step()
        self.assertEqual(self.errors, [])

        for pub, sub in flows:
            what = f"{pub.topic}: after {pub.drops} publisher and {sub.drops} subscriber drops"
            self.assertTrue(pub.done(), f"{what}: unanswered {pub.unacked}")
            if isinstance(sub, FlakyQos2Subscriber):
                self.assertEqual(sub.delivered, list(range(pub.count)), what)  # exactly once, in order
            else:
                first = list(dict.fromkeys(sub.seen))  # a resend may repeat one; first copies in order, none missing
                self.assertEqual(first, list(range(pub.count)), what)
            self.assertGreaterEqual(pub.drops + sub.drops, 2, what)
            self.assertGreater(pub.count, 100, what)

        # Wills: the ends that owe one (not a DISCONNECT), each once (QoS 2 to the watcher; a QoS 0 or 1 will once
        # too: the watcher never reconnects), none for a DISCONNECT.
        for c in self.silent:
            c.close()  # past its keep-alive already, or its close owes the will now
        owed = sorted(t for t, how in self.will_ends.items() if how != "disconnect")
        self.wait_until(lambda: len(self.wills_got) >= len(owed), timeout=5, what=lambda: (
            f"wills owed {len(owed)}, got {len(self.wills_got)}: missing {sorted(set(owed) - set(self.wills_got))}"))
        time.sleep(0.3)
        self.watch_done.set()
        watcher.join(timeout=5)
        self.assertEqual(sorted(self.wills_got), owed)
        self.assertGreaterEqual(len(owed), 10)

        # Retained: a fresh subscriber sees, for each topic, the last acknowledged write (or one whose PUBACK a close
        # cut off after it), and no topic that was cleared.
        c = self.connect(self.cid("rcheck", shards - 1))
        c.subscribe([("c/r/#", 0)])
        got = {}
        while True:
            try:
                msg = m.parse_publish(c.read_packet(0.5))
            except TimeoutError:
                break
            self.assertTrue(msg.retain, msg)
            got[msg.topic] = msg.payload
        for topic, values in self.retained.items():
            self.assertIn(got.get(topic, b""), values, topic)
        self.assertEqual(set(got) - set(self.retained), set())
        self.assertGreater(len(self.retained), 3)
        self.assertLess(self.worst_ping, 3.0)
        log = self.broker.log()
        self.assertRegex(log, rb"is not read until")  # the sink's queue held its publishers
        self.assert_broker_healthy("after-chaos")


shard_variants(ChaosCases, globals(), shards=(1, 2, 3), base=AdminTest)
