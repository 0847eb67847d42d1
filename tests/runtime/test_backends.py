"""Backend selection and the adapters: the default backend, the cuda backend's error
without pycuda or a GPU, and cuda-emu's launch of synchronising blocks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symnet as sn
from symnet.runtime import cpu, devices, executor


def small_function(backend=None):
    with sn.graph_scope():
        x = sn.input("x", (4, 3))
        return sn.function([x], [sn.tanh(x).sum(1)], backend=backend)


@pytest.fixture
def no_pycuda(monkeypatch):
    """Make every pycuda import fail, as on a machine without the extra."""
    for name in ("pycuda", "pycuda.autoinit", "pycuda.driver", "pycuda.compiler"):
        monkeypatch.setitem(sys.modules, name, None)


def test_cuda_without_pycuda_says_how_to_install(no_pycuda):
    with pytest.raises(RuntimeError) as info:
        small_function("cuda")
    msg = str(info.value)
    assert "pip install 'symnet[cuda]'" in msg, msg
    assert "pycuda" in msg


@pytest.mark.skipif(devices.cuda_usable(), reason="a GPU is usable here")
def test_cuda_on_this_machine_fails_clearly():
    with pytest.raises(RuntimeError, match=r"pip install 'symnet\[cuda\]'"):
        small_function("cuda")


def test_cuda_usable_is_false_without_pycuda(no_pycuda):
    devices.cuda_usable.cache_clear()
    try:
        assert devices.cuda_usable() is False
    finally:
        devices.cuda_usable.cache_clear()


def test_default_backend_from_environment(monkeypatch):
    monkeypatch.setenv("SYMNET_BACKEND", "cuda-emu")
    assert sn.default_backend() == "cuda-emu"
    fn = small_function()
    assert fn.backend == "cuda-emu" and set(fn.sources) == {"cuda-emu"}
    monkeypatch.setenv("SYMNET_BACKEND", "numpy")
    assert small_function().backend == "numpy"
    monkeypatch.setenv("SYMNET_BACKEND", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        sn.default_backend()


def test_default_backend_is_cuda_where_usable_else_cpu(monkeypatch):
    monkeypatch.delenv("SYMNET_BACKEND", raising=False)
    assert sn.default_backend() == ("cuda" if devices.cuda_usable() else "cpu")


def test_default_backend_without_pycuda_is_cpu(monkeypatch, no_pycuda):
    monkeypatch.delenv("SYMNET_BACKEND", raising=False)
    devices.cuda_usable.cache_clear()
    try:
        assert sn.default_backend() == "cpu"
    finally:
        devices.cuda_usable.cache_clear()


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        small_function("opencl")
    with pytest.raises(ValueError):
        executor.make_backend("opencl", None)


def test_cpu_flags():
    flags = cpu.compile_flags() if hasattr(cpu, "compile_flags") else cpu.FLAGS
    assert "-O3" in flags and "-fopenmp" in flags
    assert "-ffast-math" not in flags     # IEEE semantics kept


def test_cpu_vector_math_declarations():
    header = cpu.vector_math_header()
    if not header:
        pytest.skip("no libmvec on this machine")
    assert 'simd("notinbranch")' in header and "expf" in header


def test_cuda_emu_block_runs_within_a_small_thread_limit(tmp_path):
    """A synchronising block's threads are fibers on one OS thread, so a launch of 256-
    thread blocks runs correctly even when OpenMP may start only 2 threads in all."""
    code = textwrap.dedent("""
        import numpy as np, symnet as sn
        x = np.arange(4 * 30000, dtype=np.float32).reshape(4, 30000) % 7
        with sn.graph_scope():
            xi = sn.input("x", x.shape)
            fn = sn.function([xi], [xi.sum(1), xi.max(1)], backend="cuda-emu")
        s, m = fn(x)
        assert any(st.block >= 256 for st in fn.plan.steps), fn.report_text()
        np.testing.assert_array_equal(s, x.astype(np.float64).sum(1))
        np.testing.assert_array_equal(m, 6)
        print("OK")
    """)
    env = dict(os.environ, OMP_THREAD_LIMIT="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr + out.stdout


def test_cuda_emu_block_reduction_uses_every_thread():
    """Rows longer than a block and not a multiple of it; sums exact in float32."""
    x = np.ones((3, 1000), np.float32)
    x[1] = 2.0
    x[2, ::7] = 0.5
    with sn.graph_scope():
        xi = sn.input("x", x.shape)
        fn = sn.function([xi], [xi.sum(1), xi.max(1), xi.min(1)], backend="cuda-emu")
    s, mx, mn = fn(x)
    np.testing.assert_array_equal(s, x.astype(np.float64).sum(1))
    np.testing.assert_array_equal(mx, [1, 2, 1])
    np.testing.assert_array_equal(mn, [1, 2, 0.5])
