/* dap_loss.h: the direct-alignment-from-preferences losses (DESIGN.md section 6) on sequence
 * log-probabilities, with their gradients with respect to those log-probabilities, which are
 * what llama_train_backward takes.
 *
 * Per pair i with chosen y+ and rejected y-, sums S over response tokens and counts n:
 *   Delta     = [S(y+) - S(y-)] - [S_ref(y+) - S_ref(y-)]                     (DPO, SLiC)
 *   Delta_avg = [S(y+)/n+ - S(y-)/n-] - [S_ref(y+)/n+ - S_ref(y-)/n-]         (IPO)
 *   DPO   -log sigmoid(beta Delta)                 beta 0.1
 *   IPO   (Delta_avg - 1/(2 beta))^2               beta 0.1
 *   SLiC  max(0, 1 - beta Delta)                   beta 0.2
 *   SimPO -log sigmoid(beta (S(y+)/n+ - S(y-)/n-) - gamma)   no reference; beta 2, gamma 1
 *   XPO   any of the above + alpha S(y_ref), y_ref a sample of the reference model (alpha 5e-6)
 * The batch loss is the pair-mask-weighted mean over pairs. The reference log-probabilities are
 * inputs: the caller computes them once per pair (a forward of the frozen reference model).
 * Everything is in double: the sums of long responses differ in their last float digits. */
#ifndef DUEL_DAP_LOSS_H
#define DUEL_DAP_LOSS_H

#include <stdbool.h>

#include "error.h"

typedef enum dap_loss_kind { DAP_LOSS_DPO, DAP_LOSS_IPO, DAP_LOSS_SLIC, DAP_LOSS_SIMPO } dap_loss_kind;

typedef struct dap_loss_options {
    dap_loss_kind kind;
    double beta;
    double simpo_gamma; /* SimPO's target reward margin gamma_s */
    double xpo_alpha;   /* weight of XPO's alpha * log pi(y_ref); 0 turns it off */
} dap_loss_options;

/* Defaults of DESIGN.md section 6 (SimPO's beta 2 and gamma 1 follow the SimPO paper). */
void dap_loss_default_options(dap_loss_kind kind, dap_loss_options *out);
/* "dpo", "ipo", "slic", "simpo"; DUEL_EINVAL naming the value otherwise. */
int dap_loss_kind_parse(const char *name, dap_loss_kind *out, duel_error *err);
const char *dap_loss_kind_name(dap_loss_kind kind);
/* Whether the loss uses per-token means (IPO, SimPO) and the reference model (all but SimPO). */
bool dap_loss_uses_means(dap_loss_kind kind);
bool dap_loss_uses_reference(dap_loss_kind kind);

/* A batch of num_pairs pairs; every array has num_pairs entries. Counts are the response-token
 * counts (mask sums). reference_* may be NULL for SimPO; policy_reference_sample only matters
 * when xpo_alpha != 0; pair_mask may be NULL (all pairs count), else each weight is finite >= 0. */
typedef struct dap_loss_batch {
    int num_pairs;
    const double *policy_chosen;
    const double *policy_rejected;
    const double *chosen_count;
    const double *rejected_count;
    const double *reference_chosen;
    const double *reference_rejected;
    const double *policy_reference_sample; /* S(y_ref) under the policy, for XPO */
    const double *pair_mask;
} dap_loss_batch;

/* d(loss)/d(sequence sum) per pair; NULL members are not written. */
typedef struct dap_loss_grads {
    double *policy_chosen;
    double *policy_rejected;
    double *policy_reference_sample;
} dap_loss_grads;

typedef struct dap_loss_result {
    double loss;         /* weighted mean over used pairs (0 when none) */
    double mean_margin;  /* weighted mean of the loss's margin: Delta, Delta_avg, or for SimPO
                            the reference-free mean difference */
    double accuracy;     /* weighted fraction of used pairs with margin > 0 */
    int pairs_used;      /* pairs with a non-zero mask that entered the loss */
    int pairs_skipped_empty; /* masked-in pairs skipped because a mean-based loss met an empty
                                response (count 0) */
} dap_loss_result;

/* Computes the loss and, when grads is non-NULL, its gradients. Pairs with mask 0 and (for IPO
 * and SimPO) pairs with an empty response get zero gradient and no weight. Errors:
 * DUEL_EINVAL for bad options (beta <= 0, unknown kind), missing arrays, negative counts or
 * masks, or non-finite inputs, naming the pair. */
int dap_loss_compute(const dap_loss_options *options, const dap_loss_batch *batch,
                     dap_loss_result *result, dap_loss_grads *grads, duel_error *err);

#endif
