"""Fusion and the module text: kernel counts for known patterns, what is stored, kernel
reuse and naming, deterministic source, and the report."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pytest

import symnet as sn
from symnet.codegen import lower
from cghelp import assert_close, check, kernel_definitions, rng_for

@pytest.fixture
def backend(compiled_backend):
    """Here: the backends that run generated code (cuda skips without a GPU)."""
    return compiled_backend


def chain10(x):
    """Ten elementwise ops, one graph node each."""
    y = sn.tanh(x)
    y = y * 2.0
    y = y + 1.0
    y = sn.sigmoid(y)
    y = sn.sin(y)
    y = -y
    y = sn.softplus(y)
    y = sn.cos(y)
    y = y * y
    return sn.erf(y)


def kernels(fn):
    return [r for r in fn.report() if r["kind"] == "kernel"]


def compile_fn(backend, build, shapes, grad_of=None):
    """fn(inputs) for outputs build(*inputs)."""
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        outs = build(*xs)
        return sn.function(xs, outs, backend=backend)


def test_chain_graph_has_ten_elementwise_nodes():
    with sn.graph_scope() as g:
        x = sn.input("x", (3,))
        y = chain10(x)
        nodes = g.ancestors([y.id])
    assert sum(isinstance(g.op(n), sn.ops.Elementwise) for n in nodes) == 10


def test_chain_of_ten_forward_is_one_kernel(backend):
    x = rng_for("chain").standard_normal((64, 33)).astype(np.float32)
    fn = compile_fn(backend, lambda x: chain10(x), [x.shape])
    rows = fn.report()
    assert len(rows) == 1 and rows[0]["kind"] == "kernel", fn.report_text()
    assert len(rows[0]["ops"]) == 10
    # reads x once and writes only the result: no intermediate reaches memory
    assert rows[0]["bytes_read"] == 4 * x.size
    assert rows[0]["bytes_written"] == 4 * x.size
    with sn.graph_scope():
        xi = sn.input("x", x.shape)
        want = sn.function([xi], chain10(xi), backend="numpy")(x)
    assert_close(fn(x), want, 1e-5)


def test_chain_of_ten_backward_is_one_kernel(backend):
    """dx of chain.sum(): the backward graph recomputes the forward values from x in
    the same kernel instead of storing them."""
    x = rng_for("chainb").standard_normal((64, 33)).astype(np.float32)
    with sn.graph_scope():
        xi = sn.input("x", x.shape)
        dx = sn.grad(chain10(xi).sum(), xi)
        fn = sn.function([xi], dx, backend=backend)
        want = sn.function([xi], dx, backend="numpy")(x)
    rows = fn.report()
    assert len(rows) == 1 and rows[0]["kind"] == "kernel", fn.report_text()
    assert rows[0]["bytes_read"] == 4 * x.size and rows[0]["bytes_written"] == 4 * x.size
    assert_close(fn(x), want, 5e-5)


def test_value_and_gradient_share_one_kernel(backend):
    """A group may have several outputs: y and dy/dx (with a cotangent fed) in one."""
    with sn.graph_scope():
        xi, gi = sn.input("x", (16, 16)), sn.input("g", (16, 16))
        y = chain10(xi)
        (dx,) = sn.vjp([y], [gi], [xi])
        fn = sn.function([xi, gi], [y, dx], backend=backend)
    rows = fn.report()
    assert len(rows) == 1, fn.report_text()
    assert rows[0]["bytes_written"] == 2 * 4 * 256 and rows[0]["bytes_read"] == 2 * 4 * 256


def test_broadcast_inputs_fuse(backend):
    """Scalars, per-channel vectors and rows are broadcast loads of one kernel."""
    def f(x, s, c, r):
        y = x * c + s
        y = sn.maximum(y, 0.0) * r
        return sn.tanh(y - s) * c

    fn = compile_fn(backend, f, [(2, 3, 4, 5), (), (1, 3, 1, 1), (5,)])
    assert len(fn.report()) == 1, fn.report_text()
    assert fn.report()[0]["bytes_read"] == 4 * (120 + 1 + 3 + 5)


def test_softmax_forward_at_most_two_kernels(backend):
    x = rng_for("softmax").standard_normal((8, 100)).astype(np.float32)

    def softmax(x):
        e = sn.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    fn = compile_fn(backend, softmax, [x.shape])
    rows = fn.report()
    assert len(rows) <= 2 and all(r["kind"] == "kernel" for r in rows), fn.report_text()
    # no full-size intermediate is written: only the output and per-row values
    assert sum(r["bytes_written"] for r in rows) <= 4 * (x.size + 2 * 8), fn.report_text()
    e = np.exp(x - x.max(-1, keepdims=True))
    assert_close(fn(x), e / e.sum(-1, keepdims=True), 2e-5)


def test_reduction_takes_prologue(backend):
    """sum(exp(x - m)) reads x and m, writes only the sum: one kernel."""
    fn = compile_fn(backend, lambda x, m: sn.exp(x - m).sum(1, keepdims=True),
                    [(8, 100), (8, 1)])
    rows = fn.report()
    assert len(rows) == 1, fn.report_text()
    ops = " ".join(rows[0]["ops"])
    assert "exp" in ops and "sub" in ops and "sum" in ops
    assert rows[0]["bytes_read"] == 4 * (800 + 8) and rows[0]["bytes_written"] == 4 * 8
    r = rng_for("prologue")
    x, m = r.standard_normal((8, 100)).astype(np.float32), r.standard_normal((8, 1)).astype(
        np.float32)
    assert_close(fn(x, m), np.exp(x - m).sum(1, keepdims=True), 2e-5)


@pytest.mark.parametrize("epilogues", [False, True], ids=["separate", "epilogue"])
def test_only_values_needed_outside_are_stored(backend, epilogues, monkeypatch):
    """A matmul between two elementwise groups: the group before it stores only the
    matmul's operand, the group after it only the output. On the cpu backend with GEMM
    epilogues (lower.GEMM_EPILOGUES) the group after it runs inside the GEMM's kernel,
    which then writes only the output (the product is rewritten in place)."""
    from symnet.codegen import lower
    monkeypatch.setattr(lower, "GEMM_EPILOGUES", epilogues)

    def f(x, w):
        h = sn.tanh(x * 2.0 + 1.0)           # stored: read by the matmul
        y = sn.matmul(h, w)
        return sn.sigmoid(y) * y + 1.0        # stored: the output

    fn = compile_fn(backend, f, [(4, 8), (8, 3)])
    rows = fn.report()
    gemm = "kernel" if backend == "cpu" else "gemm"      # cuBLAS on the CUDA backends
    if backend == "cpu" and epilogues:
        assert [r["kind"] for r in rows] == ["kernel", "kernel"], fn.report_text()
        assert "epilogue applied" in fn.report_text()
    else:
        assert [r["kind"] for r in rows] == ["kernel", gemm, "kernel"], fn.report_text()
    assert rows[0]["bytes_written"] == 4 * 32 and rows[-1]["bytes_written"] == 4 * 12
    assert backend != "cpu" or "library kernel" in fn.report_text()
    r = np.random.default_rng(3)
    x, w = r.standard_normal((4, 8)).astype(np.float32), r.standard_normal((8, 3)).astype(np.float32)
    y = np.tanh(x * 2.0 + 1.0) @ w
    np.testing.assert_allclose(fn(x, w), 1 / (1 + np.exp(-y)) * y + 1.0, rtol=1e-5, atol=1e-5)


def test_identical_kernels_emitted_once(backend):
    """Two identical independent subgraphs: one kernel definition, launched twice."""
    def f(a, b):
        return [sn.tanh(a) * 2.0 + 1.0, sn.tanh(b) * 2.0 + 1.0]

    fn = compile_fn(backend, f, [(5, 7), (5, 7)])
    names = [r["name"] for r in kernels(fn)]
    assert len(names) == 2 and names[0] == names[1], fn.report_text()
    defs = kernel_definitions(fn.sources[backend])
    assert defs.count(names[0]) == 1
    r = rng_for("twins")
    a, b = (r.standard_normal((5, 7)).astype(np.float32) for _ in range(2))
    ya, yb = fn(a, b)
    assert_close(ya, np.tanh(a) * 2 + 1, 2e-6)
    assert_close(yb, np.tanh(b) * 2 + 1, 2e-6)


def test_library_kernels_emitted_once(backend):
    """The same library kernel (same template, same baked-in sizes) on two tensors is
    defined once; other sizes get their own, uniquely named, definition."""
    fn = compile_fn(backend, lambda a, b, c: [sn.max_pool2d(a, 2), sn.max_pool2d(b, 2),
                                              sn.max_pool2d(c, 3, 1, 1)],
                    [(1, 2, 6, 6), (1, 2, 6, 6), (2, 1, 5, 5)])
    defs = kernel_definitions(fn.sources[backend])
    assert len(defs) == len(set(defs)), defs
    names = [r["name"] for r in fn.report()]
    assert len(names) == 3 and names[0] == names[1] != names[2], fn.report_text()
    assert sum("maxpool" in d for d in defs) == 2


def test_kernel_names_and_comments(backend):
    fn = compile_fn(backend, lambda x: sn.tanh(x) * sn.sigmoid(x), [(3, 3)])
    (row,) = fn.report()
    assert "tanh" in row["name"] and "sigmoid" in row["name"]
    src = fn.sources[backend]
    at = src.index(f"SN_KERNEL {row['name']}(")
    comment = src[src.rindex("/*", 0, at):at]
    assert "tanh" in comment and "sigmoid" in comment and "mul" in comment, comment


def test_cse_across_outputs(backend):
    """sympy.cse shares work across a kernel's outputs: tanh(x) computed once."""
    def f(x):
        t = sn.tanh(x)
        return [t * 2.0, t + 1.0, sn.exp(t)]

    fn = compile_fn(backend, f, [(4, 4)])
    (row,) = fn.report()
    src = fn.sources[backend]
    start = src.index(f"SN_KERNEL {row['name']}(")
    body = src[start:src.index("\n}", start)]
    assert body.count("tanhf(") == 1, body


