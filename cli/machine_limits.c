/* machine_limits.c: the sgemm and memory-bandwidth probes (machine_limits.h). The read loop
 * uses AVX2 loads into four independent accumulators so that it is bound by memory, not by a
 * dependency chain; its sum is kept in the probe so that the compiler cannot drop the reads. */
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
#define MACHINE_PAGE_BYTES 4096

struct machine_probe {
    int n;
    float *a, *b, *c;       /* n x n each */
    unsigned char *buf;     /* bandwidth_bytes, page aligned */
    size_t per_thread;      /* bytes each thread reads, a multiple of the page size */
    int threads;
    uint64_t checksum;      /* sum of everything read: keeps the reads observable */
};

void machine_probe_free(machine_probe *p) {
    if (!p) return;
    free(p->a);
    free(p->b);
    free(p->c);
    free(p->buf);
    free(p);
}

int machine_probe_create(int sgemm_n, size_t bandwidth_bytes, int bandwidth_threads,
                         machine_probe **out, duel_error *err) {
    *out = NULL;
    bandwidth_bytes -= bandwidth_bytes % MACHINE_PAGE_BYTES;
    if (sgemm_n < 16 || sgemm_n > 16384)
        return duel_error_set(err, DUEL_EINVAL, "sgemm probe: bad size %d", sgemm_n);
    if (bandwidth_threads < 1 || bandwidth_threads > MACHINE_MAX_THREADS ||
        bandwidth_bytes < (size_t)bandwidth_threads * MACHINE_PAGE_BYTES)
        return duel_error_set(err, DUEL_EINVAL, "bandwidth probe: bad size %zu B or threads %d",
                              bandwidth_bytes, bandwidth_threads);
    machine_probe *p = calloc(1, sizeof *p);
    if (!p) return duel_error_set(err, DUEL_ENOMEM, "machine probe: out of memory");
    size_t count = (size_t)sgemm_n * (size_t)sgemm_n;
    p->n = sgemm_n;
    p->threads = bandwidth_threads;
    p->per_thread = bandwidth_bytes / (size_t)bandwidth_threads / MACHINE_PAGE_BYTES *
                    MACHINE_PAGE_BYTES;
    p->a = malloc(count * sizeof *p->a);
    p->b = malloc(count * sizeof *p->b);
    p->c = malloc(count * sizeof *p->c);
    p->buf = aligned_alloc(MACHINE_PAGE_BYTES, bandwidth_bytes);
    if (!p->a || !p->b || !p->c || !p->buf) {
        machine_probe_free(p);
        return duel_error_set(err, DUEL_ENOMEM,
                              "machine probe: cannot allocate 3 x %d^2 floats and %zu MiB",
                              sgemm_n, bandwidth_bytes >> 20);
    }
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    for (size_t i = 0; i < count; i++) {
        p->a[i] = (float)(duel_rng_uniform(&rng) - 0.5);
        p->b[i] = (float)(duel_rng_uniform(&rng) - 0.5);
    }
    /* Distinct values, so that no page is shared copy-on-write zero memory. */
    for (size_t i = 0; i < bandwidth_bytes; i += 8) {
        uint64_t v = i * 0x9E3779B97F4A7C15ull;
        memcpy(p->buf + i, &v, 8);
    }
    double ignored;
    int rc = machine_probe_sgemm(p, &ignored, err); /* warm-ups: thread pools, caches, TLB */
    if (rc == 0) rc = machine_probe_bandwidth(p, &ignored, err);
    if (rc) {
        machine_probe_free(p);
        return rc;
    }
    *out = p;
    return DUEL_OK;
}

int machine_sgemm_best(int n, int repeats, double *best, duel_error *err) {
    machine_probe *probe = NULL;
    int rc = machine_probe_create(n, (size_t)1 << 20, 1, &probe, err);
    for (int i = 0; rc == 0 && i < repeats; i++) {
        double g;
        if ((rc = machine_probe_sgemm(probe, &g, err)) == 0 && g > *best) *best = g;
    }
    machine_probe_free(probe);
    return rc;
}

int machine_probe_sgemm(machine_probe *p, double *gflops, duel_error *err) {
    (void)err;
    int n = p->n;
    double t0 = duel_time_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, p->a, n, p->b, n, 0.0f,
                p->c, n);
    double t = duel_time_seconds() - t0;
    *gflops = t > 0 ? 2.0 * (double)n * n * n / t / 1e9 : 0.0;
    return DUEL_OK;
}

typedef struct read_job {
    const __m256i *data;
    size_t n_vectors;
    uint64_t sum;           /* owned by the job's thread until join */
    double t_start, t_end;  /* the thread's own clock around its read */
} read_job;

static void *read_thread(void *arg) {
    read_job *job = arg;
    const __m256i *p = job->data;
    size_t n = job->n_vectors, i = 0;
    job->t_start = duel_time_seconds();
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (; i + 4 <= n; i += 4) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256(p + i));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256(p + i + 1));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256(p + i + 2));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256(p + i + 3));
    }
    for (; i < n; i++) s0 = _mm256_add_epi64(s0, _mm256_load_si256(p + i));
    job->t_end = duel_time_seconds();
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    job->sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    return NULL;
}

int machine_probe_bandwidth(machine_probe *p, double *gb_per_s, duel_error *err) {
    read_job jobs[MACHINE_MAX_THREADS];
    pthread_t tids[MACHINE_MAX_THREADS];
    int started = 0, rc = DUEL_OK;
    for (int t = 0; t < p->threads; t++) {
        jobs[t] = (read_job){(const __m256i *)(p->buf + (size_t)t * p->per_thread),
                             p->per_thread / sizeof(__m256i), 0, 0, 0};
        if (pthread_create(&tids[t], NULL, read_thread, &jobs[t]) != 0) {
            rc = duel_error_set(err, DUEL_ENOMEM, "bandwidth probe: cannot start thread %d", t);
            break;
        }
        started++;
    }
    double first = 0, last = 0;
    for (int t = 0; t < started; t++) {
        pthread_join(tids[t], NULL);
        p->checksum += jobs[t].sum;
        if (t == 0 || jobs[t].t_start < first) first = jobs[t].t_start;
        if (t == 0 || jobs[t].t_end > last) last = jobs[t].t_end;
    }
    if (rc) return rc;
    double t = last - first;
    *gb_per_s = t > 0 ? (double)p->per_thread * p->threads / t / 1e9 : 0.0;
    return DUEL_OK;
}
