/* engine_duel.c: a finished duel request's selection (engine.h, request.duel; DESIGN.md
 * sections 4 and 5), on the engine thread once every candidate has finished: the candidates'
 * ERM features (the reference arm's pass over prompt + candidate, or the policy's own hidden
 * states), their rewards (erm_score with the arm's ERM or the engine's), the pair (duel_select,
 * or duel_select_arena over the two halves of an arena request), its placement and R-hat, all
 * in one DUEL_READY event.
 *
 * The reference pass runs on a pool of its own (ref_pool, engine thread only; kept between
 * duels and grown when a duel needs more blocks): it is a prefill of prompt + candidates, short
 * next to the decode it follows. Selection randomness comes from one rng seeded
 * seed ^ ENGINE_DUEL_SEED_SALT: duel_select draws first, then duel_place. */
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "engine_internal.h"
#include "timer.h"

/* The reference arm's features of a duel's candidates into features [M][2H]: the prompt runs
 * once as one sequence of the engine's private reference pool, M forks of it share its blocks,
 * and all M candidates run in one model_forward_batch (each weight read once for all of them).
 * The same pass scores the candidates: ref_logprobs[i] = log pi_ref(candidate i | prompt), the
 * sum over its tokens (the first from the prompt's last logits, the others from the candidate's
 * own rows), which the trainer's DPO-family losses need and need not recompute.
 * The pool is kept between duels and grown when a duel needs more blocks. */
static int reference_features(engine *e, model *fm, engine_active *a, float *features,
                              double *ref_logprobs, duel_error *err) {
    const model_config *c = model_get_config(fm);
    int M = a->num_candidates, H = c->hidden_size, D = 2 * H;
    int longest = 0;
    for (int i = 0; i < M; i++)
        if (a->cand_counts[i] > longest) longest = a->cand_counts[i];
    if ((int64_t)a->prompt_len + longest > c->max_position_embeddings)
        return duel_error_set(err, DUEL_ELIMIT,
                              "duel: prompt + candidate of %d tokens exceed the reference arm's "
                              "context of %d",
                              a->prompt_len + longest, c->max_position_embeddings);
    int bs = KV_BLOCK_SIZE;
    int64_t need = (a->prompt_len + bs - 1) / bs + (int64_t)M * ((longest + bs - 1) / bs + 1) + 1;
    if (need > KV_MAX_BLOCKS) return duel_error_set(err, DUEL_ELIMIT, "duel: too many features");
    if (!e->ref_pool || kv_pool_num_blocks(e->ref_pool) < need) {
        kv_pool_destroy(e->ref_pool);
        e->ref_pool = NULL;
        kv_pool_params pp = {.num_layers = c->num_layers, .num_kv_heads = c->num_kv_heads,
                             .head_dim = c->head_dim, .block_size = bs,
                             .num_blocks = (int)(need + need / 2), .allocate_storage = true,
                             /* the main pool's KV dtype */
                             .bytes_per_element =
                                 kv_pool_get_params(e->pool)->bytes_per_element};
        int rc = kv_pool_create(&pp, &e->ref_pool, err);
        if (rc) return rc;
    }
    kv_pool *pool = e->ref_pool;
    const int V = c->vocab_size;
    kv_sequence *seqs = calloc((size_t)M + 1, sizeof *seqs);
    model_batch_entry *entries = calloc((size_t)M, sizeof *entries);
    float *prompt_logits = malloc((size_t)V * sizeof *prompt_logits);
    int32_t *targets = malloc(((size_t)M * (size_t)longest + 1) * sizeof *targets);
    double *rest = calloc((size_t)M, sizeof *rest);
    int rc = DUEL_OK;
    if (!seqs || !entries || !prompt_logits || !targets || !rest) {
        rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for the reference pass");
        goto done;
    }
    for (int i = 0; i <= M; i++) kv_sequence_init(&seqs[i], 1);
    kv_sequence *prompt = &seqs[M];
    if ((rc = kv_sequence_reserve(pool, prompt, a->prompt_len, NULL, err))) goto done;
    model_batch_entry pe = {.seq = prompt, .tokens = a->prompt, .n_tokens = a->prompt_len,
                            .start = 0, .hidden_last = features, .logits = prompt_logits};
    if ((rc = model_forward_batch(fm, pool, &pe, 1, err))) goto done;
    if ((rc = kv_sequence_commit(pool, prompt, a->prompt, a->prompt_len, err))) goto done;
    for (int i = 0; i < M; i++)
        if ((rc = kv_sequence_fork(pool, prompt, &seqs[i], err))) goto done;
    for (int i = 0; i < M; i++) {
        if ((rc = kv_sequence_reserve(pool, &seqs[i], a->cand_counts[i], NULL, err))) goto done;
        float *row = features + (size_t)i * D;
        if (i) memcpy(row, features, (size_t)H * sizeof *row);
        /* token t of the candidate predicts token t + 1; its last token predicts nothing */
        int32_t *tg = targets + (size_t)i * (size_t)longest;
        for (int t = 0; t < a->cand_counts[i]; t++)
            tg[t] = t + 1 < a->cand_counts[i] ? a->cand_tokens[i][t + 1] : -1;
        entries[i] = (model_batch_entry){.seq = &seqs[i], .tokens = a->cand_tokens[i],
                                         .n_tokens = a->cand_counts[i], .start = a->prompt_len,
                                         .hidden_last = row + H, .targets = tg,
                                         .target_logprob = &rest[i]};
    }
    if ((rc = model_forward_batch(fm, pool, entries, M, err))) goto done;
    /* The first tokens: log softmax of the prompt's last logits. */
    const double lse = cpu_log_sum_exp(prompt_logits, V);
    for (int i = 0; i < M; i++) ref_logprobs[i] = (double)prompt_logits[a->cand_tokens[i][0]] - lse + rest[i];
done:
    if (seqs)
        for (int i = 0; i <= M; i++) kv_sequence_free(pool, &seqs[i]);
    free(seqs);
    free(entries);
    free(prompt_logits);
    free(targets);
    free(rest);
    return rc;
}

