/* test_online_mixture.c: the SEA synthetic mixture of the online trainer (trainer/online_trainer.h),
 * in process on the fixture model tiny-llama-f32: the synthetic label on a hand-built ERM and
 * against a brute-force search over all pairs, no synthetic pairs before burn-in and the exact
 * count after it, gamma = 1 gives the same weights as no mixture (and gamma < 1 does not), and a
 * checkpoint taken mid-batch (duel store, pending pairs, mixture RNG) resumes to bit-identical
 * weights, and the policy gradient, computed in length-sorted chunks, matches the whole batch's
 * computed in one pass by hand (DPO, and IPO with an empty response that must not count), and
 * pilaf votes without features train the policy but not the ERM. */
#include "test_helpers.h"

#include <math.h>

#include "lm_trainer.h"
#include "online_test_env.h"

#define M ONLINE_TEST_M

/* ---- the label ---------------------------------------------------------------------------- */

/* Head e of a 3-head ERM with hidden width 1 returns relu(relu(phi[e])): feature e. */
static erm *feature_picking_erm(void) {
    erm_config ec = {3, 3, 1};
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    erm *model = NULL;
    assert_int_equal(erm_create(&ec, &rng, &model, NULL), 0);
    memset(model->params.memory, 0, model->num_params * sizeof(float));
    for (int e = 0; e < 3; e++) {
        model->params.fc1_weight[e * 3 + e] = 1.0f;
        model->params.fc2_weight[e] = 1.0f;
        model->params.fc3_weight[e] = 1.0f;
    }
    return model;
}

static void test_label_hand_built(void **state) {
    (void)state;
    erm *model = feature_picking_erm();
    /* rows: candidates; columns: the feature each head reads */
    const float features[M * 3] = {0.5f, 3.0f, 1.0f,  /* */
                                   2.0f, 0.2f, 1.0f,  /* */
                                   0.1f, 1.0f, 1.0f,  /* */
                                   1.0f, 0.2f, 1.0f};
    int c = -1, r = -1;
    assert_int_equal(sea_label(model, features, M, 0, &c, &r, NULL), 0);
    assert_int_equal(c, 1); /* 2.0 */
    assert_int_equal(r, 2); /* 0.1 */
    assert_int_equal(sea_label(model, features, M, 1, &c, &r, NULL), 0);
    assert_int_equal(c, 0); /* 3.0 */
    assert_int_equal(r, 1); /* 0.2 at 1 and 3: the first */
    assert_int_equal(sea_label(model, features, M, 2, &c, &r, NULL), 0);
    assert_int_equal(c, 0); /* all equal */
    assert_int_equal(r, 1);
    duel_error err;
    assert_int_equal(sea_label(model, features, 1, 0, &c, &r, &err), DUEL_EINVAL);
    assert_int_equal(sea_label(model, features, M, 3, &c, &r, &err), DUEL_EINVAL);
    assert_int_equal(sea_label(model, features, M, -1, &c, &r, &err), DUEL_EINVAL);
    erm_free(model);
}

/* On a random ensemble the label's pair has the largest |r_e(i) - r_e(j)| of all pairs, found
 * by brute force in double from erm_score's rewards, and chosen has the larger reward. */
static void test_label_is_the_widest_pair(void **state) {
    (void)state;
    erm_config ec = {5, 16, 8};
    duel_rng rng;
    duel_rng_seed(&rng, 77);
    erm *model = NULL;
    assert_int_equal(erm_create(&ec, &rng, &model, NULL), 0);
    for (int trial = 0; trial < 50; trial++) {
        enum { MC = 7 };
        float features[MC * 16], rewards[MC * 5];
        for (int k = 0; k < MC * 16; k++) features[k] = (float)duel_rng_normal(&rng);
        assert_int_equal(erm_score(model, features, MC, rewards, NULL), 0);
        int head = trial % 5, c, r;
        assert_int_equal(sea_label(model, features, MC, head, &c, &r, NULL), 0);
        double best = -1;
        for (int i = 0; i < MC; i++)
            for (int j = i + 1; j < MC; j++) best = fmax(best, fabs((double)rewards[i * 5 + head] - rewards[j * 5 + head]));
        assert_true(c != r);
        assert_true(rewards[c * 5 + head] >= rewards[r * 5 + head]);
        assert_true((double)rewards[c * 5 + head] - rewards[r * 5 + head] == best);
    }
    erm_free(model);
}

