"""Winograd convolutions on the cpu backend: 3x3 kernels, stride 1, dilation 1, group 1.

F(m x m, 3 x 3) computes an m x m output tile from an n x n input tile (n = m + 2) as

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

summed over the input channels, where (.) is the elementwise product. Summed over the
channels, each of the n*n transform positions is a GEMM: M[p] (K x tiles) = U[p]
(K x C) V[p] (C x tiles), with U the transformed weights and V the transformed input
tiles (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).

The matrices come from Toom-Cook interpolation at points a_0..a_{n-2} and infinity
(``matrices``): A^T[i][j] = a_j^i, G[j][k] = a_j^k / prod_{l != j}(a_j - a_l), and row j
of B^T holds the coefficients of prod_{l != j}(x - a_l) (the infinity row: of
prod_l (x - a_l)). F(2x2, 3x3) uses 0, 1, -1; F(4x4, 3x3) uses 0, 1, -1, 1/2, -1/2
(small points; Barabasz, Anderson, Soodhalter and Gregg, "Error analysis and improving
the accuracy of Winograd convolution for deep neural networks", 2020, study how the
choice of points drives the error). With them A^T and B^T are dyadic (exact in float32) and
only G has entries (multiples of 1/3) that round. Measured on the error test's data,
their error is close to that of Lavin's 0, +-1, +-2 (tests/symnet/test_winograd.py).

Error bound (what tests/symnet/test_winograd.py checks). Every value the kernel
computes is a sum of products evaluated in float32 with unit roundoff u = 2^-24, so by
the standard analysis of sums and products (Higham, "Accuracy and Stability of
Numerical Algorithms", ch. 3) the computed output of tile position (i, j) satisfies

    |y_hat - y| <= gamma_D * sum_c sum_p |A^T|_(i,p) |A^T|_(j,p)'
                   * (|G| |g_c| |G|^T)_p * (|B^T| |d_c| |B|)_p

(|.| taken elementwise; p runs over the n x n positions; gamma_D = D u / (1 - D u))
where D is the longest chain of roundings a term passes through: the float32 rounding
of G's entries (2: G on both sides), G g G^T (two sums of r = 3 terms: 2r), B^T d B
(2n), the GEMM's dot products over C channels (C, their products included), A^T m A
(2n): D = 2 + 2r + 4n + C. ``error_depth`` gives D. The
bound is rigorous and loose (the sum over C is what dominates it for many channels);
the test also reports the observed error against u * sum |w| |x| beside those of the
im2col path and OpenCV's Winograd.

Only the forward convolution runs here; its gradients keep the im2col path. The
weights are transformed by a kernel of their own (``weight_template``) into a buffer
U the convolution reads: a step computed from the weights alone, so the executor runs
it only when the weights changed since its last run (codegen/plan.py,
``param_derived``), not at every call.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction

from .templates import Template

POINTS = {2: (0, 1, -1),
          4: (0, 1, -1, Fraction(1, 2), Fraction(-1, 2))}


def matrices(m, r=3, points=None):
    """(A^T (m x n), G (n x r), B^T (n x n)) as Fractions for F(m, r)."""
    pts = [Fraction(p) for p in (points if points is not None else POINTS[m])]
    n = m + r - 1
    if len(pts) != n - 1:
        raise ValueError(f"F({m}, {r}) needs {n - 1} finite points")

    def poly(roots):
        c = [Fraction(1)]
        for a in roots:         # multiply by (x - a)
            c = [(c[i - 1] if i > 0 else 0) - a * (c[i] if i < len(c) else 0)
                 for i in range(len(c) + 1)]
        return c

    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, bt = [], []
    for j, a in enumerate(pts):
        f = math.prod((a - b for l, b in enumerate(pts) if l != j), start=Fraction(1))
        g.append([a ** k / f for k in range(r)])
        row = poly([b for l, b in enumerate(pts) if l != j])
        bt.append(row + [Fraction(0)] * (n - len(row)))
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt.append(poly(pts))
    return at, g, bt


def error_depth(m, C, r=3):
    """D of the module docstring's bound for F(m x m, r x r) over C channels."""
    n = m + r - 1
    return 2 + 2 * r + 4 * n + C


