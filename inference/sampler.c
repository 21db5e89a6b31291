/* sampler.c: picks the next token from a row of logits (sampler.h). Order of operations, as in
 * Hugging Face's generate(): temperature scaling, then top-k, then top-p (nucleus) over the
 * probabilities renormalised after top-k, then one draw from the caller's seeded duel_rng.
 * Temperature 0 is greedy argmax. Candidates are always ranked by (logit descending, id
 * ascending), so ties resolve to the lower id and the same seed gives the same token on every run.
 * Invariant: the function never returns an id outside [0, vocab_size) with status 0. */
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "cpu_ops.h"

/* Highest temperature accepted; beyond it the distribution is uniform for all practical uses. */
#define SAMPLER_MAX_TEMPERATURE 100.0f
/* Logit margin (in units of logit/temperature) used to pre-select top-p candidates before
 * sorting: tokens more than this below the maximum carry a relative weight under e^-20 each. The
 * pre-selection is exact, not an approximation: it is used only when its mass already reaches
 * top_p, in which case the nucleus (a prefix of the sorted order) lies inside it. */
#define SAMPLER_PRESELECT_MARGIN 20.0

typedef struct sampler_candidate {
    float logit; /* scaled by 1/temperature */
    int32_t id;
} sampler_candidate;

int sampler_params_validate(const sampler_params *params, duel_error *err) {
    if (!params) return duel_error_set(err, DUEL_EINVAL, "sampler parameters missing");
    if (!isfinite(params->temperature) || params->temperature < 0.0f ||
        params->temperature > SAMPLER_MAX_TEMPERATURE)
        return duel_error_set(err, DUEL_EINVAL,
                              "temperature must be a number in [0, %g] (0 = greedy), got %g",
                              (double)SAMPLER_MAX_TEMPERATURE, (double)params->temperature);
    if (!isfinite(params->top_p) || params->top_p <= 0.0f || params->top_p > 1.0f)
        return duel_error_set(err, DUEL_EINVAL,
                              "top_p must be a number in (0, 1] (1 = off), got %g",
                              (double)params->top_p);
    if (params->top_k < 0)
        return duel_error_set(err, DUEL_EINVAL, "top_k must be >= 0 (0 = off), got %d",
                              params->top_k);
    return DUEL_OK;
}

/* a ranks before b: higher logit first, then lower id. */
static bool candidate_before(const sampler_candidate *a, const sampler_candidate *b) {
    if (a->logit != b->logit) return a->logit > b->logit;
    return a->id < b->id;
}

static int candidate_compare(const void *pa, const void *pb) {
    const sampler_candidate *a = pa, *b = pb;
    if (candidate_before(a, b)) return -1;
    if (candidate_before(b, a)) return 1;
    return 0;
}

/* Min-heap on rank (the root is the worst kept candidate), for top-k selection in O(n log k). */
static void heap_sift_down(sampler_candidate *heap, int n, int i) {
    for (;;) {
        int worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && candidate_before(&heap[worst], &heap[l])) worst = l;
        if (r < n && candidate_before(&heap[worst], &heap[r])) worst = r;
        if (worst == i) return;
        sampler_candidate t = heap[i];
        heap[i] = heap[worst];
        heap[worst] = t;
        i = worst;
    }
}

static void heap_sift_up(sampler_candidate *heap, int i) {
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!candidate_before(&heap[parent], &heap[i])) return;
        sampler_candidate t = heap[i];
        heap[i] = heap[parent];
        heap[parent] = t;
        i = parent;
    }
}

/* Fills out[0..k) with the k best candidates, sorted best first. */
static int select_top_k(const float *logits, int vocab_size, float inv_t, int k,
                        sampler_candidate *out) {
    int n = 0;
    for (int i = 0; i < vocab_size; i++) {
        sampler_candidate c = {logits[i] * inv_t, i};
        if (n < k) {
            out[n] = c;
            heap_sift_up(out, n);
            n++;
        } else if (candidate_before(&c, &out[0])) {
            out[0] = c;
            heap_sift_down(out, n, 0);
        }
    }
    qsort(out, (size_t)n, sizeof *out, candidate_compare);
    return n;
}

/* Draws an index in [0, n) with probability proportional to weights[i]. */
static int draw_index(const double *weights, int n, double total, duel_rng *rng) {
    double u = duel_rng_uniform(rng) * total;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += weights[i];
        if (u < acc) return i;
    }
    /* Rounding left u at or past the sum: take the last candidate with non-zero weight. */
    for (int i = n - 1; i > 0; i--)
        if (weights[i] > 0.0) return i;
    return 0;
}

/* Samples from the sorted candidates c[0..n) (best first): top-p over their softmax.
 * mass: the normaliser of the distribution top-p refers to, in the same units as the weights
 * (exp(logit - c[0].logit)); 0 means the candidates' own sum (after top-k, or no pre-selection). */