/* ---- the trainer -------------------------------------------------------------------------- */

static void options_for(online_trainer_options *o, double gamma, int64_t burn_in) {
    online_test_options(o);
    o->publish_every = 0;
    o->gamma = gamma;
    o->burn_in = burn_in;
    o->synthetic_store = 10; /* small: the ring wraps within the test */
}

/* Offers votes serial0 .. serial0+n-1 (every fifth a tie), applying each ready batch; returns
 * the synthetic counts of the updates in counts (when non-NULL). */
static void feed(online_trainer *t, int serial0, int n, int *counts, int *n_updates) {
    for (int i = 0; i < n; i++) {
        online_test_offer_only(t, serial0 + i);
        duel_error err = {0};
        if (online_trainer_cut_due(t, true)) { /* batch_size pairs pending (caught up) */
            int predicted = online_trainer_synthetic_pairs(t);
            if (online_trainer_apply(t, &err)) fail_msg("%s", err.message);
            online_trainer_status s;
            online_trainer_get_status(t, &s);
            assert_int_equal(s.synthetic, predicted);
            if (counts) counts[(*n_updates)++] = s.synthetic;
        }
    }
}

static int same_weights(online_trainer *a, online_trainer *b) {
    train_model *pa = online_trainer_policy(a), *pb = online_trainer_policy(b);
    size_t n = train_model_num_parameters(pa);
    return memcmp(train_model_parameter_memory(pa), train_model_parameter_memory(pb), n * sizeof(float)) == 0 &&
           memcmp(online_trainer_erm(a)->params.memory, online_trainer_erm(b)->params.memory,
                  online_trainer_erm(a)->num_params * sizeof(float)) == 0;
}

static void test_burn_in_then_mixture(void **state) {
    (void)state;
    online_trainer_options o;
    options_for(&o, 0.7, 8);
    online_trainer *t = online_test_open(&o, "mix-burn", NULL, 0);
    int counts[16], n = 0;
    feed(t, 0, 25, counts, &n); /* 20 a/b pairs: 5 updates */
    assert_int_equal(n, 5);
    /* prefs applied before each update: 0, 4 (< 8: none), 8, 12, 16 (>= 8):
     * floor(4 * 0.3 / 0.7 + 0.5) = 2 */
    const int want[5] = {0, 0, 2, 2, 2};
    for (int i = 0; i < 5; i++) assert_int_equal(counts[i], want[i]);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.synthetic_total, 6);
    assert_int_equal(s.prefs_applied, 20); /* synthetic pairs are not real preferences */
    assert_int_equal(s.erm_pairs_seen, 20); /* nor ERM pairs */
    assert_int_equal(s.stored_duels, 10);   /* the store is full (capacity 10) */
    online_trainer_close(t);
    /* gamma 0.5 with batch 4: as many synthetic as real pairs. */
    options_for(&o, 0.5, 0);
    t = online_test_open(&o, "mix-half", NULL, 0);
    n = 0;
    feed(t, 0, 10, counts, &n);
    assert_int_equal(n, 2);
    assert_int_equal(counts[0], 0); /* the store is empty before the first update */
    assert_int_equal(counts[1], 4);
    online_trainer_close(t);
}

static void test_gamma_one_is_no_mixture(void **state) {
    (void)state;
    online_trainer_options o;
    options_for(&o, 1.0, 0);
    online_trainer *one = online_test_open(&o, "mix-g1", NULL, 0);
    options_for(&o, 0.7, (int64_t)1 << 40);
    online_trainer *none = online_test_open(&o, "mix-none", NULL, 0);
    options_for(&o, 0.7, 0);
    online_trainer *mixed = online_test_open(&o, "mix-g07", NULL, 0);
    int counts[16], n = 0;
    feed(one, 0, 20, counts, &n);
    for (int i = 0; i < n; i++) assert_int_equal(counts[i], 0);
    feed(none, 0, 20, NULL, NULL);
    feed(mixed, 0, 20, NULL, NULL);
    assert_true(same_weights(one, none));
    assert_false(same_weights(one, mixed)); /* the mixture changes the policy update */
    online_trainer_close(one);
    online_trainer_close(none);
    online_trainer_close(mixed);
}

