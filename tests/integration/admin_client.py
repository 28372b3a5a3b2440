"""Client side of the admin REST API tests (EMQ X 2.x "REST API v2"): an http.client wrapper, a raw-socket HTTP/1.1
connection for wire-level tests (pipelining, chunked bodies, garbage), JSON parsing that keeps key order and refuses
duplicate keys, and `AdminTest`, the unittest base class whose broker runs with the admin API enabled.

Written from shared/seed/rest_api_v2.rst and shared/reference/emqx_v2_api_notes.md plus the server conventions of
the ringmq admin API (node ringmq@127.0.0.1, admin/public, JSON error bodies with HTTP 404/401/400); no server code.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlencode

from broker import BrokerTest

DEFAULT_NODE = "ringmq@127.0.0.1"
DEFAULT_USER = "admin"
DEFAULT_PASSWORD = "public"
HTTP_TIMEOUT = 5.0

# Key orders of the seed's objects (checked with list(obj) on order-preserving parses).
NODE_KEYS = ["name", "version", "sysdescr", "uptime", "datetime", "otp_release", "node_status"]
NODE_MONITOR_KEYS = ["name", "otp_release", "memory_total", "memory_used", "process_available", "process_used",
                     "max_fds", "clients", "node_status", "load1", "load5", "load15"]
CLIENT_KEYS = ["client_id", "username", "ipaddress", "port", "clean_sess", "proto_ver", "keepalive", "connected_at"]
SESSION_KEYS = ["client_id", "clean_sess", "max_inflight", "inflight_queue", "message_queue", "message_dropped",
                "awaiting_rel", "awaiting_ack", "awaiting_comp", "created_at"]
SUBSCRIPTION_KEYS = ["client_id", "topic", "qos"]
ROUTE_KEYS = ["topic", "node"]
PAGE_KEYS = ["current_page", "page_size", "total_num", "total_page", "objects"]
PLUGIN_KEYS = ["name", "version", "description", "active"]
LISTENER_KEYS = ["protocol", "listen", "acceptors", "max_clients", "current_clients", "shutdown_count"]
USER_KEYS = ["username", "tags"]
# The seed's statistics, in the seed's (alphabetical) order.
STATS_KEYS = ["clients/count", "clients/max", "retained/count", "retained/max", "routes/count", "routes/max",
              "sessions/count", "sessions/max", "subscribers/count", "subscribers/max", "subscriptions/count",
              "subscriptions/max", "topics/count", "topics/max"]
# The seed's 39 metric names (the notes: key order unspecified).
METRIC_NAMES = frozenset([
    "packets/disconnect", "messages/dropped", "messages/qos2/received", "packets/suback", "packets/pubcomp/received",
    "packets/unsuback", "packets/pingresp", "packets/puback/missed", "packets/pingreq", "messages/retained",
    "packets/sent", "messages/qos2/dropped", "packets/unsubscribe", "packets/pubrec/missed", "packets/connack",
    "messages/received", "packets/pubrec/sent", "packets/publish/received", "packets/pubcomp/sent",
    "bytes/received", "packets/connect", "packets/puback/received", "messages/sent", "packets/publish/sent",
    "bytes/sent", "packets/pubrel/missed", "packets/puback/sent", "messages/qos0/received", "packets/subscribe",
    "packets/pubrel/sent", "messages/forward", "messages/qos2/sent", "packets/received", "packets/pubrel/received",
    "messages/qos1/received", "messages/qos1/sent", "packets/pubrec/received", "packets/pubcomp/missed",
    "messages/qos0/sent",
])

TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
# EMQ X uptime text: "<s> seconds", "<m> minutes, <s> seconds", "<h> hours, <m> minutes, <s> seconds",
# "<d> days,<h> hours, <m> minutes, <s> seconds" (no space after "days,").
UPTIME_RE = re.compile(r"(?:(\d+) days,)?(?:(\d+) hours, )?(?:(\d+) minutes, )?(\d+) seconds")

_DEFAULT = object()
Auth = Union[None, Tuple[str, str], str]


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


def seg(s: str) -> str:
    """One path segment, percent-encoded (UTF-8) so that '/', '#', '?', '%', ' ' and '@' survive."""
    return quote(s, safe="")


class DuplicateKey(ValueError):
    pass


def _pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise DuplicateKey(f"duplicate keys in JSON object: {keys}")
    return dict(pairs)  # dicts keep insertion order: list(obj) is the key order on the wire


def parse_json(body: bytes) -> Any:
    """Strict UTF-8 JSON, objects as order-preserving dicts; duplicate keys are an error."""
    return json.loads(body.decode("utf-8"), object_pairs_hook=_pairs)


def parse_time(text: str) -> float:
    """'YYYY-MM-DD HH:MM:SS' in local time -> unix seconds."""
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def uptime_seconds(text: str) -> int:
    m = UPTIME_RE.fullmatch(text)
    if not m:
        raise AssertionError(f"uptime {text!r} is not in the EMQ X format")
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


class Response:
    def __init__(self, status: int, reason: str, headers: Sequence[Tuple[str, str]], body: bytes,
                 version: str = "HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        self.body = body
        self.version = version

    def header(self, name: str) -> Optional[str]:
        """Last value of a header, name compared case-insensitively; None when absent."""
        value = None
        for k, v in self.headers:
            if k.lower() == name.lower():
                value = v
        return value

    def json(self) -> Any:
        try:
            return parse_json(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise AssertionError(f"HTTP {self.status} body is not JSON ({e}): {self.body[:300]!r}") from None

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return f"<HTTP {self.status} {self.reason} {self.headers} {body!r}>"


def encode_body(body: Any) -> Optional[bytes]:
    """None -> no body; bytes as given; str as UTF-8 (raw text, e.g. broken JSON); anything else json.dumps."""
    if body is None:
        return None
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def auth_header(auth: Auth) -> Optional[str]:
    if auth is None:
        return None
    if isinstance(auth, tuple):
        return basic_auth(*auth)
    return auth  # a raw Authorization value


def request(port: int, method: str, path: str, body: Any = None, auth: Auth = (DEFAULT_USER, DEFAULT_PASSWORD),
            headers: Optional[Dict[str, str]] = None, timeout: float = HTTP_TIMEOUT) -> Response:
    """One request on a fresh http.client connection. A connection closed without a response is a failure."""
    hdrs = {}
    value = auth_header(auth)
    if value is not None:
        hdrs["Authorization"] = value
    data = encode_body(body)
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, resp.reason, resp.getheaders(), payload,
                        "HTTP/1.1" if resp.version == 11 else "HTTP/1.0")
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            http.client.IncompleteRead) as e:
        raise AssertionError(f"{method} {path}: connection closed without a (complete) response: {e!r}") from None
    except socket.timeout:
        raise AssertionError(f"{method} {path}: no response within {timeout}s") from None
    finally:
        conn.close()


def build_request(method: str, target: str, body: Any = None, auth: Auth = (DEFAULT_USER, DEFAULT_PASSWORD),
                  headers: Sequence[Tuple[str, str]] = (), chunks: Optional[Sequence[bytes]] = None,
                  version: str = "HTTP/1.1") -> bytes:
    """The bytes of one request. `chunks` sends the body with Transfer-Encoding: chunked (each element one chunk)."""
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    value = auth_header(auth)
    if value is not None:
        lines.append(f"Authorization: {value}")
    data = encode_body(body)
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        data = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks if c) + b"0\r\n\r\n"
    elif data is not None:
        lines.append(f"Content-Length: {len(data)}")
    elif method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b"")


class HttpConn:
    """A raw HTTP/1.1 client connection: send any bytes, read responses one at a time (Content-Length, chunked,
    or until EOF), and check that the server closes."""

    def __init__(self, port: int, timeout: float = HTTP_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False on EOF/reset. Raises AssertionError at the deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for the server (have {bytes(self.buf[:200])!r})")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"timed out waiting for the server (have {bytes(self.buf[:200])!r})") from None
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _need(self, n: int, deadline: float, what: str) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise AssertionError(f"connection closed in the middle of {what} ({bytes(self.buf[:200])!r})")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _line(self, deadline: float, what: str) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            if not self._fill(deadline):
                raise AssertionError(f"connection closed in the middle of {what} ({bytes(self.buf[:200])!r})")

    def read_response(self, timeout: float = HTTP_TIMEOUT, head: bool = False) -> Response:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                if not self.buf:
                    raise AssertionError("connection closed without a response")
                raise AssertionError(f"connection closed in the middle of a response head ({bytes(self.buf)!r})")
        i = self.buf.find(b"\r\n\r\n")
        head_bytes = bytes(self.buf[:i]).decode("latin-1")
        del self.buf[:i + 4]
        status_line, *header_lines = head_bytes.split("\r\n")
        m = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?", status_line)
        if not m:
            raise AssertionError(f"bad status line {status_line!r}")
        headers = []
        for line in header_lines:
            k, sep, v = line.partition(":")
            if not sep:
                raise AssertionError(f"bad header line {line!r}")
            headers.append((k.strip(), v.strip()))
        resp = Response(int(m.group(2)), m.group(3) or "", headers, b"", m.group(1))
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header("Content-Length")
        if head or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        if "chunked" in te:
            body = bytearray()
            while True:
                size_line = self._line(deadline, "a chunk size")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line(deadline, "the trailer"):
                        pass
                    break
                body += self._need(size, deadline, "a chunk")
                if self._need(2, deadline, "a chunk end") != b"\r\n":
                    raise AssertionError("chunk not followed by CRLF")
            resp.body = bytes(body)
        elif cl is not None:
            resp.body = self._need(int(cl), deadline, "a response body")
        else:
            while self._fill(deadline):
                pass
            resp.body = bytes(self.buf)
            self.buf.clear()
        return resp

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes (EOF or reset) within `timeout` without sending more bytes; bytes that
        arrive are kept in buf (and make this return False only if the connection stays open)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except AssertionError:
            return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class AdminTest(BrokerTest):
    """A broker per test with the admin HTTP API on 127.0.0.1 port 0 (self.admin_port). Request helpers take a path
    relative to /api/v2/ (or an absolute one starting with '/')."""

    ADMIN = True
    NODE = DEFAULT_NODE  # set together with ARGS = ("--node-name", ...) to test another node name

    def setUp(self) -> None:
        self.started_at = time.time()
        super().setUp()

    # -- requests ---------------------------------------------------------------------------------------------------

    def url(self, path: str, query: Optional[Dict[str, Any]] = None) -> str:
        url = path if path.startswith("/") else "/api/v2/" + path
        if query:
            url += "?" + urlencode(query)
        return url

    def api(self, method: str, path: str, body: Any = None, query: Optional[Dict[str, Any]] = None,
            auth: Auth = (DEFAULT_USER, DEFAULT_PASSWORD), headers: Optional[Dict[str, str]] = None,
            port: Optional[int] = None) -> Response:
        return request(port or self.admin_port, method, self.url(path, query), body, auth, headers)

    def http(self, port: Optional[int] = None) -> HttpConn:
        c = HttpConn(port or self.admin_port)
        self.addCleanup(c.close)
        return c

    def n(self, *parts: str) -> str:
        """'nodes/<this node>/<parts...>' (parts used verbatim: encode ids with seg())."""
        return "/".join(["nodes", seg(self.NODE), *parts])

    # -- assertions -------------------------------------------------------------------------------------------------

    def assert_json_type(self, r: Response) -> None:
        ctype = (r.header("Content-Type") or "").lower()
        self.assertTrue(ctype.startswith("application/json"), f"Content-Type {ctype!r}: {r!r}")

    def assert_success(self, r: Response, what: str = "") -> Any:
        self.assertEqual(r.status, 200, f"{what}: {r!r}")
        self.assert_json_type(r)
        obj = r.json()
        self.assertIsInstance(obj, dict, f"{what}: {r!r}")
        self.assertEqual(list(obj), ["code", "result"], f"{what}: envelope keys {list(obj)}: {r!r}")
        self.assertEqual(obj["code"], 0, f"{what}: {r!r}")
        return obj["result"]

    def ok(self, method: str, path: str, body: Any = None, **kw) -> Any:
        """A request that must succeed: HTTP 200, application/json, {"code":0,"result":...} in that order."""
        return self.assert_success(self.api(method, path, body, **kw), f"{method} {path}")

    def get(self, path: str, **query) -> Any:
        return self.ok("GET", path, query=query or None)

    def action(self, method: str, path: str, body: Any = None, **kw) -> None:
        """An action: success with "result": []."""
        self.assertEqual(self.ok(method, path, body, **kw), [], f"{method} {path}")

    def assert_error(self, r: Response, code: int, what: str = "", message_optional: bool = False) -> dict:
        self.assertEqual(r.status, 200, f"{what}: expected HTTP 200 with code {code}: {r!r}")
        self.assert_json_type(r)
        obj = r.json()
        self.assertIsInstance(obj, dict, f"{what}: {r!r}")
        self.assertEqual(obj.get("code"), code, f"{what}: {r!r}")
        self.assertEqual(list(obj)[0], "code", f"{what}: {r!r}")
        self.assertNotIn("result", obj, f"{what}: error bodies have no result: {r!r}")
        if message_optional:
            self.assertLessEqual(set(obj), {"code", "message"}, f"{what}: {r!r}")
        else:
            self.assertEqual(list(obj), ["code", "message"], f"{what}: {r!r}")
        if "message" in obj:
            self.assertIsInstance(obj["message"], str, f"{what}: {r!r}")
        return obj

    def err(self, method: str, path: str, body: Any, code: int, **kw) -> dict:
        """A request answered HTTP 200 {"code": code, "message": "..."} (112 may come without a message)."""
        return self.assert_error(self.api(method, path, body, **kw), code, f"{method} {path} {body!r}",
                                 message_optional=(code == 112))

    def assert_json_error(self, r: Response, status: int, what: str = "") -> dict:
        self.assertEqual(r.status, status, f"{what}: {r!r}")
        self.assert_json_type(r)
        obj = r.json()
        self.assertIsInstance(obj, dict, f"{what}: {r!r}")
        self.assertIsInstance(obj.get("code"), int, f"{what}: {r!r}")
        self.assertIsInstance(obj.get("message"), str, f"{what}: {r!r}")
        return obj

    def not_found(self, method: str, path: str, body: Any = None, **kw) -> dict:
        """HTTP 404 with a JSON body carrying "code" and "message"."""
        return self.assert_json_error(self.api(method, path, body, **kw), 404, f"{method} {path}")

    def assert_unauthorized(self, r: Response, what: str = "") -> None:
        self.assertEqual(r.status, 401, f"{what}: {r!r}")
        challenge = r.header("WWW-Authenticate")
        self.assertIsNotNone(challenge, f"{what}: no WWW-Authenticate: {r!r}")
        self.assertRegex(challenge.lower(), r"^basic\s+realm=", f"{what}: {r!r}")
        self.assert_json_type(r)
        r.json()

    def assert_keys(self, obj: Any, keys: Sequence[str], what: str = "") -> None:
        self.assertIsInstance(obj, dict, what)
        self.assertEqual(list(obj), list(keys), what)

    def assert_recent_time(self, text: Any, slack: float = 10.0, what: str = "") -> None:
        self.assertIsInstance(text, str, what)
        self.assertTrue(TIME_RE.fullmatch(text), f"{what}: {text!r} is not YYYY-MM-DD HH:MM:SS")
        self.assertLessEqual(abs(parse_time(text) - time.time()), slack, f"{what}: {text!r} is not local now")

    # -- paged lists and lookups ------------------------------------------------------------------------------------

    def page(self, path: str, curr_page: Optional[int] = None, page_size: Optional[int] = None,
             row_keys: Optional[Sequence[str]] = None) -> dict:
        """One page, with the paging wrapper and its arithmetic checked."""
        query = {}
        if curr_page is not None:
            query["curr_page"] = curr_page
        if page_size is not None:
            query["page_size"] = page_size
        res = self.ok("GET", path, query=query or None)
        what = f"GET {path} {query}"
        self.assert_keys(res, PAGE_KEYS, what)
        self.assertEqual(res["current_page"], 1 if curr_page is None else curr_page, what)
        size = 20 if page_size is None else page_size
        self.assertEqual(res["page_size"], size, what)
        total = res["total_num"]
        self.assertIsInstance(total, int, what)
        self.assertEqual(res["total_page"], -(-total // size), f"{what}: {res}")
        cp = res["current_page"]
        expected_len = max(0, min(size, total - max(cp - 1, 0) * size))  # curr_page <= 1: the first page
        self.assertEqual(len(res["objects"]), expected_len, f"{what}: {res}")
        if row_keys is not None:
            for row in res["objects"]:
                self.assert_keys(row, row_keys, what)
        return res

    def rows(self, path: str, row_keys: Optional[Sequence[str]] = None) -> List[dict]:
        """Every row of a paged list (one page of 1000)."""
        return self.page(path, 1, 1000, row_keys)["objects"]

    def lookup(self, path: str, row_keys: Optional[Sequence[str]] = None) -> List[dict]:
        """A single-object lookup: {"objects": [...]}."""
        res = self.get(path)
        self.assert_keys(res, ["objects"], f"GET {path}")
        self.assertIsInstance(res["objects"], list)
        if row_keys is not None:
            for row in res["objects"]:
                self.assert_keys(row, row_keys, f"GET {path}")
        return res["objects"]

    # -- node-level views -------------------------------------------------------------------------------------------

    def metrics(self) -> Dict[str, int]:
        return self.get("monitoring/metrics/" + seg(self.NODE))

    def stats(self) -> Dict[str, int]:
        return self.get("monitoring/stats/" + seg(self.NODE))

    # -- waiting ----------------------------------------------------------------------------------------------------

    def wait_equal(self, fn: Callable[[], Any], expected: Any, timeout: float = 3.0, what: str = "value",
                   interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value == expected:
                return value
            if time.monotonic() >= deadline:
                self.assertEqual(value, expected, f"{what} (after {timeout}s)")
            time.sleep(interval)