int engine_duel_ready(engine *e, engine_active *a, const float *prompt_hidden, double decode_ms,
                      engine_event **out, duel_error *err) {
    *out = NULL;
    const erm *scorer = e->arms[a->arm].erm ? e->arms[a->arm].erm : e->erm;
    bool arena = a->arena_arm >= 0;
    const erm *scorer2 = !arena                      ? scorer
                         : e->arms[a->arena_arm].erm ? e->arms[a->arena_arm].erm
                                                     : e->erm;
    int M = a->num_candidates, E = scorer->config.num_heads, half = M / 2;
    bool ref = e->features == ENGINE_FEATURES_REFERENCE;
    model *fm = e->arms[ref ? e->ref_arm : a->arm].model;
    int H = model_get_config(fm)->hidden_size, D = 2 * H;
    if (D != scorer->config.d_feat || D != scorer2->config.d_feat)
        return duel_error_set(err, DUEL_EINVAL, "duel: features of %d floats, the ERM takes %d",
                              D, D != scorer->config.d_feat ? scorer->config.d_feat
                                                            : scorer2->config.d_feat);
    if (scorer2->config.num_heads != E)
        return duel_error_set(err, DUEL_EINVAL, "arena: the arms' ERMs have %d and %d heads", E,
                              scorer2->config.num_heads);
    if (a->lost) return duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for candidates");
    for (int i = 0; i < M; i++)
        if (!a->cand_tokens[i] || a->cand_counts[i] < 1)
            return duel_error_set(err, DUEL_EINVAL, "duel: candidate %d has no tokens", i);
    engine_event *ev = calloc(1, sizeof *ev);
    float *features = malloc((size_t)M * D * sizeof *features);
    float *rewards = malloc((size_t)M * E * sizeof *rewards);
    double *ref_logprobs = NULL;
    int rc = DUEL_OK;
    if (!ev || !features || !rewards) {
        rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for features");
        goto fail;
    }
    double t0 = duel_time_seconds();
    if (ref) {
        if (!(ref_logprobs = malloc((size_t)M * sizeof *ref_logprobs))) {
            rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for features");
            goto fail;
        }
        if ((rc = reference_features(e, fm, a, features, ref_logprobs, err))) goto fail;
    } else {
        if (!prompt_hidden || !a->cand_hidden) {
            rc = duel_error_set(err, DUEL_EINVAL, "duel: no hidden states for policy features");
            goto fail;
        }
        for (int i = 0; i < M; i++) {
            float *row = features + (size_t)i * D;
            memcpy(row, prompt_hidden, (size_t)H * sizeof *row);
            memcpy(row + H, a->cand_hidden + (size_t)i * H, (size_t)H * sizeof *row);
        }
    }
    double t1 = duel_time_seconds();
    if (arena) {
        /* Each half scored by its own arm's ERM; each arm's best by its own ensemble mean. */
        if ((rc = erm_score(scorer, features, half, rewards, err)) ||
            (rc = erm_score(scorer2, features + (size_t)half * D, M - half,
                            rewards + (size_t)half * E, err)))
            goto fail;
    } else if ((rc = erm_score(scorer, features, M, rewards, err))) {
        goto fail;
    }
    double t2 = duel_time_seconds();
    duel_rng rng;
    duel_rng_seed(&rng, a->seed ^ ENGINE_DUEL_SEED_SALT);
    if (arena) {
        int first = 0, second = 0;
        if ((rc = duel_select_arena(rewards, half, E, rewards + (size_t)half * E, M - half, E,
                                    &first, &second, err)))
            goto fail;
        ev->pair = (duel_pair){first, half + second, -1, -1};
        ev->arena_split = half;
    } else if ((rc = duel_select(a->strategy, rewards, M, E, &rng, &ev->pair, err))) {
        goto fail;
    }
    duel_place(&ev->pair, &rng, &ev->placement);
    if ((rc = duel_estimated_regret(rewards, M, E, ev->placement.a, ev->placement.b,
                                    &ev->regret_estimate, err)))
        goto fail;
    double t3 = duel_time_seconds();
    ev->kind = ENGINE_EVENT_DUEL_READY;
    ev->request_id = a->id;
    ev->user = a->user;
    ev->count = M;
    ev->strategy = a->strategy;
    ev->features = features;
    ev->ref_logprobs = ref_logprobs;
    ev->d_feat = D;
    ev->rewards = rewards;
    ev->num_heads = E;
    ev->decode_ms = decode_ms;
    ev->features_ms = ref ? (t1 - t0) * 1e3 : 0;
    ev->score_ms = (t2 - t1) * 1e3;
    ev->select_ms = (t3 - t2) * 1e3;
    *out = ev;
    return DUEL_OK;
fail:
    free(features);
    free(rewards);
    free(ref_logprobs);
    free(ev);
    return rc;
}