/* A checkpoint with a partial batch pending and the store full, then close and reopen: the rest
 * of the run ends bit-identical to an uninterrupted one. A corrupted entries.bin is refused. */
static void test_checkpoint_resume_is_exact(void **state) {
    (void)state;
    online_trainer_options o;
    options_for(&o, 0.6, 4);
    char dir[512];
    online_trainer *a = online_test_open(&o, "mix-ckpt-a", NULL, 0);
    online_trainer *b = online_test_open(&o, "mix-ckpt-b", dir, sizeof dir);
    feed(a, 0, 40, NULL, NULL);
    feed(b, 0, 22, NULL, NULL); /* 18 a/b pairs: 4 updates, 2 pending */
    assert_int_equal(online_trainer_pending_pairs(b), 2);
    duel_error err = {0};
    if (online_trainer_checkpoint(b, &err)) fail_msg("%s", err.message);
    online_trainer_status before;
    online_trainer_get_status(b, &before);
    online_trainer_close(b);
    if (online_trainer_open(&o, dir, &b, &err)) fail_msg("%s", err.message);
    online_trainer_status after;
    online_trainer_get_status(b, &after);
    assert_int_equal(online_trainer_pending_pairs(b), 2);
    assert_int_equal(after.stored_duels, before.stored_duels);
    assert_int_equal(after.synthetic_total, before.synthetic_total);
    assert_true(before.synthetic_total > 0);
    assert_string_equal(after.last_applied_id, "1-22");
    feed(b, 22, 18, NULL, NULL);
    assert_true(same_weights(a, b));
    online_trainer_get_status(a, &before);
    online_trainer_get_status(b, &after);
    assert_int_equal(after.synthetic_total, before.synthetic_total);
    assert_int_equal(after.prefs_applied, before.prefs_applied);
    online_trainer_close(a);
    /* A byte flipped in entries.bin: the hash check refuses the checkpoint, naming the file. */
    if (online_trainer_checkpoint(b, &err)) fail_msg("%s", err.message);
    online_trainer_close(b);
    /* A smaller synthetic_store after a restart keeps the newest duels. */
    online_trainer_options smaller = o;
    smaller.synthetic_store = 5;
    if (online_trainer_open(&smaller, dir, &b, &err)) fail_msg("%s", err.message);
    online_trainer_get_status(b, &after);
    assert_int_equal(after.stored_duels, 5);
    online_trainer_close(b);
    char path[700];
    snprintf(path, sizeof path, "%s/trainer/checkpoint/entries.bin", dir);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 40, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, 40, SEEK_SET);
    fputc(ch ^ 0x11, f);
    fclose(f);
    assert_int_equal(online_trainer_open(&o, dir, &b, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "entries.bin"));
}

/* Where the reference log-probabilities of check_gradient's votes come from. */
typedef enum ref_mode {
    REF_TRAINER,       /* the votes carry none: the trainer runs its reference model */
    REF_VOTES,         /* the votes carry them, each off the reference's own by a different
                          amount (tenths of a nat) within a tolerance raised to 1 nat: the
                          trainer checks them on its first chunk, then must use exactly these */
    REF_VOTES_WRONG,   /* the same values at the shipped tolerance (ONLINE_VOTE_REF_TOLERANCE):
                          the check refuses them and the trainer uses its own reference */
    REF_VOTES_IGNORED, /* in-tolerance votes with trainer.vote_ref_logprobs off: its own */
} ref_mode;

/* The gradient of one update (batch 7, no clipping, no mixture) against the same DAP loss on the
 * whole batch in one forward/backward of a fresh copy of the model; the trainer's chunks are of
 * chunk_positions padded positions at most (1: a pair each; 0: the default). */
