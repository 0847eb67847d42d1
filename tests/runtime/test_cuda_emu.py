"""The cuda-emu execution model (runtime/include/sn_cuda_emu.h): CUDA kernels written
here, compiled with the emulation header as runtime/cuda_emu.py compiles modules, and
checked against NumPy: block barriers and shared memory, warp shuffles, warps that run
different numbers of shuffles, threads that return before a barrier, deadlocks reported
instead of hanging, and the number of OS threads a launch starts."""
from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np
import pytest

from symnet.runtime import cache, cuda_emu

PRELUDE = '#define SN_KERNEL extern "C" __global__ void\n'


def build(source, kernels):
    """{name: launch(grid, block, *args) -> status} for kernels [(name, arg_types, sync)];
    sync None: as the backend decides (uses_barriers)."""
    launchers = []
    for name, types, sync in kernels:
        if sync is None:
            sync = cuda_emu.uses_barriers(source, name)
        launchers.append(cuda_emu.launcher_source(name, types, sync))
    text = cuda_emu.HEADER.read_text() + "\n" + PRELUDE + source + "\n" + "\n".join(launchers)
    lib = ctypes.CDLL(str(cache.build(text, ".cpp", cuda_emu.CXX, cuda_emu.FLAGS)))
    ctype = {"p": ctypes.c_void_p, "l": ctypes.c_long, "f": ctypes.c_float}
    out = {}
    for name, types, _ in kernels:
        fn = getattr(lib, f"sn_launch_{name}")
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [ctype[t] for t in types]
        fn.restype = ctypes.c_int
        out[name] = fn
    return out


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


BLOCK_SUM = r"""
SN_KERNEL block_sum(float* out, const float* x, long n) {
  __shared__ float sh[256];
  unsigned t = threadIdx.x;
  float acc = 0.0f;
  for (long i = (long)blockIdx.x * blockDim.x + t; i < n; i += (long)blockDim.x * gridDim.x)
    acc += x[i];
  sh[t] = acc;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = sh[0];
}
"""


