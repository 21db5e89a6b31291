/* metrics.h: the gateway's Prometheus metrics (text exposition format 0.0.4). Counters, gauges
 * and two latency histograms, all updated on the lws thread; values that live on other threads
 * (Redis worker stats, engine queue depth) are passed in when rendering. */
#ifndef DUEL_GATEWAY_METRICS_H
#define DUEL_GATEWAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "redis_worker.h"
#include "snapshot_loader.h"

#define METRICS_BUCKETS 14

typedef struct metrics_histogram {
    uint64_t counts[METRICS_BUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t count;
} metrics_histogram;

typedef struct gateway_metrics {
    uint64_t connections_total;
    int64_t connections_open;
    int64_t finished_duel_bytes; /* memory the finished duels kept for voting hold */
    int64_t max_connections;    /* websockets admitted at most (gateway.max_connections, capped
                                   below the descriptor limit) */
    uint64_t connections_rejected;
    uint64_t asks_total;
    uint64_t duels_total;       /* duels the backend finished */
    uint64_t duels_failed;
    uint64_t duels_cancelled;
    uint64_t votes_by_choice[4]; /* a, b, tie, both_bad (accepted by the gateway) */
    uint64_t votes_acked;
    uint64_t votes_queued_acked;
    uint64_t frames_in, frames_out;
    uint64_t protocol_errors;
    uint64_t turns_dropped;     /* old turns left out of prompts to fit the model's context */
    uint64_t accept_backoffs;   /* times accepting paused: no file descriptor left (EMFILE) */
    uint64_t generated_tokens;
    metrics_histogram time_to_duel;        /* seconds from ask to duel_start */
    metrics_histogram time_to_first_delta; /* seconds from ask to the first delta sent */
    metrics_histogram vote_ack;            /* seconds from vote to vote_ok */
    uint64_t token_window[60];             /* tokens generated per second of the last minute */
    int64_t token_window_sec[60];          /* the second each slot counts */
    long long rollout_revision;            /* duel:rollout's revision the router serves (0: none) */
} gateway_metrics;

void metrics_observe(metrics_histogram *h, double seconds);
/* Counts tokens generated at time now (seconds) for the tokens-per-second gauge. */
void metrics_add_tokens(gateway_metrics *m, double now, uint64_t tokens);
/* Tokens generated per second over the minute before now. */
double metrics_tokens_per_second(const gateway_metrics *m, double now);

/* Renders everything into a malloc'd string (NULL on out of memory). snapshots: the loader's
 * stats, NULL without a loader (the serving version is then serving_version). */
char *metrics_render(const gateway_metrics *m, const redis_worker_stats *redis,
                     size_t engine_queue_depth, double tokens_per_second,
                     const snapshot_loader_stats *snapshots, long long serving_version,
                     size_t *len);

#endif
