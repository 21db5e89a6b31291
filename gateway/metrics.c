/* metrics.c: histogram bookkeeping and the Prometheus text rendering (see metrics.h). */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "vote_entry.h"

/* Bucket upper bounds in seconds: 1 ms to 60 s. */
static const double BOUNDS[METRICS_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25,  0.5,    1,     2.5,  5,     10,   60};

void metrics_add_tokens(gateway_metrics *m, double now, uint64_t tokens) {
    m->generated_tokens += tokens;
    int64_t sec = (int64_t)now;
    int slot = (int)(sec % 60);
    if (m->token_window_sec[slot] != sec) m->token_window_sec[slot] = sec, m->token_window[slot] = 0;
    m->token_window[slot] += tokens;
}

double metrics_tokens_per_second(const gateway_metrics *m, double now) {
    int64_t sec = (int64_t)now;
    uint64_t sum = 0;
    for (int i = 0; i < 60; i++)
        if (sec - m->token_window_sec[i] < 60) sum += m->token_window[i];
    return sum / 60.0;
}

void metrics_observe(metrics_histogram *h, double seconds) {
    int b = 0;
    while (b < METRICS_BUCKETS && seconds > BOUNDS[b]) b++;
    h->counts[b]++;
    h->sum += seconds;
    h->count++;
}

typedef struct buf {
    char *s;
    size_t len, cap;
    int failed;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...) {
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n;
        char *ns = realloc(b->s, ncap);
        if (!ns) {
            b->failed = 1;
            return;
        }
        b->s = ns;
        b->cap = ncap;
    }
}

static void counter(buf *b, const char *name, const char *help, uint64_t v) {
    put(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
        (unsigned long long)v);
}

