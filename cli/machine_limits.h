/* machine_limits.h: this machine's limits, measured in the same run as a benchmark so that the
 * benchmark can be reported as a fraction of them: OpenBLAS sgemm FLOP/s (the ceiling for
 * prefill, which is GEMM-bound) and memory read bandwidth (the ceiling for batch-1 decode, which
 * reads every weight once per token). A probe allocates and warms its buffers once, so that the
 * benchmark can interleave single measurements with its own runs: on a shared machine both then
 * get the same chances at quiet moments, and the best of each is compared. */
#ifndef DUEL_CLI_MACHINE_LIMITS_H
#define DUEL_CLI_MACHINE_LIMITS_H

#include <stddef.h>

#include "error.h"

typedef struct machine_probe machine_probe;

/* sgemm_n: side of the square matrices (C = A B, row-major). bandwidth_bytes: the read buffer
 * (rounded down to 4 KiB pages; far larger than the caches), split across bandwidth_threads.
 * Allocates, writes every page, and runs one untimed warm-up of each measurement. */
int machine_probe_create(int sgemm_n, size_t bandwidth_bytes, int bandwidth_threads,
                         machine_probe **out, duel_error *err);
void machine_probe_free(machine_probe *p);

/* One timed cblas_sgemm, in GFLOP/s (1e9 FLOP/s, counting 2 n^3). */
int machine_probe_sgemm(machine_probe *p, double *gflops, duel_error *err);

/* Raises *best to the best of `repeats` sgemm probes of side n, with a probe created and freed
 * here (for a benchmark that measures the ceiling once or twice rather than interleaved). */
int machine_sgemm_best(int n, int repeats, double *best, duel_error *err);

/* One timed read of the whole buffer by all threads at once, in GB/s (1e9 B/s), timed from the
 * first thread's start to the last thread's end by the threads' own clocks. */
int machine_probe_bandwidth(machine_probe *p, double *gb_per_s, duel_error *err);

#endif
