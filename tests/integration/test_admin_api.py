"""Admin REST API v2 (EMQ X 2.x): nodes, clients, kick, sessions, subscriptions and routes, with every value checked
against state the test creates over MQTT. Most classes run with --shards 1 and --shards 2; with two shards the ids
come from client_id_on_shard so the state really is spread over both shards (lists and counts are node-wide).

Sources: shared/seed/rest_api_v2.rst (paths, field names, key order) and shared/reference/emqx_v2_api_notes.md
(shapes, paging, error codes), plus ringmq's conventions (real numbers in session rows, JSON 404 bodies)."""

import contextlib
import socket
import threading
import time

import paho.mqtt.client as paho

import mqtt_raw as m
from admin_client import (AdminTest, CLIENT_KEYS, DEFAULT_PASSWORD, DEFAULT_USER, NODE_KEYS, NODE_MONITOR_KEYS,
                          ROUTE_KEYS, SESSION_KEYS, SUBSCRIPTION_KEYS, basic_auth, seg, uptime_seconds)
from broker import rss_kib, shard_variants

MEM_RE = r"^\d+\.\d{2}[KMG]$"
LOAD_RE = r"^\d+\.\d{2}$"


class Helpers:
    def wait_offline(self, client_id, timeout=3.0):
        """Until the node no longer lists client_id as connected (disconnects are handled asynchronously)."""
        self.wait_equal(lambda: self.lookup("clients/" + seg(client_id)), [], timeout,
                        f"client {client_id} still listed as connected")

    def persistent_offline(self, name, shard, subscribe=()):
        """A clean-session-0 client that subscribes, then DISCONNECTs: an offline persistent session."""
        cid = self.cid(name, shard)
        c = self.client(cid, clean=False)
        if subscribe:
            c.subscribe(list(subscribe))
        c.disconnect()
        c.expect_closed(3)
        self.wait_offline(cid)
        return cid

    def offline_sessions_pipelined(self, sessions):
        """Offline persistent sessions from (client id, topics) pairs, each made over one raw connection that
        pipelines CONNECT, SUBSCRIBE (when it has topics) and DISCONNECT, 200 connections at a time; then waits until
        the node lists them all."""
        socks = []
        for i, (cid, topics) in enumerate(sessions):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sub = m.subscribe(1, [(t, 0) for t in topics]) if topics else b""
            s.sendall(m.connect(cid, clean=False) + sub + m.disconnect())
            socks.append(s)
            if len(socks) == 200 or i == len(sessions) - 1:
                for s in socks:
                    s.settimeout(10)
                    while s.recv(256):  # CONNACK (and SUBACK), then the close after DISCONNECT
                        pass
                    s.close()
                socks = []
        self.wait_equal(lambda: self.page(self.n("sessions"), 1, 1)["total_num"], len(sessions),
                        what="sessions stored")

    @contextlib.contextmanager
    def beside(self, step, turns=5000):
        """Runs step(turn) for turn = 0, 1, ... on a thread while the with-block runs (at most `turns` times); its
        errors fail the test."""
        stop = threading.Event()
        errors = []

        def run():
            try:
                for turn in range(turns):
                    if stop.is_set():
                        return
                    step(turn)
            except Exception as e:  # reported on the test's thread
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(30)
        self.assertEqual(errors, [])


# --------------------------------------------------------------------------------------------------------------
# Nodes


class NodeCases(Helpers):
    def test_management_nodes_list(self):
        res = self.get("management/nodes")
        self.assertIsInstance(res, list)
        self.assertEqual(len(res), 1, res)
        node = res[0]
        self.assert_keys(node, NODE_KEYS)
        self.assertEqual(node["name"], self.NODE)
        for key in ("version", "sysdescr", "otp_release"):
            self.assertIsInstance(node[key], str, key)
            self.assertTrue(node[key], key)
        self.assertEqual(node["node_status"], "Running")
        # A broker started a moment ago: "<s> seconds", never more than the time since we started it.
        self.assertRegex(node["uptime"], r"^\d+ seconds$")
        self.assertLessEqual(uptime_seconds(node["uptime"]), time.time() - self.started_at + 1.5)
        self.assert_recent_time(node["datetime"], 5.0, "datetime is the node's local wall clock")

    def test_management_node_by_name(self):
        listed = self.get("management/nodes")[0]
        one = self.get("management/nodes/" + seg(self.NODE))
        self.assert_keys(one, NODE_KEYS[1:], "the single-node form has no name")
        for key in ("version", "sysdescr", "otp_release", "node_status"):
            self.assertEqual(one[key], listed[key], key)
        self.assertRegex(one["uptime"], r"^\d+ seconds$")
        self.assert_recent_time(one["datetime"], 5.0)
        self.not_found("GET", "management/nodes/" + seg("nobody@127.0.0.1"))
        self.not_found("GET", "management/nodes/" + seg(self.NODE + "x"))

    def test_monitoring_nodes_counts_connected_clients(self):
        clients = [self.client(self.cid(f"mon{i}", i)) for i in range(3)]
        self.persistent_offline("monoff", 1)  # a session without a connection is not a client
        res = self.get("monitoring/nodes")
        self.assertIsInstance(res, list)
        self.assertEqual(len(res), 1, res)
        row = res[0]
        self.assert_keys(row, NODE_MONITOR_KEYS)
        self.assertEqual(row["name"], self.NODE)
        self.assertEqual(row["node_status"], "Running")
        self.assertIsInstance(row["otp_release"], str)
        for key in ("memory_total", "memory_used"):
            v = row[key]
            if isinstance(v, str):
                self.assertRegex(v, MEM_RE, key)
            else:
                self.assertIsInstance(v, int, key)  # EMQ X's kmg(): raw bytes as a number below 1 KiB
        for key in ("process_available", "process_used", "max_fds"):
            self.assertIsInstance(row[key], int, key)
            self.assertGreaterEqual(row[key], 0, key)
        self.assertGreater(row["max_fds"], 0)
        for key in ("load1", "load5", "load15"):
            self.assertIsInstance(row[key], str, key)
            self.assertRegex(row[key], LOAD_RE, key)
        self.assertEqual(row["clients"], 3, row)

        one = self.get("monitoring/nodes/" + seg(self.NODE))
        self.assert_keys(one, NODE_MONITOR_KEYS)
        self.assertEqual((one["name"], one["clients"], one["node_status"]), (self.NODE, 3, "Running"))

        clients[0].disconnect()
        self.wait_equal(lambda: self.get("monitoring/nodes/" + seg(self.NODE))["clients"], 2,
                        what="clients after one DISCONNECT")
        self.not_found("GET", "monitoring/nodes/" + seg("nobody@127.0.0.1"))


