/* server.c: the gateway's lws server (see gateway.h). Owns the lws context, every session,
 * the conversation cache, the duel table and the per-address limits; all of it is touched only
 * on the lws service thread (gateway_run). The backend and Redis threads hand results over
 * through the inbox (inbox_mu) and wake lws with lws_cancel_service; frames go out only from
 * LWS_CALLBACK_SERVER_WRITEABLE, one per callback, from the session's outbox.
 *
 * A duel's life: ask -> RUNNING (progress frames) -> backend ready -> STREAMING (duel_start, delta
 * frames a/b interleaved, paced by a per-connection timer) -> FINISHED (duel_end; votable until it
 * expires) -> VOTED (a tombstone, so a second vote is refused). Cancel, engine errors, a closed
 * connection or shutdown end a duel early (CANCELLED / FAILED; freed at once). */
#include <jansson.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "gateway.h"
#include "metrics.h"
#include "protocol.h"
#include "redis_worker.h"
#include "str_map.h"
#include "timer.h"
#include "vote_entry.h"

#define OUTBOX_MAX_BYTES (8u << 20) /* a client this far behind is dropped */
#define MAX_STATIC_FILES 32
#define HOUSEKEEPING_US 200000      /* 200 ms */
#define CONV_CACHE_SOFT_MAX 50000
#define PROTOCOL_NAME "duel.v1"

typedef struct outframe {
    struct outframe *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE bytes of headroom, then the payload */
} outframe;

typedef struct conversation {
    char id[PROTOCOL_ID_LEN + 1];
    char **user, **assistant;
    size_t n_turns, cap;
    long long arm;
    int64_t created_ms;
    double last_used;
    int refs;                            /* sessions attached */
    char last_duel[PROTOCOL_ID_LEN + 1]; /* only its answer may join the history */
} conversation;

typedef enum duel_state { DS_RUNNING, DS_STREAMING, DS_FINISHED, DS_VOTED } duel_state;

typedef struct duel_rec {
    char id[PROTOCOL_ID_LEN + 1];
    char conv_id[PROTOCOL_ID_LEN + 1];
    char request_key[24];
    uint64_t conn_id;
    duel_state state;
    char *user_text;
    long long arm;
    duel_backend_result *result;
    char *text_a, *text_b; /* sanitised */
    size_t len_a, len_b, pos_a, pos_b;
    double t_ask, t_vote, finished_at;
    bool first_delta_sent;
    struct duel_rec *expire_next;
} duel_rec;

typedef struct addr_state {
    int connections;
    double tokens, last;
} addr_state;

typedef struct session {
    uint64_t conn_id;
    char key[24];
    struct lws *wsi;
    char addr[64];
    conversation *conv;
    bool hello_done, hello_pending;
    char *rx;
    size_t rx_len;
    bool rx_overflow, rx_binary;
    outframe *out_head, *out_tail;
    size_t out_bytes;
    duel_rec *duel; /* RUNNING or STREAMING */
    double tokens, last;
    int errors;
    bool close_after_flush;
} session;

typedef enum inbox_kind { INBOX_BACKEND, INBOX_REDIS } inbox_kind;

typedef struct inbox_item {
    inbox_kind kind;
    duel_backend_event ev;
    redis_result rr;
    struct inbox_item *next;
} inbox_item;

typedef struct static_file {
    char url[80];
    char path[1200];
    const char *mime;
} static_file;

struct gateway {
    gateway_config cfg;
    duel_backend backend;
    bool backend_started;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    struct lws_protocols protocols[3];
    int port;
    redis_worker *redis;
    snapshot_loader *loader; /* NULL unless cfg.snapshot_loader */

    pthread_mutex_t inbox_mu;
    inbox_item *inbox_head, *inbox_tail;
    bool ctx_alive; /* guarded by inbox_mu: lws_cancel_service is safe */
    atomic_bool stop_requested;
    bool draining;
    double drain_deadline;

    str_map sessions, convs, duels, requests, addrs;
    duel_rec *expire_head, *expire_tail;
    size_t finished_duels;
    uint64_t next_conn_id, next_request_id;
    gateway_metrics metrics;
    static_file files[MAX_STATIC_FILES];
    int n_files;
    lws_sorted_usec_list_t sul;
    uint64_t token_window[60];
    int64_t token_window_sec[60];
};

typedef struct http_pss {
    unsigned char *body; /* LWS_PRE headroom + payload */
    size_t len;
} http_pss;

/* ---- small helpers ---------------------------------------------------------------------- */

