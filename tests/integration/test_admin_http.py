"""The admin API at the HTTP level: /status without auth, keep-alive, pipelining, requests in pieces, chunked bodies,
Connection: close and HTTP/1.0, trailing slashes, percent-encoded path segments, 401 (with a Basic challenge), 404
(unknown path, method, node, bad paging), 400 for requests the parser rejects, 413 for bodies over
admin.max_body_bytes and idle connections closed after admin.idle_timeout. Every error is a JSON body, never a
connection dropped without a response."""

import re
import socket
import time
from typing import Tuple

from admin_client import (AdminTest, CLIENT_KEYS, STATS_KEYS, HttpConn, Response, basic_auth, build_request, seg)

VOLATILE = {"uptime", "datetime", "memory_total", "memory_used", "process_available", "process_used", "max_fds",
            "load1", "load5", "load15",
            # an HTTP listener row counts the test's own (just closed) connections
            "current_clients", "shutdown_count"}


def normalize(obj):
    """Drops values that change between two requests (clock, memory, load)."""
    if isinstance(obj, dict):
        return {k: (None if k in VOLATILE else normalize(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalize(v) for v in obj]
    return obj


class HttpTest(AdminTest):
    def test_head_has_the_get_length_and_no_body(self):
        """HEAD answers with the headers GET would get, Content-Length included (RFC 9110 8.6), and no body: with a
        GET pipelined behind it, the GET's response starts right after the HEAD's headers."""
        # /status (200) and an API path without credentials (401): bodies that do not name the method.
        for path in ("/status", "/api/v2/management/nodes"):
            with self.subTest(path=path):
                get = self.http()
                get.send(build_request("GET", path, auth=None))
                expected = get.read_response()
                self.assertGreater(len(expected.body), 0)
                sock = socket.create_connection(("127.0.0.1", self.admin_port), timeout=5)
                self.addCleanup(sock.close)
                sock.sendall(build_request("HEAD", path, auth=None) + build_request("GET", path, auth=None))
                data = b""
                deadline = time.monotonic() + 5
                while data.count(b"\r\n\r\n") < 2 or len(data.split(b"\r\n\r\n", 2)[2]) < len(expected.body):
                    self.assertLess(time.monotonic(), deadline, f"incomplete: {data!r}")
                    chunk = sock.recv(65536)
                    self.assertTrue(chunk, f"closed: {data!r}")
                    data += chunk
                head, get_head, get_body = data.split(b"\r\n\r\n", 2)
                self.assertTrue(head.startswith(f"HTTP/1.1 {expected.status} ".encode()), head)
                self.assertIn(f"Content-Length: {len(expected.body)}".encode(), head, "the length GET's body has")
                self.assertTrue(get_head.startswith(f"HTTP/1.1 {expected.status} ".encode()),
                                f"bytes between HEAD's headers and the next response: {get_head[:80]!r}")
                self.assertEqual(get_body, expected.body)

    def test_status_needs_no_auth(self):
        for auth in (None, ("admin", "wrong"), ("admin", "public")):
            with self.subTest(auth=auth):
                r = self.api("GET", "/status", auth=auth)
                self.assertEqual(r.status, 200, r)
                self.assertTrue((r.header("Content-Type") or "").lower().startswith("text/"), r)
                self.assertTrue(r.body.decode("utf-8").strip(), r)

    def test_keep_alive(self):
        c = self.http()
        for path in ("/api/v2/management/nodes", "/api/v2/monitoring/stats", "/api/v2/routes", "/status"):
            c.send(build_request("GET", path))
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertNotEqual((r.header("Connection") or "").lower(), "close", r)
        # Error answers keep the connection too.
        c.send(build_request("GET", "/api/v2/nope"))
        self.assert_json_error(c.read_response(), 404)
        c.send(build_request("POST", "/api/v2/mqtt/publish", "not json"))
        self.assert_error(c.read_response(), 109)
        c.send(build_request("POST", "/api/v2/mqtt/publish", "123"))
        self.assert_error(c.read_response(), 107)
        c.send(build_request("GET", "/api/v2/management/nodes"))
        self.assertEqual(self.assert_success(c.read_response())[0]["name"], self.NODE)

    def test_pipelined_requests_in_one_send(self):
        s = self.client(self.cid("pipe"))
        s.subscribe([("pl/t", 1)])
        c = self.http()
        c.send(build_request("GET", "/api/v2/management/nodes")
               + build_request("POST", "/api/v2/mqtt/publish", {"topic": "pl/t", "payload": "piped", "qos": 1})
               + build_request("GET", "/api/v2/monitoring/stats/" + seg(self.NODE))
               + build_request("GET", "/api/v2/nope"))
        self.assertEqual(self.assert_success(c.read_response(), "1st")[0]["name"], self.NODE)
        self.assertEqual(self.assert_success(c.read_response(), "2nd"), [])
        self.assertEqual(list(self.assert_success(c.read_response(), "3rd")), STATS_KEYS)
        self.assert_json_error(c.read_response(), 404, "4th")
        self.assertEqual(s.recv_publish().payload, b"piped")

    def test_request_in_small_pieces(self):
        s = self.client(self.cid("slow"))
        s.subscribe([("pc/t", 0)])
        data = build_request("POST", "/api/v2/mqtt/publish", {"topic": "pc/t", "payload": "slowly"})
        c = self.http()
        for i in range(0, len(data), 16):
            c.send(data[i:i + 16])
            time.sleep(0.005)
        self.assertEqual(self.assert_success(c.read_response()), [])
        self.assertEqual(s.recv_publish().payload, b"slowly")

    def test_chunked_request_body(self):
        s = self.client(self.cid("chunk"))
        s.subscribe([("ch/t", 1)])
        c = self.http()
        c.send(build_request("POST", "/api/v2/mqtt/publish",
                             chunks=[b'{"topic":', b' "ch/t", "pay', b'load": "chunked", "qos": 1}']))
        self.assertEqual(self.assert_success(c.read_response()), [])
        msg = s.recv_publish()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("ch/t", b"chunked", 1))
        # The chunks are joined before parsing: a broken JSON body split in chunks is still 109, a scalar 107.
        c.send(build_request("POST", "/api/v2/mqtt/publish", chunks=[b'{"topic": ', b'"ch/t"']))
        self.assert_error(c.read_response(), 109)
        c.send(build_request("POST", "/api/v2/mqtt/publish", chunks=[b"4", b"2"]))
        self.assert_error(c.read_response(), 107)
        s.expect_no_packet(0.2)

    def test_connection_close_and_http10(self):
        c = self.http()
        c.send(build_request("GET", "/api/v2/management/nodes", headers=[("Connection", "close")]))
        self.assert_success(c.read_response())
        self.assertTrue(c.closed_within(3.0), "the server closes after Connection: close")
        c = self.http()
        c.send(build_request("GET", "/status", auth=None, version="HTTP/1.0"))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertTrue(c.closed_within(3.0), "an HTTP/1.0 request without keep-alive is the last one")

    def test_trailing_slash(self):
        cid = self.cid("slash")
        c = self.client(cid, clean=False)
        c.subscribe([("ts/t", 1)])
        node = seg(self.NODE)
        for path in ("management/nodes", "management/nodes/" + node, "monitoring/nodes", "monitoring/nodes/" + node,
                     "monitoring/listeners", "monitoring/listeners/" + node, "monitoring/metrics",
                     "monitoring/metrics/" + node, "monitoring/stats", "monitoring/stats/" + node,
                     self.n("clients"), self.n("clients", cid), "clients/" + cid,
                     self.n("sessions"), self.n("sessions", cid), "sessions/" + cid, "node/" + node + "/sessions",
                     self.n("subscriptions"), self.n("subscriptions", cid), "subscriptions/" + cid,
                     self.n("plugins"), "users", "users/admin"):
            with self.subTest(path=path):
                self.assertEqual(normalize(self.get(path + "/")), normalize(self.get(path)))
        self.action("POST", "mqtt/publish/", {"topic": "ts/t", "payload": "slash", "qos": 1})
        self.assertEqual(c.recv_publish().payload, b"slash")
        self.action("DELETE", "clients/" + cid + "/")
        c.expect_closed(3)

    def test_percent_encoded_segments(self):
        ids = ["a/b", "sp ace", "ü-✓", "a+b", "50%", "q?x#y", "semi;colon", "%41"]
        clients = {cid: self.client(cid) for cid in ids}
        for cid in ids:
            with self.subTest(client_id=cid):
                for path in ("clients/" + seg(cid), self.n("clients", seg(cid))):
                    rows = self.lookup(path, CLIENT_KEYS)
                    self.assertEqual([r["client_id"] for r in rows], [cid], path)
                self.assertEqual([r["client_id"] for r in self.lookup("sessions/" + seg(cid))], [cid])
        # '+' in a path is a plus, lower-case hex works, '@' may stay raw in the node segment.
        self.assertEqual([r["client_id"] for r in self.lookup("clients/a+b")], ["a+b"])
        self.assertEqual([r["client_id"] for r in self.lookup("clients/a%2fb")], ["a/b"])
        self.assertEqual([r["client_id"] for r in self.lookup("clients/%2541")], ["%41"])
        self.assertEqual(self.lookup("clients/%41"), [], "decoded once: %41 is 'A'")
        raw_node = f"nodes/{self.NODE}/clients"
        self.assertEqual(self.page(raw_node)["total_num"], len(ids))
        self.assertEqual(self.page("nodes/" + self.NODE.replace("@", "%40") + "/clients")["total_num"], len(ids))
        # API actions on such ids.
        self.action("POST", "mqtt/subscribe", {"topic": "pe/t", "qos": 1, "client_id": "a/b"})
        self.action("POST", "mqtt/publish", {"topic": "pe/t", "payload": "to a/b", "qos": 1})
        self.assertEqual(clients["a/b"].recv_publish().payload, b"to a/b")
        self.assertEqual([r["topic"] for r in self.lookup("subscriptions/" + seg("a/b"))], ["pe/t"])
        self.action("DELETE", "clients/" + seg("a/b"))
        clients["a/b"].expect_closed(3)
        self.assertTrue(clients["a+b"].is_open(), "only a/b was kicked")

    def test_root_lists_the_api_paths_without_auth(self):
        # EMQ X: GET / needs no auth and answers {"paths": [...]} with no code wrapper.
        r = self.api("GET", "/", auth=None)
        self.assertEqual(r.status, 200, r)
        self.assert_json_type(r)
        obj = r.json()
        self.assertEqual(list(obj), ["paths"])
        paths = obj["paths"]
        self.assertEqual(len(paths), len(set(paths)))
        for p in ("api/v2/management/nodes", "api/v2/nodes/{node_name}/clients", "api/v2/routes/{topic}",
                  "api/v2/mqtt/publish", "api/v2/monitoring/stats/{node_name}", "api/v2/auth"):
            self.assertIn(p, paths)
        # Every listed GET path answers (placeholders filled in): none is a dead entry.
        fill = {"{node_name}": seg(self.NODE), "{client_id}": "nobody", "{topic}": "t", "{username}": "admin",
                "{plugin_name}": "ringmq_sys"}
        for p in paths:
            self.assertTrue(p.startswith("api/v2/"), p)
            if p.split("/")[2] in ("mqtt", "auth", "change_pwd") or p.endswith("{plugin_name}"):
                continue  # POST/PUT only
            for k, v in fill.items():
                p = p.replace(k, v)
            with self.subTest(path=p):
                r = self.api("GET", "/" + p)
                self.assertEqual(r.status, 200, r)

    def test_unknown_paths_404(self):
        node = seg(self.NODE)
        for path in ("/api/v2/nope", "/api/v2/", "/api/v2", "/api/v2/management", "/api/v2/management/nodesx",
                     "/api/v2/nodes", "/api/v2/nodes/" + node, "/api/v2/nodes/" + node + "/nope",
                     "/api/v2/monitoring", "/api/v2/mqtt/publishx", "/api/v3/management/nodes", "/foo",
                     "/api/v2/nodes/" + node + "subscriptions/x",  # the seed's typo: no such route
                     "/api/v2/monitoring/nodes/" + node + "/extra", "/api/v2/clients", "/api/v2/sessions",
                     "/api/v2/subscriptions"):
            with self.subTest(path=path):
                self.not_found("GET", path)

    def test_wrong_method_404(self):
        for method, path in (("POST", "management/nodes"), ("DELETE", "management/nodes"), ("PUT", "clients/x"),
                             ("POST", "clients/x"), ("GET", "mqtt/publish"), ("PUT", "mqtt/publish"),
                             ("DELETE", "mqtt/subscribe"), ("DELETE", "routes"), ("POST", "routes/x"),
                             ("POST", self.n("plugins")), ("GET", self.n("plugins", "ringmq_sys")),
                             ("DELETE", "sessions/x"), ("PATCH", "management/nodes"),
                             ("PUT", "monitoring/stats"), ("DELETE", "users")):
            with self.subTest(method=method, path=path):
                self.not_found(method, path, {"active": True} if method in ("POST", "PUT", "PATCH") else None)

    def test_unknown_node_404(self):
        for x in (seg("nobody@127.0.0.1"), seg(self.NODE.upper()), "ringmq"):
            for path in ("management/nodes/" + x, "monitoring/nodes/" + x, "monitoring/listeners/" + x,
                         "monitoring/metrics/" + x, "monitoring/stats/" + x, "nodes/" + x + "/clients",
                         "nodes/" + x + "/clients/c", "nodes/" + x + "/sessions", "nodes/" + x + "/sessions/c",
                         "node/" + x + "/sessions", "nodes/" + x + "/subscriptions",
                         "nodes/" + x + "/subscriptions/c", "nodes/" + x + "/plugins"):
                with self.subTest(path=path):
                    self.not_found("GET", path)

    def test_bad_paging_404(self):
        self.client(self.cid("pager"))
        for path in (self.n("clients"), self.n("sessions"), self.n("subscriptions"), "routes",
                     "node/" + seg(self.NODE) + "/sessions"):
            for query in ({"page_size": 0}, {"page_size": -1}, {"page_size": "abc"}, {"page_size": "1.5"},
                          {"curr_page": "x"}, {"curr_page": "1e3"}, {"curr_page": 1, "page_size": "twenty"}):
                with self.subTest(path=path, query=query):
                    self.not_found("GET", path, query=query)
            self.assertEqual(self.page(path, 1, 20)["current_page"], 1, "good values still work")

    def test_paging_edges_as_emqx(self):
        """curr_page <= 1 is the first page, echoed as given; a page past 2^64 rows is empty, not page 1; lookups
        parse paging and ignore it (EMQ X notes, paging semantics)."""
        cid = self.cid("edge")
        topic = "edge/" + cid
        self.client(cid).subscribe([(topic, 1)])
        for path, key, mine in ((self.n("clients"), "client_id", cid), (self.n("sessions"), "client_id", cid),
                                (self.n("subscriptions"), "client_id", cid), ("routes", "topic", topic)):
            for cp in (0, -3):
                with self.subTest(path=path, curr_page=cp):
                    res = self.page(path, cp, 100000)  # checks that it holds min(page_size, total_num) rows
                    self.assertIn(mine, [o[key] for o in res["objects"]], "curr_page <= 1 is the first page")
            # (2^62 + 1 - 1) * 4 = 2^64: wraps to 0 in 64-bit arithmetic, which would answer the first page.
            res = self.page(path, 4611686018427387905, 4)
            self.assertEqual(res["objects"], [], f"{path}: a page beyond the end is empty")
        for path in ("clients/" + seg(cid), self.n("clients/" + seg(cid)), self.n("sessions/" + seg(cid))):
            for query in ({"page_size": 0}, {"curr_page": -1, "page_size": -5}):
                with self.subTest(path=path, query=query):
                    res = self.ok("GET", path, query=query)
                    self.assertEqual([o["client_id"] for o in res["objects"]], [cid], f"{path} {query}: {res}")
            self.not_found("GET", path, query={"page_size": "x"})

    def test_garbage_requests_400(self):
        auth = "Authorization: " + basic_auth("admin", "public") + "\r\n"
        for data in (b"hello world\r\n\r\n",
                     b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n",
                     b"GET /api/v2/management/nodes HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
                     ("POST /api/v2/mqtt/publish HTTP/1.1\r\nHost: x\r\n" + auth
                      + "Content-Length: abc\r\n\r\n").encode(),
                     ("POST /api/v2/mqtt/publish HTTP/1.1\r\nHost: x\r\n" + auth
                      + "Transfer-Encoding: chunked\r\n\r\nzz\r\n").encode()):
            with self.subTest(data=data):
                c = self.http()
                c.send(data)
                self.assert_json_error(c.read_response(), 400)
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE, "the server is fine")

    def test_other_http_versions_505_and_transfer_codings_501(self):
        # They were answered as HTTP/1.1 requests, a gzip-coded body read as plain.
        auth = "Authorization: " + basic_auth("admin", "public") + "\r\n"
        for data, status in ((b"GET /status HTTP/2.0\r\nHost: x\r\n\r\n", 505), (b"GET /status\r\n\r\n", 505),
                             (("POST /api/v2/mqtt/publish HTTP/1.1\r\nHost: x\r\n" + auth
                               + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").encode(), 501)):
            with self.subTest(data=data):
                c = self.http()
                c.send(data)
                self.assert_json_error(c.read_response(), status)
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE, "the server is fine")

    def test_two_authorization_fields_are_400_in_either_order(self):
        # The first was taken and the second ignored: right credentials then wrong ones got 200. A proxy that checks
        # the last one and this server would not agree on who asks.
        good, bad = basic_auth("admin", "public"), basic_auth("x", "y")
        for first, second in ((good, bad), (bad, good), (good, good)):
            with self.subTest(first=first, second=second):
                c = self.http()
                c.send(f"GET /api/v2/management/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: {first}\r\n"
                       f"authorization: {second}\r\n\r\n".encode())
                obj = self.assert_json_error(c.read_response(), 400)
                self.assertIn("more than one Authorization", obj["message"])
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE, "the server is fine")

    def test_the_auth_path_asks_no_credentials_for_any_method(self):
        # Only POST is there; EMQ X asked no Basic auth on this path, so another method is a plain 404 (it was 401).
        for method in ("GET", "PUT", "DELETE"):
            with self.subTest(method=method):
                obj = self.assert_json_error(self.api(method, "/api/v2/auth", auth=None), 404)
                self.assertIn(f"no endpoint {method} /api/v2/auth", obj["message"])

    def test_a_target_past_the_head_limit_is_414_and_a_header_431(self):
        # A 20 KB query string was answered 431 (a header field problem) though the headers were short.
        auth = "Authorization: " + basic_auth("admin", "public") + "\r\n"
        for data, status in (("GET /api/v2/clients?x=" + "q" * 20000 + " HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", 414),
                             ("GET /api/v2/clients HTTP/1.1\r\nHost: x\r\n" + auth + "X-Pad: " + "h" * 20000
                              + "\r\n\r\n", 431)):
            with self.subTest(status=status):
                c = self.http()
                c.send(data.encode())
                r = c.read_response()
                self.assertEqual(self.assert_json_error(r, status)["code"], status)
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE, "the server is fine")

    def test_unauthorized_401(self):
        for auth in (None, ("admin", "wrong"), ("nobody", "public"), ("", ""), ("admin", ""), ("admin", "public "),
                     "Basic !!!not-base64!!!",
                     "Basic " + "YWRtaW5wdWJsaWM=",  # "adminpublic": no colon
                     "Bearer abc", "Basic", "", "Digest username=\"admin\""):
            with self.subTest(auth=auth):
                self.assert_unauthorized(self.api("GET", "management/nodes", auth=auth))
        s = self.client(self.cid("unauth"))
        s.subscribe([("ua/t", 0)])
        self.assert_unauthorized(self.api("POST", "mqtt/publish", {"topic": "ua/t", "payload": "x"}, auth=None))
        self.assert_unauthorized(self.api("DELETE", "clients/" + seg(self.cid("unauth")), auth=("admin", "x")))
        self.assert_unauthorized(self.api("GET", "users", auth=None))
        self.assert_unauthorized(self.api("PUT", self.n("plugins", "ringmq_retainer"), {"active": False},
                                          auth=None))
        s.expect_no_packet(0.3)
        self.assertTrue(s.is_open(), "not kicked")
        self.assertIs({r["name"]: r for r in self.get(self.n("plugins"))}["ringmq_retainer"]["active"], True)