def graph_for_determinism():
    x = sn.input("x", (2, 3, 6, 6))
    w = sn.input("w", (4, 3, 3, 3))
    b = sn.input("b", (1, 4, 1, 1))
    h = sn.maximum(sn.conv2d(x, w, pad=1) + b, 0.0)
    p = sn.max_pool2d(h, 2)
    z = p.reshape(2, -1)
    e = sn.exp(z - z.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    loss = (y * sn.log(y + 1e-6)).sum()
    grads = sn.grad(loss, [x, w, b])
    return [x, w, b], [y] + grads


def test_same_graph_twice_gives_identical_source():
    for backend in ("cpu", "cuda"):
        texts = []
        for _ in range(2):
            with sn.graph_scope() as g:
                ins, outs = graph_for_determinism()
                plan = lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)
                plan2 = lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)
                assert plan.sources == plan2.sources
                texts.append(plan.sources[backend])
        assert texts[0] == texts[1]


def test_identical_source_across_processes():
    """No dependence on hash randomisation or object addresses."""
    code = textwrap.dedent("""
        import hashlib, sys
        sys.path.insert(0, %r)
        import symnet as sn
        from symnet.codegen import lower
        from test_fusion import graph_for_determinism
        with sn.graph_scope() as g:
            ins, outs = graph_for_determinism()
            for be in ("cpu", "cuda"):
                p = lower.lower(g, [t.id for t in ins], [t.id for t in outs], be)
                print(be, hashlib.sha256(p.sources[be].encode()).hexdigest())
    """ % os.path.dirname(__file__))
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    with sn.graph_scope() as g:
        ins, outs_t = graph_for_determinism()
        here = "".join(
            f"{be} {hashlib.sha256(lower.lower(g, [t.id for t in ins], [t.id for t in outs_t], be).sources[be].encode()).hexdigest()}\n"
            for be in ("cpu", "cuda"))
    assert outs[0] == here


