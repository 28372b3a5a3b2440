"""Starting and stopping the real ringmq binary for integration tests, and the unittest base class.

The binary comes from $RINGMQ_BIN (default <repo>/build/src/app/ringmq). Every broker listens on 127.0.0.1 port 0;
the OS-assigned port is read back from the `listening mqtt tcp 127.0.0.1:PORT` line on its stderr. Brokers run with
--no-admin unless made with admin=True: then the admin HTTP API listens on 127.0.0.1 port 0 too (port read back from
`listening admin http 127.0.0.1:PORT`), with its users file in a fresh temporary directory unless one is given.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Dict, Optional, Sequence

import mqtt_raw
from mqtt_raw import RawClient

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LISTEN_RE = re.compile(rb"listening mqtt tcp 127\.0\.0\.1:(\d+)")
ADMIN_LISTEN_RE = re.compile(rb"listening admin http 127\.0\.0\.1:(\d+)")
READY_RE = re.compile(rb"ringmq ready")


def broker_bin() -> str:
    return os.environ.get("RINGMQ_BIN") or str(REPO / "build" / "src" / "app" / "ringmq")


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def home_shard(client_id: str, shards: int) -> int:
    return fnv1a64(client_id.encode("utf-8")) % shards if shards > 1 else 0


def client_id_on_shard(prefix: str, shard: int, shards: int) -> str:
    """The first id of the form prefix-N whose home shard (FNV-1a-64 % shards) is `shard`."""
    if not 0 <= shard < max(shards, 1):
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    for i in range(100000):
        cid = f"{prefix}-{i}"
        if home_shard(cid, shards) == shard:
            return cid
    raise RuntimeError("no client id found")  # cannot happen for small shard counts


def kernel_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (major, minor)


def not_taken(sock) -> int:
    """Bytes a connected loopback socket's peer has not read yet: what this socket has not sent (SIOCOUTQNSD: sent
    but unacknowledged bytes may be in the peer's queue already) and what waits in the peer socket's receive queue
    (/proc/net/tcp's rx_queue of the socket at the other end)."""
    import fcntl
    import struct
    siocoutqnsd = 0x894B
    outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), siocoutqnsd, b"\0\0\0\0"))[0]
    here, there = sock.getsockname()[1], sock.getpeername()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if state == "01" and int(local.split(":")[1], 16) == there and int(remote.split(":")[1], 16) == here:
                return outq + int(queues.split(":")[1], 16)
    raise AssertionError(f"no socket from port {there} to {here} in /proc/net/tcp")