static int random_id(char out[PROTOCOL_ID_LEN + 1]) {
    unsigned char b[PROTOCOL_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t r = getrandom(b + got, sizeof b - got, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    static const char HEX[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof b; i++) {
        out[2 * i] = HEX[b[i] >> 4];
        out[2 * i + 1] = HEX[b[i] & 15];
    }
    out[PROTOCOL_ID_LEN] = '\0';
    return 0;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Token bucket: capacity per_minute, refilled per_minute / 60 per second. */
static bool bucket_take(double *tokens, double *last, int per_minute, double now) {
    if (*last == 0) *tokens = per_minute, *last = now;
    *tokens += (now - *last) * per_minute / 60.0;
    if (*tokens > per_minute) *tokens = per_minute;
    *last = now;
    if (*tokens < 1) return false;
    *tokens -= 1;
    return true;
}

/* ---- outbox ----------------------------------------------------------------------------- */

static void session_close_soon(session *s) {
    s->close_after_flush = true;
    lws_callback_on_writable(s->wsi);
}

/* Queues json (takes ownership; NULL is ignored) and asks for a WRITEABLE callback. */
static void send_frame(gateway *gw, session *s, char *json) {
    if (!json) return;
    size_t len = strlen(json);
    if (s->out_bytes + len > OUTBOX_MAX_BYTES) {
        free(json);
        session_close_soon(s);
        return;
    }
    outframe *f = malloc(sizeof *f + LWS_PRE + len);
    if (!f) {
        free(json);
        return;
    }
    f->next = NULL;
    f->len = len;
    memcpy(f->buf + LWS_PRE, json, len);
    free(json);
    if (s->out_tail) s->out_tail->next = f;
    else s->out_head = f;
    s->out_tail = f;
    s->out_bytes += len;
    gw->metrics.frames_out++;
    lws_callback_on_writable(s->wsi);
}

static void send_error(gateway *gw, session *s, protocol_error_code code, const char *message) {
    gw->metrics.protocol_errors++;
    send_frame(gw, s, protocol_encode_error(code, message, NULL));
}

static session *find_session(gateway *gw, uint64_t conn_id) {
    char key[24];
    snprintf(key, sizeof key, "%016llx", (unsigned long long)conn_id);
    return str_map_get(&gw->sessions, key);
}

/* ---- conversations ---------------------------------------------------------------------- */

static void conv_free(conversation *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_turns; i++) {
        free(c->user[i]);
        free(c->assistant[i]);
    }
    free(c->user);
    free(c->assistant);
    free(c);
}

static int conv_append(conversation *c, const char *user, const char *assistant) {
    if (c->n_turns == c->cap) {
        size_t ncap = c->cap ? 2 * c->cap : 8;
        char **u = realloc(c->user, ncap * sizeof *u);
        if (!u) return -1;
        c->user = u;
        char **a = realloc(c->assistant, ncap * sizeof *a);
        if (!a) return -1;
        c->assistant = a;
        c->cap = ncap;
    }
    char *u = strdup(user), *a = strdup(assistant);
    if (!u || !a) {
        free(u);
        free(a);
        return -1;
    }
    c->user[c->n_turns] = u;
    c->assistant[c->n_turns] = a;
    c->n_turns++;
    return 0;
}

static long long pick_arm(gateway *gw, const char *conv_id) {
    char *text = redis_worker_rollout(gw->redis);
    if (!text) return -1;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    free(text);
    json_t *arms = root ? json_object_get(root, "arms") : NULL;
    long long total = 0, chosen = -1;
    size_t i;
    json_t *arm;
    json_array_foreach(arms, i, arm) {
        json_t *w = json_object_get(arm, "weight");
        if (json_is_integer(w) && json_integer_value(w) > 0) total += json_integer_value(w);
    }
    if (total > 0) {
        long long point = (long long)(fnv1a(conv_id) % (uint64_t)total);
        json_array_foreach(arms, i, arm) {
            json_t *w = json_object_get(arm, "weight");
            json_t *snap = json_object_get(arm, "snapshot");
            if (!json_is_integer(w) || json_integer_value(w) <= 0) continue;
            point -= json_integer_value(w);
            if (point < 0) {
                chosen = json_is_integer(snap) ? json_integer_value(snap) : -1;
                break;
            }
        }
    }
    json_decref(root);
    return chosen;
}

static conversation *conv_new(gateway *gw, const char *id) {
    conversation *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (id) snprintf(c->id, sizeof c->id, "%s", id);
    else if (random_id(c->id)) {
        free(c);
        return NULL;
    }
    c->created_ms = duel_time_unix_ms();
    c->last_used = duel_time_seconds();
    c->arm = -1;
    if (str_map_put(&gw->convs, c->id, c)) {
        free(c);
        return NULL;
    }
    return c;
}

static void conv_save(gateway *gw, const conversation *c) {
    json_t *turns = json_array();
    for (size_t i = 0; turns && i < c->n_turns; i++)
        json_array_append_new(turns, json_pack("{s:s, s:s}", "user", c->user[i], "assistant",
                                               c->assistant[i]));
    json_t *obj = json_pack("{s:o, s:I, s:I}", "turns", turns, "arm", (json_int_t)c->arm,
                            "created", (json_int_t)c->created_ms);
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text) redis_worker_save_conversation(gw->redis, c->id, text);
}

static void send_welcome(gateway *gw, session *s, bool resumed) {
    conversation *c = s->conv;
    protocol_welcome_limits lim = {gw->cfg.max_frame_bytes, gw->cfg.max_ask_bytes,
                                   gw->cfg.asks_per_minute_connection, gw->cfg.max_turns};
    send_frame(gw, s,
               protocol_encode_welcome(c->id, &lim, resumed, (const char *const *)c->user,
                                       (const char *const *)c->assistant, c->n_turns, NULL));
}

static void attach_conv(session *s, conversation *c) {
    s->conv = c;
    c->refs++;
    c->last_used = duel_time_seconds();
    s->hello_done = true;
    s->hello_pending = false;
}

/* ---- duels ------------------------------------------------------------------------------ */

static void duel_free(duel_rec *d) {
    if (!d) return;
    free(d->user_text);
    duel_backend_result_free(d->result);
    free(d->text_a);
    free(d->text_b);
    free(d);
}

/* Forgets a duel that never reached FINISHED (it is in no expiry list). */
static void duel_drop(gateway *gw, duel_rec *d) {
    str_map_remove(&gw->duels, d->id);
    str_map_remove(&gw->requests, d->request_key);
    duel_free(d);
}

/* Ends a RUNNING or STREAMING duel early: cancels generation and tells the client. */
static void duel_abort(gateway *gw, session *s, duel_rec *d, bool tell) {
    gw->metrics.duels_cancelled++;
    if (s && tell) {
        send_frame(gw, s, protocol_encode_duel_end(d->id, true, NULL));
    }
    if (s) {
        s->duel = NULL;
        lws_set_timer_usecs(s->wsi, LWS_SET_TIMER_USEC_CANCEL);
    }
    duel_drop(gw, d);
}

static void cancel_request(gateway *gw, duel_rec *d) {
    if (d->state == DS_RUNNING) {
        uint64_t id = strtoull(d->request_key, NULL, 16);
        gw->backend.cancel(gw->backend.impl, id);
    }
}

static void duel_finish(gateway *gw, duel_rec *d) {
    d->state = DS_FINISHED;
    d->finished_at = duel_time_seconds();
    str_map_remove(&gw->requests, d->request_key);
    if (gw->expire_tail) gw->expire_tail->expire_next = d;
    else gw->expire_head = d;
    gw->expire_tail = d;
    gw->finished_duels++;
}

/* Next delta of text starting at pos: at least min bytes, then up to just after a word break
 * (so chunks read as words). Breaks only after ASCII whitespace or, for long runs without
 * spaces, before a UTF-8 lead byte. */
static size_t chunk_end(const char *text, size_t len, size_t pos, size_t min) {
    size_t end = pos + min;
    if (end >= len) return len;
    size_t hard = end + 48 < len ? end + 48 : len;
    while (end < hard && !(text[end - 1] == ' ' || text[end - 1] == '\n')) end++;
    if (end == hard && hard < len)
        while (end > pos + 1 && ((unsigned char)text[end] & 0xC0) == 0x80) end--;
    return end;
}

static void stream_step(gateway *gw, session *s) {
    duel_rec *d = s->duel;
    if (!d || d->state != DS_STREAMING) return;
    size_t min = (size_t)gw->cfg.stream_chunk_bytes;
    if (d->pos_a < d->len_a) {
        size_t e = chunk_end(d->text_a, d->len_a, d->pos_a, min);
        send_frame(gw, s, protocol_encode_delta(d->id, 'a', d->text_a + d->pos_a, e - d->pos_a, NULL));
        d->pos_a = e;
    }
    if (d->pos_b < d->len_b) {
        size_t e = chunk_end(d->text_b, d->len_b, d->pos_b, min);
        send_frame(gw, s, protocol_encode_delta(d->id, 'b', d->text_b + d->pos_b, e - d->pos_b, NULL));
        d->pos_b = e;
    }
    if (!d->first_delta_sent) {
        d->first_delta_sent = true;
        metrics_observe(&gw->metrics.time_to_first_delta, duel_time_seconds() - d->t_ask);
    }
    if (d->pos_a >= d->len_a && d->pos_b >= d->len_b) {
        send_frame(gw, s, protocol_encode_duel_end(d->id, false, NULL));
        s->duel = NULL;
        duel_finish(gw, d);
        return;
    }
    if (gw->cfg.stream_interval_ms > 0)
        lws_set_timer_usecs(s->wsi, (lws_usec_t)gw->cfg.stream_interval_ms * 1000);
    /* With no interval the next step runs from the WRITEABLE callback once the outbox drains. */
}

static void expire_duels(gateway *gw, double now) {
    while (gw->expire_head) {
        duel_rec *d = gw->expire_head;
        bool too_many = gw->finished_duels > (size_t)gw->cfg.max_duels;
        if (!too_many && d->finished_at + gw->cfg.duel_retention_s > now) break;
        gw->expire_head = d->expire_next;
        if (!gw->expire_head) gw->expire_tail = NULL;
        gw->finished_duels--;
        str_map_remove(&gw->duels, d->id);
        duel_free(d);
    }
}

/* ---- votes ------------------------------------------------------------------------------ */

/* The duel:prefs entry of a vote on d (vote_entry.h's encoder: what it writes, the trainer
 * reads). Fails when the entry could not be encoded; err says why. */
static int build_vote(const duel_rec *d, vote_choice choice, vote_entry_encoded *out,
                      duel_error *err) {
    const duel_backend_result *r = d->result;
    bool b_won = choice == VOTE_CHOICE_B;
    vote_entry e = {0};
    if (random_id(e.vote_id)) return duel_error_set(err, DUEL_EIO, "no random bytes for a vote id");
    if (snprintf(e.strategy, sizeof e.strategy, "%s", r->strategy ? r->strategy : "") >= (int)sizeof e.strategy ||
        snprintf(e.model_id, sizeof e.model_id, "%s", r->model_id ? r->model_id : "") >= (int)sizeof e.model_id)
        return duel_error_set(err, DUEL_EFORMAT, "the strategy or model id is longer than %d bytes",
                              VOTE_ENTRY_MAX_ID);
    snprintf(e.duel_id, sizeof e.duel_id, "%s", d->id);
    snprintf(e.conversation, sizeof e.conversation, "%s", d->conv_id);
    e.ts_ms = duel_time_unix_ms();
    e.arm = d->arm;
    e.policy_version = r->policy_version;
    e.choice = choice;
    e.side_swap = r->side_swap ? 1 : 0;
    e.num_candidates = r->num_candidates;
    e.d_feat = r->d_feat;
    e.num_heads = r->num_heads;
    e.chosen_idx = b_won ? r->cand_b : r->cand_a;
    e.rejected_idx = b_won ? r->cand_a : r->cand_b;
    e.n_prompt_tokens = r->n_prompt_tokens > INT32_MAX ? -1 : (int)r->n_prompt_tokens;
    e.n_cand_tokens = r->n_cand_tokens > INT32_MAX ? -1 : (int)r->n_cand_tokens;
    e.prompt_tokens = r->prompt_tokens;
    e.cand_tokens = r->cand_tokens;
    e.cand_offsets = r->cand_offsets;
    e.features = r->features;
    e.erm_rewards = r->rewards;
    /* The reference's log-probability of every candidate (the engine's reference pass): the
     * trainer's DPO reference, so that it need not run the reference model itself. */
    e.ref_logprobs = r->ref_logprobs;
    vote_entry_texts texts = {r->gen_params_json, r->prompt_text ? r->prompt_text : d->user_text,
                              b_won ? d->text_b : d->text_a, b_won ? d->text_a : d->text_b};
    return vote_entry_encode(&e, &texts, out, err);
}

/* ---- client messages -------------------------------------------------------------------- */

static long long count_tokens(gateway *gw, const char *text) {
    size_t n = strlen(text);
    if (gw->backend.count_tokens) return gw->backend.count_tokens(gw->backend.impl, text, n);
    return (long long)(n + 3) / 4;
}

static void handle_hello(gateway *gw, session *s, const protocol_msg *m) {
    if (s->hello_done || s->hello_pending) {
        send_error(gw, s, PROTOCOL_E_DUPLICATE_HELLO, "this connection already said hello");
        return;
    }
    if (m->has_conversation) {
        conversation *c = str_map_get(&gw->convs, m->conversation);
        if (c) {
            attach_conv(s, c);
            send_welcome(gw, s, true);
            return;
        }
        /* Not cached here: another gateway may have it in Redis. */
        s->hello_pending = true;
        if (redis_worker_load_conversation(gw->redis, s->conn_id, m->conversation) == 0) return;
        s->hello_pending = false;
    }
    conversation *c = conv_new(gw, NULL);
    if (!c) {
        send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    c->arm = pick_arm(gw, c->id);
    attach_conv(s, c);
    send_welcome(gw, s, false);
}

static void handle_ask(gateway *gw, session *s, protocol_msg *m) {
    if (!s->hello_done) {
        send_error(gw, s, PROTOCOL_E_HELLO_REQUIRED, "send hello first");
        return;
    }
    if (gw->draining) {
        send_error(gw, s, PROTOCOL_E_SHUTTING_DOWN, "the server is shutting down");
        return;
    }
    if (s->duel) {
        send_error(gw, s, PROTOCOL_E_BUSY, "a duel is still running on this connection");
        return;
    }
    conversation *c = s->conv;
    if ((int)c->n_turns >= gw->cfg.max_turns) {
        send_error(gw, s, PROTOCOL_E_TURN_LIMIT, "this conversation has reached its turn limit");
        return;
    }
    long long tokens = count_tokens(gw, m->text);
    for (size_t i = 0; i < c->n_turns; i++)
        tokens += count_tokens(gw, c->user[i]) + count_tokens(gw, c->assistant[i]);
    if (tokens > gw->cfg.max_context_tokens) {
        send_error(gw, s, PROTOCOL_E_CONTEXT_LIMIT,
                   "the conversation is too long; start a new one");
        return;
    }
    double now = duel_time_seconds();
    addr_state *as = str_map_get(&gw->addrs, s->addr);
    if (!bucket_take(&s->tokens, &s->last, gw->cfg.asks_per_minute_connection, now) ||
        (as && !bucket_take(&as->tokens, &as->last, gw->cfg.asks_per_minute_address, now))) {
        send_error(gw, s, PROTOCOL_E_RATE_LIMITED, "too many questions; wait a moment");
        return;
    }
    duel_rec *d = calloc(1, sizeof *d);
    if (!d || random_id(d->id)) {
        free(d);
        send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    uint64_t request_id = ++gw->next_request_id;
    snprintf(d->request_key, sizeof d->request_key, "%016llx", (unsigned long long)request_id);
    memcpy(d->conv_id, c->id, sizeof d->conv_id);
    d->conn_id = s->conn_id;
    d->state = DS_RUNNING;
    d->user_text = m->text;
    m->text = NULL;
    d->arm = c->arm;
    d->t_ask = now;
    if (str_map_put(&gw->duels, d->id, d) || str_map_put(&gw->requests, d->request_key, d)) {
        str_map_remove(&gw->duels, d->id);
        duel_free(d);
        send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    duel_backend_turn *hist = calloc(c->n_turns ? c->n_turns : 1, sizeof *hist);
    if (!hist) {
        duel_drop(gw, d);
        send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < c->n_turns; i++) hist[i] = (duel_backend_turn){c->user[i], c->assistant[i]};
    duel_backend_request req = {.request_id = request_id, .history = hist, .n_history = c->n_turns,
                                .text = d->user_text, .arm_snapshot = c->arm,
                                .seed = fnv1a(d->id)};
    duel_error err = {0};
    int rc = gw->backend.submit(gw->backend.impl, &req, &err);
    free(hist);
    if (rc) {
        duel_drop(gw, d);
        send_error(gw, s, rc == DUEL_ELIMIT ? PROTOCOL_E_BUSY : PROTOCOL_E_ENGINE,
                   rc == DUEL_ELIMIT ? "the engine is busy; try again shortly" : err.message);
        return;
    }
    s->duel = d;
    memcpy(c->last_duel, d->id, sizeof c->last_duel);
    c->last_used = now;
    gw->metrics.asks_total++;
}

static void handle_vote(gateway *gw, session *s, const protocol_msg *m) {
    if (!s->hello_done) {
        send_error(gw, s, PROTOCOL_E_HELLO_REQUIRED, "send hello first");
        return;
    }
    duel_rec *d = str_map_get(&gw->duels, m->duel);
    if (!d) {
        send_error(gw, s, PROTOCOL_E_UNKNOWN_DUEL, "no such duel (or it expired)");
        return;
    }
    if (strcmp(d->conv_id, s->conv->id) != 0) {
        send_error(gw, s, PROTOCOL_E_NOT_YOUR_DUEL, "this duel belongs to another conversation");
        return;
    }
    if (d->state == DS_VOTED) {
        send_error(gw, s, PROTOCOL_E_ALREADY_VOTED, "this duel has a vote already");
        return;
    }
    if (d->state != DS_FINISHED) {
        send_error(gw, s, PROTOCOL_E_DUEL_NOT_FINISHED, "wait for both answers to finish");
        return;
    }
    vote_entry_encoded rec;
    duel_error err = {0};
    if (build_vote(d, m->choice, &rec, &err)) {
        char msg[DUEL_ERROR_MESSAGE_MAX + 40];
        snprintf(msg, sizeof msg, "the vote could not be recorded: %s", err.message);
        send_error(gw, s, PROTOCOL_E_INTERNAL, msg);
        return;
    }
    conversation *c = s->conv;
    if (strcmp(c->last_duel, d->id) == 0) {
        const char *answer = m->choice == VOTE_CHOICE_B ? d->text_b : d->text_a;
        if (conv_append(c, d->user_text, answer) == 0) conv_save(gw, c);
        c->last_duel[0] = '\0';
    }
    d->state = DS_VOTED;
    d->t_vote = duel_time_seconds();
    /* The tombstone keeps only what a second vote needs to be refused. */
    duel_backend_result_free(d->result);
    d->result = NULL;
    free(d->text_a);
    free(d->text_b);
    d->text_a = d->text_b = NULL;
    gw->metrics.votes_by_choice[m->choice]++;
    redis_worker_submit_vote(gw->redis, s->conn_id, d->id, &rec);
}

static void handle_cancel(gateway *gw, session *s) {
    if (!s->hello_done) {
        send_error(gw, s, PROTOCOL_E_HELLO_REQUIRED, "send hello first");
        return;
    }
    if (!s->duel) {
        send_error(gw, s, PROTOCOL_E_NOTHING_TO_CANCEL, "no duel is running");
        return;
    }
    cancel_request(gw, s->duel);
    duel_abort(gw, s, s->duel, true);
}

static void handle_message(gateway *gw, session *s, const char *data, size_t len) {
    gw->metrics.frames_in++;
    protocol_limits lim = {gw->cfg.max_frame_bytes, gw->cfg.max_ask_bytes};
    protocol_msg m;
    char detail[256];
    protocol_error_code code = protocol_parse(data, len, &lim, &m, detail, sizeof detail);
    if (code != PROTOCOL_OK) {
        send_error(gw, s, code, detail);
        if (++s->errors >= gw->cfg.abuse_limit) session_close_soon(s);
        return;
    }
    switch (m.type) {
    case PROTOCOL_MSG_HELLO: handle_hello(gw, s, &m); break;
    case PROTOCOL_MSG_ASK: handle_ask(gw, s, &m); break;
    case PROTOCOL_MSG_VOTE: handle_vote(gw, s, &m); break;
    case PROTOCOL_MSG_CANCEL: handle_cancel(gw, s); break;
    }
    protocol_msg_clear(&m);
}

/* ---- inbox (results from other threads) ------------------------------------------------- */

static void push_inbox(gateway *gw, inbox_item *item) {
    pthread_mutex_lock(&gw->inbox_mu);
    if (!gw->ctx_alive) {
        pthread_mutex_unlock(&gw->inbox_mu);
        duel_backend_result_free(item->ev.result);
        free(item->rr.json);
        free(item);
        return;
    }
    if (gw->inbox_tail) gw->inbox_tail->next = item;
    else gw->inbox_head = item;
    gw->inbox_tail = item;
    lws_cancel_service(gw->ctx);
    pthread_mutex_unlock(&gw->inbox_mu);
}

static void backend_sink(void *ctx, duel_backend_event *ev) {
    gateway *gw = ctx;
    inbox_item *item = calloc(1, sizeof *item);
    if (!item) return; /* the duel then never finishes; the client can cancel */
    item->kind = INBOX_BACKEND;
    item->ev = *ev;
    ev->result = NULL;
    push_inbox(gw, item);
}

static void redis_sink(void *ctx, redis_result *r) {
    gateway *gw = ctx;
    inbox_item *item = calloc(1, sizeof *item);
    if (!item) {
        free(r->json);
        return;
    }
    item->kind = INBOX_REDIS;
    item->rr = *r;
    r->json = NULL;
    push_inbox(gw, item);
}

static void on_backend_event(gateway *gw, duel_backend_event *ev) {
    char key[24];
    snprintf(key, sizeof key, "%016llx", (unsigned long long)ev->request_id);
    duel_rec *d = str_map_get(&gw->requests, key);
    if (!d || d->state != DS_RUNNING) return; /* cancelled or gone */
    session *s = find_session(gw, d->conn_id);
    switch (ev->kind) {
    case DUEL_BACKEND_PROGRESS:
        if (s) send_frame(gw, s, protocol_encode_progress(d->id, ev->tokens, NULL));
        break;
    case DUEL_BACKEND_ERROR:
        gw->metrics.duels_failed++;
        if (s) {
            send_error(gw, s, PROTOCOL_E_ENGINE, ev->message);
            send_frame(gw, s, protocol_encode_duel_end(d->id, true, NULL));
            s->duel = NULL;
        }
        duel_drop(gw, d);
        break;
    case DUEL_BACKEND_READY: {
        duel_backend_result *r = ev->result;
        ev->result = NULL;
        d->result = r;
        d->text_a = protocol_sanitize_utf8(r->text_a ? r->text_a : "", r->text_a ? r->len_a : 0,
                                           &d->len_a);
        d->text_b = protocol_sanitize_utf8(r->text_b ? r->text_b : "", r->text_b ? r->len_b : 0,
                                           &d->len_b);
        if (!d->text_a || !d->text_b) {
            if (s) {
                send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
                s->duel = NULL;
            }
            duel_drop(gw, d);
            break;
        }
        double now = duel_time_seconds();
        gw->metrics.duels_total++;
        gw->metrics.generated_tokens += (uint64_t)(r->generated_tokens > 0 ? r->generated_tokens : 0);
        int64_t sec = (int64_t)now;
        int slot = (int)(sec % 60);
        if (gw->token_window_sec[slot] != sec) gw->token_window_sec[slot] = sec, gw->token_window[slot] = 0;
        gw->token_window[slot] += (uint64_t)(r->generated_tokens > 0 ? r->generated_tokens : 0);
        metrics_observe(&gw->metrics.time_to_duel, now - d->t_ask);
        d->state = DS_STREAMING;
        if (!s) { /* the connection went away; keep nothing */
            duel_drop(gw, d);
            break;
        }
        send_frame(gw, s, protocol_encode_duel_start(d->id, NULL));
        stream_step(gw, s);
        break;
    }
    }
}

static void on_redis_result(gateway *gw, redis_result *r) {
    session *s = find_session(gw, r->conn_id);
    if (r->kind == REDIS_RESULT_CONVERSATION) {
        if (!s || !s->hello_pending) return;
        conversation *c = str_map_get(&gw->convs, r->key); /* another session may have loaded it */
        bool resumed = c != NULL;
        if (!c && r->json) {
            json_t *obj = json_loads(r->json, 0, NULL);
            json_t *turns = obj ? json_object_get(obj, "turns") : NULL;
            if (json_is_array(turns) && (c = conv_new(gw, r->key))) {
                size_t i;
                json_t *t;
                json_array_foreach(turns, i, t) {
                    const char *u = json_string_value(json_object_get(t, "user"));
                    const char *a = json_string_value(json_object_get(t, "assistant"));
                    if (u && a) conv_append(c, u, a);
                }
                c->arm = json_integer_value(json_object_get(obj, "arm"));
                long long created = json_integer_value(json_object_get(obj, "created"));
                if (created > 0) c->created_ms = created;
                resumed = true;
            }
            json_decref(obj);
        }
        if (!c) { /* unknown or expired: start afresh (the welcome carries the new id) */
            c = conv_new(gw, NULL);
            if (c) c->arm = pick_arm(gw, c->id);
        }
        if (!c) {
            s->hello_pending = false;
            send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
            return;
        }
        attach_conv(s, c);
        send_welcome(gw, s, resumed);
        return;
    }
    duel_rec *d = str_map_get(&gw->duels, r->key);
    if (d && d->t_vote > 0) metrics_observe(&gw->metrics.vote_ack, duel_time_seconds() - d->t_vote);
    if (!s) return;
    if (r->kind == REDIS_RESULT_VOTE_FAILED) {
        send_error(gw, s, PROTOCOL_E_VOTE_FAILED, "the vote could not be stored; please retry later");
        return;
    }
    gw->metrics.votes_acked++;
    if (r->queued) gw->metrics.votes_queued_acked++;
    send_frame(gw, s, protocol_encode_vote_ok(r->key, r->queued, NULL));
}

static void drain_inbox(gateway *gw) {
    pthread_mutex_lock(&gw->inbox_mu);
    inbox_item *list = gw->inbox_head;
    gw->inbox_head = gw->inbox_tail = NULL;
    pthread_mutex_unlock(&gw->inbox_mu);
    while (list) {
        inbox_item *next = list->next;
        if (list->kind == INBOX_BACKEND) on_backend_event(gw, &list->ev);
        else on_redis_result(gw, &list->rr);
        duel_backend_result_free(list->ev.result);
        free(list->rr.json);
        free(list);
        list = next;
    }
}

/* ---- HTTP ------------------------------------------------------------------------------- */

static double tokens_per_second(gateway *gw) {
    int64_t now = (int64_t)duel_time_seconds();
    uint64_t sum = 0;
    for (int i = 0; i < 60; i++)
        if (now - gw->token_window_sec[i] < 60) sum += gw->token_window[i];
    return sum / 60.0;
}

static int http_respond(struct lws *wsi, http_pss *pss, unsigned int status, const char *ctype,
                        const char *body, size_t len) {
    pss->body = malloc(LWS_PRE + len + 1);
    if (!pss->body) return -1;
    memcpy(pss->body + LWS_PRE, body, len);
    pss->len = len;
    unsigned char headers[LWS_PRE + 512], *start = headers + LWS_PRE, *p = start,
                                          *end = headers + sizeof headers - 1;
    if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

static const char SECURITY_HEADERS[] =
    "x-content-type-options: nosniff\r\n"
    "referrer-policy: no-referrer\r\n"
    "x-frame-options: DENY\r\n"
    "content-security-policy: default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'\r\n";

static long long serving_version(gateway *gw) {
    return gw->backend.serving_version ? gw->backend.serving_version(gw->backend.impl) : 0;
}

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len) {
    gateway *gw = lws_context_user(lws_get_context(wsi));
    http_pss *pss = user;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_inbox(gw);
        return 0;
    case LWS_CALLBACK_HTTP: {
        const char *path = in;
        if (strcmp(path, "/healthz") == 0) {
            char body[64];
            int n = snprintf(body, sizeof body, "ok\npolicy_version: %lld\n", serving_version(gw));
            return http_respond(wsi, pss, 200, "text/plain", body, (size_t)n);
        }
        if (strcmp(path, "/readyz") == 0) {
            redis_worker_stats st;
            redis_worker_get_stats(gw->redis, &st);
            char body[128];
            int n = snprintf(body, sizeof body, "%s\nredis: %s\nspill_pending: %llu\n",
                             gw->draining ? "draining" : "ready", st.connected ? "up" : "down",
                             (unsigned long long)st.spill_pending);
            return http_respond(wsi, pss, gw->draining ? 503 : 200, "text/plain", body, (size_t)n);
        }
        if (strcmp(path, "/metrics") == 0) {
            redis_worker_stats st;
            redis_worker_get_stats(gw->redis, &st);
            size_t n = 0;
            snapshot_loader_stats ls;
            if (gw->loader) snapshot_loader_get_stats(gw->loader, &ls);
            char *text = metrics_render(&gw->metrics, &st, gw->backend.queue_depth(gw->backend.impl),
                                        tokens_per_second(gw), gw->loader ? &ls : NULL,
                                        serving_version(gw), &n);
            if (!text) return -1;
            int rc = http_respond(wsi, pss, 200, "text/plain; version=0.0.4", text, n);
            free(text);
            return rc;
        }
        const char *name = strcmp(path, "/") == 0 ? "/index.html" : path;
        for (int i = 0; i < gw->n_files; i++) {
            if (strcmp(name, gw->files[i].url) != 0) continue;
            int rc = lws_serve_http_file(wsi, gw->files[i].path, gw->files[i].mime,
                                         SECURITY_HEADERS, (int)strlen(SECURITY_HEADERS));
            if (rc < 0 || (rc > 0 && lws_http_transaction_completed(wsi))) return -1;
            return 0;
        }
        return http_respond(wsi, pss, 404, "text/plain", "not found\n", 10);
    }
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!pss->body) return 0;
        int n = lws_write(wsi, pss->body + LWS_PRE, pss->len, LWS_WRITE_HTTP_FINAL);
        free(pss->body);
        pss->body = NULL;
        if (n < (int)pss->len) return -1;
        if (lws_http_transaction_completed(wsi)) return -1;
        return 0;
    }
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        if (lws_http_transaction_completed(wsi)) return -1;
        return 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss) {
            free(pss->body);
            pss->body = NULL;
        }
        return 0;
    default: break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ---- WebSocket -------------------------------------------------------------------------- */

static bool origin_allowed(gateway *gw, struct lws *wsi) {
    char origin[256], host[256], own[300];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0) return true; /* not a browser */
    if (lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) <= 0) return false;
    for (int i = 0; i < gw->cfg.n_origins; i++)
        if (strcmp(origin, gw->cfg.origins[i]) == 0) return true;
    if (lws_hdr_copy(wsi, host, sizeof host, WSI_TOKEN_HOST) <= 0) return false;
    snprintf(own, sizeof own, "http://%s", host);
    if (strcmp(origin, own) == 0) return true;
    snprintf(own, sizeof own, "https://%s", host);
    return strcmp(origin, own) == 0;
}

