/* cuBLAS's cublasSgemmStridedBatched on the host, for the cuda-emu backend: the same
   argument list (column-major storage, op(A) m x k, op(B) k x n, C m x n, leading
   dimensions, element strides between the batch's matrices) computed by OpenBLAS's
   sgemm, single-threaded, one call per matrix of the batch.

   Returns 0, or the 1-based position of the first invalid argument in that list
   (cuBLAS returns CUBLAS_STATUS_INVALID_VALUE for the same checks). */
#include <cblas.h>
#include <stddef.h>

#ifndef SN_SGEMM
#define SN_SGEMM cblas_sgemm
#endif

static long sn_max1(long v) { return v > 1 ? v : 1; }

int sn_sgemm_strided_batched(int transa, int transb, long m, long n, long k, float alpha,
                             const float* A, long lda, long long strideA, const float* B,
                             long ldb, long long strideB, float beta, float* C, long ldc,
                             long long strideC, long batch) {
  /* CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 (the same as T for real data) */
  if (transa < 0 || transa > 2) return 1;
  if (transb < 0 || transb > 2) return 2;
  if (m < 0) return 3;
  if (n < 0) return 4;
  if (k < 0) return 5;
  if (lda < sn_max1(transa == 0 ? m : k)) return 8;
  if (ldb < sn_max1(transb == 0 ? k : n)) return 11;
  if (ldc < sn_max1(m)) return 15;
  if (batch < 0) return 17;
  if (m == 0 || n == 0 || batch == 0) return 0;
  const enum CBLAS_TRANSPOSE ta = transa ? CblasTrans : CblasNoTrans;
  const enum CBLAS_TRANSPOSE tb = transb ? CblasTrans : CblasNoTrans;
  for (long b = 0; b < batch; ++b) {
    float* c = C + b * strideC;
    if (k == 0 || alpha == 0.0f) {
      /* C = beta C; with beta = 0 the old C is not read (a NaN there is overwritten) */
      for (long j = 0; j < n; ++j)
        for (long i = 0; i < m; ++i)
          c[j * ldc + i] = beta == 0.0f ? 0.0f : beta * c[j * ldc + i];
      continue;
    }
    if (beta == 0.0f)       /* BLAS semantics, whatever the library does with beta = 0 */
      for (long j = 0; j < n; ++j)
        for (long i = 0; i < m; ++i) c[j * ldc + i] = 0.0f;
    SN_SGEMM(CblasColMajor, ta, tb, (int)m, (int)n, (int)k, alpha, A + b * strideA, (int)lda,
             B + b * strideB, (int)ldb, beta, c, (int)ldc);
  }
  return 0;
}