# ---------------------------------------------------------------- C text
def _lit(v):
    f = float(v)
    return f"{f!r}f" if f != int(f) else f"{int(f)}.0f"


def _combo(row, names):
    """C expression for sum_j row[j] * names[j] (zero terms dropped)."""
    terms = []
    for c, nm in zip(row, names):
        if c == 0:
            continue
        if c == 1:
            terms.append(f"+ {nm}")
        elif c == -1:
            terms.append(f"- {nm}")
        elif c < 0:
            terms.append(f"- {_lit(-c)} * {nm}")
        else:
            terms.append(f"+ {_lit(c)} * {nm}")
    if not terms:
        return "0.0f"
    s = " ".join(terms)
    return s[2:] if s.startswith("+ ") else "-" + s[2:]


def _two_sided(mat, src, dst, tmp, decl="const float"):
    """Lines computing dst[i][j] = (mat src mat^T)[i][j]; src(a, b) and dst(i, j) give
    the C names; tmp a prefix for the intermediate (mat src)."""
    rows, cols = len(mat), len(mat[0])
    lines = []
    for i in range(rows):
        for b in range(cols):
            lines.append(f"{decl} {tmp}{i}_{b} = "
                         f"{_combo(mat[i], [src(a, b) for a in range(cols)])};")
    for i in range(rows):
        for j in range(rows):
            lines.append(f"{dst(i, j)} = "
                         f"{_combo(mat[j], [f'{tmp}{i}_{b}' for b in range(cols)])};")
    return lines


def _indent(lines, k):
    return "\n".join(" " * k + ln for ln in lines)