# --------------------------------------------------------------------------------------------------------------
# Clients and kick


class ClientCases(Helpers):
    def test_pages_read_while_clients_come_and_go_agree_with_their_totals(self):
        # A client that left between the count and the rows left the page a row short of its total (a total of 4
        # over 3 rows, or a subscription counted over an empty page: 2% of pages): each page's arithmetic holds.
        for k in range(3):
            self.client(self.cid(f"stay{k}", k)).subscribe([(f"stay/{k}", 0)])

        def come_and_go(turn):
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(m.connect(self.cid(f"pass{turn % 5}", turn)) + m.subscribe(1, [(f"pass/{turn}", 0)]))
                s.recv(4)  # CONNACK
                time.sleep(0.001)

        pages = 0
        with self.beside(come_and_go):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                for kind in ("clients", "sessions", "subscriptions"):
                    self.page(self.n(kind), 1, 100)  # checks len(objects) against total_num
                pages += 1
        self.assertGreater(pages, 20)

    def test_client_rows_match_connections(self):
        ida, idb = self.cid("alice", 0), self.cid("bob", 1)
        a = self.raw()
        a.connect(ida, clean=True, keepalive=30, username="u-alice", password="secret")
        b = self.raw()
        b.connect(idb, clean=False, keepalive=0, level=3)
        rows = self.rows(self.n("clients"), CLIENT_KEYS)
        by_id = {r["client_id"]: r for r in rows}
        self.assertEqual(set(by_id), {ida, idb}, rows)
        ra, rb = by_id[ida], by_id[idb]
        self.assertEqual(
            (ra["username"], ra["ipaddress"], ra["port"], ra["clean_sess"], ra["proto_ver"], ra["keepalive"]),
            ("u-alice", "127.0.0.1", a.sock.getsockname()[1], True, 4, 30))
        self.assertEqual(
            (rb["username"], rb["ipaddress"], rb["port"], rb["clean_sess"], rb["proto_ver"], rb["keepalive"]),
            ("undefined", "127.0.0.1", b.sock.getsockname()[1], False, 3, 0))
        for r in (ra, rb):
            self.assertIs(type(r["port"]), int)
            self.assertIs(type(r["clean_sess"]), bool)
            self.assert_recent_time(r["connected_at"], 10.0, "connected_at")

        # The same rows from both single-client lookups.
        self.assertEqual(self.lookup(self.n("clients", seg(ida)), CLIENT_KEYS), [ra])
        self.assertEqual(self.lookup("clients/" + seg(idb), CLIENT_KEYS), [rb])

    def test_client_lookup_not_found_is_empty(self):
        self.client(self.cid("present", 1))
        self.assertEqual(self.lookup(self.n("clients", "nobody")), [])
        self.assertEqual(self.lookup("clients/nobody"), [])
        self.not_found("GET", "nodes/" + seg("nobody@127.0.0.1") + "/clients/" + seg(self.cid("present", 1)))

    def test_clients_paging(self):
        ids = [self.cid(f"pg{i}", i) for i in range(5)]
        for cid in ids:
            self.client(cid)
        path = self.n("clients")
        pages = [self.page(path, p, 2, CLIENT_KEYS) for p in (1, 2, 3)]
        for p in pages:
            self.assertEqual((p["total_num"], p["total_page"]), (5, 3), p)
        self.assertEqual([len(p["objects"]) for p in pages], [2, 2, 1])
        seen = [r["client_id"] for p in pages for r in p["objects"]]
        self.assertEqual(sorted(seen), sorted(ids), "every client exactly once over the pages")
        past = self.page(path, 4, 2)
        self.assertEqual((past["current_page"], past["total_page"], past["objects"]), (4, 3, []))
        default = self.page(path)  # curr_page 1, page_size 20
        self.assertEqual(sorted(r["client_id"] for r in default["objects"]), sorted(ids))
        self.assertEqual(default["total_page"], 1)
        self.assertEqual(len(self.page(path, page_size=3)["objects"]), 3)
        self.assertEqual(self.page(path, curr_page=2)["objects"], [])
        self.assertEqual(len(self.page(path, 1, 1000)["objects"]), 5)
        exact = self.page(path, 1, 5)
        self.assertEqual((exact["total_page"], len(exact["objects"])), (1, 5))
        # Read as EMQ X's list_to_integer read them: a sign, and any size (they were 404 "must be an integer").
        res = self.ok("GET", path, query={"curr_page": "+2", "page_size": "+2"})
        self.assertEqual((res["current_page"], res["page_size"], len(res["objects"])), (2, 2, 2))
        self.assertEqual(self.ok("GET", path, query={"curr_page": "9" * 30, "page_size": 2})["objects"], [])
        res = self.ok("GET", path, query={"curr_page": 1, "page_size": "9" * 30})
        self.assertEqual((len(res["objects"]), res["total_page"]), (5, 1))

    def test_clients_empty_node(self):
        res = self.page(self.n("clients"))
        self.assertEqual((res["total_num"], res["total_page"], res["objects"]), (0, 0, []))
        res = self.page(self.n("clients"), 3, 7)
        self.assertEqual((res["current_page"], res["page_size"], res["total_page"], res["objects"]), (3, 7, 0, []))

    def test_offline_persistent_session_is_not_a_client(self):
        cid = self.persistent_offline("gone", 1)
        self.assertEqual(self.page(self.n("clients"))["total_num"], 0)
        self.assertEqual([r["client_id"] for r in self.lookup("sessions/" + seg(cid))], [cid])

    def test_kick_publishes_will_and_closes(self):
        watcher = self.client(self.cid("watch", 1))
        watcher.subscribe([("will/#", 1)])
        oid = self.cid("owner", 0)
        owner = self.client(oid, will=m.Will("will/kick", b"kicked", qos=1))
        self.err("DELETE", "clients/" + seg(oid), "not json", 109)  # refused before the kick, as EMQ X did
        for body in ('{"x": 0x10}', '{"x": 1e400 garbage}', "1e400 ]]]"):  # (a number past 64 bits is JSON)
            self.err("DELETE", "clients/" + seg(oid), body, 109)
        self.assertTrue(owner.is_open(), "kicked by a DELETE whose body was not JSON")
        watcher.expect_no_packet(0.1)
        self.action("DELETE", "clients/" + seg(oid))
        msg = watcher.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos, msg.retain), ("will/kick", b"kicked", 1, False))
        owner.expect_closed(3)
        self.wait_offline(oid)
        self.wait_equal(lambda: self.lookup("sessions/" + seg(oid)), [],
                        what="a clean session ends with its connection")
        self.err("DELETE", "clients/" + seg(oid), None, 112)
        self.assertEqual(self.err("DELETE", "clients/nobody", None, 112), {"code": 112})  # EMQ X's whole body
        self.assertTrue(watcher.is_open(), "the watcher is not affected")
        watcher.expect_no_packet(0.2)

    def test_kick_keeps_persistent_session(self):
        sid = self.cid("keeper", 0)
        c = self.client(sid, clean=False)
        c.subscribe([("kp/t", 1)])
        self.action("DELETE", "clients/" + seg(sid))
        c.expect_closed(3)
        self.wait_offline(sid)
        sessions = self.lookup("sessions/" + seg(sid), SESSION_KEYS)
        self.assertEqual([(s["client_id"], s["clean_sess"]) for s in sessions], [(sid, False)])
        self.err("DELETE", "clients/" + seg(sid), None, 112)  # the session is not a connection
        pub = self.client(self.cid("kpub", 1))
        pub.publish("kp/t", b"while kicked", qos=1)
        c2 = self.client(sid, clean=False, expect=m.CONNACK_OK_SESSION)
        msg = c2.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("kp/t", b"while kicked", 1))

    def test_kick_paho_client(self):
        cid = self.cid("paho", 1)
        gone = []
        connected = []
        c = paho.Client(client_id=cid, clean_session=True, protocol=paho.MQTTv311)
        c.on_connect = lambda cl, ud, flags, rc: connected.append(rc)
        c.on_disconnect = lambda cl, ud, rc: gone.append(rc)
        c.connect("127.0.0.1", self.port, keepalive=30)
        c.loop_start()
        self.addCleanup(c.loop_stop)
        self.addCleanup(c.disconnect)
        self.wait_until(lambda: connected, 5.0, "paho connected")
        self.assertEqual(connected, [0])
        row = self.wait_until(lambda: self.lookup("clients/" + seg(cid)), 3.0, "paho client listed")[0]
        self.assertEqual((row["client_id"], row["keepalive"], row["proto_ver"], row["clean_sess"]), (cid, 30, 4, True))
        c.reconnect_delay_set(5, 5)  # no reconnect inside this test
        self.action("DELETE", "clients/" + seg(cid))
        self.wait_until(lambda: gone, 5.0, "paho saw the disconnect")
        self.assertNotEqual(gone[0], 0, "an unexpected disconnect for the client")