static void gauge(buf *b, const char *name, const char *help, double v) {
    put(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

static void histogram(buf *b, const char *name, const char *help, const metrics_histogram *h) {
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, BOUNDS[i], (unsigned long long)cum);
    }
    cum += h->counts[METRICS_BUCKETS];
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
        (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

char *metrics_render(const gateway_metrics *m, const redis_worker_stats *redis,
                     size_t engine_queue_depth, double tokens_per_second,
                     const snapshot_loader_stats *snapshots, long long serving_version,
                     size_t *len) {
    buf b = {.cap = 8192};
    if (!(b.s = malloc(b.cap))) return NULL;
    b.s[0] = '\0';
    counter(&b, "duel_gateway_connections_total", "WebSocket connections accepted.",
            m->connections_total);
    gauge(&b, "duel_gateway_connections_open", "WebSocket connections open now.",
          (double)m->connections_open);
    gauge(&b, "duel_gateway_finished_duel_bytes",
          "memory the finished duels kept for voting hold (gateway.max_duel_bytes bounds it).",
          (double)m->finished_duel_bytes);
    gauge(&b, "duel_gateway_max_connections",
          "WebSocket connections admitted at most (gateway.max_connections, capped below the "
          "descriptor limit).",
          (double)m->max_connections);
    counter(&b, "duel_gateway_connections_rejected_total",
            "Connections refused (origin, per-address or total limit, shutting down).",
            m->connections_rejected);
    counter(&b, "duel_gateway_asks_total", "Asks accepted and sent to the engine.", m->asks_total);
    counter(&b, "duel_gateway_duels_total", "Duels the engine finished.", m->duels_total);
    counter(&b, "duel_gateway_duels_failed_total", "Duels the engine failed.", m->duels_failed);
    counter(&b, "duel_gateway_duels_cancelled_total", "Duels cancelled by the user or shutdown.",
            m->duels_cancelled);
    put(&b, "# HELP duel_gateway_votes_total Votes accepted, by choice.\n"
            "# TYPE duel_gateway_votes_total counter\n");
    for (int c = 0; c <= VOTE_CHOICE_BOTH_BAD; c++)
        put(&b, "duel_gateway_votes_total{choice=\"%s\"} %llu\n", vote_choice_name((vote_choice)c),
            (unsigned long long)m->votes_by_choice[c]);
    counter(&b, "duel_gateway_votes_acknowledged_total", "vote_ok frames sent.", m->votes_acked);
    counter(&b, "duel_gateway_votes_acknowledged_queued_total",
            "vote_ok frames sent for votes in the spill log.", m->votes_queued_acked);
    counter(&b, "duel_gateway_votes_stored_total", "Votes Redis stored (live or replayed).",
            redis->votes_stored);
    counter(&b, "duel_gateway_votes_spilled_total", "Votes written to the spill log.",
            redis->votes_spilled);
    counter(&b, "duel_gateway_votes_replayed_total", "Spilled votes later stored in Redis.",
            redis->votes_replayed);
    counter(&b, "duel_gateway_votes_failed_total", "Votes neither Redis nor the spill log took.",
            redis->votes_failed);
    gauge(&b, "duel_gateway_spill_pending", "Votes in the spill log waiting for Redis.",
          (double)redis->spill_pending);
    gauge(&b, "duel_gateway_redis_up", "1 when the Redis connection is up.",
          redis->connected ? 1 : 0);
    counter(&b, "duel_gateway_frames_in_total", "WebSocket messages received.", m->frames_in);
    counter(&b, "duel_gateway_frames_out_total", "WebSocket messages sent.", m->frames_out);
    counter(&b, "duel_gateway_protocol_errors_total", "error frames sent.", m->protocol_errors);
    counter(&b, "duel_gateway_turns_dropped_total",
            "old conversation turns left out of prompts to fit the model's context.",
            m->turns_dropped);
    counter(&b, "duel_gateway_accept_backoffs_total",
            "times accepting new connections paused because no file descriptor was left.",
            m->accept_backoffs);
    gauge(&b, "duel_gateway_engine_queue_depth", "Duel requests waiting in the engine.",
          (double)engine_queue_depth);
    counter(&b, "duel_gateway_generated_tokens_total", "Tokens generated for finished duels.",
            m->generated_tokens);
    gauge(&b, "duel_gateway_tokens_per_second", "Generation rate over the last minute.",
          tokens_per_second);
    histogram(&b, "duel_gateway_time_to_duel_seconds", "From ask to duel_start.",
              &m->time_to_duel);
    histogram(&b, "duel_gateway_time_to_first_delta_seconds", "From ask to the first delta.",
              &m->time_to_first_delta);
    histogram(&b, "duel_gateway_vote_ack_seconds", "From vote received to vote_ok.",
              &m->vote_ack);
    gauge(&b, "duel_serving_policy_version",
          "Snapshot version new duels are generated by (0: the base model).",
          (double)(snapshots ? snapshots->serving_version : serving_version));
    gauge(&b, "duel_rollout_revision",
          "Revision of duel:rollout new conversations are assigned by (0: no rollout).",
          (double)m->rollout_revision);
    if (snapshots) {
        gauge(&b, "duel_snapshot_newest_seen", "Highest version in duel:snapshots at the last poll.",
              (double)snapshots->newest_seen);
        counter(&b, "duel_snapshot_loaded_total",
                "Snapshots verified and loaded (the latest, or a rollout arm's).", snapshots->loaded);
        gauge(&b, "duel_rollout_arms_pinned",
              "Snapshot versions duel:rollout's arms at a weight above 0 pin (kept resident).",
              (double)snapshots->pinned);
        counter(&b, "duel_snapshot_rejected_total",
                "Snapshots refused (bad hash, truncated, unloadable, wrong shape).",
                snapshots->rejected);
        counter(&b, "duel_snapshot_notes_total", "Snapshot notes received on duel:notify.",
                snapshots->notes);
        gauge(&b, "duel_snapshot_loader_redis_up", "1 when the loader's Redis connections are up.",
              snapshots->connected ? 1 : 0);
        /* absent until a snapshot is installed (and for meta.json files without the figure) */
        if (isfinite(snapshots->publish_to_serve_s))
            gauge(&b, "duel_snapshot_publish_to_serve_seconds",
                  "Seconds from the serving snapshot's publish (created_ms) to this gateway serving it.",
                  snapshots->publish_to_serve_s);
        if (isfinite(snapshots->vote_to_serving_s))
            gauge(&b, "duel_vote_to_serving_seconds",
                  "Mean seconds from the votes the serving snapshot is the first to hold to this gateway serving it.",
                  snapshots->vote_to_serving_s);
    }
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    if (len) *len = b.len;
    return b.s;
}
