/* online_update.c: one update of the online trainer (see online_trainer.h): the ERM step on the
 * batch's real pairs (held-back accuracy first, then the pairs join the buffer and its log),
 * the SEA synthetic pairs labelled by the updated ERM, and one DAP step of the policy over all
 * of them, in length-sorted chunks of forked rows. Deterministic given the trainer's state and
 * the batch: a replay after a crash reaches the same weights. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "online_trainer_state.h"
#include "timer.h"

/* One pair of the policy batch: a real vote or a synthetic pair of a stored duel. */
typedef struct batch_pair {
    const vote_entry *entry;
    int chosen, rejected;
} batch_pair;

/* The row length of a pair: its forked row (train_layers.h train_fork) holds the prompt but its
 * last token once, then each answer after that last token: (P - 1) + Lc + Lr positions, where
 * two plain rows would take 2 (P - 1) + Lc + Lr. */
static int pair_length(const batch_pair *p) {
    int lc, lr;
    vote_entry_candidate(p->entry, p->chosen, &lc);
    vote_entry_candidate(p->entry, p->rejected, &lr);
    return p->entry->n_prompt_tokens - 1 + lc + lr;
}

/* Fills row i with pair i forked: the prompt's first P - 1 tokens (shared[i] = P - 1, no loss),
 * then branch A (the prompt's last token, then the chosen answer less its last token, predicting
 * the chosen answer), then from branch[i] branch B (the same for the rejected answer). The
 * sequence sums come out as chosen 0..P-1, rejected P..2P-1. */
static int build_batch(const batch_pair *pairs, int P, int32_t **tokens, int32_t **targets, float **mask,
                       int32_t *shared, int32_t *branch, int *seq_len, duel_error *err) {
    int T = 1;
    for (int i = 0; i < P; i++)
        if (pair_length(&pairs[i]) > T) T = pair_length(&pairs[i]);
    size_t cells = (size_t)P * T;
    *tokens = calloc(cells, sizeof(int32_t));
    *targets = calloc(cells, sizeof(int32_t));
    *mask = calloc(cells, sizeof(float));
    if (!*tokens || !*targets || !*mask)
        return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory for the batch");
    for (int i = 0; i < P; i++) {
        const vote_entry *e = pairs[i].entry;
        const int np = e->n_prompt_tokens;
        int32_t *tok = *tokens + (size_t)i * T, *tgt = *targets + (size_t)i * T;
        float *msk = *mask + (size_t)i * T;
        for (int p = 0; p + 1 < np; p++) {
            tok[p] = e->prompt_tokens[p];
            tgt[p] = e->prompt_tokens[p + 1];
        }
        shared[i] = np - 1;
        int at = np - 1;
        for (int side = 0; side < 2; side++) {
            int len;
            const int32_t *resp = vote_entry_candidate(e, side == 0 ? pairs[i].chosen : pairs[i].rejected, &len);
            if (side == 1) branch[i] = at;
            for (int j = 0; j < len; j++, at++) {
                tok[at] = j == 0 ? e->prompt_tokens[np - 1] : resp[j - 1];
                tgt[at] = resp[j];
                msk[at] = 1.0f;
            }
        }
    }
    *seq_len = T;
    return 0;
}

/* Sorts idx[0..n) by pair length, ties by index (insertion sort: n is a batch). */
static void order_by_length(const batch_pair *pairs, int *idx, int n) {
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = 1; i < n; i++) {
        int v = idx[i], key = pair_length(&pairs[v]), j = i - 1;
        while (j >= 0 && pair_length(&pairs[idx[j]]) > key) {
            idx[j + 1] = idx[j];
            j--;
        }
        idx[j + 1] = v;
    }
}

/* FLOPs of one chunk (see online_trainer_status.update_flops): every position of a row of the
 * padded length T costs body, every response position also head; the reference forward, when it
 * runs, adds a third. */
static double chunk_flops(const online_trainer *t, const batch_pair *pairs, int k, int T, bool uses_ref) {
    double body, head, positions = 0, heads = 0;
    train_model_flops_per_position(t->policy, T, &body, &head);
    for (int i = 0; i < k; i++) {
        positions += pair_length(&pairs[i]);
        heads += pair_length(&pairs[i]) - (pairs[i].entry->n_prompt_tokens - 1);
    }
    return (positions * body + heads * head) * (uses_ref ? 4.0 / 3.0 : 1.0);
}

