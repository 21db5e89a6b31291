/* timer.h: monotonic wall time for timings and progress. */
#ifndef DUEL_TIMER_H
#define DUEL_TIMER_H

#include <stdint.h>

/* Seconds from an arbitrary fixed point (CLOCK_MONOTONIC). */
double duel_time_seconds(void);
/* Milliseconds since the Unix epoch (CLOCK_REALTIME), for timestamps. */
int64_t duel_time_unix_ms(void);

#endif