def conv_template(m) -> Template:
    """The F(m x m, 3 x 3) convolution of NB images x (NB, C, H, W) with w (K, C, 3, 3)
    into y (NB, K, oh, ow), pads ph, pw. Tiles are taken in rows of ntx tiles; a chunk
    is RB consecutive tile rows of the batch (spanning images); the team of T threads
    transforms a chunk's tiles into V (n*n, C, TB), runs the n*n GEMMs into Mo
    (n*n, K, TB) and transforms those into y. U (n*n, K, C): the transformed weights
    (``weight_template``); scratch: V, Mo."""
    at, g, bt = matrices(m)
    n = m + 2
    NP = n * n
    # input: B^T d B with d read through the pointer rows; dst into V
    it_in = _two_sided(bt, lambda a, b: f"d{a}_{b}",
                       lambda i, j: f"vp[{i * n + j} * CTB]", "e")
    ot = _two_sided(at, lambda a, b: f"mp[{a * n + b} * KTB]",
                    lambda i, j: f"o{i}_{j}", "q", "const float")
    ot = [("const float " + ln) if ln.startswith("o") else ln for ln in ot]
    load_fast = [f"const float d{a}_{b} = xr[{a} * W + {b}];" for a in range(n)
                 for b in range(n)]
    load_checked = [f"const float d{a}_{b} = (rok{a} && (unsigned long)(c0 + {b}) < "
                    f"(unsigned long)W) ? xr[{a} * W + {b}] : 0.0f;"
                    for a in range(n) for b in range(n)]
    store_fast = [f"yr[{i} * ow + {j}] = o{i}_{j};" for i in range(m) for j in range(m)]
    store_checked = [f"if ({i} < nyv && {j} < nxv) yr[{i} * ow + {j}] = o{i}_{j};"
                     for i in range(m) for j in range(m)]
    rok = [f"const int rok{a} = (unsigned long)(h0 + {a}) < (unsigned long)H;"
           for a in range(n)]
    # the input transform of a chunk's tiles (both threading modes run it)
    input_loop = f"""        for (long c = 0; c < C; ++c)
          for (long r = r0; r < r1; ++r) {{
            const long b = r / nty, ty = r % nty, h0 = ty * {m} - ph;
            const float* xp = x + (b * C + c) * H * W;
            float* vrow = Vc + c * TB + (r - r0) * ntx;
            /* tiles whose columns lie inside the image: tx in [xlo, xhi) */
            const int rows_in = h0 >= 0 && h0 + {n} <= H;
            if (rows_in && xlo < xhi) {{
              SN_PRAGMA(omp simd)
              for (long tx = xlo; tx < xhi; ++tx) {{
                const float* xr = xp + h0 * W + tx * {m} - pw;
                float* vp = vrow + tx;
  {_indent(load_fast, 14)}
  {_indent(it_in, 14)}
              }}
            }}
            for (long tx = 0; tx < ntx; ++tx) {{
              if (rows_in && tx >= xlo && tx < xhi) continue;
              const long c0 = tx * {m} - pw;
              const float* xr = xp + h0 * W + c0;
              float* vp = vrow + tx;
  {_indent(rok, 12)}
  {_indent(load_checked, 12)}
  {_indent(it_in, 12)}
            }}
          }}
"""
    # each block of output channels: its rows of the GEMMs, then the output transform
    output_loop = f"""        for (long k0 = 0; k0 < K; k0 += KB) {{
          const long kn = K - k0 < KB ? K - k0 : KB;
          for (long p = 0; p < {NP}; ++p)
            SN_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, kn, TB, C, 1.0f,
                     U + p * KC + k0 * C, C, Vc + p * CTB, TB, 0.0f, Mc + p * KTB + k0 * TB, TB);
          for (long k = k0; k < k0 + kn; ++k)
          for (long r = r0; r < r1; ++r) {{
            const long b = r / nty, ty = r % nty, nyv = oh - ty * {m};
            float* yrow = y + ((b * K + k) * oh + ty * {m}) * ow;
            const float* mrow = Mc + k * TB + (r - r0) * ntx;
            const long full = nyv >= {m} ? ow / {m} : 0;
            SN_PRAGMA(omp simd)
            for (long tx = 0; tx < full; ++tx) {{
              const float* mp = mrow + tx;
              float* yr = yrow + tx * {m};
  {_indent(ot, 12)}
  {_indent(store_fast, 12)}
            }}
            for (long tx = full; tx < ntx; ++tx) {{
              const float* mp = mrow + tx;
              float* yr = yrow + tx * {m};
              const long nxv = ow - tx * {m};
  {_indent(ot, 12)}
  {_indent(store_checked, 12)}
            }}
          }}
        }}
"""
    body = f"""
  /* F({m}x{m}, 3x3): {NP} transform positions, the weights transformed already (U).
     The batch's tile rows are taken RB at a time (a chunk of TB tiles); the team
     transforms a chunk's input tiles (split over channels), then each block of KB
     output channels runs its rows of the {NP} GEMMs and transforms them into y: two
     barriers a chunk. Work is handed out dynamically, so a thread the OS preempts
     delays the others less at each barrier. With PRIV (at least a chunk per thread),
     each thread takes whole chunks instead, in its own V and Mo, and meets the others
     only at the end. */
  const long ntx = (ow + {m - 1}) / {m}, nty = (oh + {m - 1}) / {m}, rows = NB * nty;
  const long KC = K * C, TBM = RB * ntx;
  const long xlo = (pw + {m - 1}) / {m};
  const long xhi0 = W + pw - {n} < 0 ? 0 : (W + pw - {n}) / {m} + 1;
  const long xhi = xhi0 < ntx ? xhi0 : ntx;
  float* V = scratch;
  float* Mo = V + {NP} * C * TBM;
  SN_PRAGMA(omp parallel num_threads(T))
  {{
    if (PRIV) {{
      /* chunks to threads, each with its own V and Mo: no barrier */
      float* const Vt = V + omp_get_thread_num() * {NP} * (C + K) * TBM;
      SN_PRAGMA(omp for schedule(dynamic, 1))
      for (long r0 = 0; r0 < rows; r0 += RB) {{
        float* const Vc = Vt;
        float* const Mc = Vt + {NP} * C * TBM;
        const long r1 = r0 + RB < rows ? r0 + RB : rows, TB = (r1 - r0) * ntx;
        const long CTB = C * TB, KTB = K * TB;
{input_loop}        /* each block of KB output channels runs its rows of the {NP} GEMMs and
           transforms them into y */
{output_loop}      }}
    }} else {{
      for (long r0 = 0; r0 < rows; r0 += RB) {{
        float* const Vc = V;
        float* const Mc = Mo;
        const long r1 = r0 + RB < rows ? r0 + RB : rows, TB = (r1 - r0) * ntx;
        const long CTB = C * TB, KTB = K * TB;
        SN_PRAGMA(omp for schedule(dynamic, 2) collapse(2))
{input_loop}        /* the input loop's barrier has seen V complete; each block of KB output
           channels runs its rows of the {NP} GEMMs and transforms them into y */
        SN_PRAGMA(omp for schedule(dynamic, 1))
{output_loop}      }}
    }}
  }}
"""
    params = (("c", "x"), ("c", "U"), ("p", "y"), ("p", "scratch"), ("l", "NB"), ("l", "C"),
              ("l", "H"), ("l", "W"), ("l", "K"), ("l", "ph"), ("l", "pw"), ("l", "oh"),
              ("l", "ow"), ("l", "T"), ("l", "RB"), ("l", "KB"), ("l", "PRIV"))
    return Template(f"sn_conv_winograd{m}", params, body)


