/* duel.h: choosing the pair of a duel (DESIGN.md section 5). Pure functions over an ERM reward
 * matrix rewards[M][E] (rewards[i*E + e] = r_e of candidate i, as erm_score writes it): the
 * selection strategies, the random left/right placement, the estimated regret, the PILAF
 * logit mixing and the arena pairing. The engine decodes the candidates and calls these; nothing
 * here allocates or keeps state, and every random choice comes from the caller's duel_rng.
 *
 * Conventions shared by every strategy:
 * - Ties in an argmax go to the lower index (for pairs: the lexicographically smaller (i, j)).
 * - Every reward must be finite: NaN or +-inf is DUEL_EINVAL, e.g. "candidate 3 head 7 reward is
 *   NaN"; nothing is selected then.
 * - 2 <= M <= DUEL_MAX_CANDIDATES, 1 <= E <= DUEL_MAX_HEADS.
 * - The result's first/second are distinct candidate indices in selection order (y1, y2); the
 *   page shows them after duel_place's random swap. */
#ifndef DUEL_DUEL_H
#define DUEL_DUEL_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "rng.h"

#define DUEL_MAX_CANDIDATES 1024 /* M */
#define DUEL_MAX_HEADS 256       /* E */

typedef enum duel_strategy {
    DUEL_STRATEGY_EE_TS,       /* "ee_ts" (default) */
    DUEL_STRATEGY_BAI_TS,      /* "bai_ts" */
    DUEL_STRATEGY_UNCERTAINTY, /* "uncertainty" */
    DUEL_STRATEGY_PASSIVE,     /* "passive" */
    DUEL_STRATEGY_BON,         /* "bon" */
    DUEL_STRATEGY_PILAF,       /* "pilaf" */
    DUEL_STRATEGY_ARENA,       /* "arena" */
} duel_strategy;

#define DUEL_STRATEGY_COUNT 7
#define DUEL_STRATEGY_DEFAULT DUEL_STRATEGY_EE_TS

/* Exact, case-sensitive names as listed above; anything else is DUEL_EINVAL listing the valid
 * names. */
int duel_strategy_parse(const char *name, duel_strategy *out, duel_error *err);
/* The config name, or "unknown" for a value outside the enum. */
const char *duel_strategy_name(duel_strategy strategy);
/* True for the strategies that choose from an ERM reward matrix with duel_select (all but
 * pilaf and arena, which are decoded differently: see below). */
bool duel_strategy_uses_rewards(duel_strategy strategy);

typedef struct duel_pair {
    int first;       /* y1 */
    int second;      /* y2 != y1 */
    int head_first;  /* the head whose argmax gave y1 (Thompson strategies), else -1 */
    int head_second; /* the head whose argmax gave y2 (ee_ts, bon), else -1 */
} duel_pair;

/* ee_ts (E&E objective): draws a uniformly random order of the heads (Fisher-Yates from rng);
 * y1 = argmax_i r_{s0}(i); y2 = argmax_i r_s(i) for the first head s in the order whose argmax
 * differs from y1; when every head agrees, y2 = argmax_{i != y1} r_{s0}(i). So y1 = i with
 * probability (number of heads whose argmax is i) / E. */
int duel_select_ee_ts(const float *rewards, int num_candidates, int num_heads, duel_rng *rng,
                      duel_pair *out, duel_error *err);

/* bai_ts (BAI objective): y1 as ee_ts (a uniformly random head s0); y2 = argmax_{j != y1}
 * Var_e[r_e(y1) - r_e(j)] (population variance over the heads, computed in double). With E = 1
 * every variance is 0 and y2 is the lowest index other than y1. */
int duel_select_bai_ts(const float *rewards, int num_candidates, int num_heads, duel_rng *rng,
                       duel_pair *out, duel_error *err);

/* uncertainty (pure exploration): (y1, y2) = argmax_{i<j} Var_e[r_e(i) - r_e(j)]; no randomness. */
int duel_select_uncertainty(const float *rewards, int num_candidates, int num_heads,
                            duel_pair *out, duel_error *err);