static void check_gradient(dap_loss_kind kind, int chunk_positions, ref_mode mode) {
    online_trainer_options o;
    options_for(&o, 1.0, 0);
    o.batch_size = 7;
    o.vote_ref_logprobs = mode != REF_VOTES_IGNORED;
    if (mode == REF_VOTES) o.vote_ref_tolerance = 1.0;
    if (chunk_positions > 0) o.chunk_positions = chunk_positions;
    o.clip_norm = 0;
    dap_loss_default_options(kind, &o.loss);
    online_trainer *t = online_test_open(&o, "mix-grad", NULL, 0);
    vote_entry votes[7];
    for (int i = 0; i < 7; i++) {
        duel_rng rng;
        duel_rng_seed(&rng, 500 + (uint64_t)i);
        online_test_entry(&rng, 500 + i, VOTE_CHOICE_A, &votes[i]);
        if (i == 2) { /* an empty chosen response: IPO cannot use the pair */
            vote_entry *e = &votes[i];
            int c = e->chosen_idx, len = e->cand_offsets[c + 1] - e->cand_offsets[c];
            memmove(e->cand_tokens + e->cand_offsets[c], e->cand_tokens + e->cand_offsets[c + 1],
                    (size_t)(e->n_cand_tokens - e->cand_offsets[c + 1]) * sizeof(int32_t));
            for (int m = c + 1; m <= M; m++) e->cand_offsets[m] -= len;
            e->n_cand_tokens -= len;
        }
    }
    /* by hand, before the trainer takes the entries: rows chosen 0..6, rejected 7..13 */
    int T = 1;
    for (int i = 0; i < 7; i++)
        for (int side = 0; side < 2; side++) {
            int len;
            vote_entry_candidate(&votes[i], side ? votes[i].rejected_idx : votes[i].chosen_idx, &len);
            if (votes[i].n_prompt_tokens + len - 1 > T) T = votes[i].n_prompt_tokens + len - 1;
        }
    int32_t *tokens = calloc((size_t)14 * T, sizeof(int32_t)), *targets = calloc((size_t)14 * T, sizeof(int32_t));
    float *mask = calloc((size_t)14 * T, sizeof(float));
    /* The trainer's rows are forked (the prompt once per pair, trainer/online_trainer.c
     * build_batch): (np - 1) + lc + lr positions, padded to the longest (T_fork). */
    double hand_positions = 0, hand_heads = 0; /* rows without padding; response tokens */
    int T_fork = 1;
    for (int i = 0; i < 7; i++) {
        int lc, lr;
        vote_entry_candidate(&votes[i], votes[i].chosen_idx, &lc);
        vote_entry_candidate(&votes[i], votes[i].rejected_idx, &lr);
        int len = votes[i].n_prompt_tokens - 1 + lc + lr;
        hand_positions += len;
        hand_heads += lc + lr;
        if (len > T_fork) T_fork = len;
    }
    for (int i = 0; i < 7; i++)
        for (int side = 0; side < 2; side++) {
            const vote_entry *e = &votes[i];
            int len;
            const int32_t *resp = vote_entry_candidate(e, side ? e->rejected_idx : e->chosen_idx, &len);
            int np = e->n_prompt_tokens, row = side * 7 + i;
            for (int p = 0; p + 1 < np + len; p++) {
                tokens[row * T + p] = p < np ? e->prompt_tokens[p] : resp[p - np];
                targets[row * T + p] = p + 1 < np ? e->prompt_tokens[p + 1] : resp[p + 1 - np];
                mask[row * T + p] = p + 1 >= np ? 1.0f : 0.0f;
            }
        }
    train_model *policy = NULL, *reference = NULL;
    char *cfg = NULL;
    assert_int_equal(lm_model_load_hf(online_test_model(), &policy, &cfg, NULL), 0);
    free(cfg);
    assert_int_equal(lm_model_load_hf(online_test_model(), &reference, &cfg, NULL), 0);
    free(cfg);
    train_batch tb = {14, T, tokens, targets, mask};
    double seq[14], cnt[14], ref[14], rcnt[14], dseq[14];
    assert_int_equal(train_model_forward(reference, &tb, ref, rcnt, NULL, NULL), 0);
    if (mode != REF_TRAINER) {
        for (int i = 0; i < 7; i++) {
            vote_entry *e = &votes[i];
            e->ref_logprobs = malloc(M * sizeof(float));
            for (int m = 0; m < M; m++) e->ref_logprobs[m] = -1.0f - (float)m; /* unused candidates */
            /* tenths of a nat off, different per pair and side */
            e->ref_logprobs[e->chosen_idx] = (float)(ref[i] - 0.3 * (i % 3) - 0.1);
            e->ref_logprobs[e->rejected_idx] = (float)(ref[7 + i] - 0.2 * (i % 2));
            if (mode == REF_VOTES) {
                ref[i] = e->ref_logprobs[e->chosen_idx];
                ref[7 + i] = e->ref_logprobs[e->rejected_idx];
            }
        }
    }
    train_model_zero_grad(policy);
    assert_int_equal(train_model_forward(policy, &tb, seq, cnt, NULL, NULL), 0);
    dap_loss_batch lb = {7, seq, seq + 7, cnt, cnt + 7, ref, ref + 7, NULL, NULL};
    dap_loss_grads g = {dseq, dseq + 7, NULL};
    dap_loss_result want;
    assert_int_equal(dap_loss_compute(&o.loss, &lb, &want, &g, NULL), 0);
    assert_int_equal(want.pairs_used, kind == DAP_LOSS_IPO || kind == DAP_LOSS_SIMPO ? 6 : 7); /* means: not the empty pair */
    assert_int_equal(train_model_backward(policy, dseq, NULL), 0);
    /* the trainer */
    for (int i = 0; i < 7; i++) {
        char id[32];
        snprintf(id, sizeof id, "2-%d", i);
        online_offer_result res;
        duel_error err = {0};
        if (online_trainer_offer(t, id, &votes[i], &res, &err)) fail_msg("%s", err.message);
        vote_entry_free(&votes[i]);
    }
    duel_error err = {0};
    if (online_trainer_apply(t, &err)) fail_msg("%s", err.message);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    /* The policy starts as the reference: its own log-probabilities cancel the reference's
     * exactly (chunks or not) unless they come from the votes, where the chunks' rounding
     * (~1e-7) shows; the votes' shifts move the loss by ~0.1. */
    const double loss_tol = mode == REF_VOTES ? 1e-5 : 1e-9, margin_tol = mode == REF_VOTES ? 1e-5 : 1e-6;
    if (!(fabs(s.loss - want.loss) <= loss_tol * fmax(1.0, fabs(want.loss))))
        fail_msg("%s, chunks of %d, ref mode %d: loss %.12g, by hand %.12g", dap_loss_kind_name(kind), chunk_positions,
                 (int)mode, s.loss, want.loss);
    if (!(fabs(s.margin - want.mean_margin) <= margin_tol * fmax(1.0, fabs(want.mean_margin))))
        fail_msg("%s, chunks of %d, ref mode %d: margin %.12g, by hand %.12g", dap_loss_kind_name(kind),
                 chunk_positions, (int)mode, s.margin, want.mean_margin);
    if (s.vote_ref_pairs != (mode == REF_VOTES && kind != DAP_LOSS_SIMPO ? 7 : 0))
        fail_msg("%s, chunks of %d, ref mode %d: %lld pairs took the votes' reference", dap_loss_kind_name(kind),
                 chunk_positions, (int)mode, (long long)s.vote_ref_pairs);
    /* the check on the first chunk: agreed, refused, or never run */
    const bool checked = kind != DAP_LOSS_SIMPO && (mode == REF_VOTES || mode == REF_VOTES_WRONG);
    assert_int_equal(s.vote_ref_check, !checked ? 0 : mode == REF_VOTES ? 1 : -1);
    if (checked) { /* the offsets are 0.1 to 0.7 nats; one chunk holds them all */
        assert_true(s.vote_ref_error > 0.09 && s.vote_ref_error < 0.701);
        if (chunk_positions == 0) assert_true(fabs(s.vote_ref_error - 0.7) < 1e-3);
    }
    if (chunk_positions == 0) { /* one chunk of all 7 forked rows: the FLOP count of the status by hand */
        double body, head;
        train_model_flops_per_position(policy, T_fork, &body, &head);
        const bool ran_ref = kind != DAP_LOSS_SIMPO; /* one chunk: the checked one, if any */
        const double want_flops = (hand_positions * body + hand_heads * head) * (ran_ref ? 4.0 / 3.0 : 1.0);
        if (fabs(s.update_flops - want_flops) > 1e-9 * want_flops)
            fail_msg("update_flops %.6g, by hand %.6g", s.update_flops, want_flops);
    }
    size_t n = train_model_num_parameters(policy);
    const float *got = train_model_gradient_memory(online_trainer_policy(t)), *ref_g = train_model_gradient_memory(policy);
    double diff = 0, norm = 0;
    for (size_t k = 0; k < n; k++) {
        diff += ((double)got[k] - ref_g[k]) * ((double)got[k] - ref_g[k]);
        norm += (double)ref_g[k] * ref_g[k];
    }
    assert_true(norm > 0);
    double rel = sqrt(diff / norm);
    if (!(rel < 1e-5)) fail_msg("%s: gradient relative error %g", dap_loss_kind_name(kind), rel);
    free(tokens);
    free(targets);
    free(mask);
    train_model_free(policy);
    train_model_free(reference);
    online_trainer_close(t);
}

