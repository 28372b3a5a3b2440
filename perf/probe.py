"""What the perf scripts share for watching a broker from the side: a minimal MQTT 3.1.1 client over a blocking
socket, a prober process that times PINGREQ round trips while a load runs, the broker's CPU time, and the rounds
against both brokers with their table (side_by_side). Imported by perf/retained_read, perf/broadcast, perf/idle_scale
and perf/hold_churn; it measures nothing by itself."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_compare():
    """perf/compare as a module (it has no .py suffix): its Broker, binaries, formatting and machine line."""
    loader = importlib.machinery.SourceFileLoader("perf_compare", str(ROOT / "perf" / "compare"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("perf_compare", loader))
    loader.exec_module(module)
    return module

PROBE_INTERVAL_S = 0.0005


def rl(n: int) -> bytes:
    out = bytearray()
    while True:
        d, n = n % 128, n // 128
        out.append(d | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + rl(len(body)) + body


def connect(client_id: str, clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0
    return packet(0x10, s16(b"MQTT") + bytes([4, flags]) + struct.pack(">H", 600) + s16(client_id.encode()))


def publish(topic: str, payload: bytes, qos: int, pid: int, retain: bool = True) -> bytes:
    body = s16(topic.encode()) + (struct.pack(">H", pid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def subscribe(pid: int, filters: list[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE of (filter, QoS) pairs."""
    return packet(0x82, struct.pack(">H", pid) + b"".join(s16(f.encode()) + bytes([q]) for f, q in filters))



def unsubscribe(pid: int, flt: str) -> bytes:
    return packet(0xA2, struct.pack(">H", pid) + s16(flt.encode()))


def parse_publish(first: int, body: bytes):
    """(topic, qos, packet id, payload) of a PUBLISH body."""
    n = struct.unpack_from(">H", body)[0]
    topic = body[2:2 + n].decode()
    qos = (first >> 1) & 3
    pid, at = (struct.unpack_from(">H", body, 2 + n)[0], 4 + n) if qos else (0, 2 + n)
    return topic, qos, pid, body[at:]


def nearest_rank(samples: list, p: float):
    """The smallest of the sorted samples with at least p of them at or below it (p99 of 100 is the 99th, not the
    largest)."""
    return samples[max(0, min(len(samples), math.ceil(len(samples) * p)) - 1)]