static void session_destroy(gateway *gw, session *s) {
    if (s->duel) {
        cancel_request(gw, s->duel);
        gw->metrics.duels_cancelled++;
        duel_drop(gw, s->duel);
        s->duel = NULL;
    }
    if (s->conv) s->conv->refs--;
    addr_state *as = str_map_get(&gw->addrs, s->addr);
    if (as && --as->connections <= 0) {
        str_map_remove(&gw->addrs, s->addr);
        free(as);
    }
    str_map_remove(&gw->sessions, s->key);
    while (s->out_head) {
        outframe *f = s->out_head;
        s->out_head = f->next;
        free(f);
    }
    free(s->rx);
    free(s);
    gw->metrics.connections_open--;
}

static int callback_duel(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len) {
    gateway *gw = lws_context_user(lws_get_context(wsi));
    session **slot = user;
    session *s = slot ? *slot : NULL;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        if (gw->draining || gw->metrics.connections_open >= gw->cfg.max_connections ||
            !origin_allowed(gw, wsi)) {
            gw->metrics.connections_rejected++;
            return 1;
        }
        return 0;
    case LWS_CALLBACK_ESTABLISHED: {
        s = calloc(1, sizeof *s);
        if (!s) return -1;
        s->conn_id = ++gw->next_conn_id;
        snprintf(s->key, sizeof s->key, "%016llx", (unsigned long long)s->conn_id);
        s->wsi = wsi;
        lws_get_peer_simple(wsi, s->addr, sizeof s->addr);
        if (str_map_put(&gw->sessions, s->key, s)) {
            free(s);
            return -1;
        }
        *slot = s;
        gw->metrics.connections_total++;
        gw->metrics.connections_open++;
        addr_state *as = str_map_get(&gw->addrs, s->addr);
        if (!as && (as = calloc(1, sizeof *as)) && str_map_put(&gw->addrs, s->addr, as)) {
            free(as);
            as = NULL;
        }
        if (as) as->connections++;
        if (as && as->connections > gw->cfg.connections_per_address) {
            gw->metrics.connections_rejected++;
            send_error(gw, s, PROTOCOL_E_TOO_MANY_CONNECTIONS,
                       "too many connections from your address");
            session_close_soon(s);
        }
        return 0;
    }
    case LWS_CALLBACK_RECEIVE: {
        if (!s || s->close_after_flush) return 0;
        if (lws_is_first_fragment(wsi) && s->rx_len == 0 && !s->rx_overflow)
            s->rx_binary = lws_frame_is_binary(wsi);
        if (!s->rx_overflow && !s->rx_binary) {
            if (s->rx_len + len > gw->cfg.max_frame_bytes) {
                s->rx_overflow = true;
            } else {
                if (!s->rx && !(s->rx = malloc(gw->cfg.max_frame_bytes + 1))) return -1;
                memcpy(s->rx + s->rx_len, in, len);
                s->rx_len += len;
            }
        }
        if (!lws_is_final_fragment(wsi)) {
            /* A message that never finishes (slowloris) closes the connection. */
            lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, gw->cfg.partial_message_timeout_s);
            return 0;
        }
        lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
        if (s->rx_binary) {
            gw->metrics.frames_in++;
            send_error(gw, s, PROTOCOL_E_BINARY, "only text frames are accepted");
            if (++s->errors >= gw->cfg.abuse_limit) session_close_soon(s);
        } else if (s->rx_overflow) {
            gw->metrics.frames_in++;
            char msg[96];
            snprintf(msg, sizeof msg, "messages are limited to %zu bytes", gw->cfg.max_frame_bytes);
            send_error(gw, s, PROTOCOL_E_TOO_LARGE, msg);
            if (++s->errors >= gw->cfg.abuse_limit) session_close_soon(s);
        } else {
            handle_message(gw, s, s->rx ? s->rx : "", s->rx_len);
        }
        s->rx_len = 0;
        s->rx_overflow = s->rx_binary = false;
        return 0;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        if (!s) return 0;
        outframe *f = s->out_head;
        if (f) {
            s->out_head = f->next;
            if (!s->out_head) s->out_tail = NULL;
            s->out_bytes -= f->len;
            int n = lws_write(wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT);
            free(f);
            if (n < 0) return -1;
        }
        if (!s->out_head && s->close_after_flush) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)"bye", 3);
            return -1;
        }
        if (!s->out_head && gw->cfg.stream_interval_ms == 0 && s->duel &&
            s->duel->state == DS_STREAMING)
            stream_step(gw, s);
        if (s->out_head) lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_TIMER:
        if (s) stream_step(gw, s);
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (s) {
            session_destroy(gw, s);
            *slot = NULL;
        }
        return 0;
    default: break;
    }
    return 0;
}