class HttpConnectionLimitTest(AdminTest):
    """admin.max_connections and admin.send_timeout (each test starts its own broker)."""

    AUTO_START = False

    def test_connections_over_the_limit_get_503_and_close(self):
        # admin.reclaim_after far off: no connection here has waited long enough to give its slot away.
        self.use_broker({"admin.max_connections": 3, "admin.reclaim_after": 600000})
        held = [self.http() for _ in range(3)]
        for h in held:  # each answered: all three are accepted and counted
            h.send(build_request("GET", "/status", auth=None))
            self.assertEqual(h.read_response().status, 200)
        extra, r = self.nodes_on_new_connection()
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json(), {"code": 503, "message": "too many admin connections (admin.max_connections = 3)"})
        self.assertEqual((r.header("Connection") or "").lower(), "close")
        self.assertTrue(extra.closed_within(3))
        silent = self.http()  # over the limit and sending nothing: closed after a short wait, not the idle timeout
        self.assertTrue(silent.closed_within(5))
        for h in held:  # the three are still served
            h.send(build_request("GET", "/status", auth=None))
            self.assertEqual(h.read_response().status, 200)
        held[0].close()
        r = self.nodes_once_a_slot_is_free(3)  # once the server has seen the close
        self.assertEqual(r.json()["code"], 0)

    def test_connections_over_the_limit_cannot_pile_up(self):
        # Past admin.max_connections a connection is answered 503 at once, before any request is read, and closed
        # within 2 s even while its client trickles bytes; as many such refusals at a time as the limit, and one
        # more connection is closed at once with no answer: a flood holds no memory or descriptors before auth.
        self.use_broker({"admin.max_connections": 2, "admin.reclaim_after": 600000})
        held = [self.http() for _ in range(2)]
        for h in held:
            h.send(build_request("GET", "/status", auth=None))
            self.assertEqual(h.read_response().status, 200)
        trickling = [self.http() for _ in range(2)]
        for t in trickling:
            t.send(b"POST /api/v2/auth HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
            r = t.read_response(timeout=2)
            self.assertEqual(r.status, 503, r)
        flood = self.http()
        self.assertTrue(flood.closed_within(2), "a connection beyond the refusals was kept")
        self.assertEqual(bytes(flood.buf), b"", "a connection beyond the refusals was answered")
        start = time.monotonic()
        gone = set()
        while len(gone) < len(trickling) and time.monotonic() - start < 6:
            for i, t in enumerate(trickling):
                if i in gone:
                    continue
                try:
                    t.send(b"x")  # a reset shows once the server has closed its end
                except OSError:
                    gone.add(i)
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        self.assertEqual(len(gone), len(trickling), f"trickling clients still connected after {elapsed:.1f} s")
        self.assertLess(elapsed, 4.5, "a trickling client held its refused connection")
        for h in held:  # the two within the limit are still served
            h.send(build_request("GET", "/status", auth=None))
            self.assertEqual(h.read_response().status, 200)
        self.assertIn(b"answering 503 (1 so far)", self.broker.log())
        self.assertIn(b"closing one more at once (1 so far)", self.broker.log())

    def test_silent_connections_give_their_slots_to_new_ones(self):
        # Clients that connect and send nothing would otherwise keep the operators out for admin.idle_timeout, and
        # again each time they reconnect. Within admin.reclaim_after of their last activity they keep their slots (a
        # new connection gets 503); past it, a new connection takes the slot of the one that waited longest, which is
        # closed quietly.
        self.use_broker({"admin.max_connections": 3, "admin.reclaim_after": 3000})
        start = time.monotonic()
        silent = []
        for _ in range(3):
            silent.append(self.http())
            time.sleep(0.05)  # one by one: the first has waited longest
        early, r = self.nodes_on_new_connection()
        self.assertLess(time.monotonic() - start, 2.5, "too slow to test admin.reclaim_after's grace")
        self.assertEqual(r.status, 503, r)
        time.sleep(max(0.0, start + 3.8 - time.monotonic()))
        late, r = self.nodes_on_new_connection()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["code"], 0)
        self.assertTrue(silent[0].closed_within(3), "the longest waiter kept its slot")
        self.assertEqual(bytes(silent[0].buf), b"", "an idle connection was answered")
        for s in silent[1:]:  # the other two keep theirs and are served
            s.send(build_request("GET", "/status", auth=None))
            self.assertEqual(s.read_response().status, 200)
        late.send(build_request("GET", "/status", auth=None))
        self.assertEqual(late.read_response().status, 200)
        self.assert_reclaim_logged(3000, 1)

    def test_a_trickled_request_gives_its_slot_and_is_told_why(self):
        # A request under way counts from its first byte, not its latest: a client trickling one is older than one
        # idle since its last answer even when its latest byte is newer, so it goes first, answered 503 with the
        # reason; the idle one keeps its slot.
        self.use_broker({"admin.max_connections": 2, "admin.reclaim_after": 1000})
        start = time.monotonic()
        slow = self.http()
        slow.send(b"GET /api/v2/management/nodes HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.5)
        idle = self.http()
        idle.send(build_request("GET", "/status", auth=None))
        self.assertEqual(idle.read_response().status, 200)
        time.sleep(max(0.0, start + 1.0 - time.monotonic()))
        slow.send(b"Accept: */*\r\n")  # after idle's answer
        time.sleep(max(0.0, start + 1.7 - time.monotonic()))
        new, r = self.nodes_on_new_connection()
        self.assertEqual(r.status, 200, r)
        r = slow.read_response()
        self.assertEqual(self.assert_json_error(r, 503)["code"], 503)
        self.assertRegex(r.json()["message"],
                         r"^too many admin connections \(admin.max_connections = 2\): this connection's slot was given "
                         r"to a new one after it waited \d+ ms for its client$")
        self.assertGreaterEqual(int(re.search(r"waited (\d+) ms", r.json()["message"]).group(1)), 1000)
        self.assertEqual((r.header("Connection") or "").lower(), "close")
        self.assertTrue(slow.closed_within(3))
        idle.send(build_request("GET", "/status", auth=None))
        self.assertEqual(idle.read_response().status, 200)

    def nodes_on_new_connection(self) -> Tuple[HttpConn, Response]:
        """GET management/nodes on a new connection: the connection and its response."""
        c = self.http()
        c.send(build_request("GET", "/api/v2/management/nodes"))
        return c, c.read_response()

    def assert_reclaim_logged(self, after_ms: int, count: int) -> None:
        """The warning that reclaim() gave a slot away, at its count-th time."""
        self.assertRegex(self.broker.log().decode("utf-8", "replace"),
                         rf"admin: all admin.max_connections = \d+ slots taken and a new connection came: it takes the "
                         rf"slot of the one that waited longest for its client \(\d+ ms, admin.reclaim_after = "
                         rf"{after_ms} ms\) \({count} so far\)")

    def nodes_once_a_slot_is_free(self, timeout: float) -> Response:
        """GET management/nodes on a new connection each time until one is answered 200 (asserted), within timeout."""
        return self.wait_until(lambda: (r := self.nodes_on_new_connection()[1]).status == 200 and r, timeout,
                               "a free slot answered 200")

    def ask_routes_not_read(self) -> socket.socket:
        """Subscribes 6 MB of routes (past loopback buffers) and asks for them all on a connection that does not
        read: the server's send waits for admin.send_timeout. The broker needs mqtt.max_packet_size of 4 MiB."""
        sub = self.client(self.cid("routes"))
        filters = [f"big/{i:05d}/" + "r" * 1000 for i in range(6000)]
        for start in range(0, len(filters), 1000):
            sub.subscribe([(f, 0) for f in filters[start:start + 1000]], timeout=10)
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.admin_port))
        sock.sendall(build_request("GET", "/api/v2/routes?page_size=100000"))
        return sock

    def test_trickling_clients_cannot_pile_up_closings(self):
        # Clients that each send a byte and never close: each one whose slot is taken is answered 503 and kept for up
        # to 2 s, as many at a time as admin.max_connections; past that it is closed at once, so a new connection
        # still gets a slot however many of them there were.
        self.use_broker({"admin.max_connections": 2, "admin.reclaim_after": 100})
        trickling = []
        for _ in range(8):
            c = self.http()
            c.send(b"G")
            trickling.append(c)
            time.sleep(0.25)  # each older than admin.reclaim_after when the one after next comes
        operator, r = self.nodes_on_new_connection()
        self.assertEqual(r.status, 200, r)
        told, cut = 0, 0
        for c in trickling[:7]:  # every slot taken was given up: answered 503 with the reason, or closed at once
            self.assertTrue(c.closed_within(3), "a trickling client kept a slot it gave up")
            if c.buf:
                self.assertIn(b"slot was given to a new one", bytes(c.buf))
                told += 1
            else:
                cut += 1
        # The first two are answered (each for up to 2 s, its client not closing); the next, taken while those two
        # answers are under way, are closed at once.
        self.assertGreaterEqual(told, 2, "none was told why")
        self.assertGreaterEqual(cut, 1, "answers past admin.max_connections at a time")
        self.assert_reclaim_logged(100, 4)

    def test_a_connection_being_answered_keeps_its_slot(self):
        # Only a connection waiting for its client's bytes gives its slot away: one whose (large) response its client
        # does not read is in the middle of an answer, and a new connection is refused even with admin.reclaim_after
        # at its least, until admin.send_timeout closes the stuck one.
        self.use_broker({"admin.max_connections": 1, "admin.reclaim_after": 100, "admin.send_timeout": 3000,
                         "mqtt.max_packet_size": 4 << 20})
        self.ask_routes_not_read()
        time.sleep(1.0)  # the routes gathered and the send under way (it waits for admin.send_timeout)
        other, r = self.nodes_on_new_connection()
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json(), {"code": 503, "message": "too many admin connections (admin.max_connections = 1)"})
        self.assertNotIn(b"the one that waited longest", self.broker.log())
        self.wait_until(lambda: b"its client did not take the response" in self.broker.log(), 15.0,
                        "the unread response timed out")
        self.nodes_once_a_slot_is_free(5)  # once the stuck connection has closed

    def test_a_response_nobody_reads_times_out(self):
        # A client that asks for a large answer and never reads it holds its coroutine and socket for
        # admin.send_timeout at most, not forever; others are served meanwhile.
        self.use_broker({"admin.send_timeout": 1000, "mqtt.max_packet_size": 4 << 20})
        sock = self.ask_routes_not_read()
        time.sleep(0.5)  # not reading: the server's send waits, then times out
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE, "others are served meanwhile")
        # The send starts once the routes are gathered from the shards, which takes longer on a busy host or a
        # sanitizer build: wait for the timeout itself rather than a fixed time.
        self.wait_until(lambda: b"its client did not take the response" in self.broker.log(), 15.0,
                        "the unread response timed out")
        sock.settimeout(10)
        got = bytearray()
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            else:
                raise socket.timeout
        except socket.timeout:
            self.fail(f"the connection is still open after {len(got)} bytes")
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        self.assertGreater(length, 6_000_000)
        self.assertLess(len(body), length, "the whole response went out: nothing timed out")
        self.assertRegex(self.broker.log().decode("utf-8", "replace"),
                         r"admin: closing a connection: its client did not take the response .* within "
                         r"admin.send_timeout = 1000 ms")


    def test_password_checks_are_rationed(self):
        # Each unknown password costs a PBKDF2 run on the admin thread: past admin.password_checks_per_second the
        # answer is 429, while a password that verified before is still recognised at once.
        self.use_broker({"admin.password_checks_per_second": 5})
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE)  # admin/public verified once
        flood = self.http()
        n = 40
        start = time.monotonic()
        flood.send(b"".join(build_request("GET", "/api/v2/management/nodes", auth=("admin", f"wrong{i}"))
                            for i in range(n)))
        statuses = []
        for _ in range(n):
            r = flood.read_response()
            statuses.append(r.status)
            if r.status == 429:
                self.assertEqual(r.json()["code"], 429, r)
                self.assertEqual(r.header("Retry-After"), "1")
        elapsed = time.monotonic() - start
        self.assertEqual(set(statuses) - {401, 429}, set(), statuses)
        self.assertLessEqual(statuses.count(401), 5 + 5 * elapsed + 1, f"{statuses} in {elapsed:.2f} s")
        self.assertGreaterEqual(statuses.count(429), n // 2, statuses)
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE, "the known password still works")
        r = self.api("POST", "/api/v2/auth", {"username": "admin", "password": "nope"})
        self.assertIn(r.status, (200, 429), r)  # 429, or code 103 if the budget refilled meanwhile
        time.sleep(1.5)
        r = self.api("GET", "/api/v2/management/nodes", auth=("admin", "still-wrong"))
        self.assertEqual(r.status, 401, "the budget refills")

    def test_a_repeated_wrong_password_takes_the_budget_once(self):
        # A client repeating one wrong password (a script still using a rotated password, a flood of one guess) is
        # answered from the refused pairs the users store keeps: only its first try costs a check, and a login that
        # needs one meanwhile is not answered 429.
        self.use_broker({"admin.password_checks_per_second": 2})
        flood = self.http()
        n = 200
        flood.send(b"".join(build_request("GET", "/api/v2/management/nodes", auth=("admin", "rotated"))
                            for _ in range(n)))
        statuses = [flood.read_response().status for _ in range(n)]
        self.assertEqual(statuses.count(401), n, f"429 for {statuses.count(429)} of {n}")
        r = self.api("GET", "/api/v2/management/nodes")  # admin/public was never verified: it needs a check
        self.assertEqual(r.status, 200, r)
        r = self.api("POST", "/api/v2/auth", {"username": "admin", "password": "rotated"})
        self.assertEqual(r.json(), {"code": 103, "message": "Password error"})


