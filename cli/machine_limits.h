/* machine_limits.h: this machine's limits, measured in the same run as a benchmark so that the
 * benchmark can be reported as a fraction of them: OpenBLAS sgemm FLOP/s (the ceiling for
 * prefill, which is GEMM-bound) and memory read bandwidth (the ceiling for batch-1 decode, which
 * reads every weight once per token). */
#ifndef DUEL_CLI_MACHINE_LIMITS_H
#define DUEL_CLI_MACHINE_LIMITS_H

#include <stddef.h>

#include "error.h"

/* Best-of-repeats cblas_sgemm rate on n x n matrices (row-major, C = A B), in GFLOP/s
 * (1e9 FLOP/s, counting 2 n^3 per multiply). One untimed warm-up run first. */
int machine_measure_sgemm(int n, int repeats, double *gflops, duel_error *err);

/* Best-of-repeats streaming read rate over a buffer of `bytes` (rounded down to 4 KiB pages),
 * split across `threads` threads that each read their part once per repeat, in GB/s (1e9 B/s).
 * The buffer is written before timing so that its pages exist. */
int machine_measure_read_bandwidth(size_t bytes, int threads, int repeats, double *gb_per_s,
                                   duel_error *err);

#endif
