"""The executor: buffers kept between calls, repeatable results, ``out=`` writing into
the caller's arrays without allocating, and a runtime that runs a Plan without sympy
or networkx."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
import symnet.codegen
import symnet.runtime

RUNTIME_DIR = Path(symnet.runtime.__file__).parent
CODEGEN_DIR = Path(symnet.codegen.__file__).parent


def graph(backend):
    """Several outputs of different kinds: elementwise, reduction, matmul, pooling."""
    x = sn.input("x", (4, 3, 8, 8))
    w = sn.input("w", (8, 5))
    h = sn.tanh(x) * 2.0 + 1.0
    s = h.sum((2, 3))
    p = sn.max_pool2d(h, 2)
    m = sn.matmul(sn.reshape(p, (4 * 3 * 4, 4)), w[:4])
    return [x, w], [h, s, m, sn.grad((m * m).sum(), x)]


def inputs(seed):
    r = np.random.default_rng(seed)
    return [r.standard_normal((4, 3, 8, 8)).astype(np.float32),
            r.standard_normal((8, 5)).astype(np.float32)]


@pytest.fixture
def compiled(backend):
    with sn.graph_scope():
        ins, outs = graph(backend)
        fn = sn.function(ins, outs, backend=backend)
        ref = sn.function(ins, outs, backend="numpy")
    return fn, ref


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_called_twice_same_result(compiled):
    fn, ref = compiled
    xs = inputs(0)
    first = fn(*xs)
    second = fn(*xs)
    for a, b, r in zip(first, second, ref(*xs)):
        np.testing.assert_array_equal(a, b)
        close(a, r)


def test_new_inputs_leave_earlier_results_alone(compiled):
    fn, ref = compiled
    x0, x1 = inputs(1), inputs(2)
    r0 = fn(*x0)
    keep = [a.copy() for a in r0]
    r1 = fn(*x1)
    for a, k in zip(r0, keep):
        np.testing.assert_array_equal(a, k)
    for a, r in zip(r1, ref(*x1)):
        close(a, r)
    # inputs are not modified
    for a, b in zip(x1, inputs(2)):
        np.testing.assert_array_equal(a, b)


def test_out_writes_into_caller_arrays(compiled):
    fn, ref = compiled
    xs = inputs(3)
    want = ref(*xs)
    outs = [np.full(w.shape, np.nan, np.float32) for w in want]
    got = fn(*xs, out=outs)
    assert len(got) == len(outs)
    for g, o, w in zip(got, outs, want):
        assert g is o
        close(o, w)
    # again, into the same arrays, with other inputs
    xs2 = inputs(4)
    got2 = fn(*xs2, out=outs)
    for g, o, w in zip(got2, outs, ref(*xs2)):
        assert g is o
        close(o, w)


def test_out_single_output(backend):
    with sn.graph_scope():
        x = sn.input("x", (5,))
        fn = sn.function([x], sn.exp(x), backend=backend)
    a = np.linspace(-1, 1, 5, dtype=np.float32)
    o = np.zeros(5, np.float32)
    r = fn(a, out=[o])
    assert r is o
    np.testing.assert_allclose(o, np.exp(a), rtol=1e-6)


def test_out_repeated_and_input_outputs(backend):
    with sn.graph_scope():
        x = sn.input("x", (2, 3))
        y = sn.sigmoid(x)
        fn = sn.function([x], [y, x, y, sn.reshape(y, (3, 2))], backend=backend)
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    outs = [np.empty((2, 3), np.float32), np.empty((2, 3), np.float32),
            np.empty((2, 3), np.float32), np.empty((3, 2), np.float32)]
    got = fn(a, out=outs)
    assert all(g is o for g, o in zip(got, outs))
    want = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(outs[0], want, rtol=1e-6)
    np.testing.assert_array_equal(outs[1], a)
    np.testing.assert_array_equal(outs[2], outs[0])
    np.testing.assert_array_equal(outs[3], outs[0].reshape(3, 2))


def test_out_validation(backend):
    with sn.graph_scope():
        x = sn.input("x", (2, 3))
        fn = sn.function([x], [x * 2, x.sum()], backend=backend)
    a = np.ones((2, 3), np.float32)
    with pytest.raises(sn.ShapeError):
        fn(a, out=[np.empty((3, 2), np.float32), np.empty((), np.float32)])
    with pytest.raises(sn.ShapeError):
        fn(a, out=[np.empty((2, 3), np.float64), np.empty((), np.float32)])
    with pytest.raises(sn.ShapeError):
        fn(a, out=[np.empty((3, 2), np.float32).T, np.empty((), np.float32)])
    with pytest.raises(sn.GraphError):
        fn(a, out=[np.empty((2, 3), np.float32)])
    with pytest.raises(sn.ShapeError):
        fn(np.ones((3, 2), np.float32))


def test_immutable_buffers_are_never_written(compiled_backend):
    """An array over immutable bytes, or a read-only memmap, is refused as a destination
    (kernels write through raw addresses, which ignore NumPy's flag), and wrapping one in
    a SyncedMemory that a kernel would write is refused too; the bytes stay as they were."""
    with sn.graph_scope():
        x = sn.input("x", (2, 3))
        fn = sn.function([x], [x * 2], backend=compiled_backend)
    a = np.ones((2, 3), np.float32)
    frozen = bytes(24)
    dst = np.frombuffer(frozen, np.float32).reshape(2, 3)
    with pytest.raises(sn.ShapeError, match="read-only"):
        fn(a, out=[dst])
    with pytest.raises(sn.ShapeError, match="read-only"):
        fn(a, out=[sn.runtime.SyncedMemory.wrap(dst)])
    assert frozen == bytes(24)
    with pytest.raises(sn.ShapeError, match="expected a float32 array"):
        sn.runtime.SyncedMemory.wrap(np.ones((2, 3)))
    strided = sn.runtime.SyncedMemory.wrap(np.ones((3, 2), np.float32).T)
    with pytest.raises(sn.ShapeError, match="not contiguous; expected C-contiguous float32"):
        fn(strided)
    with pytest.raises(sn.ShapeError, match="not contiguous; expected C-contiguous float32"):
        fn(a, out=[strided])


def test_executor_checks_every_argument_before_any_step(compiled_backend):
    """The executor is the last line before raw addresses: counts and sizes of inputs,
    params and destinations are checked (a short list would leave a null pointer, a
    short array a read past its end), and nothing is written when one is wrong."""
    with sn.graph_scope():
        x = sn.input("x", (2, 3))
        w = sn.param("w", (3,), value=np.arange(3, dtype=np.float32))
        fn = sn.function([x], [x * w], backend=compiled_backend)
    ex = fn._impl.executor
    a = np.ones((2, 3), np.float32)
    w_mem = sn.runtime.SyncedMemory.wrap(np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(ex.run([a], [w_mem])[0], a * np.arange(3))
    with pytest.raises(sn.ShapeError, match=r"0 params given, expected 1"):
        ex.run([a], [])
    with pytest.raises(sn.ShapeError, match=r"0 inputs given, expected 1"):
        ex.run([], [w_mem])
    with pytest.raises(sn.ShapeError, match=r"input '.*': 4 values given, expected 6"):
        ex.run([np.ones(4, np.float32)], [w_mem])
    with pytest.raises(sn.ShapeError, match=r"param 'w': 2 values given, expected 3"):
        ex.run([a], [sn.runtime.SyncedMemory.wrap(np.ones(2, np.float32))])
    keep = np.full((2, 3), 7, np.float32)
    with pytest.raises(sn.ShapeError, match=r"output '.*': 5 values given, expected 6"):
        ex.run([a], [w_mem], out=[sn.runtime.SyncedMemory.wrap(np.ones(5, np.float32))])
    with pytest.raises(sn.ShapeError, match="input"):
        ex.run([np.ones(4, np.float32)], [w_mem], out=[keep])
    np.testing.assert_array_equal(keep, 7)


def test_steady_state_call_allocates_nothing(compiled_backend):
    """With out=, a call allocates no arrays (tracemalloc sees NumPy's allocations)."""
    with sn.graph_scope():
        x = sn.input("x", (512, 512))
        w = sn.input("w", (16, 16))
        h = sn.tanh(x) * x
        m = sn.matmul(x[:16, :16], w.T)          # a small GEMM: cuda-emu runs it slowly
        fn = sn.function([x, w], [h, (h * h).sum(), sn.max_pool2d(
            sn.reshape(h, (1, 1, 512, 512)), 2), m], backend=compiled_backend)
    r = np.random.default_rng(5)
    a, b = r.standard_normal((512, 512)).astype(np.float32), r.standard_normal(
        (16, 16)).astype(np.float32)
    outs = [np.empty(o.shape, np.float32) for o in fn.outputs]
    fn(a, b, out=outs)          # warm up
    tracemalloc.start()
    try:
        for _ in range(3):
            fn(a, b, out=outs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"a steady-state call allocated {peak} bytes (arrays are 1 MiB)"


def test_runtime_sources_import_no_sympy_or_networkx():
    for path in sorted(RUNTIME_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                assert node.level <= 1, f"{path.name} imports from outside the runtime"
            for n in names:
                root = n.split(".")[0]
                assert root not in ("sympy", "networkx", "symnet"), f"{path.name} imports {n}"


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_runtime_runs_plan_without_sympy_or_networkx(tmp_path, backend):
    """A serialised Plan runs in a process where sympy and networkx cannot be imported,
    with the runtime and the Plan class loaded on their own."""
    xs = inputs(6)
    with sn.graph_scope():
        ins, outs = graph(backend)
        fn = sn.function(ins, outs, backend=backend)
    want = fn(*xs)
    (tmp_path / "plan.json").write_text(fn.plan.to_json())
    for i, a in enumerate(xs):
        np.save(tmp_path / f"in{i}.npy", a)
    script = textwrap.dedent(f"""
        import importlib, importlib.util, sys
        sys.modules["sympy"] = None        # any import of them raises ImportError
        sys.modules["networkx"] = None
        import numpy as np
        spec = importlib.util.spec_from_file_location(
            "snrt", {str(RUNTIME_DIR / "__init__.py")!r},
            submodule_search_locations=[{str(RUNTIME_DIR)!r}])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["snrt"] = pkg
        spec.loader.exec_module(pkg)
        executor = importlib.import_module("snrt.executor")
        pspec = importlib.util.spec_from_file_location("snplan", {str(CODEGEN_DIR / "plan.py")!r})
        planmod = importlib.util.module_from_spec(pspec)
        sys.modules["snplan"] = planmod
        pspec.loader.exec_module(planmod)
        plan = planmod.Plan.from_json(open({str(tmp_path / "plan.json")!r}).read())
        ins = [np.load({str(tmp_path)!r} + f"/in{{i}}.npy") for i in range({len(xs)})]
        outs = executor.Executor(plan).run(ins, [])
        for i, o in enumerate(outs):
            np.save({str(tmp_path)!r} + f"/out{{i}}.npy", o)
        bad = [m for m, v in sys.modules.items() if v is not None and
               m.split(".")[0] in ("sympy", "networkx", "symnet")]
        assert not bad, bad
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, w in enumerate(want):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{i}.npy"), w)
