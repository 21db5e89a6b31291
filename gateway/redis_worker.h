/* redis_worker.h: the gateway's Redis thread. It owns the hiredis connection (synchronous API with
 * connect and command timeouts) and the spill log, and serves jobs queued by the lws thread:
 * - votes: XADDed to duel:prefs through a script that skips a vote id already claimed
 *   (duel:vote:{vote_id}) and claims it after the XADD,
 *   so a vote replayed after an unanswered XADD is stored once. Acknowledged as stored when Redis
 *   answered; when Redis is down or slow the vote is appended to the fsynced spill log and
 *   acknowledged as queued; spilled votes are replayed in order as soon as Redis answers again,
 *   and new votes go behind them (to the log) until it is empty.
 * - conversation saves (HSET duel:conv:{id} + EXPIRE in one script; dropped when Redis is away)
 *   and loads.
 * - the rollout (GET duel:rollout every rollout_poll_ms), published with a generation number
 *   that changes only when its text does.
 * Results are reported through a callback run on this thread (the gateway queues them and wakes
 * lws). redis_worker_stop drains the queue first: every submitted vote ends stored or spilled. */
#ifndef DUEL_GATEWAY_REDIS_WORKER_H
#define DUEL_GATEWAY_REDIS_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "vote_entry.h"

struct redis_link_config;

typedef struct redis_worker_config {
    const struct redis_link_config *link; /* sentinels, ack_replicas (redis_link.h); NULL: host:port, no WAIT */
    const char *host;
    int port;
    int timeout_ms;            /* connect and per-command timeout */
    int retry_ms;              /* wait between reconnect attempts */
    const char *spill_path;    /* spill log file */
    const char *stream_key;    /* "duel:prefs" */
    long long conversation_ttl_s;
    long long vote_dedup_ttl_s; /* lifetime of duel:vote:{id} markers */
    int rollout_poll_ms;
    /* Tests only (NULL in production): asked before each pipelined command (its name, e.g.
     * "EVAL") is appended; true makes that append fail as an out-of-memory hiredis would. */
    bool (*append_fault)(void *fault_ctx, const char *command);
    void *fault_ctx;
} redis_worker_config;

typedef enum redis_result_kind {
    REDIS_RESULT_VOTE,         /* a vote was stored (queued=false) or spilled (queued=true) */
    REDIS_RESULT_VOTE_FAILED,  /* neither Redis nor the spill log took it */
    REDIS_RESULT_CONVERSATION, /* a load finished: json is the hash as JSON, or NULL */
} redis_result_kind;

typedef struct redis_result {
    redis_result_kind kind;
    uint64_t conn_id;
    char key[33];      /* duel id (votes) or conversation id */
    bool queued;
    char *json;        /* conversation: {"turns":..., "arm":..., "created":...}; callee frees */
} redis_result;

/* Runs on the Redis thread. Takes ownership of result->json. */
typedef void (*redis_result_fn)(void *ctx, redis_result *result);

typedef struct redis_worker redis_worker;

typedef struct redis_worker_stats {
    uint64_t votes_stored;     /* XADDs Redis answered (live or replayed) */
    uint64_t votes_spilled;    /* votes appended to the spill log */
    uint64_t votes_replayed;   /* spilled votes later stored */
    uint64_t votes_failed;
    uint64_t votes_unreplicated; /* pipelines WAIT found on fewer replicas than redis.ack_replicas */
    uint64_t spill_pending;    /* in the log, not yet replayed */
    uint64_t spill_corrupt;    /* records skipped at open for a bad CRC */
    bool connected;
} redis_worker_stats;

/* Opens the spill log (replaying it starts once Redis answers) and starts the thread. */
int redis_worker_create(const redis_worker_config *cfg, redis_result_fn on_result, void *ctx,
                        redis_worker **out, duel_error *err);
/* Queues jobs; ownership of rec / json passes to the worker (also on failure). */
int redis_worker_submit_vote(redis_worker *w, uint64_t conn_id, const char *duel_id,
                             vote_entry_encoded *rec);
int redis_worker_save_conversation(redis_worker *w, const char *conv_id, char *json);
int redis_worker_load_conversation(redis_worker *w, uint64_t conn_id, const char *conv_id);
void redis_worker_get_stats(redis_worker *w, redis_worker_stats *out);
/* Whether duel:rollout changed since generation *seen (0 before the first call; the caller keeps
 * it): when it did, *json is a malloc'd copy of the new text (NULL: the key is gone), *seen is
 * updated and the result is true; otherwise *json is NULL and the result false. So the lws
 * thread parses the spec once per change, not per conversation. */
bool redis_worker_rollout_changed(redis_worker *w, uint64_t *seen, char **json);
/* Votes submitted and not yet stored, spilled or failed. */
size_t redis_worker_votes_in_flight(redis_worker *w);
/* Finishes every queued job (votes to Redis or the spill log), then stops the thread. */
void redis_worker_stop(redis_worker *w);
void redis_worker_destroy(redis_worker *w);

#endif
