/* symnet cuda-emu: runs CUDA kernel text on the host.
 *
 * Execution model.
 * - A launch of grid x block threads spreads its blocks over at most
 *   omp_get_max_threads() OS threads (an OpenMP team of min(grid, that) threads, blocks
 *   taken dynamically); blockIdx is per OS thread. __shared__ variables are
 *   `static thread_local`, so each OS thread has its own copy for the block it runs.
 * - A kernel without barriers runs its block's threads as a plain loop (thread 0, 1,
 *   ...), which gives the same results since its threads do not communicate.
 * - A kernel that synchronises (__syncthreads, block reductions, warp shuffles) runs its
 *   block's threads as fibers: user-mode contexts on the one OS thread that runs the
 *   block, each with a small stack of its own (SN_EMU_STACK bytes; the stacks of an OS
 *   thread are one mapping, made once and reused by every block and launch). threadIdx is per
 *   fiber: it is set on every switch. A fiber runs until it waits at a barrier or
 *   returns, then switches directly to the next fiber that can run (round robin).
 *   - __syncthreads() is a block barrier: it releases when every live thread of the
 *     block waits there; threads that returned count as arrived (as on current GPUs).
 *   - __syncwarp() and the shuffles (__shfl_sync, __shfl_up_sync, __shfl_down_sync,
 *     __shfl_xor_sync, for 4- and 8-byte types) use a warp barrier among the 32 lanes
 *     of a warp (lanes that returned count as arrived), so warps of a block may run
 *     different numbers of shuffles. A shuffle writes the lane's value to a per-warp
 *     exchange slot (two slots alternate, so one barrier per shuffle suffices), waits
 *     at the warp barrier, then reads the source lane's slot. Only full-warp masks have
 *     CUDA's semantics; the mask argument is not otherwise interpreted. Reading a lane
 *     that returned gives its last shuffled value (undefined on a GPU).
 *   - When no fiber can run and some have not returned (e.g. __syncthreads in divergent
 *     code, or a warp barrier that a lane waiting at a block barrier can never reach),
 *     the block is abandoned and the launch returns 2 (deadlock) instead of hanging.
 *   On x86-64 a context switch is a few instructions of inline assembly (callee-saved
 *   registers, stack pointer, MXCSR and the x87 control word); elsewhere it falls back to
 *   ucontext's swapcontext (much slower: a signal-mask system call per switch).
 * - A barrier or shuffle reached by a kernel launched as non-synchronising (which the
 *   launcher decides from the kernel text) makes the launch return 3.
 * - Atomics are compiler atomics.
 *
 * sn_emu_launch(grid, block, sync, body) returns 0, or nonzero on an error: 1 a block
 * larger than SN_EMU_MAX_BLOCK threads, 2 a deadlocked barrier, 3 a barrier in a launch
 * run without fibers, 4 fiber stacks could not be mapped, 5 a thread overflowed its
 * fiber stack (found by a canary word after the block; the process may be corrupt).
 */
#pragma once
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

struct sn_uint3 { unsigned x, y, z; };
static thread_local sn_uint3 threadIdx, blockIdx;
static sn_uint3 blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local

#define SN_EMU_MAX_BLOCK 1024
#define SN_EMU_STACK (64 * 1024)

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

/* ------------------------------------------------------------------ context switch */
#if defined(__x86_64__)
/* sn_emu_switch(&save, to): saves the callee-saved state on the current stack, stores
   the stack pointer in *save, and resumes the context whose stack pointer is `to`. */
extern "C" void sn_emu_switch(void** save, void* to) __attribute__((visibility("hidden")));
extern "C" void sn_emu_fiber_start() __attribute__((visibility("hidden")));
extern "C" void sn_emu_fiber_main(void* sched) __attribute__((visibility("hidden")));
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl sn_emu_switch\n"
    ".hidden sn_emu_switch\n"
    ".type sn_emu_switch,@function\n"
    "sn_emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size sn_emu_switch, .-sn_emu_switch\n"
    /* a new fiber's first switch returns here, with the scheduler in r12 */
    ".p2align 4\n"
    ".globl sn_emu_fiber_start\n"
    ".hidden sn_emu_fiber_start\n"
    ".type sn_emu_fiber_start,@function\n"
    "sn_emu_fiber_start:\n"
    "  movq %r12, %rdi\n"
    "  call sn_emu_fiber_main\n"
    "  ud2\n"
    ".size sn_emu_fiber_start, .-sn_emu_fiber_start\n");
