/* timer.h: monotonic wall time for timings and progress; process CPU time for benchmarks. */
#ifndef DUEL_TIMER_H
#define DUEL_TIMER_H

#include <stdint.h>

/* Seconds from an arbitrary fixed point (CLOCK_MONOTONIC). */
double duel_time_seconds(void);
/* CPU seconds used by this process, all its threads (CLOCK_PROCESS_CPUTIME_ID): a benchmark's
 * work measure that time on a machine busy with other work does not inflate. */
double duel_process_cpu_seconds(void);
/* Milliseconds since the Unix epoch (CLOCK_REALTIME), for timestamps. */
int64_t duel_time_unix_ms(void);

#endif
