/* dpo_trainer.c: offline DPO/IPO/SLiC over preference pairs (see dpo_trainer.h). */
#include "dpo_trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "timer.h"

void dpo_train_default_options(dap_loss_kind kind, dpo_train_options *o) {
    memset(o, 0, sizeof(*o));
    dap_loss_default_options(kind, &o->loss);
    o->pairs_per_batch = 8;
    o->total_steps = 100;
    o->lr = 1e-4;
    o->min_lr = 1e-5;
    o->warmup_steps = 10;
    adamw_default_options(&o->adamw);
    o->adamw.weight_decay = 0.0;
    o->clip_norm = 1.0;
    o->eval_every = 20;
    o->seed = 1234;
}

void dpo_logprobs_free(dpo_logprobs *lp) {
    free(lp->chosen);
    free(lp->rejected);
    free(lp->chosen_count);
    free(lp->rejected_count);
    memset(lp, 0, sizeof(*lp));
}

static int max_pair_len(const lm_dataset *pairs) {
    int m = 1;
    for (size_t i = 0; i < pairs->num_pairs; i++) {
        m = pairs->pairs[i].chosen.len > m ? pairs->pairs[i].chosen.len : m;
        m = pairs->pairs[i].rejected.len > m ? pairs->pairs[i].rejected.len : m;
    }
    return m;
}

/* Runs the model on pairs idx[0..n): chosen rows first, then rejected. */
typedef struct pair_pass {
    lm_batch batch;
    const lm_example **rows;
    double *seq_logprob, *seq_count, *dseq;
} pair_pass;

static int pass_init(pair_pass *p, int pairs_per_batch, int max_len, duel_error *err) {
    memset(p, 0, sizeof(*p));
    int rows = 2 * pairs_per_batch;
    p->rows = malloc((size_t)rows * sizeof(*p->rows));
    p->seq_logprob = malloc((size_t)rows * sizeof(double));
    p->seq_count = malloc((size_t)rows * sizeof(double));
    p->dseq = calloc((size_t)rows, sizeof(double));
    if (p->rows == NULL || p->seq_logprob == NULL || p->seq_count == NULL || p->dseq == NULL) {
        return duel_error_set(err, DUEL_ENOMEM, "dpo: out of memory");
    }
    return lm_batch_init(&p->batch, rows, max_len, err);
}

static void pass_free(pair_pass *p) {
    lm_batch_free(&p->batch);
    free(p->rows);
    free(p->seq_logprob);
    free(p->seq_count);
    free(p->dseq);
}

static int pass_forward(pair_pass *p, train_model *model, const lm_dataset *pairs,
                        const size_t *idx, int n, duel_error *err) {
    for (int i = 0; i < n; i++) {
        p->rows[i] = &pairs->pairs[idx[i]].chosen;
        p->rows[n + i] = &pairs->pairs[idx[i]].rejected;
    }
    lm_batch_fill(&p->batch, p->rows, 2 * n);
    train_batch tb = {p->batch.batch_size, p->batch.seq_len, p->batch.tokens, p->batch.targets,
                      p->batch.mask};
    return train_model_forward(model, &tb, p->seq_logprob, p->seq_count, NULL, err);
}

int dpo_logprobs_compute(train_model *model, const lm_dataset *pairs, int pairs_per_batch,
                         dpo_logprobs *out, duel_error *err) {
    memset(out, 0, sizeof(*out));
    size_t n = pairs->num_pairs;
    out->num_pairs = n;
    out->chosen = malloc(n * sizeof(double));
    out->rejected = malloc(n * sizeof(double));
    out->chosen_count = malloc(n * sizeof(double));
    out->rejected_count = malloc(n * sizeof(double));
    size_t *idx = malloc((size_t)pairs_per_batch * sizeof(size_t));
    pair_pass p;
    int rc = pass_init(&p, pairs_per_batch, max_pair_len(pairs), err);
    if (rc == 0 && (out->chosen == NULL || out->rejected == NULL || out->chosen_count == NULL ||
                    out->rejected_count == NULL || idx == NULL)) {
        rc = duel_error_set(err, DUEL_ENOMEM, "dpo: out of memory");
    }
    for (size_t start = 0; rc == 0 && start < n; start += (size_t)pairs_per_batch) {
        int m = 0;
        for (size_t i = start; i < n && m < pairs_per_batch; i++) {
            idx[m++] = i;
        }
        if ((rc = pass_forward(&p, model, pairs, idx, m, err)) != 0) {
            break;
        }
        for (int i = 0; i < m; i++) {
            out->chosen[start + i] = p.seq_logprob[i];
            out->rejected[start + i] = p.seq_logprob[m + i];
            out->chosen_count[start + i] = p.seq_count[i];
            out->rejected_count[start + i] = p.seq_count[m + i];
        }
    }
    pass_free(&p);
    free(idx);
    if (rc != 0) {
        dpo_logprobs_free(out);
    }
    return rc;
}