def test_block_reduction_sums_exactly():
    fns = build(BLOCK_SUM, [("block_sum", "ppl", None)])
    assert cuda_emu.uses_barriers(BLOCK_SUM, "block_sum")
    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, 100_000).astype(np.float32)   # exact in float32
    for grid, block in [(1, 256), (7, 256), (40, 128), (3, 64)]:
        out = np.full(grid, np.nan, np.float32)
        assert fns["block_sum"](grid, block, ptr(out), ptr(x), x.size) == 0
        stride = grid * block
        idx = np.arange(x.size)
        want = np.array([x[(idx % stride) // block == b].sum() for b in range(grid)])
        np.testing.assert_array_equal(out, want)


SHUFFLES = r"""
SN_KERNEL shuffles(float* out, const float* x, float* ints) {
  const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = x[t];
  const int iv = (int)t * 7 - 100;
  float* o = out + 8 * t;
  o[0] = __shfl_down_sync(0xffffffffu, v, 1);
  o[1] = __shfl_down_sync(0xffffffffu, v, 5);
  o[2] = __shfl_xor_sync(0xffffffffu, v, 3);
  o[3] = __shfl_sync(0xffffffffu, v, 7);
  o[4] = __shfl_up_sync(0xffffffffu, v, 2);
  o[5] = __shfl_down_sync(0xffffffffu, v, 2, 8);
  o[6] = __shfl_xor_sync(0xffffffffu, v, 16, 16);
  __syncwarp();
  o[7] = __shfl_sync(0xffffffffu, v, 3, 4);
  ints[2 * t] = (float)__shfl_xor_sync(0xffffffffu, iv, 9);
  ints[2 * t + 1] = (float)__shfl_down_sync(0xffffffffu, iv, 31);
}
"""


def shuffle_reference(x):
    lane = np.arange(x.size) % 32
    base = np.arange(x.size) - lane

    def at(src, own):
        return np.where(own, x, x[base + np.clip(src, 0, 31)])

    def down(d, w=32):
        return at(lane + d, (lane % w) + d >= w)

    return np.stack([
        down(1), down(5), at(lane ^ 3, False), at(np.full_like(lane, 7), False),
        at(lane - 2, lane < 2), down(2, 8), at(lane ^ 16, True),
        at((lane & ~3) + 3, False)], axis=1)


def test_shuffles_match_numpy():
    fns = build(SHUFFLES, [("shuffles", "ppp", True)])
    x = np.random.default_rng(1).standard_normal(3 * 128).astype(np.float32)
    out = np.zeros((x.size, 8), np.float32)
    ints = np.zeros((x.size, 2), np.float32)
    assert fns["shuffles"](3, 128, ptr(out), ptr(x), ptr(ints)) == 0
    np.testing.assert_array_equal(out, shuffle_reference(x))
    t = np.arange(x.size)
    iv = t * 7 - 100
    lane, base = t % 32, t - t % 32
    np.testing.assert_array_equal(ints[:, 0], iv[base + (lane ^ 9)])
    np.testing.assert_array_equal(ints[:, 1], np.where(lane == 0, iv[base + 31], iv))


WARP_ROWS = r"""
/* a warp per row: warp w of the grid handles rows w, w + warps, ...; the warps of a
   block run different numbers of rows, hence of shuffles */
SN_KERNEL warp_rows(float* out, const float* x, long n_rows, long n_cols) {
  const unsigned lane = threadIdx.x % 32;
  const long warps = (long)gridDim.x * blockDim.x / 32;
  for (long row = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < n_rows;
       row += warps) {
    float acc = 0.0f;
    for (long c = lane; c < n_cols; c += 32) acc += x[row * n_cols + c];
    for (int d = 16; d > 0; d >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, d);
    float mx = -INFINITY;
    for (long c = lane; c < n_cols; c += 32) mx = fmaxf(mx, x[row * n_cols + c]);
    for (int d = 1; d < 32; d <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
    if (lane == 0) out[2 * row] = acc;
    if (lane == 5) out[2 * row + 1] = mx;
  }
}
"""


@pytest.mark.parametrize("grid, block, rows, cols", [(1, 128, 11, 70), (2, 256, 37, 33),
                                                      (3, 96, 100, 5), (1, 1024, 40, 64)])
def test_warps_with_different_trip_counts(grid, block, rows, cols):
    fns = build(WARP_ROWS, [("warp_rows", "ppll", True)])
    rng = np.random.default_rng(rows)
    x = rng.integers(-50, 50, (rows, cols)).astype(np.float32)
    out = np.full((rows, 2), np.nan, np.float32)
    assert fns["warp_rows"](grid, block, ptr(out), ptr(x), rows, cols) == 0
    np.testing.assert_array_equal(out[:, 0], x.sum(1))
    np.testing.assert_array_equal(out[:, 1], x.max(1))


EXITS = r"""
/* threads at or past `live` return at once; the others still meet at barriers */
SN_KERNEL exits(float* out, const float* x, long live) {
  __shared__ float sh[1024];
  const unsigned t = threadIdx.x;
  if (t >= live) return;
  sh[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  if (t % 3 == 0) return;    /* more threads leave between barriers */
  __syncthreads();
  float acc = 0.0f;
  for (long k = 0; k < live; ++k) acc += sh[k];
  __syncthreads();
  sh[t] = acc + t;
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = sh[t] + sh[1];
}
"""


@pytest.mark.parametrize("block, live", [(128, 128), (128, 77), (256, 1), (64, 33)])
def test_exited_threads_count_as_arrived(block, live):
    fns = build(EXITS, [("exits", "ppl", None)])
    grid = 3
    x = np.random.default_rng(block + live).integers(-9, 9, grid * block).astype(np.float32)
    out = np.full(grid * block, -7.0, np.float32)
    assert fns["exits"](grid, block, ptr(out), ptr(x), live) == 0
    want = np.full((grid, block), -7.0, np.float32)
    xs = x.reshape(grid, block)
    for b in range(grid):
        total = xs[b, :live].sum()
        for t in range(live):
            if t % 3:
                want[b, t] = total + t + (total + 1 if live > 1 else 0)
    if live > 1:
        np.testing.assert_array_equal(out.reshape(grid, block), want)
    else:
        np.testing.assert_array_equal(out, np.full(grid * block, -7.0, np.float32))


DEADLOCK = r"""
/* lane 0 of warp 0 waits at the block barrier while its warp waits at a warp barrier:
   neither barrier can release */
SN_KERNEL deadlock(float* out) {
  if (threadIdx.x == 0) __syncthreads();
  else __syncwarp();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
/* a barrier in a kernel launched without fibers */
SN_KERNEL stray(float* out) {
  __syncthreads();
  out[threadIdx.x] = 2.0f;
}
"""


def test_deadlock_is_reported_not_hung():
    fns = build(DEADLOCK + BLOCK_SUM, [("deadlock", "p", None), ("stray", "p", False),
                                       ("block_sum", "ppl", None)])
    out = np.zeros(4 * 128, np.float32)
    t0 = time.perf_counter()
    assert fns["deadlock"](4, 128, ptr(out)) == 2
    assert time.perf_counter() - t0 < 10
    assert fns["stray"](1, 32, ptr(out)) == 3
    assert fns["deadlock"](1, 2048, ptr(out)) == 1          # larger than any CUDA block
    # the stacks the abandoned block used serve the next launch
    x = np.arange(1000, dtype=np.float32)
    sums = np.zeros(2, np.float32)
    assert fns["block_sum"](2, 256, ptr(sums), ptr(x), x.size) == 0
    assert sums.sum() == x.sum()


def test_synchronising_launch_stays_within_the_openmp_team():
    fns = build(BLOCK_SUM, [("block_sum", "ppl", None)])
    team = ctypes.CDLL("libgomp.so.1").omp_get_max_threads()
    x = np.ones(1 << 22, np.float32)
    out = np.zeros(2000, np.float32)
    fns["block_sum"](2, 256, ptr(out), ptr(x), 1024)        # starts the team's threads
    base = len(os.listdir("/proc/self/task"))
    peak = [base]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            assert fns["block_sum"](2000, 256, ptr(out), ptr(x), x.size) == 0
    finally:
        done.set()
        watcher.join()
    assert out.sum() == x.size
    # the watcher is one more thread; the launch may add at most the team's workers
    assert peak[0] <= base + 1 + max(team - 1, 0), (peak[0], base, team)
