"""nvcc compiles every CUDA module the test suite emits, for sm_80 and sm_90; no kernel
spills registers and none executes double-precision instructions.

tests/conftest.py records every module lowered for ``cuda`` or ``cuda-emu`` (the same
text); this file is collected last, so when the whole suite runs it sees all of them.
It also lowers a representative set of graphs for ``cuda`` itself, so that it is
meaningful when run alone. Skips only when nvcc is not installed.

A module is the shared prelude followed by its kernels. nvcc's start-up cost (about a
second) dominates a module's compile, so the kernels of all recorded modules are
deduplicated and compiled in a few translation units: the prelude once, then each
distinct kernel's exact text under a unique symbol name. The representative modules
are also compiled verbatim, exactly as emitted.

The same compiles give the two further checks, at no extra nvcc run:

- ``-Xptxas -v``: ptxas prints, per function and architecture, "N bytes stack frame,
  N bytes spill stores, N bytes spill loads"; every count of spill stores and loads
  must be 0.
- ``-keep`` leaves the sm_90 cubin of each unit; its SASS (``nvdisasm``, else
  ``cuobjdump -sass``) must hold no FP64 instruction (DADD, DMUL, DFMA, DSETP, DMNMX,
  conversions and any other opcode with a .F64 type, MUFU's 64-bit approximations).
  Without a disassembler the same check reads the PTX that ptxas compiled (``.f64``
  instructions), so the check never silently passes. A disassembler comes with the
  ``nvidia-cuda-nvdisasm`` wheel; its ``nvidia/cu*/bin`` is searched too.

``test_checks_catch_a_spilling_and_a_double_kernel`` runs both checks on kernels made to
spill and to use double, so a check that finds nothing has been shown able to find.
"""
from __future__ import annotations

import concurrent.futures
import glob
import importlib.util
import os
import re
import shutil
import subprocess

import pytest

import symnet as sn
from symnet.codegen import lower
from symnet.codegen.prelude import CUDA_PRELUDE

NVCC = shutil.which("nvcc")
ARCHS = ("80", "90")
SASS_ARCH = "90"
NVCC_FLAGS = ["-c", "-std=c++17", "-diag-suppress", "177", "-Xptxas", "-v"] + \
    [f for a in ARCHS for f in ("--generate-code", f"arch=compute_{a},code=sm_{a}")]

pytestmark = [pytest.mark.skipif(NVCC is None, reason="nvcc not installed"), pytest.mark.slow]


def _find_disassembler():
    """(argv prefix that prints a cubin's SASS, tool name), or None."""
    dirs = [os.path.dirname(os.path.realpath(NVCC))] if NVCC else []
    dirs += [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH")
             if os.environ.get(v)] + ["/usr/local/cuda/bin"]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        dirs += sorted(glob.glob(os.path.join(root, "cu*", "bin")), reverse=True)
        dirs += sorted(glob.glob(os.path.join(root, "cuda_*", "bin")), reverse=True)
    for tool, argv in (("nvdisasm", ["-c"]), ("cuobjdump", ["-sass"])):
        found = shutil.which(tool) or next(
            (os.path.join(d, tool) for d in dirs if os.access(os.path.join(d, tool), os.X_OK)),
            None)
        if found:
            return [found, *argv], tool
    return None


DISASSEMBLER = _find_disassembler()


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
    """nvcc on one translation unit; intermediates (the PTX and cubin of each
    architecture) are kept in a folder of the unit's own."""
    stem = key[:16]
    path = workdir / f"{stem}.cu"
    path.write_text(source)
    keep = workdir / f"{stem}.keep"
    keep.mkdir(exist_ok=True)
    proc = subprocess.run([NVCC, *NVCC_FLAGS, "-keep", "-keep-dir", keep.name, path.name,
                           "-o", f"{stem}.o"], capture_output=True, text=True, cwd=workdir)
    return key, path, proc


