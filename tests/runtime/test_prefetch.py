"""The prefetcher: order, determinism, overlap with compute, errors, position, shutdown."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from symnet.runtime.prefetch import DataSourceError, Prefetcher


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("symnet-prefetch")]


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    gc.collect()
    deadline = time.monotonic() + 2
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch_threads() == []


class Counting:
    """Batch k holds k (and seeded noise); keeps a position."""

    def __init__(self, seed=0, fail_at=None, delay=0.0):
        self.k, self.produced, self.fail_at, self.delay = 0, 0, fail_at, delay
        self.rng = np.random.default_rng(seed)
        self.intervals = []
        self.closed = False

    def top_shapes(self):
        return [(2,), (3,)]

    def next_batch(self):
        t0 = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_at is not None and self.k == self.fail_at:
            raise ValueError(f"record {self.k} is corrupt")
        batch = [np.full(2, self.k, np.float32), self.rng.random(3).astype(np.float32)]
        self.k += 1
        self.produced += 1
        self.intervals.append((t0, time.perf_counter()))
        return batch

    def state(self):
        return {"k": self.k, "rng": self.rng.bit_generator.state}

    def set_state(self, st):
        self.k = st["k"]
        self.rng.bit_generator.state = st["rng"]

    def close(self):
        self.closed = True


def test_order_and_depth():
    src = Counting()
    with Prefetcher(src, depth=3, name="d") as pf:
        assert not pf.alive                      # starts at the first get()
        got = [pf.get()[0][0] for _ in range(10)]
        assert got == list(range(10))
        time.sleep(0.1)
        # queue of 3, plus one batch in hand of the thread
        assert src.produced <= 10 + 3 + 1
        assert pf.alive
    assert src.closed and not pf.alive


def test_deterministic_under_seed():
    def run(seed):
        with Prefetcher(Counting(seed), depth=2) as pf:
            return np.concatenate([pf.get()[1] for _ in range(6)])
    a, b, c = run(5), run(5), run(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_slow_source_overlaps_compute():
    src = Counting(delay=0.03)
    work = []
    with Prefetcher(src, depth=2, name="slow") as pf:
        for _ in range(6):
            pf.get()
            t0 = time.perf_counter()
            time.sleep(0.03)                      # the net's compute (GIL released)
            x = np.ones((64, 64)) @ np.ones((64, 64))
            work.append((t0, time.perf_counter()))
            assert x[0, 0] == 64
    produced = list(src.intervals)

    def overlaps(a, b):
        return a[0] < b[1] and b[0] < a[1]
    overlapping = [w for w in work if any(overlaps(w, p) for p in produced)]
    # while the consumer computed, the source was producing the next batches
    assert len(overlapping) >= len(work) - 2


def test_error_surfaces_with_layer_name_and_nothing_hangs():
    src = Counting(fail_at=2)
    pf = Prefetcher(src, depth=4, name="mnist (Data)")
    assert pf.get()[0][0] == 0 and pf.get()[0][0] == 1
    with pytest.raises(DataSourceError, match=r"mnist \(Data\).*ValueError.*record 2 is "
                                              r"corrupt") as info:
        pf.get()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.__cause__.__traceback__ is not None     # the source's traceback
    with pytest.raises(DataSourceError, match="record 2"):     # again, not a hang
        pf.get()
    assert not pf.alive
    pf.close()


def test_error_while_consumer_waits():
    src = Counting(fail_at=0, delay=0.05)
    with Prefetcher(src, depth=1, name="late") as pf:
        t0 = time.monotonic()
        with pytest.raises(DataSourceError, match="late"):
            pf.get()
        assert time.monotonic() - t0 < 5


def test_state_is_the_consumed_position():
    src = Counting(seed=1)
    with Prefetcher(src, depth=4) as pf:
        first = [pf.get() for _ in range(3)]
        time.sleep(0.05)
        assert src.k > 3                          # read ahead...
        st = pf.state()
        assert st["k"] == 3                       # ...but the position is after batch 3
        later = [pf.get() for _ in range(3)]
        pf.set_state(st)
        again = [pf.get() for _ in range(3)]
    for a, b in zip(later, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert first[0][0][0] == 0


def test_paused_rewinds_queued_batches():
    src = Counting()
    with Prefetcher(src, depth=4) as pf:
        pf.get()
        pf.get()
        time.sleep(0.05)
        with pf.paused() as s:
            assert s is src and not pf.alive
            assert s.k == 2                       # queued batches are given back
        assert pf.get()[0][0] == 2


def test_paused_clears_an_error():
    src = Counting(fail_at=1)
    with Prefetcher(src, depth=2, name="m") as pf:
        pf.get()
        with pytest.raises(DataSourceError):
            pf.get()
        with pf.paused() as s:
            s.fail_at = None
        assert pf.get()[0][0] == 1


def test_close_stops_thread_and_source():
    src = Counting(delay=0.02)
    pf = Prefetcher(src, depth=2, name="c", start=True)
    assert pf.alive and len(prefetch_threads()) == 1
    pf.close()
    pf.close()                                    # idempotent
    assert not pf.alive and src.closed
    assert prefetch_threads() == []
    with pytest.raises(DataSourceError, match="closed"):
        pf.get()


def test_dropped_prefetcher_stops_its_thread():
    pf = Prefetcher(Counting(), depth=2, start=True)
    pf.get()
    del pf
    gc.collect()
    deadline = time.monotonic() + 2
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch_threads() == []


def test_source_without_state():
    class Plain:
        def __init__(self):
            self.k = 0

        def top_shapes(self):
            return [(1,)]

        def next_batch(self):
            self.k += 1
            return [np.array([self.k], np.float32)]

    with Prefetcher(Plain(), depth=2) as pf:
        assert pf.state() is None
        assert [pf.get()[0][0] for _ in range(3)] == [1, 2, 3]
        with pytest.raises(DataSourceError, match="no set_state"):
            pf.set_state({})


def test_direct_changes_before_first_get_are_kept():
    src = Counting(seed=0)
    with Prefetcher(src, depth=2) as pf:
        src.k = 10                                # e.g. a reseed or set_arrays, not paused
        assert pf.get()[0][0] == 10
        assert pf.state()["k"] == 11
        with pf.paused():
            pass
        assert pf.get()[0][0] == 11
