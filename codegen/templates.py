"""Library kernels for the non-elementwise families, as kernel text shared by CUDA and
the CPU (through the prelude); lowering bakes their sizes into the text as constants.

Each template is (name, parameter signature, body). Parameter types: ``p`` a float
pointer, ``c`` a read-only float pointer, ``l`` a long, ``f`` a float. On the CPU,
GEMM_BLAS calls BLAS (OpenBLAS's ``cblas_sgemm``, single-threaded) from the module's own
OpenMP threads, so GEMMs and kernels share one thread pool; the CUDA backends run GEMMs
as cuBLAS calls (Plan steps of kind "gemm"), around the layout kernels *_COLS below.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Template:
    name: str
    params: tuple      # ((type, name), ...)
    body: str
    block: int = 128

    def signature(self) -> str:
        ctype = {"p": "float* __restrict__", "c": "const float* __restrict__",
                 "l": "long", "f": "float"}
        return ", ".join(f"{ctype[t]} {n}" for t, n in self.params)

    def arg_types(self) -> str:
        return "".join("p" if t in "pc" else t for t, _ in self.params)

    def source(self) -> str:
        return f"SN_KERNEL {self.name}({self.signature()}) {{\n{self.body.strip(chr(10))}\n}}\n"


_CONV = (("l", "C"), ("l", "H"), ("l", "W"), ("l", "kh"), ("l", "kw"), ("l", "ph"),
         ("l", "pw"), ("l", "sh"), ("l", "sw"), ("l", "dh"), ("l", "dw"), ("l", "oh"),
         ("l", "ow"))

# col is (N, C*kh*kw, oh*ow): the layout a GEMM with (out, C*kh*kw) weights reads.
# One work item per row (b, c, ki, kj) walks the output plane: few divisions, and
# contiguous writes the CPU vectorises.
IM2COL = Template("sn_im2col", (("l", "n"), ("c", "x"), ("p", "col")) + _CONV, r"""
  SN_FOR_OUTER(row, n) {
    const long kj = row % kw, ki = (row / kw) % kh, c = (row / (kw * kh)) % C;
    const long b = row / (kw * kh * C);
    sn_im2col_row(x + (b * C + c) * H * W, col + row * oh * ow, ki, kj, H, W, ph, pw, sh, sw,
                  dh, dw, oh, ow);
  }
""")

# The adjoint of im2col, as a gather over the windows that cover each pixel (no atomics).
COL2IM = Template("sn_col2im", (("l", "n"), ("c", "col"), ("p", "x")) + _CONV, r"""
  SN_FOR(i, n) {
    long w = i % W, h = (i / W) % H, c = (i / (W * H)) % C, b = i / (W * H * C);
    float acc = 0.0f;
    for (long ki = 0; ki < kh; ++ki) {
      long ty = h + ph - ki * dh;
      if (ty < 0 || ty % sh) continue;
      long y = ty / sh;
      if (y >= oh) continue;
      for (long kj = 0; kj < kw; ++kj) {
        long tx = w + pw - kj * dw;
        if (tx < 0 || tx % sw) continue;
        long xx = tx / sw;
        if (xx >= ow) continue;
        acc += col[((b * C + c) * kh * kw + ki * kw + kj) * oh * ow + y * ow + xx];
      }
    }
    x[i] = acc;
  }
""")

# ---------------------------------------------------------------- device layouts
# The CUDA backends keep a convolution's columns for the whole batch as one matrix
# (C*kh*kw, NB*oh*ow): row (c, ki, kj), column (image, output position). cuBLAS reads
# it with leading dimension NB*oh*ow, strided over images for the forward and the input
# gradient, and with the batch folded into K for the weight gradient.

# One thread per element of the columns, so a warp's stores are contiguous.
IM2COL_COLS = Template("sn_im2col_cols", (("l", "n"), ("c", "x"), ("p", "col"), ("l", "NB"))
                       + _CONV, r"""
  SN_FOR(i, n) {
    const long p = i % (oh * ow), b = (i / (oh * ow)) % NB, row = i / (oh * ow * NB);
    const long xx = p % ow, yy = p / ow;
    const long kj = row % kw, ki = (row / kw) % kh, c = row / (kw * kh);
    const long h = yy * sh - ph + ki * dh, w = xx * sw - pw + kj * dw;
    col[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((b * C + c) * H + h) * W + w] : 0.0f;
  }
""")

# The adjoint of IM2COL_COLS: one thread per pixel of x gathers the column entries of
# the windows that cover it (no atomics).
COL2IM_COLS = Template("sn_col2im_cols", (("l", "n"), ("c", "col"), ("p", "x"), ("l", "NB"))
                       + _CONV, r"""
  SN_FOR(i, n) {
    const long w = i % W, h = (i / W) % H, c = (i / (W * H)) % C, b = i / (W * H * C);
    float acc = 0.0f;
    for (long ki = 0; ki < kh; ++ki) {
      const long ty = h + ph - ki * dh;
      if (ty < 0 || ty % sh) continue;
      const long y = ty / sh;
      if (y >= oh) continue;
      for (long kj = 0; kj < kw; ++kj) {
        const long tx = w + pw - kj * dw;
        if (tx < 0 || tx % sw) continue;
        const long xx = tx / sw;
        if (xx >= ow) continue;
        acc += col[((c * kh + ki) * kw + kj) * (NB * oh * ow) + (b * oh + y) * ow + xx];
      }
    }
    x[i] = acc;
  }
""")

# src (NB, R, P) as dst (R, NB*P): a batch's planes side by side, one thread per element
# of dst (a 1x1 convolution's columns, an output gradient with the batch folded into K).
BATCH_TO_COLS = Template("sn_batch_to_cols", (("l", "n"), ("c", "src"), ("p", "dst"),
                                              ("l", "NB"), ("l", "R"), ("l", "P")), r"""
  SN_FOR(i, n) {
    const long p = i % P, b = (i / P) % NB, row = i / (P * NB);
    dst[i] = src[(b * R + row) * P + p];
  }
""")

_POOL = (("l", "H"), ("l", "W"), ("l", "oh"), ("l", "ow"), ("l", "kh"), ("l", "kw"),
         ("l", "sh"), ("l", "sw"), ("l", "ph"), ("l", "pw"))

# Caffe's max pooling; mask (may be null) records the flat h*W+w of the first maximum
# (NaN wins, as it propagates). The window is walked in full with its clipped cells
# skipped, so its loops have constant trip counts and the CPU vectorises across the
# output row.
MAXPOOL = Template("sn_maxpool", (("l", "n"), ("c", "x"), ("p", "y"), ("p", "mask")) + _POOL, r"""
  SN_FOR2(row, n / ow, xx, ow) {
    const long yy = row % oh, plane = row / oh;
    long hs = yy * sh - ph, ws = xx * sw - pw;
    const long he = hs + kh < H ? hs + kh : H, we = ws + kw < W ? ws + kw : W;
    hs = hs > 0 ? hs : 0;
    ws = ws > 0 ? ws : 0;
    const float* src = x + plane * H * W;
    float best = 0.0f;
    long arg = -1;
    for (long i = 0; i < kh; ++i)
      for (long j = 0; j < kw; ++j) {
        const long h = hs + i, w = ws + j;
        const int inside = h < he && w < we;
        const float v = src[inside ? h * W + w : hs * W + ws];
        const int take = inside && (arg < 0 || v > best || (v != v && best == best));
        best = take ? v : best;
        arg = take ? h * W + w : arg;
      }
    y[row * ow + xx] = best;
    if (mask) mask[row * ow + xx] = (float)arg;
  }
""")

# Caffe's average pooling: the divisor counts the window clipped to the padded image.
AVEPOOL = Template("sn_avepool", (("l", "n"), ("c", "x"), ("p", "y")) + _POOL, r"""
  SN_FOR(i, n) {
    long xx = i % ow, yy = (i / ow) % oh, plane = i / (ow * oh);
    long hs = yy * sh - ph, ws = xx * sw - pw;
    long he = hs + kh < H + ph ? hs + kh : H + ph, we = ws + kw < W + pw ? ws + kw : W + pw;
    float area = (float)((he - hs) * (we - ws));
    hs = hs > 0 ? hs : 0; ws = ws > 0 ? ws : 0;
    he = he < H ? he : H; we = we < W ? we : W;
    const float* src = x + plane * H * W;
    float acc = 0.0f;
    for (long h = hs; h < he; ++h)
      for (long w = ws; w < we; ++w) acc += src[h * W + w];
    y[i] = acc / area;
  }
""")


def _covering(body):
    """Loop over the pooled cells whose window covers pixel (h, w) of a plane."""
    return r"""
  SN_FOR(i, n) {
    long w = i % W, h = (i / W) % H, plane = i / (W * H);
    long y0 = (h + ph - kh) / sh + 1, x0 = (w + pw - kw) / sw + 1;
    if (h + ph < kh) y0 = 0;
    if (w + pw < kw) x0 = 0;
    long y1 = (h + ph) / sh + 1, x1 = (w + pw) / sw + 1;
    if (y1 > oh) y1 = oh;
    if (x1 > ow) x1 = ow;
    float acc = 0.0f;
    for (long yy = y0; yy < y1; ++yy)
      for (long xx = x0; xx < x1; ++xx) {
""" + body + r"""
      }
    dx[i] = acc;
  }
"""


# Max pooling's input gradient from the forward mask: a gather, no atomics.
MAXPOOL_GRAD = Template("sn_maxpool_grad", (("l", "n"), ("c", "mask"), ("c", "g"), ("p", "dx"))
                        + _POOL, _covering(r"""
        long o = (plane * oh + yy) * ow + xx;
        if ((long)mask[o] == h * W + w) acc += g[o];"""))

# Max pooling's input gradient when windows do not overlap (stride >= kernel): a pixel
# lies in at most one window and takes its gradient if it was that window's maximum.
MAXPOOL_GRAD_DISJOINT = Template("sn_maxpool_grad_disjoint", (("l", "n"), ("c", "mask"),
                                                              ("c", "g"), ("p", "dx")) + _POOL,
                                 r"""
  SN_FOR2(row, n / W, w, W) {
    const long h = row % H, plane = row / H;
    const long yy = (h + ph) / sh, xx = (w + pw) / sw;
    const int ok = h + ph - yy * sh < kh && yy < oh && w + pw - xx * sw < kw && xx < ow;
    const long o = ok ? (plane * oh + yy) * ow + xx : 0;
    dx[row * W + w] = (ok && (long)mask[o] == h * W + w) ? g[o] : 0.0f;
  }