#endif

/* ------------------------------------------------------------------ scheduler */
static const uint64_t SN_EMU_CANARY = 0x5e5e5e5e0dd0c0deull;
enum { SN_READY = 0, SN_WAIT_BLOCK = 1, SN_WAIT_WARP = 2, SN_DONE = 3 };

struct sn_fiber {
#if defined(__x86_64__)
  void* sp;
#else
  ucontext_t ctx;
#endif
  unsigned char state;
  unsigned char slot;   /* which exchange slot this lane's next shuffle uses */
};

struct sn_sched {
  char* stacks = nullptr;   /* SN_EMU_MAX_BLOCK stacks, mapped on first use */
  sn_fiber fibers[SN_EMU_MAX_BLOCK];
#if defined(__x86_64__)
  void* main_sp = nullptr;
  void* dead_sp = nullptr;  /* where a returning fiber's final state is saved */
#else
  ucontext_t main_ctx, dead_ctx;
#endif
  void (*fn)(void*) = nullptr;
  void* arg = nullptr;
  unsigned n = 0, cur = 0, live = 0, block_wait = 0;
  unsigned warp_live[SN_EMU_MAX_BLOCK / 32], warp_wait[SN_EMU_MAX_BLOCK / 32];
  uint64_t exch[2][SN_EMU_MAX_BLOCK];
  bool deadlock = false;

  ~sn_sched() {
    if (stacks) munmap(stacks, (size_t)SN_EMU_MAX_BLOCK * SN_EMU_STACK);
  }
};

static thread_local sn_sched* sn_emu_cur = nullptr;   /* set while fibers run */
static thread_local bool sn_emu_stray_barrier = false;

struct sn_sched_holder {
  sn_sched* p = nullptr;
  ~sn_sched_holder() { delete p; }
};

/* This OS thread's scheduler and stacks, made on its first synchronising block. */
static inline sn_sched* sn_emu_sched() {
  static thread_local sn_sched_holder holder;
  if (!holder.p) holder.p = new sn_sched();
  return holder.p;
}

static inline void sn_emu_jump(sn_sched* s, unsigned from, unsigned to) {
  s->cur = to;
  threadIdx.x = to;
#if defined(__x86_64__)
  sn_emu_switch(&s->fibers[from].sp, s->fibers[to].sp);
#else
  swapcontext(&s->fibers[from].ctx, &s->fibers[to].ctx);
#endif
}

/* Leave fiber `from` (waiting or done) for the next fiber that can run, or for the
   launching context when none can (all returned, or a deadlock). */
static void sn_emu_next(sn_sched* s, unsigned from, bool done) {
  unsigned n = s->n;
  unsigned k = from + 1 == n ? 0 : from + 1;
  for (unsigned c = 0; c < n; ++c) {
    if (s->fibers[k].state == SN_READY) {
      if (k == from) return;   /* released itself; keep running */
      if (done) {
        s->cur = k;
        threadIdx.x = k;
#if defined(__x86_64__)
        sn_emu_switch(&s->dead_sp, s->fibers[k].sp);
#else
        swapcontext(&s->dead_ctx, &s->fibers[k].ctx);
#endif
      } else {
        sn_emu_jump(s, from, k);
      }
      return;
    }
    k = k + 1 == n ? 0 : k + 1;
  }
  if (s->live) s->deadlock = true;
#if defined(__x86_64__)
  sn_emu_switch(done ? &s->dead_sp : &s->fibers[from].sp, s->main_sp);
#else
  swapcontext(done ? &s->dead_ctx : &s->fibers[from].ctx, &s->main_ctx);
#endif
}

static inline void sn_emu_release_block(sn_sched* s) {
  for (unsigned t = 0; t < s->n; ++t)
    if (s->fibers[t].state == SN_WAIT_BLOCK) s->fibers[t].state = SN_READY;
  s->block_wait = 0;
}

