"""An admin scan of thousands of clients while MQTT traffic flows: every page is complete and consistent, and a
publisher->subscriber stream running meanwhile loses nothing, keeps its order and is never stalled for long."""
import resource
import socket
import threading
import time

import mqtt_raw as m
from admin_client import AdminTest
from broker import shard_variants

# Raised at import, before any broker starts, so the broker inherits the limit too. The client count follows what
# the machine allows (2500 where the hard limit permits, never fewer than 500).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_want = 2500 + 1000
if _soft < _want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(_hard, _want), _hard))
IDLE = max(500, min(2500, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1000))


def open_idle(port: int, n: int, prefix: str) -> list:
    """n raw MQTT connections, CONNECT pipelined on all before any CONNACK is read."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(m.connect(f"{prefix}{i}", keepalive=120))
        socks.append(s)
    for s in socks:
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < 4 and time.monotonic() < deadline:
            chunk = s.recv(4 - len(got))
            if not chunk:
                raise AssertionError("connection closed before CONNACK")
            got += chunk
        assert got == m.connack(), got
    return socks


class _ScaleCases:
    def test_scan_thousands_of_clients_while_traffic_flows(self):
        socks = open_idle(self.port, IDLE, "idle-")
        self.addCleanup(lambda: [s.close() for s in socks])

        sub = self.client("scan-subscriber")
        sub.subscribe([("scan/t", 1)])
        pub = self.client("scan-publisher")
        n_msgs = 400
        gaps = []
        received = []
        err = []

        def consume():
            try:
                last = time.monotonic()
                for _ in range(n_msgs):
                    msg = sub.recv_publish(timeout=5)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    received.append(msg.payload)
            except BaseException as e:
                err.append(e)

        t = threading.Thread(target=consume, daemon=True)
        t.start()

        def produce():
            for i in range(n_msgs):
                pub.publish("scan/t", str(i), qos=1)
                time.sleep(0.005)

        p = threading.Thread(target=produce, daemon=True)
        p.start()
        # Meanwhile: page through every client, then fetch them all in one page.
        seen = set()
        page, total_pages = 1, None
        while total_pages is None or page <= total_pages:
            r = self.get(self.n("clients"), curr_page=page, page_size=500)
            total_pages = r["total_page"]
            self.assertGreaterEqual(r["total_num"], IDLE)
            seen.update(o["client_id"] for o in r["objects"])
            page += 1
        self.assertTrue({f"idle-{i}" for i in range(IDLE)} <= seen)
        everything = self.get(self.n("clients"), curr_page=1, page_size=100000)
        ids = [o["client_id"] for o in everything["objects"]]
        self.assertEqual(len(ids), len(set(ids)), "a client listed twice")
        self.assertEqual(len(ids), everything["total_num"])
        sessions = self.get(self.n("sessions"), page_size=100000)
        self.assertGreaterEqual(sessions["total_num"], IDLE)
        p.join(30)
        t.join(30)
        self.assertFalse(err, err)
        self.assertEqual(received, [str(i).encode() for i in range(n_msgs)])
        self.assertLess(max(gaps), 1.0, "traffic stalled during the admin scan")


shard_variants(_ScaleCases, globals(), base=AdminTest)