static bool chunk_has_ref_logprobs(const batch_pair *pairs, int k) {
    for (int i = 0; i < k; i++)
        if (!pairs[i].entry->ref_logprobs) return false;
    return true;
}

/* Zeroes the policy's gradients and accumulates into them the gradient of the DAP loss (the
 * mean over the B pairs that count) of pairs[0..B). Each pair is one forked row (build_batch:
 * its prompt runs once for both answers). The pairs go through the models in chunks of
 * similar length (sorted by length), so that short rows are not padded to the batch's longest.
 * A chunk takes pairs while its padded rows fit options.chunk_positions (at least one pair), so
 * short rows make fewer, larger matrix products. Each chunk's gradient is scaled by its share of
 * the counted pairs, which gives the gradient of the whole batch's mean (the losses are sums over
 * pairs). result receives the batch's loss, margin and accuracy, *kl the mean of
 * log pi - log pi_ref over its rows. */
static int policy_gradient(online_trainer *t, const batch_pair *pairs, int B, dap_loss_result *result, double *kl,
                           duel_error *err) {
    const dap_loss_options *lo = &t->options.loss;
    const bool uses_ref = dap_loss_uses_reference(lo->kind), means = dap_loss_uses_means(lo->kind);
    /* a chunk can take the whole batch: per-row buffers of 2 B */
    const size_t rows = 2 * (size_t)B;
    int *idx = malloc((size_t)B * sizeof(int));
    int32_t *shared = malloc((size_t)B * sizeof(int32_t)), *branch = malloc((size_t)B * sizeof(int32_t));
    batch_pair *chunk = malloc((size_t)B * sizeof *chunk);
    double *seq = malloc(rows * sizeof(double)), *cnt = malloc(rows * sizeof(double));
    double *ref = malloc(rows * sizeof(double)), *rcnt = malloc(rows * sizeof(double));
    double *dseq = malloc(rows * sizeof(double));
    int rc = 0;
    memset(result, 0, sizeof *result);
    *kl = 0;
    if (!idx || !chunk || !seq || !cnt || !ref || !rcnt || !dseq || !shared || !branch) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto done;
    }
    order_by_length(pairs, idx, B);
    /* Pairs that count: all, except (IPO, SimPO) those with an empty response. */
    int used_total = 0;
    for (int i = 0; i < B; i++) {
        int lc, lr;
        vote_entry_candidate(pairs[i].entry, pairs[i].chosen, &lc);
        vote_entry_candidate(pairs[i].entry, pairs[i].rejected, &lr);
        used_total += !means || (lc > 0 && lr > 0);
    }
    train_model_zero_grad(t->policy);
    double loss = 0, margin = 0, accuracy = 0;
    for (int start = 0, k = 0; start < B; start += k) {
        k = 1;
        while (start + k < B && (k + 1) * pair_length(&pairs[idx[start + k]]) <= t->options.chunk_positions) k++;
        for (int i = 0; i < k; i++) chunk[i] = pairs[idx[start + i]];
        int32_t *tokens = NULL, *targets = NULL;
        float *mask = NULL;
        int T = 1;
        /* The reference runs unless the votes carry its log-probabilities (every pair of the
         * chunk: a synthetic pair's candidates are those of a stored vote). The first such chunk
         * after open runs it anyway, to check that the votes' reference is this trainer's. */
        const bool from_votes = uses_ref && t->options.vote_ref_logprobs && t->status.vote_ref_check >= 0 &&
                                chunk_has_ref_logprobs(chunk, k);
        const bool check = from_votes && t->status.vote_ref_check == 0;
        bool run_ref = uses_ref && (!from_votes || check);
        const bool ran_ref = run_ref;
        if ((rc = build_batch(chunk, k, &tokens, &targets, &mask, shared, branch, &T, err)) == 0) {
            train_batch tb = {k, T, tokens, targets, mask};
            train_fork fork = {shared, branch};
            if (run_ref) rc = train_model_forward_forked(t->reference, &tb, &fork, ref, rcnt, NULL, err);
            if (rc == 0) rc = train_model_forward_forked(t->policy, &tb, &fork, seq, cnt, NULL, err);
        }
        if (rc == 0 && check) {
            /* Whatever the outcome, the values used below do not depend on which chunk was
             * checked: the votes' when they agree, the trainer's from then on when they do not. */
            double worst = 0;
            bool agree = true;
            for (int i = 0; i < 2 * k; i++) {
                const batch_pair *p = &chunk[i % k];
                const double v = p->entry->ref_logprobs[i < k ? p->chosen : p->rejected];
                const double d = fabs(v - ref[i]);
                if (d > worst) worst = d;
                agree = agree && d <= t->options.vote_ref_tolerance + ONLINE_VOTE_REF_RELATIVE * fabs(ref[i]);
            }
            t->status.vote_ref_check = agree ? 1 : -1;
            t->status.vote_ref_error = worst;
            run_ref = !agree;
        }
        if (rc == 0 && uses_ref && !run_ref) {
            for (int i = 0; i < k; i++) {
                ref[i] = chunk[i].entry->ref_logprobs[chunk[i].chosen];
                ref[k + i] = chunk[i].entry->ref_logprobs[chunk[i].rejected];
            }
            memcpy(rcnt, cnt, 2 * (size_t)k * sizeof *rcnt);
        }
        dap_loss_result cr = {0};
        if (rc == 0) {
            dap_loss_batch lb = {k, seq, seq + k, cnt, cnt + k, uses_ref ? ref : NULL, uses_ref ? ref + k : NULL,
                                 NULL, NULL};
            dap_loss_grads g = {dseq, dseq + k, NULL};
            rc = dap_loss_compute(lo, &lb, &cr, &g, err);
        }
        if (rc == 0 && cr.pairs_used > 0) {
            const double share = (double)cr.pairs_used / (double)used_total;
            for (int r = 0; r < 2 * k; r++) dseq[r] *= share;
            loss += share * cr.loss;
            margin += share * cr.mean_margin;
            accuracy += share * cr.accuracy;
            rc = train_model_backward(t->policy, dseq, err);
        }
        for (int r = 0; rc == 0 && uses_ref && r < 2 * k; r++) *kl += seq[r] - ref[r];
        if (rc == 0) t->status.update_flops += chunk_flops(t, chunk, k, T, ran_ref);
        if (rc == 0 && uses_ref && !run_ref) t->status.vote_ref_pairs += k;
        result->pairs_used += cr.pairs_used;
        result->pairs_skipped_empty += cr.pairs_skipped_empty;
        free(tokens);
        free(targets);
        free(mask);
        if (rc) break;
    }
    result->loss = loss;
    result->mean_margin = margin;
    result->accuracy = accuracy;
    *kl /= 2.0 * B;