# ---------------------------------------------------------------- spills (ptxas -v)
_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_PTXAS_PROPS = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
                          r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(log):
    """[(function, arch, stack bytes, spill store bytes, spill load bytes)] from the
    ``-Xptxas -v`` log; a function's arch is that of the last entry compiled before it
    (ptxas reports non-inlined device functions inside their architecture's pass)."""
    events = sorted([(m.start(), "arch", m.group(2)) for m in _PTXAS_ENTRY.finditer(log)] +
                    [(m.start(), "props", m) for m in _PTXAS_PROPS.finditer(log)],
                    key=lambda e: e[0])
    arch, out = "?", []
    for _, what, v in events:
        if what == "arch":
            arch = v
        else:
            out.append((v.group(1), arch, int(v.group(2)), int(v.group(3)), int(v.group(4))))
    return out


def spills(log):
    return [(f, a, st, ld) for f, a, _, st, ld in ptxas_usage(log) if st or ld]


# ---------------------------------------------------------------- FP64 (SASS or PTX)
# SASS opcodes of double precision: the D* arithmetic, any instruction with a .F64
# type (F2F.F64.F32, I2F.F64, F2I.F64, DSETP ...), MUFU's RCP64H / RSQ64H.
_SASS_FP64 = re.compile(r"^(?:DADD|DMUL|DFMA|DSETP|DSET|DMNMX|DMMA)\b|\.F64\b|\bMUFU\.\w+64H\b")
_PTX_FP64 = re.compile(r"\.f64\b")
_SASS_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_SASS_INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([^;]+);")
_PTX_FUNC = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s+(?:\([^)]*\)\s*)?"
                       r"([\w$]+)")


def sass_fp64(sass):
    """[(function, instruction)] of FP64 instructions in nvdisasm / cuobjdump output."""
    func, out = "?", []
    for line in sass.splitlines():
        m = _SASS_SECTION.match(line) or re.match(r"^\s*Function : (\S+)", line)
        if m:
            func = m.group(1)
            continue
        m = _SASS_INSN.search(line)
        if m and _SASS_FP64.search(m.group(1).strip()):
            out.append((func, m.group(1).strip()))
    return out


def ptx_fp64(ptx):
    """[(function, instruction)] of PTX instructions on .f64 operands (declarations of
    .f64 registers or parameters alone are not instructions and do not count)."""
    func, out = "?", []
    for line in ptx.splitlines():
        m = _PTX_FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        s = line.strip()
        if s and not s.startswith((".reg", ".param", ".local", ".shared", "//")) \
                and _PTX_FP64.search(s):
            out.append((func, s.rstrip(";")))
    return out


def fp64_uses(keep_dir, stem):
    """FP64 instructions of a unit's sm_90 code: from the SASS of its cubin when a
    disassembler is found, else from its PTX. Returns (tool, [(function, insn)])."""
    if DISASSEMBLER is not None:
        argv, tool = DISASSEMBLER
        (cubin,) = glob.glob(str(keep_dir / f"{stem}*.sm_{SASS_ARCH}.cubin")) or \
            glob.glob(str(keep_dir / f"{stem}*compute_{SASS_ARCH}.cubin"))
        proc = subprocess.run([*argv, cubin], capture_output=True, text=True)
        assert proc.returncode == 0, f"{tool} failed on {cubin}:\n{proc.stderr[-2000:]}"
        return tool, sass_fp64(proc.stdout)
    (ptx,) = glob.glob(str(keep_dir / f"{stem}*compute_{SASS_ARCH}.ptx"))
    with open(ptx) as f:
        return "PTX", ptx_fp64(f.read())


# ---------------------------------------------------------------- units
KERNEL = re.compile(r"SN_KERNEL (\w+)\(")
UNIT_SIZE = 150


def kernels_of(source):
    """The kernel definitions of a module (each with its comment), after the prelude."""
    assert source.startswith(CUDA_PRELUDE), "a CUDA module starts with the CUDA prelude"
    body = source[len(CUDA_PRELUDE):]
    starts = [m.start() for m in re.finditer(r"(?m)^/\* ", body)] + [len(body)]
    return [body[a:b] for a, b in zip(starts, starts[1:]) if KERNEL.search(body[a:b])]