class HttpLimitTest(AdminTest):
    """admin.max_body_bytes = 4096 and admin.idle_timeout = 1000 ms."""

    SETTINGS = {"admin.max_body_bytes": 4096, "admin.idle_timeout": 1000}

    def test_body_over_limit_413(self):
        s = self.client(self.cid("big"))
        s.subscribe([("big/t", 0)])
        c = self.http()
        c.send(build_request("POST", "/api/v2/mqtt/publish", {"topic": "big/t", "payload": "x" * 8000}))
        r = c.read_response()
        self.assertEqual(r.status, 413, r)
        c = self.http()
        c.send(build_request("POST", "/api/v2/mqtt/publish", chunks=[b'{"topic": "big/t", "payload": "',
                                                                      b"y" * 2500, b"y" * 2500, b'"}']))
        r = c.read_response()
        self.assertEqual(r.status, 413, r)
        s.expect_no_packet(0.3)

    def test_announced_huge_body_413(self):
        c = self.http()
        c.send(("POST /api/v2/mqtt/publish HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic_auth("admin", "public")
                + "\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n").encode())
        r = c.read_response()  # refused from the headers alone, without waiting for the body
        self.assertEqual(r.status, 413, r)

    def test_body_under_limit_accepted(self):
        s = self.client(self.cid("fits"))
        s.subscribe([("fit/t", 0)])
        body = {"topic": "fit/t", "payload": "z" * 3900}
        self.action("POST", "mqtt/publish", body)
        self.assertEqual(s.recv_publish().payload, b"z" * 3900)

    def test_idle_connections_closed(self):
        quiet = self.http()
        start = time.monotonic()
        self.assertTrue(quiet.closed_within(4.5), "a connection that never sends is closed")
        self.assertGreaterEqual(time.monotonic() - start, 0.5, "closed too early for a 1 s idle timeout")

        used = self.http()
        used.send(build_request("GET", "/api/v2/management/nodes"))
        self.assert_success(used.read_response())
        self.assertTrue(used.closed_within(4.5), "an idle keep-alive connection is closed")

        partial = self.http()
        partial.send(b"GET /api/v2/manag")
        self.assertTrue(partial.closed_within(4.5), "a stalled request is closed (a 408 first is allowed)")
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE)


