"""The performance instruments stay honest: perf/loadgen against the real broker reports exact counts (nothing lost,
nothing duplicated, the broker's CPU read from /proc), perf/forwarder (the do-nothing ceiling) forwards QoS 0 and 1 and
answers everything else deterministically, perf/compare --ceiling runs all three end to end, and perf/retained_read
counts a large retained read exactly. Short runs only:
these check the tools, they measure nothing."""

import importlib.machinery
import importlib.util
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import mqtt_raw as m
from broker import REPO, BrokerTest, broker_bin, home_shard


def tool(env: str, name: str) -> str:
    return os.environ.get(env) or str(REPO / "build" / "perf" / name)


LOADGEN = tool("LOADGEN_BIN", "loadgen")
FORWARDER = tool("FORWARDER_BIN", "forwarder")


def loadgen(port: int, *args: str, pid: int = 0, duration: str = "0.5") -> tuple:
    """Runs loadgen for a short window; returns (exit code, parsed JSON line or None, stderr)."""
    cmd = [LOADGEN, "--port", str(port), "--warmup", "0.2", "--duration", duration, "--json"] + list(args)
    if pid:
        cmd += ["--broker-pid", str(pid)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
    return run.returncode, (json.loads(lines[-1]) if lines else None), run.stderr


def run_with_a_stall(port: int, args: list, broker_pid: int = 0) -> tuple:
    """loadgen at a fixed rate (0.2 s warm-up, 1 s measured) with loadgen itself, or the broker, stopped with
    SIGSTOP for 0.3 s, 0.3 s into the measured second (the broker when its pid is given); returns (exit code,
    JSON, stderr)."""
    cmd = [LOADGEN, "--port", str(port), "--warmup", "0.2", "--duration", "1", "--json"] + args
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    head, rest = b"", b""
    try:
        # The measured second starts 0.02 s + the warm-up after loadgen says its connections are up (however
        # long connecting took).
        deadline = time.monotonic() + 10
        while b"connections up in" not in head and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                break
            head += chunk
        assert b"connections up in" in head, head
        pid = broker_pid or proc.pid
        time.sleep(0.22 + 0.3)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(0.3)
        finally:
            os.kill(pid, signal.SIGCONT)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [l for l in out.decode().splitlines() if l.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else None), (head + rest).decode(errors="replace")


class Forwarder:
    """perf/forwarder on 127.0.0.1 port 0 (read back from its ready line); stopped with SIGTERM."""

    def __init__(self):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([FORWARDER, "--listen", "127.0.0.1:0"], stdout=self.log, stderr=self.log)
        self.port = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self.port and self.proc.poll() is None:
            m = re.search(rb"forwarder ready on 127\.0\.0\.1:(\d+)", self.text().encode())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.02)
        if not self.port:
            self.stop()
            raise AssertionError(f"forwarder did not start: {self.text()}")

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