def compile_all(sources, workdir):
    """Compile each (key, source). Returns (compile failures, spills, FP64 uses): spills
    as (function, arch, unit, spill store bytes, spill load bytes), FP64 uses as
    (function, tool, unit, [instructions])."""
    failures, spilled, doubles = [], [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(compile_module, key, src, workdir) for key, src in sources]
        for job in concurrent.futures.as_completed(jobs):
            key, path, proc = job.result()
            if proc.returncode != 0:
                failures.append(f"--- {path} (exit {proc.returncode})\n{proc.stderr[-4000:]}")
                continue
            stem = key[:16]
            assert (path.parent / f"{stem}.o").stat().st_size > 0
            log = proc.stdout + proc.stderr
            assert ptxas_usage(log), f"no ptxas -v report for {path}:\n{log[-2000:]}"
            spilled += [(f, a, path.name, st, ld) for f, a, st, ld in spills(log)]
            tool, uses = fp64_uses(path.parent / f"{stem}.keep", stem)
            by_function = {}
            for f, insn in uses:
                by_function.setdefault(f, []).append(insn)
            doubles += [(f, tool, path.name, insns) for f, insns in by_function.items()]
    return failures, spilled, doubles


# CUDA's sinf / cosf / tanf / sincosf reduce an argument of magnitude >= 105615 (Payne-
# Hanek) with a 64-bit fixed-point product that they turn into float through double.
_TRIG = re.compile(r"\b(?:sinf|cosf|tanf|sincosf)\(")


def explain_fp64(text):
    """Why a kernel's text may compile to FP64 instructions, as far as the text shows."""
    why = []
    if _TRIG.search(text):
        why.append("calls sinf/cosf/tanf, whose reduction of |x| >= 105615 in CUDA's math "
                   "library converts through double")
    if re.search(r"(?<![\w.])\d+\.\d*(?:[eE][-+]?\d+)?(?![\w.])(?!f)", text):
        why.append("has a floating literal without an f suffix (a double)")
    if re.search(r"\bdouble\b", text):
        why.append("names the type double")
    return "; ".join(why) or "nothing in its text explains it"


def describe_spills(spilled):
    return "\n".join(f"  {f} (sm_{a}, {unit}): {st} bytes spill stores, {ld} bytes spill loads"
                     for f, a, unit, st, ld in sorted(spilled))


def describe_fp64(doubles, texts=None):
    """One line per function; ``texts`` maps a function name to its kernel text."""
    lines = []
    for f, tool, unit, insns in sorted(doubles, key=lambda d: (d[0], d[2])):
        shown = "; ".join(sorted(set(insns))[:6]) + (" ..." if len(set(insns)) > 6 else "")
        why = f" -- {explain_fp64(texts[f])}" if texts and f in texts else ""
        lines.append(f"  {f} (sm_{SASS_ARCH}, {tool}, {unit}): {len(insns)} FP64 "
                     f"instructions: {shown}{why}")
    return "\n".join(lines)


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
    failures, spilled, doubles = compile_all(units + verbatim, tmp_path)
    assert not failures, f"nvcc failed on {len(failures)} translation units " \
        f"({len(distinct)} distinct kernels of {len(modules)} modules):\n" + \
        "\n".join(failures[:5])
    texts = {f"{KERNEL.search(t).group(1)}__{i}": t for t, i in distinct.items()}
    texts.update({KERNEL.search(t).group(1): t for src in representative for t in kernels_of(src)})
    assert not spilled, f"{len(spilled)} kernels spill registers (ptxas -v; in a unit, " \
        f"kernel k__N is the N-th distinct kernel):\n" + describe_spills(spilled)
    assert not doubles, f"{len(doubles)} kernels execute FP64 instructions (in a unit, " \
        f"kernel k__N is the N-th distinct kernel):\n" + describe_fp64(doubles, texts)


def test_nvcc_failure_is_reported(tmp_path):
    """The harness above sees a failing compile (and its message)."""
    _, _, proc = compile_module("0" * 16, 'extern "C" __global__ void k(float* p) { p[0] = ; }\n',
                                tmp_path)
    assert proc.returncode != 0 and "error" in proc.stderr


