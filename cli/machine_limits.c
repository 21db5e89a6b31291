/* machine_limits.c: the sgemm and memory-bandwidth probes (machine_limits.h). The read loop
 * uses AVX2 loads into four independent accumulators so that it is bound by memory, not by a
 * dependency chain, and its result is returned so that the compiler cannot drop the reads. */
#include "machine_limits.h"

#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "timer.h"

#define MACHINE_MAX_THREADS 64
#define MACHINE_MAX_REPEATS 101
#define MACHINE_PAGE_BYTES 4096

int machine_measure_sgemm(int n, int repeats, double *gflops, duel_error *err) {
    if (n < 16 || n > 16384 || repeats < 1)
        return duel_error_set(err, DUEL_EINVAL, "sgemm probe: bad size %d or repeats %d", n,
                              repeats);
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b),
          *c = malloc(count * sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return duel_error_set(err, DUEL_ENOMEM, "sgemm probe: cannot allocate 3 x %d^2 floats", n);
    }
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    for (size_t i = 0; i < count; i++) {
        a[i] = (float)(duel_rng_uniform(&rng) - 0.5);
        b[i] = (float)(duel_rng_uniform(&rng) - 0.5);
    }
    double best = 0.0;
    for (int r = -1; r < repeats; r++) { /* r = -1: warm-up (thread pool start, page faults) */
        double t0 = duel_time_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        double t = duel_time_seconds() - t0;
        if (r >= 0 && t > 0) {
            double rate = 2.0 * (double)n * n * n / t / 1e9;
            if (rate > best) best = rate;
        }
    }
    free(a);
    free(b);
    free(c);
    *gflops = best;
    return DUEL_OK;
}

typedef struct read_job {
    const __m256i *data;
    size_t n_vectors;
    int repeats;
    pthread_barrier_t *start; /* all threads begin each repeat together */
    pthread_barrier_t *end;
    uint64_t checksum;        /* owned by the job's thread until join */
    double *t_start, *t_end;  /* [repeats]: this thread's own timestamps of each pass */
} read_job;

static uint64_t read_once(const __m256i *p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256(p + i));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256(p + i + 1));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256(p + i + 2));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256(p + i + 3));
    }
    for (; i < n; i++) s0 = _mm256_add_epi64(s0, _mm256_load_si256(p + i));
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

static void *read_thread(void *arg) {
    read_job *job = arg;
    for (int r = 0; r < job->repeats; r++) {
        pthread_barrier_wait(job->start);
        job->t_start[r] = duel_time_seconds();
        job->checksum += read_once(job->data, job->n_vectors);
        job->t_end[r] = duel_time_seconds();
        pthread_barrier_wait(job->end);
    }
    return NULL;
}

int machine_measure_read_bandwidth(size_t bytes, int threads, int repeats, double *gb_per_s,
                                   duel_error *err) {
    bytes -= bytes % MACHINE_PAGE_BYTES;
    if (threads < 1 || threads > MACHINE_MAX_THREADS || repeats < 1 ||
        repeats + 1 > MACHINE_MAX_REPEATS ||
        bytes < (size_t)threads * MACHINE_PAGE_BYTES)
        return duel_error_set(err, DUEL_EINVAL,
                              "bandwidth probe: bad size %zu B, threads %d or repeats %d", bytes,
                              threads, repeats);
    unsigned char *buf = aligned_alloc(MACHINE_PAGE_BYTES, bytes);
    if (!buf)
        return duel_error_set(err, DUEL_ENOMEM, "bandwidth probe: cannot allocate %zu MiB",
                              bytes >> 20);
    /* Distinct values, so that no page is shared copy-on-write zero memory. */
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t v = i * 0x9E3779B97F4A7C15ull;
        memcpy(buf + i, &v, 8);
    }

    pthread_barrier_t start, end;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&end, NULL, (unsigned)threads + 1);
    read_job jobs[MACHINE_MAX_THREADS];
    /* Each pass is timed from the first thread's start to the last thread's end, by the
     * threads' own clocks: a main thread that is descheduled at a barrier cannot shorten it. */
    double times[2][MACHINE_MAX_THREADS][MACHINE_MAX_REPEATS];
    pthread_t tids[MACHINE_MAX_THREADS];
    size_t per_thread = bytes / (size_t)threads / MACHINE_PAGE_BYTES * MACHINE_PAGE_BYTES;
    int started = 0, rc = DUEL_OK;
    int total_repeats = repeats + 1; /* one warm-up pass */
    for (int t = 0; t < threads; t++) {
        jobs[t] = (read_job){(const __m256i *)(buf + (size_t)t * per_thread),
                             per_thread / sizeof(__m256i), total_repeats, &start, &end, 0,
                             times[0][t], times[1][t]};
        if (pthread_create(&tids[t], NULL, read_thread, &jobs[t]) != 0) {
            rc = duel_error_set(err, DUEL_ENOMEM, "bandwidth probe: cannot start thread %d", t);
            break;
        }
        started++;
    }
    double best = 0.0;
    if (rc == DUEL_OK) {
        for (int r = 0; r < total_repeats; r++) {
            pthread_barrier_wait(&start);
            pthread_barrier_wait(&end);
            double first = times[0][0][r], last = times[1][0][r];
            for (int t = 1; t < threads; t++) {
                if (times[0][t][r] < first) first = times[0][t][r];
                if (times[1][t][r] > last) last = times[1][t][r];
            }
            double t = last - first;
            double rate = (double)per_thread * threads / t / 1e9;
            if (r > 0 && t > 0 && rate > best) best = rate;
        }
    } else {
        /* Release the threads that did start: they wait at the start barrier, which expects
         * every thread; they cannot proceed, so they are cancelled instead. */
        for (int t = 0; t < started; t++) pthread_cancel(tids[t]);
    }
    uint64_t checksum = 0;
    for (int t = 0; t < started; t++) {
        pthread_join(tids[t], NULL);
        checksum += jobs[t].checksum;
    }
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&end);
    free(buf);
    if (rc) return rc;
    /* The checksum is the data's sum: using it keeps the reads; it is never 0 for this data. */
    *gb_per_s = checksum ? best : 0.0;
    return DUEL_OK;
}
