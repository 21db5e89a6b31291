/* test_online_votes.h: a scripted vote producer for the online trainer's tests: entries in the
 * gateway's format (the vote codec's encoder, common/vote_entry.h) XADDed to duel:prefs, with
 * random prompt and candidate tokens for the fixture models (vocabulary 512), random ERM
 * features, and the a/b choice made by a hidden linear reward on the features, so the ERM has
 * something to learn. Bad kinds exercise the dead-letter path. */
#ifndef DUEL_TEST_ONLINE_VOTES_H
#define DUEL_TEST_ONLINE_VOTES_H

#include <hiredis/hiredis.h>

#include "rng.h"
#include "test_helpers.h"
#include "vote_entry.h"

#define VOTES_M 4
#define VOTES_MAX_D 256

typedef enum vote_kind {
    VOTE_AB,
    VOTE_TIE,
    VOTE_BAD_MISSING_FIELD,
    VOTE_BAD_MODEL_ID,
    VOTE_BAD_FEATURE_SIZE,
} vote_kind;

typedef struct vote_producer {
    duel_rng rng;
    int d_feat, vocab, serial;
    float w[VOTES_MAX_D]; /* the hidden reward */
    const char *model_id;
} vote_producer;

static inline void vote_producer_init(vote_producer *p, uint64_t seed, int d_feat, const char *model_id) {
    memset(p, 0, sizeof *p);
    duel_rng_seed(&p->rng, seed);
    p->d_feat = d_feat;
    p->vocab = 512;
    p->model_id = model_id;
    for (int k = 0; k < d_feat; k++) p->w[k] = (float)duel_rng_normal(&p->rng);
}

/* XADDs one entry with stream id `id` ("*" for automatic); writes the vote id into vote_id. */
static inline void vote_producer_add(vote_producer *p, redisContext *c, const char *stream, const char *id,
                                     vote_kind kind, char *vote_id) {
    int32_t prompt[8], cand[VOTES_M * 10], offsets[VOTES_M + 1];
    float features[VOTES_M * VOTES_MAX_D], rewards[VOTES_M * 2];
    int np = 3 + (int)duel_rng_below(&p->rng, 6);
    for (int i = 0; i < np; i++) prompt[i] = 3 + (int32_t)duel_rng_below(&p->rng, (uint64_t)p->vocab - 3);
    int nc = 0;
    offsets[0] = 0;
    for (int m = 0; m < VOTES_M; m++) {
        int len = 2 + (int)duel_rng_below(&p->rng, 9);
        for (int i = 0; i < len; i++) cand[nc++] = 3 + (int32_t)duel_rng_below(&p->rng, (uint64_t)p->vocab - 3);
        offsets[m + 1] = nc;
    }
    double r[VOTES_M];
    for (int m = 0; m < VOTES_M; m++) {
        r[m] = 0;
        for (int k = 0; k < p->d_feat; k++) {
            features[m * p->d_feat + k] = (float)duel_rng_normal(&p->rng);
            r[m] += p->w[k] * features[m * p->d_feat + k];
        }
        rewards[2 * m] = (float)r[m];
        rewards[2 * m + 1] = (float)-r[m];
    }
    vote_entry e;
    memset(&e, 0, sizeof e);
    snprintf(e.vote_id, sizeof e.vote_id, "vote%06d-%08llx", p->serial++,
             (unsigned long long)(duel_rng_next_u64(&p->rng) & 0xffffffffu));
    snprintf(e.duel_id, sizeof e.duel_id, "duel-%.100s", e.vote_id);
    snprintf(e.model_id, sizeof e.model_id, "%s", kind == VOTE_BAD_MODEL_ID ? "someone-else" : p->model_id);
    snprintf(e.strategy, sizeof e.strategy, "ee_ts");
    e.ts_ms = 1700000000000LL + p->serial;
    e.arm = 1;
    e.policy_version = 0;
    int a = (int)duel_rng_below(&p->rng, VOTES_M), b = (a + 1 + (int)duel_rng_below(&p->rng, VOTES_M - 1)) % VOTES_M;
    e.choice = kind == VOTE_TIE ? VOTE_CHOICE_TIE : (r[a] >= r[b] ? VOTE_CHOICE_A : VOTE_CHOICE_B);
    e.chosen_idx = e.choice == VOTE_CHOICE_B ? b : a;
    e.rejected_idx = e.choice == VOTE_CHOICE_B ? a : b;
    e.num_candidates = VOTES_M;
    e.d_feat = p->d_feat;
    e.num_heads = 2;
    e.n_prompt_tokens = np;
    e.prompt_tokens = prompt;
    e.n_cand_tokens = nc;
    e.cand_tokens = cand;
    e.cand_offsets = offsets;
    e.features = features;
    e.erm_rewards = rewards;
    vote_entry_texts texts = {"{\"temperature\":1.0}", "a prompt", "the chosen answer", "the other answer"};
    vote_entry_encoded enc;
    assert_int_equal(vote_entry_encode(&e, &texts, &enc, NULL), 0);
    const int encoded_fields = enc.n_fields; /* every buffer is freed below */
    if (kind == VOTE_BAD_MISSING_FIELD) enc.fields[9] = enc.fields[--enc.n_fields]; /* drop cand_tokens */
    if (kind == VOTE_BAD_FEATURE_SIZE) enc.fields[13].value_len -= 4;               /* features */
    const char *argv[3 + 2 * VOTE_ENTRY_MAX_FIELDS];
    size_t lens[3 + 2 * VOTE_ENTRY_MAX_FIELDS];
    int n = 0;
    argv[n] = "XADD", lens[n++] = 4;
    argv[n] = stream, lens[n++] = strlen(stream);
    argv[n] = id, lens[n++] = strlen(id);
    for (int i = 0; i < enc.n_fields; i++) {
        argv[n] = enc.fields[i].name, lens[n++] = enc.fields[i].name_len;
        argv[n] = enc.fields[i].value, lens[n++] = enc.fields[i].value_len;
    }
    redisReply *rep = redisCommandArgv(c, n, argv, lens);
    assert_non_null(rep);
    if (rep->type == REDIS_REPLY_ERROR) fail_msg("XADD: %s", rep->str);
    freeReplyObject(rep);
    enc.n_fields = encoded_fields;
    vote_entry_encoded_free(&enc);
    if (vote_id) strcpy(vote_id, e.vote_id);
}

/* The kind of the i-th vote of a scripted run: mostly a/b, some ties, a few bad ones. */
static inline vote_kind vote_script_kind(int i) {
    if (i % 17 == 5) return VOTE_TIE;
    if (i == 7) return VOTE_BAD_MISSING_FIELD;
    if (i == 23) return VOTE_BAD_MODEL_ID;
    if (i == 31) return VOTE_BAD_FEATURE_SIZE;
    return VOTE_AB;
}

#endif