# A kernel that must spill: 96 values live at once under a launch bound that leaves
# it 32 registers a thread; one that computes in double (a double literal, sin of a
# double); one calling sinf; and one in float only (expf, tanhf, a float literal).
SELF_TEST_UNIT = r"""
extern "C" __global__ void __launch_bounds__(1024, 2) k_spills(float* p, long n) {
  float a[96];
#pragma unroll
  for (int i = 0; i < 96; ++i) a[i] = p[i * n + threadIdx.x];
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 96; ++i) s += a[i] * a[95 - i] * a[(i * 7) % 96];
  p[threadIdx.x] = s;
}
extern "C" __global__ void k_double(float* p) {
  p[threadIdx.x] = (float)(p[threadIdx.x] * 0.1 + sin((double)p[0]));
}
extern "C" __global__ void k_sinf(float* p) { p[threadIdx.x] = 2.0f * sinf(p[threadIdx.x]); }
extern "C" __global__ void k_clean(float* p) {
  p[threadIdx.x] = 0.1f * expf(p[threadIdx.x]) + tanhf(p[0]);
}
"""


def test_checks_catch_a_spilling_and_a_double_kernel(tmp_path):
    failures, spilled, doubles = compile_all([("selftest" + "0" * 8, SELF_TEST_UNIT)], tmp_path)
    assert not failures, failures
    assert sorted((f, a) for f, a, _, st, ld in spilled if st and ld) == \
        [("k_spills", a) for a in ARCHS], spilled
    assert all(f == "k_spills" for f, *_ in spilled), spilled
    assert "k_spills (sm_90, selftest00000000.cu)" in describe_spills(spilled)
    flagged = {f: insns for f, _, _, insns in doubles}
    # sinf's argument reduction for |x| >= 105615 goes through double in CUDA's math
    # library, so a kernel calling sinf is flagged as well, and the message says why
    assert set(flagged) == {"k_double", "k_sinf"}, doubles
    text = describe_fp64(doubles, {"k_sinf": SELF_TEST_UNIT.split("k_sinf")[1],
                                   "k_double": "p[0] * 0.1 + sin((double)p[0])"})
    assert "k_double (sm_90, " in text and "a floating literal without an f suffix" in text
    assert "calls sinf/cosf/tanf" in text
    # the PTX reading finds them too (the fallback without a disassembler)
    (ptx,) = glob.glob(str(tmp_path / f"selftest{'0' * 8}.keep" / f"*compute_{SASS_ARCH}.ptx"))
    with open(ptx) as f:
        found = {fn for fn, _ in ptx_fp64(f.read())}
    assert {"k_double", "k_sinf"} <= found and not found & {"k_clean", "k_spills"}, found


def test_sass_reading_sees_fp64_opcodes():
    """The SASS parser on lines as nvdisasm prints them: FP64 opcodes are found and
    attributed to their section; 64-bit integer and memory opcodes are not FP64."""
    sass = "\n".join([
        '\t.section\t.text.k_a,"ax",@progbits',
        "        /*0050*/                   LDG.E.64 R4, desc[UR4][R2.64] ;",
        "        /*0060*/                   IMAD.WIDE.U32 R2, R5, 0x4, R2 ;",
        "        /*0070*/                   FADD R5, R0, R0 ;",
        '\t.section\t.text.k_b,"ax",@progbits',
        "        /*0700*/                   I2F.F64.S64 R8, R10 ;",
        "        /*0740*/                   DMUL R8, R8, UR6 ;",
        "        /*0750*/              @!P0 DSETP.GEU.AND P0, PT, |R4|, UR4, PT ;",
        "        /*0760*/                   MUFU.RCP64H R3, R5 ;",
    ])
    assert sass_fp64(sass) == [("k_b", "I2F.F64.S64 R8, R10"), ("k_b", "DMUL R8, R8, UR6"),
                               ("k_b", "DSETP.GEU.AND P0, PT, |R4|, UR4, PT"),
                               ("k_b", "MUFU.RCP64H R3, R5")]
