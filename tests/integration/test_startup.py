"""Start-up and signals: what the binary does before it is ready and when it is told to stop. A broker that cannot
start exits 1 with its reason on stderr, whatever log.level says; a port another broker listens on is refused (the
listeners' SO_REUSEPORT would otherwise let both take its connections); SIGHUP, SIGUSR1 and SIGUSR2 do not kill the broker."""

import fcntl
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import mqtt_raw as m
from admin_client import request
from broker import LISTEN_RE, READY_RE, BrokerTest, broker_bin, client_id_on_shard

START_TIMEOUT = 15  # a broker that cannot start says so at once; this only bounds a hang


def run_broker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([broker_bin(), *args], capture_output=True, text=True, timeout=START_TIMEOUT)


class StartupTest(BrokerTest):
    AUTO_START = False

    def assert_refused(self, run: subprocess.CompletedProcess, *fragments: str) -> None:
        self.assertEqual(run.returncode, 1, run.stderr)
        for f in fragments:
            self.assertIn(f, run.stderr)

    def test_a_second_broker_on_the_same_port_is_refused(self):
        first = self.start_broker(1, admin=True)
        # MQTT port taken; the log level cannot hide why.
        second = run_broker("--listen", f"127.0.0.1:{first.port}", "--no-admin", "--log-level", "off")
        self.assert_refused(second, f"cannot listen for MQTT: cannot bind 127.0.0.1:{first.port}: Address already in use")
        # The wildcard address overlaps the first broker's 127.0.0.1 too.
        wide = run_broker("--listen", f"0.0.0.0:{first.port}", "--no-admin", "--log-level", "error", "--shards", "2")
        self.assert_refused(wide, f"cannot bind 0.0.0.0:{first.port}: Address already in use")
        # Admin port taken (the MQTT port is free).
        admin = run_broker("--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{first.admin_port}",
                           "--log-level", "off")
        self.assert_refused(admin, f"cannot listen for the admin API: cannot bind 127.0.0.1:{first.admin_port}")
        # Every connection still reaches the first broker: a subscriber there gets each client's message.
        sub = m.RawClient(first.port)
        self.addCleanup(sub.close)
        sub.connect("watcher")
        sub.subscribe([("taken/#", 0)])
        for i in range(20):
            c = m.RawClient(first.port)
            c.connect(f"c{i}")
            c.publish(f"taken/{i}", b"x")
            c.disconnect()
        self.assertEqual(sorted(sub.recv_publish().topic for _ in range(20)), sorted(f"taken/{i}" for i in range(20)))

    def test_cross_shard_queues_larger_than_memory_are_refused(self):
        shards, size = 63, 1048576
        needed = (shards + 1) * shards * size * 16
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if needed <= ram:
            self.skipTest(f"this machine has {ram >> 30} GiB: the largest queues allowed fit")
        run = run_broker("--listen", "127.0.0.1:0", "--no-admin", "--log-level", "off", "--shards", str(shards),
                         "--set", f"node.smp_queue_size={size}")
        self.assert_refused(run, f"node.shards = {shards} and node.smp_queue_size = {size} make {needed >> 20} MiB "
                                 "of cross-shard queues")

    def test_the_most_shards_reach_the_admin_shard(self):
        # node.shards at its maximum: the admin shard is the last participant of the cross-shard queues, and an admin
        # call that asks every shard (monitoring/nodes, routes) must be answered, as must SIGTERM (the cleanup
        # checks that the broker exits 0 within its bound).
        b = self.start_broker(63, admin=True, settings={"node.smp_queue_size": 256})
        sub = m.RawClient(b.port)
        self.addCleanup(sub.close)
        sub.connect(client_id_on_shard("most", 62, 63))
        sub.subscribe([("most/t", 0)])
        for path in ("/api/v2/monitoring/nodes", "/api/v2/routes", "/api/v2/monitoring/stats"):
            r = request(b.admin_port, "GET", path, timeout=10)
            self.assertEqual(r.status, 200, f"{path}: {r!r}")
        routes = request(b.admin_port, "GET", "/api/v2/routes", timeout=10).json()["result"]["objects"]
        self.assertEqual([x["topic"] for x in routes], ["most/t"])

    def test_sighup_sigusr1_and_sigusr2_are_logged_and_ignored(self):
        # SIGUSR1 and SIGUSR2 (Mosquitto's "save" and "dump") killed the broker at once, every session with it.
        b = self.start_broker(2)
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            b.proc.send_signal(sig)
            c = m.RawClient(b.port)
            self.addCleanup(c.close)
            c.connect("after-" + sig.name)
            self.assertTrue(c.is_open())
            line = b"received %s: ignored" % sig.name.encode()
            deadline = time.monotonic() + 3
            while line not in b.log() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertIn(line, b.log())
            self.assertIsNone(b.proc.poll(), f"{sig.name} ended the broker")
        # and SIGTERM still stops it gracefully (the cleanup checks exit code 0)

    def test_a_start_up_warning_shows_what_it_quotes_escaped_once(self):
        # A file's values that the command line replaces are still checked and their problems logged as warnings;
        # the control character and the backslash they quote are each written once as \xNN (they were escaped twice:
        # a backslash showed as \x5cx5c).
        b = self.start_broker(1, config='mqtt.listen = "bad\\u0001addr"\nlog.level = "lo\\\\ud"\n')
        log = b.log()
        self.assertIn(b"mqtt.listen: bad endpoint 'bad\\x01addr': expected HOST:PORT (not in force", log)
        self.assertIn(b"got 'lo\\x5cud' (not in force", log)
        self.assertNotIn(b"\\x5cx", log)

    def test_too_few_descriptors_is_a_clear_error_not_a_crash(self):
        # Each limit runs out at a different step (the admin socket, the users file, a shard's wake-up eventfd, an
        # io_uring): every one must exit 1 naming EMFILE. An eventfd that failed used to abort on an assertion.
        failed = []
        tmp = tempfile.mkdtemp(prefix="ringmq-it-nofile-")
        self.addCleanup(shutil.rmtree, tmp, True)
        # In a sanitizer build, UBSan's vptr check reads memory through a pipe of its own, which these limits deny:
        # it then reports every virtual call as invalid. Its reports do not stop the broker here (halt_on_error=0);
        # no effect on a release binary.
        env = {**os.environ, "UBSAN_OPTIONS": "halt_on_error=0:print_stacktrace=0"}

        def limit(n: int, pending_term: bool) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            if pending_term:  # blocked and pending across exec: as if it came during start-up
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                os.kill(os.getpid(), signal.SIGTERM)

        for n in range(5, 12):
            # With a SIGTERM pending from the start, a failed start still exits 1 (not 143), a good one exits 0.
            for pending_term in (False, True):
                with self.subTest(nofile=n, pending_term=pending_term):
                    p = subprocess.Popen([broker_bin(), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                                          "--shards", "2", "--set", f"admin.users_file={tmp}/users{n}"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                         preexec_fn=lambda n=n, t=pending_term: limit(n, t))
                    try:
                        _, err = p.communicate(timeout=START_TIMEOUT)
                    except subprocess.TimeoutExpired:  # it started after all: stop it
                        p.send_signal(signal.SIGTERM)
                        _, err = p.communicate(timeout=START_TIMEOUT)
                    self.assertNotIn("assertion failed", err)
                    self.assertIn(p.returncode, (0, 1), err)
                    if p.returncode == 1:
                        self.assertIn("Too many open files", err)
                        if not pending_term:
                            failed.append(n)
        self.assertGreaterEqual(len(failed), 4, "the limits tried should stop start-up at several steps")

    def test_a_stderr_nobody_reads_stops_neither_the_clients_nor_the_stop(self):
        # stderr is a pipe of 4 KiB that nobody reads while 1500 clients come and go, each logged (about 450 KB at
        # debug). Until stop 73 a shard's write(2) then waited for a reader for ever: new clients got no CONNACK, and
        # not even a second SIGTERM ended the process (main's "received SIGTERM" line waited too). Now what the pipe
        # does not take waits in memory up to 256 KiB, past which lines are dropped and counted, and a line says so
        # once the pipe takes again.
        r, w = os.pipe()
        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
        p = subprocess.Popen([broker_bin(), "--listen", "127.0.0.1:0", "--no-admin", "--log-level", "debug",
                              "--shards", "2"], stdin=subprocess.DEVNULL, stdout=w, stderr=w, start_new_session=True)
        os.close(w)
        self.addCleanup(os.close, r)

        def kill():
            if p.poll() is None:
                p.kill()
                p.wait(5)
        self.addCleanup(kill)
        out = b""
        deadline = time.monotonic() + START_TIMEOUT
        while not READY_RE.search(out):
            self.assertLess(time.monotonic(), deadline, out.decode("utf-8", "replace"))
            out += os.read(r, 65536)
        port = int(LISTEN_RE.search(out).group(1))
        # Not read from here on.
        for i in range(1500):
            c = m.RawClient(port)
            try:
                c.connect(f"unread-{i:04d}-" + "x" * 200)
                c.disconnect()
            finally:
                c.close()
        sub = m.RawClient(port)
        self.addCleanup(sub.close)
        sub.connect(client_id_on_shard("unread-sub", 0, 2))
        sub.subscribe([("unread/t", 1)])
        pub = m.RawClient(port)
        self.addCleanup(pub.close)
        pub.connect(client_id_on_shard("unread-pub", 1, 2))
        pub.publish("unread/t", b"served", qos=1)
        self.assertEqual(sub.recv_publish().payload, b"served")
        # Nor is the stop (the pipe still unread; a larger pipe then, so that the exit's second of flushing is
        # not spent in 4 KiB round trips on a loaded host).
        fcntl.fcntl(r, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while p.poll() is None and b"received SIGTERM" not in out:
            self.assertLess(time.monotonic(), deadline, "SIGTERM did not stop a broker whose stderr is not read")
            if select.select([r], [], [], 0.05)[0]:
                out += os.read(r, 65536)  # read from here on: what waited goes out, the notice of the drops last
        while True:
            self.assertLess(time.monotonic(), deadline, "no end of the broker's output")
            if not select.select([r], [], [], 0.1)[0]:
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            out += chunk
        self.assertEqual(p.wait(5), 0)
        text = out.decode("utf-8", "replace")
        # Whole lines only, and the ones dropped said so.
        for line in text.splitlines():
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \[", "a line cut or run together")
        self.assertRegex(text, r"\d+ log lines dropped: stderr did not take them")

    def test_a_stderr_whose_reader_has_gone_does_not_kill_the_broker(self):
        # A configuration's warning written to a pipe with no reader killed the process with SIGPIPE before it
        # could exit 1 for a bad configuration (or start, for a warning only).
        r, w = os.pipe()
        os.close(r)
        try:
            bad = subprocess.run([broker_bin(), "--listen", "127.0.0.1:0", "--no-admin", "--set",
                                  "mqtt.max_inflight=0"], stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                                 timeout=START_TIMEOUT)
            self.assertEqual(bad.returncode, 1)
            p = subprocess.Popen([broker_bin(), "--listen", "127.0.0.1:0", "--no-admin", "--set",
                                  "mqtt.max_inflight=0", "--set", "mqtt.max_inflight=5"],
                                 stdin=subprocess.DEVNULL, stdout=w, stderr=w)
        finally:
            os.close(w)
        try:
            time.sleep(1.0)
            self.assertIsNone(p.poll(), f"the broker ended: {p.returncode}")
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(10), 0)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)


if __name__ == "__main__":
    unittest.main()
