/* chat_flow.c: what the chat does (DESIGN.md section 7): each client message (hello, ask, vote,
 * cancel) checked against the session's state and the limits, and each result another thread
 * sends back (the backend's progress, ready and error events; Redis's conversation loads and
 * vote acknowledgements) turned into frames. It ties a session to its conversation
 * (conversation.h), its duels (duel_table.h) and the arm the rollout pins it to (rollout.h), and
 * hands votes to the Redis thread.
 *
 * Thread: the lws service thread, all of it (results arrive through server.c's inbox). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "server_internal.h"
#include "timer.h"

/* serving_stats counts votes by the codec's choice numbers */
_Static_assert((int)VOTE_CHOICE_A == STATS_VOTE_A && (int)VOTE_CHOICE_B == STATS_VOTE_B &&
                   (int)VOTE_CHOICE_TIE == STATS_VOTE_TIE &&
                   (int)VOTE_CHOICE_BOTH_BAD == STATS_VOTE_BOTH_BAD,
               "vote choices and stats vote kinds");

/* ---- conversations and arms --------------------------------------------------------------- */

void gateway_rollout_refresh(gateway *gw) {
    char *json = NULL;
    if (!redis_worker_rollout_changed(gw->redis, &gw->rollout_generation, &json)) return;
    duel_error err = {0};
    if (rollout_router_update(&gw->rollout, json, &err))
        fprintf(stderr, "duel serve: duel:rollout refused: %s; serving the rollout as before\n",
                err.message);
    gw->metrics.rollout_revision = gw->rollout.active ? gw->rollout.spec.revision : 0;
    free(json);
}

/* The arm a new conversation of session s is pinned to, by the rollout as last changed (parsed
 * once per change of duel:rollout, not per conversation): hashed from the page's stable client id
 * (so a user keeps the arm across conversations, reconnects and gateways), else from the
 * conversation's id. */
static long long pick_arm(gateway *gw, const session *s, const char *conv_id) {
    gateway_rollout_refresh(gw);
    return rollout_router_pick(&gw->rollout, s && s->client[0] ? s->client : conv_id);
}

/* The rollout's arms for a new duel of conversation c (docs/SERVING.md, "Rollouts"): the arm the
 * client is assigned to now (the same hash as pick_arm, so a user keeps it across turns and
 * gateways, and moves off an arm only when its weight is lowered: a rollback takes effect at the
 * next ask), and, for a share arena_fraction of duels drawn from the duel's seed, a battle
 * between two arms (rollout_router_battle: every pair in turn). The duel's stats count under the
 * arm's name. No rollout: nothing changes (the latest snapshot serves). */
static bool arm_ready(gateway *gw, long long snapshot) {
    if (snapshot == ROLLOUT_SNAPSHOT_BASE) return true;
    if (snapshot == ROLLOUT_SNAPSHOT_LATEST) /* the latest, or the base before any snapshot */
        return true;
    return !gw->backend.snapshot_resident || gw->backend.snapshot_resident(gw->backend.impl, snapshot);
}

static void choose_arms(gateway *gw, const session *s, conversation *c, duel_rec *d,
                        duel_backend_request *req) {
    gateway_rollout_refresh(gw);
    rollout_router *r = &gw->rollout;
    int arm = rollout_router_arm(r, s->client[0] ? s->client : c->id);
    if (arm < 0) return;
    const rollout_spec *spec = &r->spec;
    /* An arm whose snapshot the loader has not made resident yet (just pinned) is not served
     * under its name: its users get the stable arm meanwhile, so that every duel counts for the
     * arm whose weights made it. */
    if (!arm_ready(gw, spec->arms[arm].snapshot)) arm = spec->stable;
    if (!arm_ready(gw, spec->arms[arm].snapshot)) return; /* as with no rollout */
    req->rollout = true;
    c->arm = d->arm = req->arm_snapshot = spec->arms[arm].snapshot;
    req->arm_name = spec->arms[arm].name;
    duel_rng rng;
    duel_rng_seed(&rng, req->seed ^ 0xA5E4A0B7713CE5D1ull); /* apart from the sampling streams */
    int pair[2];
    if (rollout_router_battle(r, duel_rng_uniform(&rng), pair) &&
        arm_ready(gw, spec->arms[pair[0]].snapshot) && arm_ready(gw, spec->arms[pair[1]].snapshot)) {
        req->battle = true;
        req->arm_snapshot = d->arm = spec->arms[pair[0]].snapshot;
        req->arm_name = spec->arms[pair[0]].name;
        req->battle_snapshot = spec->arms[pair[1]].snapshot;
        req->battle_arm_name = spec->arms[pair[1]].name;
    }
    snprintf(d->stats_arm, sizeof d->stats_arm, "%s", req->arm_name);
    snprintf(d->stats_strategy, sizeof d->stats_strategy, "%s",
             req->battle ? "arena" : gw->params.strategy);
}