int dpo_evaluate(train_model *policy, const lm_dataset *pairs, const dpo_logprobs *reference,
                 const dap_loss_options *loss, int pairs_per_batch, dpo_eval *out,
                 duel_error *err) {
    dpo_logprobs now;
    int rc = dpo_logprobs_compute(policy, pairs, pairs_per_batch, &now, err);
    if (rc != 0) {
        return rc;
    }
    dap_loss_batch b = {(int)pairs->num_pairs, now.chosen, now.rejected, now.chosen_count,
                        now.rejected_count, reference->chosen, reference->rejected, NULL, NULL};
    dap_loss_options o = *loss;
    o.xpo_alpha = 0;
    dap_loss_result r;
    rc = dap_loss_compute(&o, &b, &r, NULL, err);
    if (rc == 0) {
        double margin = 0, chosen = 0, rejected = 0;
        size_t n = pairs->num_pairs;
        for (size_t i = 0; i < n; i++) {
            margin += loss->beta * ((now.chosen[i] - now.rejected[i]) -
                                    (reference->chosen[i] - reference->rejected[i]));
            chosen += now.chosen[i];
            rejected += now.rejected[i];
        }
        out->loss = r.loss;
        out->accuracy = r.accuracy;
        out->reward_margin = margin / (double)n;
        out->chosen_logprob = chosen / (double)n;
        out->rejected_logprob = rejected / (double)n;
    }
    dpo_logprobs_free(&now);
    return rc;
}


