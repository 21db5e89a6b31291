/* duel_loop.c: what `duel bench loop` and `duel sim --inprocess` share (duel_loop.h). */
#include "duel_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template.h"
#include "cpu_ops.h"
#include "engine.h"
#include "timer.h"
#include "tokenizer.h"

/* ---- the backend's events ---------------------------------------------------------------- */

void loop_queue_init(loop_queue *q) {
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
}

void loop_event_free(loop_event *e) {
    if (!e) return;
    if (e->ev.kind == DUEL_BACKEND_READY) duel_backend_result_free(e->ev.result);
    free(e);
}

void loop_queue_destroy(loop_queue *q) {
    for (loop_event *e = q->head, *next; e; e = next) {
        next = e->next;
        loop_event_free(e);
    }
    q->head = q->tail = NULL;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
}

void loop_queue_sink(void *ctx, duel_backend_event *ev) {
    loop_queue *q = ctx;
    loop_event *e = calloc(1, sizeof *e);
    if (!e) { /* nothing to do but drop it; the waiting side's timeout reports the missing duel */
        duel_backend_result_free(ev->result);
        ev->result = NULL;
        return;
    }
    e->ev = *ev;
    ev->result = NULL; /* ours now (the backend frees what the sink leaves) */
    e->at = duel_time_seconds();
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = e;
    else q->head = e;
    q->tail = e;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

loop_event *loop_queue_pop(loop_queue *q, double timeout_s) {
    double deadline = duel_time_seconds() + timeout_s;
    pthread_mutex_lock(&q->mu);
    while (!q->head) {
        double left = deadline - duel_time_seconds();
        if (left <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + (left < 0.2 ? left : 0.2);
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&q->cv, &q->mu, &ts);
    }
    loop_event *e = q->head;
    if (e) {
        q->head = e->next;
        if (!q->head) q->tail = NULL;
        e->next = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return e;
}

int loop_serve_one(duel_backend *b, loop_queue *q, const duel_backend_request *req, double timeout_s,
                   duel_backend_result **out, duel_error *err) {
    *out = NULL;
    int rc = b->submit(b->impl, req, err);
    if (rc) return rc;
    const double deadline = duel_time_seconds() + timeout_s;
    for (;;) {
        loop_event *e = loop_queue_pop(q, deadline - duel_time_seconds());
        if (!e)
            return duel_error_set(err, DUEL_EIO, "duel %llu: not served in %.0f s",
                                  (unsigned long long)req->request_id, timeout_s);
        if (e->ev.request_id == req->request_id && e->ev.kind == DUEL_BACKEND_ERROR) {
            rc = duel_error_set(err, DUEL_EIO, "duel %llu: %s", (unsigned long long)req->request_id,
                                e->ev.message);
            loop_event_free(e);
            return rc;
        }
        if (e->ev.request_id == req->request_id && e->ev.kind == DUEL_BACKEND_READY) {
            *out = e->ev.result;
            e->ev.result = NULL;
            free(e);
            return 0;
        }
        loop_event_free(e); /* progress, or an earlier request's late event */
    }
}

/* ---- votes --------------------------------------------------------------------------------- */

vote_choice loop_vote_choice(oracle_choice c) {
    switch (c) {
    case ORACLE_PREFER_A: return VOTE_CHOICE_A;
    case ORACLE_PREFER_B: return VOTE_CHOICE_B;
    case ORACLE_TIE: return VOTE_CHOICE_TIE;
    case ORACLE_BOTH_BAD: return VOTE_CHOICE_BOTH_BAD;
    }
    return VOTE_CHOICE_TIE;
}

void loop_vote_entry(const duel_backend_result *r, oracle_choice choice, const char *vote_id,
                     const char *duel_id, int64_t ts_ms, vote_entry *e, vote_entry_texts *texts) {
    memset(e, 0, sizeof *e);
    snprintf(e->vote_id, sizeof e->vote_id, "%s", vote_id);
    snprintf(e->duel_id, sizeof e->duel_id, "%s", duel_id);
    snprintf(e->model_id, sizeof e->model_id, "%s", r->model_id);
    snprintf(e->strategy, sizeof e->strategy, "%s", r->strategy);
    e->ts_ms = ts_ms;
    e->policy_version = r->policy_version;
    e->choice = loop_vote_choice(choice);
    e->side_swap = r->side_swap;
    const bool b_won = choice == ORACLE_PREFER_B;
    e->chosen_idx = b_won ? r->cand_b : r->cand_a;
    e->rejected_idx = b_won ? r->cand_a : r->cand_b;
    e->num_candidates = r->num_candidates;
    e->d_feat = r->d_feat;
    e->num_heads = r->num_heads;
    e->n_prompt_tokens = (int)r->n_prompt_tokens;
    e->prompt_tokens = r->prompt_tokens;
    e->n_cand_tokens = (int)r->n_cand_tokens;
    e->cand_tokens = r->cand_tokens;
    e->cand_offsets = r->cand_offsets;
    e->features = r->features;
    e->erm_rewards = r->rewards;
    e->ref_logprobs = r->ref_logprobs; /* the serving engine's reference pass */
    *texts = (vote_entry_texts){r->gen_params_json, r->prompt_text, b_won ? r->text_b : r->text_a,
                                b_won ? r->text_a : r->text_b};
}

/* ---- a model's answers --------------------------------------------------------------------- */

void loop_answers_free(loop_answers *a) {
    if (!a) return;
    for (int i = 0; a->items && i < a->count * a->samples; i++) {
        free(a->items[i].text);
        free(a->items[i].tokens);
    }
    for (int i = 0; a->prompts && i < a->count; i++) free(a->prompts[i]);
    free(a->items);
    free(a->prompts);
    free(a->n_prompt);
    memset(a, 0, sizeof *a);
}

size_t loop_kv_bytes(const model_config *c, int sequences, int max_new_tokens) {
    /* K and V of every layer, f32, for a whole context per sequence (prompts are not known here;
     * the context bounds them), at least 4 MiB: the pool is zeroed at creation, and the
     * engine's 256 MiB default costs more to clear than a short evaluation takes. */
    const size_t per_token = 2u * (size_t)c->num_layers * (size_t)c->num_kv_heads * (size_t)c->head_dim * sizeof(float);
    const int context = c->max_position_embeddings > 0 ? c->max_position_embeddings : 2048;
    size_t tokens = (size_t)sequences * (size_t)(context < max_new_tokens + 4096 ? context : max_new_tokens + 4096);
    size_t bytes = per_token * (tokens + 64);
    return bytes < ((size_t)4 << 20) ? (size_t)4 << 20 : bytes;
}

/* Submits prompt i (encoded into out->prompts[i]). */
static int submit_prompt(engine *e, tokenizer *tok, chat_template_kind kind, const oracle_prompt_set *set, int i,
                         const loop_answer_params *p, const int32_t *stops, int n_stops, loop_answers *out,
                         duel_error *err) {
    chat_message msg = {.role = "user", .content = set->items[i].turns[0].prompt};
    size_t n = 0;
    int rc = chat_template_encode(kind, tok, &msg, 1, true, &out->prompts[i], &n, err);
    if (rc) return rc;
    out->n_prompt[i] = (int)n;
    engine_request req = {.tokens = out->prompts[i],
                          .num_tokens = (int)n,
                          .num_candidates = p->samples,
                          .sampling = {.temperature = (float)p->temperature, .top_p = 1.0f},
                          .seed = p->seed + (uint64_t)i,
                          .max_new_tokens = p->max_new_tokens,
                          .stop_tokens = stops,
                          .num_stop_tokens = n_stops,
                          .user = (void *)(intptr_t)i};
    uint64_t id;
    return engine_submit(e, &req, &id, err);
}

int loop_answers_make(const char *dir, const oracle_prompt_set *set, int count, const loop_answer_params *p,
                      loop_answers *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    if (count < 1 || count > set->count || p->samples < 1 || p->in_flight < 1)
        return duel_error_set(err, DUEL_EINVAL, "answers: %d prompts of %d, %d samples, %d in flight", count,
                              set->count, p->samples, p->in_flight);
    model *m = NULL;
    tokenizer *tok = NULL;
    engine *e = NULL;
    chat_template_kind kind;
    char path[4200];
    out->count = count;
    out->samples = p->samples;
    out->items = calloc((size_t)count * (size_t)p->samples, sizeof *out->items);
    out->prompts = calloc((size_t)count, sizeof *out->prompts);
    out->n_prompt = calloc((size_t)count, sizeof *out->n_prompt);
    int rc = !out->items || !out->prompts || !out->n_prompt ? duel_error_set(err, DUEL_ENOMEM, "out of memory") : 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (rc == 0 && (rc = model_load(dir, &m, err)) == 0 && (rc = tokenizer_load(path, &tok, err)) == 0)
        rc = chat_template_detect(dir, &kind, err);
    int32_t stops[9];
    int n_stops = 0;
    if (rc == 0) {
        const model_config *c = model_get_config(m);
        for (int i = 0; i < c->num_eos_token_ids && n_stops < 8; i++) stops[n_stops++] = c->eos_token_ids[i];
        const char *eot = chat_template_end_of_turn(kind);
        if (eot && tokenizer_token_id(tok, eot) >= 0) stops[n_stops++] = tokenizer_token_id(tok, eot);
        engine_model_params arm = {.arm = "answers", .model = m, .tokenizer = tok};
        engine_params ep = {.models = &arm, .num_models = 1,
                            .kv_memory_bytes = loop_kv_bytes(c, p->in_flight * p->samples, p->max_new_tokens)};
        rc = engine_create(&ep, &e, err);
    }
    int submitted = 0, finished = 0;
    while (rc == 0 && finished < count) {
        while (rc == 0 && submitted < count && submitted - finished < p->in_flight)
            if ((rc = submit_prompt(e, tok, kind, set, submitted, p, stops, n_stops, out, err)) == 0) submitted++;
        if (rc) break;
        engine_event *ev = NULL;
        engine_poll(e, 300.0, &ev);
        if (!ev) {
            rc = duel_error_set(err, DUEL_EIO, "answers of %s: nothing from the engine in 300 s", dir);
            break;
        }
        intptr_t i = (intptr_t)ev->user;
        if (ev->kind == ENGINE_EVENT_ERROR) {
            rc = duel_error_set(err, ev->status, "answers of %s: %s", dir, ev->message);
        } else if (ev->kind == ENGINE_EVENT_CANDIDATE && ev->candidate >= 0 && ev->candidate < p->samples) {
            loop_answer *a = &out->items[i * p->samples + ev->candidate];
            free(a->text);
            free(a->tokens);
            a->text = strdup(ev->text ? chat_template_strip_answer_prefix(kind, ev->text) : "");
            a->tokens = malloc(((size_t)ev->count + 1) * sizeof *a->tokens);
            if (a->tokens && ev->count) memcpy(a->tokens, ev->tokens, (size_t)ev->count * sizeof *a->tokens);
            a->n_tokens = ev->count;
            a->logprob = ev->logprob_sum;
            if (!a->text || !a->tokens) rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
        } else if (ev->kind == ENGINE_EVENT_FINISHED || ev->kind == ENGINE_EVENT_CANCELLED) {
            finished++;
        }
        engine_event_free(ev);
    }
    engine_destroy(e);
    model_free(m);
    tokenizer_free(tok);
    for (int i = 0; rc == 0 && i < count * p->samples; i++)
        if (!out->items[i].text && !(out->items[i].text = strdup("")))
            rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
    if (rc) loop_answers_free(out);
    return rc;
}

/* ---- comparisons --------------------------------------------------------------------------- */

/* Mean oracle score of prompt i's answers. */
static int prompt_score(oracle_user *o, const oracle_prompt_set *set, const loop_answers *a, int i, double *out,
                        duel_error *err) {
    double sum = 0;
    for (int k = 0; k < a->samples; k++) {
        double s;
        int rc = oracle_user_score(o, &set->items[i].turns[0], a->items[i * a->samples + k].text, &s, err);
        if (rc) return rc;
        sum += s;
    }
    *out = sum / a->samples;
    return 0;
}

int loop_compare(oracle_user *o, const oracle_prompt_set *set, const loop_answers *before, const loop_answers *after,
                 loop_comparison *out, double *score_before, double *score_after, duel_error *err) {
    memset(out, 0, sizeof *out);
    if (before->count != after->count || before->samples != after->samples || before->count > set->count)
        return duel_error_set(err, DUEL_EINVAL, "comparison: %d x %d answers against %d x %d", before->count,
                              before->samples, after->count, after->samples);
    const oracle_preference_config *pc = &oracle_user_config(o)->preference;
    double wins = 0, sum_before = 0, sum_after = 0;
    int shares = 0;
    for (int i = 0; i < before->count; i++) {
        double mb, ma;
        int rc = prompt_score(o, set, before, i, &mb, err);
        if (rc || (rc = prompt_score(o, set, after, i, &ma, err))) return rc;
        bool differs = false;
        for (int k = 0; k < before->samples; k++)
            differs |= strcmp(before->items[i * before->samples + k].text, after->items[i * after->samples + k].text) != 0;
        const double p = oracle_preference_win_probability(pc, ma, mb);
        wins += p;
        shares += p > 0.5;
        sum_before += mb;
        sum_after += ma;
        out->changed += differs;
        if (score_before) score_before[i] = mb;
        if (score_after) score_after[i] = ma;
    }
    out->win_rate = wins / before->count;
    out->win_share = (double)shares / before->count;
    out->score_before = sum_before / before->count;
    out->score_after = sum_after / before->count;
    return 0;
}

int loop_mean_score(oracle_user *o, const oracle_prompt_set *set, const loop_answers *a, double *out,
                    duel_error *err) {
    double sum = 0;
    for (int i = 0; i < a->count; i++) {
        double s;
        int rc = prompt_score(o, set, a, i, &s, err);
        if (rc) return rc;
        sum += s;
    }
    *out = a->count ? sum / a->count : 0;
    return 0;
}

int loop_sequence_logprob(model *m, const int32_t *prompt, int n_prompt, const int32_t *answer, int n_answer,
                          double *out, duel_error *err) {
    *out = 0;
    if (n_answer == 0) return 0;
    const int vocab = model_output_size(m);
    model_kv_cache *kv = NULL;
    float *logits = malloc((size_t)vocab * (size_t)n_answer * sizeof *logits);
    int rc = logits ? model_kv_cache_create(m, n_prompt + n_answer, &kv, err)
                    : duel_error_set(err, DUEL_ENOMEM, "out of memory");
    /* the prompt's last position predicts answer[0]; answer[t] predicts answer[t + 1] */
    if (rc == 0) rc = model_forward(m, kv, prompt, n_prompt, logits, false, NULL, err);
    double sum = 0;
    if (rc == 0) sum += logits[answer[0]] - cpu_log_sum_exp(logits, vocab);
    if (rc == 0 && n_answer > 1) rc = model_forward(m, kv, answer, n_answer - 1, logits, true, NULL, err);
    for (int t = 1; rc == 0 && t < n_answer; t++) {
        const float *row = logits + (size_t)(t - 1) * (size_t)vocab;
        sum += row[answer[t]] - cpu_log_sum_exp(row, vocab);
    }
    model_kv_cache_free(kv);
    free(logits);
    if (rc == 0) *out = sum;
    return rc;
}

/* ---- figures ------------------------------------------------------------------------------ */

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double loop_percentile(double *v, int n, double q) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, compare_double);
    int k = (int)floor(q * (n - 1));
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}
