/* sea_store.c: the SEA duel store, synthetic pair counts and labels (see sea_store.h). */
#include "sea_store.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sea_store_init(sea_store *s, int capacity, int max_positions, duel_error *err) {
    memset(s, 0, sizeof *s);
    if (capacity < 1) return duel_error_set(err, DUEL_EINVAL, "sea store: capacity %d < 1", capacity);
    if (!(s->duels = calloc((size_t)capacity, sizeof *s->duels)))
        return duel_error_set(err, DUEL_ENOMEM, "sea store: out of memory");
    s->capacity = capacity;
    s->max_positions = max_positions;
    return 0;
}

void sea_store_free(sea_store *s) {
    for (int i = 0; s->duels && i < s->capacity; i++) vote_entry_free(&s->duels[i]);
    free(s->duels);
    memset(s, 0, sizeof *s);
}

const vote_entry *sea_store_at(const sea_store *s, int i) { return &s->duels[(s->start + i) % s->capacity]; }

void sea_store_push(sea_store *s, vote_entry *e) {
    if (e->d_feat == 0) { /* an unscored duel (pilaf): nothing for the ERM to label it by */
        vote_entry_free(e);
        return;
    }
    for (int i = 0; s->max_positions > 0 && i < e->num_candidates; i++) {
        int len;
        vote_entry_candidate(e, i, &len);
        if (e->n_prompt_tokens + len > s->max_positions) {
            vote_entry_free(e);
            return;
        }
    }
    int slot;
    if (s->count < s->capacity) {
        slot = (s->start + s->count++) % s->capacity;
    } else {
        slot = s->start;
        s->start = (s->start + 1) % s->capacity;
        vote_entry_free(&s->duels[slot]);
    }
    s->duels[slot] = *e;
    memset(e, 0, sizeof *e);
}

int sea_synthetic_count(int real_pairs, double gamma, int stored, int64_t prefs_applied, int64_t burn_in,
                        int max_pairs) {
    if (gamma >= 1.0 || stored == 0 || prefs_applied < burn_in) return 0;
    double s = floor((double)real_pairs * (1.0 - gamma) / gamma + 0.5);
    return s > max_pairs ? max_pairs : (int)s;
}

int sea_label(const erm *model, const float *features, int M, int head, int *chosen, int *rejected,
              duel_error *err) {
    const int E = model->config.num_heads;
    if (M < 2 || M > ERM_MAX_CANDIDATES || head < 0 || head >= E)
        return duel_error_set(err, DUEL_EINVAL, "sea label: %d candidates, head %d of %d", M, head, E);
    float *r = malloc((size_t)M * (size_t)E * sizeof(float));
    if (!r) return duel_error_set(err, DUEL_ENOMEM, "sea label: out of memory");
    int rc = erm_score(model, features, M, r, err);
    if (rc == 0) {
        int hi = 0, lo = 0;
        for (int i = 1; i < M; i++) {
            if (r[(size_t)i * E + head] > r[(size_t)hi * E + head]) hi = i;
            if (r[(size_t)i * E + head] < r[(size_t)lo * E + head]) lo = i;
        }
        if (hi == lo) hi = 0, lo = 1; /* all equal */
        *chosen = hi;
        *rejected = lo;
    }
    free(r);
    return rc;
}