/* passive (online DPO baseline): the candidates are independent policy samples, so the first two
 * are the pair: (0, 1). rewards may be NULL (with num_heads 0); when given they are checked like
 * the others', so that a bad ERM is noticed whatever the strategy. */
int duel_select_passive(const float *rewards, int num_candidates, int num_heads, duel_pair *out,
                        duel_error *err);

/* bon (inference-time best-of-M): y1 = argmax_i mean_e r_e(i); y2 chosen as ee_ts's second answer
 * given y1: the first head s in a random order whose argmax differs from y1, else the best other
 * candidate under the order's first head. */
int duel_select_bon(const float *rewards, int num_candidates, int num_heads, duel_rng *rng,
                    duel_pair *out, duel_error *err);

/* Dispatches on strategy (ee_ts, bai_ts, uncertainty, passive, bon). pilaf and arena are
 * DUEL_EINVAL here: they do not choose among one set of candidates. rng may be NULL only for
 * uncertainty and passive. */
int duel_select(duel_strategy strategy, const float *rewards, int num_candidates, int num_heads,
                duel_rng *rng, duel_pair *out, duel_error *err);

/* Left/right placement on the page: with probability 1/2 (one rng draw) the pair is swapped.
 * a is shown on the left ("a" in the protocol), b on the right. */
typedef struct duel_placement {
    int a;
    int b;
    bool side_swap; /* true when a == pair.second */
} duel_placement;
void duel_place(const duel_pair *pair, duel_rng *rng, duel_placement *out);

/* rbar(i) = mean over heads of r_e(i), in double, for i < M (rewards checked). */
int duel_ensemble_mean(const float *rewards, int num_candidates, int num_heads, double *mean,
                       duel_error *err);

/* Regret of showing a and b given per-candidate scores s (ensemble means, or the oracle's r*):
 * max_i s(i) - (s(a) + s(b)) / 2. Always >= 0. */
int duel_regret(const double *scores, int num_candidates, int a, int b, double *out,
                duel_error *err);

/* The estimated regret R-hat = max_i rbar(i) - (rbar(a) + rbar(b)) / 2. */
int duel_estimated_regret(const float *rewards, int num_candidates, int num_heads, int a, int b,
                          double *out, duel_error *err);

/* PILAF. A request first draws its mode: with probability 1/2 two plain policy samples
 * (DUEL_PILAF_PLAIN), otherwise one answer from each interpolated policy (DUEL_PILAF_MIXED). */
typedef enum duel_pilaf_mode { DUEL_PILAF_PLAIN, DUEL_PILAF_MIXED } duel_pilaf_mode;
duel_pilaf_mode duel_pilaf_draw_mode(duel_rng *rng);

/* The two interpolated next-token logit vectors from the policy's logits h_theta and the
 * reference's h_ref (both [vocab]):
 *     plus[k]  = (1 + beta) * h_theta[k] - beta * h_ref[k]   (y+ ~ pi_theta^(1+beta) pi_ref^(-beta))
 *     minus[k] = (1 - beta) * h_theta[k] + beta * h_ref[k]   (y- ~ pi_theta^(1-beta) pi_ref^(beta))
 * computed in double and rounded once. Softmax of these is the normalised product above, since
 * the log-normalisers of h_theta and h_ref cancel. A token masked with -inf in either input is -inf
 * in both outputs (it cannot be sampled from a policy that excludes it). NaN or +inf logits and a
 * beta that is negative or not finite are DUEL_EINVAL. plus or minus may be NULL; either may alias
 * an input. */
int duel_pilaf_mix_logits(const float *h_theta, const float *h_ref, int vocab_size, double beta,
                          float *plus, float *minus, duel_error *err);

/* arena: one answer from each of two snapshots' own candidates. Each arm's pick is its best
 * candidate by its own ERM's ensemble mean (ties to the lower index); arms may differ in M and E.
 * out_first is the index among arm 1's candidates, out_second among arm 2's. */
int duel_select_arena(const float *rewards_first, int num_candidates_first, int num_heads_first,
                      const float *rewards_second, int num_candidates_second,
                      int num_heads_second, int *out_first, int *out_second, duel_error *err);

#endif
