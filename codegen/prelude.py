"""The preludes that let one kernel text serve CUDA and the CPU.

Kernels use only: ``SN_KERNEL`` (the kernel qualifier), ``SN_FOR(i, n)`` (a grid-
stride loop on CUDA, an OpenMP ``parallel for simd`` loop on the CPU),
``SN_FOR_OUTER(i, n)`` (the same over work items that each run inner loops, which the
CPU vectorises instead of the outer loop), ``SN_FOR2(o, no, j, nj)`` (a space split
into rows and a contiguous inner run: parallel rows and a vector inner loop on the CPU,
one flat grid-stride loop on CUDA), the row
macros of reductions (``SN_ROWS``, ``SN_ROW_LOOP``, ``SN_ROW_LOOP2`` (a reduced space
split as SN_FOR2 splits), ``SN_ROW_LEADER``, and
``sn_block_sum/max/min``, a shared-memory block reduction on CUDA and the identity on
the CPU, where one thread owns a whole row), ``SN_ATOMIC_ADD`` and the scalar helpers
named in ``cprinter.C_FUNCTIONS``.
"""

# Helpers shared by both preludes, written in the common subset of C and CUDA C++.
_HELPERS = r"""
SN_DEVICE float sn_max(float a, float b) { return (a > b || a != a) ? a : b; }
SN_DEVICE float sn_min(float a, float b) { return (a < b || a != a) ? a : b; }
SN_DEVICE float sn_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }
SN_DEVICE float sn_heaviside(float x, float h) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? 0.0f : (x == 0.0f ? h : x));
}
SN_DEVICE float sn_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
SN_DEVICE float sn_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
SN_DEVICE float sn_rsqrt(float x) { return 1.0f / sqrtf(x); }
/* One row (c, ki, kj) of im2col for one image: the plane's pixels under kernel tap
   (ki, kj) for each output position, zero where the tap falls in the padding. */
SN_DEVICE void sn_im2col_row(const float* src, float* dst, long ki, long kj, long H, long W,
                             long ph, long pw, long sh, long sw, long dh, long dw, long oh,
                             long ow) {
  for (long y = 0; y < oh; ++y) {
    const long h = y * sh - ph + ki * dh;
    if (h < 0 || h >= H) {
      for (long xx = 0; xx < ow; ++xx) dst[y * ow + xx] = 0.0f;
      continue;
    }
    for (long xx = 0; xx < ow; ++xx) {
      const long w = xx * sw - pw + kj * dw;
      dst[y * ow + xx] = (w >= 0 && w < W) ? src[h * W + w] : 0.0f;
    }
  }
}
/* Philox4x32-10 word 0 for counter (c0, c1, c2, 0) and key (k0, k1), as 24-bit
   uniform in [0, 1): the same numbers on every backend and in the reference. */
SN_DEVICE float sn_philox_uniform(uint32_t c0, uint32_t c1, uint32_t c2,
                                  uint32_t k0, uint32_t k1) {
  uint32_t c3 = 0;
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  return (float)(c0 >> 8) * (1.0f / 16777216.0f);
}
"""