/* ---- lifecycle -------------------------------------------------------------------------- */

static const char *mime_for(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return NULL;
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0) return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (strcmp(dot, ".svg") == 0) return "image/svg+xml";
    if (strcmp(dot, ".png") == 0) return "image/png";
    if (strcmp(dot, ".ico") == 0) return "image/x-icon";
    if (strcmp(dot, ".json") == 0) return "application/json";
    return NULL;
}

/* Only the regular files directly in web_root with plain names are served: a fixed list, so no
 * request path ever reaches the file system. */
static int scan_web_root(gateway *gw, duel_error *err) {
    static const char *const NAMES[] = {"index.html", "app.js", "style.css", "ops.html", "ops.js",
                                        "favicon.svg", "favicon.ico"};
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0] && gw->n_files < MAX_STATIC_FILES; i++) {
        static_file *f = &gw->files[gw->n_files];
        snprintf(f->path, sizeof f->path, "%s/%s", gw->cfg.web_root, NAMES[i]);
        struct stat sb;
        if (stat(f->path, &sb) || !S_ISREG(sb.st_mode)) continue;
        snprintf(f->url, sizeof f->url, "/%s", NAMES[i]);
        f->mime = mime_for(NAMES[i]);
        gw->n_files++;
    }
    if (gw->n_files == 0)
        return duel_error_set(err, DUEL_ENOTFOUND, "%s: no web files (index.html) found",
                              gw->cfg.web_root);
    return DUEL_OK;
}

