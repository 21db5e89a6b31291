/* sea_store.h: the SEA mixture's duel store and labels (DESIGN.md section 6). The store keeps
 * the last `capacity` duels the trainer took (every candidate's tokens and features), oldest
 * first; a duel with a candidate that does not fit the policy's positions is not kept (its
 * synthetic pairs could not be trained on). sea_label labels a stored duel with one ERM head;
 * sea_synthetic_count says how many synthetic pairs a batch of P real pairs gets. */
#ifndef DUEL_SEA_STORE_H
#define DUEL_SEA_STORE_H

#include <stdint.h>

#include "erm.h"
#include "error.h"
#include "vote_entry.h"

typedef struct sea_store {
    vote_entry *duels; /* a ring of owned entries */
    int capacity, start, count;
    int max_positions; /* the policy's positions; 0: no limit */
} sea_store;

int sea_store_init(sea_store *s, int capacity, int max_positions, duel_error *err);
void sea_store_free(sea_store *s);
/* Takes entry's contents (entry is left empty; a duel that does not fit, or an unscored one
 * without features (d_feat 0: pilaf) that the ERM cannot label, is freed); the oldest duel
 * leaves when the store is full. */
void sea_store_push(sea_store *s, vote_entry *entry);
/* The i-th duel, oldest first (0 <= i < count). */
const vote_entry *sea_store_at(const sea_store *s, int i);

/* S = floor(P (1 - gamma) / gamma + 1/2), capped at max_pairs; 0 when gamma >= 1, the store is
 * empty, or fewer than burn_in real pairs have been applied (prefs_applied). */
int sea_synthetic_count(int real_pairs, double gamma, int stored, int64_t prefs_applied, int64_t burn_in,
                        int max_pairs);

/* The SEA label of one duel under head `head` of model: with r = r_head of the num_candidates
 * rows of features ([M][d_feat]), *chosen = the first index of the largest r and *rejected = the
 * first index of the smallest (together the pair with the largest |r(i) - r(j)|); when every r
 * is equal, 0 and 1. DUEL_EINVAL for M < 2 or a bad head. */
int sea_label(const erm *model, const float *features, int num_candidates, int head, int *chosen, int *rejected,
              duel_error *err);

#endif