def test_cuda_and_emu_plans_share_launches():
    """cuda-emu launches the very same module text with the same grid, block and
    arguments as cuda."""
    with sn.graph_scope() as g:
        ins, outs = graph_for_determinism()
        ids = [t.id for t in ins], [t.id for t in outs]
        pc = lower.lower(g, *ids, "cuda")
        pe = lower.lower(g, *ids, "cuda-emu")
    assert pc.sources["cuda"] == pe.sources["cuda-emu"]
    assert [asdict(s) for s in pc.steps] == [asdict(s) for s in pe.steps]
    assert [asdict(b) for b in pc.buffers] == [asdict(b) for b in pe.buffers]
    assert all(s.kind in ("kernel", "gemm") for s in pc.steps)
    assert all(s.grid >= 1 and s.block >= 1 for s in pc.steps if s.kind == "kernel")


def test_cpu_module_has_no_cuda_and_calls_blas():
    with sn.graph_scope() as g:
        ins, outs = graph_for_determinism()
        p = lower.lower(g, [t.id for t in ins], [t.id for t in outs], "cpu")
    src = p.sources["cpu"]
    assert "__global__" not in src and "__shared__" not in src and "__syncthreads" not in src
    assert "omp parallel for simd" in src
    # the convolutions' GEMMs call BLAS (image by image, or as one strided GEMM)
    assert any(s.kind == "kernel" and s.name.startswith(("sn_gemm_blas", "sn_conv"))
               for s in p.steps)
    assert "SN_SGEMM(" in src and "__shared__ float As" not in src