def status_kib(pid: int) -> dict:
    """VmRSS, RssAnon and VmHWM of a process from /proc, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


class Reader:
    """Frames MQTT packets from one blocking socket; owned by one thread or process."""

    def __init__(self, port: int, client_id: str, clean: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(connect(client_id, clean))
        first, body = self.next(10)
        if first >> 4 != 2 or body[1] != 0:
            raise RuntimeError(f"CONNACK refused for {client_id}: {body.hex()}")

    def next(self, timeout: float) -> tuple[int, bytes]:
        """The next packet (first byte, body); raises TimeoutError after `timeout` without one."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(self.buf) and i <= 4:
                    n += (self.buf[i] & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not self.buf[i - 1] & 0x80:
                        if len(self.buf) >= i + n:
                            first, body = self.buf[0], bytes(self.buf[i:i + n])
                            del self.buf[:i + n]
                            return first, body
                        break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError from None
            if not chunk:
                raise ConnectionError("closed by the broker")
            self.buf += chunk


def probe(port: int, stop, out) -> None:
    """Prober process: a PINGREQ PROBE_INTERVAL_S after each answer until told to stop; puts the list of (send time,
    round trip) pairs on `out`."""
    try:
        # Real-time priority where allowed: the reader shares this core and is busy, and the prober's wake-ups must
        # not wait for it, or the round trips show this core's scheduling rather than the broker.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (PermissionError, OSError):
        pass
    c = Reader(port, f"probe-{os.getpid()}")
    rtts = []
    while not stop.is_set():
        t0 = time.perf_counter()
        c.sock.sendall(b"\xc0\x00")
        first, _ = c.next(30)
        if first != 0xD0:
            continue
        rtts.append((t0, time.perf_counter() - t0))
        time.sleep(PROBE_INTERVAL_S)
    out.put(rtts)
    c.sock.close()


def cpu_s(pid: int) -> float:
    """The broker's CPU time in seconds, all threads, from schedstat (nanoseconds; /proc/PID/stat counts 10 ms ticks,
    too coarse for a read of a few tens of milliseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def ping_stats(rtts: list, t_from: float, t_to: float) -> dict:
    """p50, p99, p99.9 and max of the round trips sent between t_from and t_to (perf_counter seconds). The prober
    waits for each answer before it sends the next, so a stall of S seconds gives one sample where a client sending
    every PROBE_INTERVAL_S would have seen S / PROBE_INTERVAL_S: the missing ones are added (S - interval, S - 2
    interval, ...), as HdrHistogram does for coordinated omission. Without that, stalls hide from every percentile but
    the maximum."""
    samples = []
    for ts, rt in rtts:
        if t_from <= ts <= t_to:
            samples.append(rt)
            k = rt - PROBE_INTERVAL_S
            while k > 0:
                samples.append(k)
                k -= PROBE_INTERVAL_S
    if not samples:
        return {"pings": 0, "ping_p50_ms": None, "ping_p99_ms": None, "ping_p999_ms": None, "ping_max_ms": None}
    samples.sort()

    def pct(p: float) -> float:
        return nearest_rank(samples, p) * 1e3

    return {"pings": sum(1 for ts, _ in rtts if t_from <= ts <= t_to), "ping_p50_ms": pct(0.5),
            "ping_p99_ms": pct(0.99), "ping_p999_ms": pct(0.999), "ping_max_ms": samples[-1] * 1e3}


def broker_argv(name: str, ringmq: Path, mosquitto: Path, workdir: Path):
    """(port, shards) -> argv for perf/compare's Broker: ringmq on one shard without the admin API, or Mosquitto with a
    temporary config (persistence off, anonymous, no connection limit, errors only)."""
    if name == "ringmq":
        return lambda port, _s: [str(ringmq), "--listen", f"127.0.0.1:{port}", "--shards", "1", "--no-admin",
                                 "--log-level", "warn"]

    def mosq(port: int, _s: int) -> list:
        conf = workdir / f"mosquitto-{port}.conf"
        conf.write_text(f"listener {port} 127.0.0.1\npersistence false\nallow_anonymous true\nmax_connections -1\n"
                        "log_dest stderr\nlog_type error\nconnection_messages false\n")
        return [str(mosquitto), "-c", str(conf)]
    return mosq


def table(runs: dict, metrics: list, fmt, ratio) -> str:
    """One line per metric: each broker's median over its runs and the ratio ringmq / Mosquitto."""
    def med(name: str, key: str):
        vals = [r[key] for r in runs.get(name, []) if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else None

    lines = [f"{'metric':38} {'ringmq':>10} {'mosquitto':>10} {'ratio':>9}"]
    for key, label, _ in metrics:
        a, b = med("ringmq", key), med("mosquitto", key)
        lines.append(f"{label:38} {fmt(a):>10} {fmt(b):>10} {ratio(a, b):>9}")
    return "\n".join(lines)


def side_by_side(tool: str, compare, names: list, ringmq: Path, mosquitto: Path, repeat: int, no_pin: bool, run,
                 metrics: list, json_path) -> int:
    """Runs `run(port, broker_pid) -> dict` against each named broker, `repeat` rounds with the first broker
    alternating, each broker started fresh and pinned to CPU 0 (this process, and what it starts, to CPU 1) unless
    no_pin; logs each run, prints the table of medians and writes every run as a JSON line to json_path if given. A
    run that raises RuntimeError or OSError is logged and skipped. Returns the exit status: 1 if a broker did not start
    or a run failed, else 0."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ringmq-{tool}-"))
    allowed = sorted(os.sched_getaffinity(0))  # a runner's cpuset need not start at CPU 0
    pin_broker = [] if no_pin or not shutil.which("taskset") or len(allowed) < 2 else ["taskset", "-c", str(allowed[0])]
    if pin_broker:
        os.sched_setaffinity(0, {allowed[1]})
    compare.log(f"machine:   {compare.machine_line()}")
    compare.log(f"command:   perf/{tool} {' '.join(sys.argv[1:])}".rstrip())
    runs: dict = {n: [] for n in names}
    failed = False
    for rnd in range(repeat):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            b = compare.Broker(name, broker_argv(name, ringmq, mosquitto, workdir), workdir, pin_broker, 1)
            why = b.start()
            if why:
                compare.log(f"{tool}: {why}")
                failed = True
                continue
            try:
                res = run(b.port, b.proc.pid)
            except (RuntimeError, OSError) as e:  # ConnectionError and TimeoutError are OSErrors
                compare.log(f"{tool}: {name} round {rnd + 1}: {e}")
                failed = True
                continue
            finally:
                b.stop()
            res.update(broker=name, round=rnd + 1)
            runs[name].append(res)
            compare.log(f"  {name} round {rnd + 1}: " + ", ".join(
                f"{k} {compare.fmt(res.get(k))}" for k, _, _ in metrics))
    print(table(runs, metrics, compare.fmt, compare.ratio))
    if json_path:
        Path(json_path).write_text("".join(json.dumps(r) + "\n" for n in names for r in runs[n]))
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0