static inline void sn_emu_release_warp(sn_sched* s, unsigned w) {
  unsigned end = (w + 1) * 32 < s->n ? (w + 1) * 32 : s->n;
  for (unsigned t = w * 32; t < end; ++t)
    if (s->fibers[t].state == SN_WAIT_WARP) s->fibers[t].state = SN_READY;
  s->warp_wait[w] = 0;
}

extern "C" void sn_emu_fiber_main(void* arg) {
  sn_sched* s = (sn_sched*)arg;
  s->fn(s->arg);
  unsigned t = s->cur, w = t / 32;
  s->fibers[t].state = SN_DONE;
  s->live--;
  s->warp_live[w]--;
  if (s->block_wait && s->block_wait == s->live) sn_emu_release_block(s);
  if (s->warp_wait[w] && s->warp_wait[w] == s->warp_live[w]) sn_emu_release_warp(s, w);
  sn_emu_next(s, t, true);
  __builtin_unreachable();
}

#if !defined(__x86_64__)
static void sn_emu_fiber_entry(unsigned hi, unsigned lo) {
  sn_emu_fiber_main((void*)(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
#endif

/* Run one block of s->n threads as fibers: 0, 2 on a deadlock, 5 on a stack overflow. */
static int sn_emu_run_block(sn_sched* s) {
  unsigned n = s->n;
  s->live = n;
  s->block_wait = 0;
  s->deadlock = false;
  for (unsigned w = 0; w < (n + 31) / 32; ++w) {
    s->warp_live[w] = (w + 1) * 32 <= n ? 32 : n - w * 32;
    s->warp_wait[w] = 0;
  }
  for (unsigned t = 0; t < n; ++t) {
    sn_fiber* f = &s->fibers[t];
    *(uint64_t*)(s->stacks + (size_t)t * SN_EMU_STACK) = SN_EMU_CANARY;
    f->state = SN_READY;
    f->slot = 0;
    char* top = s->stacks + (size_t)(t + 1) * SN_EMU_STACK;
#if defined(__x86_64__)
    /* the frame sn_emu_switch pops: control words, r15..rbp, return address; its ret
       leaves rsp = top - 16, so the start routine's call enters sn_emu_fiber_main with
       rsp % 16 == 8, as the ABI requires */
    uint64_t* sp = (uint64_t*)(top - 16);
    *--sp = (uint64_t)(uintptr_t)&sn_emu_fiber_start;
    *--sp = 0;                                  /* rbp */
    *--sp = 0;                                  /* rbx */
    *--sp = (uint64_t)(uintptr_t)s;             /* r12: the scheduler */
    *--sp = 0;                                  /* r13 */
    *--sp = 0;                                  /* r14 */
    *--sp = 0;                                  /* r15 */
    uint32_t mx;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0" : "=m"(mx));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    *--sp = (uint64_t)mx | ((uint64_t)cw << 32);
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = top - SN_EMU_STACK;
    f->ctx.uc_stack.ss_size = SN_EMU_STACK;
    f->ctx.uc_link = nullptr;
    uintptr_t p = (uintptr_t)s;
    makecontext(&f->ctx, (void (*)())sn_emu_fiber_entry, 2, (unsigned)(p >> 32),
                (unsigned)(p & 0xffffffffu));
#endif
  }
  sn_emu_cur = s;
  s->cur = 0;
  threadIdx = {0u, 0u, 0u};
#if defined(__x86_64__)
  sn_emu_switch(&s->main_sp, s->fibers[0].sp);
#else
  swapcontext(&s->main_ctx, &s->fibers[0].ctx);
#endif
  sn_emu_cur = nullptr;
  for (unsigned t = 0; t < n; ++t)
    if (*(uint64_t*)(s->stacks + (size_t)t * SN_EMU_STACK) != SN_EMU_CANARY) return 5;
  return s->deadlock ? 2 : 0;
}

/* ------------------------------------------------------------------ barriers */
static inline void __syncthreads() {
  sn_sched* s = sn_emu_cur;
  if (!s) {
    sn_emu_stray_barrier = true;
    return;
  }
  unsigned t = s->cur;
  s->fibers[t].state = SN_WAIT_BLOCK;
  if (++s->block_wait == s->live) sn_emu_release_block(s);
  sn_emu_next(s, t, false);
}

static inline bool sn_emu_warp_barrier(sn_sched* s) {
  if (!s) {
    sn_emu_stray_barrier = true;
    return false;
  }
  unsigned t = s->cur, w = t / 32;
  s->fibers[t].state = SN_WAIT_WARP;
  if (++s->warp_wait[w] == s->warp_live[w]) sn_emu_release_warp(s, w);
  sn_emu_next(s, t, false);
  return true;
}

static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)mask;
  sn_emu_warp_barrier(sn_emu_cur);
}

/* The value of lane `src` of this warp at this shuffle (src outside 0..31: own). */
template <typename T>
static inline T sn_emu_shuffle(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffles move 4- or 8-byte values");
  sn_sched* s = sn_emu_cur;
  if (!s) {
    sn_emu_stray_barrier = true;
    return v;
  }
  unsigned t = s->cur;
  unsigned slot = s->fibers[t].slot;
  s->fibers[t].slot = slot ^ 1u;
  memcpy(&s->exch[slot][t], &v, sizeof(T));
  sn_emu_warp_barrier(s);
  if (src < 0 || src > 31) return v;
  T out;
  memcpy(&out, &s->exch[slot][(t & ~31u) + (unsigned)src], sizeof(T));
  return out;
}

/* width: a power of two <= 32 splitting the warp into independent groups */
template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  (void)mask;
  int lane = (int)(threadIdx.x & 31u);
  return sn_emu_shuffle(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)mask;
  int lane = (int)(threadIdx.x & 31u), in = lane & (width - 1);
  return sn_emu_shuffle(v, in - (int)delta >= 0 ? lane - (int)delta : -1);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)mask;
  int lane = (int)(threadIdx.x & 31u), in = lane & (width - 1);
  return sn_emu_shuffle(v, in + (int)delta < width ? lane + (int)delta : -1);
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  (void)mask;
  int lane = (int)(threadIdx.x & 31u);
  int src = lane ^ lane_mask;
  return sn_emu_shuffle(v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}