static void housekeeping(lws_sorted_usec_list_t *sul) {
    gateway *gw = lws_container_of(sul, gateway, sul);
    double now = duel_time_seconds();
    expire_duels(gw, now);
    if (gw->convs.size > CONV_CACHE_SOFT_MAX) {
        /* Evict idle conversations (they stay in Redis). Collect first: no removal mid-walk. */
        size_t n = 0, cap = gw->convs.size;
        conversation **victims = malloc(cap * sizeof *victims);
        for (size_t b = 0; victims && b < gw->convs.n_buckets; b++)
            for (str_map_entry *e = gw->convs.buckets[b]; e; e = e->next) {
                conversation *c = e->value;
                if (c->refs == 0 && now - c->last_used > 600 && n < cap) victims[n++] = c;
            }
        for (size_t i = 0; i < n; i++) {
            str_map_remove(&gw->convs, victims[i]->id);
            conv_free(victims[i]);
        }
        free(victims);
    }
    lws_sul_schedule(gw->ctx, 0, &gw->sul, housekeeping, HOUSEKEEPING_US);
}

int gateway_create(const gateway_config *cfg, duel_backend *backend, gateway **out,
                   duel_error *err) {
    *out = NULL;
    gateway *gw = calloc(1, sizeof *gw);
    if (!gw) {
        if (backend->destroy) backend->destroy(backend->impl);
        return duel_error_set(err, DUEL_ENOMEM, "gateway: out of memory");
    }
    gw->cfg = *cfg;
    gw->backend = *backend;
    memset(backend, 0, sizeof *backend);
    pthread_mutex_init(&gw->inbox_mu, NULL);
    str_map_init(&gw->sessions);
    str_map_init(&gw->convs);
    str_map_init(&gw->duels);
    str_map_init(&gw->requests);
    str_map_init(&gw->addrs);
    int rc = scan_web_root(gw, err);
    if (rc) goto fail;

    redis_worker_config rcfg = {
        .host = cfg->redis_host, .port = cfg->redis_port, .timeout_ms = cfg->redis_timeout_ms,
        .retry_ms = 250, .spill_path = cfg->spill_path, .stream_key = "duel:prefs",
        .conversation_ttl_s = cfg->conversation_ttl_s, .vote_dedup_ttl_s = 7 * 86400,
        .rollout_poll_ms = 5000};
    if ((rc = redis_worker_create(&rcfg, redis_sink, gw, &gw->redis, err))) goto fail;

    lws_set_log_level(LLL_ERR, NULL);
    gw->protocols[0] = (struct lws_protocols){"http", callback_http, sizeof(http_pss), 0, 0, NULL, 0};
    gw->protocols[1] = (struct lws_protocols){PROTOCOL_NAME, callback_duel, sizeof(session *),
                                              8192, 0, NULL, 0};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_DISABLE_IPV6;
    info.user = gw;
    info.port = CONTEXT_PORT_NO_LISTEN;
    gw->ctx = lws_create_context(&info);
    if (!gw->ctx) {
        rc = duel_error_set(err, DUEL_EIO, "gateway: lws_create_context failed");
        goto fail;
    }
    gw->ctx_alive = true;
    struct lws_context_creation_info vinfo;
    memset(&vinfo, 0, sizeof vinfo);
    vinfo.vhost_name = "duel";
    vinfo.port = cfg->port;
    vinfo.iface = (cfg->bind[0] && strcmp(cfg->bind, "0.0.0.0") != 0) ? cfg->bind : NULL;
    vinfo.protocols = gw->protocols;
    vinfo.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    vinfo.timeout_secs = 10;
    vinfo.keepalive_timeout = 10;
    gw->vh = lws_create_vhost(gw->ctx, &vinfo);
    if (!gw->vh) {
        rc = duel_error_set(err, DUEL_EIO, "gateway: cannot listen on %s:%d (in use?)",
                            cfg->bind, cfg->port);
        goto fail;
    }
    gw->port = lws_get_vhost_listen_port(gw->vh);
    if ((rc = gw->backend.start(gw->backend.impl, backend_sink, gw, err))) goto fail;
    gw->backend_started = true;
    if (cfg->snapshot_loader) {
        snapshot_loader_config lcfg = {.host = cfg->redis_host, .port = cfg->redis_port,
                                       .timeout_ms = cfg->redis_timeout_ms,
                                       .poll_ms = cfg->snapshot_poll_ms};
        if ((rc = snapshot_loader_create(&lcfg, &gw->backend, &gw->loader, err))) goto fail;
    }
    lws_sul_schedule(gw->ctx, 0, &gw->sul, housekeeping, HOUSEKEEPING_US);
    *out = gw;
    return DUEL_OK;
fail:
    gateway_destroy(gw);
    return rc;
}