def no_quarantine_env() -> Dict[str, str]:
    """The environment for a broker whose RSS a test bounds: under AddressSanitizer freed memory waits in a quarantine
    (256 MB) before it is reused; without one, RSS measures what the broker holds in sanitizer builds too. No effect on
    a release binary."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": f"{asan}:quarantine_size_mb=0" if asan else "quarantine_size_mb=0"}


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of process pid in KiB (field "VmHWM": its peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int, thread: Optional[str] = None) -> float:
    """CPU seconds (user + system) of process pid, or of its thread named `thread` (main.cpp names the shards'
    threads ringmq-shardN)."""
    paths = [f"/proc/{pid}/stat"]
    if thread is not None:
        paths = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if f.read().strip() == thread:
                        paths.append(f"/proc/{pid}/task/{tid}/stat")
            except FileNotFoundError:
                continue
        if not paths:
            raise AssertionError(f"no thread {thread} in pid {pid}")
    with open(paths[0]) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


@contextlib.contextmanager
def stalled_thread(pid: int, name: str):
    """Stops the thread of process pid named `name` (its /proc comm, e.g. "ringmq-shard1") with ptrace for the
    block's duration while the process's other threads run on: a shard that takes nothing from the others meanwhile.
    The broker is this process's child, which may trace it."""
    tid = next((int(t) for t in os.listdir(f"/proc/{pid}/task")
                if Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() == name), None)
    assert tid is not None, f"no thread {name} in process {pid}"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    seize, interrupt, detach, wall = 0x4206, 0x4207, 17, 0x40000000
    if libc.ptrace(seize, tid, None, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:  # a sandbox that forbids ptrace: counted as skipped, with the reason
            raise unittest.SkipTest(f"ptrace(PTRACE_SEIZE) of {name} not permitted here: {os.strerror(err)}")
        raise OSError(err, f"ptrace(PTRACE_SEIZE) of {name}: {os.strerror(err)}")
    try:
        if libc.ptrace(interrupt, tid, None, None) != 0:
            raise OSError(ctypes.get_errno(), f"ptrace(PTRACE_INTERRUPT) of {name}")
        os.waitpid(tid, wall)  # it is stopped once this returns
        yield tid
    finally:
        if libc.ptrace(detach, tid, None, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"ptrace(PTRACE_DETACH) of {name}: {os.strerror(err)}")


def read_until_closed(client, timeout=20.0):
    """Payloads of the PUBLISHes client receives until the broker closes the connection (`timeout` seconds at most;
    past it the read fails). A frame the close cut short is not a packet."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            pkt = client.read_packet(max(0.01, deadline - time.monotonic()))
        except mqtt_raw.Closed:
            return out
        out.append(mqtt_raw.parse_publish(pkt).payload)


def packets_until_closed(client, timeout=5.0) -> list:
    """Every packet client receives until the broker closes the connection (`timeout` seconds at most; past it the
    read fails)."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            out.append(client.read_packet(max(0.01, deadline - time.monotonic())))
        except mqtt_raw.Closed:
            return out


def send_rounds(pub, topic: str, got: "Collector", rounds: int = 4, n: int = 100) -> list:
    """rounds of n QoS 1 PUBLISHes numbered on (6 digits), each in one write: its PUBACKs awaited, then (up to 5 s) its
    messages at the collector, whose messages are returned once it has all."""
    for r in range(rounds):
        pub.send(b"".join(mqtt_raw.publish(topic, b"%06d" % (r * n + i), qos=1, pid=r * n + i + 1) for i in range(n)))
        for i in range(n):
            pub.expect(mqtt_raw.puback(r * n + i + 1), timeout=3)
        deadline = time.monotonic() + 5
        while len(got.messages) < (r + 1) * n and time.monotonic() < deadline:
            time.sleep(0.01)
    return got.join()


def read_until_quiet(client, stop=None, quiet=1.0):
    """Payloads of the PUBLISHes client receives until none comes for `quiet` seconds or one carries `stop`."""
    out = []
    while True:
        try:
            p = client.recv_publish(timeout=quiet).payload
        except AssertionError:
            return out
        if p == stop:
            return out
        out.append(p)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise TypeError(f"unsupported setting value {v!r}")


class BrokerError(AssertionError):
    pass


class Broker:
    """One ringmq process. Use as a context manager, or start()/stop().

    admin=True enables the admin HTTP API on 127.0.0.1 port 0 (read back into `admin_port`). Its users file is
    `users_file` when given (kept), else a file in a fresh temporary directory removed when the broker stops."""

    def __init__(self, shards: int = 1, settings: Optional[Dict[str, object]] = None,
                 config: Optional[str] = None, args: Sequence[str] = (), admin: bool = False,
                 users_file: Optional[str] = None, nofile: Optional[int] = None,
                 env: Optional[Dict[str, str]] = None):
        self.shards = shards
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the broker process
        self.env = env  # variables added to the broker's environment
        self.settings = dict(settings or {})
        self.config = config
        self.args = list(args)
        self.admin = admin
        self.users_file = users_file
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.admin_port: Optional[int] = None
        self.log_path: Optional[str] = None
        self._config_path: Optional[str] = None
        self._admin_dir: Optional[str] = None
        self._log_file = None

    def command(self) -> list:
        cmd = [broker_bin(), "--listen", "127.0.0.1:0", "--shards", str(self.shards)]
        if self.admin:
            if self.users_file is None:
                self._admin_dir = tempfile.mkdtemp(prefix="ringmq-it-admin-")
                self.users_file = os.path.join(self._admin_dir, "users")
            cmd += ["--admin-listen", "127.0.0.1:0", "--set", f"admin.users_file={toml_value(self.users_file)}"]
        else:
            cmd += ["--no-admin"]
        cmd += ["--log-level", "debug"]
        if self.config is not None:
            fd, self._config_path = tempfile.mkstemp(prefix="ringmq-it-", suffix=".toml")
            with os.fdopen(fd, "w") as f:
                f.write(self.config)
            cmd += ["-c", self._config_path]
        # RINGMQ_IT_SET="key=value ...": settings for every broker of the run, before the test's own (which win), to
        # run the whole suite on a non-default path (node.fixed_files=true).
        for extra in os.environ.get("RINGMQ_IT_SET", "").split():
            cmd += ["--set", extra]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={toml_value(value)}"]
        return cmd + self.args

    def log(self) -> bytes:
        if not self.log_path:
            return b""
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log().decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self) -> "Broker":
        binary = broker_bin()
        if not os.access(binary, os.X_OK):
            raise BrokerError(f"broker binary {binary} is missing or not executable (set RINGMQ_BIN)")
        cmd = self.command()
        fd, self.log_path = tempfile.mkstemp(prefix="ringmq-it-", suffix=".log")
        self._log_file = os.fdopen(fd, "wb")
        limit = None
        if self.nofile is not None:
            n = self.nofile

            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit, env=env)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            log = self.log()
            if self.port is None:
                m = LISTEN_RE.search(log)
                if m:
                    self.port = int(m.group(1))
            if self.admin and self.admin_port is None:
                m = ADMIN_LISTEN_RE.search(log)
                if m:
                    self.admin_port = int(m.group(1))
            if self.port is not None and (self.admin_port is not None or not self.admin) and READY_RE.search(log):
                return self
            rc = self.proc.poll()
            if rc is not None:
                self._cleanup_files(keep_log=True)
                raise BrokerError(f"broker exited with {rc} before it was ready: {' '.join(cmd)}\n"
                                  f"--- log tail ---\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._kill()
                raise BrokerError(f"broker not ready within {READY_TIMEOUT}s: {' '.join(cmd)}\n"
                                  f"--- log tail ---\n{self.log_tail()}")
            time.sleep(0.01)

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> int:
        """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL and fail. Fails unless the exit code is 0."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is not None:
            rc = proc.returncode
            self._cleanup_files(keep_log=True)
            raise BrokerError(f"broker died during the test (exit code {rc})\n--- log tail ---\n"
                              f"{self.log_tail()}")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc = proc
            self._kill()
            self.proc = None
            self._cleanup_files(keep_log=True)
            raise BrokerError(f"broker did not exit within {STOP_TIMEOUT}s of SIGTERM (killed)\n"
                              f"--- log tail ---\n{self.log_tail()}")
        if rc != 0:
            self._cleanup_files(keep_log=True)
            raise BrokerError(f"broker exited with code {rc} after SIGTERM\n--- log tail ---\n{self.log_tail()}")
        self._cleanup_files(keep_log=False)
        return rc

    def _cleanup_files(self, keep_log: bool) -> None:
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        if self._config_path:
            try:
                os.unlink(self._config_path)
            except OSError:
                pass
            self._config_path = None
        if self._admin_dir:
            shutil.rmtree(self._admin_dir, ignore_errors=True)
            self._admin_dir = None
            self.users_file = None
        if not keep_log and self.log_path and not os.environ.get("RINGMQ_KEEP_LOGS"):
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def doubling_counts(self, marker: bytes, shard: Optional[int] = None) -> list:
        """The counts "(N ...so far)" that end the log lines containing marker, in order: what the broker logs at the
        1st, 2nd, 4th... occurrence only (log::at_doubling). With `shard`, every such line must come from it."""
        lines = [line for line in self.log().split(b"\n") if marker in line]
        if shard is not None:
            strays = [line for line in lines if f"shard{shard}:".encode() not in line]
            if strays:
                raise AssertionError(f"logged by another shard than shard{shard}: {strays[0]!r}")
        return [int(line.rsplit(b"(", 1)[1].split()[0]) for line in lines]

    def stop_and_read_log(self) -> bytes:
        """Stops the broker and returns its whole log, with the lines it writes while stopping (counters, say)."""
        with open(self.log_path, "rb") as log:  # still readable after stop() removes the file
            self.stop()
            return log.read()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.port, timeout=timeout)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        except BrokerError:
            if exc_type is None:
                raise
        finally:
            if exc_type is not None and self.log_path:
                sys.stderr.write(f"\n--- broker log tail ({self.log_path}) ---\n{self.log_tail()}\n")


class BrokerTest(unittest.TestCase):
    """Base class: a fresh broker per test (SHARDS shards, SETTINGS via --set), stopped in cleanup with its exit
    code checked. Raw clients made through the helpers are closed in cleanup. On failure the broker log tail is
    written to stderr."""

    SHARDS = 1
    SETTINGS: Dict[str, object] = {}
    CONFIG: Optional[str] = None
    AUTO_START = True  # False: each test calls use_broker(settings) itself
    ADMIN = False      # True: brokers run with the admin HTTP API (Broker(admin=True))
    ARGS: Sequence[str] = ()  # extra command-line arguments for every broker of the test

    def settings(self) -> Dict[str, object]:
        """Override to vary settings per test (default: the class SETTINGS)."""
        return dict(self.SETTINGS)

    def setUp(self) -> None:
        self.broker: Optional[Broker] = None
        self.port: Optional[int] = None
        self.admin_port: Optional[int] = None
        if self.AUTO_START:
            self.use_broker()

    def use_broker(self, settings: Optional[Dict[str, object]] = None, shards: Optional[int] = None,
                   env: Optional[Dict[str, str]] = None) -> Broker:
        """Starts this test's broker (class SETTINGS updated with `settings`) and makes it the default target."""
        merged = self.settings()
        merged.update(settings or {})
        self.broker = self.start_broker(shards or self.SHARDS, merged, self.CONFIG, env=env)
        self.port = self.broker.port
        self.admin_port = self.broker.admin_port
        return self.broker

    def start_broker(self, shards: int = 1, settings=None, config=None, admin: Optional[bool] = None,
                     args: Optional[Sequence[str]] = None, users_file: Optional[str] = None,
                     nofile: Optional[int] = None, env: Optional[Dict[str, str]] = None) -> Broker:
        b = Broker(shards, settings, config, args=self.ARGS if args is None else args,
                   admin=self.ADMIN if admin is None else admin, users_file=users_file, nofile=nofile, env=env)
        b.start()
        self.addCleanup(self._stop_broker, b)
        return b

    def _stop_broker(self, b: Broker) -> None:
        failed = not getattr(self._outcome, "success", True)
        try:
            b.stop()
        finally:
            if failed and b.log_path:
                sys.stderr.write(f"\n--- {self.id()}: broker log tail ({b.log_path}) ---\n{b.log_tail()}\n")

    # -- clients --------------------------------------------------------------------------------------------------

    def raw(self, port: Optional[int] = None) -> RawClient:
        c = RawClient(port or self.port)
        self.addCleanup(c.close)
        return c

    def client(self, client_id: str = "", clean: bool = True, keepalive: int = 60, will=None, level: int = 4,
               expect: Optional[bytes] = mqtt_raw.CONNACK_OK, **kw) -> RawClient:
        c = self.raw()
        c.connect(client_id, clean=clean, keepalive=keepalive, will=will, level=level, expect=expect, **kw)
        return c

    def cid(self, name: str, shard: int = 0) -> str:
        """A client id with the given home shard (taken modulo SHARDS)."""
        return client_id_on_shard(name, shard % max(self.SHARDS, 1), self.SHARDS)

    def pub_id(self, name: str = "pub") -> str:
        """Publisher ids live on shard 0 ..."""
        return self.cid(name, 0)

    def sub_id(self, name: str = "sub") -> str:
        """... subscriber ids on the last shard, so with 2 shards they differ."""
        return self.cid(name, self.SHARDS - 1)

    def wait_until(self, fn, timeout: float = 3.0, what="condition", interval: float = 0.05):
        """Polls fn() until it returns a truthy value (returned) or `timeout` passes (failure showing the last
        value; `what` names the condition, or is a function returning its message then). For state that other shards
        or clients update asynchronously (disconnects, routes, gauges, deliveries)."""
        deadline = time.monotonic() + timeout
        while True:
            last = fn()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what() if callable(what) else what}: not reached within {timeout}s (last "
                                     f"value {last!r})")
            time.sleep(interval)

    def assert_broker_healthy(self, tag: str = "health") -> None:
        """A fresh subscriber/publisher pair (on different shards when there are several) still round-trips
        QoS 0, 1 and 2."""
        self.assertTrue(self.broker.alive(), "broker process died")
        sub = self.client(self.sub_id(tag + "-s"))
        sub.subscribe([(f"{tag}/#", 2)])
        pub = self.client(self.pub_id(tag + "-p"))
        for qos in (0, 1, 2):
            pub.publish(f"{tag}/q{qos}", f"ok{qos}", qos=qos)
            m = sub.recv_publish()
            self.assertEqual((m.topic, m.payload, m.qos), (f"{tag}/q{qos}", f"ok{qos}".encode(), qos))
        pub.disconnect()
        sub.disconnect()


