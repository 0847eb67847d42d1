/*
 * counter_source.c - a sample symnet data source in C (the ABI of symnet_data.h).
 *
 * Three tops, for sample n = 0, 1, 2, ... (counting across batches):
 *   data  (batch, channels, 2, 2)  data[i][j] = 1000 * n + j   (j: flat index in the item)
 *   label (batch)                  n % 10
 *   noise (batch, 1)               uniform in [0, 1), from a generator seeded by the seed
 * param_str: "batch=4 channels=3 fail_at=-1" (fail_at >= 0: next() fails at that sample,
 * to show how errors travel).
 *
 * Data-parallel (symnet_data_set_world): rank r of N produces the samples n = r, r+N,
 * r+2N, ...; its noise generator is seeded by the seed and the rank.
 *
 *   cc -shared -fPIC -O2 -I"$(symnet include-dir)" counter_source.c -o libcounter.so
 *
 *   layer { name: "data" type: "ExternalData" top: "data" top: "label" top: "noise"
 *           python_param { module: "lib:libcounter.so" param_str: "batch=4" } }
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "symnet_data.h"

typedef struct {
    long long batch, channels, fail_at, step;
    unsigned long long counter, rng;
    char error[256];
} counter_source;

static unsigned long long next_random(unsigned long long *s) {   /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

SYMNET_DATA_EXPORT int symnet_data_abi_version(void) { return SYMNET_DATA_ABI_VERSION; }

SYMNET_DATA_EXPORT void *symnet_data_create(const char *param_str, const char *phase,
                                            uint64_t seed, char *error, size_t error_size) {
    counter_source *s = calloc(1, sizeof *s);
    char key[64];
    long long value;
    int used;
    const char *p = param_str;
    (void)phase;
    if (!s) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    s->batch = 4;
    s->channels = 3;
    s->fail_at = -1;
    s->step = 1;
    s->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    while (sscanf(p, " %63[^= ]=%lld%n", key, &value, &used) == 2) {
        if (strcmp(key, "batch") == 0) s->batch = value;
        else if (strcmp(key, "channels") == 0) s->channels = value;
        else if (strcmp(key, "fail_at") == 0) s->fail_at = value;
        else {
            snprintf(error, error_size, "counter source: unknown parameter '%s' "
                     "(known: batch, channels, fail_at)", key);
            free(s);
            return NULL;
        }
        p += used;
    }
    if (s->batch < 1 || s->channels < 1) {
        snprintf(error, error_size, "counter source: batch and channels must be positive "
                 "(got batch=%lld channels=%lld)", s->batch, s->channels);
        free(s);
        return NULL;
    }
    return s;
}

SYMNET_DATA_EXPORT int symnet_data_num_tops(void *source) { (void)source; return 3; }

SYMNET_DATA_EXPORT int symnet_data_top_shape(void *source, int top, int64_t *dims,
                                             int max_axes) {
    counter_source *s = source;
    if (max_axes < 4 || top < 0 || top > 2) {
        snprintf(s->error, sizeof s->error, "counter source: no top %d", top);
        return -1;
    }
    dims[0] = s->batch;
    if (top == 0) {
        dims[1] = s->channels; dims[2] = 2; dims[3] = 2;
        return 4;
    }
    if (top == 1) return 1;
    dims[1] = 1;
    return 2;
}

SYMNET_DATA_EXPORT int symnet_data_next(void *source, float *const *tops) {
    counter_source *s = source;
    long long item = s->channels * 4;
    for (long long i = 0; i < s->batch; ++i, s->counter += (unsigned long long)s->step) {
        if (s->fail_at >= 0 && (long long)s->counter == s->fail_at) {
            snprintf(s->error, sizeof s->error,
                     "counter source: sample %llu failed as asked (fail_at)", s->counter);
            return -1;
        }
        for (long long j = 0; j < item; ++j)
            tops[0][i * item + j] = (float)(1000.0 * (double)s->counter + (double)j);
        tops[1][i] = (float)(s->counter % 10);
        tops[2][i] = (float)((next_random(&s->rng) >> 40) / 16777216.0);
    }
    s->error[0] = 0;
    return 0;
}

SYMNET_DATA_EXPORT int symnet_data_set_world(void *source, int rank, int size) {
    counter_source *s = source;
    if (size < 1 || rank < 0 || rank >= size) {
        snprintf(s->error, sizeof s->error, "counter source: rank %d of %d", rank, size);
        return -1;
    }
    s->counter = (unsigned long long)rank;
    s->step = size;
    s->rng ^= (unsigned long long)rank * 0xD1B54A32D192ED03ULL;   /* rank 0: unchanged */
    if (!s->rng) s->rng = 0x9E3779B97F4A7C15ULL;
    return 0;
}

SYMNET_DATA_EXPORT const char *symnet_data_error(void *source) {
    return ((counter_source *)source)->error;
}

SYMNET_DATA_EXPORT void symnet_data_destroy(void *source) { free(source); }

SYMNET_DATA_EXPORT int64_t symnet_data_get_state(void *source, char *buffer, size_t size) {
    counter_source *s = source;
    return snprintf(buffer, size, "%llu %llu", s->counter, s->rng);
}

SYMNET_DATA_EXPORT int symnet_data_set_state(void *source, const char *buffer, size_t size) {
    counter_source *s = source;
    char text[64];
    unsigned long long counter, rng;
    if (size >= sizeof text) size = sizeof text - 1;
    memcpy(text, buffer, size);
    text[size] = 0;
    if (sscanf(text, "%llu %llu", &counter, &rng) != 2) {
        snprintf(s->error, sizeof s->error, "counter source: bad state '%s'", text);
        return -1;
    }
    s->counter = counter;
    s->rng = rng;
    return 0;
}