int gateway_port(const gateway *gw) { return gw->port; }

void gateway_stop(gateway *gw) {
    atomic_store(&gw->stop_requested, true);
    pthread_mutex_lock(&gw->inbox_mu);
    if (gw->ctx_alive) lws_cancel_service(gw->ctx);
    pthread_mutex_unlock(&gw->inbox_mu);
}

static void begin_drain(gateway *gw) {
    gw->draining = true;
    gw->drain_deadline = duel_time_seconds() + gw->cfg.shutdown_grace_ms / 1000.0;
    for (size_t b = 0; b < gw->sessions.n_buckets; b++)
        for (str_map_entry *e = gw->sessions.buckets[b]; e; e = e->next) {
            session *s = e->value;
            if (!s->duel) continue;
            cancel_request(gw, s->duel);
            duel_abort(gw, s, s->duel, true);
        }
}

static bool outboxes_empty(gateway *gw) {
    for (size_t b = 0; b < gw->sessions.n_buckets; b++)
        for (str_map_entry *e = gw->sessions.buckets[b]; e; e = e->next)
            if (((session *)e->value)->out_head) return false;
    return true;
}

int gateway_run(gateway *gw, duel_error *err) {
    (void)err;
    for (;;) {
        if (atomic_load(&gw->stop_requested) && !gw->draining) begin_drain(gw);
        if (gw->draining) {
            bool votes_done = redis_worker_votes_in_flight(gw->redis) == 0;
            if ((votes_done && outboxes_empty(gw)) || duel_time_seconds() > gw->drain_deadline)
                break;
        }
        if (lws_service(gw->ctx, 0) < 0) break;
    }
    return DUEL_OK;
}

