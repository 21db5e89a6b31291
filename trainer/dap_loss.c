/* dap_loss.c: DPO, IPO, SLiC, SimPO and XPO's extra term on sequence log-probabilities, with
 * gradients (see dap_loss.h for the formulas). Each pair's loss is a function of one margin x;
 * its gradient reaches the sums through dx/dS, which is 1 (sums) or 1/n (per-token means). */
#include "dap_loss.h"

#include <math.h>
#include <string.h>
#include <strings.h>

static const char *const kind_names[] = {"dpo", "ipo", "slic", "simpo"};

void dap_loss_default_options(dap_loss_kind kind, dap_loss_options *out) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
    switch (kind) {
    case DAP_LOSS_DPO: out->beta = 0.1; break;
    case DAP_LOSS_IPO: out->beta = 0.1; break;
    case DAP_LOSS_SLIC: out->beta = 0.2; break;
    case DAP_LOSS_SIMPO:
        out->beta = 2.0;
        out->simpo_gamma = 1.0;
        break;
    }
}

int dap_loss_kind_parse(const char *name, dap_loss_kind *out, duel_error *err) {
    for (int i = 0; i < (int)(sizeof kind_names / sizeof kind_names[0]); i++)
        if (name && strcasecmp(name, kind_names[i]) == 0) {
            *out = (dap_loss_kind)i;
            return 0;
        }
    return duel_error_set(err, DUEL_EINVAL,
                          "dap_loss: unknown loss \"%s\" (expected dpo, ipo, slic or simpo)",
                          name ? name : "(null)");
}

const char *dap_loss_kind_name(dap_loss_kind kind) {
    return (unsigned)kind < sizeof kind_names / sizeof kind_names[0] ? kind_names[kind] : "unknown";
}

bool dap_loss_uses_means(dap_loss_kind kind) {
    return kind == DAP_LOSS_IPO || kind == DAP_LOSS_SIMPO;
}

bool dap_loss_uses_reference(dap_loss_kind kind) { return kind != DAP_LOSS_SIMPO; }

/* -log sigmoid(x) = softplus(-x), without overflow for large |x|. */
static double neg_log_sigmoid(double x) {
    return x >= 0 ? log1p(exp(-x)) : -x + log1p(exp(x));
}

static double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* Loss of one pair as a function of its margin x, and dloss/dx. */
static double pair_loss(const dap_loss_options *o, double x, double *dloss_dx) {
    switch (o->kind) {
    case DAP_LOSS_DPO:
        *dloss_dx = -o->beta * sigmoid(-o->beta * x);
        return neg_log_sigmoid(o->beta * x);
    case DAP_LOSS_IPO: {
        double d = x - 1.0 / (2.0 * o->beta);
        *dloss_dx = 2.0 * d;
        return d * d;
    }
    case DAP_LOSS_SLIC: {
        double h = 1.0 - o->beta * x;
        /* At the kink (h == 0) take the zero subgradient: the pair is already satisfied. */
        *dloss_dx = h > 0 ? -o->beta : 0.0;
        return h > 0 ? h : 0.0;
    }
    case DAP_LOSS_SIMPO: {
        double z = o->beta * x - o->simpo_gamma;
        *dloss_dx = -o->beta * sigmoid(-z);
        return neg_log_sigmoid(z);
    }
    }
    *dloss_dx = 0;
    return 0;
}