static int32_t sample_sorted(const sampler_candidate *c, int n, float top_p, double mass,
                             double *weights, duel_rng *rng) {
    double max = c[0].logit, total = 0.0;
    for (int i = 0; i < n; i++) {
        weights[i] = exp((double)c[i].logit - max);
        total += weights[i];
    }
    int keep = n;
    if (top_p < 1.0f) {
        /* Smallest prefix whose probability reaches top_p; at least one token. */
        double target = (double)top_p * (mass > 0.0 ? mass : total), acc = 0.0;
        for (int i = 0; i < n; i++) {
            acc += weights[i];
            if (acc >= target) {
                keep = i + 1;
                break;
            }
        }
        total = 0.0;
        for (int i = 0; i < keep; i++) total += weights[i];
    }
    return c[draw_index(weights, keep, total, rng)].id;
}

int32_t sampler_sample(const float *logits, int vocab_size, const sampler_params *params,
                       duel_rng *rng, float *logprob_out, duel_error *err) {
    if (!logits || vocab_size <= 0)
        return duel_error_set(err, DUEL_EINVAL, "sampler: no logits (vocab_size %d)", vocab_size);
    int rc = sampler_params_validate(params, err);
    if (rc) return rc;
    if (params->temperature > 0.0f && !rng)
        return duel_error_set(err, DUEL_EINVAL, "sampler: temperature > 0 needs an rng");

    /* One pass: reject NaN and +inf, find the argmax (ties to the lower id). -inf is a masked
     * token and is allowed, as long as something is left. */
    int32_t best = -1;
    for (int i = 0; i < vocab_size; i++) {
        float v = logits[i];
        if (isnan(v)) return duel_error_set(err, DUEL_EFORMAT, "sampler: logit %d is NaN", i);
        if (isinf(v) && v > 0)
            return duel_error_set(err, DUEL_EFORMAT, "sampler: logit %d is +inf", i);
        if (v != -INFINITY && (best < 0 || v > logits[best])) best = i;
    }
    if (best < 0)
        return duel_error_set(err, DUEL_EFORMAT, "sampler: every logit is -inf");

    int32_t chosen = best;
    if (params->temperature > 0.0f) {
        float inv_t = 1.0f / params->temperature;
        bool filter = params->top_p < 1.0f || (params->top_k > 0 && params->top_k < vocab_size);
        if (!filter) {
            /* Plain softmax sampling in id order: no sort needed. */
            double max = (double)logits[best] * inv_t, total = 0.0;
            for (int i = 0; i < vocab_size; i++)
                total += exp((double)logits[i] * inv_t - max);
            double u = duel_rng_uniform(rng) * total, acc = 0.0;
            chosen = best;
            for (int i = 0; i < vocab_size; i++) {
                double w = exp((double)logits[i] * inv_t - max);
                acc += w;
                if (w > 0.0) chosen = i;
                if (u < acc) break;
            }
        } else {
            sampler_candidate *cand = malloc((size_t)vocab_size * sizeof *cand);
            double *weights = malloc((size_t)vocab_size * sizeof *weights);
            if (!cand || !weights) {
                free(cand);
                free(weights);
                return duel_error_set(err, DUEL_ENOMEM, "sampler: out of memory (vocab %d)",
                                      vocab_size);
            }
            int n;
            double mass = 0.0;
            if (params->top_k > 0 && params->top_k < vocab_size) {
                n = select_top_k(logits, vocab_size, inv_t, params->top_k, cand);
            } else {
                /* top-p only: try the candidates near the maximum first (see the margin's
                 * comment); fall back to sorting the whole vocabulary. */
                double max = (double)(logits[best] * inv_t), total = 0.0, near = 0.0;
                n = 0;
                for (int i = 0; i < vocab_size; i++) {
                    float s = logits[i] * inv_t;
                    double w = exp((double)s - max);
                    total += w;
                    if ((double)s >= max - SAMPLER_PRESELECT_MARGIN) {
                        near += w;
                        cand[n].logit = s;
                        cand[n].id = i;
                        n++;
                    }
                }
                mass = total;
                if (near < (double)params->top_p * total) {
                    for (int i = 0; i < vocab_size; i++) {
                        cand[i].logit = logits[i] * inv_t;
                        cand[i].id = i;
                    }
                    n = vocab_size;
                    mass = 0.0;
                }
                qsort(cand, (size_t)n, sizeof *cand, candidate_compare);
            }
            chosen = sample_sorted(cand, n, params->top_p, mass, weights, rng);
            free(cand);
            free(weights);
        }
    }

    if (logprob_out) {
        double max = logits[best], total = cpu_sum_exp(logits, vocab_size, logits[best]);
        *logprob_out = (float)((double)logits[chosen] - max - log(total));
    }
    return chosen;
}