def shard_variants(mixin, namespace: dict, shards=None, base=None, **attrs) -> None:
    """Defines <MixinName>Shards<N> test classes (mixin + base, default BrokerTest) for each shard count in
    `namespace`: `shards`, else 1 and 2, or those RINGMQ_IT_SHARDS="3 4" names (shard counts the suite does not cover by
    default: its tests place publishers on shard 0 and subscribers on the last)."""
    if shards is None:
        shards = tuple(int(x) for x in os.environ.get("RINGMQ_IT_SHARDS", "1 2").split())
    for n in shards:
        name = f"{mixin.__name__}Shards{n}"
        cls = type(name, (mixin, base or BrokerTest), dict(SHARDS=n, __module__=namespace["__name__"], **attrs))
        namespace[name] = cls


def send_while_stopped(broker: Broker, clients: Sequence[RawClient], writes: Sequence[bytes],
                       pause: float = 0.5) -> list:
    """Stops the broker (SIGSTOP), starts each client's send of its write in a thread of its own, and lets the
    broker go on (SIGCONT, also when starting them fails) after `pause` seconds, so that the bytes wait in its sockets
    and arrive at once when it goes on. Returns the threads (to join)."""
    import threading
    pid = broker.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=c.send, args=(w,), daemon=True) for c, w in zip(clients, writes)]
        for t in threads:
            t.start()
        time.sleep(pause)
    finally:
        os.kill(pid, signal.SIGCONT)
    return threads


