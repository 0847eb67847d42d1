/* symnet cuda-emu: runs CUDA kernel text on the host.
 *
 * Blocks run one after another. A kernel that synchronises (shared memory and
 * __syncthreads) runs each block as an OpenMP parallel region with one OpenMP thread
 * per CUDA thread; __shared__ variables are static, so the block's threads share them,
 * and __syncthreads() is an OpenMP barrier. A kernel without barriers runs its block's
 * threads as iterations of an OpenMP loop, which gives the same results.
 * threadIdx and blockIdx are thread-local; atomics are compiler atomics.
 */
#pragma once
#include <math.h>
#include <omp.h>
#include <stdint.h>

struct sn_uint3 { unsigned x, y, z; };
static thread_local sn_uint3 threadIdx, blockIdx;
static sn_uint3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() _Pragma("omp barrier")

static inline float atomicAdd(float* address, float value) {
  float old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  float desired;
  do {
    desired = old + value;
  } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED));
  return old;
}

/* Launch body() as grid x block CUDA threads. Returns 0, or 1 when OpenMP could not
   give a synchronising block all of its threads. */
template <typename Body>
static int sn_emu_launch(unsigned grid, unsigned block, bool sync, Body body) {
  gridDim = {grid, 1u, 1u};
  blockDim = {block, 1u, 1u};
  omp_set_dynamic(0);
  int failed = 0;
  for (unsigned b = 0; b < grid && !failed; ++b) {
    if (sync) {
#pragma omp parallel num_threads(block)
      {
        if (omp_get_num_threads() != (int)block) {
#pragma omp atomic write
          failed = 1;
        } else {
          blockIdx = {b, 0u, 0u};
          threadIdx = {(unsigned)omp_get_thread_num(), 0u, 0u};
          body();
        }
      }
    } else {
#pragma omp parallel for schedule(static)
      for (unsigned t = 0; t < block; ++t) {
        blockIdx = {b, 0u, 0u};
        threadIdx = {t, 0u, 0u};
        body();
      }
    }
  }
  return failed;
}