class LoadgenAgainstRingmq(BrokerTest):
    def check_exact(self, data: dict) -> None:
        self.assertEqual(data["status"], "ok", data)
        self.assertGreater(data["delivered"], 0)
        self.assertEqual(data["received"], data["expected"])
        self.assertEqual((data["lost"], data["duplicates"], data["reordered"]), (0, 0, 0))

    def test_kernel_stamps_measure_latency_to_the_kernels_receipt(self):
        # At 2000 msg/s the generator sleeps between messages, so its wake-up is in the plain latency and not in the
        # kernel-stamped one, which is never the later of the two for a message (so for any percentile either).
        rc, data, err = loadgen(self.port, "--scenario", "one-to-one", "--rate", "2000", "--kernel-stamps")
        self.assertEqual(rc, 0, err)
        self.check_exact(data)
        self.assertIs(data["kernel_stamps"], True)
        self.assertEqual(data["klat_samples"], data["lat_samples"])
        for q in ("p50", "p90", "p99", "p999"):
            self.assertGreater(data[f"klat_{q}_us"], 0, q)  # a wrong clock offset gives 0 (clamped) or seconds
            self.assertLessEqual(data[f"klat_{q}_us"], data[f"lat_{q}_us"], q)
        self.assertLess(data["klat_p50_us"], 5000)
        rc, plain, err = loadgen(self.port, "--scenario", "one-to-one", "--rate", "2000")
        self.assertEqual(rc, 0, err)
        self.assertEqual((plain["kernel_stamps"], plain["klat_samples"], plain["klat_p99_us"]), (False, None, None))

    def test_a_stalled_generator_shows_in_the_latency_from_the_schedule(self):
        # loadgen stopped for 0.3 s in its measured second at 1000 msg/s: the sends due meanwhile go late, in a
        # burst, and each is then quick to arrive. Measured from the actual send (lat_*) that stall hides; measured
        # from the schedule (ilat_*) the 30% of the messages that went late carry up to 0.3 s of waiting. The stop
        # also catches messages in flight, which both figures see, but at 1000 msg/s those are a handful.
        rc, data, err = run_with_a_stall(self.port, ["--scenario", "one-to-one", "--rate", "1000"])
        self.assertEqual(rc, 0, err)
        self.check_exact(data)
        self.assertEqual(data["rate_lag_resets"], 0, data)
        self.assertGreater(data["ilat_p90_us"], 100_000, data)
        self.assertGreater(data["ilat_max_us"], 200_000, data)
        self.assertLess(data["lat_p90_us"], 50_000, data)
        for q in ("p50", "p90", "p99", "p999"):
            self.assertGreaterEqual(data[f"ilat_{q}_us"], data[f"lat_{q}_us"] * 0.98, q)
        self.assertIn("schedule p50", err)
        # A closed loop has no schedule.
        rc, closed, err = loadgen(self.port, "--scenario", "one-to-one")
        self.assertEqual(rc, 0, err)
        self.assertEqual((closed["ilat_p50_us"], closed["ilat_p99_us"], closed["ilat_max_us"]), (None, None, None))

    def test_catch_up_sends_what_a_stalled_broker_held_back_late_instead_of_skipping_it(self):
        # QoS 1 with 4 in flight at 1000 msg/s, the broker stopped for 0.3 s: the window fills within 4 ms. Without
        # --catch-up the ~300 slots due meanwhile are skipped and leave no sample; with it they go, late, as PUBACKs
        # reopen the window, and the latency from the schedule carries their wait while the plain latency does not.
        args = ["--scenario", "one-to-one", "--qos", "1", "--inflight", "4", "--rate", "1000"]
        rc, skipped, err = run_with_a_stall(self.port, args, self.broker.proc.pid)
        self.assertEqual(rc, 0, err)
        self.check_exact(skipped)
        self.assertIs(skipped["catch_up"], False)
        self.assertGreater(skipped["send_skipped"], 200, skipped)
        self.assertLess(skipped["ilat_p90_us"], 50_000, skipped)
        rc, caught, err = run_with_a_stall(self.port, args + ["--catch-up"], self.broker.proc.pid)
        self.assertEqual(rc, 0, err)
        self.check_exact(caught)
        self.assertIs(caught["catch_up"], True)
        self.assertEqual((caught["send_skipped"], caught["rate_lag_resets"]), (0, 0), caught)
        self.assertGreater(caught["sent"], skipped["sent"] + 200, (caught, skipped))
        self.assertGreater(caught["ilat_p90_us"], 100_000, caught)
        self.assertGreater(caught["ilat_max_us"], 200_000, caught)
        self.assertLess(caught["lat_p90_us"], 50_000, caught)
        # Only at a fixed rate.
        rc, _, err = loadgen(self.port, "--scenario", "one-to-one", "--catch-up")
        self.assertEqual(rc, 1, err)
        self.assertIn("--catch-up needs publishers at a fixed rate", err)

    def test_a_rate_the_generator_cannot_keep_is_reported(self):
        # 200 publishers asking 100,000 msg/s each: far past what one generator thread sends. The slots a schedule
        # more than a second behind jumps over count as skipped (they were in no counter), and the summary says the
        # load was lower than asked.
        rc, data, err = loadgen(self.port, "--scenario", "pairs", "--publishers", "200", "--rate", "100000",
                                duration="1.5")
        self.assertEqual(rc, 0, err)
        self.assertGreater(data["rate_lag_resets"], 0, data)
        self.assertGreater(data["send_skipped"], 0, data)
        self.assertEqual(data["sends_scheduled"], 200 * 100000 * 1.5)
        self.assertLess(data["sent"], 0.95 * data["sends_scheduled"], data)
        self.assertLessEqual(data["sent"] + data["send_skipped"], data["sends_scheduled"] * 1.001, data)
        self.assertIn("the generator did not keep the rate", err)
        # A rate it keeps says nothing of the kind.
        rc, data, err = loadgen(self.port, "--scenario", "pairs", "--publishers", "2", "--rate", "500")
        self.assertEqual(rc, 0, err)
        self.assertEqual(data["send_skipped"], 0, data)
        self.assertNotIn("did not keep the rate", err)

    def test_one_to_one_qos0_reports_broker_cpu(self):
        rc, data, err = loadgen(self.port, "--scenario", "one-to-one", pid=self.broker.proc.pid)
        self.assertEqual(rc, 0, err)
        self.check_exact(data)
        self.assertGreater(data["broker_cpu_s"], 0)
        self.assertAlmostEqual(data["deliveries_per_cpu_s"], data["delivered"] / data["broker_cpu_s"],
                               delta=data["deliveries_per_cpu_s"] * 0.01)
        # Split into its user and system parts; a broker's sends and receives are system time.
        self.assertAlmostEqual(data["broker_user_s"] + data["broker_sys_s"], data["broker_cpu_s"], places=3)
        self.assertGreater(data["broker_sys_s"], 0)
        self.assertGreaterEqual(data["broker_user_s"], 0)
        self.assertGreater(data["broker_rss_bytes"], 0)
        # The closed loop idles the broker between batches: it sleeps, and never more often than it delivers.
        self.assertGreater(data["broker_sleeps_per_s"], 0)
        self.assertGreaterEqual(data["deliveries_per_broker_sleep"], 1)
        self.assertAlmostEqual(data["deliveries_per_broker_sleep"],
                               data["msgs_per_s"] / data["broker_sleeps_per_s"],
                               delta=data["deliveries_per_broker_sleep"] * 0.01)

    def test_idle_connections_report_rss_and_its_anonymous_part(self):
        rc, data, err = loadgen(self.port, "--scenario", "idle", "--idle", "300", pid=self.broker.proc.pid)
        self.assertEqual(rc, 0, err)
        self.assertEqual(data["status"], "ok", data)
        # Each connection costs the broker some heap (its session and buffers), and RssAnon is part of VmRSS: the
        # anonymous figure is above zero and not above the whole (942 and 956 seen on a fresh broker).
        self.assertGreater(data["rss_per_conn_bytes"], 0, data)
        self.assertGreater(data["rss_anon_per_conn_bytes"], 0, data)
        self.assertLessEqual(data["rss_anon_per_conn_bytes"], data["rss_per_conn_bytes"] + 1, data)
        self.assertIn("of it anonymous) per connection (300 connections)", err)

    def test_fanout_qos1_delivers_every_copy(self):
        rc, data, err = loadgen(self.port, "--scenario", "fanout", "--subscribers", "10", "--qos", "1")
        self.assertEqual(rc, 0, err)
        self.check_exact(data)
        self.assertEqual(data["expected"], data["sent"] * 10)

    def test_pairs_qos2(self):
        rc, data, err = loadgen(self.port, "--scenario", "pairs", "--publishers", "3", "--qos", "2")
        self.assertEqual(rc, 0, err)
        self.check_exact(data)

    def test_fanin_qos1_past_the_queue_loses_nothing(self):
        # 20 publishers with 64 messages each in flight to one subscriber whose queue holds 100: the publishers are
        # held while it drains (mqtt.publisher_hold_ms), so every message arrives. Without the hold the queue drops.
        # (A hold of 10 s: the default second could run out where this host stalls the generator that long.)
        self.use_broker({"mqtt.max_queued_messages": 100, "mqtt.publisher_hold_ms": 10000})
        rc, data, err = loadgen(self.port, "--scenario", "fanin", "--publishers", "20", "--qos", "1")
        self.assertEqual(rc, 0, err)
        self.check_exact(data)
        self.assertRegex(self.broker.log(), rb"queued, three quarters of its limit: client \S+ is not read until")
        self.assertNotIn(b"dropped", self.broker.log())
        self.use_broker({"mqtt.max_queued_messages": 100, "mqtt.publisher_hold_ms": 0})
        rc, data, err = loadgen(self.port, "--scenario", "fanin", "--publishers", "20", "--qos", "1")
        self.assertEqual(rc, 0, err)
        self.assertGreater(data["lost"], 0, data)
        self.assertIn(b"queue full (mqtt.max_queued_messages = 100)", self.broker.log())

    def test_retained_answers_each_subscribe_with_its_own_retained_message(self):
        # loadgen checks every answer: the retained message on exactly the topic asked for, in SUBSCRIBE order.
        rc, data, err = loadgen(self.port, "--scenario", "retained", "--retained", "3000", "--subscribers", "2",
                                "--inflight", "8", pid=self.broker.proc.pid)
        self.assertEqual(rc, 0, err)
        self.check_exact(data)
        self.assertEqual((data["subscribers"], data["publishers"]), (2, 0))
        self.assertIn("3000 retained topics stored", err)
        self.assertGreater(data["broker_cpu_s"], 0)

    def test_retained_fails_on_an_answer_it_did_not_ask_for(self):
        # A second retained topic under r/1 answers the SUBSCRIBE to lgt/r/1/# twice: the run is void, not counted.
        self.client("extra").publish("lgt/r/1/extra", b"x", qos=1, retain=True)
        rc, data, err = loadgen(self.port, "--scenario", "retained", "--retained", "3", "--topic-prefix", "lgt")
        self.assertEqual(rc, 2, err)
        self.assertIn("expected the retained message on lgt/r/", err)
        self.assertEqual(data["status"], "error")

    def test_retained_reports_a_broker_that_does_not_store_them(self):
        # The forwarder acknowledges the retained set and keeps none of it, and refuses the querier's wildcard: the
        # run fails and says so.
        fwd = Forwarder()
        try:
            rc, data, err = loadgen(fwd.port, "--scenario", "retained", "--retained", "100")
        finally:
            fwd.stop()
        self.assertEqual(rc, 2, err)
        self.assertIn("SUBACK refused the subscription", err)
        self.assertEqual(data["status"], "error")

    def test_poll_keeps_the_generator_awake(self):
        # At 100 msg/s the generator idles nearly all the time: asleep without --poll, spinning with it.
        args = ("--scenario", "one-to-one", "--rate", "100")
        rc, slept, err = loadgen(self.port, *args, duration="1")
        self.assertEqual(rc, 0, err)
        self.check_exact(slept)
        rc, polled, err = loadgen(self.port, *args, "--poll", duration="1")
        self.assertEqual(rc, 0, err)
        self.check_exact(polled)
        self.assertEqual((slept["poll"], polled["poll"]), (False, True))
        self.assertLess(slept["loadgen_cpu_s"], 0.3)
        # Counted in voluntary context switches, not CPU time, which a host stealing the core lowers: sleeping, one
        # or more per message 10 ms apart (262 seen); polling, the controller's few (5 seen).
        self.assertGreaterEqual(slept["loadgen_sleeps"], 100, slept)
        self.assertLess(polled["loadgen_sleeps"], 50, polled)


DROP_LINE = rb"queue full \(mqtt.max_queued_messages = 100\), message on \S+ dropped"


class LoadgenFaninAcrossShards(BrokerTest):
    """The fan-in of LoadgenAgainstRingmq on two shards: the publishers homed on the other shard than the subscriber are
    held there too (a gate per topic, credit from the subscriber's shard)."""

    SHARDS = 2
    AUTO_START = False

    def test_fanin_qos1_past_the_queue_loses_nothing_across_shards(self):
        # Within the measured window nothing is lost, reordered or repeated, and the broker dropped nothing in the
        # warm-up either: its first burst of 20 x 64 messages against a queue of 100, routed by the other shard
        # before a gate closed there (one round trip per topic), is taken past the queue's slack as on its way (a
        # burst of 13 times the limit: mqtt.publisher_hold_burst = 16).
        self.use_broker(
            {"mqtt.max_queued_messages": 100, "mqtt.publisher_hold_ms": 10000, "mqtt.publisher_hold_burst": 16})
        rc, data, err = loadgen(self.port, "--scenario", "fanin", "--publishers", "20", "--qos", "1")
        self.assertEqual(rc, 0, err)
        self.assertEqual(data["status"], "ok", data)
        self.assertGreater(data["delivered"], 0)
        self.assertEqual((data["lost"], data["duplicates"], data["reordered"]), (0, 0, 0), data)
        log = self.broker.log()
        # (Its first gate closed is logged whatever the shard's own holds: each kind has its own count of lines.)
        self.assertRegex(log, rb"queued, [^:]+: shard \d holds its clients publishing \S+ to it until")
        self.assertRegex(log, rb"client \S+ is not read until a queue on shard \d")
        self.assertNotRegex(log, DROP_LINE)
        self.use_broker({"mqtt.max_queued_messages": 100, "mqtt.publisher_hold_ms": 0})
        rc, data, err = loadgen(self.port, "--scenario", "fanin", "--publishers", "20", "--qos", "1")
        self.assertEqual(rc, 0, err)
        self.assertGreater(data["lost"], 0, data)
        self.assertRegex(self.broker.log(), DROP_LINE)


    def test_a_client_prefix_puts_the_clients_on_the_same_shards_each_run(self):
        # ringmq homes a client by a hash of its id: with --client-prefix the fan-in's subscriber (<prefix>-0-0) lands
        # where the prefix says, whatever loadgen's pid.
        self.use_broker({})
        for shard in (0, 1):
            prefix = next(p for p in (f"fix{i}" for i in range(100)) if home_shard(f"{p}-0-0", 2) == shard)
            rc, data, err = loadgen(self.port, "--scenario", "fanin", "--publishers", "4", "--client-prefix", prefix)
            self.assertEqual(rc, 0, err)
            self.assertEqual(data["status"], "ok", data)
            self.assertRegex(self.broker.log(), rb"shard%d: client %s-0-0 connected" % (shard, prefix.encode()))
        run = subprocess.run([LOADGEN, "--port", str(self.port), "--client-prefix", "x" * 101], capture_output=True,
                             text=True, timeout=30)
        self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
        self.assertIn("--client-prefix must be under 100 bytes", run.stderr)


