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
/* the 32-bit loops of generated elementwise kernels (CUDA) are the long loops here */
#define SN_I32 long
#define SN_FOR_I32(i, n) SN_FOR(i, n)
#define SN_FOR2_I32(o, no, j, nj) SN_FOR2(o, no, j, nj)
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

CUDA_BLOCK = 128          # threads per block of most launches (a power of two)
CUDA_WARP = 32
CUDA_REDUCE_BLOCK = 256   # threads per block of block-per-row and partial reductions

# The model device grids are sized for: an H100 SXM. The cuda adapter re-derives a
# step's grid for the real device from ``step.attrs["extent"]`` (threads wanted).
DEVICE_SMS = 132
DEVICE_THREADS_PER_SM = 2048
DEVICE_BLOCKS_PER_SM = 32


def blocks_per_sm(block):
    """Blocks of ``block`` threads resident on one SM at full occupancy (threads and
    block slots only; registers and shared memory may allow fewer)."""
    return max(1, min(DEVICE_BLOCKS_PER_SM, DEVICE_THREADS_PER_SM // block))


def device_grid(extent, block, sms=DEVICE_SMS):
    """Blocks for ``extent`` threads: as many as needed, at most enough to fill every
    SM of the device once (grid-stride loops cover the rest)."""
    return max(1, min(-(-int(extent) // block), sms * blocks_per_sm(block)))


CUDA_PRELUDE = r"""/* symnet CUDA prelude: grid-stride loops, warp and block reductions */
#include <stdint.h>
#define SN_KERNEL extern "C" __global__ void
#define SN_DEVICE static __device__ __forceinline__
#define SN_BLOCK %(block)d
/* The index type of loops over n elements: 32-bit when n (a constant of the kernel)
   and a grid stride past it fit, 64-bit otherwise. SN_FOR, SN_FOR_OUTER, SN_FOR2 and
   the row loops count in that type and give it to their bodies; a library kernel whose
   sizes all fit also does its own arithmetic in 32 bits (lowering writes its `long`s
   as `int`), else in 64 bits, to which a 32-bit index promotes. */
template <bool Small> struct sn_index_type { typedef long type; };
template <> struct sn_index_type<true> { typedef int type; };
#define SN_IDX(n) sn_index_type<((n) < (1L << 30))>::type
#define SN_FOR(i, n) \
  for (SN_IDX(n) sn_f_ = blockIdx.x * blockDim.x + threadIdx.x; sn_f_ < (n); \
       sn_f_ += blockDim.x * gridDim.x) \
    for (SN_IDX(n) i = sn_f_, sn_once_ = 1; sn_once_; sn_once_ = 0)
#define SN_FOR_OUTER(i, n) SN_FOR(i, n)
#define SN_FOR2(o, no, j, nj) \
  for (SN_IDX((no) * (nj)) sn_f_ = blockIdx.x * blockDim.x + threadIdx.x; \
       sn_f_ < (no) * (nj); sn_f_ += blockDim.x * gridDim.x) \
    for (SN_IDX((no) * (nj)) o = sn_f_ / (SN_IDX((no) * (nj)))(nj), \
         j = sn_f_ %% (SN_IDX((no) * (nj)))(nj), sn_once_ = 1; sn_once_; sn_once_ = 0)
/* Loops of generated elementwise kernels, whose offsets (below 2**30) are 32-bit */
#define SN_I32 int
#define SN_FOR_I32(i, n) \
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
#define SN_FOR2_I32(o, no, j, nj) SN_FOR_I32(sn_i_, (no) * (nj)) \
  for (int o = sn_i_ / (int)(nj), j = sn_i_ %% (int)(nj), sn_once_ = 1; sn_once_; \
       sn_once_ = 0)
#define SN_ROWS(o, n) for (SN_IDX(n) o = blockIdx.x; o < (n); o += gridDim.x)
#define SN_ROW_LOOP(r, n) for (SN_IDX(n) r = threadIdx.x; r < (n); r += blockDim.x)
#define SN_ROW_LOOP_SUM(r, n, acc) SN_ROW_LOOP(r, n)
#define SN_ROW_LOOP2(r, nr, q, nq) SN_ROW_LOOP(sn_k_, (nr) * (nq)) \
  for (SN_IDX((nr) * (nq)) r = sn_k_ / (nq), q = sn_k_ %% (nq), sn_once_ = 1; sn_once_; \
       sn_once_ = 0)
#define SN_ROW_LOOP2_SUM(r, nr, q, nq, acc) SN_ROW_LOOP2(r, nr, q, nq)
#define SN_ROW_LEADER (threadIdx.x == 0)
#define SN_ATOMIC_ADD(p, v) atomicAdd((p), (v))
/* Rows handled by groups of L lanes (L a power of two <= 32; 32 / L rows per warp):
   every lane of a warp runs the same iterations, o >= n on lanes past the last row, so
   the group reductions' shuffles always see full warps. */
#define SN_GROUP_ROWS(o, n, L) \
  for (SN_IDX(n) sn_b_ = (blockIdx.x * blockDim.x + threadIdx.x) / 32 * (32 / (L)); \
       sn_b_ < (n); sn_b_ += blockDim.x * gridDim.x / (L)) \
    for (SN_IDX(n) o = sn_b_ + threadIdx.x %% 32 / (L), sn_once_ = 1; sn_once_; sn_once_ = 0)
/* r over [start, end) in steps of step; the 2-D form splits r into (r, q), q < nq */
#define SN_LANE_LOOP(r, start, end, step, n) \
  for (SN_IDX(n) r = (start); r < (end); r += (step))
#define SN_LANE_LOOP2(r, q, nq, start, end, step, n) SN_LANE_LOOP(sn_k_, start, end, step, n) \
  for (SN_IDX(n) r = sn_k_ / (nq), q = sn_k_ %% (nq), sn_once_ = 1; sn_once_; sn_once_ = 0)
#define SN_FULL_MASK 0xffffffffu
/* Block reductions (blockDim.x a multiple of 32): a butterfly in each warp, the warps'
   results through shared memory, then every warp reduces those, so all threads return
   the same value. */
#define SN_BLOCK_REDUCE(NAME, IDENTITY, COMBINE) \
  static __device__ float NAME(float v) { \
    __shared__ float sn_sh[32]; \
    const unsigned lane = threadIdx.x %% 32, nw = blockDim.x / 32; \
    for (int d = 16; d > 0; d >>= 1) { \
      float a = v, b = __shfl_xor_sync(SN_FULL_MASK, v, d); v = COMBINE; } \
    __syncthreads(); \
    if (lane == 0) sn_sh[threadIdx.x / 32] = v; \
    __syncthreads(); \
    v = lane < nw ? sn_sh[lane] : IDENTITY; \
    for (int d = 16; d > 0; d >>= 1) { \
      float a = v, b = __shfl_xor_sync(SN_FULL_MASK, v, d); v = COMBINE; } \
    return v; \
  }
SN_BLOCK_REDUCE(sn_block_sum, 0.0f, a + b)
SN_BLOCK_REDUCE(sn_block_max, (-INFINITY), ((a > b || a != a) ? a : b))
SN_BLOCK_REDUCE(sn_block_min, INFINITY, ((a < b || a != a) ? a : b))
/* Reductions among the L lanes of a row group (a butterfly: every lane gets the
   result; sums come out bitwise equal in all lanes) */
#define SN_GROUP_REDUCE(NAME, COMBINE) \
  template <int L> static __device__ __forceinline__ float NAME(float v) { \
    for (int d = L / 2; d > 0; d >>= 1) { \
      float a = v, b = __shfl_xor_sync(SN_FULL_MASK, v, d, L); v = COMBINE; } \
    return v; \
  }
SN_GROUP_REDUCE(sn_block_group_sum, a + b)
SN_GROUP_REDUCE(sn_block_group_max, ((a > b || a != a) ? a : b))
SN_GROUP_REDUCE(sn_block_group_min, ((a < b || a != a) ? a : b))
""" % {"block": CUDA_BLOCK} + _HELPERS


# sin, cos and tan: on the CPU the C library's functions (libmvec vectorises them); on
# CUDA float-only implementations, because CUDA's own reduce huge arguments through
# double. The CUDA text is also compiled as host C++ by the cuda-emu backend.
_TRIG_C = r"""#define sn_sin(x) sinf(x)
#define sn_cos(x) cosf(x)
#define sn_tan(x) tanf(x)
"""

_TRIG = r"""/* sn_sin, sn_cos, sn_tan in float arithmetic only (no double anywhere, on any path).
   x = j*pi/2 + r with |r| <= pi/4 (a little more: j comes from a rounded quotient),
   r kept as an unevaluated pair rh + rl. |x| < 2^17: Cody-Waite with fmaf and pi/2 split
   in three floats (the first step is exact, the second is an exact product added by an
   exact two-sum). Larger |x|: Payne-Hanek in 32/64-bit integers on the bits of 2/pi,
   the 64-bit fixed-point fraction normalised and converted to a float pair through
   24-bit integer-to-float conversions and power-of-two scaling. Then odd/even minimax
   polynomials on |r| <= 0.7925 (sin: r + r^3 P(r^2), cos: 1 - r^2/2 + r^4 Q(r^2))
   evaluated as float pairs, the quadrant selecting and negating; tan divides the pairs.
   NaN and +-Inf give NaN; the sign of zero is kept. Measured on every float (host,
   against glibc's double functions): max error sin 0.72, cos 0.72, tan 0.88 ulp. */
#if defined(__CUDA_ARCH__)
SN_DEVICE uint32_t sn_f2u(float x) { return __float_as_uint(x); }
SN_DEVICE float sn_u2f(uint32_t u) { return __uint_as_float(u); }
SN_DEVICE int sn_clz64(uint64_t v) { return __clzll((long long)v); }
#else
#include <string.h>
SN_DEVICE uint32_t sn_f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
SN_DEVICE float sn_u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
SN_DEVICE int sn_clz64(uint64_t v) { return __builtin_clzll(v); }
#endif
/* bits of 2/pi, 32 per word, after a zero word (arguments below 2^23 start before the
   binary point) */
static __device__ const uint32_t sn_two_over_pi_bits[8] = {
  0x00000000u, 0xa2f9836eu, 0x4e441529u, 0xfc2757d1u, 0xf534ddc0u, 0xdb629599u,
  0x3c439041u, 0xfe5163abu};
/* |x| = j*pi/2 + rh + rl for finite ax = |x|; returns rh, sets *rl and *quadrant = j & 3.
   NaN and Inf take the integer path, stay inside the table and give garbage that the
   callers replace by NaN. */
SN_DEVICE float sn_trig_reduce(float ax, float* rl, int* quadrant) {
  const float pio2_1 = 1.5707964f, pio2_2 = -4.371139e-08f, pio2_3 = -1.7151245e-15f;
  if (ax < 131072.0f) {
    const float j = rintf(fmaf(ax, 0.63661975f, ax * 2.5682553e-08f));
    const float r1 = fmaf(-j, pio2_1, ax);          /* exact */
    const float th = j * pio2_2, tl = fmaf(j, pio2_2, -th);
    const float s = r1 - th, bb = s - r1;           /* two-sum r1 - th = s + e */
    const float e = (r1 - (s - bb)) - (th + bb);
    const float lo = fmaf(-j, pio2_3, e - tl);
    const float h = s + lo;
    *rl = lo - (h - s);
    *quadrant = (int)j & 3;
    return h;
  }
  const uint32_t u = sn_f2u(ax);
  const uint32_t m = (u & 0x7fffffu) | 0x800000u;  /* ax = m * 2^(ex - 150) */
  const int sp = (int)(u >> 23) - 120;               /* first table bit used */
  const int w = sp >> 5, b = sp & 31;
  uint32_t c[3];
  for (int k = 0; k < 3; ++k)
    c[k] = (uint32_t)((((uint64_t)sn_two_over_pi_bits[w + k] << 32) |
                       sn_two_over_pi_bits[w + k + 1]) >> (32 - b));
  /* m * (c0:c1:c2) mod 2^96, in units of 2^-94 quarter turns */
  const uint64_t p2 = (uint64_t)m * c[2], p1 = (uint64_t)m * c[1], p0 = (uint64_t)m * c[0];
  const uint64_t mid = (p2 >> 32) + p1;
  const uint32_t top = (uint32_t)(mid >> 32) + (uint32_t)p0;
  const uint32_t low = (uint32_t)p2;
  uint64_t f = ((uint64_t)top << 34) | ((uint64_t)(uint32_t)mid << 2) | (low >> 30);
  uint32_t g = low << 2;                             /* the next 30 fraction bits */
  int q = (int)(top >> 30);
  const int neg = (int)(f >> 63);                    /* fraction >= 1/2: use f - 1 */
  if (neg) { f = ~f; g = ~g; q += 1; }
  const int lz = sn_clz64(f | 1u);
  f <<= lz;
  if (lz > 32) f |= (uint64_t)g << (lz - 32);
  else if (lz > 0) f |= (uint64_t)(g >> (32 - lz));
  const float scale = sn_u2f((uint32_t)(103 - lz) << 23);   /* 2^-(24 + lz) */
  const float fh = (float)(uint32_t)(f >> 40) * scale;
  const float fl = (float)(uint32_t)((f >> 16) & 0xffffffu) * (scale * 5.9604645e-08f);
  const float ph = fh * pio2_1;
  const float pl = fmaf(fh, pio2_1, -ph) + fmaf(fh, pio2_2, fl * pio2_1);
  const float h = ph + pl;
  *rl = neg ? -(pl - (h - ph)) : pl - (h - ph);
  *quadrant = q & 3;
  return neg ? -h : h;
}
/* sin(rh + rl) = *sh + *sl and cos(rh + rl) = *ch + *cl for |rh + rl| <= 0.7925 */
SN_DEVICE void sn_trig_kernels(float rh, float rl, float* sh, float* sl, float* ch,
                               float* cl) {
  const float s = rh * rh, se = fmaf(rh, rh, -s);   /* rh^2 = s + se exactly */
  const float ps = fmaf(fmaf(fmaf(2.8263985e-06f, s, -0.00019852565f), s, 0.0083333785f),
                        s, -0.16666667f);
  const float pc = fmaf(fmaf(2.4430308e-05f, s, -0.0013887299f), s, 0.041666646f);
  const float hs = 0.5f * s;
  *sh = rh;
  *sl = fmaf(rh * s, ps, fmaf(-hs, rl, rl));         /* + rl * cos(rh) */
  const float w = 1.0f - hs;
  *ch = w;
  *cl = fmaf(s * s, pc, ((1.0f - w) - hs) - fmaf(0.5f, se, rh * rl));
}
SN_DEVICE float sn_sin(float x) {
  float rl, sh, sl, ch, cl;
  int q;
  const float ax = fabsf(x);
  const float rh = sn_trig_reduce(ax, &rl, &q);
  sn_trig_kernels(rh, rl, &sh, &sl, &ch, &cl);
  const float y = (q & 1) ? ch + cl : sh + sl;
  const float r = sn_u2f(sn_f2u(y) ^ ((uint32_t)(q & 2) << 30) ^ (sn_f2u(x) & 0x80000000u));
  return ax <= 3.40282347e+38f ? r : x - x;
}
SN_DEVICE float sn_cos(float x) {
  float rl, sh, sl, ch, cl;
  int q;
  const float ax = fabsf(x);
  const float rh = sn_trig_reduce(ax, &rl, &q);
  sn_trig_kernels(rh, rl, &sh, &sl, &ch, &cl);
  const float y = (q & 1) ? sh + sl : ch + cl;
  const float r = sn_u2f(sn_f2u(y) ^ ((uint32_t)((q + 1) & 2) << 30));
  return ax <= 3.40282347e+38f ? r : x - x;
}
SN_DEVICE float sn_tan(float x) {
  float rl, sh, sl, ch, cl;
  int q;
  const float ax = fabsf(x);
  const float rh = sn_trig_reduce(ax, &rl, &q);
  sn_trig_kernels(rh, rl, &sh, &sl, &ch, &cl);
  /* (nh + nl) / (dh + dl): sin/cos, or -cos/sin in odd quadrants */
  const float ah = (q & 1) ? -ch : sh, al = (q & 1) ? -cl : sl;
  const float bh = (q & 1) ? sh : ch, bl = (q & 1) ? sl : cl;
  const float nh = ah + al, nl = al - (nh - ah);    /* renormalised pairs */
  const float dh = bh + bl, dl = bl - (dh - bh);
  const float inv = 1.0f / dh;
  const float t = nh * inv;
  const float rem = fmaf(-t, dl, fmaf(-t, dh, nh) + nl);
  const float y = fmaf(rem, inv, t);
  const float r = sn_u2f(sn_f2u(y) ^ (sn_f2u(x) & 0x80000000u));
  return ax <= 3.40282347e+38f ? r : x - x;
}
"""

C_PRELUDE += _TRIG_C
CUDA_PRELUDE += _TRIG