static void test_chunked_gradient_dpo(void **state) {
    (void)state;
    check_gradient(DAP_LOSS_DPO, 1, REF_TRAINER);  /* seven chunks of one pair */
    check_gradient(DAP_LOSS_DPO, 60, REF_TRAINER); /* chunks of a few pairs */
    check_gradient(DAP_LOSS_DPO, 0, REF_TRAINER);  /* the default budget: one chunk here */
}

static void test_chunked_gradient_ipo(void **state) {
    (void)state;
    check_gradient(DAP_LOSS_IPO, 1, REF_TRAINER);
    check_gradient(DAP_LOSS_IPO, 60, REF_TRAINER);
}

/* Votes that carry the reference's log-probabilities (the serving engine's): the trainer checks
 * them against its own on the first chunk, then uses them, not its reference model (their small
 * offsets change the loss and the margin beyond the tolerances), and runs no reference forward
 * for the other chunks (vote_ref_pairs); votes whose values are another model's are refused and
 * its own reference used; with trainer.vote_ref_logprobs off it ignores them. */
static void test_gradient_with_vote_reference(void **state) {
    (void)state;
    check_gradient(DAP_LOSS_DPO, 60, REF_VOTES);
    check_gradient(DAP_LOSS_DPO, 0, REF_VOTES);
    check_gradient(DAP_LOSS_IPO, 1, REF_VOTES);
    check_gradient(DAP_LOSS_DPO, 60, REF_VOTES_WRONG);
    check_gradient(DAP_LOSS_DPO, 0, REF_VOTES_IGNORED);
    check_gradient(DAP_LOSS_SIMPO, 0, REF_VOTES); /* no reference at all */
}

