/* trainer_metrics.h: the trainer's figures as Prometheus text (the body of `duel train
 * --metrics HOST:PORT`'s /metrics): the same figures as its duel:stats entries (common/stats.h)
 * plus its counters since start. Names start with duel_trainer_; docs/OPERATIONS.md lists them. */
#ifndef DUEL_TRAINER_METRICS_H
#define DUEL_TRAINER_METRICS_H

#include <stddef.h>

#include "online_trainer.h"
#include "stats.h"
#include "stream_consumer.h"

/* malloc'd text (NULL on out of memory); *len its length. */
char *trainer_metrics_render(const stats_trainer *figures, const online_trainer_status *status,
                             const stream_consumer_stats *consumer, size_t *len);

#endif
