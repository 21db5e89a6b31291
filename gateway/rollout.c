/* rollout.c: parsing duel:rollout into arms and pinning conversations to them (see rollout.h).
 * Invariant: spec->total_weight is the sum of spec->arms' weights, all positive. */
#include "rollout.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

void rollout_spec_free(rollout_spec *spec) {
    free(spec->arms);
    spec->arms = NULL;
    spec->n_arms = 0;
    spec->total_weight = 0;
}

int rollout_parse(const char *json, rollout_spec *out, duel_error *err) {
    rollout_spec_free(out);
    if (!json) return DUEL_OK;
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return duel_error_set(err, DUEL_EFORMAT, "duel:rollout: %s", jerr.text);
    json_t *arms = json_object_get(root, "arms");
    if (!json_is_array(arms)) {
        json_decref(root);
        return duel_error_set(err, DUEL_EFORMAT, "duel:rollout: no \"arms\" array");
    }
    size_t n = json_array_size(arms);
    out->arms = calloc(n ? n : 1, sizeof *out->arms);
    if (!out->arms) {
        json_decref(root);
        return duel_error_set(err, DUEL_ENOMEM, "duel:rollout: out of memory");
    }
    size_t i;
    json_t *arm;
    json_array_foreach(arms, i, arm) {
        json_t *w = json_object_get(arm, "weight");
        json_t *snap = json_object_get(arm, "snapshot");
        if (!json_is_integer(w) || json_integer_value(w) <= 0) continue;
        long long weight = json_integer_value(w);
        if (weight > INT64_MAX - out->total_weight) break; /* more weight than anyone means */
        out->arms[out->n_arms++] = (rollout_arm){weight, json_is_integer(snap) ? json_integer_value(snap) : -1};
        out->total_weight += weight;
    }
    json_decref(root);
    return DUEL_OK;
}

/* FNV-1a: stable across processes and machines, so every gateway pins a conversation alike. */
static uint64_t hash_id(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

long long rollout_pick(const rollout_spec *spec, const char *conv_id) {
    if (spec->total_weight <= 0) return -1;
    long long point = (long long)(hash_id(conv_id) % (uint64_t)spec->total_weight);
    for (size_t i = 0; i < spec->n_arms; i++) {
        point -= spec->arms[i].weight;
        if (point < 0) return spec->arms[i].snapshot;
    }
    return -1;
}