int dpo_train_run(train_model *policy, const lm_dataset *pairs, const dpo_logprobs *reference,
                  const lm_dataset *valid, const dpo_logprobs *valid_reference,
                  const dpo_train_options *o, dpo_callback callback, void *ctx,
                  dpo_progress *final, duel_error *err) {
    lr_schedule schedule = {o->lr, o->min_lr, o->warmup_steps, o->total_steps};
    int rc = lr_schedule_check(&schedule, err);
    if (rc != 0) {
        return rc;
    }
    if (o->pairs_per_batch <= 0 || o->pairs_per_batch > 32768 || pairs->num_pairs == 0 ||
        reference->num_pairs != pairs->num_pairs) {
        return duel_error_set(err, DUEL_EINVAL,
                              "dpo: need pairs, their reference log-probabilities and 1..32768 "
                              "pairs per batch");
    }
    if (o->checkpoint_dir != NULL && o->config_json == NULL) {
        return duel_error_set(err, DUEL_EINVAL, "dpo: checkpoints need the config.json text");
    }
    int P = o->pairs_per_batch;
    size_t n = train_model_num_parameters(policy);
    /* The batch order reuses lm_order over a view whose examples are the chosen responses. */
    lm_dataset view = {0};
    view.num_examples = pairs->num_pairs;
    view.examples = malloc(pairs->num_pairs * sizeof(lm_example));
    adamw_state opt = {0};
    lm_order order = {0};
    pair_pass pass;
    memset(&pass, 0, sizeof(pass));
    size_t *idx = malloc((size_t)P * sizeof(size_t));
    const lm_example **rows = malloc((size_t)P * sizeof(*rows));
    double *pc = malloc((size_t)P * sizeof(double)), *pr = malloc((size_t)P * sizeof(double));
    double *nc = malloc((size_t)P * sizeof(double)), *nr = malloc((size_t)P * sizeof(double));
    double *rc_ = malloc((size_t)P * sizeof(double)), *rr = malloc((size_t)P * sizeof(double));
    double *gc = malloc((size_t)P * sizeof(double)), *gr = malloc((size_t)P * sizeof(double));
    unsigned char *mask = train_model_decay_mask(policy);
    if (view.examples == NULL || idx == NULL || rows == NULL || pc == NULL || pr == NULL ||
        nc == NULL || nr == NULL || rc_ == NULL || rr == NULL || gc == NULL || gr == NULL ||
        mask == NULL) {
        rc = duel_error_set(err, DUEL_ENOMEM, "dpo: out of memory");
        goto done;
    }
    for (size_t i = 0; i < pairs->num_pairs; i++) {
        view.examples[i] = pairs->pairs[i].chosen;
    }
    if ((rc = pass_init(&pass, P, max_pair_len(pairs), err)) != 0 ||
        (rc = adamw_init(&opt, n, err)) != 0 ||
        (rc = lm_order_init(&order, &view, P, o->seed, err)) != 0) {
        goto done;
    }
    dpo_progress p = {0};
    p.total_steps = o->total_steps;
    p.valid.loss = NAN;
    if (o->checkpoint_dir != NULL && checkpoint_exists(o->checkpoint_dir)) {
        checkpoint_progress cp;
        if ((rc = checkpoint_load(o->checkpoint_dir, policy, &opt, &cp, err)) != 0) {
            goto done;
        }
        if (cp.seed != o->seed) {
            rc = duel_error_set(err, DUEL_EINVAL, "%s: checkpoint has seed %llu, this run %llu",
                                o->checkpoint_dir, (unsigned long long)cp.seed,
                                (unsigned long long)o->seed);
            goto done;
        }
        p.step = cp.step;
        p.event = 0;
        if (callback != NULL) {
            callback(ctx, &p);
        }
    }
    float *params = train_model_parameter_memory(policy);
    float *grads = train_model_gradient_memory(policy);
    double start = duel_time_seconds(), run_pairs = 0;
    int64_t start_step = p.step;
    int64_t end_step = o->stop_at_step > 0 && o->stop_at_step < o->total_steps ? o->stop_at_step
                                                                               : o->total_steps;
    while (p.step < end_step) {
        int m = 0;
        lm_order_batch(&order, &view, (long long)p.step, rows, &m);
        for (int i = 0; i < m; i++) {
            idx[i] = (size_t)(rows[i] - view.examples);
        }
        train_model_zero_grad(policy);
        if ((rc = pass_forward(&pass, policy, pairs, idx, m, err)) != 0) {
            goto done;
        }
        for (int i = 0; i < m; i++) {
            pc[i] = pass.seq_logprob[i];
            pr[i] = pass.seq_logprob[m + i];
            nc[i] = pass.seq_count[i];
            nr[i] = pass.seq_count[m + i];
            rc_[i] = reference->chosen[idx[i]];
            rr[i] = reference->rejected[idx[i]];
        }
        dap_loss_batch b = {m, pc, pr, nc, nr, rc_, rr, NULL, NULL};
        dap_loss_options lo = o->loss;
        lo.xpo_alpha = 0; /* XPO needs samples of the reference: not offline */
        dap_loss_grads g = {gc, gr, NULL};
        dap_loss_result r;
        if ((rc = dap_loss_compute(&lo, &b, &r, &g, err)) != 0) {
            goto done;
        }
        for (int i = 0; i < m; i++) {
            pass.dseq[i] = gc[i];
            pass.dseq[m + i] = gr[i];
        }
        if ((rc = train_model_backward(policy, pass.dseq, err)) != 0) {
            goto done;
        }
        p.loss = r.loss;
        p.margin = r.mean_margin;
        p.accuracy = r.accuracy;
        p.grad_norm = adamw_clip_grad_norm(grads, n, o->clip_norm);
        if (!isfinite(p.loss) || !isfinite(p.grad_norm)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "dpo diverged at step %lld",
                                (long long)p.step + 1);
            goto done;
        }
        p.lr = lr_schedule_at(&schedule, p.step);
        if ((rc = adamw_update(&opt, &o->adamw, params, grads, mask, p.lr, err)) != 0) {
            goto done;
        }
        p.step++;
        run_pairs += m;
        p.elapsed_seconds = duel_time_seconds() - start;
        p.pairs_per_second = p.elapsed_seconds > 0 ? run_pairs / p.elapsed_seconds : 0;
        p.eta_seconds = p.elapsed_seconds / (double)(p.step - start_step) *
                        (double)(o->total_steps - p.step);
        p.event = 1;
        if (callback != NULL) {
            callback(ctx, &p);
        }
        if (valid != NULL && valid_reference != NULL &&
            ((o->eval_every > 0 && p.step % o->eval_every == 0) || p.step == o->total_steps)) {
            if ((rc = dpo_evaluate(policy, valid, valid_reference, &o->loss, P, &p.valid, err)) != 0) {
                goto done;
            }
            p.event = 2;
            if (callback != NULL) {
                callback(ctx, &p);
            }
        }
        if (o->checkpoint_dir != NULL &&
            (p.step == end_step || (o->checkpoint_every > 0 && p.step % o->checkpoint_every == 0))) {
            checkpoint_progress cp = {p.step, o->seed, 0};
            if ((rc = checkpoint_save(o->checkpoint_dir, policy, &opt, &cp, o->config_json, NULL, err)) != 0) {
                goto done;
            }
            p.event = 3;
            if (callback != NULL) {
                callback(ctx, &p);
            }
        }
    }
    if (final != NULL) {
        *final = p;
    }
done:
    pass_free(&pass);
    adamw_free(&opt);
    lm_order_free(&order);
    free(view.examples);
    free(idx);
    free(rows);
    free(pc);
    free(pr);
    free(nc);
    free(nr);
    free(rc_);
    free(rr);
    free(gc);
    free(gr);
    free(mask);
    return rc;
}
