#!/usr/bin/python3
"""Runs the ringmq integration tests.

    /usr/bin/python3 tests/integration/run.py [-v] [-k PATTERN ...] [--timeout SECONDS]

The broker binary is $RINGMQ_BIN (default build/src/app/ringmq). Each test starts its own broker(s) on port 0
and stops them. A test running longer than --timeout (default 60 s) is interrupted and counted as failed.
The last line printed is `integration: N passed, N failed` (with `, N skipped` when any were skipped); the exit
status is non-zero when anything failed.
"""

import argparse
import fnmatch
import os
import signal
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout("test exceeded the per-test timeout")


class TimedResult(unittest.TextTestResult):
    """Arms SIGALRM around each test and counts outcomes."""

    per_test_timeout = 60

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passed = 0
        self._failed_ids = set()
        self._started = 0.0
        self.durations = []

    def startTest(self, test):
        self._started = time.monotonic()
        signal.alarm(self.per_test_timeout)
        super().startTest(test)

    def stopTest(self, test):
        signal.alarm(0)
        self.durations.append((time.monotonic() - self._started, test.id()))
        super().stopTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._failed_ids.add(test.id())


def test_id(test):
    """The id of the test itself (a failed subtest counts against its test)."""
    parent = getattr(test, "test_case", None)
    return parent.id() if parent is not None else test.id()


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def matches(test_id, patterns):
    if not patterns:
        return True
    for p in patterns:
        if any(ch in p for ch in "*?[") and fnmatch.fnmatchcase(test_id, p if p.startswith("*") else "*" + p):
            return True
        if p.lower() in test_id.lower():
            return True
    return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", action="append", default=[], metavar="PATTERN",
                    help="run only tests whose id contains PATTERN (or matches it as a glob); repeatable")
    ap.add_argument("-v", action="store_true", help="verbose: one line per test")
    ap.add_argument("--timeout", type=int, default=60, help="per-test timeout in seconds (default 60)")
    ap.add_argument("--durations", type=int, default=0, metavar="N", help="print the N slowest tests")
    ap.add_argument("--list", action="store_true", help="list the selected tests and exit")
    args = ap.parse_args(argv)

    loader = unittest.TestLoader()
    discovered = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = []
    load_errors = []
    for t in iter_tests(discovered):
        if type(t).__name__ in ("_FailedTest", "ModuleImportFailure"):
            load_errors.append(t)
            tests.append(t)
        elif matches(t.id(), args.k):
            tests.append(t)
    if args.list:
        for t in tests:
            print(t.id())
        print(f"{len(tests)} tests")
        return 0

    if not tests:
        print("no tests selected")
        print("integration: 0 passed, 0 failed")
        return 1

    from broker import broker_bin
    binary = broker_bin()
    if not os.access(binary, os.X_OK):
        print(f"broker binary {binary} is missing or not executable (build it, or set RINGMQ_BIN)")
        print(f"integration: 0 passed, {len(tests)} failed")
        return 1

    signal.signal(signal.SIGALRM, _alarm)
    TimedResult.per_test_timeout = args.timeout
    suite = unittest.TestSuite(tests)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2 if args.v else 1, resultclass=TimedResult,
                                     buffer=False)
    start = time.monotonic()
    result = runner.run(suite)
    elapsed = time.monotonic() - start

    failed_ids = {test_id(t) for t, _ in result.failures + result.errors} \
        | {test_id(t) for t in result.unexpectedSuccesses} | result._failed_ids
    skipped = len(result.skipped)
    # A test whose subtests failed is not also counted as passed.
    passed = len(tests) - len(failed_ids) - skipped - len({t.id() for t, _ in result.expectedFailures})
    passed = max(passed, 0)
    failed = len(failed_ids)
    if args.durations:
        print(f"slowest {args.durations} tests:")
        for d, tid in sorted(result.durations, reverse=True)[:args.durations]:
            print(f"  {d:6.2f}s {tid}")
    print(f"integration tests took {elapsed:.1f}s")
    if failed_ids:
        print("failed:")
        for tid in sorted(failed_ids):
            print(f"  {tid}")
    line = f"integration: {passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line)
    sys.stdout.flush()
    return 1 if failed or not result.wasSuccessful() else 0


if __name__ == "__main__":
    sys.exit(main())