def weight_template(m) -> Template:
    """U = G g G^T for each (out, in) pair of w (K, C, 3, 3), stored position-major
    as U (n*n, K, C) for F(m x m, 3 x 3)'s GEMMs."""
    _, g, _ = matrices(m)
    n = m + 2
    wt = _two_sided(g, lambda a, b: f"g{a}{b}", lambda i, j: f"U[{i * n + j} * KC + kc]",
                    "s", "const float")
    loads = [f"const float g{a}{b} = gl[{a * 3 + b}][l];" for a in range(3) for b in range(3)]
    body = f"""
  /* 64 (out, in) pairs at a time through a transposed copy, so the transform
     vectorises across pairs */
  const long KC = K * C;
  SN_PRAGMA(omp parallel for num_threads(T) schedule(dynamic, 4))
  for (long kc0 = 0; kc0 < KC; kc0 += 64) {{
    const long len = KC - kc0 < 64 ? KC - kc0 : 64;
    float gl[9][64];
    for (long l = 0; l < len; ++l)
      for (long e = 0; e < 9; ++e) gl[e][l] = w[(kc0 + l) * 9 + e];
    SN_PRAGMA(omp simd)
    for (long l = 0; l < len; ++l) {{
      const long kc = kc0 + l;
{_indent(loads, 6)}
{_indent(wt, 6)}
    }}
  }}
"""
    params = (("c", "w"), ("p", "U"), ("l", "K"), ("l", "C"), ("l", "T"))
    return Template(f"sn_winograd{m}_weights", params, body)


TEMPLATES = {m: conv_template(m) for m in POINTS}
WEIGHT_TEMPLATES = {m: weight_template(m) for m in POINTS}


# ---------------------------------------------------------------- choice
def applicable(op, x_shape, w_shape):
    p = op.p
    return (p.group == 1 and tuple(w_shape[2:]) == (3, 3) and p.stride == (1, 1)
            and p.dilation == (1, 1))