done:
    free(idx);
    free(shared);
    free(branch);
    free(chunk);
    free(seq);
    free(cnt);
    free(ref);
    free(rcnt);
    free(dseq);
    return rc;
}

int online_update_run(online_trainer *t, duel_error *err) {
    const int P = t->num_pending, D = t->erm->config.d_feat;
    const int S = online_trainer_synthetic_pairs(t); /* before this update counts its pairs */
    int rc = 0;
    batch_pair *pairs = malloc((size_t)(P + S) * sizeof *pairs);
    float *chosen = malloc((size_t)P * D * sizeof(float)), *rejected = malloc((size_t)P * D * sizeof(float));
    float *record = malloc((size_t)2 * D * sizeof(float));
    if (!chosen || !rejected || !record || !pairs) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto done;
    }
    const double t_erm = duel_time_seconds();
    /* ERM: score the new pairs before training on them (held-back accuracy), then train. Only
     * pairs with features: an unscored duel (pilaf, d_feat 0) teaches the policy below but
     * never the ERM, and a batch of such duels leaves the ERM exactly as it was (no steps on
     * the buffer either: nothing new joined it). */
    int F = 0; /* pairs with features */
    for (int i = 0; i < P; i++) {
        const vote_entry *e = &t->pending[i];
        if (e->d_feat == 0) continue;
        memcpy(chosen + (size_t)F * D, e->features + (size_t)e->chosen_idx * D, (size_t)D * sizeof(float));
        memcpy(rejected + (size_t)F * D, e->features + (size_t)e->rejected_idx * D, (size_t)D * sizeof(float));
        F++;
    }
    if (F > 0) {
        double acc;
        if ((rc = erm_train_accuracy(t->erm, chosen, rejected, F, &acc, err))) goto done;
        t->erm_right += (int64_t)llround(acc * F);
        t->status.erm_scored += F;
        t->status.erm_accuracy = (double)t->erm_right / (double)t->status.erm_scored;
        if ((rc = erm_trainer_add_pairs(t->erm_trainer, chosen, rejected, F, err))) goto done;
        for (int i = 0; i < F; i++) {
            memcpy(record, chosen + (size_t)i * D, (size_t)D * sizeof(float));
            memcpy(record + D, rejected + (size_t)i * D, (size_t)D * sizeof(float));
            if ((rc = erm_pair_log_append(&t->pair_log, record, err))) goto done;
        }
        erm_train_stats es;
        if ((rc = erm_trainer_update(t->erm_trainer, &es, err))) goto done;
        if (es.steps > 0) t->status.erm_loss = es.loss;
    }
    /* The policy batch: the P real pairs, then S synthetic pairs labelled by the updated ERM. */
    for (int i = 0; i < P; i++) {
        const vote_entry *e = &t->pending[i];
        pairs[i] = (batch_pair){e, e->chosen_idx, e->rejected_idx};
    }
    for (int s = 0; s < S; s++) {
        int idx = (int)duel_rng_below(&t->mix_rng, (uint64_t)t->store.count);
        int head = (int)duel_rng_below(&t->mix_rng, (uint64_t)t->erm->config.num_heads);
        const vote_entry *d = sea_store_at(&t->store, idx);
        pairs[P + s].entry = d;
        if ((rc = sea_label(t->erm, d->features, d->num_candidates, head, &pairs[P + s].chosen,
                                   &pairs[P + s].rejected, err)))
            goto done;
        if (t->options.sea_relabel &&
            (rc = t->options.sea_relabel(t->options.sea_relabel_context, d, &pairs[P + s].chosen,
                                         &pairs[P + s].rejected, err)))
            goto done;
    }
    /* Policy: reference and policy log-probabilities of the same responses, one DAP update. */
    const double t_policy = duel_time_seconds();
    t->status.erm_seconds += t_policy - t_erm;
    const int B = P + S;
    dap_loss_result lr_;
    double kl = 0;
    if ((rc = policy_gradient(t, pairs, B, &lr_, &kl, err))) goto done;
    const double t_opt = duel_time_seconds();
    t->status.policy_seconds += t_opt - t_policy;
    size_t n = train_model_num_parameters(t->policy);
    float *grads = train_model_gradient_memory(t->policy);
    double norm = adamw_clip_grad_norm(grads, n, t->options.clip_norm);
    if (!isfinite(lr_.loss) || !isfinite(norm)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "online trainer: non-finite loss or gradient at "
                            "update %lld", (long long)t->status.step + 1);
        goto done;
    }
    double lr = lr_schedule_at(&t->schedule, t->status.step) * t->options.lr_scale;
    if ((rc = adamw_update(&t->optimizer, &t->options.adamw, train_model_parameter_memory(t->policy),
                           grads, t->decay_mask, lr, err)))
        goto done;
    t->status.optimizer_seconds += duel_time_seconds() - t_opt;
    t->status.step++;
    t->status.prefs_applied += P;
    t->status.loss = lr_.loss;
    t->status.margin = lr_.mean_margin;
    t->status.accuracy = lr_.accuracy;
    t->status.kl = kl;
    t->status.lr = lr;
    t->status.grad_norm = norm;
    t->status.synthetic = S;
    t->status.synthetic_total += S;
    t->publish_due = t->options.publish_every > 0 && t->status.step % t->options.publish_every == 0;
    for (int i = 0; i < P; i++) sea_store_push(&t->store, &t->pending[i]); /* the batch's duels join the store */
    t->num_pending = 0;
done:
    free(pairs);
    free(chosen);
    free(rejected);
    free(record);
    return rc;
}