def assert_bursts_in_order(test: unittest.TestCase, got: list, publishers: int, per: int, id_digits: int,
                           size: int = 4096) -> None:
    """Each PUBLISH in `got` starts with its publisher's number (id_digits wide) and its sequence number (4 digits):
    every publisher's `per` messages arrived, each once, in its order, and each `size` bytes long."""
    seqs = {}
    for x in got:
        test.assertEqual(len(x.payload), size)
        seqs.setdefault(int(x.payload[:id_digits]), []).append(int(x.payload[id_digits:id_digits + 4]))
    test.assertEqual(sorted(seqs), list(range(publishers)))
    for i, s in seqs.items():
        test.assertEqual(s, list(range(per)), f"publisher {i}")


class Collector:
    """Receives n PUBLISHes on `client` in a background thread (acknowledging them), so a publisher can send a
    long burst without the subscriber's inflight window stalling. The thread owns the client until join()."""

    def __init__(self, client: RawClient, n: int, ack: bool = True, timeout: float = 10.0):
        import threading
        self.client, self.n, self.ack, self.timeout = client, n, ack, timeout
        self.messages: list = []
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self.n):
                self.messages.append(self.client.recv_publish(self.timeout, self.ack))
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout: float = 30.0) -> list:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"collector still running after {timeout}s ({len(self.messages)}/{self.n})")
        if self.error is not None:
            raise AssertionError(f"collector got {len(self.messages)}/{self.n} messages, then: {self.error}")
        return self.messages