class ScriptedBroker:
    """A minimal MQTT 3.1.1 broker for one loadgen run at QoS 0, in a thread: it answers CONNECT, SUBSCRIBE and
    PINGREQ and forwards each PUBLISH to the subscriber as `script(seq)` says: a list of the sequence numbers to
    deliver at that point (each a copy of the PUBLISH that carried it), so that loadgen's integrity counts can be
    checked against a known reordering, copy and loss."""

    def __init__(self, script):
        self.script = script
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1024)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.frames = {}  # seq -> PUBLISH frame
        self.sub = None
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ)
        bufs = {}
        try:
            self.serve(sel, bufs)
        finally:
            sel.close()
            for c in bufs:
                c.close()

    def serve(self, sel, bufs):
        while not self.stopping:
            for key, _ in sel.select(0.1):
                if key.fileobj is self.lsock:
                    try:
                        c, _ = self.lsock.accept()
                    except socket.timeout:
                        continue
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    bufs[c] = b""
                    sel.register(c, selectors.EVENT_READ)
                    continue
                c = key.fileobj
                try:
                    data = self.read(c)
                except OSError:  # loadgen may close with bytes unread: a reset, not a failure of the test
                    data = b""
                if not data:
                    sel.unregister(c)
                    c.close()
                    continue
                bufs[c] += data
                while True:
                    got = m.decode_remaining_length(bufs[c])
                    if got is None:
                        break
                    length, used = got
                    at = 1 + used
                    if len(bufs[c]) < at + length:
                        break
                    frame, bufs[c] = bufs[c][: at + length], bufs[c][at + length :]
                    self.handle(c, frame, frame[at:])
                self.after_read(bufs[c])

    def read(self, c) -> bytes:
        return c.recv(65536)

    def after_read(self, left: bytes):
        pass

    def handle(self, c, frame, body):
        kind = frame[0] >> 4
        if kind == 1:
            c.sendall(m.connack())
        elif kind == 8:
            self.sub = c
            c.sendall(m.suback(int.from_bytes(body[:2], "big"), [0]))
        elif kind == 12:
            c.sendall(bytes([0xD0, 0]))
        elif kind == 3:
            tlen = int.from_bytes(body[:2], "big")
            # The low 40 bits: the high 24 carry how late the send was on loadgen's schedule.
            seq = int.from_bytes(body[2 + tlen + 8 : 2 + tlen + 16], "little") & ((1 << 40) - 1)
            self.frames[seq] = frame
            out = b"".join(self.frames[k] for k in self.script(seq))
            if out:
                self.sub.sendall(out)

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.lsock.close()


class LoadgenIntegrityCounts(unittest.TestCase):
    def test_a_copy_of_an_older_message_is_a_duplicate_and_does_not_hide_a_loss(self):
        # At 200 msg/s after 0.2 s of warm-up, numbers 100-150 are sent inside the measured second. 100 comes after
        # 103 (reordered); 110 comes again after 115 and 120 twice in a row (duplicates); 130 never comes (lost).
        # 140-145 are held, then after 150 come 142 (splits the gap), 140 and 145 (its ends), 143 twice: 4 more
        # reordered, 1 more duplicate, and 141 and 144 lost.
        late = {103: [103, 100], 115: [115, 110], 120: [120, 120], 150: [150, 142, 140, 145, 143, 143]}

        def script(seq):
            return [] if seq == 100 or seq == 130 or 140 <= seq <= 145 else late.get(seq, [seq])

        fake = ScriptedBroker(script)
        self.addCleanup(fake.stop)
        rc, data, err = loadgen(fake.port, "--scenario", "one-to-one", "--rate", "200", duration="1")
        self.assertEqual(rc, 0, err)
        self.assertGreater(data["expected"], 150, data)
        self.assertEqual((data["reordered"], data["duplicates"], data["lost"]), (5, 3, 3), data)
        self.assertEqual(data["received"], data["expected"] - 3)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; this Python does not name it


