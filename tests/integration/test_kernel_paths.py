"""The paths ringmq takes on kernels older than this one, run here with node.io_uring_kernel.

ringmq picks its io_uring features by what the kernel offers: DEFER_TASKRUN from Linux 6.1 (before it, COOP_TASKRUN
and completions posted as they come), clients' addresses read through the ring from 6.7 (before, getpeername),
incrementally consumed receive buffers and a minimum wait from 6.12 (before, whole buffers and no batched wake-ups),
from 6.13 a closing connection's receive is cancelled (before, io_uring's SHUTDOWN ends it), and from 6.17 a receive
takes at most node.receive_limit before it is re-armed (before, no limit). node.io_uring_kernel
caps the features at an older release's, so the suites below run those paths on this kernel: 6.0 (every fallback at
once) and 6.11 (DEFER_TASKRUN and the ring's peer names kept; whole buffers, no minimum wait, SHUTDOWN).
They show the broker's own fallback code works; an older kernel's own behaviour is not reproduced.
"""
import re
import subprocess
import unittest

import test_shards
from broker import BrokerTest, broker_bin, kernel_at_least
from test_connect import ConnectCases
from test_publish import PublishCases
from test_session import SessionCases
from test_will import WillCases


# Tests about a newer feature itself, left out of the capped runs (None hides a test from unittest's loader).
NEWER_FEATURE_TESTS = {
    # The 6.13 close path; it says so itself on older kernels.
    "test_a_closing_connection_with_only_its_receive_pending_is_closed_without_a_worker": None,
    # Sized to run the 6.12 incremental buffers (64 of them) out, which it checks in the log: the 512 whole buffers of
    # an older kernel hold its burst.
    "test_bursts_larger_than_the_receive_buffers_lose_nothing": None,
}


def capped(mixin, cap: str, namespace: dict, shards: int = 2) -> None:
    """Defines <Mixin>Linux<cap>Shards<N>: the mixin's tests with node.io_uring_kernel = cap."""
    settings = dict(getattr(mixin, "SETTINGS", {}))
    settings["node.io_uring_kernel"] = cap
    name = f"{mixin.__name__.removesuffix('Test')}Linux{cap.replace('.', '_')}Shards{shards}"
    bases = (mixin,) if issubclass(mixin, BrokerTest) else (mixin, BrokerTest)
    attrs = dict(SHARDS=shards, SETTINGS=settings, __module__=namespace["__name__"])
    attrs.update({k: v for k, v in NEWER_FEATURE_TESTS.items() if hasattr(mixin, k)})
    namespace[name] = type(name, bases, attrs)


# (test_shards.CrossShardTest is a TestCase itself: imported by name, the loader would run it here a second time.)
for _mixin in (ConnectCases, PublishCases, SessionCases, WillCases, test_shards.CrossShardTest):
    capped(_mixin, "6.0", globals())
for _mixin in (ConnectCases, PublishCases, SessionCases):
    capped(_mixin, "6.11", globals())
del _mixin


class KernelCapTakesEffect(BrokerTest):
    """The cap changes what the shards use, as their debug lines at start and exit report, and a DISCONNECT takes the
    close path of the release asked for."""

    AUTO_START = False

    def run_capped(self, cap: str) -> str:
        # wake_batch_us asks for the minimum wait, so the log says whether the ring has it; the close counts are those
        # of sockets in the file table (RINGMQ_IT_SET may turn it off for the rest of the suite).
        b = self.use_broker({"node.io_uring_kernel": cap, "node.wake_batch_us": 50, "node.fixed_files": True})
        ports = []
        for i in range(3):
            c = self.client(f"kernel-cap-{i}")
            ports.append(c.sock.getsockname()[1])
            c.disconnect()
            c.expect_closed()
        log = b.stop_and_read_log().decode(errors="replace")
        # Each client's address as the shard read it (by getpeername or through the ring): its own port.
        for i, port in enumerate(ports):
            self.assertRegex(log, rf"client kernel-cap-{i} connected from 127\.0\.0\.1:{port} ")
        return log

    def assert_peer_names(self, log: str, by_ring: bool):
        self.assertEqual("shard 0: clients' addresses read through io_uring" in log, by_ring, log[-3000:])
        self.assertEqual("shard 0: clients' addresses read by getpeername" in log, not by_ring, log[-3000:])

    def closes(self, log: str):
        """(cancelled receives, SHUTDOWNs) of shard 0's exit line."""
        found = re.search(r"shard 0 ended the pending operations of closing connections (\d+) times by cancelling the "
                          r"receive, (\d+) times by SHUTDOWN", log)
        self.assertIsNotNone(found, log[-3000:])
        return int(found.group(1)), int(found.group(2))

    def assert_before_6_12(self, log: str, ring_mode: str):
        self.assertIn(f"started (io_uring {ring_mode},", log)
        self.assertNotIn("consumed incrementally", log)
        self.assertIn("this kernel's io_uring has no minimum wait", log)
        self.assertIn("receives not limited (Linux 6.17 has the limit)", log)
        cancels, shutdowns = self.closes(log)
        self.assertEqual(cancels, 0)
        self.assertGreaterEqual(shutdowns, 3)

    def test_6_0_runs_coop_taskrun_whole_buffers_no_minimum_wait_and_shutdown(self):
        log = self.run_capped("6.0")
        self.assertIn("node.io_uring_kernel = 6.0: io_uring is used with no feature newer than Linux 6.0\n", log)
        self.assert_before_6_12(log, "coop-taskrun")
        self.assert_peer_names(log, by_ring=False)

    def test_6_11_keeps_defer_taskrun_but_not_the_6_12_buffers_and_wait_or_the_6_13_close(self):
        log = self.run_capped("6.11")
        self.assert_before_6_12(log, "single-issuer+defer-taskrun")
        self.assert_peer_names(log, by_ring=kernel_at_least(6, 7))

    def test_6_6_reads_clients_addresses_by_getpeername(self):
        self.assert_peer_names(self.run_capped("6.6"), by_ring=False)

    def test_auto_uses_what_this_kernel_has(self):
        log = self.run_capped("auto")
        self.assertNotIn("node.io_uring_kernel", log)
        self.assertIn("started (io_uring single-issuer+defer-taskrun,", log)
        # On this project's kernels (6.13 and newer) every feature; older ones take the fallbacks by themselves.
        has_6_12 = kernel_at_least(6, 12)
        self.assert_peer_names(log, by_ring=kernel_at_least(6, 7))
        self.assertEqual("consumed incrementally" in log, has_6_12)
        self.assertEqual("this kernel's io_uring has no minimum wait" in log, not has_6_12)
        # A multishot receive's limit (6.17): what a held or paused client keeps.
        self.assertEqual("receives re-armed every 262144 B" in log, kernel_at_least(6, 17), log[-3000:])
        cancels, shutdowns = self.closes(log)
        if kernel_at_least(6, 13):
            self.assertGreaterEqual(cancels, 3)
            self.assertEqual(shutdowns, 0)
        else:
            self.assertEqual(cancels, 0)
            self.assertGreaterEqual(shutdowns, 3)