""")

AVEPOOL_GRAD = Template("sn_avepool_grad", (("l", "n"), ("c", "g"), ("p", "dx")) + _POOL,
                        _covering(r"""
        long hs = yy * sh - ph, ws = xx * sw - pw;
        long he = hs + kh < H + ph ? hs + kh : H + ph, we = ws + kw < W + pw ? ws + kw : W + pw;
        acc += g[(plane * oh + yy) * ow + xx] / (float)((he - hs) * (we - ws));"""))

# G read at each window's recorded maximum (the adjoint of MAXPOOL_GRAD in g).
MAXPOOL_SELECT = Template("sn_maxpool_select", (("l", "n"), ("c", "mask"), ("c", "gx"),
                                                ("p", "y"), ("l", "H"), ("l", "W"),
                                                ("l", "oh"), ("l", "ow")), r"""
  SN_FOR(i, n) {
    long plane = i / (oh * ow);
    y[i] = gx[plane * H * W + (long)mask[i]];
  }
""")

# Sum over a window [c - before, c + after] of axis of length L; x viewed (outer, L, inner).
WINDOW_SUM = Template("sn_window_sum", (("l", "n"), ("c", "x"), ("p", "y"), ("l", "L"),
                                        ("l", "inner"), ("l", "before"), ("l", "after")), r"""
  SN_FOR(i, n) {
    long in_ = i % inner, c = (i / inner) % L, outer = i / (inner * L);
    long lo = c - before > 0 ? c - before : 0, hi = c + after < L - 1 ? c + after : L - 1;
    float acc = 0.0f;
    for (long j = lo; j <= hi; ++j) acc += x[(outer * L + j) * inner + in_];
    y[i] = acc;
  }
""")

# The CPU's window sum: per outer index, each output row of the axis the sum of its
# window's input rows, vectorised over the contiguous inner run; when the axis is the
# innermost (inner 1), vectorised along the axis instead, its interior windows (wholly
# inside) summed with no bounds checks and the clipped ones at the ends apart. Window
# values are added in axis order (as WINDOW_SUM).
WINDOW_SUM_CPU = Template("sn_window_sum", WINDOW_SUM.params, r"""
  SN_FOR_OUTER(o, n / (L * inner)) {
    const float* xo = x + o * L * inner;
    float* yo = y + o * L * inner;
    if (inner == 1) {
      const long ilo = before < L ? before : L;
      const long ihi = L - after > ilo ? L - after : ilo;
      SN_PRAGMA(omp simd)
      for (long c = ilo; c < ihi; ++c) {
        float acc = xo[c - before];
        for (long j = 1; j <= before + after; ++j) acc += xo[c - before + j];
        yo[c] = acc;
      }
      for (long c = 0; c < L; ++c) {
        if (c == ilo) c = ihi;
        if (c >= L) break;
        const long lo = c - before > 0 ? c - before : 0;
        const long hi = c + after < L - 1 ? c + after : L - 1;
        float acc = xo[lo];
        for (long j = lo + 1; j <= hi; ++j) acc += xo[j];
        yo[c] = acc;
      }
    } else {
      for (long c = 0; c < L; ++c) {
        const long lo = c - before > 0 ? c - before : 0;
        const long hi = c + after < L - 1 ? c + after : L - 1;
        const float* x0 = xo + lo * inner;
        float* yc = yo + c * inner;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < inner; ++q) yc[q] = x0[q];
        for (long j = lo + 1; j <= hi; ++j) {
          const float* xj = xo + j * inner;
          SN_PRAGMA(omp simd)
          for (long q = 0; q < inner; ++q) yc[q] += xj[q];
        }
      }
    }
  }
""")

# Local response normalization (ops.LRN): y = x * (k + coeff * S)^-beta, S the sum of
# squares over a window of 2 pre + 1 channels ("across", x viewed (N, C, HW)) or of
# (2 pre + 1)^2 pixels of the plane ("within", x viewed (N*C, H, W)), zeros outside.
# coeff, k and the power are baked into the text by lrn_template.
LRN_DIRECT_MAX = 15
_LRN_ACROSS_PARAMS = (("l", "n"), ("c", "x"), ("p", "y"), ("l", "C"), ("l", "HW"), ("l", "pre"))
_LRN_WITHIN_PARAMS = (("l", "n"), ("c", "x"), ("p", "y"), ("l", "H"), ("l", "W"), ("l", "pre"))

_LRN_ACROSS = r"""
  SN_FOR(i, n) {
    const long p = i % HW, c = (i / HW) % C, base = i - c * HW;
    const long lo = c - pre > 0 ? c - pre : 0, hi = c + pre < C - 1 ? c + pre : C - 1;
    float acc = 0.0f;
    for (long j = lo; j <= hi; ++j) {
      const float v = x[base + j * HW];
      acc += v * v;
    }
    const float s = acc * coeff + kk;
    y[i] = x[i] * (SN_LRN_POW);
  }
"""

_LRN_WITHIN = r"""
  SN_FOR(i, n) {
    const long w = i % W, h = (i / W) % H, base = i - (h * W + w);
    const long h0 = h - pre > 0 ? h - pre : 0, h1 = h + pre < H - 1 ? h + pre : H - 1;
    const long w0 = w - pre > 0 ? w - pre : 0, w1 = w + pre < W - 1 ? w + pre : W - 1;
    float acc = 0.0f;
    for (long r = h0; r <= h1; ++r)
      for (long q = w0; q <= w1; ++q) {
        const float v = x[base + r * W + q];
        acc += v * v;
      }
    const float s = acc * coeff + kk;
    y[i] = x[i] * (SN_LRN_POW);
  }
"""

# The CPU's for windows of up to LRN_DIRECT_MAX values along an axis: per image and block
# of at most 512 positions of the plane, each channel's window summed directly from the
# block's rows (in cache: each value is read from memory once), vectorised over the
# block, then the power.
_LRN_ACROSS_CPU_DIRECT = r"""
  const long nblk = (HW + 511) / 512, blk = (HW + nblk - 1) / nblk;
  SN_FOR_OUTER(item, (n / (C * HW)) * nblk) {
    const long p0 = (item % nblk) * blk, len = HW - p0 < blk ? HW - p0 : blk;
    const float* xb = x + (item / nblk) * C * HW + p0;
    float* yb = y + (item / nblk) * C * HW + p0;
    float acc[blk];
    for (long c = 0; c < C; ++c) {
      const long lo = c - pre > 0 ? c - pre : 0, hi = c + pre < C - 1 ? c + pre : C - 1;
      const float* x0 = xb + lo * HW;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < len; ++q) acc[q] = x0[q] * x0[q];
      for (long j = lo + 1; j <= hi; ++j) {
        const float* xj = xb + j * HW;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < len; ++q) acc[q] += xj[q] * xj[q];
      }
      const float* xc = xb + c * HW;
      float* yc = yb + c * HW;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < len; ++q) {
        const float s = acc[q] * coeff + kk;
        yc[q] = xc[q] * (SN_LRN_POW);
      }
    }
  }
"""

# The same per plane for the within-channel window: each row's sums over the window's
# rows, into a row padded with pre zeros each side, then the sums of 2 pre + 1
# neighbours along that row, vectorised with no bounds checks.
_LRN_WITHIN_CPU_DIRECT = r"""
  SN_FOR_OUTER(plane, n / (H * W)) {
    const float* xp = x + plane * H * W;
    float* yp = y + plane * H * W;
    float col[W + 2 * pre];
    float* cc = col + pre;
    for (long q = 0; q < W + 2 * pre; ++q) col[q] = 0.0f;
    float t[W];
    for (long h = 0; h < H; ++h) {
      const long r0 = h - pre > 0 ? h - pre : 0, r1 = h + pre < H - 1 ? h + pre : H - 1;
      const float* x0 = xp + r0 * W;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < W; ++q) cc[q] = x0[q] * x0[q];
      for (long r = r0 + 1; r <= r1; ++r) {
        const float* xr = xp + r * W;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < W; ++q) cc[q] += xr[q] * xr[q];
      }
      SN_PRAGMA(omp simd)
      for (long q = 0; q < W; ++q) t[q] = col[q];
      for (long j = 1; j <= 2 * pre; ++j) {
        SN_PRAGMA(omp simd)
        for (long q = 0; q < W; ++q) t[q] += col[q + j];
      }
      const float* xr = xp + h * W;
      float* yr = yp + h * W;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < W; ++q) {
        const float s = t[q] * coeff + kk;
        yr[q] = xr[q] * (SN_LRN_POW);
      }
    }
  }
"""

# For wider windows, the CPU's: per image and block of at most 512 positions of the
# plane, a running sum over the channel window (the entering channel's squares added,
# the leaving one's subtracted) in double, so each value is read from memory once, the
# cost per value does not grow with the window, and the sums are exact while the
# squares in a column span less than 2^29 (beyond, the error is below 2^-53 of the
# largest square that passed).
_LRN_ACROSS_CPU = r"""
  const long nblk = (HW + 511) / 512, blk = (HW + nblk - 1) / nblk;
  SN_FOR_OUTER(item, (n / (C * HW)) * nblk) {
    const long p0 = (item % nblk) * blk, len = HW - p0 < blk ? HW - p0 : blk;
    const float* xb = x + (item / nblk) * C * HW + p0;
    float* yb = y + (item / nblk) * C * HW + p0;
    double acc[blk];
    for (long q = 0; q < len; ++q) acc[q] = 0.0;
    for (long c = 0; c < pre && c < C; ++c) {
      const float* xc = xb + c * HW;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < len; ++q) acc[q] += (double)(xc[q] * xc[q]);
    }
    for (long c = 0; c < C; ++c) {
      if (c + pre < C) {
        const float* xc = xb + (c + pre) * HW;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < len; ++q) acc[q] += (double)(xc[q] * xc[q]);
      }
      const float* xc = xb + c * HW;
      float* yc = yb + c * HW;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < len; ++q) {
        const float s = (float)acc[q] * coeff + kk;
        yc[q] = xc[q] * (SN_LRN_POW);
      }
      if (c >= pre) {
        const float* xo = xb + (c - pre) * HW;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < len; ++q) acc[q] -= (double)(xo[q] * xo[q]);
      }
    }
  }