# --------------------------------------------------------------------------------------------------------------
# Sessions


SESSION_COUNTERS = ("inflight_queue", "message_queue", "message_dropped", "awaiting_rel", "awaiting_ack",
                    "awaiting_comp")


class SessionCases(Helpers):
    def counters(self, cid):
        rows = self.lookup("sessions/" + seg(cid), SESSION_KEYS)
        self.assertEqual(len(rows), 1, rows)
        return {k: rows[0][k] for k in SESSION_COUNTERS}

    def expect_counters(self, cid, what="", **expected):
        full = {k: 0 for k in SESSION_COUNTERS}
        full.update(expected)
        self.wait_equal(lambda: self.counters(cid), full, 3.0, f"session counters of {cid} {what}")

    def test_session_rows(self):
        ida, idb = self.cid("sa", 0), self.cid("sb", 1)
        self.client(ida)
        self.client(idb, clean=False)
        ido = self.persistent_offline("so", 0, [("so/t", 1)])
        rows = self.rows(self.n("sessions"), SESSION_KEYS)
        by_id = {r["client_id"]: r for r in rows}
        self.assertEqual(set(by_id), {ida, idb, ido}, rows)
        self.assertEqual({k: r["clean_sess"] for k, r in by_id.items()}, {ida: True, idb: False, ido: False})
        for r in rows:
            self.assertEqual(r["max_inflight"], 2, "mqtt.max_inflight of this broker")
            for key in SESSION_COUNTERS:
                self.assertIs(type(r[key]), int, f"{key}: real numbers, not \"undefined\"")
                self.assertEqual(r[key], 0, key)
            self.assert_recent_time(r["created_at"], 10.0, "created_at")
        self.assertEqual(self.lookup(self.n("sessions", seg(ido)), SESSION_KEYS), [by_id[ido]])
        self.assertEqual(self.lookup("sessions/" + seg(ida), SESSION_KEYS), [by_id[ida]])
        self.assertEqual(self.lookup("sessions/nobody"), [])
        self.assertEqual(self.lookup(self.n("sessions", "nobody")), [])

    def test_seed_spelling_node_sessions(self):
        ids = {self.cid("ns1", 0), self.cid("ns2", 1)}
        for cid in ids:
            self.client(cid)
        res = self.page("node/" + seg(self.NODE) + "/sessions", row_keys=SESSION_KEYS)
        self.assertEqual({r["client_id"] for r in res["objects"]}, ids)
        self.assertEqual(res["total_num"], 2)

    def test_sessions_paging(self):
        ids = [self.cid("sp0", 0), self.cid("sp1", 1)]
        for cid in ids:
            self.client(cid)
        ids.append(self.persistent_offline("sp2", 1))
        p1 = self.page(self.n("sessions"), 1, 2, SESSION_KEYS)
        p2 = self.page(self.n("sessions"), 2, 2, SESSION_KEYS)
        self.assertEqual((p1["total_num"], p1["total_page"]), (3, 2))
        self.assertEqual([len(p1["objects"]), len(p2["objects"])], [2, 1])
        self.assertEqual(sorted(r["client_id"] for r in p1["objects"] + p2["objects"]), sorted(ids))
        self.assertEqual(self.page(self.n("sessions"), 3, 2)["objects"], [])

    def test_qos1_window_and_queue(self):
        sid = self.cid("win", 1)
        sub = self.client(sid)
        sub.subscribe([("sc/q1", 1)])
        pub = self.client(self.cid("winpub", 0))
        for i in range(3):
            pub.publish("sc/q1", f"m{i}", qos=1)
        first = [sub.recv_publish(ack=False) for _ in range(2)]  # window of 2, not acknowledged
        self.expect_counters(sid, "with 2 unacknowledged and 1 queued", inflight_queue=2, message_queue=1,
                             awaiting_ack=2)
        for msg in first:
            sub.ack(msg)
        third = sub.recv_publish()
        self.assertEqual(third.payload, b"m2")
        self.expect_counters(sid, "after every PUBACK")

    def test_qos2_states(self):
        sid = self.cid("q2sub", 1)
        sub = self.client(sid)
        sub.subscribe([("sc/q2", 2)])
        pub = self.client(self.cid("q2pub", 0))
        pub.publish("sc/q2", b"two", qos=2)
        msg = sub.recv_publish(ack=False)
        self.expect_counters(sid, "before PUBREC", inflight_queue=1, awaiting_ack=1)
        sub.send(m.pubrec(msg.pid))
        sub.expect(m.pubrel(msg.pid))
        self.expect_counters(sid, "after PUBREC, before PUBCOMP", inflight_queue=1, awaiting_comp=1)
        sub.send(m.pubcomp(msg.pid))
        self.expect_counters(sid, "after PUBCOMP")

        # Incoming QoS 2 awaiting PUBREL on the publisher's session.
        pid_ = self.cid("q2in", 0)
        p2 = self.client(pid_)
        p2.send(m.publish("sc/in", b"x", qos=2, pid=9))
        p2.expect(m.pubrec(9))
        self.expect_counters(pid_, "awaiting PUBREL", awaiting_rel=1)
        p2.send(m.pubrel(9))
        p2.expect(m.pubcomp(9))
        self.expect_counters(pid_, "after PUBREL")

    def test_offline_queue_and_dropped(self):
        oid = self.persistent_offline("queue", 1, [("sc/off", 1)])
        pub = self.client(self.cid("qpub", 0))
        for i in range(5):
            pub.publish("sc/off", f"o{i}", qos=1)
        self.expect_counters(oid, "offline, queue limit 2, 5 messages", message_queue=2, message_dropped=3)
        rows = self.lookup(self.n("sessions", seg(oid)), SESSION_KEYS)
        self.assertIs(rows[0]["clean_sess"], False)
        back = self.client(oid, clean=False, expect=m.CONNACK_OK_SESSION)
        got = [back.recv_publish() for _ in range(2)]
        self.assertEqual(len(got), 2)
        back.expect_no_packet(0.2)
        self.expect_counters(oid, "after delivery (dropped is cumulative)", message_dropped=3)


