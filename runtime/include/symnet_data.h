/*
 * symnet_data.h - the C ABI of a symnet data source in a shared library.
 *
 * A data source produces batches for the tops of an `ExternalData` layer. Build it as a
 * shared library (`cc -shared -fPIC -O2 -I$(symnet include-dir) mysource.c -o
 * libmysource.so`; .dylib on macOS, .dll on Windows) and name it in the prototxt:
 *
 *     layer {
 *       name: "data"  type: "ExternalData"  top: "data"  top: "label"
 *       python_param {
 *         module: "lib:libmysource.so"     # "lib:" + path; relative to the prototxt's
 *                                          # folder, then the working directory
 *         param_str: "batch=64 file=train.bin"   # handed to create() as it is
 *         # layer: "mysrc"                 # optional symbol prefix, see below
 *       }
 *       data_param { prefetch: 4 }         # optional: batches prepared ahead
 *     }
 *
 * symnet loads the library with ctypes and calls these functions. Each one is exported
 * under the prefix `symnet_data` (or under `<layer>` when python_param.layer is set, so
 * one library can hold several sources: `mysrc_create`, `mysrc_next`, ...).
 *
 * Threads: create() and the shape queries run on the thread that builds the net;
 * next() runs on the layer's prefetch thread; get_state()/set_state() run on either.
 * symnet never calls two functions on the same source at the same time, so a source
 * needs no locking of its own. The Python interpreter lock is released during every
 * call, so next() overlaps with the net's computation.
 *
 * Data-parallel training: when N processes train one model, symnet tells the source of
 * each its rank r (0 .. N-1) and N with symnet_data_set_world(), right after create().
 * The source then produces the records r, r+N, r+2N, ... of the stream it would produce
 * alone, so that at every iteration the N processes at batch B together read the N*B
 * records one process at batch N*B reads. Shuffles must be drawn from `seed` alone (the
 * same on every rank), other random numbers (augmentation) from the seed and the rank.
 * A library without symnet_data_set_world() (ABI version 1) works in one process only:
 * with N > 1 symnet refuses to load it. In the TEST phase (run by rank 0 alone) and in
 * one process it is told rank 0 of 1. symnet records r and N next to the state bytes of
 * get_state() and refuses to restore them on another rank or with another N.
 *
 * Errors: a function that fails returns NULL / a negative value and keeps a message
 * (UTF-8, NUL-terminated) that symnet_data_error() returns; symnet raises it in the main
 * thread with the layer's name. A message from create() goes into the caller's buffer.
 */
#ifndef SYMNET_DATA_H
#define SYMNET_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The version of this ABI; a library may export symnet_data_abi_version() returning it.
 *   1: the functions below without symnet_data_set_world;
 *   2: adds symnet_data_set_world (optional; needed for data-parallel training).
 * symnet reads libraries of versions 1 and 2.
 */
#define SYMNET_DATA_ABI_VERSION 2

/* The most axes a top may have (Caffe's limit). */
#define SYMNET_DATA_MAX_AXES 32

#if defined(_WIN32)
#define SYMNET_DATA_EXPORT __declspec(dllexport)
#else
#define SYMNET_DATA_EXPORT __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------- required */

/*
 * Create a source.
 *   param_str  python_param.param_str of the layer ("" when unset);
 *   phase      "TRAIN" or "TEST";
 *   seed       the layer's seed: draw every random number from generators seeded by it,
 *              so runs repeat (see symnet.data.set_seed);
 *   error      a buffer of error_size bytes for a message when creation fails.
 * Returns an opaque handle, or NULL after writing a message into error.
 */
SYMNET_DATA_EXPORT void *symnet_data_create(const char *param_str, const char *phase,
                                            uint64_t seed, char *error, size_t error_size);

/* The number of tops (>= 1), or -1 on error. */
SYMNET_DATA_EXPORT int symnet_data_num_tops(void *source);

/*
 * The shape of top `top` (0-based): writes up to max_axes sizes (each >= 1) into dims
 * and returns the number of axes (0 .. SYMNET_DATA_MAX_AXES), or -1 on error. The
 * shapes are fixed for the life of the source; the first axis is usually the batch.
 */
SYMNET_DATA_EXPORT int symnet_data_top_shape(void *source, int top, int64_t *dims,
                                             int max_axes);

/*
 * Produce the next batch: tops[i] points to a C-contiguous float32 buffer of the i-th
 * top's shape, owned by symnet (fresh for every call; fill all of it). Returns 0, or a
 * negative value on error (then symnet_data_error() says why).
 */
SYMNET_DATA_EXPORT int symnet_data_next(void *source, float *const *tops);

/* The message of the last error of `source` ("" when none); valid until the next call. */
SYMNET_DATA_EXPORT const char *symnet_data_error(void *source);

/* Release the source. Called once; the handle is not used afterwards. */
SYMNET_DATA_EXPORT void symnet_data_destroy(void *source);

/* ---------------------------------------------------------------- optional */

/* SYMNET_DATA_ABI_VERSION as the library was built; symnet refuses other versions. */
SYMNET_DATA_EXPORT int symnet_data_abi_version(void);

/*
 * The source's position (cursor, random state...) as opaque bytes, for the solver's
 * snapshots: writes at most size bytes into buffer (which may be NULL when size is 0)
 * and returns the full length, or -1 on error. symnet first asks for the length (size
 * 0), then passes a buffer of length + 1 bytes, so snprintf() may be used. symnet calls
 * it after every batch, so keep it cheap.
 */
SYMNET_DATA_EXPORT int64_t symnet_data_get_state(void *source, char *buffer, size_t size);

/* Go back to a position returned by get_state. Returns 0, or -1 on error. */
SYMNET_DATA_EXPORT int symnet_data_set_state(void *source, const char *buffer, size_t size);

/*
 * (ABI version 2) This source is rank `rank` of `size` processes (0 <= rank < size):
 * from now on produce the records rank, rank + size, rank + 2 size, ... of the stream
 * (see "Data-parallel training" above). Called once, right after create() and before
 * any other function, also with rank 0 of size 1. Returns 0, or -1 on error (e.g. a
 * source that cannot share out its records).
 */
SYMNET_DATA_EXPORT int symnet_data_set_world(void *source, int rank, int size);

#ifdef __cplusplus
}
#endif

#endif /* SYMNET_DATA_H */