"""

# The CPU's: per plane, a running sum over the window's rows (in double, as above) in a
# row padded with pre zeros each side, then per pixel the sum of 2 pre + 1 neighbours of
# that row, vectorised over the row with no bounds checks.
_LRN_WITHIN_CPU = r"""
  SN_FOR_OUTER(plane, n / (H * W)) {
    const float* xp = x + plane * H * W;
    float* yp = y + plane * H * W;
    double col[W + 2 * pre], t[W];
    double* cc = col + pre;
    for (long q = 0; q < W + 2 * pre; ++q) col[q] = 0.0;
    for (long h = 0; h < pre && h < H; ++h) {
      const float* xr = xp + h * W;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < W; ++q) cc[q] += (double)(xr[q] * xr[q]);
    }
    for (long h = 0; h < H; ++h) {
      if (h + pre < H) {
        const float* xr = xp + (h + pre) * W;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < W; ++q) cc[q] += (double)(xr[q] * xr[q]);
      }
      const float* xr = xp + h * W;
      float* yr = yp + h * W;
      SN_PRAGMA(omp simd)
      for (long q = 0; q < W; ++q) t[q] = col[q];
      for (long j = 1; j <= 2 * pre; ++j) {
        SN_PRAGMA(omp simd)
        for (long q = 0; q < W; ++q) t[q] += col[q + j];
      }
      SN_PRAGMA(omp simd)
      for (long q = 0; q < W; ++q) {
        const float s = (float)t[q] * coeff + kk;
        yr[q] = xr[q] * (SN_LRN_POW);
      }
      if (h >= pre) {
        const float* xo = xp + (h - pre) * W;
        SN_PRAGMA(omp simd)
        for (long q = 0; q < W; ++q) cc[q] -= (double)(xo[q] * xo[q]);
      }
    }
  }
"""


def _float_literal(v):
    return f"{float(np.float32(v)):.9e}f"


def lrn_power(beta):
    """C text of s^-beta for a float s: square roots and a division for the common
    exponents (0.75 is 1 / (sqrt(s) * sqrt(sqrt(s))), within 2 ulp of powf; for s = -0
    and s = -inf, reached only with k <= 0 and a negative alpha, these give -inf and NaN
    where powf gives +inf and 0), powf otherwise (vectorised by libmvec on the CPU)."""
    beta = float(beta)
    special = {0.0: "1.0f", 0.5: "1.0f / sqrtf(s)", 1.0: "1.0f / s",
               0.75: "1.0f / (sqrtf(s) * sqrtf(sqrtf(s)))", 0.25: "1.0f / sqrtf(sqrtf(s))"}
    if beta in special:
        return special[beta]
    return f"powf(s, {_float_literal(-beta)})"


def lrn_template(region, cpu, size, coeff, k, beta):
    """The LRN kernel for one region ("across" or "within"), backend (cpu or not),
    window size (along an axis) and constants coeff, k, beta."""
    direct = size <= LRN_DIRECT_MAX
    if region == "across":
        name, params = "sn_lrn_across", _LRN_ACROSS_PARAMS
        body = (_LRN_ACROSS_CPU_DIRECT if direct else _LRN_ACROSS_CPU) if cpu else _LRN_ACROSS
    else:
        name, params = "sn_lrn_within", _LRN_WITHIN_PARAMS
        body = (_LRN_WITHIN_CPU_DIRECT if direct else _LRN_WITHIN_CPU) if cpu else _LRN_WITHIN
    head = f"  const float coeff = {_float_literal(coeff)}, kk = {_float_literal(k)};\n"
    return Template(name, params, head + body.replace("SN_LRN_POW", lrn_power(beta)))


# out (outer, K, inner) = x (outer, L, inner) at idx; an index outside [0, L) gives 0.
GATHER = Template("sn_gather", (("l", "n"), ("c", "x"), ("c", "idx"), ("p", "y"), ("l", "L"),
                                ("l", "K"), ("l", "inner")), r"""
  SN_FOR(i, n) {
    long in_ = i % inner, outer = i / (inner * K);
    long j = (long)idx[i];      /* truncation toward zero, as Caffe's label casts */
    y[i] = (j >= 0 && j < L) ? x[(outer * L + j) * inner + in_] : 0.0f;
  }
""")

# dx (outer, L, inner) = sum of g (outer, K, inner) over the k whose index is this position.
GATHER_GRAD = Template("sn_gather_grad", (("l", "n"), ("c", "idx"), ("c", "g"), ("p", "dx"),
                                          ("l", "L"), ("l", "K"), ("l", "inner")), r"""
  SN_FOR(i, n) {
    long in_ = i % inner, c = (i / inner) % L, outer = i / (inner * L);
    float acc = 0.0f;
    for (long k = 0; k < K; ++k) {
      long o = (outer * K + k) * inner + in_;
      if ((long)idx[o] == c) acc += g[o];
    }
    dx[i] = acc;
  }
""")

# Indices of the K largest along L (largest first, ties to the lower index).
ARGTOPK = Template("sn_argtopk", (("l", "n"), ("c", "x"), ("p", "y"), ("l", "L"), ("l", "K"),
                                  ("l", "inner")), r"""
  SN_FOR(i, n) {
    long in_ = i % inner, outer = i / inner;
    const float* row = x + outer * L * inner + in_;
    long prev = -1;
    float pv = 0.0f;
    for (long k = 0; k < K; ++k) {
      long best = -1;
      float bv = 0.0f;
      for (long j = 0; j < L; ++j) {
        float v = row[j * inner];
        int after_prev = prev < 0 || v < pv || (v == pv && j > prev);
        if (after_prev && (best < 0 || v > bv)) { best = j; bv = v; }
      }
      y[(outer * K + k) * inner + in_] = (float)best;
      prev = best; pv = bv;
    }
  }
""")

RANDOM_UNIFORM = Template("sn_random_uniform", (("l", "n"), ("p", "y"), ("c", "counter"),
                                                ("l", "seed_lo"), ("l", "seed_hi")), r"""
  uint32_t off = counter ? (uint32_t)(long)counter[0] : 0u;
  SN_FOR(i, n) {
    y[i] = sn_philox_uniform((uint32_t)i, (uint32_t)((int64_t)i >> 32), off,
                             (uint32_t)seed_lo, (uint32_t)seed_hi);
  }
""")

# C[b0, b1] = alpha A[b0, b1] B[b0, b1] + beta C[b0, b1] for strided A (M x K) and B
# (K x N); C is contiguous (M x N) per batch. Batch index (b0, b1) over nb0 x nb1.
_GEMM_PARAMS = (
    ("l", "nb0"), ("l", "nb1"), ("l", "M"), ("l", "N"), ("l", "K"), ("f", "alpha"),
    ("f", "beta"), ("c", "A"), ("l", "sAm"), ("l", "sAk"), ("l", "sA0"), ("l", "sA1"),
    ("c", "B"), ("l", "sBk"), ("l", "sBn"), ("l", "sB0"), ("l", "sB1"), ("p", "Cm"),
    ("l", "sC0"), ("l", "sC1"))

# Row-major A (M x K) and B (K x N) or their transposes, by which stride is 1; the
# stride of a single row or column is arbitrary and BLAS wants it at least its length.
_BLAS_OPERANDS = r"""
  const int na = sAk == 1 && (sAm >= K || M == 1), nb = sBn == 1 && (sBk >= N || K == 1);
  const enum CBLAS_TRANSPOSE ta = na ? CblasNoTrans : CblasTrans;
  const enum CBLAS_TRANSPOSE tb = nb ? CblasNoTrans : CblasTrans;
  const long lda = na ? (M == 1 ? K : sAm) : (K == 1 ? M : sAk);
  const long ldb = nb ? (K == 1 ? N : sBk) : (N == 1 ? K : sBn);
"""

GEMM_BLAS = Template("sn_gemm_blas", _GEMM_PARAMS, r"""
  /* one BLAS call per batch, or per piece of a batch's C (rows or columns) when there
     are fewer batches than threads; the pieces are split among the OpenMP threads */
""" + _BLAS_OPERANDS + r"""  const long nbat = nb0 * nb1;
  SN_PRAGMA(omp parallel)
  {
    const long nt = omp_get_num_threads(), t = omp_get_thread_num();
    const long parts = nbat >= nt ? 1 : nt / nbat;
    const int by_cols = N >= M;
    const long extent = by_cols ? N : M;
    const long chunk = ((extent + parts - 1) / parts + 15) / 16 * 16;
    const long items = nbat * parts;
    for (long it = t * items / nt; it < (t + 1) * items / nt; ++it) {
      const long b = it / parts, piece = it % parts;
      const long lo = piece * chunk, hi = lo + chunk < extent ? lo + chunk : extent;
      if (lo >= hi) continue;
      const float* a = A + (b / nb1) * sA0 + (b % nb1) * sA1;
      const float* bb = B + (b / nb1) * sB0 + (b % nb1) * sB1;
      float* c = Cm + (b / nb1) * sC0 + (b % nb1) * sC1;
      if (by_cols) {
        SN_SGEMM(CblasRowMajor, ta, tb, M, hi - lo, K, alpha, a, lda, bb + lo * sBn, ldb,
                 beta, c + lo, N);
        /*SN_EPILOGUE((c - Cm) / N, (c - Cm) / N + M, lo, hi)*/
      } else {
        SN_SGEMM(CblasRowMajor, ta, tb, hi - lo, N, K, alpha, a + lo * sAm, lda, bb, ldb,
                 beta, c + lo * N, N);
        /*SN_EPILOGUE((c - Cm) / N + lo, (c - Cm) / N + hi, 0, N)*/
      }
    }
  }
""")

# C (M x N) = A (M x K) B + beta C for a few rows of A (M <= GEMV_MAX_ROWS: a fully
# connected layer at a small batch), A's rows contiguous and sAm apart, B read as the
# transpose of a matrix whose N rows are contiguous and sBn apart (Caffe's weights).
# Memory-bound on B: every thread takes runs of C's columns and reads each row of B once
# for all M rows of A, keeping M vector accumulators in registers (BLAS's sgemm packs B
# first, about twice the traffic at M = 1). Guided scheduling lets a thread that starts
# late (a busy machine) take fewer columns instead of making the others wait for it.
GEMV_MAX_ROWS = 8
GEMV_CPU = Template("sn_gemv_cpu", (
    ("l", "M"), ("l", "N"), ("l", "K"), ("f", "beta"), ("c", "A"), ("l", "sAm"),
    ("c", "B"), ("l", "sBn"), ("p", "Cm")), r"""
  typedef float sn_v8 __attribute__((vector_size(32), aligned(4), may_alias));
  SN_PRAGMA(omp parallel for schedule(guided, 16) if(N * K >= 32768))
  for (long n = 0; n < N; ++n) {
    const float* w = B + n * sBn;
    sn_v8 acc[8];
    for (long m = 0; m < M; ++m) acc[m] = (sn_v8){0};
    long k = 0;
    for (; k + 8 <= K; k += 8) {
      const sn_v8 wv = *(const sn_v8*)(w + k);
      for (long m = 0; m < M; ++m) acc[m] += *(const sn_v8*)(A + m * sAm + k) * wv;
    }
    for (long m = 0; m < M; ++m) {
      float s = ((acc[m][0] + acc[m][4]) + (acc[m][1] + acc[m][5])) +
                ((acc[m][2] + acc[m][6]) + (acc[m][3] + acc[m][7]));
      for (long r = k; r < K; ++r) s += A[m * sAm + r] * w[r];
      Cm[m * N + n] = beta == 0.0f ? s : s + beta * Cm[m * N + n];
    }
    /*SN_EPILOGUE(0, M, n, n + 1)*/
  }