static void save_conversation(gateway *gw, const conversation *c) {
    char *text = conversation_to_json(c);
    if (text) redis_worker_save_conversation(gw->redis, c->id, text);
}

static void send_welcome(gateway *gw, session *s, bool resumed) {
    conversation *c = s->conv;
    protocol_welcome_limits lim = {gw->cfg.max_frame_bytes, gw->cfg.max_ask_bytes,
                                   gw->cfg.asks_per_minute_connection, gw->cfg.max_turns};
    const char **user, **assistant;
    if (!conversation_texts(c, &user, &assistant)) {
        gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    gateway_send_frame(gw, s, protocol_encode_welcome(c->id, &lim, resumed, user, assistant,
                                                      c->n_turns, !gw->backend.trainable, NULL));
    free(user);
    free(assistant);
}

static void attach_conv(session *s, conversation *c) {
    s->conv = c;
    c->refs++;
    c->last_used = duel_time_seconds();
    s->hello_done = true;
    s->hello_pending = false;
}

/* ---- duels -------------------------------------------------------------------------------- */

void gateway_cancel_generation(gateway *gw, duel_rec *d) {
    if (d->state == DS_RUNNING) gw->backend.cancel(gw->backend.impl, d->request_id);
}

void gateway_abort_duel(gateway *gw, session *s, duel_rec *d, bool tell) {
    gw->metrics.duels_cancelled++;
    if (s && tell) gateway_send_frame(gw, s, protocol_encode_duel_end(d->id, true, NULL));
    if (s) {
        s->duel = NULL;
        gateway_session_deadline(gw, s);
        lws_set_timer_usecs(s->wsi, LWS_SET_TIMER_USEC_CANCEL);
    }
    duel_table_drop(&gw->duels, d);
}

void gateway_stream_step(gateway *gw, session *s) {
    duel_rec *d = s->duel;
    if (!d || d->state != DS_STREAMING) return;
    size_t min = (size_t)gw->cfg.stream_chunk_bytes;
    if (d->pos_a < d->len_a) {
        size_t e = duel_next_chunk(d->text_a, d->len_a, d->pos_a, min);
        gateway_send_frame(gw, s, protocol_encode_delta(d->id, 'a', d->text_a + d->pos_a, e - d->pos_a, NULL));
        d->pos_a = e;
    }
    if (d->pos_b < d->len_b) {
        size_t e = duel_next_chunk(d->text_b, d->len_b, d->pos_b, min);
        gateway_send_frame(gw, s, protocol_encode_delta(d->id, 'b', d->text_b + d->pos_b, e - d->pos_b, NULL));
        d->pos_b = e;
    }
    if (!d->first_delta_sent) {
        d->first_delta_sent = true;
        double seconds = duel_time_seconds() - d->t_ask;
        metrics_observe(&gw->metrics.time_to_first_delta, seconds);
        if (gw->cfg.stats_interval_ms > 0)
            serving_stats_first_delta(&gw->stats, d->stats_arm, d->stats_strategy, seconds);
    }
    if (d->pos_a >= d->len_a && d->pos_b >= d->len_b) {
        gateway_send_frame(gw, s, protocol_encode_duel_end(d->id, false, NULL));
        s->duel = NULL;
        gateway_session_deadline(gw, s);
        duel_table_finish(&gw->duels, d, duel_time_seconds());
        return;
    }
    if (gw->cfg.stream_interval_ms > 0)
        lws_set_timer_usecs(s->wsi, (lws_usec_t)gw->cfg.stream_interval_ms * 1000);
    /* With no interval the next step runs from the WRITEABLE callback once the outbox drains. */
}

/* ---- client messages ---------------------------------------------------------------------- */

static void handle_hello(gateway *gw, session *s, const protocol_msg *m) {
    if (s->hello_done || s->hello_pending) {
        gateway_send_error(gw, s, PROTOCOL_E_DUPLICATE_HELLO, "this connection already said hello");
        return;
    }
    if (m->has_client) memcpy(s->client, m->client, sizeof s->client);
    if (m->has_conversation) {
        conversation *c = conversation_find(&gw->convs, m->conversation);
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
    conversation *c = conversation_create(&gw->convs, NULL);
    if (!c) {
        gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    c->arm = pick_arm(gw, s, c->id);
    attach_conv(s, c);
    send_welcome(gw, s, false);
}

/* The most prompt tokens a duel may take: gateway.max_context_tokens, and what the model's
 * context leaves once the answer has its room: max_new_tokens, or 1/ANSWER_CONTEXT_SHARE of the
 * context when that is less (a longer answer then stops where the context is full). */
#define ANSWER_CONTEXT_SHARE 4

static long long prompt_budget(gateway *gw) {
    long long budget = gw->cfg.max_context_tokens;
    long long ctx = gw->backend.context_tokens ? gw->backend.context_tokens(gw->backend.impl) : 0;
    if (ctx > 0) {
        long long answer = gw->params.max_new_tokens;
        if (answer <= 0 || answer > ctx / ANSWER_CONTEXT_SHARE) answer = ctx / ANSWER_CONTEXT_SHARE;
        if (ctx - answer < budget) budget = ctx - answer;
    }
    return budget;
}

/* Tokens of the prompt made of c's turns from `first` on and text: exact when the backend can
 * say (its template included), else the turns' and the text's own counts. Negative on error. */
static long long prompt_size(gateway *gw, const conversation *c, const duel_backend_turn *hist,
                             size_t first, const char *text, long long text_tokens,
                             duel_error *err) {
    if (!gw->backend.prompt_tokens) {
        long long n = text_tokens;
        for (size_t i = first; i < c->n_turns; i++) n += c->turns[i].tokens;
        return n;
    }
    duel_backend_request req = {.history = hist + first, .n_history = c->n_turns - first,
                                .text = text, .arm_snapshot = c->arm, .params = &gw->params};
    return gw->backend.prompt_tokens(gw->backend.impl, &req, err);
}

/* Tokens that turn i adds to a prompt when every turn kept its ids (conversation_history gives
 * all or none): a template whose turns concatenate, so a prompt's size is the new message's
 * alone plus its turns' ids. -1 when the turns have no ids. */
static long long kept_turn_tokens(const conversation *c, const duel_backend_turn *hist, size_t i) {
    return c->n_turns && hist[0].ids ? (long long)hist[i].n_ids : -1;
}

/* Fits the ask into the prompt budget by leaving out the conversation's oldest whole turns:
 * *first is the first turn kept. When the new message alone does not fit, sends
 * conversation_too_long (never `busy`: nothing about it is temporary) and returns -1.
 * The new message is encoded once here (its prompt alone) when the turns kept their ids; each
 * turn's share is then arithmetic. Only a conversation without ids encodes a prompt per step of
 * the search. */
static int fit_context(gateway *gw, session *s, const conversation *c,
                       const duel_backend_turn *hist, const char *text, size_t *first) {
    long long budget = prompt_budget(gw);
    long long text_tokens = gw->backend.prompt_tokens ? 0 : conversation_count_tokens(&gw->backend, text);
    duel_error err = {0};
    *first = 0;
    long long alone = prompt_size(gw, c, hist, c->n_turns, text, text_tokens, &err);
    if (alone < 0) {
        gateway_send_error(gw, s, PROTOCOL_E_ENGINE, err.message);
        return -1;
    }
    if (alone > budget) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "this message is %lld tokens; the model reads at most %lld here: shorten it%s",
                 alone, budget, c->n_turns ? " or start a new conversation" : "");
        gateway_send_error(gw, s, PROTOCOL_E_CONVERSATION_TOO_LONG, msg);
        return -1;
    }
    if (c->n_turns == 0) return 0;
    if (kept_turn_tokens(c, hist, 0) >= 0 || !gw->backend.prompt_tokens) {
        /* newest turns first, while they fit: the fewest dropped */
        long long n = alone;
        size_t keep_from = c->n_turns;
        while (keep_from > 0) {
            long long add = gw->backend.prompt_tokens ? kept_turn_tokens(c, hist, keep_from - 1)
                                                      : c->turns[keep_from - 1].tokens;
            if (n + add > budget) break;
            n += add;
            keep_from--;
        }
        *first = keep_from;
    } else {
        long long n = prompt_size(gw, c, hist, 0, text, text_tokens, &err);
        if (n >= 0 && n <= budget) return 0;
        /* The fewest turns dropped: prompt_size falls as `first` grows; turns [hi..] fit. */
        size_t lo = 1, hi = c->n_turns;
        while (n >= 0 && lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            long long m = prompt_size(gw, c, hist, mid, text, text_tokens, &err);
            if (m < 0) {
                n = m;
                break;
            }
            if (m <= budget) hi = mid;
            else lo = mid + 1;
        }
        if (n < 0) {
            gateway_send_error(gw, s, PROTOCOL_E_ENGINE, err.message);
            return -1;
        }
        *first = hi;
    }
    gw->metrics.turns_dropped += *first;
    return 0;
}

static void handle_ask(gateway *gw, session *s, protocol_msg *m) {
    if (!s->hello_done) {
        gateway_send_error(gw, s, PROTOCOL_E_HELLO_REQUIRED, "send hello first");
        return;
    }
    if (gw->draining) {
        gateway_send_error(gw, s, PROTOCOL_E_SHUTTING_DOWN, "the server is shutting down");
        return;
    }
    if (s->duel) {
        gateway_send_error(gw, s, PROTOCOL_E_BUSY, "a duel is still running on this connection");
        return;
    }
    conversation *c = s->conv;
    if ((int)c->n_turns >= gw->cfg.max_turns) {
        gateway_send_error(gw, s, PROTOCOL_E_TURN_LIMIT, "this conversation has reached its turn limit");
        return;
    }
    /* The serving knobs in effect now: a change reaches the next duel (max_new_tokens sets the
     * answer's room in the context). */
    if (console_knobs_changed(gw->console, &gw->knobs_seen, &gw->knobs))
        console_serving_params(&gw->knobs, &gw->params);
    duel_backend_turn *hist = conversation_history(c);
    if (!hist) {
        gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    size_t first = 0;
    if (fit_context(gw, s, c, hist, m->text, &first)) {
        free(hist);
        return;
    }
    double now = duel_time_seconds();
    if (!gateway_ask_allowed(gw, s, now)) { /* its own error sent (session.c) */
        free(hist);
        return;
    }
    duel_rec *d = duel_table_add(&gw->duels, c->id, s->conn_id, m->text, c->arm, now);
    m->text = NULL;
    if (!d) {
        free(hist);
        gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    d->dropped_turns = (int)first;
    duel_backend_request req = {.request_id = d->request_id, .history = hist + first,
                                .n_history = c->n_turns - first, .text = d->user_text,
                                .arm_snapshot = c->arm, .seed = duel_seed(d),
                                .params = &gw->params, .fairness_key = s->fairness_key};
    choose_arms(gw, s, c, d, &req);
    duel_error err = {0};
    int rc = gw->backend.submit(gw->backend.impl, &req, &err);
    free(hist);
    if (rc) {
        duel_table_drop(&gw->duels, d);
        /* DUEL_ELIMIT from submit is a full queue: the prompt's length was checked above, and
         * the engine adapter refuses a prompt past the context with another code. */
        gateway_send_error(gw, s, rc == DUEL_ELIMIT ? PROTOCOL_E_BUSY : PROTOCOL_E_ENGINE,
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
        gateway_send_error(gw, s, PROTOCOL_E_HELLO_REQUIRED, "send hello first");
        return;
    }
    duel_rec *d = duel_table_find(&gw->duels, m->duel);
    if (!d) {
        gateway_send_error(gw, s, PROTOCOL_E_UNKNOWN_DUEL, "no such duel (or it expired)");
        return;
    }
    if (strcmp(d->conv_id, s->conv->id) != 0) {
        gateway_send_error(gw, s, PROTOCOL_E_NOT_YOUR_DUEL, "this duel belongs to another conversation");
        return;
    }
    if (d->state == DS_VOTED) {
        gateway_send_error(gw, s, PROTOCOL_E_ALREADY_VOTED, "this duel has a vote already");
        return;
    }
    if (d->state != DS_FINISHED) {
        gateway_send_error(gw, s, PROTOCOL_E_DUEL_NOT_FINISHED, "wait for both answers to finish");
        return;
    }
    vote_entry_encoded rec;
    duel_error err = {0};
    if (duel_build_vote(d, m->choice, &rec, &err)) {
        char msg[DUEL_ERROR_MESSAGE_MAX + 40];
        snprintf(msg, sizeof msg, "the vote could not be recorded: %s", err.message);
        gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, msg);
        return;
    }
    conversation *c = s->conv;
    if (strcmp(c->last_duel, d->id) == 0) {
        const char *answer = m->choice == VOTE_CHOICE_B ? d->text_b : d->text_a;
        if (conversation_append(c, d->user_text, answer, &gw->backend) == 0) save_conversation(gw, c);
        c->last_duel[0] = '\0';
    }
    if (gw->cfg.stats_interval_ms > 0)
        serving_stats_vote(&gw->stats, d->stats_arm, d->stats_strategy, (int)m->choice,
                           d->erm_preference);
    duel_table_mark_voted(&gw->duels, d, duel_time_seconds());
    gw->metrics.votes_by_choice[m->choice]++;
    redis_worker_submit_vote(gw->redis, s->conn_id, d->id, &rec);
}

static void handle_cancel(gateway *gw, session *s) {
    if (!s->hello_done) {
        gateway_send_error(gw, s, PROTOCOL_E_HELLO_REQUIRED, "send hello first");
        return;
    }
    if (!s->duel) {
        gateway_send_error(gw, s, PROTOCOL_E_NOTHING_TO_CANCEL, "no duel is running");
        return;
    }
    gateway_cancel_generation(gw, s->duel);
    gateway_abort_duel(gw, s, s->duel, true);
}

void gateway_handle_message(gateway *gw, session *s, const char *data, size_t len) {
    gw->metrics.frames_in++;
    protocol_limits lim = {gw->cfg.max_frame_bytes, gw->cfg.max_ask_bytes};
    protocol_msg m;
    char detail[256];
    protocol_error_code code = protocol_parse(data, len, &lim, &m, detail, sizeof detail);
    if (code != PROTOCOL_OK) {
        gateway_send_error(gw, s, code, detail);
        if (++s->errors >= gw->cfg.abuse_limit) gateway_close_soon(s);
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

/* ---- results from other threads ----------------------------------------------------------- */

void gateway_on_backend_event(gateway *gw, duel_backend_event *ev) {
    duel_rec *d = duel_table_find_request(&gw->duels, ev->request_id);
    if (!d || d->state != DS_RUNNING) return; /* cancelled or gone */
    session *s = gateway_find_session(gw, d->conn_id);
    switch (ev->kind) {
    case DUEL_BACKEND_PROGRESS:
        if (s) gateway_send_frame(gw, s, protocol_encode_progress(d->id, ev->tokens, NULL));
        break;
    case DUEL_BACKEND_ERROR:
        gw->metrics.duels_failed++;
        if (gw->cfg.stats_interval_ms > 0 && d->stats_arm[0]) /* a rollout arm's error rate */
            serving_stats_duel_error(&gw->stats, d->stats_arm, d->stats_strategy);
        if (s) {
            gateway_send_error(gw, s, PROTOCOL_E_ENGINE, ev->message);
            gateway_send_frame(gw, s, protocol_encode_duel_end(d->id, true, NULL));
            s->duel = NULL;
            gateway_session_deadline(gw, s);
        }
        duel_table_drop(&gw->duels, d);
        break;
    case DUEL_BACKEND_READY: {
        duel_backend_result *r = ev->result;
        ev->result = NULL;
        if (!duel_table_start_streaming(d, r)) {
            if (s) {
                gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
                s->duel = NULL;
                gateway_session_deadline(gw, s);
            }
            duel_table_drop(&gw->duels, d);
            break;
        }
        double now = duel_time_seconds();
        gw->metrics.duels_total++;
        metrics_add_tokens(&gw->metrics, now, (uint64_t)(r->generated_tokens > 0 ? r->generated_tokens : 0));
        metrics_observe(&gw->metrics.time_to_duel, now - d->t_ask);
        if (gw->cfg.stats_interval_ms > 0) {
            /* the figures of the arm and strategy that made it; the vote adds to the same */
            double spread;
            if (!d->stats_arm[0]) /* no rollout arm: the snapshot's name */
                serving_stats_arm_name(r->policy_version, d->stats_arm);
            snprintf(d->stats_strategy, sizeof d->stats_strategy, "%s", r->strategy ? r->strategy : "unknown");
            serving_stats_erm_pair(r->rewards, r->num_candidates, r->num_heads, r->cand_a, r->cand_b,
                                   &spread, &d->erm_preference);
            serving_stats_duel(&gw->stats, d->stats_arm, d->stats_strategy, r->regret_estimate, spread,
                               now - d->t_ask,
                               (uint64_t)(r->generated_tokens > 0 ? r->generated_tokens : 0));
        }
        if (!s) { /* the connection went away; keep nothing */
            duel_table_drop(&gw->duels, d);
            break;
        }
        gateway_send_frame(gw, s, protocol_encode_duel_start(d->id, d->dropped_turns, NULL));
        gateway_stream_step(gw, s);
        break;
    }
    }
}

/* A conversation load for a hello that named one this gateway did not have. */
static void on_conversation_loaded(gateway *gw, session *s, const redis_result *r) {
    if (!s || !s->hello_pending) return;
    conversation *c = conversation_find(&gw->convs, r->key); /* another session may have loaded it */
    bool resumed = c != NULL;
    if (!c && r->json && (c = conversation_load(&gw->convs, r->key, r->json, &gw->backend)))
        resumed = true;
    if (!c) { /* unknown or expired: start afresh (the welcome carries the new id) */
        c = conversation_create(&gw->convs, NULL);
        if (c) c->arm = pick_arm(gw, s, c->id);
    }
    if (!c) {
        s->hello_pending = false;
        gateway_send_error(gw, s, PROTOCOL_E_INTERNAL, "out of memory");
        return;
    }
    attach_conv(s, c);
    send_welcome(gw, s, resumed);
    gateway_session_deadline(gw, s); /* hello is done: from now on the idle time counts */
}

void gateway_on_redis_result(gateway *gw, redis_result *r) {
    session *s = gateway_find_session(gw, r->conn_id);
    if (r->kind == REDIS_RESULT_CONVERSATION) {
        on_conversation_loaded(gw, s, r);
        return;
    }
    duel_rec *d = duel_table_find(&gw->duels, r->key);
    if (d && d->t_vote > 0) metrics_observe(&gw->metrics.vote_ack, duel_time_seconds() - d->t_vote);
    if (!s) return;
    if (r->kind == REDIS_RESULT_VOTE_FAILED) {
        gateway_send_error(gw, s, PROTOCOL_E_VOTE_FAILED, "the vote could not be stored; please retry later");
        return;
    }
    gw->metrics.votes_acked++;
    if (r->queued) gw->metrics.votes_queued_acked++;
    gateway_send_frame(gw, s, protocol_encode_vote_ok(r->key, r->queued, NULL));
}
