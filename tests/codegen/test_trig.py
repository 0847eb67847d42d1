"""sin, cos and tan as kernels print them: ``sn_sin``, ``sn_cos``, ``sn_tan``.

On the CPU they are the C library's sinf/cosf/tanf (so gcc keeps libmvec's vector
variants); on CUDA the prelude defines them in float arithmetic only, because CUDA's own
sinf/cosf/tanf reduce |x| >= 105615 through double. The CUDA text runs on the host in
the cuda-emu backend, which is how these tests measure its accuracy against NumPy's
float64 functions: errors are in units of the float spacing of the binade holding the
exact value (the smaller spacing just below a power of two), so a correctly rounded
result is within 0.5.

Measured with an exhaustive host run over every non-negative finite float (g++ -O2,
against glibc's double sin/cos/tan; the implementations are odd/even by construction, so
negative arguments mirror these): max error sin 0.722 ulp (at 1.67388673e+25), cos 0.721
(1.75948788e+38), tan 0.880 (3.21768736e+31); the tan figure covers the floats nearest
its poles (odd multiples of pi/2): below 2^17 the floats come no closer than 2^-28 to
a multiple of pi/2 and the reduction's error stays below 2^-55 absolute. The tests below assert 1 ulp on their sets (the project's requirement is 2).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from symnet.codegen import cprinter
from symnet.codegen.prelude import C_PRELUDE, CUDA_PRELUDE

FUNCS = {"sin": (sp.sin, np.sin), "cos": (sp.cos, np.cos), "tan": (sp.tan, np.tan)}
BOUND_ULP = 1.0
F32 = np.float32


def _emu_eval(x):
    """sn_sin, sn_cos, sn_tan of float32 array x through the cuda-emu backend."""
    t = sn.input("x", x.shape)
    f = sn.function([t], [sn.elementwise(fn, t) for fn, _ in FUNCS.values()],
                    backend="cuda-emu")
    assert all(f"sn_{name}(" in f.sources["cuda-emu"] for name in FUNCS)
    return dict(zip(FUNCS, f(x)))


def _ulp_error(y, x):
    """|y - f(x)| in float ulps of the exact f(x), f from NumPy in float64."""
    out = {}
    for name, (_, ref) in FUNCS.items():
        r = ref(x.astype(np.float64))
        _, e = np.frexp(np.abs(r))
        ulp = np.maximum(np.ldexp(1.0, e - 24), 2.0 ** -149)
        out[name] = np.abs(y[name].astype(np.float64) - r) / ulp
    return out


def _check(x, what):
    x = np.ascontiguousarray(x, dtype=F32)
    y = _emu_eval(x)
    for name, err in _ulp_error(y, x).items():
        i = int(np.argmax(err))
        assert err[i] <= BOUND_ULP, (
            f"{what}: sn_{name}({x[i]!r}) = {y[name][i]!r}, {err[i]:.3f} ulp from "
            f"{FUNCS[name][1](np.float64(x[i]))!r}")
    return y


def _neighbours(v, k=3):
    """Float32 values v and their k next floats on each side, the finite ones."""
    v = np.asarray(v, dtype=F32)
    out, lo, hi = [v], v, v
    with np.errstate(over="ignore"):
        for _ in range(k):
            lo = np.nextafter(lo, F32(-np.inf))
            hi = np.nextafter(hi, F32(np.inf))
            out += [lo, hi]
    out = np.concatenate(out)
    return out[np.isfinite(out)]


def test_printer_routes_sin_cos_tan_and_their_derivatives():
    x = sp.Symbol("a0")
    assert cprinter.ccode(sp.sin(x)) == "sn_sin(a0)"
    assert cprinter.ccode(sp.cos(x) + sp.tan(x)) in ("sn_cos(a0) + sn_tan(a0)",
                                                      "sn_tan(a0) + sn_cos(a0)")
    text = cprinter.ccode(sp.diff(sp.sin(x) * sp.tan(x), x))
    assert "sn_cos(" in text and "sn_tan(" in text and "sn_sin(" in text
    assert not re.search(r"\b(?:sinf|cosf|tanf)\(", text)


def test_dense_sweep_of_minus_ten_to_ten():
    x = np.linspace(-10.0, 10.0, 2_000_001).astype(F32)
    _check(np.concatenate([x, _neighbours(F32(np.pi / 4) * np.arange(-12, 13))]),
           "[-10, 10]")


def test_random_floats_over_the_whole_exponent_range():
    rng = np.random.default_rng(12)
    bits = rng.integers(0, 0x7F800000, 2_000_000, dtype=np.uint32)
    bits[::2] |= np.uint32(0x80000000)
    _check(bits.view(F32), "random float bits")


def test_multiples_of_half_pi_and_their_neighbours():
    # every k pi/2 below the Cody-Waite limit 2^17 (its nearest floats include the
    # closest approaches of each binade, e.g. 252.89821 and 52516.434, |r| ~ 2^-28),
    # random k above it up to the integer reduction's range; tan's poles are the odd k
    k = np.arange(1, 83_500, dtype=np.float64)
    rng = np.random.default_rng(7)
    big = np.floor(np.exp(rng.uniform(np.log(8.4e4), np.log(2.0e38), 60_000)))
    v = (np.concatenate([k, big]) * (np.pi / 2)).astype(F32)
    v = v[np.isfinite(v)]
    x = _neighbours(v, 2)
    _check(np.concatenate([x, -x]), "multiples of pi/2")


def test_huge_values():
    x = np.array([1e30, 3.4e38, np.finfo(F32).max, 2.0 ** 127, 2.0 ** 100, 2.0 ** 64,
                  131071.99, 131072.0, 131072.02, 105615.0, 1e10, 1e20, 16777216.0,
                  2.0 ** 24 + 2, 8e37], dtype=F32)
    x = _neighbours(x, 8)
    _check(np.concatenate([x, -x]), "huge values")


def test_subnormals_and_signed_zeros():
    rng = np.random.default_rng(3)
    bits = np.concatenate([np.arange(1, 1000), rng.integers(1, 0x800000, 100_000),
                           [0x7FFFFF, 0x800000]]).astype(np.uint32)
    x = np.concatenate([bits.view(F32), -bits.view(F32)])
    y = _check(x, "subnormals")
    assert np.array_equal(y["sin"], x) and np.array_equal(y["tan"], x)
    assert np.all(y["cos"] == 1.0)
    z = np.array([0.0, -0.0], dtype=F32)
    y = _emu_eval(z)
    for name in ("sin", "tan"):
        assert np.all(y[name] == 0.0) and list(np.signbit(y[name])) == [False, True], name
    assert list(y["cos"]) == [1.0, 1.0]


def test_nan_and_infinities_give_nan():
    x = np.array([np.nan, np.inf, -np.inf, -np.nan], dtype=F32)
    for name, y in _emu_eval(x).items():
        assert np.all(np.isnan(y)), (name, y)


# ---------------------------------------------------------------------------- CPU side
def test_cpu_keeps_the_c_library_and_its_vector_variants(tmp_path):
    from symnet.runtime import blas, cpu
    for name in FUNCS:
        assert f"#define sn_{name}(x) {name}f(x)" in C_PRELUDE
    header = cpu.vector_math_header()
    if "sinf" not in header:
        pytest.skip("this C library has no vector sinf (libmvec)")
    t = sn.input("x", (1 << 20,))
    f = sn.function([t], [sn.sin(t)], backend="cpu")
    src = f.sources["cpu"]
    assert re.search(r"sn_sin\(x0\)", src)
    path = tmp_path / "k.c"
    path.write_text(header + src)
    cflags, _ = blas.build_flags()
    proc = subprocess.run([cpu.CC, *cpu.compile_flags(), *cflags, "-fopt-info-vec",
                           "-o", str(tmp_path / "k.so"), str(path)],
                          capture_output=True, text=True, check=True)
    line = 1 + (header + src).splitlines().index("    out0[i] = sn_sin(x0);")
    vec = [m for m in re.findall(r":(\d+):\d+: optimized: loop vectorized", proc.stderr)]
    assert any(abs(int(n) - line) <= 2 for n in vec), proc.stderr
    nm = subprocess.run(["nm", "-D", str(tmp_path / "k.so")], capture_output=True,
                        text=True).stdout
    assert re.search(r"_ZGV\w+_sinf", nm), nm
    rng = np.random.default_rng(0)
    x = rng.uniform(-100, 100, 1 << 20).astype(F32)
    y = f(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    assert np.max(np.abs(y - np.sin(x.astype(np.float64)))) < 1e-6


# --------------------------------------------------------------------------- nvcc side
NVCC = shutil.which("nvcc")
_SASS_FP64 = re.compile(r"^(?:DADD|DMUL|DFMA|DSETP|DSET|DMNMX|DMMA)\b|\.F64\b|\bMUFU\.\w+64H\b")
_SASS_INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([^;]+);")

TEST_UNIT = r"""
extern "C" __global__ void k_trig(const float* x, float* s, float* c, float* t, long n) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long)blockDim.x * gridDim.x) {
    s[i] = sn_sin(x[i]); c[i] = sn_cos(x[i]); t[i] = sn_tan(x[i]);
  }
}
/* control: CUDA's own sinf, whose huge-argument reduction goes through double */
extern "C" __global__ void k_cuda_sinf(float* p) { p[threadIdx.x] = sinf(p[threadIdx.x]); }
"""


def _disassembler():
    tools = ["nvdisasm", "cuobjdump"]
    dirs = [os.path.dirname(os.path.realpath(NVCC)), "/usr/local/cuda/bin"]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "bin")))
    for tool in tools:
        for cand in [shutil.which(tool)] + [os.path.join(d, tool) for d in dirs]:
            if cand and os.access(cand, os.X_OK):
                return [cand] if tool == "nvdisasm" else [cand, "-sass"]
    return None


def _fp64_by_function(sass):
    out, func = {}, None
    for line in sass.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.([^,\s]+)", line) or \
            re.match(r"\s*Function\s*:\s*(\S+)", line)
        if m:
            func = m.group(1)
            out.setdefault(func, [])
            continue
        m = _SASS_INSN.search(line)
        if m and func and _SASS_FP64.search(m.group(1).strip()):
            out[func].append(m.group(1).strip())
    return out


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_nvcc_sm90_code_has_no_fp64_and_no_spills(tmp_path):
    src = tmp_path / "trig.cu"
    src.write_text(CUDA_PRELUDE + TEST_UNIT)
    for arch in ("80", "90"):
        proc = subprocess.run([NVCC, "-cubin", "-std=c++17", f"-arch=sm_{arch}", "-Xptxas",
                               "-v", "-o", str(tmp_path / f"trig{arch}.cubin"), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
        assert spills and all(a == "0" and b == "0" for a, b in spills), proc.stderr
    tool = _disassembler()
    if tool is not None:
        sass = subprocess.run(tool + [str(tmp_path / "trig90.cubin")], capture_output=True,
                              text=True, check=True).stdout
        found = _fp64_by_function(sass)
    else:   # the PTX that ptxas compiles for sm_90
        ptx = tmp_path / "trig.ptx"
        subprocess.run([NVCC, "-ptx", "-std=c++17", "-arch=sm_90", "-o", str(ptx), str(src)],
                       check=True)
        found, func = {}, None
        for line in ptx.read_text().splitlines():
            m = re.match(r"\s*(?:\.visible\s+)?\.entry\s+(\w+)", line)
            if m:
                func = m.group(1)
                found[func] = []
            elif func and re.search(r"\.f64\b", line):
                found[func].append(line.strip())
    assert "k_trig" in found and "k_cuda_sinf" in found, sorted(found)
    assert found["k_cuda_sinf"], "the FP64 check finds nothing in CUDA's sinf"
    assert found["k_trig"] == [], found["k_trig"][:10]