static int check_inputs(const dap_loss_options *o, const dap_loss_batch *b, duel_error *err) {
    if (!o || !b) return duel_error_set(err, DUEL_EINVAL, "dap_loss: options and batch are required");
    if ((unsigned)o->kind > DAP_LOSS_SIMPO)
        return duel_error_set(err, DUEL_EINVAL, "dap_loss: unknown loss kind %d", (int)o->kind);
    if (!(o->beta > 0) || !isfinite(o->beta))
        return duel_error_set(err, DUEL_EINVAL, "dap_loss: %s needs beta > 0 (got %g)",
                              dap_loss_kind_name(o->kind), o->beta);
    if (!isfinite(o->simpo_gamma) || !isfinite(o->xpo_alpha))
        return duel_error_set(err, DUEL_EINVAL, "dap_loss: simpo_gamma and xpo_alpha must be finite");
    if (b->num_pairs < 0)
        return duel_error_set(err, DUEL_EINVAL, "dap_loss: negative pair count %d", b->num_pairs);
    if (b->num_pairs == 0) return 0;
    if (!b->policy_chosen || !b->policy_rejected || !b->chosen_count || !b->rejected_count)
        return duel_error_set(err, DUEL_EINVAL,
                              "dap_loss: policy log-probabilities and counts are required");
    bool need_ref = dap_loss_uses_reference(o->kind);
    if (need_ref && (!b->reference_chosen || !b->reference_rejected))
        return duel_error_set(err, DUEL_EINVAL,
                              "dap_loss: %s needs the reference model's log-probabilities",
                              dap_loss_kind_name(o->kind));
    bool xpo = o->xpo_alpha != 0;
    if (xpo && !b->policy_reference_sample)
        return duel_error_set(err, DUEL_EINVAL,
                              "dap_loss: xpo_alpha %g needs log pi(y_ref) of a reference sample",
                              o->xpo_alpha);
    for (int i = 0; i < b->num_pairs; i++) {
        double mask = b->pair_mask ? b->pair_mask[i] : 1.0;
        if (!isfinite(mask) || mask < 0)
            return duel_error_set(err, DUEL_EINVAL, "dap_loss: pair %d: mask %g must be finite and >= 0",
                                  i, mask);
        if (mask == 0) continue; /* a masked-out pair may hold anything */
        if (!(b->chosen_count[i] >= 0) || !(b->rejected_count[i] >= 0) ||
            !isfinite(b->chosen_count[i]) || !isfinite(b->rejected_count[i]))
            return duel_error_set(err, DUEL_EINVAL,
                                  "dap_loss: pair %d: token counts must be finite and >= 0", i);
        if (!isfinite(b->policy_chosen[i]) || !isfinite(b->policy_rejected[i]) ||
            (need_ref && (!isfinite(b->reference_chosen[i]) || !isfinite(b->reference_rejected[i]))) ||
            (xpo && !isfinite(b->policy_reference_sample[i])))
            return duel_error_set(err, DUEL_EINVAL, "dap_loss: pair %d: log-probability is not finite",
                                  i);
    }
    return 0;
}

int dap_loss_compute(const dap_loss_options *o, const dap_loss_batch *b, dap_loss_result *result,
                     dap_loss_grads *grads, duel_error *err) {
    int rc = check_inputs(o, b, err);
    if (rc) return rc;
    memset(result, 0, sizeof *result);
    bool means = dap_loss_uses_means(o->kind), ref = dap_loss_uses_reference(o->kind);
    bool xpo = o->xpo_alpha != 0;
    int P = b->num_pairs;
    double total_weight = 0;
    for (int i = 0; i < P; i++) {
        double mask = b->pair_mask ? b->pair_mask[i] : 1.0;
        if (mask == 0) continue;
        if (means && (b->chosen_count[i] == 0 || b->rejected_count[i] == 0)) {
            result->pairs_skipped_empty++;
            continue;
        }
        total_weight += mask;
    }
    if (grads) {
        for (int i = 0; i < P; i++) {
            if (grads->policy_chosen) grads->policy_chosen[i] = 0;
            if (grads->policy_rejected) grads->policy_rejected[i] = 0;
            if (grads->policy_reference_sample) grads->policy_reference_sample[i] = 0;
        }
    }
    if (total_weight == 0) return 0;

    double loss = 0, margin_sum = 0, correct = 0;
    for (int i = 0; i < P; i++) {
        double mask = b->pair_mask ? b->pair_mask[i] : 1.0;
        if (mask == 0) continue;
        /* dx/dS for chosen and rejected: sums enter with weight 1, means with 1/n */
        double wc = 1, wr = 1;
        if (means) {
            if (b->chosen_count[i] == 0 || b->rejected_count[i] == 0) continue;
            wc = 1.0 / b->chosen_count[i];
            wr = 1.0 / b->rejected_count[i];
        }
        double x = wc * b->policy_chosen[i] - wr * b->policy_rejected[i];
        if (ref) x -= wc * b->reference_chosen[i] - wr * b->reference_rejected[i];
        double dloss_dx;
        double l = pair_loss(o, x, &dloss_dx);
        double weight = mask / total_weight;
        if (xpo) l += o->xpo_alpha * b->policy_reference_sample[i];
        loss += weight * l;
        margin_sum += weight * x;
        if (x > 0) correct += weight;
        result->pairs_used++;
        if (grads) {
            if (grads->policy_chosen) grads->policy_chosen[i] = weight * dloss_dx * wc;
            if (grads->policy_rejected) grads->policy_rejected[i] = -weight * dloss_dx * wr;
            if (grads->policy_reference_sample && xpo)
                grads->policy_reference_sample[i] = weight * o->xpo_alpha;
        }
    }
    result->loss = loss;
    result->mean_margin = margin_sum;
    result->accuracy = correct;
    return 0;
}