# --------------------------------------------------------------------------------------------------------------
# Subscriptions


class SubscriptionCases(Helpers):
    def test_subscription_rows(self):
        ida, idb = self.cid("suba", 0), self.cid("subb", 1)
        a = self.client(ida)
        a.subscribe([("s/a/1", 0), ("s/a/+", 1)])
        b = self.client(idb)
        b.subscribe([("s/b/#", 2)])
        ido = self.persistent_offline("subo", 1, [("s/o", 1)])
        expected = {(ida, "s/a/1", 0), (ida, "s/a/+", 1), (idb, "s/b/#", 2), (ido, "s/o", 1)}
        rows = self.rows(self.n("subscriptions"), SUBSCRIPTION_KEYS)
        self.assertEqual(len(rows), 4, rows)
        self.assertEqual({(r["client_id"], r["topic"], r["qos"]) for r in rows}, expected)

        p1 = self.page(self.n("subscriptions"), 1, 3, SUBSCRIPTION_KEYS)
        p2 = self.page(self.n("subscriptions"), 2, 3, SUBSCRIPTION_KEYS)
        self.assertEqual((p1["total_num"], p1["total_page"], len(p2["objects"])), (4, 2, 1))
        self.assertEqual({(r["client_id"], r["topic"], r["qos"]) for r in p1["objects"] + p2["objects"]}, expected)

        def of(path):
            return {(r["client_id"], r["topic"], r["qos"]) for r in self.lookup(path, SUBSCRIPTION_KEYS)}

        self.assertEqual(of(self.n("subscriptions", seg(ida))), {(ida, "s/a/1", 0), (ida, "s/a/+", 1)})
        self.assertEqual(of("subscriptions/" + seg(ida)), {(ida, "s/a/1", 0), (ida, "s/a/+", 1)})
        self.assertEqual(of("subscriptions/" + seg(idb)), {(idb, "s/b/#", 2)})
        self.assertEqual(of("subscriptions/" + seg(ido)), {(ido, "s/o", 1)}, "offline persistent session")
        self.assertEqual(of("subscriptions/nobody"), set())
        self.assertEqual(of(self.n("subscriptions", "nobody")), set())

        a.unsubscribe(["s/a/1"])
        self.assertEqual(of("subscriptions/" + seg(ida)), {(ida, "s/a/+", 1)})
        b.disconnect()
        self.wait_equal(lambda: of("subscriptions/" + seg(idb)), set(), what="clean session gone")
        self.assertEqual(self.page(self.n("subscriptions"))["total_num"], 2)

    def test_subscription_pages_cover_every_row_once(self):
        # Pages whose edges fall inside a session's subscriptions (3 per session, pages of 7): read page by page,
        # they hold every row exactly once, in the order of the one-page listing.
        want = set()
        for i in range(24):
            cid = self.cid(f"pg{i}", i)
            self.client(cid).subscribe([(f"pg/{i}/{k}", 0) for k in range(3)])
            want |= {(cid, f"pg/{i}/{k}") for k in range(3)}
        path = self.n("subscriptions")
        whole = self.page(path, 1, 100000, SUBSCRIPTION_KEYS)
        rows = [(r["client_id"], r["topic"]) for r in whole["objects"]]
        self.assertTrue(want <= set(rows), "every subscription is listed")
        paged = []
        for page in range(1, -(-whole["total_num"] // 7) + 2):
            got = self.page(path, page, 7, SUBSCRIPTION_KEYS)["objects"]
            if not got:
                break
            paged += [(r["client_id"], r["topic"]) for r in got]
        self.assertEqual(paged, rows)

    def test_pages_larger_than_a_shard_chunk_cover_every_row_once(self):
        # A shard hands a page over in chunks of 1000 rows, each resuming where the last stopped. 1300 offline
        # sessions with 3 subscriptions each (chunk edges inside a session), made over pipelined raw connections;
        # then whole-table pages, pages that start mid-table, and a page read again after the table changed.
        sessions, want, made = [], set(), []
        for i in range(1300):
            cid = self.cid(f"chunk{i}", i)
            sessions.append(cid)
            topics = [f"ch/{i}/{k}" for k in range(3)]
            want |= {(cid, t) for t in topics}
            made.append((cid, topics))
        self.offline_sessions_pipelined(made)
        subs = self.n("subscriptions")
        whole = self.page(subs, 1, 100000, SUBSCRIPTION_KEYS)["objects"]
        rows = [(r["client_id"], r["topic"]) for r in whole]
        self.assertEqual(len(rows), 3900)
        self.assertEqual(set(rows), want, "every subscription, none twice")
        for page, size in ((2, 1700), (3, 1234), (2, 3000)):
            got = [(r["client_id"], r["topic"]) for r in self.page(subs, page, size, SUBSCRIPTION_KEYS)["objects"]]
            self.assertEqual(got, rows[(page - 1) * size:page * size], f"page {page} of {size}")
        listed = [r["client_id"] for r in self.page(self.n("sessions"), 1, 100000, SESSION_KEYS)["objects"]]
        self.assertEqual(sorted(listed), sorted(sessions))
        self.assertEqual([r["client_id"] for r in self.page(self.n("sessions"), 2, 1100)["objects"]], listed[1100:])
        # The table changes between two reads of the same page: the second is complete again.
        self.persistent_offline("chunk-late", 0, [("ch/late", 0)])
        again = [(r["client_id"], r["topic"]) for r in self.page(subs, 1, 100000, SUBSCRIPTION_KEYS)["objects"]]
        self.assertEqual(len(again), 3901)
        self.assertEqual(set(again), want | {(self.cid("chunk-late", 0), "ch/late")})

    def test_granted_qos_is_listed(self):
        cid = self.cid("granted", 1)
        c = self.client(cid)
        c.subscribe([("g/0", 0), ("g/1", 1), ("g/2", 2)])
        rows = self.lookup("subscriptions/" + seg(cid), SUBSCRIPTION_KEYS)
        self.assertEqual(sorted((r["topic"], r["qos"]) for r in rows), [("g/0", 0), ("g/1", 1), ("g/2", 2)])
        c.subscribe([("g/0", 2)])  # re-subscribing replaces the QoS
        rows = self.lookup("subscriptions/" + seg(cid), SUBSCRIPTION_KEYS)
        self.assertEqual(sorted((r["topic"], r["qos"]) for r in rows), [("g/0", 2), ("g/1", 1), ("g/2", 2)])


# --------------------------------------------------------------------------------------------------------------
# Routes


class RouteCases(Helpers):
    def route_topics(self):
        rows = self.rows("routes", ROUTE_KEYS)
        for r in rows:
            self.assertEqual(r["node"], self.NODE, r)
        return sorted(r["topic"] for r in rows)

    def test_routes_list_and_lookup(self):
        a = self.client(self.cid("ra", 0))
        a.subscribe([("r/1", 1), ("r/#", 0)])
        b = self.client(self.cid("rb", 1))
        b.subscribe([("r/+/x", 1), ("r/#", 2)])
        # One route per topic filter on this node, however many subscribers (and shards) it has.
        self.wait_equal(self.route_topics, ["r/#", "r/+/x", "r/1"], what="routes")
        p1 = self.page("routes", 1, 2, ROUTE_KEYS)
        p2 = self.page("routes", 2, 2, ROUTE_KEYS)
        self.assertEqual((p1["total_num"], p1["total_page"]), (3, 2))
        self.assertEqual(sorted(r["topic"] for r in p1["objects"] + p2["objects"]), ["r/#", "r/+/x", "r/1"])
        default = self.page("routes")
        self.assertEqual((default["current_page"], default["page_size"], default["total_num"]), (1, 20, 3))

        for topic in ("r/1", "r/#", "r/+/x"):
            self.assertEqual(self.lookup("routes/" + seg(topic), ROUTE_KEYS), [{"topic": topic, "node": self.NODE}],
                             topic)
        self.assertEqual(self.lookup("routes/r/1"), [{"topic": "r/1", "node": self.NODE}], "raw slashes")
        # Exact lookup, no wildcard matching.
        self.assertEqual(self.lookup("routes/" + seg("r/2")), [])
        self.assertEqual(self.lookup("routes/" + seg("r/+")), [])
        self.assertEqual(self.lookup("routes/nothing"), [])
        # Raw slashes keep empty levels, as EMQ X's "^routes/(.+?)/?$" captured them: "//lead/1" is "/lead/1".
        b.subscribe([("/lead/1", 0), ("r//x", 0), ("/", 0)])
        self.wait_until(lambda: "/lead/1" in self.route_topics(), what="/lead/1 routed")
        self.assertEqual(self.lookup("routes//lead/1"), [{"topic": "/lead/1", "node": self.NODE}])
        self.assertEqual(self.lookup("routes/lead/1"), [], "another topic")
        self.assertEqual(self.lookup("routes/r//x"), [{"topic": "r//x", "node": self.NODE}])
        self.assertEqual(self.lookup("routes/r/x"), [])
        self.assertEqual(self.lookup("routes//lead/1/"), [{"topic": "/lead/1", "node": self.NODE}], "trailing slash")
        self.assertEqual(self.lookup("routes//"), [{"topic": "/", "node": self.NODE}], "a capture is never empty")
        b.unsubscribe(["/lead/1", "r//x", "/"])

        a.unsubscribe(["r/1", "r/#"])
        self.wait_equal(self.route_topics, ["r/#", "r/+/x"], what="routes after unsubscribe (r/# still on b)")
        b.disconnect()
        self.wait_equal(self.route_topics, [], what="routes after the last subscriber left")
        self.assertEqual(self.lookup("routes/" + seg("r/#")), [])

    def test_routes_empty(self):
        res = self.page("routes")
        self.assertEqual((res["total_num"], res["total_page"], res["objects"]), (0, 0, []))

    def route_list(self, page_size):
        """The topics of the first page of routes, without the page's arithmetic checks."""
        return [r["topic"] for r in self.get("routes", curr_page=1, page_size=page_size)["objects"]]

    def subscribe_many(self, client, filters):
        for start in range(0, len(filters), 500):
            client.subscribe([(f, 0) for f in filters[start:start + 500]], timeout=20)

    def test_routes_paged_past_a_shards_chunk(self):
        # Pages merged from the shards' sorted chunks of 1000 routes: pages of any size, also past a chunk, list
        # every route of the node once and in order, whichever shards share it.
        a = self.client(self.cid("pa", 0))
        b = self.client(self.cid("pb", 1))
        only_a = [f"pa/{i}" for i in range(1300)]
        only_b = [f"pb/{i}/+" for i in range(900)]
        shared = [f"ps/{i}/#" for i in range(400)]
        self.subscribe_many(a, only_a + shared)
        self.subscribe_many(b, shared + only_b)
        expected = sorted(only_a + only_b + shared)
        self.wait_equal(lambda: self.page("routes", 1, 1)["total_num"], len(expected), what="routes counted")
        for size in (7, 1000, 1501, 5000):
            listed = []
            for page in range(1, (len(expected) + size - 1) // size + 1):
                res = self.page("routes", page, size, ROUTE_KEYS)
                self.assertEqual(res["total_num"], len(expected), (size, page))
                listed += [r["topic"] for r in res["objects"]]
            self.assertEqual(listed, expected, f"page size {size}: sorted, each route once")
        self.assertEqual(self.page("routes", 1000, 5000)["objects"], [], "past the last page")

    def test_a_page_read_while_routes_change_lists_each_route_once(self):
        # One page of 6,000 routes, gathered in chunks while another client adds and removes thousands of routes
        # that sort among them: every route subscribed throughout is in it once, in order, nothing twice.
        a = self.client(self.cid("steady", 0))
        steady = [f"ch/{i:05d}" for i in range(0, 12000, 2)]
        self.subscribe_many(a, steady)
        self.wait_equal(lambda: self.page("routes", 1, 1)["total_num"], len(steady), what="routes counted")
        churn = self.client(self.cid("churn", 1))

        def change(turn):
            batch = [f"ch/{i:05d}" for i in range(1 + (turn * 101) % 11000, 12000, 97)][:100]
            churn.subscribe([(f, 0) for f in batch], timeout=10)
            churn.unsubscribe(batch[::2], timeout=10)

        with self.beside(change):
            for _ in range(5):
                # (total_num, counted before the rows are gathered, need not match them here.)
                rows = self.route_list(20000)
                self.assertTrue(rows == sorted(set(rows)), "in order, each once")
                missing = set(steady) - set(rows)
                self.assertFalse(missing, f"{len(missing)} routes subscribed throughout are missing")

    def test_a_route_subscribed_throughout_is_in_every_listing(self):
        # A route that one client holds and another (on the other shard, with two) keeps subscribing to and leaving:
        # which shard counts it changes all the time, and every listing still has it.
        holder = self.client(self.cid("holder", 1))
        self.subscribe_many(holder, ["x/s"] + [f"x/o/{i}" for i in range(2000)])
        self.wait_equal(lambda: self.page("routes", 1, 1)["total_num"], 2001, what="routes counted")
        flicker = self.client(self.cid("flicker", 0))

        def flick(_):
            flicker.subscribe([("x/s", 0)], timeout=10)
            flicker.unsubscribe(["x/s"], timeout=10)

        with self.beside(flick):
            deadline = time.monotonic() + 2
            listings = 0
            while time.monotonic() < deadline:
                rows = self.route_list(5000)
                self.assertTrue("x/s" in rows, f"listing {listings}")
                self.assertEqual(len(rows), 2001, f"listing {listings}")
                listings += 1
        self.assertGreater(listings, 5)

    def test_a_page_of_routes_copies_only_its_rows(self):
        # 20,000 routes of 1 KB (20 MB of filters): ten concurrent requests for a page of 10 raise the node's peak
        # memory by far less than one copy of the table (each request used to copy, sort and keep the whole table).
        a = self.client(self.cid("big", 0))
        self.subscribe_many(a, [f"big/{i:05d}/" + "r" * 1000 for i in range(20000)])
        self.wait_equal(lambda: self.page("routes", 1, 1)["total_num"], 20000, what="routes counted")
        # One at a time first (the admin shard's own buffers at their size): the table does not change, so concurrent
        # requests, each walking the shards' tries on its own, must give the same pages.
        pages = {page: self.page("routes", page, 10, ROUTE_KEYS)["objects"] for page in (1, 1000, 2000)}
        self.assertEqual([len(rows) for rows in pages.values()], [10, 10, 10])
        before = rss_kib(self.broker.proc.pid, "VmHWM")
        errors = []

        def read_pages():
            try:
                for page in (2000, 1, 1000):
                    self.assertEqual(self.page("routes", page, 10, ROUTE_KEYS)["objects"], pages[page], page)
            except Exception as e:  # reported below, on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=read_pages) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        grown = rss_kib(self.broker.proc.pid, "VmHWM") - before
        self.assertLess(grown, 10 * 1024, f"peak RSS grew {grown} KiB for 30 pages of 10 routes")


for _mixin in (NodeCases, ClientCases, SessionCases, SubscriptionCases, RouteCases):
    shard_variants(_mixin, globals(), base=AdminTest,
                   # (The offline queue's counters at its own limit: its publisher is not held, see test_limits.)
                   **({"SETTINGS": {"mqtt.max_inflight": 2, "mqtt.max_queued_messages": 2, "mqtt.publisher_hold_ms": 0}}
                      if _mixin is SessionCases else {}))
del _mixin


class DeepPageTest(Helpers, AdminTest):
    """Pages deep in tables larger than one call's walk (a shard passes at most about 16,000 entries per call, then
    answers with the rows it has, perhaps none): every page is complete, and a whole table read in pages lists each
    row once."""
    SHARDS = 2

    def test_deep_pages_of_sessions_and_subscriptions(self):
        n = 40000
        ids = [f"deep-{i}" for i in range(n)]
        self.offline_sessions_pipelined([(cid, [f"dp/{cid}/a", f"dp/{cid}/b"]) for cid in ids])
        listed = []
        for page in range(1, 8):
            res = self.page(self.n("sessions"), page, 7000, SESSION_KEYS)
            listed += [r["client_id"] for r in res["objects"]]
        self.assertEqual(len(listed), n, "a session listed twice or missed")
        self.assertEqual(set(listed), set(ids))
        self.assertEqual(len(self.page(self.n("sessions"), n // 20, 20)["objects"]), 20, "the last page")
        self.assertEqual(self.page(self.n("sessions"), n // 20 + 1, 20)["objects"], [], "past the last page")
        deep = self.page(self.n("subscriptions"), 2 * n // 20, 20, SUBSCRIPTION_KEYS)
        self.assertEqual(deep["total_num"], 2 * n)
        self.assertEqual(len(deep["objects"]), 20, "the last page of subscriptions")
        for r in deep["objects"]:
            self.assertEqual(r["topic"], f"dp/{r['client_id']}/{r['topic'][-1]}", r)
        subs = []
        for page in range(1, 5):
            subs += [(r["client_id"], r["topic"]) for r in self.page(self.n("subscriptions"), page, 20000)["objects"]]
        self.assertEqual(len(set(subs)), 2 * n, "a subscription listed twice or missed")


class RehashPageTest(Helpers, AdminTest):
    """A page read in chunks while new sessions push the shard's table past its buckets (5087 of libstdc++'s bucket
    counts; the walk then starts again in the new order): the answer never mixes the two orders. (One answer mixed
    them: 1,219 sessions listed twice and 1,220 missing of 5,087.)"""
    SHARDS = 1

    def test_a_rehash_during_a_page_mixes_no_orders(self):
        ids = [f"rh-{i}" for i in range(5087)]
        self.offline_sessions_pipelined([(cid, []) for cid in ids])
        socks = [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(3)]
        for s in socks:
            self.addCleanup(s.close)
        answer = {}
        reader = threading.Thread(target=lambda: answer.update(rows=self.page(self.n("sessions"), 1, 6000)["objects"]))
        reader.start()
        time.sleep(0.002)  # the reader's first chunks are taken: the new sessions rehash under them (not always)
        for i, s in enumerate(socks):
            s.sendall(m.connect(f"rx-{i}", clean=False))
        reader.join(30)
        got = [r["client_id"] for r in answer["rows"]]
        self.assertEqual(len(got), len(set(got)), "a session listed twice")
        self.assertGreaterEqual(len(set(got) & set(ids)), len(ids) - 3, "more sessions missing than were added")


class AdminStopTest(Helpers, AdminTest):
    """SIGTERM while admin requests are in progress, each needing several answers from each shard (pages larger than a
    shard's 1000-row chunk): the admin shard stops first and must still be woken by the MQTT shards' answers, through
    its ring or through its eventfd (node.ring_wakeups = false, the path of a kernel without IORING_OP_MSG_RING). The
    node must exit 0 within the harness's stop timeout."""
    SHARDS = 2
    AUTO_START = False

    def test_stop_while_pages_are_being_read(self):
        self.stop_while_pages_are_read(False)

    def test_stop_while_pages_are_being_read_with_ring_wakeups(self):
        self.stop_while_pages_are_read(True)

    def stop_while_pages_are_read(self, ring_wakeups):
        self.use_broker({"node.ring_wakeups": ring_wakeups})
        self.offline_sessions_pipelined([(self.cid(f"stop{i}", i), []) for i in range(2600)])
        # Requests pipelined on a few connections keep the admin shard busy gathering when the signal comes; their
        # answers are read and thrown away, so that no send waits for its client.
        path = self.url(self.n("sessions"), {"curr_page": 1, "page_size": 2600})
        req = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic_auth(DEFAULT_USER, DEFAULT_PASSWORD)}\r\n"
               "\r\n").encode()
        answered = [0] * 4

        def read_pages(k):
            with socket.create_connection(("127.0.0.1", self.admin_port), timeout=20) as s:
                s.sendall(req * 200)
                try:
                    while data := s.recv(1 << 20):
                        answered[k] += data.count(b"HTTP/1.1 200")
                except OSError:  # reset by the node stopping
                    pass

        readers = [threading.Thread(target=read_pages, args=(k,), daemon=True) for k in range(4)]
        for t in readers:
            t.start()
        self.wait_equal(lambda: sum(answered) >= 8, True, 20, "pages read before the stop")
        self.broker.stop()  # fails unless the broker exits 0 within the stop timeout
        for t in readers:
            t.join(10)
