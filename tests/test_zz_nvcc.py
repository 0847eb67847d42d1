"""nvcc compiles every CUDA module the test suite emits, for sm_80 and sm_90.

tests/conftest.py records every module lowered for ``cuda`` or ``cuda-emu`` (the same
text); this file is collected last, so when the whole suite runs it sees all of them.
It also lowers a representative set of graphs for ``cuda`` itself, so that it is
meaningful when run alone. Skips only when nvcc is not installed.

A module is the shared prelude followed by its kernels. nvcc's start-up cost (about a
second) dominates a module's compile, so the kernels of all recorded modules are
deduplicated and compiled in a few translation units: the prelude once, then each
distinct kernel's exact text under a unique symbol name. The representative modules
are also compiled verbatim, exactly as emitted.
"""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess

import pytest

import symnet as sn
from symnet.codegen import lower
from symnet.codegen.prelude import CUDA_PRELUDE

NVCC = shutil.which("nvcc")
NVCC_FLAGS = ["-c", "-std=c++17", "-diag-suppress", "177",
              "--generate-code", "arch=compute_80,code=sm_80",
              "--generate-code", "arch=compute_90,code=sm_90"]

pytestmark = [pytest.mark.skipif(NVCC is None, reason="nvcc not installed"), pytest.mark.slow]


def representative_graphs():
    """(name, builder) pairs: every op family and fusion pattern, forward and backward."""
    def cnn():
        x = sn.input("x", (2, 3, 9, 9))
        w1 = sn.input("w1", (4, 3, 3, 3))
        w2 = sn.input("w2", (6, 2, 3, 3))
        b = sn.input("b", (1, 4, 1, 1))
        h = sn.maximum(sn.conv2d(x, w1, stride=2, pad=1) + b, 0.0)
        h = sn.conv2d(h, w2, pad=2, dilation=2, group=2)
        h = sn.max_pool2d(h, 3, 2, 1) + sn.avg_pool2d(h, 3, 2, 1)
        h = sn.conv_transpose2d(h, sn.input("wt", (6, 2, 4, 4)), stride=2, pad=1)
        loss = (h * h).mean()
        return [x, w1, w2, b], [h] + sn.grad(loss, [x, w1, w2, b])

    def mlp():
        x = sn.input("x", (5, 17))
        w1, w2 = sn.input("w1", (17, 33)), sn.input("w2", (33, 4))
        lab = sn.input("labels", (5, 1))
        h = sn.tanh(sn.matmul(x, w1))
        z = sn.matmul(h, w2)
        e = sn.exp(z - z.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
        loss = -sn.log(sn.gather(p, lab, 1) + 1e-6).mean()
        return [x, w1, w2, lab], [p, sn.argmax(z, -1)] + sn.grad(loss, [x, w1, w2])

    def layout():
        x = sn.input("x", (2, 6, 4))
        a, b = sn.split(x, [2, 4], 1)
        y = sn.concat([sn.transpose(b, (0, 2, 1)), a[:, ::-1, ::2].reshape(2, 4, 1)], 2)
        y = sn.pad(y, [(0, 0), (1, 1), (2, 0)], 0.5)
        y = sn.window_sum(y, 1, 1, 2) * sn.uniform(y.shape, seed=9)
        v, i = sn.topk(y, 2, axis=2)
        return [x], [y, v, i] + sn.grad((v * v).sum(), [x])

    def elementwise():
        x, s, c = sn.input("x", (2, 3, 4, 5)), sn.input("s", ()), sn.input("c", (1, 3, 1, 1))
        outs = []
        for i, f in enumerate([sn.exp, sn.log, sn.tanh, sn.sigmoid, sn.softplus, sn.erf, sn.sin,
                               sn.cos, sn.rsqrt, sn.sqrt, sn.abs, sn.sign]):
            outs.append(f(x * c + s + i))
        y = sn.where(x > s, sn.maximum(x, c), sn.minimum(x, c)) ** 3 + x ** 2.5
        outs.append(y)
        total = sum((o.sum() for o in outs[1:]), outs[0].sum())
        return [x, s, c], outs + sn.grad(total, [x, s, c])

    return [("cnn", cnn), ("mlp", mlp), ("layout", layout), ("elementwise", elementwise)]


def lower_representative():
    for name, build in representative_graphs():
        with sn.graph_scope() as g:
            ins, outs = build()
            lower.lower(g, [t.id for t in ins], [t.id for t in outs], "cuda")


def compile_module(key, source, workdir):
    path = workdir / f"{key[:16]}.cu"
    path.write_text(source)
    proc = subprocess.run([NVCC, *NVCC_FLAGS, path.name, "-o", f"{key[:16]}.o"],
                          capture_output=True, text=True, cwd=workdir)
    return key, path, proc


KERNEL = re.compile(r"SN_KERNEL (\w+)\(")
UNIT_SIZE = 150


def kernels_of(source):
    """The kernel definitions of a module (each with its comment), after the prelude."""
    assert source.startswith(CUDA_PRELUDE), "a CUDA module starts with the CUDA prelude"
    body = source[len(CUDA_PRELUDE):]
    starts = [m.start() for m in re.finditer(r"(?m)^/\* ", body)] + [len(body)]
    return [body[a:b] for a, b in zip(starts, starts[1:]) if KERNEL.search(body[a:b])]


def compile_all(sources, workdir):
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(compile_module, key, src, workdir) for key, src in sources]
        for job in concurrent.futures.as_completed(jobs):
            key, path, proc = job.result()
            if proc.returncode != 0:
                failures.append(f"--- {path} (exit {proc.returncode})\n{proc.stderr[-4000:]}")
            else:
                assert (path.parent / f"{key[:16]}.o").stat().st_size > 0
    return failures


def test_nvcc_compiles_every_emitted_cuda_module(emitted_modules, tmp_path):
    representative = {}
    lower.module_listeners.append(lambda be, src: representative.setdefault(src, be))
    try:
        lower_representative()
    finally:
        lower.module_listeners.pop()
    modules = {}
    for backend in ("cuda-emu", "cuda"):
        modules.update(emitted_modules.get(backend, {}))
    assert len(modules) >= len(representative_graphs())
    distinct = {}
    for source in modules.values():
        for text in kernels_of(source):
            distinct.setdefault(text, len(distinct))
    renamed = [KERNEL.sub(lambda m, i=i: f"SN_KERNEL {m.group(1)}__{i}(", text, count=1)
               for text, i in distinct.items()]
    units = [(f"unit{u:04d}" + "0" * 8, CUDA_PRELUDE + "\n".join(renamed[u:u + UNIT_SIZE]))
             for u in range(0, len(renamed), UNIT_SIZE)]
    verbatim = [(f"module{k:03d}" + "0" * 8, src) for k, src in enumerate(representative)]
    failures = compile_all(units + verbatim, tmp_path)
    assert not failures, f"nvcc failed on {len(failures)} translation units " \
        f"({len(distinct)} distinct kernels of {len(modules)} modules):\n" + \
        "\n".join(failures[:5])


def test_nvcc_failure_is_reported(tmp_path):
    """The harness above sees a failing compile (and its message)."""
    _, _, proc = compile_module("0" * 16, 'extern "C" __global__ void k(float* p) { p[0] = ; }\n',
                                tmp_path)
    assert proc.returncode != 0 and "error" in proc.stderr