class ReceiveLimitReachesTheShards(BrokerTest):
    """node.receive_limit reaches every shard (their start-up lines, where the kernel has the limit), 0 turns it off,
    and a receive that ends at the limit is armed again. (That the receives carry it: the paused-clients test in
    test_limits.py.)"""

    AUTO_START = False
    SHARDS = 2

    def started_lines(self, limit: int) -> list:
        self.use_broker({"node.receive_limit": limit})
        c = self.client("receive-limit")
        c.subscribe([("rl/t", 0)])
        c.publish("rl/t", b"x" * 200000)  # three times a limit of 64 KiB: its receive ends and is armed again
        self.assertEqual(len(c.recv_publish().payload), 200000)
        c.disconnect()
        log = self.broker.stop_and_read_log().decode(errors="replace")
        return re.findall(r"shard \d started \(io_uring [^,]*, \d+-entry submission queue, [^,]*, (receives [^,]*),",
                          log)

    def test_a_limit_and_none(self):
        limited = "receives re-armed every 65536 B" if kernel_at_least(6, 17) else \
            "receives not limited (Linux 6.17 has the limit)"
        self.assertEqual(self.started_lines(65536), [limited] * 2)
        off = "receives not limited (node.receive_limit = 0)" if kernel_at_least(6, 17) else \
            "receives not limited (Linux 6.17 has the limit)"
        self.assertEqual(self.started_lines(0), [off] * 2)


class WholeBuffersRunOut(BrokerTest):
    """Below 6.12 a receive takes a whole 16 KiB buffer of 512: the publish suite's burst test is sized for the 64
    incremental ones. Here the broker is stopped while 256 publishers each write 64 KiB, and every message must still
    arrive, once, in each publisher's order. Without DEFER_TASKRUN (6.0) the completions then come at once, far more
    than there are buffers: receives wait for buffers (ENOBUFS) and are re-armed, which the shard reports. With it
    (6.11) the same burst did not run the buffers out in any run tried, so there only the delivery is checked."""

    SETTINGS = {"mqtt.max_outgoing_bytes": 256 * 1024 * 1024}
    AUTO_START = False

    def burst(self, cap: str, runs_out: bool) -> None:
        import mqtt_raw as m
        from broker import Collector, assert_bursts_in_order, send_while_stopped
        self.use_broker({"node.io_uring_kernel": cap})
        log = open(self.broker.log_path, "rb")  # still readable after stop() removes the file
        self.addCleanup(log.close)
        sub = self.client("whole-sub")
        sub.subscribe([("whole/#", 0)])
        n, per, filler = 256, 16, b"f" * 4089
        pubs = [self.client(f"whole{i}") for i in range(n)]
        writes = [b"".join(m.publish(f"whole/{i}", b"%03d%04d" % (i, k) + filler) for k in range(per))
                  for i in range(n)]
        collector = Collector(sub, n * per, timeout=20)
        threads = send_while_stopped(self.broker, pubs, writes)
        got = collector.join(60)
        for t in threads:
            t.join(10)
        assert_bursts_in_order(self, got, n, per, 3)
        self.broker.stop()
        text = log.read()
        self.assertIn(b"512 x 16384 B receive buffers,", text)  # whole ones
        if runs_out:
            ran_out = [int(x) for x in re.findall(rb"receive buffers ran out (\d+) times", text)]
            self.assertGreater(sum(ran_out), 0, "the shard never ran out of receive buffers")

    def test_6_0_runs_out_and_loses_nothing(self):
        self.burst("6.0", runs_out=True)

    def test_6_11_loses_nothing(self):
        self.burst("6.11", runs_out=False)


class KernelCapRefused(unittest.TestCase):
    def test_a_release_before_6_0_or_not_a_release_is_a_config_error_naming_the_key(self):
        for bad in ("5.19", "six", "6", "6.x", "", "6.1.2"):
            run = subprocess.run([broker_bin(), "--no-admin", "--set", f"node.io_uring_kernel={bad}"],
                                 capture_output=True, text=True, timeout=15)
            self.assertEqual(run.returncode, 1, (bad, run.stderr))
            self.assertIn("node.io_uring_kernel", run.stderr, bad)
            self.assertIn("6.0" if bad == "5.19" else "major.minor", run.stderr, bad)


if __name__ == "__main__":
    unittest.main()