""")

# C[b1] = sum over b0 of A[b0, b1] B[b0, b1] (a convolution's weight gradient summed over
# the images): each of at most T threads accumulates its share of b0 with beta = 1,
# thread 0 in C itself and the others in their slices of scratch, then the partial sums
# are added.
GEMM_BLAS_SUM = Template("sn_gemm_blas_sum", (
    ("l", "nb0"), ("l", "nb1"), ("l", "M"), ("l", "N"), ("l", "K"), ("c", "A"), ("l", "sAm"),
    ("l", "sAk"), ("l", "sA0"), ("l", "sA1"), ("c", "B"), ("l", "sBk"), ("l", "sBn"),
    ("l", "sB0"), ("l", "sB1"), ("p", "Cm"), ("l", "sC1"), ("p", "scratch"), ("l", "T")), r"""
""" + _BLAS_OPERANDS + r"""  const long total = nb1 * M * N;
  SN_PRAGMA(omp parallel num_threads(nb0 < T ? nb0 : T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* acc = t == 0 ? Cm : scratch + t * total;
    const long b_lo = t * nb0 / nt, b_hi = (t + 1) * nb0 / nt;
    for (long g = 0; g < nb1; ++g)
      for (long b = b_lo; b < b_hi; ++b)
        SN_SGEMM(CblasRowMajor, ta, tb, M, N, K, 1.0f, A + b * sA0 + g * sA1, lda,
                 B + b * sB0 + g * sB1, ldb, b == b_lo ? 0.0f : 1.0f, acc + g * sC1, N);
    if (b_lo == b_hi)
      for (long i = 0; i < total; ++i) acc[i] = 0.0f;
    SN_PRAGMA(omp barrier)
    SN_PRAGMA(omp for schedule(static))
    for (long i = 0; i < total; ++i)
      for (long s = 1; s < nt; ++s) Cm[i] += scratch[s * total + i];
  }
""")

# ---------------------------------------------------------------- CPU variants
# The CPU runs these in place of the templates of the same name: one work item per
# image row, walked by inner loops the compiler vectorises (the row's state in local
# arrays, whose sizes are the constants lowering bakes in).

# Columns xx whose windows lie wholly inside the image's width: [xlo, xhi), with
# xlo <= xhi (a CPU pooling kernel's interior, walked without bounds checks).
_POOL_COLUMNS = r"""
  const long xlo = (pw + sw - 1) / sw < ow ? (pw + sw - 1) / sw : ow;
  const long xend = W + pw < kw ? 0 : (W + pw - kw) / sw + 1;
  const long xhi = xend < xlo ? xlo : (xend < ow ? xend : ow);
"""

def _maxpool_plane(take):
    return r"""
    float ring[kh * ow];
    int rarg[kh * ow];
    long next = 0;     /* the first input row not reduced into the ring */
    for (long yy = 0; yy < oh; ++yy) {
      long hs = yy * sh - ph;
      const long he = hs + kh < H ? hs + kh : H;
      hs = hs > 0 ? hs : 0;
      if (next < hs) next = hs;
      for (; next < he; ++next) {
        const float* r = src + next * W;
        float* o = ring + (next % kh) * ow;
        int* oa = rarg + (next % kh) * ow;
        SN_PRAGMA(omp simd)
        for (long xx = xlo; xx < xhi; ++xx) {
          const long ws = xx * sw - pw;
          float m = r[ws];
          int a = (int)ws;
          for (long j = 1; j < kw; ++j) {
            const float v = r[ws + j];
            const int take = """ + take + r""";
            m = take ? v : m;
            a = take ? (int)(ws + j) : a;
          }
          o[xx] = m;
          oa[xx] = a;
        }
        for (long xx = 0; xx < ow; ++xx) {
          if (xx == xlo) xx = xhi;
          if (xx >= ow) break;
          long ws = xx * sw - pw;
          const long we = ws + kw < W ? ws + kw : W;
          ws = ws > 0 ? ws : 0;
          float m = r[ws];
          int a = (int)ws;
          for (long w = ws + 1; w < we; ++w) {
            const float v = r[w];
            if (""" + take + r""") { m = v; a = (int)w; }
          }
          o[xx] = m;
          oa[xx] = a;
        }
      }
      float* out = yp + yy * ow;
      float best[ow];
      int arg[ow];
      const float* r0 = ring + (hs % kh) * ow;
      const int* a0 = rarg + (hs % kh) * ow;
      SN_PRAGMA(omp simd)
      for (long xx = 0; xx < ow; ++xx) {
        best[xx] = r0[xx];
        arg[xx] = (int)(hs * W) + a0[xx];
      }
      for (long h = hs + 1; h < he; ++h) {
        const float* rr = ring + (h % kh) * ow;
        const int* ra = rarg + (h % kh) * ow;
        SN_PRAGMA(omp simd)
        for (long xx = 0; xx < ow; ++xx) {
          const float v = rr[xx], m = best[xx];
          const int take = """ + take + r""";
          best[xx] = take ? v : m;
          arg[xx] = take ? (int)(h * W) + ra[xx] : arg[xx];
        }
      }
      for (long xx = 0; xx < ow; ++xx) out[xx] = best[xx];
      if (mp)
        for (long xx = 0; xx < ow; ++xx) mp[yy * ow + xx] = (float)arg[xx];
    }
"""


# Small windows (at most 4 cells, LeNet's 2x2) walk each window whole, vectorised over an
# output row's interior (measured faster there: 0.34 against 0.46 ms on 64 x 20 planes of
# 24x24); larger ones are separable, as _pool_plane_cpu: each input row's windows along
# the width reduced once into a ring of kh rows (value, column of the first maximum),
# then each output row combines the ring rows of its window top to bottom. A row's first
# maximum is its leftmost, and a later row wins only with a larger value (or the first
# NaN), so the result is the first maximum in row-major order, as MAXPOOL (NaN wins).
_MAXPOOL_WINDOWS = r"""
  /* windows wholly inside the image: rows yy in [ylo, yhi), columns xx in [xlo, xhi) */
  const long ylo = (ph + sh - 1) / sh, xlo = (pw + sw - 1) / sw;
  const long yhi = H + ph < kh ? 0 : ((H + ph - kh) / sh + 1 < oh ? (H + ph - kh) / sh + 1 : oh);
  const long xhi = W + pw < kw ? 0 : ((W + pw - kw) / sw + 1 < ow ? (W + pw - kw) / sw + 1 : ow);
  SN_FOR_OUTER(plane, n / (oh * ow)) {
    const float* src = x + plane * H * W;
    float* yp = y + plane * oh * ow;
    float* mp = mask ? mask + plane * oh * ow : 0;
    for (long yy = 0; yy < oh; ++yy) {
      const int whole_row = yy >= ylo && yy < yhi;
      if (whole_row) {
        int args[ow];
        SN_PRAGMA(omp simd)
        for (long xx = xlo; xx < xhi; ++xx) {
          float best = 0.0f;
          int arg = -1;
          for (long i = 0; i < kh; ++i)
            for (long j = 0; j < kw; ++j) {
              const long at = (yy * sh - ph + i) * W + xx * sw - pw + j;
              const float v = src[at];
              const int take = arg < 0 || v > best || (v != v && best == best);
              best = take ? v : best;
              arg = take ? (int)at : arg;
            }
          yp[yy * ow + xx] = best;
          args[xx] = arg;
        }
        if (mp)
          for (long xx = xlo; xx < xhi; ++xx) mp[yy * ow + xx] = (float)args[xx];
      }
      for (long xx = 0; xx < ow; ++xx) {      /* windows the image's edge clips */
        if (whole_row && xx >= xlo && xx < xhi) continue;
        long hs = yy * sh - ph, ws = xx * sw - pw;
        const long he = hs + kh < H ? hs + kh : H, we = ws + kw < W ? ws + kw : W;
        hs = hs > 0 ? hs : 0;
        ws = ws > 0 ? ws : 0;
        float best = src[hs * W + ws];
        long arg = hs * W + ws;
        for (long h = hs; h < he; ++h)
          for (long w = ws; w < we; ++w) {
            const float v = src[h * W + w];
            if (v > best || (v != v && best == best)) { best = v; arg = h * W + w; }
          }
        yp[yy * ow + xx] = best;
        if (mp) mp[yy * ow + xx] = (float)arg;
      }
    }
  }
"""

MAXPOOL_CPU = Template("sn_maxpool", MAXPOOL.params, r"""
  if (kh * kw <= 4) {
""" + _MAXPOOL_WINDOWS + r"""
  } else {
""" + _POOL_COLUMNS + r"""
  SN_FOR_OUTER(plane, n / (oh * ow)) {
    const float* src = x + plane * H * W;
    float* yp = y + plane * oh * ow;
    float* mp = mask ? mask + plane * oh * ow : 0;
    int nan = 0;      /* a plane without NaN compares values alone */
    SN_PRAGMA(omp simd reduction(|:nan))
    for (long i = 0; i < H * W; ++i) nan |= src[i] != src[i];
    if (!nan) {
""" + _maxpool_plane("v > m") + r"""
    } else {""" + _maxpool_plane("v > m || (v != v && m == m)") + r"""
    }
  }
  }
""")


# Each plane's gradient: zeroed, then g added at every window's maximum in window order
# (the sum MAXPOOL_GRAD gathers, for overlapping windows too).
MAXPOOL_GRAD_CPU = Template("sn_maxpool_grad", MAXPOOL_GRAD.params, r"""
  SN_FOR_OUTER(plane, n / (H * W)) {
    float* d = dx + plane * H * W;
    const float* m = mask + plane * oh * ow;
    const float* gg = g + plane * oh * ow;
    for (long i = 0; i < H * W; ++i) d[i] = 0.0f;
    for (long o = 0; o < oh * ow; ++o) d[(long)m[o]] += gg[o];
  }
""")
MAXPOOL_GRAD_DISJOINT_CPU = Template("sn_maxpool_grad_disjoint", MAXPOOL_GRAD_DISJOINT.params,
                                     MAXPOOL_GRAD_CPU.body)


def _pool_plane_cpu(row_interior, row_border, combine, finish):
    """One plane of a CPU pooling kernel (src, yp), separable: each input row's windows
    along the width reduced once into a ring of kh rows of ow values (interior columns
    by a vectorised loop with no bounds checks, the clipped border columns apart), then
    each output row combines the ring's rows of its window (clipped to the image),
    vectorised over the output columns. Rows are combined in window order, each after
    the row before, so the result is the window's reduction in row-major order."""
    return r"""
    float ring[kh * ow];
    long next = 0;     /* the first input row not reduced into the ring */
    for (long yy = 0; yy < oh; ++yy) {
      long hs = yy * sh - ph;
      const long hs0 = hs, he = hs + kh < H ? hs + kh : H;
      hs = hs > 0 ? hs : 0;
      if (next < hs) next = hs;
      for (; next < he; ++next) {
        const float* r = src + next * W;
        float* o = ring + (next % kh) * ow;
        SN_PRAGMA(omp simd)
        for (long xx = xlo; xx < xhi; ++xx) {
          const float* q = r + xx * sw - pw;
""" + row_interior + r"""
          o[xx] = m;
        }
        for (long xx = 0; xx < ow; ++xx) {
          if (xx == xlo) xx = xhi;
          if (xx >= ow) break;
          long ws = xx * sw - pw;
          const long we = ws + kw < W ? ws + kw : W;
          ws = ws > 0 ? ws : 0;
""" + row_border + r"""
          o[xx] = m;
        }
      }
      float* out = yp + yy * ow;
      const float* r0 = ring + (hs % kh) * ow;
      SN_PRAGMA(omp simd)
      for (long xx = 0; xx < ow; ++xx) out[xx] = r0[xx];
      for (long h = hs + 1; h < he; ++h) {
        const float* rr = ring + (h % kh) * ow;
        SN_PRAGMA(omp simd)
        for (long xx = 0; xx < ow; ++xx) {
          const float v = rr[xx], m = out[xx];
          out[xx] = """ + combine + r""";
        }
      }
""" + finish + r"""
    }
"""


_PLANES = _POOL_COLUMNS + r"""
  SN_FOR_OUTER(plane, n / (oh * ow)) {
    const float* src = x + plane * H * W;
    float* yp = y + plane * oh * ow;
"""


def _max_plane(take):
    return _pool_plane_cpu(r"""
          float m = q[0];
          for (long j = 1; j < kw; ++j) {
            const float v = q[j];
            m = """ + take + r""";
          }""", r"""
          float m = r[ws];
          for (long w = ws + 1; w < we; ++w) {
            const float v = r[w];
            m = """ + take + r""";
          }""", take, "")


# Max pooling's values alone (no argmax: nothing reads it), for the CPU. A plane
# without NaN takes the plain maximum (one vector max per value); one with NaN, the
# first maximum with NaN winning (MAXPOOL's rule).
MAXPOOL_VALUE_CPU = Template("sn_maxpool_value", (("l", "n"), ("c", "x"), ("p", "y")) + _POOL,
                             _PLANES + r"""
    int nan = 0;
    SN_PRAGMA(omp simd reduction(|:nan))
    for (long i = 0; i < H * W; ++i) nan |= src[i] != src[i];
    if (!nan) {""" + _max_plane("v > m ? v : m") + r"""
    } else {""" + _max_plane("(v > m || (v != v && m == m)) ? v : m") + r"""
    }
  }
""")

# Average pooling on the CPU: window sums as above, then the division by the window's
# size clipped to the padded image (AVEPOOL's divisor).
AVEPOOL_CPU = Template("sn_avepool", AVEPOOL.params, _PLANES + _pool_plane_cpu(r"""
          float m = q[0];
          for (long j = 1; j < kw; ++j) m += q[j];""", r"""
          float m = r[ws];
          for (long w = ws + 1; w < we; ++w) m += r[w];""", "m + v", r"""
      const long span = (hs0 + kh < H + ph ? hs0 + kh : H + ph) - hs0;
      SN_PRAGMA(omp simd)
      for (long xx = 0; xx < ow; ++xx) {
        const long ws0 = xx * sw - pw;
        const long we0 = ws0 + kw < W + pw ? ws0 + kw : W + pw;
        out[xx] = out[xx] / (float)(span * (we0 - ws0));
      }""") + "  }\n")


# Average pooling's input gradient on the CPU, per plane: zeroed, then for each output
# row the values g / area spread over the window columns into one image row (a scatter
# of kw values per output), which is added to the window's input rows (vectorised).
# The divisor is AVEPOOL's (the window clipped to the padded image).
AVEPOOL_GRAD_CPU = Template("sn_avepool_grad", AVEPOOL_GRAD.params, r"""
  SN_FOR_OUTER(plane, n / (H * W)) {
    const float* gp = g + plane * oh * ow;
    float* d = dx + plane * H * W;
    float r[W];
    SN_PRAGMA(omp simd)
    for (long i = 0; i < H * W; ++i) d[i] = 0.0f;
    for (long yy = 0; yy < oh; ++yy) {
      const long hs = yy * sh - ph, hp = hs + kh < H + ph ? hs + kh : H + ph;
      const long h0 = hs > 0 ? hs : 0, h1 = hs + kh < H ? hs + kh : H;
      for (long i = 0; i < W; ++i) r[i] = 0.0f;
      for (long xx = 0; xx < ow; ++xx) {
        const long ws = xx * sw - pw, wp = ws + kw < W + pw ? ws + kw : W + pw;
        const float v = gp[yy * ow + xx] / (float)((hp - hs) * (wp - ws));
        const long w0 = ws > 0 ? ws : 0, w1 = ws + kw < W ? ws + kw : W;
        for (long w = w0; w < w1; ++w) r[w] += v;
      }
      for (long h = h0; h < h1; ++h) {
        float* dr = d + h * W;
        SN_PRAGMA(omp simd)
        for (long i = 0; i < W; ++i) dr[i] += r[i];
      }
    }
  }
""")


COL2IM_CPU = Template("sn_col2im", COL2IM.params, r"""
  SN_FOR_OUTER(bc, n / (H * W)) {
    sn_col2im_plane(col + (bc / C) * C * kh * kw * oh * ow, x + bc * H * W, bc % C, H, W, kh,
                    kw, ph, pw, sh, sw, dh, dw, oh, ow);
  }
""")

# Convolutions image by image: each thread im2cols (or col2ims) one image at a time in
# its own slice of scratch, which stays in cache for the GEMM beside it; T threads.
_CONV_CPU = (("l", "NB"), ("l", "G"), ("l", "T")) + _CONV

# A line /*SN_EPILOGUE(r0, r1, j0, j1)*/ in CONV_CPU, GEMM_BLAS, GEMV_CPU and
# CONV_DIRECT_CPU (after each output row) marks where
# the output rows r0..r1 (of the GEMM's row length), columns j0..j1, have just been
# written by the thread: lowering replaces it with a call of an elementwise epilogue
# (kernels.epilogue_function) on that piece, or leaves the comment.

CONV_CPU = Template("sn_conv_images", (("c", "x"), ("c", "w"), ("p", "y"), ("p", "scratch"),
                                       ("l", "O")) + _CONV_CPU, r"""
  const long P = oh * ow, M = O / G, Kd = C / G * kh * kw;
  SN_PRAGMA(omp parallel num_threads(T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* col = scratch + t * C * kh * kw * P;
    for (long b = t * NB / nt; b < (t + 1) * NB / nt; ++b) {
      sn_im2col_image(x + b * C * H * W, col, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow);
      for (long g = 0; g < G; ++g)
        SN_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, P, Kd, 1.0f, w + g * M * Kd, Kd,
                 col + g * Kd * P, P, 0.0f, y + (b * O + g * M) * P, P);
      /*SN_EPILOGUE(b * O, (b + 1) * O, 0, P)*/
    }
  }
""")

# The transposed convolution (a convolution's input gradient): x (NB, Ci, oh, ow) and
# w (Ci, C/G, kh, kw) into y (NB, C, H, W).
CONV_T_CPU = Template("sn_conv_transpose_images", (("c", "x"), ("c", "w"), ("p", "y"),
                                                   ("p", "scratch"), ("l", "Ci"))
                      + _CONV_CPU, r"""
  const long P = oh * ow, Kd = Ci / G, M = C / G * kh * kw;
  SN_PRAGMA(omp parallel num_threads(T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* col = scratch + t * G * M * P;
    for (long b = t * NB / nt; b < (t + 1) * NB / nt; ++b) {
      for (long g = 0; g < G; ++g)
        SN_SGEMM(CblasRowMajor, CblasTrans, CblasNoTrans, M, P, Kd, 1.0f, w + g * Kd * M, M,
                 x + (b * Ci + g * Kd) * P, P, 0.0f, col + g * M * P, P);
      sn_col2im_image(col, y + b * C * H * W, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow);
    }
  }
""")

# The weight gradient gw: per thread, the sum over its images of gy_b col_b^T (beta = 1
# after the first), thread 0 in gw itself and the others in scratch; then the sums add.
CONV_WGRAD_CPU = Template("sn_conv_weight_grad_images", (("c", "x"), ("c", "gy"), ("p", "gw"),
                                                         ("p", "scratch"), ("l", "O"))
                          + _CONV_CPU, r"""
  const long P = oh * ow, M = O / G, Kd = C / G * kh * kw, per = C * kh * kw * P + O * Kd;
  SN_PRAGMA(omp parallel num_threads(T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* col = scratch + t * per;
    float* acc = t == 0 ? gw : col + C * kh * kw * P;
    const long lo = t * NB / nt, hi = (t + 1) * NB / nt;
    for (long b = lo; b < hi; ++b) {
      sn_im2col_image(x + b * C * H * W, col, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow);
      for (long g = 0; g < G; ++g)
        SN_SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, M, Kd, P, 1.0f,
                 gy + (b * O + g * M) * P, P, col + g * Kd * P, P, b == lo ? 0.0f : 1.0f,
                 acc + g * M * Kd, Kd);
    }
    if (lo == hi)
      for (long i = 0; i < O * Kd; ++i) acc[i] = 0.0f;
    SN_PRAGMA(omp barrier)
    SN_PRAGMA(omp for schedule(static))
    for (long i = 0; i < O * Kd; ++i)
      for (long s = 1; s < nt; ++s) gw[i] += scratch[s * per + C * kh * kw * P + i];
  }
""")

# ---------------------------------------------------------------- panel GEMMs
# The CPU's convolutions image by image without BLAS and without im2col columns: a tile
# of 8 rows of the product by 32 output positions (or, for the weight gradient, 32
# channels) is 16 vector accumulators fed per step of the sum by two 16-wide vector
# loads and 8 broadcasts, the loads read straight from a copy of the image with its
# padding made explicit (BLAS's sgemm packs its operands on every call, and im2col
# writes the columns first: together as much time as the product at these sizes). Rows
# of a tile past the product's repeat its last row and are not stored; positions past
# its end are not stored.

# The product of a stride-1 convolution whose output rows are a multiple of 8 wide,
# without columns: the group's input channels are copied once into ``xp`` with the
# padding made explicit (Cg planes of Hq x Wq = (OH + (kh-1) dh) x (OW + (kw-1) dw)),
# and each vector of 16 output positions of a tile (one output row's stretch, or two
# stretches of 8 joined when rows are not a multiple of 16 wide) reads tap r's values
# as the contiguous run at xp + off[r] + its start, off[r] the tap's offset (channel,
# ki dh, kj dw).
def _direct_gemm(xin, Cg, Hin, Win, padh, padw, OH, OW, Mg, A, Yg):
    return r"""
      {
        typedef float sn_v16 __attribute__((vector_size(64), aligned(4), may_alias));
        const long Hq = """ + OH + r""" + (kh - 1) * dh, Wq = """ + OW + r""" + (kw - 1) * dw;
        const long PP = """ + OH + " * " + OW + r""";
        for (long c = 0; c < """ + Cg + r"""; ++c) {
          const float* sp = """ + xin + r""" + c * """ + Hin + " * " + Win + r""";
          float* dp = xp + c * Hq * Wq;
          for (long hq = 0; hq < Hq; ++hq) {
            const long h = hq - """ + padh + r""";
            float* dr = dp + hq * Wq;
            if (h < 0 || h >= """ + Hin + r""") {
              for (long i = 0; i < Wq; ++i) dr[i] = 0.0f;
              continue;
            }
            SN_PRAGMA(omp simd)
            for (long i = 0; i < Wq; ++i) {
              const long w_ = i - """ + padw + r""";
              dr[i] = w_ >= 0 && w_ < """ + Win + r""" ? sp[h * """ + Win + r""" + w_] : 0.0f;
            }
          }
        }
        for (long r = 0; r < Kg; ++r)
          off[r] = (r / (kh * kw)) * Hq * Wq + ((r / kw) % kh) * dh * Wq + (r % kw) * dw;
        typedef float sn_v8h __attribute__((vector_size(32), aligned(4), may_alias));
        for (long p0 = 0; p0 < PP; p0 += 32) {
          const long nv = PP - p0 < 32 ? PP - p0 : 32;
          const float* s[4];
          for (int e = 0; e < 4; ++e) {
            const long pe = p0 + 8 * e < PP ? p0 + 8 * e : p0;
            s[e] = xp + (pe / """ + OW + r""") * Wq + pe % """ + OW + r""";
          }
          const float *s0 = s[0], *s1 = s[2];
          for (long m0 = 0; m0 < """ + Mg + r"""; m0 += 8) {
            const float* ar[8];
            sn_v16 c0[8], c1[8];
            for (int m = 0; m < 8; ++m) {
              ar[m] = """ + A + r""" + (m0 + m < """ + Mg + r""" ? m0 + m : """ + Mg + r""" - 1) *
                      Kg;
              c0[m] = (sn_v16){0};
              c1[m] = (sn_v16){0};
            }
            for (long k = 0; k < Kg; ++k) {
              const long o = off[k];
              sn_v16 b0, b1;
              if (""" + OW + r""" % 16 == 0) {
                b0 = *(const sn_v16*)(s0 + o);
                b1 = *(const sn_v16*)(s1 + o);
              } else {
                const sn_v8h l0 = *(const sn_v8h*)(s[0] + o), l1 = *(const sn_v8h*)(s[1] + o);
                const sn_v8h l2 = *(const sn_v8h*)(s[2] + o), l3 = *(const sn_v8h*)(s[3] + o);
                b0 = __builtin_shufflevector(l0, l1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                             13, 14, 15);
                b1 = __builtin_shufflevector(l2, l3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                             13, 14, 15);
              }
              SN_PRAGMA(GCC unroll 8)
              for (int m = 0; m < 8; ++m) {
                const float a = ar[m][k];
                c0[m] += a * b0;
                c1[m] += a * b1;
              }
            }
            for (int m = 0; m < 8 && m0 + m < """ + Mg + r"""; ++m) {
              float* cr = """ + Yg + r""" + (m0 + m) * PP + p0;
              if (nv == 32) {
                *(sn_v16*)cr = c0[m];
                *(sn_v16*)(cr + 16) = c1[m];
              } else {
                float tt[32];
                *(sn_v16*)tt = c0[m];
                *(sn_v16*)(tt + 16) = c1[m];
                for (long l = 0; l < nv; ++l) cr[l] = tt[l];
              }
            }
          }
        }
      }
"""


# The convolution image by image (CONV_CPU's work split) at stride 1 with output rows a
# multiple of 8 wide: each thread copies one image's group of channels at a time into
# its slice of scratch (C/G padded planes) and multiplies the group's weights by it.
CONV_PANEL_CPU = Template("sn_conv_panels", CONV_CPU.params, r"""
  const long P = oh * ow, M = O / G, Kg = C / G * kh * kw;
  SN_PRAGMA(omp parallel num_threads(T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* xp = scratch + t * (C / G) * (oh + (kh - 1) * dh) * (ow + (kw - 1) * dw);
    long off[Kg];
    for (long b = t * NB / nt; b < (t + 1) * NB / nt; ++b) {
      for (long g = 0; g < G; ++g)
""" + _direct_gemm("x + (b * C + g * (C / G)) * H * W", "C / G", "H", "W", "ph", "pw", "oh", "ow",
                   "M", "w + g * M * Kg", "y + (b * O + g * M) * P") + r"""
      /*SN_EPILOGUE(b * O, (b + 1) * O, 0, P)*/
    }
  }
""")

# The transposed convolution at stride 1 (a convolution's input gradient), with rows of
# its output a multiple of 8 wide, as a convolution of x (NB, Ci, oh, ow) with the kernel
# flipped and its two channel axes swapped, padded by the dilated kernel's reach less
# the padding (at least 0): out (NB, C, H, W). The flipped weights (C x Ci/G*kh*kw) are
# formed once in the first C * Ci/G * kh * kw values of scratch; each thread's slice of
# Ci/G padded planes follows.
CONV_T_PANEL_CPU = Template("sn_conv_transpose_panels", CONV_T_CPU.params, r"""
  const long P = H * W, Og = C / G, Kd = Ci / G, Kg = Kd * kh * kw;
  const long qh = (kh - 1) * dh - ph, qw = (kw - 1) * dw - pw;
  float* wf = scratch;
  SN_PRAGMA(omp parallel num_threads(T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    SN_PRAGMA(omp for schedule(static))
    for (long co = 0; co < C; ++co)
      for (long r = 0; r < Kg; ++r) {
        const long k = r / (kh * kw), ki = (r / kw) % kh, kj = r % kw;
        wf[co * Kg + r] = w[(((co / Og) * Kd + k) * Og + co % Og) * kh * kw +
                            (kh - 1 - ki) * kw + (kw - 1 - kj)];
      }
    float* xp = scratch + C * Kg + t * Kd * (H + (kh - 1) * dh) * (W + (kw - 1) * dw);
    long off[Kg];
    for (long b = t * NB / nt; b < (t + 1) * NB / nt; ++b)
      for (long g = 0; g < G; ++g)
""" + _direct_gemm("x + (b * Ci + g * Kd) * oh * ow", "Kd", "oh", "ow", "qh", "qw", "H", "W",
                   "Og", "wf + g * Og * Kg", "y + (b * C + g * Og) * P") + r"""
  }
""")

# The weight gradient as its transpose, gw_g^T (Kg x M) = sum over images of
# col_g (Kg x P) gy_g^T (P x M), without columns: each image is copied once with its
# padding made explicit (C planes of Hq x Wq, the extent its windows reach), so col's
# entry (tap r, output position (yy, xx)) is xp[off[r] + yy sh Wq + xx sw] with off[r]
# the tap's offset (channel, ki dh, kj dw), read as A by tiles of 8 taps by 32 channels; the
# output gradient's M rows are packed as panels of its transpose (P rows of 32
# channels). Each thread sums its images into its own (Kg x M per group) slice of
# scratch; the slices are then added and transposed into gw.
CONV_WGRAD_PANEL_CPU = Template("sn_conv_weight_grad_panels", CONV_WGRAD_CPU.params, r"""
  typedef float sn_v16 __attribute__((vector_size(64), aligned(4), may_alias));
  const long P = oh * ow, M = O / G, Cg = C / G, Kg = Cg * kh * kw, NM = (M + 31) / 32;
  const long Hq = (oh - 1) * sh + (kh - 1) * dh + 1, Wq = (ow - 1) * sw + (kw - 1) * dw + 1;
  const long per = C * Hq * Wq + NM * 32 * P + O * Kg;
  SN_PRAGMA(omp parallel num_threads(T))
  {
    const long t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* xp = scratch + t * per;
    float* pk = xp + C * Hq * Wq;
    float* acc = pk + NM * 32 * P;
    long off[Kg];
    for (long r = 0; r < Kg; ++r)
      off[r] = (r / (kh * kw)) * Hq * Wq + ((r / kw) % kh) * dh * Wq + (r % kw) * dw;
    const long lo = t * NB / nt, hi = (t + 1) * NB / nt;
    for (long i = 0; i < O * Kg; ++i) acc[i] = 0.0f;
    for (long b = lo; b < hi; ++b) {
      for (long c = 0; c < C; ++c) {
        const float* sp = x + (b * C + c) * H * W;
        float* dp = xp + c * Hq * Wq;
        for (long hq = 0; hq < Hq; ++hq) {
          const long h = hq - ph;
          float* dr = dp + hq * Wq;
          if (h < 0 || h >= H) {
            for (long i = 0; i < Wq; ++i) dr[i] = 0.0f;
            continue;
          }
          SN_PRAGMA(omp simd)
          for (long i = 0; i < Wq; ++i) {
            const long w_ = i - pw;
            dr[i] = w_ >= 0 && w_ < W ? sp[h * W + w_] : 0.0f;
          }
        }
      }
      for (long g = 0; g < G; ++g) {
        const float* gyg = gy + (b * O + g * M) * P;
        for (long pj = 0; pj < NM; ++pj)
          for (long q = 0; q < P; ++q) {
            float* d = pk + (pj * P + q) * 32;
            for (long l = 0; l < 32; ++l)
              d[l] = pj * 32 + l < M ? gyg[(pj * 32 + l) * P + q] : 0.0f;
          }
        const float* xg = xp + g * Cg * Hq * Wq;
        float* ag = acc + g * Kg * M;
        for (long pj = 0; pj < NM; ++pj) {
          const float* bp = pk + pj * P * 32;
          const long n0 = pj * 32, nv = M - n0 < 32 ? M - n0 : 32;
          for (long m0 = 0; m0 < Kg; m0 += 8) {
            const float* ar[8];
            sn_v16 c0[8], c1[8];
            for (int m = 0; m < 8; ++m) {
              ar[m] = xg + off[m0 + m < Kg ? m0 + m : Kg - 1];
              c0[m] = (sn_v16){0};
              c1[m] = (sn_v16){0};
            }
            for (long yy = 0; yy < oh; ++yy) {
              const float* bq = bp + yy * ow * 32;
              const long ro = yy * sh * Wq;
              for (long xx = 0; xx < ow; ++xx) {
                const sn_v16 b0 = *(const sn_v16*)(bq + xx * 32);
                const sn_v16 b1 = *(const sn_v16*)(bq + xx * 32 + 16);
                SN_PRAGMA(GCC unroll 8)
                for (int m = 0; m < 8; ++m) {
                  const float a = ar[m][ro + xx * sw];
                  c0[m] += a * b0;
                  c1[m] += a * b1;
                }
              }
            }
            for (int m = 0; m < 8 && m0 + m < Kg; ++m) {
              float* cr = ag + (m0 + m) * M + n0;
              if (nv == 32) {
                *(sn_v16*)cr += c0[m];
                *(sn_v16*)(cr + 16) += c1[m];
              } else {
                float tt[32];
                *(sn_v16*)tt = c0[m];
                *(sn_v16*)(tt + 16) = c1[m];
                for (long l = 0; l < nv; ++l) cr[l] += tt[l];
              }
            }
          }
        }
      }
    }
    SN_PRAGMA(omp barrier)
    SN_PRAGMA(omp for schedule(static))
    for (long i = 0; i < O * Kg; ++i) {
      const long g = i / (M * Kg), o = (i / Kg) % M, r = i % Kg;
      float s = 0.0f;
      for (long u = 0; u < nt; ++u) s += scratch[u * per + C * Hq * Wq + NM * 32 * P +
                                                 (g * Kg + r) * M + o];
      gw[i] = s;
    }
  }
""")

# ---------------------------------------------------------------- direct convolutions
# Grouped convolutions with few channels per group (depthwise: one) computed directly,
# without columns or a GEMM per group of a few channels. Forward: x (NB, C, H, W) and
# w (O, C/G, kh, kw) into y (NB, O, oh, ow). The transposed convolution (the input
# gradient): x (NB, Ci, oh, ow) and w (Ci, C/G, kh, kw) into out (NB, C, H, W). The
# weight gradient: x (NB, C, H, W) and gy (NB, O, oh, ow) into gw (O, C/G, kh, kw).
# On CUDA one thread per output element (a warp reads neighbouring columns), and for
# the weight gradient one block per weight summing over the batch and the plane.

CONV_DIRECT = Template("sn_conv_direct", (("l", "n"), ("c", "x"), ("c", "w"), ("p", "y"),
                                          ("l", "O"), ("l", "G")) + _CONV, r"""
  SN_FOR(i, n) {
    const long xx = i % ow, yy = (i / ow) % oh, o = (i / (ow * oh)) % O, b = i / (ow * oh * O);
    const long Cg = C / G;
    const float* src = x + (b * C + o / (O / G) * Cg) * H * W;
    const float* wo = w + o * Cg * kh * kw;
    const long h0 = yy * sh - ph, w0 = xx * sw - pw;
    float acc = 0.0f;
    for (long c = 0; c < Cg; ++c)
      for (long ki = 0; ki < kh; ++ki) {
        const long h = h0 + ki * dh;
        if (h < 0 || h >= H) continue;
        for (long kj = 0; kj < kw; ++kj) {
          const long ws = w0 + kj * dw;
          if (ws >= 0 && ws < W) acc += wo[(c * kh + ki) * kw + kj] * src[(c * H + h) * W + ws];
        }
      }
    y[i] = acc;
  }
""")

CONV_T_DIRECT = Template("sn_conv_transpose_direct", (("l", "n"), ("c", "x"), ("c", "w"),
                                                      ("p", "out"), ("l", "Ci"), ("l", "G"))
                         + _CONV, r"""
  SN_FOR(i, n) {
    const long ws = i % W, hs = (i / W) % H, co = (i / (W * H)) % C, b = i / (W * H * C);
    const long Og = C / G, Kd = Ci / G, o0 = co / Og * Kd, c = co % Og;
    float acc = 0.0f;
    for (long k = 0; k < Kd; ++k) {
      const float* src = x + (b * Ci + o0 + k) * oh * ow;
      const float* wk = w + ((o0 + k) * Og + c) * kh * kw;
      for (long ki = 0; ki < kh; ++ki) {
        const long ty = hs + ph - ki * dh;
        if (ty < 0 || ty % sh) continue;
        const long yy = ty / sh;
        if (yy >= oh) continue;
        for (long kj = 0; kj < kw; ++kj) {
          const long tx = ws + pw - kj * dw;
          if (tx < 0 || tx % sw) continue;
          const long xx = tx / sw;
          if (xx < ow) acc += wk[ki * kw + kj] * src[yy * ow + xx];
        }
      }
    }
    out[i] = acc;
  }
""")

CONV_WGRAD_DIRECT = Template("sn_conv_weight_grad_direct", (("l", "n"), ("c", "x"), ("c", "gy"),
                                                            ("p", "gw"), ("l", "O"), ("l", "G"),
                                                            ("l", "NB")) + _CONV, r"""
  SN_ROWS(r, n) {
    const long kj = r % kw, ki = (r / kw) % kh, c = (r / (kw * kh)) % (C / G);
    const long o = r / (kw * kh * (C / G));
    const float* src = x + (o / (O / G) * (C / G) + c) * H * W;
    const float* g = gy + o * oh * ow;
    float acc = 0.0f;
    SN_ROW_LOOP(q, NB * oh * ow) {
      const long xx = q % ow, yy = (q / ow) % oh, b = q / (ow * oh);
      const long h = yy * sh - ph + ki * dh, ws = xx * sw - pw + kj * dw;
      if (h >= 0 && h < H && ws >= 0 && ws < W)
        acc += g[b * O * oh * ow + yy * ow + xx] * src[b * C * H * W + h * W + ws];
    }
    acc = sn_block_sum(acc);
    if (SN_ROW_LEADER) gw[r] = acc;
  }
""", block=256)

# The CPU's: a thread per output plane (image, channel) and the plane row by row. For a
# row, the taps' source rows (a row of zeros where a tap falls in the padding) and the
# weights are gathered first; the columns whose windows lie inside the image are one
# branch-free loop over the row, which the compiler vectorises (contiguous loads at
# stride 1), the few clipped columns at the edges a scalar loop.
_DIRECT_COLUMNS = r"""
  /* output columns whose window lies inside the image in width: [xlo, xmid) */
  const long xlo = (pw + sw - 1) / sw < ow ? (pw + sw - 1) / sw : ow;
  const long xe = W + pw - (kw - 1) * dw;
  const long xfit = xe <= 0 ? 0 : ((xe + sw - 1) / sw < ow ? (xe + sw - 1) / sw : ow);
  const long xmid = xfit > xlo ? xfit : xlo;
"""

CONV_DIRECT_CPU = Template("sn_conv_direct", CONV_DIRECT.params, _DIRECT_COLUMNS + r"""
  SN_FOR_OUTER(plane, n / (oh * ow)) {
    const long Cg = C / G, o = plane % O, b = plane / O;
    const float* xg = x + (b * C + o / (O / G) * Cg) * H * W;
    const float* wo = w + o * Cg * kh * kw;
    float* yp = y + plane * oh * ow;
    float zero[W];
    for (long i = 0; i < W; ++i) zero[i] = 0.0f;
    for (long yy = 0; yy < oh; ++yy) {
      float* yr = yp + yy * ow;
      for (long c = 0; c < Cg; ++c) {     /* the first channel stores, the others add */
        const float* rows[kh];
        float wk[kh * kw];
        for (long ki = 0; ki < kh; ++ki) {
          const long h = yy * sh - ph + ki * dh;
          rows[ki] = h >= 0 && h < H ? xg + (c * H + h) * W : zero;
          for (long kj = 0; kj < kw; ++kj) wk[ki * kw + kj] = wo[(c * kh + ki) * kw + kj];
        }
        SN_PRAGMA(omp simd)
        for (long xx = xlo; xx < xmid; ++xx) {
          float acc = c ? yr[xx] : 0.0f;
          for (long ki = 0; ki < kh; ++ki)
            for (long kj = 0; kj < kw; ++kj)
              acc += wk[ki * kw + kj] * rows[ki][xx * sw - pw + kj * dw];
          yr[xx] = acc;
        }
        for (long e = 0; e < 2; ++e)
          for (long xx = e ? xmid : 0; xx < (e ? ow : xlo); ++xx) {
            float acc = c ? yr[xx] : 0.0f;
            for (long ki = 0; ki < kh; ++ki)
              for (long kj = 0; kj < kw; ++kj) {
                const long ws = xx * sw - pw + kj * dw;
                if (ws >= 0 && ws < W) acc += wk[ki * kw + kj] * rows[ki][ws];
              }
            yr[xx] = acc;
          }
      }
      /*SN_EPILOGUE(plane, plane + 1, yy * ow, (yy + 1) * ow)*/
    }
  }
""")

# The transposed convolution at stride 1 is a convolution with the kernel flipped, read
# as CONV_DIRECT_CPU reads its input (when the padding is at most the dilated kernel's
# reach, as usual); at other strides each output row is zeroed, then every (input
# channel, tap) adds its weight times an input row at the columns it reaches.
CONV_T_DIRECT_CPU = Template("sn_conv_transpose_direct", CONV_T_DIRECT.params, r"""
  const long Og = C / G, Kd = Ci / G;
  if (sh == 1 && sw == 1 && ph <= (kh - 1) * dh && pw <= (kw - 1) * dw) {
    /* out[hs][ws] += x[hs + ph - ki dh][ws + pw - kj dw] w[ki][kj]: output columns whose
       taps all read inside the input row: [wlo, wmid) */
    const long wlo = (kw - 1) * dw - pw < W ? (kw - 1) * dw - pw : W;
    const long wfit = ow - pw < W ? ow - pw : W;
    const long wmid = wfit > wlo ? wfit : wlo;
    SN_FOR_OUTER(plane, n / (H * W)) {
      const long co = plane % C, b = plane / C, o0 = co / Og * Kd, c = co % Og;
      float* yp = out + plane * H * W;
      float zero[ow];
      for (long i = 0; i < ow; ++i) zero[i] = 0.0f;
      for (long hs = 0; hs < H; ++hs) {
        float* yr = yp + hs * W;
        for (long i = 0; i < W; ++i) yr[i] = 0.0f;
        for (long k = 0; k < Kd; ++k) {
          const float* src = x + (b * Ci + o0 + k) * oh * ow;
          const float* wo = w + ((o0 + k) * Og + c) * kh * kw;
          const float* rows[kh];
          float wk[kh * kw];
          for (long ki = 0; ki < kh; ++ki) {
            const long ty = hs + ph - ki * dh;
            rows[ki] = ty >= 0 && ty < oh ? src + ty * ow : zero;
            for (long kj = 0; kj < kw; ++kj) wk[ki * kw + kj] = wo[ki * kw + kj];
          }
          SN_PRAGMA(omp simd)
          for (long ws = wlo; ws < wmid; ++ws) {
            float acc = yr[ws];
            for (long ki = 0; ki < kh; ++ki)
              for (long kj = 0; kj < kw; ++kj)
                acc += wk[ki * kw + kj] * rows[ki][ws + pw - kj * dw];
            yr[ws] = acc;
          }
          for (long e = 0; e < 2; ++e)
            for (long ws = e ? wmid : 0; ws < (e ? W : wlo); ++ws) {
              float acc = yr[ws];
              for (long ki = 0; ki < kh; ++ki)
                for (long kj = 0; kj < kw; ++kj) {
                  const long xx = ws + pw - kj * dw;
                  if (xx >= 0 && xx < ow) acc += wk[ki * kw + kj] * rows[ki][xx];
                }
              yr[ws] = acc;
            }
        }
      }
    }
  } else {
    long x0[kw], x1[kw];
    for (long kj = 0; kj < kw; ++kj) {   /* input columns whose tap kj lands in the image */
      const long rx = pw - kj * dw;
      const long xe = W - 1 + rx < 0 ? 0 : (W - 1 + rx) / sw + 1;
      x0[kj] = rx > 0 ? (rx + sw - 1) / sw : 0;
      x1[kj] = xe < ow ? xe : ow;
    }
    SN_FOR_OUTER(plane, n / (H * W)) {
      const long co = plane % C, b = plane / C, o0 = co / Og * Kd, c = co % Og;
      float* yp = out + plane * H * W;
      for (long hs = 0; hs < H; ++hs) {
        float* yr = yp + hs * W;
        for (long i = 0; i < W; ++i) yr[i] = 0.0f;
        for (long k = 0; k < Kd; ++k) {
          const float* src = x + (b * Ci + o0 + k) * oh * ow;
          const float* wk = w + ((o0 + k) * Og + c) * kh * kw;
          for (long ki = 0; ki < kh; ++ki) {
            const long ty = hs + ph - ki * dh;
            if (ty < 0 || ty % sh || ty / sh >= oh) continue;
            const float* sr = src + ty / sh * ow;
            for (long kj = 0; kj < kw; ++kj) {
              const float wv = wk[ki * kw + kj];
              float* dst = yr + kj * dw - pw;
              SN_PRAGMA(omp simd)
              for (long xx = x0[kj]; xx < x1[kj]; ++xx) dst[xx * sw] += wv * sr[xx];
            }
          }
        }
      }
    }
  }
""")

# A thread per (output, input channel of its group). Each output row adds, for every
# tap, the products of the output gradient and the tap's input row into a row of
# partial sums per tap (vectorised over the row, no reduction inside the loop), summed
# along the row at the end; when those rows would not fit in a thread's stack comfortably,
# each tap's products are summed row by row instead.
CONV_WGRAD_DIRECT_CPU = Template("sn_conv_weight_grad_direct", CONV_WGRAD_DIRECT.params,
                                 _DIRECT_COLUMNS + r"""
  const long Cg = C / G;
  if (kh * kw * ow <= 16384) {
    SN_FOR_OUTER(oc, n / (kh * kw)) {
      const long o = oc / Cg, c = oc % Cg;
      const float* xc = x + (o / (O / G) * Cg + c) * H * W;
      float part[kh * kw * ow], zero[W];
      for (long i = 0; i < kh * kw * ow; ++i) part[i] = 0.0f;
      for (long i = 0; i < W; ++i) zero[i] = 0.0f;
      for (long b = 0; b < NB; ++b)
        for (long yy = 0; yy < oh; ++yy) {
          const float* gr = gy + ((b * O + o) * oh + yy) * ow;
          const float* rows[kh];
          for (long ki = 0; ki < kh; ++ki) {
            const long h = yy * sh - ph + ki * dh;
            rows[ki] = h >= 0 && h < H ? xc + (b * C * H + h) * W : zero;
          }
          SN_PRAGMA(omp simd)
          for (long xx = xlo; xx < xmid; ++xx) {
            const float gv = gr[xx];
            for (long ki = 0; ki < kh; ++ki)
              for (long kj = 0; kj < kw; ++kj)
                part[(ki * kw + kj) * ow + xx] += gv * rows[ki][xx * sw - pw + kj * dw];
          }
          for (long e = 0; e < 2; ++e)
            for (long xx = e ? xmid : 0; xx < (e ? ow : xlo); ++xx)
              for (long ki = 0; ki < kh; ++ki)
                for (long kj = 0; kj < kw; ++kj) {
                  const long ws = xx * sw - pw + kj * dw;
                  if (ws >= 0 && ws < W) part[(ki * kw + kj) * ow + xx] += gr[xx] * rows[ki][ws];
                }
        }
      for (long t = 0; t < kh * kw; ++t) {
        float s = 0.0f;
        for (long xx = 0; xx < ow; ++xx) s += part[t * ow + xx];
        gw[oc * kh * kw + t] = s;
      }
    }
  } else {
    long x0[kw], x1[kw];
    for (long kj = 0; kj < kw; ++kj) {   /* output columns whose tap kj lies in the image */
      const long rx = pw - kj * dw;
      const long xe = W - 1 + rx < 0 ? 0 : (W - 1 + rx) / sw + 1;
      x0[kj] = rx > 0 ? (rx + sw - 1) / sw : 0;
      x1[kj] = xe < ow ? xe : ow;
    }
    SN_FOR_OUTER(oc, n / (kh * kw)) {
      const long o = oc / Cg, c = oc % Cg;
      const float* xc = x + (o / (O / G) * Cg + c) * H * W;
      float acc[kh * kw];
      for (long t = 0; t < kh * kw; ++t) acc[t] = 0.0f;
      for (long b = 0; b < NB; ++b)
        for (long yy = 0; yy < oh; ++yy) {
          const float* gr = gy + ((b * O + o) * oh + yy) * ow;
          for (long ki = 0; ki < kh; ++ki) {
            const long h = yy * sh - ph + ki * dh;
            if (h < 0 || h >= H) continue;
            const float* xr = xc + (b * C * H + h) * W;
            for (long kj = 0; kj < kw; ++kj) {
              const float* xs = xr + kj * dw - pw;
              float s = 0.0f;
              SN_PRAGMA(omp simd reduction(+:s))
              for (long xx = x0[kj]; xx < x1[kj]; ++xx) s += gr[xx] * xs[xx * sw];
              acc[ki * kw + kj] += s;
            }
          }
        }
      for (long t = 0; t < kh * kw; ++t) gw[oc * kh * kw + t] = acc[t];
    }
  }
""")

CPU_VARIANTS = {t.name: t for t in (MAXPOOL_CPU, AVEPOOL_CPU, AVEPOOL_GRAD_CPU,
                                    WINDOW_SUM_CPU,
                                    MAXPOOL_GRAD_CPU, MAXPOOL_GRAD_DISJOINT_CPU, COL2IM_CPU,
                                    CONV_DIRECT_CPU, CONV_T_DIRECT_CPU,
                                    CONV_WGRAD_DIRECT_CPU)}

ALL = {t.name: t for t in (IM2COL, COL2IM, MAXPOOL, AVEPOOL, MAXPOOL_GRAD,
                           MAXPOOL_GRAD_DISJOINT,
                           AVEPOOL_GRAD, MAXPOOL_SELECT, WINDOW_SUM, GATHER, GATHER_GRAD,
                           ARGTOPK, RANDOM_UNIFORM, GEMM_BLAS, GEMM_BLAS_SUM,
                           IM2COL_COLS, COL2IM_COLS, BATCH_TO_COLS, CONV_DIRECT,
                           CONV_T_DIRECT, CONV_WGRAD_DIRECT)}

# STOCHASTIC pooling's draw (Caffe's GPU kernel StoPoolForwardTrain) over unpadded
# windows inside the plane: t = (1 - u) * sum(window) (1 - u in (0, 1], as Caffe's
# uniforms), then the first element in row-major window order at which the running sum
# reaches t; idx gets its flat h * W + w (the window's first element when none does,
# which needs a window summing below 0). Both sums run in window order, as Caffe's.
STOCHASTIC_POOL_SAMPLE = Template("sn_stochastic_pool_sample", (
    ("l", "n"), ("c", "x"), ("c", "u"), ("p", "idx"), ("l", "H"), ("l", "W"), ("l", "oh"),
    ("l", "ow"), ("l", "kh"), ("l", "kw"), ("l", "sh"), ("l", "sw")), r"""
  SN_FOR(i, n) {
    const long xx = i % ow, yy = (i / ow) % oh, plane = i / (ow * oh);
    const long hs = yy * sh, ws = xx * sw;
    const float* src = x + plane * H * W + hs * W + ws;
    float total = 0.0f;
    for (long a = 0; a < kh; ++a)
      for (long b = 0; b < kw; ++b) total += src[a * W + b];
    const float thres = (1.0f - u[i]) * total;
    float run = 0.0f;
    long arg = hs * W + ws;
    int found = 0;
    for (long a = 0; a < kh; ++a)
      for (long b = 0; b < kw; ++b) {
        run += src[a * W + b];
        const int take = !found && run >= thres;
        arg = take ? (hs + a) * W + ws + b : arg;
        found = found || take;
      }
    idx[i] = (float)arg;
  }
""")

ALL[STOCHASTIC_POOL_SAMPLE.name] = STOCHASTIC_POOL_SAMPLE