class StampingBroker(ScriptedBroker):
    """A ScriptedBroker that forwards nothing and keeps, for each read that ended on a PUBLISH's last byte, the kernel's
    receive time of those bytes (SO_TIMESTAMPNS, taken as loopback hands them over in the sender's send()) minus the
    send time in that PUBLISH's payload (us), and the greatest lateness on loadgen's schedule of the read's PUBLISHes
    (us). A read's stamp is that of the last bytes it took (later arrivals carry theirs into the segments
    they join), so it is exact only for the read's last message: the earlier ones may have come well before, when
    this thread reads slowly."""

    def __init__(self):
        # Kernel stamps are CLOCK_REALTIME, the payload's CLOCK_MONOTONIC: the offset from the tightest of a few reads.
        best = None
        for _ in range(20):
            a = time.monotonic_ns()
            r = time.clock_gettime_ns(time.CLOCK_REALTIME)
            b = time.monotonic_ns()
            if best is None or b - a < best[0]:
                best = (b - a, r - (a + b) // 2)
        self.offset = best[1]
        self.rx_ns = 0
        self.in_read = []  # (receipt - send stamp in us, lateness in us) of each PUBLISH of the current read
        self.samples = []  # (gap, greatest lateness) of each read's last PUBLISH
        super().__init__(lambda seq: [])
        self.lsock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # accepted sockets inherit it

    def read(self, c) -> bytes:
        data, anc, _, _ = c.recvmsg(65536, socket.CMSG_SPACE(16))
        for level, kind, d in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", d[:16])
                self.rx_ns = sec * 1_000_000_000 + nsec - self.offset
        self.in_read = []
        return data

    def handle(self, c, frame, body):
        if frame[0] >> 4 != 3:
            self.in_read = []  # the read's last bytes are not a PUBLISH's: its stamp is not theirs
            return super().handle(c, frame, body)
        tlen = int.from_bytes(body[:2], "big")
        stamp, word = struct.unpack("<qQ", body[2 + tlen : 2 + tlen + 16])
        self.in_read.append(((self.rx_ns - stamp) / 1000, word >> 40))

    def after_read(self, left: bytes):
        if self.in_read and not left:
            self.samples.append((self.in_read[-1][0], max(late for _, late in self.in_read)))
        self.in_read = []


class LoadgenSendStamps(unittest.TestCase):
    def test_a_message_carries_the_time_of_its_send_not_of_its_queueing(self):
        # 500 publishers at 20 msg/s, loadgen stopped for 0.3 s: the ~3,000 sends due meanwhile are queued in one turn
        # and written connection by connection. Each carried the turn's start as its send time, so a later
        # connection's messages counted the generator's own send() calls before them (hundreds: milliseconds) as the
        # broker's latency. Stamped at their own send(), they reach the kernel's receipt within that one call.
        # Only a read's last message has its own receipt time (CI once read the burst with the next messages, 50 ms
        # on: p90 90 ms), so a connection gives one sample from the reads that took its burst.
        fake = StampingBroker()
        self.addCleanup(fake.stop)
        run_with_a_stall(fake.port, ["--scenario", "pairs", "--publishers", "500", "--rate", "20"])
        burst = sorted(gap for gap, late in fake.samples if late > 100_000)
        self.assertGreater(len(burst), 200, f"{len(fake.samples)} reads, {len(burst)} with messages sent late")
        p90 = burst[len(burst) * 9 // 10]
        self.assertGreater(burst[0], -50, "the stamps' clock offset is off")
        self.assertLess(p90, 1000, f"p90 {p90:.0f} us from send stamp to the kernel's receipt (max {burst[-1]:.0f})")


class ForwarderCeiling(unittest.TestCase):
    def setUp(self):
        self.fwd = Forwarder()
        self.addCleanup(self.fwd.stop)

    def test_fanout_qos0_is_forwarded_exactly(self):
        rc, data, err = loadgen(self.fwd.port, "--scenario", "fanout", "--subscribers", "10", pid=self.fwd.proc.pid)
        self.assertEqual(rc, 0, err + self.fwd.text())
        self.assertEqual(data["status"], "ok")
        self.assertGreater(data["delivered"], 0)
        self.assertEqual((data["lost"], data["duplicates"], data["reordered"]), (0, 0, 0))
        self.assertEqual(data["received"], data["expected"])
        self.assertGreater(data["broker_cpu_s"], 0)

    def test_wildcard_filter_is_refused_in_the_suback(self):
        rc, data, err = loadgen(self.fwd.port, "--scenario", "fanin", "--publishers", "2")
        self.assertEqual(rc, 2, err)
        self.assertIn("SUBACK refused the subscription", err + json.dumps(data))
        self.assertEqual(self.fwd.proc.poll(), None, "the forwarder must keep running")

    def test_qos2_publish_closes_the_publisher_with_a_reason(self):
        rc, _, err = loadgen(self.fwd.port, "--scenario", "one-to-one", "--qos", "2")
        self.assertEqual(rc, 2, err)
        self.assertIn("only QoS 0 and 1 PUBLISH are forwarded", self.fwd.text())
        self.assertEqual(self.fwd.proc.poll(), None)

    def test_qos1_closed_loops_are_acknowledged_and_forwarded_exactly(self):
        # A closed loop moves only as the publisher's PUBACKs come back and the subscribers' copies arrive.
        for args in (("--scenario", "one-to-one"), ("--scenario", "fanout", "--subscribers", "10")):
            rc, data, err = loadgen(self.fwd.port, *args, "--qos", "1", pid=self.fwd.proc.pid)
            self.assertEqual(rc, 0, err + self.fwd.text())
            self.assertEqual(data["status"], "ok", args)
            self.assertGreater(data["delivered"], 1000, args)
            self.assertEqual((data["lost"], data["duplicates"], data["reordered"]), (0, 0, 0), args)
            self.assertEqual(data["received"], data["expected"], args)
        self.assertEqual(self.fwd.proc.poll(), None)

    def test_qos1_publish_gets_its_puback_and_goes_out_verbatim(self):
        sub = m.RawClient(self.fwd.port)
        self.addCleanup(sub.close)
        sub.send(m.connect("s"))
        sub.expect(m.connack())
        sub.send(m.subscribe(3, [("q/1", 1), ("q/2", 2), ("q/0", 0)]))
        sub.expect(m.suback(3, [1, 1, 0]))  # QoS 2 is granted as 1
        pub = m.RawClient(self.fwd.port)
        self.addCleanup(pub.close)
        pub.send(m.connect("p"))
        pub.expect(m.connack())
        frames = m.publish("q/1", b"a", qos=1, pid=41) + m.publish("q/2", b"b", qos=1, pid=42)
        pub.send(frames)
        pub.expect(m.puback(41))
        pub.expect(m.puback(42))
        got = sub.read_packet().raw() + sub.read_packet().raw()
        self.assertEqual(got, frames)
        sub.send(m.puback(41) + m.puback(42))  # read and dropped: the connection stays
        sub.send(m.pingreq())
        sub.expect(bytes([0xD0, 0]))
        pub.expect_no_packet(0.3)

    def test_suback_for_many_filters_and_duplicates_deliver_once(self):
        sub = m.RawClient(self.fwd.port)
        self.addCleanup(sub.close)
        sub.send(m.connect("s"))
        sub.expect(m.connack())
        filters = [(f"t/{i}", 0) for i in range(130)] + [("t/+", 0)]  # remaining length > 127; one wildcard
        sub.send(m.subscribe(7, filters))
        sub.expect(m.suback(7, [0] * 130 + [0x80]))
        sub.send(m.subscribe(8, [("t/5", 0)]))  # again: still one copy per message
        sub.expect(m.suback(8, [0]))
        pub = m.RawClient(self.fwd.port)
        self.addCleanup(pub.close)
        pub.send(m.connect("p"))
        pub.expect(m.connack())
        pub.send(m.publish("t/5", b"one") + m.publish("t/129", b"two"))
        self.assertEqual(sub.recv_publish().payload, b"one")
        self.assertEqual(sub.recv_publish().payload, b"two")
        sub.expect_no_packet(0.3)

    def test_subscribe_without_filters_closes_only_that_client(self):
        bad = m.RawClient(self.fwd.port)
        self.addCleanup(bad.close)
        bad.send(m.connect("bad"))
        bad.expect(m.connack())
        bad.send(m.packet(8, 0x02, m.u16(1)))  # SUBSCRIBE with a packet id and no filter
        bad.expect_closed()
        good = m.RawClient(self.fwd.port)
        self.addCleanup(good.close)
        good.send(m.connect("good") + m.pingreq())
        good.expect(m.connack())
        good.expect(bytes([0xD0, 0]))

    def test_stops_cleanly_on_sigterm(self):
        self.assertEqual(self.fwd.stop(), 0)


class ForwarderArguments(unittest.TestCase):
    def test_non_loopback_listen_is_refused(self):
        run = subprocess.run([FORWARDER, "--listen", "10.1.2.3:1883"], capture_output=True, text=True, timeout=10)
        self.assertEqual(run.returncode, 2)
        self.assertIn("--listen must be 127.x.x.x:PORT", run.stderr)


def run_idle_scale(args: list[str], nofile: int, timeout: float) -> tuple:
    """Runs perf/idle_scale --json with RLIMIT_NOFILE at nofile for it, the broker and the generators; returns (exit
    code, parsed JSON line or None, stderr)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    env = dict(os.environ, RINGMQ_BIN=broker_bin(), LOADGEN_BIN=LOADGEN)
    run = subprocess.run([sys.executable, str(REPO / "perf" / "idle_scale"), "--json"] + args, capture_output=True,
                         text=True, timeout=timeout, env=env, preexec_fn=limit)
    lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
    return run.returncode, (json.loads(lines[-1]) if lines else None), run.stderr


class IdleScale(unittest.TestCase):
    """perf/idle_scale holds more idle connections than one process may open descriptors, from several generators,
    on a broker whose shards keep the sockets in their io_uring file tables (node.fixed_files)."""

    def test_more_connections_than_the_open_file_limit(self):
        rc, data, err = run_idle_scale(["--connections", "3000", "--timeout", "60"], nofile=1024, timeout=90)
        self.assertEqual(rc, 0, err)
        # 824 connections a generator (200 under the limit) and 10% to spare over 1024 slots a shard.
        self.assertEqual((data["connections"], data["open_file_limit"], data["generators"], data["shards"]),
                         (3000, 1024, 4, 4), data)
        self.assertLessEqual(data["broker_fds_after"], data["broker_fds_before"] + 4, data)
        self.assertEqual(data["file_table_full_warnings"], 0, data)
        self.assertGreater(data["rss_per_conn_bytes"], 100, data)
        self.assertLess(data["rss_per_conn_bytes"], 4096, data)
        self.assertIn("3000 idle connections from 4 generators on ringmq --shards 4", err)

    def test_without_the_file_tables_the_limit_holds(self):
        rc, data, err = run_idle_scale(["--connections", "3000", "--timeout", "6", "--set", "node.fixed_files=false"],
                                       nofile=1024, timeout=60)
        self.assertEqual(rc, 2, err)
        self.assertIsNone(data)
        self.assertIn("timed out before every connection was up", err)
        # And it is the broker's descriptors that ran out, not only a slow start.
        self.assertIn("accept failed: Too many open files", err)

    def test_loadgen_refuses_a_first_source_without_room_for_its_connections(self):
        run = subprocess.run([LOADGEN, "--port", "1", "--scenario", "idle", "--idle", "9000", "--first-source", "254"],
                             capture_output=True, text=True, timeout=10)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("--first-source 254 leaves too few source addresses for 9000 connections", run.stderr)


def cmp_fmt(v) -> str:
    """perf/compare's own way of showing a figure."""
    return load_compare().fmt(v)


def run_compare(test: unittest.TestCase, args: list[str], timeout: float, preexec_fn=None):
    """Runs perf/compare --quick with args and this build's binaries; asserts it exits 0 and returns (run, JSON)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cmp.json")
        env = dict(os.environ, FORWARDER_BIN=FORWARDER, LOADGEN_BIN=LOADGEN)
        run = subprocess.run([sys.executable, str(REPO / "perf" / "compare"), "--quick", "--json", out] + args,
                             capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=preexec_fn)
        test.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        with open(out) as f:
            return run, json.load(f)


class CompareWithCeiling(unittest.TestCase):
    def test_quick_run_has_all_three_brokers(self):
        run, doc = run_compare(self, ["--only", "1to1-q0", "--ceiling"], timeout=50)
        runs = {r["broker"]: r for r in doc["runs"]}
        self.assertEqual(sorted(runs), ["forwarder", "mosquitto", "ringmq"])
        for name, r in runs.items():
            self.assertEqual(r["result"]["status"], "ok", name)
            self.assertEqual(r["result"]["lost"], 0, name)
        head = doc["table"][0]
        self.assertIn("forwarder", head)
        self.assertIn("ringmq/fwd", head)
        row = next(r for r in doc["table"][1:] if r[1] == "deliveries per broker CPU-s")
        fwd = runs["forwarder"]["result"]["deliveries_per_cpu_s"]
        ours = runs["ringmq"]["result"]["deliveries_per_cpu_s"]
        self.assertEqual(row[head.index("ringmq/fwd")], f"{ours / fwd:.3g}x")
        # The 1->1 target is checked against this run's own ratio; the others were not run.
        target = next(t for t in doc["targets"] if t["scenario"] == "1to1-q0")
        ratio = ours / runs["mosquitto"]["result"]["deliveries_per_cpu_s"]
        self.assertAlmostEqual(target["value"], ratio, places=9)
        self.assertEqual(target["verdict"], "met" if ratio >= 40 else "missed")
        self.assertEqual((target["rounds_met"], target["rounds"]), (1 if ratio >= 40 else 0, 1))
        # and beside it what the forwarder reached on the same measure, its own ratio to Mosquitto
        fwd_ratio = fwd / runs["mosquitto"]["result"]["deliveries_per_cpu_s"]
        self.assertAlmostEqual(target["forwarder"], fwd_ratio, places=9)
        self.assertEqual(target["forwarder_met"], fwd_ratio >= 40)
        self.assertEqual({t["verdict"] for t in doc["targets"] if t["scenario"] != "1to1-q0"}, {"not run"})
        self.assertIn("targets of the performance issue", run.stdout)
        self.assertIn(f"forwarder {fwd_ratio:.3g}x", run.stdout)
        # and this run's Mosquitto beside the one the ratios assume
        mosq = runs["mosquitto"]["result"]["deliveries_per_cpu_s"]
        self.assertEqual((target["mosquitto"], target["mosquitto_issue"]), (mosq, 98e3))
        self.assertIn(f"(Mosquitto {cmp_fmt(mosq)}/CPU-s here, 98.0 k in the issue)", run.stdout)
        # Mosquitto runs with its own defaults (Nagle on) unless --mosquitto-nodelay
        self.assertNotIn("set_tcp_nodelay", runs["mosquitto"]["broker_config"])


class ComparePollingGenerator(unittest.TestCase):
    def test_poll_scenario_runs_a_polling_generator_without_the_busy_warning(self):
        run, doc = run_compare(self, ["--only", "1to1-q0-poll"], timeout=40)
        results = [r["result"] for r in doc["runs"]]
        self.assertEqual(len(results), 2)
        for r in results:
            self.assertEqual((r["status"], r["poll"], r["lost"]), ("ok", True, 0))
            # Its workers never sleep (so its CPU time nears the run's length; that is not a bottleneck to report).
            self.assertLess(r["loadgen_sleeps"], 50, r)
        self.assertNotIn("1to1-q0-poll/", run.stdout)


class CompareIdlePoll(unittest.TestCase):
    def test_idle_poll_scenario_gives_the_setting_to_ringmq_only(self):
        run, doc = run_compare(self, ["--only", "1to1-q0-20k-idlepoll", "--mosquitto-nodelay"], timeout=40)
        runs = {r["broker"]: r for r in doc["runs"]}
        self.assertIn("\nset_tcp_nodelay true\n", runs["mosquitto"]["broker_config"])
        self.assertEqual(sorted(runs), ["mosquitto", "ringmq"])
        self.assertTrue(runs["ringmq"]["broker_command"].endswith(" --set node.idle_poll_us=200 --set "
                                                                  "node.idle_poll_min_batch=0 --set "
                                                                  "node.idle_poll_min_found=0 --set "
                                                                  "node.idle_poll_by_cpu=false"),
                        runs["ringmq"]["broker_command"])
        self.assertNotIn("idle_poll", runs["mosquitto"]["broker_command"])
        # the latency rows, the kernel-stamped ones among them, and the sends that left no sample
        labels = [row[1] for row in doc["table"][1:]]
        for label in ("p99 us (lower)", "p99 to kernel receipt us (lower)", "sends skipped, no sample (lower)",
                      "schedule resets after a lag (lower)", "p99 from schedule us (lower)"):
            self.assertIn(label, labels)
        self.assertIn("(1to1-q0-20k-idlepoll: ringmq --set node.idle_poll_us=200 --set node.idle_poll_min_batch=0 "
                      "--set node.idle_poll_min_found=0 --set node.idle_poll_by_cpu=false)", run.stdout)
        r = runs["ringmq"]["result"]
        self.assertEqual((r["status"], r["lost"]), ("ok", 0))
        # Not asserted here: that the broker polled. Its CPU time was 1.6-1.95 s of 2 s on a quiet host, but 0.74-0.99 s
        # in 3 of 35 runs, when the host stole its core or delayed loadgen's 50 us timers into 1 ms bursts (1239
        # broker sleeps a second, as many as a broker that never polls shows under such bursts). The shard's own
        # poll counters show what the setting does, in test_limits' idle poll tests.


class CompareCatchUp(unittest.TestCase):
    def test_catch_up_goes_to_the_fixed_rate_runs_only(self):
        run, doc = run_compare(self, ["--only", "1to1-q0-20k,1to1-q0", "--catch-up"], timeout=60)
        runs = {(r["scenario"], r["broker"]): r for r in doc["runs"]}
        self.assertEqual(len(runs), 4, sorted(runs))
        for b in ("ringmq", "mosquitto"):
            fixed, closed = runs[("1to1-q0-20k", b)], runs[("1to1-q0", b)]
            self.assertIn(" --catch-up", fixed["command"])
            self.assertIs(fixed["result"]["catch_up"], True)
            self.assertNotIn("--catch-up", closed["command"])
            self.assertIs(closed["result"]["catch_up"], False)
        self.assertIn("fixed-rate runs with loadgen --catch-up", run.stdout)
        # Under the 20k msg/s target, each broker's longest delay in its round (one stall can set a p99)
        target = next(t for t in doc["targets"] if t["scenario"] == "1to1-q0-20k")
        longest = {b: [runs[("1to1-q0-20k", b)]["result"]["lat_max_us"]] for b in ("ringmq", "mosquitto")}
        self.assertEqual(target["longest_delay_us"], longest)
        cmp = load_compare()
        self.assertIn("      longest delay in each round, ms: " + "; ".join(
            f"{b} {cmp.ms(longest[b][0])}" for b in target["longest_delay_us"]) + "\n", run.stdout)
        self.assertEqual((cmp.ms(3180.2), cmp.ms(11_000), cmp.ms(4_400), cmp.ms(99_949), cmp.ms(100_730),
                          cmp.ms(1_512_000), cmp.ms(None)), ("3.18", "11.0", "4.40", "99.9", "101", "1512", "-"))

    def test_longest_delays_go_by_round_whatever_the_order_and_failures(self):
        def run(broker, rnd, lat_max=None, scenario="s", error=False):
            e = {"scenario": scenario, "broker": broker, "round": rnd}
            if error:
                e["error"] = "loadgen failed"
            else:
                e["result"] = {} if lat_max is None else {"lat_max_us": lat_max}
            return e

        # Listed out of round order (a broker's round 2 before its round 0), and the forwarder has no round 1 at all:
        # each figure must land at its round's index, not where an append would put it.
        results = [run("mosquitto", 2, 22.0), run("forwarder", 2, 32.0), run("ringmq", 2),
                   run("forwarder", 0, 30.0), run("ringmq", 0, 10.0), run("mosquitto", 0, 20.0),
                   run("ringmq", 0, 99.0, scenario="other"),
                   run("mosquitto", 1, error=True), run("ringmq", 1, 11.0)]
        got = load_compare().longest_delays(results, "s", 3)
        self.assertEqual(got, {"ringmq": [10.0, 11.0, None], "mosquitto": [20.0, None, 22.0],
                               "forwarder": [30.0, None, 32.0]})
        self.assertEqual(list(got), ["ringmq", "mosquitto", "forwarder"])
        self.assertEqual(load_compare().longest_delays(results, "none", 3), {})

    def test_fixed_rate_tells_a_rate_from_the_closed_loop(self):
        cmp = load_compare()
        self.assertTrue(cmp.fixed_rate(["--scenario", "pairs", "--rate", "50"]))
        self.assertFalse(cmp.fixed_rate(["--scenario", "pairs", "--rate", "0"]))
        self.assertFalse(cmp.fixed_rate(["--scenario", "one-to-one"]))


class CompareInflightWindow(unittest.TestCase):
    def test_both_brokers_get_the_deeper_window_and_the_forwarder_runs_at_qos1(self):
        run, doc = run_compare(self, ["--only", "1to1-q1-inflight64", "--ceiling"], timeout=60)
        runs = {r["broker"]: r for r in doc["runs"]}
        self.assertEqual(sorted(runs), ["forwarder", "mosquitto", "ringmq"])
        self.assertTrue(runs["ringmq"]["broker_command"].endswith(" --set mqtt.max_inflight=64"),
                        runs["ringmq"]["broker_command"])
        self.assertIn("\nmax_inflight_messages 64\n", runs["mosquitto"]["broker_config"])
        self.assertIn("(1to1-q1-inflight64: Mosquitto max_inflight_messages 64)", run.stdout)
        for name, r in runs.items():
            self.assertEqual((r["result"]["status"], r["result"]["lost"], r["result"]["qos"]), ("ok", 0, 1), name)
            self.assertGreater(r["result"]["delivered"], 0, name)
        head = doc["table"][0]
        row = next(r for r in doc["table"][1:] if r[1] == "deliveries per broker CPU-s")
        fwd = runs["forwarder"]["result"]["deliveries_per_cpu_s"]
        ours = runs["ringmq"]["result"]["deliveries_per_cpu_s"]
        self.assertEqual(row[head.index("ringmq/fwd")], f"{ours / fwd:.3g}x")

    def test_mosquitto_runs_its_defaults_elsewhere(self):
        run, doc = run_compare(self, ["--only", "1to1-q1"], timeout=40)
        mosq = next(r for r in doc["runs"] if r["broker"] == "mosquitto")
        self.assertNotIn("max_inflight", mosq["broker_config"])
        self.assertIn("persistence false", mosq["broker_config"])
        self.assertNotIn("inflight64", run.stdout)

    def test_qos2_runs_both_brokers_within_mosquittos_incoming_quota_and_not_the_forwarder(self):
        # 20 in flight: past its 20 incoming QoS 2 messages awaiting PUBREL Mosquitto drops (1.5% at 64), so a loss
        # here means the scenario's window and Mosquitto's quota no longer agree.
        run, doc = run_compare(self, ["--only", "1to1-q2", "--ceiling"], timeout=40)
        runs = {r["broker"]: r for r in doc["runs"]}
        self.assertEqual(sorted(runs), ["mosquitto", "ringmq"])
        for name, r in runs.items():
            res = r["result"]
            self.assertEqual((res["status"], res["qos"], res["inflight"], res["lost"]), ("ok", 2, 20, 0), name)
            self.assertEqual(res["received"], res["expected"], name)
            self.assertGreater(res["delivered"], 0, name)


class CompareRetained(unittest.TestCase):
    def test_retained_scenario_runs_against_both_brokers(self):
        run, doc = run_compare(self, ["--only", "retained100k"], timeout=60)
        runs = {r["broker"]: r["result"] for r in doc["runs"]}
        self.assertEqual(sorted(runs), ["mosquitto", "ringmq"])
        for name, r in runs.items():
            self.assertEqual((r["status"], r["scenario"], r["lost"]), ("ok", "retained", 0), name)
            self.assertGreater(r["delivered"], 0, name)
        self.assertIn("SUBSCRIBEs answered per broker CPU-s", run.stdout)


class RetainedRead(unittest.TestCase):
    def test_a_qos1_read_beyond_the_queue_reaches_ringmq_whole(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "rr.json")
            run = subprocess.run([sys.executable, str(REPO / "perf" / "retained_read"), "--topics", "3000", "--qos", "1",
                                  "--json", out], capture_output=True, text=True, timeout=60)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            with open(out) as f:
                runs = {r["broker"]: r for r in map(json.loads, f)}
        self.assertEqual(sorted(runs), ["mosquitto", "ringmq"])
        ours = runs["ringmq"]
        self.assertEqual((ours["received"], ours["lost"], ours["without_retain"]), (3001, 0, 0))
        self.assertGreater(ours["pings"], 0)
        self.assertGreater(ours["broker_cpu_s"], 0)
        # Mosquitto keeps 1000 queued and 20 in flight and drops the rest; the tool reports it, it does not fail.
        self.assertEqual(runs["mosquitto"]["lost"], 3001 - runs["mosquitto"]["received"])
        self.assertGreater(runs["mosquitto"]["lost"], 0)
        self.assertIn("retained messages received", run.stdout)


class Broadcast(unittest.TestCase):
    def test_a_broadcast_to_more_subscribers_than_one_turns_sends_is_counted_exactly(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "bc.json")
            env = dict(os.environ, LOADGEN_BIN=LOADGEN)
            run = subprocess.run([sys.executable, str(REPO / "perf" / "broadcast"), "--subscribers", "400", "--rate",
                                  "5", "--duration", "1", "--json", out], capture_output=True, text=True, timeout=60,
                                 env=env)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            with open(out) as f:
                runs = {r["broker"]: r for r in map(json.loads, f)}
        self.assertEqual(sorted(runs), ["mosquitto", "ringmq"])
        for name, r in runs.items():
            self.assertEqual((r["scenario"], r["subscribers"], r["lost"]), ("fanout", 400, 0), name)
            self.assertEqual(r["delivered"], 400 * r["sent"], name)
            self.assertGreater(r["pings"], 0, name)
            self.assertLessEqual(r["ping_p50_ms"], r["ping_max_ms"], name)
        self.assertIn("other client's ping p99.9 ms", run.stdout)


class HoldChurn(unittest.TestCase):
    """perf/hold_churn end to end: a slow subscriber that changes its filters while its publishers are held."""

    def churn(self, *args: str) -> tuple:
        # (The tool ends within its --duration plus 2 minutes once its broker is up, and stops that broker itself.)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "hc.json")
            env = dict(os.environ, RINGMQ_BIN=broker_bin())
            run = subprocess.run([sys.executable, str(REPO / "perf" / "hold_churn"), "--json", out, *args],
                                 capture_output=True, text=True, timeout=180, env=env)
            self.assertTrue(os.path.exists(out), run.stdout + run.stderr)
            with open(out) as f:
                return run, json.load(f)

    def test_nothing_answered_is_lost_while_the_held_subscriber_changes_its_filters(self):
        run, res = self.churn("--duration", "3", "--shards", "2", "--publishers", "8", "--churners", "2", "--retain")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual((res["missing"], res["broker_exit"], res["errors"], res["drop_warnings"]), (0, 0, [], 0))
        # Retained: each churned SUBSCRIBE brings copies, which do not count as the live deliveries.
        self.assertGreater(res["retained_copies"], 0)
        # Each publisher's topics are ex/p/N/x and ex/c/N, both taken by the base filters; the subscriber reads 1000
        # a second, so its queue of 100 holds them.
        self.assertGreater(res["wanted"], 500)
        self.assertEqual(res["wanted"], res["acked"])
        self.assertGreaterEqual(res["received"], res["wanted"])

    def test_a_hundred_held_publishers_take_even_turns(self):
        # A round of 100 held publishers (20 messages each in flight, turns of 9-10 at the subscriber's 1000 a second)
        # takes longer than an eighth of the hold's limit: until stop 78 each then took whatever room its turn found,
        # and they split into two sets, one answered about three times as often as the other (fewest 39, most 125).
        run, res = self.churn("--duration", "6", "--shards", "1", "--publishers", "100", "--window", "20", "--churn",
                              "", "--churners", "0")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        # (The 10th and 90th percentiles, so that a publisher thread or two the host held back do not decide; each
        # publisher's count is at least its window, as the run fails unless every message sent is answered.)
        fewest, p10, median, p90, most = res["per_publisher"]
        self.assertGreaterEqual(p10 * 2, p90, res["per_publisher"])

    def test_messages_a_queue_drops_past_its_limit_are_counted_missing(self):
        # Without the hold the queue drops what passes its 20: the tool must see them missing and fail.
        run, res = self.churn("--duration", "2", "--shards", "1", "--publishers", "4", "--churners", "0", "--hold-ms",
                              "0", "--queue", "20")
        self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
        self.assertGreater(res["missing"], 0)
        self.assertGreater(res["drop_warnings"], 0)
        self.assertEqual(res["received"] + res["missing"], res["wanted"])
        self.assertIn("acknowledged messages missing", run.stderr)


class ProbeStats(unittest.TestCase):
    def test_a_stall_counts_for_every_ping_a_steady_client_would_have_sent_during_it(self):
        sys.path.insert(0, str(REPO / "perf"))
        from probe import PROBE_INTERVAL_S, ping_stats
        fast = [(i * 0.001, 0.0001) for i in range(1000)]  # 1000 quick answers
        stalled = fast + [(1.5, 0.1)]  # and one 100 ms stall
        self.assertEqual(ping_stats(fast, 0, 2)["ping_p99_ms"], 0.1)
        st = ping_stats(stalled, 0, 2)
        # The stall stands for 0.1 / interval pings of 100, 99.5, ... ms: 200 of the 1200 samples, so the p99 is
        # in the stall, where uncorrected it would be the quick answers' 0.1 ms.
        self.assertEqual(st["pings"], 1001)
        self.assertGreater(st["ping_p99_ms"], 90)
        self.assertAlmostEqual(st["ping_max_ms"], 100.0)
        self.assertEqual(ping_stats(stalled, 0, 1.4)["ping_max_ms"], 0.1)  # outside the window
        self.assertGreater(PROBE_INTERVAL_S, 0)

    def test_percentiles_are_nearest_rank(self):
        sys.path.insert(0, str(REPO / "perf"))
        from probe import PROBE_INTERVAL_S, ping_stats
        step = PROBE_INTERVAL_S / 200  # round trips below the interval: no stall samples are added
        hundred = [(i * 0.01, (i + 1) * step) for i in range(100)]
        st = ping_stats(hundred, 0, 2)
        self.assertAlmostEqual(st["ping_p50_ms"], 50 * step * 1e3)
        self.assertAlmostEqual(st["ping_p99_ms"], 99 * step * 1e3, msg="the 99th of 100, not the largest")
        self.assertAlmostEqual(st["ping_max_ms"], 100 * step * 1e3)


class CompareTwoShards(unittest.TestCase):
    def test_two_shard_scenario_is_weighed_against_the_single_shard_one(self):
        run, doc = run_compare(self, ["--only", "fanout100-q0,fanout100-q0-2sh"], timeout=60)
        runs = {(r["scenario"], r["broker"]): r for r in doc["runs"]}
        self.assertEqual(len(runs), 4)
        one, two = runs[("fanout100-q0", "ringmq")], runs[("fanout100-q0-2sh", "ringmq")]
        self.assertIn("--shards 1", one["broker_command"])
        self.assertIn("--shards 2", two["broker_command"])
        for r in (one, two):
            self.assertEqual(r["result"]["status"], "ok")
            self.assertEqual(r["result"]["lost"], 0)
        target = next(t for t in doc["targets"] if t["scenario"] == "fanout100-q0-2sh")
        if len(os.sched_getaffinity(0)) == 2 and shutil.which("taskset"):
            # ringmq's two shards on both cores, loadgen beside the second; Mosquitto where it always runs
            # by the numbers of the CPUs this process may use (a cpuset need not start at 0)
            first, second = sorted(os.sched_getaffinity(0))
            self.assertTrue(one["broker_command"].startswith(f"taskset -c {first} "), one["broker_command"])
            self.assertTrue(two["broker_command"].startswith(f"taskset -c {first},{second} "), two["broker_command"])
            mosq = runs[("fanout100-q0-2sh", "mosquitto")]
            self.assertTrue(mosq["broker_command"].startswith(f"taskset -c {first} "), mosq["broker_command"])
            for r in (one, two, mosq):
                self.assertTrue(r["command"].startswith(f"taskset -c {second} "), r["command"])
            share = two["result"]["deliveries_per_cpu_s"] / one["result"]["deliveries_per_cpu_s"]
            self.assertAlmostEqual(target["value"], share, places=9)
            self.assertEqual(target["verdict"], "met" if share >= 0.8 else "missed")
            self.assertIn("2 shards over 1 shard", run.stdout)
        else:
            self.assertEqual(target["verdict"], "not run")  # not on the two cores the target names


def load_compare():
    """perf/compare as a module (it has no .py suffix), for its pure functions."""
    loader = importlib.machinery.SourceFileLoader("perf_compare", str(REPO / "perf" / "compare"))
    spec = importlib.util.spec_from_loader("perf_compare", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class CompareIdle100k(unittest.TestCase):
    def test_idle_100k_runs_idle_scale_on_ringmq_only_and_is_weighed(self):
        # 100k connections under an open-file limit of 20000 where the hard limit allows it (this host's), so the run
        # needs several shards and generators; compare raises the limit again where it may, so the counts expected
        # follow the limit the script saw.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < 20000:
            self.skipTest(f"the hard open-file limit {hard} is under 20000")

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
        run, doc = run_compare(self, ["--only", "idle-100k"], timeout=180, preexec_fn=limit)
        self.assertEqual([(r["scenario"], r["broker"]) for r in doc["runs"]], [("idle-100k", "ringmq")], doc["runs"])
        res = doc["runs"][0]["result"]
        lim = res["open_file_limit"]
        self.assertGreaterEqual(lim, 20000, res)
        expect = (100000, -(-100000 // (lim - 200)), -(-110000 // min(lim, 65536)))
        self.assertEqual((res["connections"], res["generators"], res["shards"]), expect, res)
        self.assertGreater(res["shards"], 1, "100k connections need more than one shard's table here")
        self.assertIn(f"--shards {res['shards']}", res["broker_command"])
        self.assertIn("perf/idle_scale", doc["runs"][0]["command"])
        rows = {(r[0], r[1]): r for r in doc["table"][1:]}
        row = rows[("idle-100k", "RSS bytes per connection (lower)")]
        self.assertEqual(row[3], "-", row)  # no Mosquitto figure
        target = [t for t in doc["targets"] if t["scenario"] == "idle-100k"]
        self.assertEqual(len(target), 1, doc["targets"])
        self.assertEqual(target[0]["rounds"], 1, target)
        self.assertAlmostEqual(target[0]["value"], res["rss_per_conn_bytes"])
        self.assertIn(target[0]["verdict"], ("met", "missed"))
        self.assertIn("RSS bytes per idle connection at 100k", run.stdout)


class CompareTargets(unittest.TestCase):
    def test_targets_option_selects_every_scenario_a_target_is_weighed_on(self):
        cmp = load_compare()
        want = {"1to1-q0", "fanout100-q0", "1to1-q1", "pairs1000-50-q0", "1to1-q0-20k", "idle-10k", "idle-100k",
                "fanout100-q0-2sh"}
        self.assertEqual(cmp.target_scenarios(), want)
        run = subprocess.run([sys.executable, str(REPO / "perf" / "compare"), "--targets", "--only", "pairs10-q0",
                              "--list"], capture_output=True, text=True, timeout=20)
        self.assertEqual(run.returncode, 0, run.stderr)
        listed = [line.split()[0] for line in run.stdout.splitlines() if line.strip()]
        self.assertEqual(sorted(listed), sorted(want | {"pairs10-q0"}))
        # in the scenario set's order, each once
        order = [s[0] for s in cmp.SCENARIOS]
        self.assertEqual(listed, sorted(listed, key=order.index))

    def test_verdicts_at_and_around_each_threshold(self):
        cmp = load_compare()
        measured = {
            # per-round ratios: median 40.0 exactly, two of three rounds at or over 40x
            ("1to1-q0", "deliveries_per_cpu_s"): ([1.0, 2.0, 3.0], [39.9, 40.0, 41.0]),
            # "under 1 ms": exactly 1000 us is a miss
            ("pairs1000-50-q0", "lat_p99_us"): ([1000.0, 999.0, 1000.0], [0.5, 0.5, 0.5]),
            # "no higher than 80 us": exactly 80 is met; the forwarder (its own p99s last) missed it
            ("1to1-q0-20k", "lat_p99_us"): ([80.0, 81.0, 79.0], [1.0, 1.0, 1.0], [1.1, 1.2, 0.9], [90.0, None, 100.0]),
            ("idle-10k", "rss_per_conn_bytes"): ([694.0], [0.95]),
            # the forwarder's ratios to Mosquitto (third) are what it is weighed on for a ratio target: 19x, a miss
            ("1to1-q1", "deliveries_per_cpu_s"): ([1.0, 2.0, 3.0], [24.0, 26.0, 27.0], [18.0, 19.0, 20.0], [5, 6, 7]),
            # one per-round ratio, a miss; its ringmq figures (None: a failed round) are the two-shard baseline below
            ("fanout100-q0", "deliveries_per_cpu_s"): ([10.0, 10.0, 5.0, None, 4.0], [49.99]),
            # two-shard figures over single-shard ones, round by round: 0.8, 0.7, 1.2, (failed), (baseline failed);
            # median 0.8 is met. Pairing what is left after dropping the gaps would give 0.8, 0.7, 1.6, 2.5.
            ("fanout100-q0-2sh", "deliveries_per_cpu_s"): ([8.0, 7.0, 6.0, 2.0, None], [40.0, 40.0, 40.0, 40.0]),
        }
        got = {(t["scenario"], t["key"]): t for t in cmp.check_targets(measured)}
        self.assertEqual(len(got), len(cmp.TARGETS))

        def check(scenario, key, verdict, value, met, rounds):
            t = got[(scenario, key)]
            self.assertEqual((t["verdict"], t["value"], t["rounds_met"], t["rounds"]), (verdict, value, met, rounds),
                             f"{scenario} {key}")

        check("1to1-q0", "deliveries_per_cpu_s", "met", 40.0, 2, 3)
        check("fanout100-q0", "deliveries_per_cpu_s", "missed", 49.99, 0, 1)
        check("pairs1000-50-q0", "lat_p99_us", "missed", 1000.0, 1, 3)
        check("1to1-q0-20k", "lat_p99_us", "met", 80.0, 2, 3)
        check("idle-10k", "rss_per_conn_bytes", "met", 694.0, 1, 1)
        check("1to1-q1", "deliveries_per_cpu_s", "met", 26.0, 2, 3)
        fwd = {k: (t.get("forwarder"), t.get("forwarder_met")) for k, t in got.items()}
        self.assertEqual(fwd[("1to1-q1", "deliveries_per_cpu_s")], (19.0, False))
        self.assertEqual(fwd[("1to1-q0-20k", "lat_p99_us")], (95.0, False))  # the median of what it measured
        self.assertEqual(fwd[("1to1-q0", "deliveries_per_cpu_s")], (None, None))  # no forwarder: nothing said
        check("pairs1000-50-q0", "deliveries_per_cpu_s", "not run", None, 0, 0)
        check("fanout100-q0-2sh", "deliveries_per_cpu_s", "met", 0.8, 2, 3)
        # A baseline that ran on several shards or cores other than the target's, or did not run, is no baseline.
        multi = {(t["scenario"], t["key"]): t for t in cmp.check_targets(measured, shares_comparable=False)}
        self.assertEqual(multi[("fanout100-q0-2sh", "deliveries_per_cpu_s")]["verdict"], "not run")
        del measured[("fanout100-q0", "deliveries_per_cpu_s")]
        alone = {(t["scenario"], t["key"]): t for t in cmp.check_targets(measured)}
        self.assertEqual(alone[("fanout100-q0-2sh", "deliveries_per_cpu_s")]["verdict"], "not run")


def perf_counts_here() -> bool:
    """Whether perf is installed and may count a process's events here (a container may refuse perf_event_open)."""
    if not shutil.which("perf"):
        return False
    run = subprocess.run(["perf", "stat", "-e", "task-clock", "-x,", "--", "true"], capture_output=True, text=True,
                         timeout=20)
    return run.returncode == 0 and "task-clock" in run.stderr


def tracepoint_readable(name: str) -> bool:
    run = subprocess.run(["perf", "stat", "-e", name, "-x,", "--", "true"], capture_output=True, text=True, timeout=20)
    return run.returncode == 0 and name in run.stderr and "not supported" not in run.stderr


def run_profile(args: list[str], timeout: float = 40, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FORWARDER_BIN=FORWARDER, LOADGEN_BIN=LOADGEN, RINGMQ_BIN=broker_bin(), **env_extra)
    return subprocess.run([str(REPO / "perf" / "profile")] + args, capture_output=True, text=True, timeout=timeout,
                          env=env)


class ProfileArguments(unittest.TestCase):
    def test_an_unknown_broker_is_refused_by_name(self):
        run = run_profile(["stat", "--broker", "emqx", "--", "--scenario", "one-to-one"])
        self.assertEqual(run.returncode, 2, run.stdout + run.stderr)
        self.assertIn("--broker must be ringmq, mosquitto or forwarder, not emqx", run.stderr)

    def test_an_option_without_its_value_is_refused_by_name(self):
        run = run_profile(["stat", "--broker"])
        self.assertEqual(run.returncode, 2, run.stdout + run.stderr)
        self.assertIn("--broker needs a value", run.stderr)

    def test_a_perf_that_cannot_count_is_reported_not_waited_for(self):
        # A perf that refuses every measurement, as in a container without perf_event_open: the script says so and
        # exits, instead of waiting on its control FIFO.
        with tempfile.TemporaryDirectory() as d:
            fake = os.path.join(d, "perf")
            with open(fake, "w") as f:
                f.write("#!/bin/sh\ncase \"$*\" in *'-- true') exit 0 ;; esac\n"
                        "echo 'perf_event_open: operation not permitted' >&2\nexit 1\n")
            os.chmod(fake, 0o755)
            start = time.monotonic()
            run = run_profile(["stat", "--broker", "forwarder", "--seconds", "1", "--out", os.path.join(d, "out"), "--",
                               "--scenario", "one-to-one"], PATH=d + os.pathsep + os.environ["PATH"])
            self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
            self.assertIn("perf stat did not count", run.stderr)
            self.assertIn("operation not permitted", run.stderr)
            self.assertLess(time.monotonic() - start, 15)

    def test_instr_refuses_mosquitto_by_name(self):
        run = run_profile(["instr", "--broker", "mosquitto", "--", "--scenario", "one-to-one"])
        self.assertEqual(run.returncode, 2, run.stdout + run.stderr)
        self.assertIn("instr counts ringmq or the forwarder, not mosquitto", run.stderr)

    def test_settings_are_for_ringmq_only(self):
        run = run_profile(["stat", "--broker", "forwarder", "--set", "mqtt.max_inflight=64"])
        self.assertEqual(run.returncode, 2, run.stdout + run.stderr)
        self.assertIn("--set applies to ringmq only", run.stderr)


class ProfileStat(unittest.TestCase):
    """perf/profile stat on a short QoS 1 closed loop: what one delivery cost each broker, from /proc and perf."""

    def setUp(self):
        if not perf_counts_here():
            self.skipTest("perf cannot count events here (not installed, or perf_event_open refused)")

    def breakdown(self, broker: str, *extra: str) -> tuple[str, dict, dict]:
        """Runs perf/profile stat; returns its output and the JSON lines of its untraced and traced loadgen runs."""
        with tempfile.TemporaryDirectory() as d:
            run = run_profile(["stat", "--broker", broker, "--seconds", "1", "--out", d, *extra, "--", "--scenario",
                               "one-to-one", "--qos", "1"])
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            runs = []
            for name in ("loadgen.json", "loadgen-traced.json"):
                with open(os.path.join(d, name)) as f:
                    runs.append(json.loads(f.read().strip().splitlines()[-1]))
        for r in runs:
            self.assertEqual((r["status"], r["lost"]), ("ok", 0), r)
        return run.stdout, runs[0], runs[1]

    def per_delivery(self, out: str, label: str) -> float:
        m = re.search(rf"^\s*{re.escape(label)}:\s+([0-9.]+) per delivery", out, re.M)
        self.assertIsNotNone(m, f"no '{label}' line in:\n{out}")
        return float(m.group(1))

    def test_cpu_per_delivery_is_the_untraced_runs_broker_cpu_over_its_deliveries(self):
        out, plain, _ = self.breakdown("ringmq", "--set", "mqtt.max_inflight=64")
        self.assertRegex(out, rf"(?m)^ringmq: {plain['delivered']} deliveries in 1 s")
        m = re.search(r"^CPU per delivery: (\d+) ns \(user (\d+) ns, system (\d+) ns; (\d+)% of a core\)", out, re.M)
        self.assertIsNotNone(m, out)
        total, user, system, share = (int(g) for g in m.groups())
        per = lambda s: round(s * 1e9 / plain["delivered"])
        self.assertEqual((total, user, system), (per(plain["broker_cpu_s"]), per(plain["broker_user_s"]),
                                                 per(plain["broker_sys_s"])))
        self.assertGreater(system, 0)
        self.assertEqual(share, round(100 * plain["broker_cpu_s"]))

    def test_the_kernel_work_is_told_apart_per_broker(self):
        if not (tracepoint_readable("syscalls:sys_enter_io_uring_enter") and
                tracepoint_readable("syscalls:sys_enter_sendto")):
            self.skipTest("system call tracepoints are not readable here")
        ours, _, _ = self.breakdown("ringmq")
        fwd, _, traced = self.breakdown("forwarder")
        # ringmq enters the kernel through io_uring only; the forwarder through epoll, recv and send.
        self.assertGreater(self.per_delivery(ours, "io_uring_enter calls"), 0)
        self.assertGreater(self.per_delivery(ours, "io_uring SQEs"), 0)
        self.assertNotIn("sendto calls", ours)
        self.assertNotIn("epoll_wait calls", ours)
        self.assertNotIn("io_uring", fwd)
        self.assertRegex(fwd, rf"(?m)^traced run: {traced['delivered']} deliveries")
        sends = self.per_delivery(fwd, "sendto calls")
        # A closed loop of 64 sends many deliveries per system call, never more calls than deliveries.
        self.assertGreater(sends, 0)
        self.assertLess(sends, 0.5)

class ProfileInstr(unittest.TestCase):
    """perf/profile instr: the broker's user-space instructions per delivery, by function, counted by callgrind."""

    def report(self, broker: str) -> tuple[str, dict, int]:
        """Runs perf/profile instr on a short QoS 1 closed loop; returns its output, loadgen's JSON line and the
        instructions callgrind counted over the window."""
        with tempfile.TemporaryDirectory() as d:
            run = run_profile(["instr", "--broker", broker, "--seconds", "1", "--out", d, "--", "--scenario",
                               "one-to-one", "--qos", "1"], timeout=120)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            with open(os.path.join(d, "loadgen.json")) as f:
                lg = json.loads(f.read().strip().splitlines()[-1])
            with open(os.path.join(d, "callgrind.out.1")) as f:
                total = int(re.search(r"(?m)^summary: (\d+)$", f.read()).group(1))
            with open(os.path.join(d, "instr.txt")) as f:
                self.assertEqual(f.read(), run.stdout)
        self.assertEqual((lg["status"], lg["lost"]), ("ok", 0), lg)
        return run.stdout, lg, total

    def row(self, out: str, function: str) -> tuple[float, float]:
        m = re.search(rf"(?m)^\s*([0-9.]+)\s+([0-9.]+)  {re.escape(function)} \(", out)
        self.assertIsNotNone(m, f"no row for {function} in:\n{out}")
        return float(m.group(1)), float(m.group(2))

    def test_instructions_are_counted_over_the_window_and_split_by_function(self):
        out, lg, total = self.report("ringmq")
        n = lg["delivered"]
        self.assertRegex(out, rf"(?m)^ringmq: {n} deliveries in 1 s")
        m = re.search(r"(?m)^user-space instructions per delivery: (\d+) ", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(int(m.group(1)), round(total / n))
        # On a 1->1 loop every delivery is one message offered to the subscriber's session and one PUBACK back
        # (whichever path the PUBLISH takes): the calls column counts them.
        own, calls = self.row(out, "ringmq::session::session::offer")
        self.assertGreater(own, 1)
        self.assertAlmostEqual(calls, 1.0, delta=0.02)
        _, calls = self.row(out, "ringmq::broker::shard::on_puback")
        self.assertAlmostEqual(calls, 1.0, delta=0.02)

    def test_another_broker_is_counted_the_same_way(self):
        out, lg, total = self.report("forwarder")
        self.assertRegex(out, rf"(?m)^forwarder: {lg['delivered']} deliveries in 1 s")
        self.assertIn("(anonymous namespace)::forwarder::parse", out)
        self.assertNotIn("ringmq::", out)
        self.assertGreater(total, lg["delivered"])


if __name__ == "__main__":
    unittest.main()