/* ------------------------------------------------------------------ launch */
template <typename Body>
static void sn_emu_thunk(void* body) {
  (*(Body*)body)();
}

/* One mapping (one kernel VMA; per-stack guard pages would cost two each and
   exhaust vm.max_map_count with many modules loaded); a canary word at the bottom of
   every stack (SN_EMU_CANARY) detects an overflow after the block instead. */
static inline bool sn_emu_map_stacks(sn_sched* s) {
  if (s->stacks) return true;
  void* p = mmap(nullptr, (size_t)SN_EMU_MAX_BLOCK * SN_EMU_STACK, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  s->stacks = (char*)p;
  return true;
}

/* Launch body() as grid x block CUDA threads; 0 on success (codes: see above). */
template <typename Body>
static int sn_emu_launch(unsigned grid, unsigned block, bool sync, Body body) {
  if (block > SN_EMU_MAX_BLOCK || block == 0) return 1;
  if (grid == 0) return 0;
  gridDim = {grid, 1u, 1u};
  blockDim = {block, 1u, 1u};
  int team = omp_get_max_threads();
  if (team > (int)grid) team = (int)grid;
  if (team < 1) team = 1;
  int failed = 0;
#pragma omp parallel num_threads(team) if (team > 1)
  {
    sn_sched* s = nullptr;
    int mine = 0;
    sn_emu_stray_barrier = false;
    if (sync) {
      s = sn_emu_sched();
      if (!sn_emu_map_stacks(s)) mine = 4;
      s->n = block;
      s->fn = &sn_emu_thunk<Body>;
      s->arg = (void*)&body;
    }
#pragma omp for schedule(dynamic, 1)
    for (unsigned b = 0; b < grid; ++b) {
      int stop;
#pragma omp atomic read
      stop = failed;
      if (stop || mine) continue;
      blockIdx = {b, 0u, 0u};
      if (sync) {
        mine = sn_emu_run_block(s);
      } else {
        for (unsigned t = 0; t < block; ++t) {
          threadIdx = {t, 0u, 0u};
          body();
        }
        if (sn_emu_stray_barrier) mine = 3;
      }
      if (mine) {
#pragma omp atomic write
        failed = mine;
      }
    }
    if (mine) {
#pragma omp atomic write
      failed = mine;
    }
  }
  return failed;
}
