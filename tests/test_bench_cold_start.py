"""`python -m mmgdino.bench.cold_start`: how one process is timed and its peak memory read (the whole benchmark
compiles the tiny model for minutes: it runs as a benchmark, not here)."""

import sys

import pytest

from mmgdino.bench import cold_start


def test_a_process_peak_is_its_own_not_the_benchmarks():
    ballast = bytearray(600 * 2**20)  # this process is large; a child forked from it would report at least this
    ballast[::4096] = b"x" * len(ballast[::4096])
    seconds, peak_mib = cold_start.timed_process(
        [sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    )
    assert seconds > 0 and 200 <= peak_mib < 500


def test_a_failing_process_is_one_error_naming_it():
    with pytest.raises(RuntimeError, match="failed"):
        cold_start.timed_process([sys.executable, "-c", "raise SystemExit(3)"])