def choose(N, C, K, H, W, oh, ow, threads):
    """The tile size m (2 or 4) to use, or None for the im2col path. SYMNET_WINOGRAD
    overrides: "0" never, "2" or "4" always that variant (where applicable)."""
    env = os.environ.get("SYMNET_WINOGRAD", "").strip()
    if env in ("0", "off"):
        return None
    if env in ("2", "4"):
        return int(env)
    nty, ntx = -(-oh // 4), -(-ow // 4)
    saving = 9 * oh * ow / (36 * nty * ntx)     # multiplications saved, 4 at best
    tiles = N * nty * ntx
    enough = tiles >= MIN_TILES * max(threads, 1) or \
        (tiles >= MIN_TILES and C * K >= MANY_PAIRS)
    if min(C, K) >= MIN_CHANNELS and enough and saving >= MIN_SAVING:
        return 4
    return None


# From per-layer timings of the 3x3 stride-1 convolutions of ResNet-50, GoogLeNet,
# SqueezeNet 1.1 and VGG-16 at batches 1 and 8 (each layer alone, the paths interleaved
# round by round, 1 and 2 OpenMP threads on a shared 2-core machine): F(4x4) is
# faster than im2col + GEMM from 28 x 28 outputs at batch 1 (49 tiles) up, and slower
# on 14 x 14 and 7 x 7 ones at batch 1, where transforming every weight each call and
# GEMMs over few tiles cost more than the 4x fewer multiplications save; with 3 input
# channels (a first layer) the transforms dominate. Outputs that fill their last tiles
# badly (13 x 13: 16 x 16 computed, 2.65x fewer multiplications instead of 4x) lose
# even at batch 8, while 14 x 14 ones (3.06x) win there. With two threads a single
# chunk of 49 tiles (28 x 28 at batch 1) is split across the team at a loss (ResNet-50's
# 128-channel layer 0.8x), except with many channel pairs (VGG's 512 x 512: 1.2x); from
# 196 tiles (56 x 56) it wins again (1.4-2x), and at batch 8, where each thread takes
# whole chunks, 14 x 14 and larger layers win (1.2-1.9x). So: at least MIN_TILES tiles
# per thread, or MIN_TILES with MANY_PAIRS (out, in) channel pairs. F(2x2) was never
# the faster of the two where either beat im2col by more than noise, so automatic
# choice takes F(4x4). The machine was shared (load average 3-11 on 2 cores while
# measuring): the figures are medians and minima of 9-25 interleaved rounds.
MIN_TILES = 48
MIN_SAVING = 2.9
MANY_PAIRS = 1 << 16
MIN_CHANNELS = 16


def block_rows(N, C, K, oh, ow, m):
    """Tile rows per chunk: the chunk's transformed tiles and products ((C + K) * n*n
    floats a tile) within CHUNK_BYTES (so they stay in cache between the phases), but
    at least CHUNK_MIN_TILES tiles (GEMMs over fewer tiles read each transformed weight
    for little work); at least one tile row, at most the batch's."""
    budget = int(os.environ.get("SYMNET_WINOGRAD_BYTES", "0") or 0) or CHUNK_BYTES
    ntx, nty = -(-ow // m), -(-oh // m)
    per_row = 4 * (C + K) * (m + 2) ** 2 * ntx
    rb = max(budget // per_row, -(-CHUNK_MIN_TILES // ntx), 1)
    return min(N * nty, rb)


CHUNK_BYTES = 2 << 20
CHUNK_MIN_TILES = 64


def channel_block(K, threads):
    """Output channels per work item of the GEMM and output phase: about two items a
    thread, 8 to 64 channels (a multiple of 8) each."""
    kb = -(-K // (2 * max(threads, 1)))
    return max(8, min(64, -(-kb // 8) * 8))


def lower_conv(low, n, m):
    """Lower Conv2d node n through F(m x m, 3 x 3) onto Lowering ``low``."""
    g = low.graph
    x, w = g.args(n)
    (N, C, H, W), (K, _, _, _), (_, _, oh, ow) = g.shape(x), g.shape(w), g.shape(n)
    op = g.op(n)
    nn = m + 2
    rb = block_rows(N, C, K, oh, ow, m)
    tbm = rb * -(-ow // m)
    chunks = -(-(N * -(-oh // m)) // rb)
    priv = int(low.threads > 1 and chunks >= low.threads)
    # the weights' transform: its own step, computed again only when w changes
    u = low.new_value(nn * nn * K * C, "temp", "winograd_weights")
    wstep = low.launch(low._template(WEIGHT_TEMPLATES[m]),
                       [low.r(w), ["val", u, 0, "w"], ["long", K], ["long", C],
                        ["long", low.threads]], 1, [n])
    wstep.attrs["flops"] = 2 * K * C * (3 * nn * 3 + nn * nn * 3)
    size = nn * nn * (low.threads if priv else 1) * (C + K) * tbm
    scratch = ["val", low.new_value(size, "temp", "winograd"), 0, "w"]
    kb = channel_block(K, low.threads)
    args = [low.r(x), ["val", u, 0, "r"], low.w(n), scratch] + [
        ["long", v] for v in (N, C, H, W, K, op.p.pad[0], op.p.pad[1], oh, ow, low.threads, rb,
                              kb, priv)]
    step = low.launch(low._template(TEMPLATES[m]), args, 1, [n])
    ntiles = N * -(-oh // m) * -(-ow // m)
    step.attrs["flops"] = 2 * nn * nn * K * C * ntiles