/* A pilaf vote (the engine adapter's: two candidates, no features or rewards, d_feat 0) of
 * serial, through the vote codec under the trainer's limits as `duel train` reads it, offered
 * with stream id 2-<serial+1>. */
static void offer_pilaf(online_trainer *t, int serial, vote_choice choice) {
    duel_rng rng;
    duel_rng_seed(&rng, 5000 + (uint64_t)serial);
    vote_entry e, got;
    online_test_entry(&rng, serial, VOTE_CHOICE_TIE, &e);
    snprintf(e.vote_id, sizeof e.vote_id, "pilaf-%06d", serial);
    snprintf(e.strategy, sizeof e.strategy, "pilaf");
    e.num_candidates = 2;
    e.n_cand_tokens = e.cand_offsets[2];
    e.choice = choice;
    e.chosen_idx = serial % 2;
    e.rejected_idx = 1 - e.chosen_idx;
    free(e.features);
    free(e.erm_rewards);
    e.features = e.erm_rewards = NULL;
    e.d_feat = e.num_heads = 0;
    vote_entry_encoded enc;
    vote_entry_limits limits;
    online_trainer_limits(t, &limits);
    duel_error err = {0};
    if (vote_entry_encode(&e, NULL, &enc, &err) ||
        vote_entry_decode(enc.fields, enc.n_fields, &limits, &got, &err))
        fail_msg("pilaf vote: %s", err.message);
    vote_entry_encoded_free(&enc);
    vote_entry_free(&e);
    char id[32];
    snprintf(id, sizeof id, "2-%d", serial + 1);
    online_offer_result res;
    if (online_trainer_offer(t, id, &got, &res, &err)) fail_msg("%s", err.message);
    vote_entry_free(&got);
}

/* Pilaf votes carry no features: a batch of them moves the policy (DPO) but leaves the ERM's
 * weights, its pair buffer and accuracy, and the SEA store as they were; synthetic pairs still
 * come from the featured duels stored before. A pending pilaf vote survives a checkpoint. */