def test_cuda_module_shape():
    with sn.graph_scope() as g:
        ins, outs = graph_for_determinism()
        p = lower.lower(g, [t.id for t in ins], [t.id for t in outs], "cuda")
    src = p.sources["cuda"]
    assert 'extern "C" __global__' in src and "__syncthreads" in src
    # GEMMs are cuBLAS library steps, not kernels of the module
    assert not any(k.startswith("sn_gemm") for k in kernel_definitions(src))
    assert any(s.kind == "gemm" and s.attrs["flops"] > 0 for s in p.steps)
    assert set(p.kernels) == set(kernel_definitions(src))


def _kernel_text(src, name):
    start = src.index(f"SN_KERNEL {name}(")
    end = src.find("SN_KERNEL ", start + 1)
    return src[start:end if end > 0 else len(src)]


def test_cuda_library_kernels_index_in_32_bits_when_sizes_allow():
    """im2col over a small batch does its arithmetic in int on CUDA (64-bit division is
    many instructions on a GPU); the CPU text keeps long."""
    def build(n):
        with sn.graph_scope() as g:
            x, w = sn.input("x", (n, 3, 9, 9)), sn.input("w", (4, 3, 3, 3))
            y = sn.conv2d(x, w, pad=1)
            return {be: lower.lower(g, [x.id, w.id], [y.id], be) for be in ("cuda", "cpu")}
    small = build(2)
    src = small["cuda"].sources["cuda"]
    text = _kernel_text(src, "sn_im2col_cols")
    assert "const int n = " in text and "long" not in text.split("{", 1)[1]
    assert "const long" in _kernel_text(small["cpu"].sources["cpu"], "sn_conv_images")
    # a batch whose columns hold 2**30 values or more keeps 64-bit arithmetic
    big = build(2 ** 30 // (27 * 81) + 1)
    text = _kernel_text(big["cuda"].sources["cuda"], "sn_im2col_cols")
    assert "const long n = " in text


def test_report(backend):
    def f(x, w):
        h = sn.tanh(x) * 2.0
        y = sn.matmul(h, w)
        return [y.sum(1), sn.exp(h)]

    fn = compile_fn(backend, f, [(4, 8), (8, 3)])
    rows = fn.report()
    assert rows and all({"kind", "name", "ops", "bytes_read", "bytes_written"} <= set(r)
                        for r in rows)
    assert all(r["kind"] in ("kernel", "gemm", "host") for r in rows)
    assert all(isinstance(r["ops"], list) and r["ops"] for r in rows)
    assert all(r["bytes_read"] >= 0 and r["bytes_written"] > 0 for r in rows)
    text = fn.report_text()
    assert backend in text
    lines = text.splitlines()
    total = [l for l in lines if "total" in l]
    assert total, text
    assert f"{sum(r['bytes_written'] for r in rows):,}" in total[0]
    assert f"{sum(r['bytes_read'] for r in rows):,}" in total[0]
    for r in rows:
        assert r["name"][:20] in text
    assert "fusion" in text and "requested as an output" in text and "library kernel" in text
    json.dumps(rows)     # plain data


def test_report_empty_for_numpy():
    with sn.graph_scope():
        x = sn.input("x", (2,))
        fn = sn.function([x], sn.tanh(x), backend="numpy")
    assert fn.report() == [] and fn.sources == {} and fn.plan is None


def test_sources_and_plan_exposed(backend):
    fn = compile_fn(backend, lambda x: sn.tanh(x), [(3,)])
    assert set(fn.sources) == {backend}
    assert fn.plan.backend == backend and fn.plan.sources == fn.sources


def test_fusion_cycle_through_two_reductions(backend):
    """Regression: the gradient of tanh(x - x.sum(1)) * tanh(x - x.sum(0)) once built a
    kernel graph with a cycle (NetworkXUnfeasible in fusion._select_stored)."""
    x = rng_for("cycle").standard_normal((3, 4)).astype(np.float32)
    check(backend, lambda a: sn.tanh(a - a.sum(1, keepdims=True)) *
          sn.tanh(a - a.sum(0, keepdims=True)), [x], rtol=5e-5, what="two-axis cycle")


def test_gradient_through_max_of_computed_value_lowers(backend):
    """Regression: grad(sum(a * a.max(-1)), x) with a = exp(x) once made a cycle between
    kernels (NetworkXUnfeasible)."""
    x = rng_for("maxcycle").standard_normal((3, 4)).astype(np.float32)
    with sn.graph_scope():
        t = sn.input("x", x.shape)
        a = sn.exp(t)
        dx = sn.grad((a * a.max(-1, keepdims=True)).sum(), t)
        want = sn.function([t], dx, backend="numpy")(x)
        fn = sn.function([t], dx, backend=backend)
    assert_close(fn(x), want, 5e-5)
