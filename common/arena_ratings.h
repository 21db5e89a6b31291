/* arena_ratings.h: Bradley-Terry ratings of arms from arena votes (DESIGN.md section 5), computed
 * the way Chatbot Arena publishes its leaderboard:
 *   - a battle between arms i and j scores 1 for the winner, 0 for the loser; tie and both_bad
 *     score 1/2 each;
 *   - P(i beats j) = 1 / (1 + 10^-(r_i - r_j)), fitted by maximum likelihood (a vanishing ridge,
 *     ARENA_RATINGS_RIDGE, keeps an arm that never lost finite); shown as 400 r + 1000, the
 *     ratings' mean over the arms is 1000;
 *   - 95 % intervals: the 2.5 and 97.5 percentiles of the fit on ARENA_RATINGS_ROUNDS bootstrap
 *     resamples of the battles (with replacement), drawn from a fixed seed, so the same votes give
 *     the same intervals everywhere;
 *   - rank = 1 + the number of arms whose lower bound is above this arm's upper bound.
 *
 * The input is a tally: arm names and battles, fed vote by vote from duel:prefs entries
 * (arena_tally_add_vote). An arena vote has strategy "arena" and in gen_params either
 * "arena_arms": [NAME_0, NAME_1] (the rollout's arm names) or "arena_versions": [V_0, V_1]
 * (snapshot versions, named "v<V>", 0 is "base"), with "arena_split": candidates below it are
 * arm 0's, the rest arm 1's; chosen_idx and rejected_idx say which arm's answer won.
 * Pure code: no I/O, no global state. */
#ifndef DUEL_ARENA_RATINGS_H
#define DUEL_ARENA_RATINGS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "vote_entry.h"

#define ARENA_RATINGS_ROUNDS 100        /* bootstrap rounds */
#define ARENA_RATINGS_SEED 42           /* the bootstrap's default seed */
#define ARENA_RATINGS_RIDGE 1e-4        /* L2 penalty on r (log10 odds units) */
#define ARENA_RATINGS_MAX_ARMS 64
#define ARENA_RATINGS_NAME_MAX 64       /* bytes of an arm name, NUL included */

typedef struct arena_battle {
    int first, second;  /* arm indices, first != second */
    double first_score; /* 1 first won, 0 second won, 0.5 tie or both_bad */
} arena_battle;

typedef struct arena_tally {
    int n_arms;
    char names[ARENA_RATINGS_MAX_ARMS][ARENA_RATINGS_NAME_MAX];
    arena_battle *battles;
    size_t n_battles, cap;
    long long skipped; /* arena votes that could not be read (reason in last_skip) */
    char last_skip[160];
} arena_tally;

typedef struct arena_rating {
    double rating, lower, upper; /* 400 r + 1000; the 95 % bootstrap interval */
    int rank;
    long long battles;
    double score; /* wins + half the ties and both_bad */
} arena_rating;

/* Index of name in the tally (added when new), or DUEL_ELIMIT past ARENA_RATINGS_MAX_ARMS. */
int arena_tally_arm(arena_tally *t, const char *name, duel_error *err);
int arena_tally_add(arena_tally *t, int first, int second, double first_score, duel_error *err);
/* One duel:prefs entry: 1 when it was an arena vote (added), 0 when it is not an arena vote
 * (ignored); an arena vote that cannot be read is counted in t->skipped and also returns 0. */
int arena_tally_add_vote(arena_tally *t, const vote_entry_field *fields, int n_fields);
void arena_tally_free(arena_tally *t);

/* The maximum-likelihood ratings (400 r + 1000) of arms 0..n_arms from battles; weights (may be
 * NULL: all 1) counts each battle that many times (the bootstrap's resample). */
int arena_ratings_fit(int n_arms, const arena_battle *battles, const unsigned *weights, size_t n,
                      double *ratings, duel_error *err);

/* Fit, bootstrap (rounds resamples from seed) and ranks of every arm of the tally: out[n_arms]. */
int arena_ratings_compute(const arena_tally *t, int rounds, uint64_t seed, arena_rating *out,
                          duel_error *err);

/* The leaderboard as JSON: {"arms":[{"name","rating","lower","upper","rank","battles","score"}...]
 * sorted by rating, "battles", "skipped", "rounds", "seed"}. NULL on out of memory (err set). */
json_t *arena_ratings_json(const arena_tally *t, int rounds, uint64_t seed, duel_error *err);

#endif