static void test_pilaf_votes_train_policy_only(void **state) {
    (void)state;
    online_trainer_options o;
    options_for(&o, 0.5, 0);
    char dir[512];
    online_trainer *t = online_test_open(&o, "mix-pilaf", dir, sizeof dir);
    feed(t, 0, 5, NULL, NULL); /* 4 featured a/b pairs and a tie: one update */
    online_trainer_status before, after;
    online_trainer_get_status(t, &before);
    assert_int_equal(before.step, 1);
    const erm *m = online_trainer_erm(t);
    const size_t n_erm = m->num_params, n_policy = train_model_num_parameters(online_trainer_policy(t));
    float *erm0 = malloc(n_erm * sizeof(float)), *policy0 = malloc(n_policy * sizeof(float));
    memcpy(erm0, m->params.memory, n_erm * sizeof(float));
    memcpy(policy0, train_model_parameter_memory(online_trainer_policy(t)), n_policy * sizeof(float));
    offer_pilaf(t, 0, VOTE_CHOICE_TIE); /* counted, never stored */
    for (int i = 1; i <= 4; i++) offer_pilaf(t, i, VOTE_CHOICE_A);
    assert_true(online_trainer_cut_due(t, true));
    duel_error err = {0};
    if (online_trainer_apply(t, &err)) fail_msg("%s", err.message);
    online_trainer_get_status(t, &after);
    assert_int_equal(after.step, 2);
    assert_int_equal(after.prefs_applied, 8);
    assert_int_equal(after.synthetic, 4); /* gamma 0.5: from the 5 featured duels stored */
    assert_int_equal(after.ties, before.ties + 1);
    assert_int_equal(after.erm_pairs_seen, before.erm_pairs_seen);
    assert_int_equal(after.erm_scored, before.erm_scored);
    assert_true(after.erm_accuracy == before.erm_accuracy);
    assert_int_equal(after.stored_duels, before.stored_duels);
    assert_memory_equal(online_trainer_erm(t)->params.memory, erm0, n_erm * sizeof(float));
    assert_true(isfinite(after.loss));
    assert_true(memcmp(train_model_parameter_memory(online_trainer_policy(t)), policy0,
                       n_policy * sizeof(float)) != 0);
    /* Pending pilaf votes go through the checkpoint's entries.bin and back. */
    offer_pilaf(t, 5, VOTE_CHOICE_B);
    if (online_trainer_checkpoint(t, &err)) fail_msg("%s", err.message);
    online_trainer_close(t);
    t = NULL;
    if (online_trainer_open(&o, dir, &t, &err)) fail_msg("reopen: %s", err.message);
    assert_int_equal(online_trainer_pending_pairs(t), 1);
    online_trainer_close(t);
    free(erm0);
    free(policy0);
}

static void test_bad_options(void **state) {
    (void)state;
    online_trainer_options o;
    const double gammas[] = {0.0, -0.1, 1.5, NAN};
    for (int i = 0; i < 4; i++) {
        options_for(&o, gammas[i], 0);
        online_trainer *t = NULL;
        duel_error err = {0};
        assert_int_equal(online_trainer_open(&o, "/nonexistent-dir", &t, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, "gamma"));
    }
    options_for(&o, 0.7, -1);
    online_trainer *t = NULL;
    duel_error err = {0};
    assert_int_equal(online_trainer_open(&o, "/nonexistent-dir", &t, &err), DUEL_EINVAL);
    options_for(&o, 0.7, 0);
    o.synthetic_store = 0;
    assert_int_equal(online_trainer_open(&o, "/nonexistent-dir", &t, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "synthetic_store"));
    options_for(&o, 0.7, 0);
    o.chunk_positions = 0;
    assert_int_equal(online_trainer_open(&o, "/nonexistent-dir", &t, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "chunk_positions"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_label_hand_built),
        cmocka_unit_test(test_label_is_the_widest_pair),
        cmocka_unit_test(test_burn_in_then_mixture),
        cmocka_unit_test(test_gamma_one_is_no_mixture),
        cmocka_unit_test(test_checkpoint_resume_is_exact),
        cmocka_unit_test(test_chunked_gradient_dpo),
        cmocka_unit_test(test_chunked_gradient_ipo),
        cmocka_unit_test(test_gradient_with_vote_reference),
        cmocka_unit_test(test_pilaf_votes_train_policy_only),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
