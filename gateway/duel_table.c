/* duel_table.c: the duel table (see duel_table.h). Invariants: a duel is in by_id from its ask
 * until it is dropped or expires; in by_request only while RUNNING or STREAMING; in the expiry
 * list only once FINISHED (VOTED duels stay there as tombstones); finished_bytes is the sum of
 * the bytes of the duels in the expiry list. Lws thread only. */
#include "duel_table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "timer.h"

void duel_table_init(duel_table *t) {
    memset(t, 0, sizeof *t);
    str_map_init(&t->by_id);
    str_map_init(&t->by_request);
}

static void duel_free(duel_rec *d) {
    if (!d) return;
    free(d->user_text);
    duel_backend_result_free(d->result);
    free(d->text_a);
    free(d->text_b);
    free(d);
}

static void free_entry(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    duel_free(value);
}

void duel_table_free(duel_table *t) {
    str_map_foreach(&t->by_id, free_entry, NULL);
    str_map_free(&t->by_id);
    str_map_free(&t->by_request);
}

duel_rec *duel_table_add(duel_table *t, const char *conv_id, uint64_t conn_id, char *user_text,
                         long long arm, double now) {
    duel_rec *d = calloc(1, sizeof *d);
    if (!d || protocol_new_id(d->id)) {
        free(d);
        free(user_text);
        return NULL;
    }
    d->request_id = ++t->next_request_id;
    snprintf(d->request_key, sizeof d->request_key, "%016llx", (unsigned long long)d->request_id);
    snprintf(d->conv_id, sizeof d->conv_id, "%s", conv_id);
    d->conn_id = conn_id;
    d->state = DS_RUNNING;
    d->user_text = user_text;
    d->arm = arm;
    d->t_ask = now;
    if (str_map_put(&t->by_id, d->id, d) || str_map_put(&t->by_request, d->request_key, d)) {
        str_map_remove(&t->by_id, d->id);
        duel_free(d);
        return NULL;
    }
    return d;
}

duel_rec *duel_table_find(duel_table *t, const char *id) { return str_map_get(&t->by_id, id); }

duel_rec *duel_table_find_request(duel_table *t, uint64_t request_id) {
    char key[24];
    snprintf(key, sizeof key, "%016llx", (unsigned long long)request_id);
    return str_map_get(&t->by_request, key);
}

uint64_t duel_seed(const duel_rec *d) {
    char head[17];
    memcpy(head, d->id, 16); /* 64 random bits */
    head[16] = '\0';
    return strtoull(head, NULL, 16);
}

void duel_table_drop(duel_table *t, duel_rec *d) {
    str_map_remove(&t->by_id, d->id);
    str_map_remove(&t->by_request, d->request_key);
    duel_free(d);
}

bool duel_table_start_streaming(duel_rec *d, duel_backend_result *r) {
    d->result = r;
    d->text_a = protocol_sanitize_utf8(r->text_a ? r->text_a : "", r->text_a ? r->len_a : 0, &d->len_a);
    d->text_b = protocol_sanitize_utf8(r->text_b ? r->text_b : "", r->text_b ? r->len_b : 0, &d->len_b);
    if (!d->text_a || !d->text_b) return false;
    d->state = DS_STREAMING;
    return true;
}

static size_t text_bytes(const char *s) { return s ? strlen(s) + 1 : 0; }

/* What a duel holds in memory: the record, its texts and its backend result's arrays. */
static size_t duel_bytes(const duel_rec *d) {
    size_t n = sizeof *d + text_bytes(d->user_text) + (d->text_a ? d->len_a + 1 : 0) +
               (d->text_b ? d->len_b + 1 : 0);
    const duel_backend_result *r = d->result;
    if (r) {
        size_t m = r->num_candidates > 0 ? (size_t)r->num_candidates : 0;
        n += sizeof *r + (r->text_a ? r->len_a : 0) + (r->text_b ? r->len_b : 0) +
             4 * (r->n_prompt_tokens + r->n_cand_tokens + (r->cand_offsets ? m + 1 : 0)) +
             4 * m * ((r->features ? (size_t)r->d_feat : 0) + (r->rewards ? (size_t)r->num_heads : 0) +
                      (r->ref_logprobs ? 1 : 0)) +
             text_bytes(r->gen_params_json) + text_bytes(r->strategy) + text_bytes(r->model_id) +
             text_bytes(r->prompt_text);
    }
    return n;
}

void duel_table_finish(duel_table *t, duel_rec *d, double now) {
    d->state = DS_FINISHED;
    d->finished_at = now;
    str_map_remove(&t->by_request, d->request_key);
    if (t->expire_tail) t->expire_tail->expire_next = d;
    else t->expire_head = d;
    t->expire_tail = d;
    t->finished++;
    d->bytes = duel_bytes(d);
    t->finished_bytes += d->bytes;
}

void duel_table_mark_voted(duel_table *t, duel_rec *d, double now) {
    d->state = DS_VOTED;
    d->t_vote = now;
    duel_backend_result_free(d->result);
    d->result = NULL;
    free(d->text_a);
    free(d->text_b);
    d->text_a = d->text_b = NULL;
    size_t left = duel_bytes(d); /* the tombstone */
    t->finished_bytes -= d->bytes - left;
    d->bytes = left;
}

void duel_table_expire(duel_table *t, double now, double retention_s, size_t max_finished,
                       size_t max_bytes) {
    while (t->expire_head) {
        duel_rec *d = t->expire_head;
        bool too_much = t->finished > max_finished || t->finished_bytes > max_bytes;
        if (!too_much && d->finished_at + retention_s > now) break;
        t->expire_head = d->expire_next;
        if (!t->expire_head) t->expire_tail = NULL;
        t->finished--;
        t->finished_bytes -= d->bytes;
        str_map_remove(&t->by_id, d->id);
        duel_free(d);
    }
}

size_t duel_next_chunk(const char *text, size_t len, size_t pos, size_t min) {
    size_t end = pos + min;
    if (end >= len) return len;
    size_t hard = end + 48 < len ? end + 48 : len;
    while (end < hard && !(text[end - 1] == ' ' || text[end - 1] == '\n')) end++;
    if (end == hard && hard < len)
        while (end > pos + 1 && ((unsigned char)text[end] & 0xC0) == 0x80) end--;
    return end;
}

int duel_build_vote(const duel_rec *d, vote_choice choice, vote_entry_encoded *out,
                    duel_error *err) {
    const duel_backend_result *r = d->result;
    bool b_won = choice == VOTE_CHOICE_B;
    vote_entry e = {0};
    if (protocol_new_id(e.vote_id)) return duel_error_set(err, DUEL_EIO, "no random bytes for a vote id");
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