C_PRELUDE = r"""/* symnet CPU prelude: kernels as OpenMP loops; GEMMs call CBLAS's sgemm, named by
   SN_SGEMM (the build defines it for the BLAS it links) */
#include <math.h>
#include <stdint.h>
#include <omp.h>
#include <cblas.h>
#ifndef SN_SGEMM
#define SN_SGEMM cblas_sgemm
#endif
#define SN_KERNEL void
#define SN_DEVICE static inline
#define SN_PRAGMA(x) _Pragma(#x)
#define SN_FOR(i, n) SN_PRAGMA(omp parallel for simd schedule(static)) \
  for (long i = 0; i < (n); ++i)
#define SN_ROWS(o, n) SN_PRAGMA(omp parallel for schedule(static) if((n) > 1)) \
  for (long o = 0; o < (n); ++o)
#define SN_FOR_OUTER(i, n) SN_PRAGMA(omp parallel for schedule(static) if((n) > 1)) \
  for (long i = 0; i < (n); ++i)
#define SN_FOR2(o, no, j, nj) SN_PRAGMA(omp parallel for schedule(static) if((no) > 1)) \
  for (long o = 0; o < (no); ++o) SN_PRAGMA(omp simd) for (long j = 0; j < (nj); ++j)
#define SN_ROW_LOOP(r, n) for (long r = 0; r < (n); ++r)
#define SN_ROW_LOOP_SUM(r, n, acc) SN_PRAGMA(omp simd reduction(+:acc)) \
  for (long r = 0; r < (n); ++r)
#define SN_ROW_LOOP2(r, nr, q, nq) for (long r = 0; r < (nr); ++r) \
  for (long q = 0; q < (nq); ++q)
#define SN_ROW_LOOP2_SUM(r, nr, q, nq, acc) for (long r = 0; r < (nr); ++r) \
  SN_PRAGMA(omp simd reduction(+:acc)) for (long q = 0; q < (nq); ++q)
#define SN_ROW_LEADER 1
#define SN_ATOMIC_ADD(p, v) do { float *sn_p_ = (p); float sn_v_ = (v); \
  SN_PRAGMA(omp atomic) *sn_p_ += sn_v_; } while (0)
SN_DEVICE float sn_block_sum(float v) { return v; }
SN_DEVICE float sn_block_max(float v) { return v; }
SN_DEVICE float sn_block_min(float v) { return v; }
""" + _HELPERS + r"""
/* One image's im2col, (C*kh*kw, oh*ow). */
SN_DEVICE void sn_im2col_image(const float* x, float* col, long C, long H, long W, long kh,
                               long kw, long ph, long pw, long sh, long sw, long dh, long dw,
                               long oh, long ow) {
  for (long row = 0; row < C * kh * kw; ++row)
    sn_im2col_row(x + (row / (kh * kw)) * H * W, col + row * oh * ow, (row / kw) % kh,
                  row % kw, H, W, ph, pw, sh, sw, dh, dw, oh, ow);
}
/* Channel c of one image's col2im, (C*kh*kw, oh*ow) into the (H, W) plane: zeroed,
   then every kernel tap's columns are added at the pixels they were read from, taps in
   (ki, kj) order (so each pixel sums its taps in that order). */
SN_DEVICE void sn_col2im_plane(const float* col, float* plane, long c, long H, long W,
                               long kh, long kw, long ph, long pw, long sh, long sw, long dh,
                               long dw, long oh, long ow) {
  for (long i = 0; i < H * W; ++i) plane[i] = 0.0f;
  for (long ki = 0; ki < kh; ++ki)
    for (long kj = 0; kj < kw; ++kj) {
      const float* src = col + ((c * kh + ki) * kw + kj) * oh * ow;
      /* outputs whose tap lands inside the image: y in [y0, y1), xx in [x0, x1) */
      const long ry = ph - ki * dh, rx = pw - kj * dw;
      const long y0 = ry > 0 ? (ry + sh - 1) / sh : 0, x0 = rx > 0 ? (rx + sw - 1) / sw : 0;
      const long ye = H - 1 + ry < 0 ? 0 : (H - 1 + ry) / sh + 1;
      const long xe = W - 1 + rx < 0 ? 0 : (W - 1 + rx) / sw + 1;
      const long y1 = ye < oh ? ye : oh, x1 = xe < ow ? xe : ow;
      for (long y = y0; y < y1; ++y) {
        float* dst = plane + (y * sh - ry) * W - rx;
        SN_PRAGMA(omp simd)
        for (long xx = x0; xx < x1; ++xx) dst[xx * sw] += src[y * ow + xx];
      }
    }
}
SN_DEVICE void sn_col2im_image(const float* col, float* x, long C, long H, long W, long kh,
                               long kw, long ph, long pw, long sh, long sw, long dh, long dw,
                               long oh, long ow) {
  for (long c = 0; c < C; ++c)
    sn_col2im_plane(col, x + c * H * W, c, H, W, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow);
}
"""

CUDA_BLOCK = 128          # threads per block for every launch (a power of two)
CUDA_MAX_GRID = 1024      # grid-stride loops cover the rest

CUDA_PRELUDE = r"""/* symnet CUDA prelude: grid-stride loops and shared-memory block reductions */
#include <stdint.h>
#define SN_KERNEL extern "C" __global__ void
#define SN_DEVICE static __device__ __forceinline__
#define SN_BLOCK %(block)d
#define SN_FOR(i, n) \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long)blockDim.x * gridDim.x)
#define SN_ROWS(o, n) for (long o = blockIdx.x; o < (n); o += gridDim.x)
#define SN_FOR_OUTER(i, n) SN_FOR(i, n)
#define SN_FOR2(o, no, j, nj) SN_FOR(sn_i_, (no) * (nj)) \
  for (long o = sn_i_ / (nj), j = sn_i_ %% (nj), sn_once_ = 1; sn_once_; sn_once_ = 0)
#define SN_ROW_LOOP(r, n) for (long r = threadIdx.x; r < (n); r += blockDim.x)
#define SN_ROW_LOOP_SUM(r, n, acc) SN_ROW_LOOP(r, n)
#define SN_ROW_LOOP2(r, nr, q, nq) SN_ROW_LOOP(sn_k_, (nr) * (nq)) \
  for (long r = sn_k_ / (nq), q = sn_k_ %% (nq), sn_once_ = 1; sn_once_; sn_once_ = 0)
#define SN_ROW_LOOP2_SUM(r, nr, q, nq, acc) SN_ROW_LOOP2(r, nr, q, nq)
#define SN_ROW_LEADER (threadIdx.x == 0)
#define SN_ATOMIC_ADD(p, v) atomicAdd((p), (v))
#define SN_BLOCK_REDUCE(NAME, COMBINE) \
  static __device__ float NAME(float v) { \
    __shared__ float sn_sh[SN_BLOCK]; \
    unsigned t = threadIdx.x; \
    sn_sh[t] = v; \
    __syncthreads(); \
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) { \
      if (t < s) { float a = sn_sh[t], b = sn_sh[t + s]; sn_sh[t] = COMBINE; } \
      __syncthreads(); \
    } \
    float r = sn_sh[0]; \
    __syncthreads(); \
    return r; \
  }
SN_BLOCK_REDUCE(sn_block_sum, a + b)
SN_BLOCK_REDUCE(sn_block_max, ((a > b || a != a) ? a : b))
SN_BLOCK_REDUCE(sn_block_min, ((a < b || a != a) ? a : b))
""" % {"block": CUDA_BLOCK} + _HELPERS