class HttpRequestTimeoutTest(AdminTest):
    """admin.request_timeout = 1500 ms: a request must arrive whole within that time of its first byte, however
    often its client sends a byte (each read used to restart the idle timer, so trickling clients could hold every
    admin.max_connections slot); the time between requests on a kept-alive connection is not counted."""

    SETTINGS = {"admin.request_timeout": 1500}

    def test_a_trickled_request_gets_408_and_is_closed(self):
        c = self.http()
        start = time.monotonic()
        c.send(b"GET /api/v2/management/nodes HTTP/1.1\r\nHost: x\r\n")
        answered = None
        while time.monotonic() - start < 6:
            try:
                c.send(b"X")  # an endless header line, a byte every 0.25 s
            except OSError:
                break
            if c.closed_within(0.25) or b"\r\n\r\n" in c.buf:
                answered = time.monotonic() - start
                break
        self.assertIsNotNone(answered, "the trickling client was neither answered nor closed within 6 s")
        r = c.read_response(timeout=1)
        self.assertEqual(r.status, 408, r)
        self.assertEqual(r.json(), {"code": 408,
                                    "message": "request not received whole within admin.request_timeout = 1500 ms"})
        self.assertGreaterEqual(answered, 1.3, "answered before admin.request_timeout")
        self.assertLess(answered, 3.5)
        self.assertTrue(c.closed_within(3))
        self.assertIn(b"answering 408 and closing a connection: request not received whole", self.broker.log())
        self.assertEqual(self.get("management/nodes")[0]["name"], self.NODE)

    def test_time_between_requests_is_not_counted(self):
        c = self.http()
        for i in range(2):
            c.send(build_request("GET", "/api/v2/management/nodes"))
            self.assert_success(c.read_response())
            time.sleep(1.0)  # 2 s idle in all: past the request timeout, well within the idle timeout
        half = build_request("GET", "/api/v2/management/nodes")
        c.send(half[:10])
        time.sleep(0.8)
        c.send(half[10:])  # the request took 0.8 s from its first byte
        self.assert_success(c.read_response())
        # Pipelined: the second request's first byte came with the first, and it is served too.
        c.send(build_request("GET", "/api/v2/management/nodes") * 2)
        self.assert_success(c.read_response())
        self.assert_success(c.read_response())
        # A blank line after a request (some clients end a body with an extra CRLF) begins no request: the
        # connection waits for the idle timeout, not the request timeout, and serves the next request.
        c.send(build_request("GET", "/api/v2/management/nodes") + b"\r\n")
        self.assert_success(c.read_response())
        time.sleep(2.5)
        c.send(build_request("GET", "/api/v2/management/nodes"))
        self.assert_success(c.read_response())