static void free_conv_entry(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    conv_free(value);
}

static void free_duel_entry(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    duel_free(value);
}

static void free_plain_entry(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    free(value);
}

void gateway_destroy(gateway *gw) {
    if (!gw) return;
    if (gw->ctx) {
        pthread_mutex_lock(&gw->inbox_mu);
        gw->ctx_alive = false;
        pthread_mutex_unlock(&gw->inbox_mu);
        lws_sul_cancel(&gw->sul);
        lws_context_destroy(gw->ctx); /* closes every connection (CLOSED callbacks run) */
        gw->ctx = NULL;
    }
    /* Votes still queued end up in Redis or the spill log before the thread exits. */
    redis_worker_destroy(gw->redis);
    snapshot_loader_destroy(gw->loader); /* before the backend it installs into */
    if (gw->backend.destroy) gw->backend.destroy(gw->backend.impl);
    while (gw->inbox_head) {
        inbox_item *i = gw->inbox_head;
        gw->inbox_head = i->next;
        duel_backend_result_free(i->ev.result);
        free(i->rr.json);
        free(i);
    }
    str_map_foreach(&gw->duels, free_duel_entry, NULL);
    str_map_foreach(&gw->convs, free_conv_entry, NULL);
    str_map_foreach(&gw->addrs, free_plain_entry, NULL);
    str_map_free(&gw->sessions);
    str_map_free(&gw->convs);
    str_map_free(&gw->duels);
    str_map_free(&gw->requests);
    str_map_free(&gw->addrs);
    pthread_mutex_destroy(&gw->inbox_mu);
    free(gw);
}
