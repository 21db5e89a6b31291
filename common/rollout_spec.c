/* rollout_spec.c: parsing, checking, writing and changing the rollout spec, and assigning
 * clients to its arms (see rollout_spec.h). Invariant: every spec this file hands out passed
 * rollout_spec_check; a refused text or change leaves the caller's spec as it was. */
#include "rollout_spec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[] = {"progressing", "paused", "healthy", "degraded",
                                           "aborted"};

const char *rollout_status_name(rollout_status status) {
    return (unsigned)status < sizeof status_names / sizeof *status_names ? status_names[status]
                                                                         : "?";
}

int rollout_spec_arm_index(const rollout_spec *spec, const char *name) {
    for (int i = 0; name && i < spec->n_arms; i++)
        if (strcmp(spec->arms[i].name, name) == 0) return i;
    return -1;
}

static bool name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= ROLLOUT_NAME_MAX) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return false;
    return true;
}

static void analysis_defaults(rollout_analysis *a) {
    *a = (rollout_analysis){.window_s = 600, .interval_s = 60, .failure_limit = 3,
                            .min_votes = 20, .max_error_rate = 0.05, .max_both_bad_rate = 0.5,
                            .min_win_rate = 0.4};
}

int rollout_spec_check(const rollout_spec *s, const rollout_limits *limits, duel_error *err) {
    int max_arms = limits && limits->max_arms > 0 ? limits->max_arms : ROLLOUT_MAX_ARMS;
    if (max_arms > ROLLOUT_MAX_ARMS) max_arms = ROLLOUT_MAX_ARMS;
    if (s->revision < 0) return duel_error_set(err, DUEL_EINVAL, "rollout: revision: negative");
    if (s->n_arms < 1) return duel_error_set(err, DUEL_EINVAL, "rollout: arms: at least one arm");
    if (s->n_arms > max_arms)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: arms: %d arms, but the engine holds %d (rollout.max_arms)",
                              s->n_arms, max_arms);
    int total = 0;
    for (int i = 0; i < s->n_arms; i++) {
        const rollout_arm_spec *a = &s->arms[i];
        if (!name_ok(a->name))
            return duel_error_set(err, DUEL_EINVAL,
                                  "rollout: arms[%d].name: 1 to %d of [A-Za-z0-9_.-]", i,
                                  ROLLOUT_NAME_MAX - 1);
        for (int j = 0; j < i; j++)
            if (strcmp(s->arms[j].name, a->name) == 0)
                return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d].name: \"%s\" twice", i,
                                      a->name);
        if (a->weight < 0 || a->weight > ROLLOUT_WEIGHT_TOTAL)
            return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d].weight: %d is not in 0..%d",
                                  i, a->weight, ROLLOUT_WEIGHT_TOTAL);
        total += a->weight;
        if (a->snapshot < ROLLOUT_SNAPSHOT_LATEST)
            return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d].snapshot: bad version", i);
        if (a->snapshot > 0 && limits && limits->snapshots) {
            bool known = false;
            for (size_t k = 0; k < limits->n_snapshots && !known; k++)
                known = limits->snapshots[k] == a->snapshot;
            if (!known)
                return duel_error_set(err, DUEL_EINVAL,
                                      "rollout: arms[%d].snapshot: version %lld is not a registered "
                                      "snapshot (duel snapshot list)",
                                      i, a->snapshot);
        }
    }
    if (total != ROLLOUT_WEIGHT_TOTAL)
        return duel_error_set(err, DUEL_EINVAL, "rollout: arms[].weight: they sum to %d, not %d",
                              total, ROLLOUT_WEIGHT_TOTAL);
    if (s->stable < 0 || s->stable >= s->n_arms)
        return duel_error_set(err, DUEL_EINVAL, "rollout: stable: names no arm");
    if (s->n_steps < 0 || s->n_steps > ROLLOUT_MAX_STEPS)
        return duel_error_set(err, DUEL_EINVAL, "rollout: steps: at most %d", ROLLOUT_MAX_STEPS);
    if (s->n_steps > 0 && s->n_arms != 2)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: steps: act on the canary, so the spec needs exactly two "
                              "arms (it has %d)",
                              s->n_arms);
    for (int i = 0; i < s->n_steps; i++) {
        const rollout_step *st = &s->steps[i];
        if (st->kind == ROLLOUT_STEP_SET_WEIGHT &&
            (st->weight < 0 || st->weight > ROLLOUT_WEIGHT_TOTAL))
            return duel_error_set(err, DUEL_EINVAL, "rollout: steps[%d].set_weight: not in 0..%d",
                                  i, ROLLOUT_WEIGHT_TOTAL);
        if (st->kind == ROLLOUT_STEP_PAUSE && st->duration_s < 0)
            return duel_error_set(err, DUEL_EINVAL, "rollout: steps[%d].pause.duration_s: negative", i);
    }
    if (s->step < 0 || s->step > s->n_steps)
        return duel_error_set(err, DUEL_EINVAL, "rollout: step: not in 0..%d", s->n_steps);
    const rollout_analysis *a = &s->analysis;
    if (a->window_s < 1 || a->interval_s < 1 || a->failure_limit < 1 || a->min_votes < 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: analysis: window_s, interval_s and failure_limit must be "
                              "positive, min_votes not negative");
    if (!(a->max_error_rate >= 0 && a->max_error_rate <= 1) ||
        !(a->max_both_bad_rate >= 0 && a->max_both_bad_rate <= 1) ||
        !(a->min_win_rate >= 0 && a->min_win_rate <= 1))
        return duel_error_set(err, DUEL_EINVAL, "rollout: analysis: rates must be in [0, 1]");
    if ((unsigned)s->status > ROLLOUT_ABORTED)
        return duel_error_set(err, DUEL_EINVAL, "rollout: status: unknown");
    if (!(s->arena_fraction >= 0 && s->arena_fraction <= 1))
        return duel_error_set(err, DUEL_EINVAL, "rollout: arena_fraction: not in [0, 1]");
    if (s->arena_fraction > 0 && s->n_arms < 2)
        return duel_error_set(err, DUEL_EINVAL, "rollout: arena_fraction: battles need two arms");
    return DUEL_OK;
}

/* ---- parsing -------------------------------------------------------------------------------- */

/* Refuses members of o outside allowed (a NULL-terminated list); where names the object. */
static int only_fields(const json_t *o, const char *const *allowed, const char *where,
                       duel_error *err) {
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(*a, key) == 0;
        if (!ok) return duel_error_set(err, DUEL_EINVAL, "rollout: %s%s: unknown field", where, key);
    }
    return DUEL_OK;
}

static int get_int(const json_t *o, const char *key, long long lo, long long hi, long long *out,
                   const char *where, duel_error *err) {
    const json_t *v = json_object_get(o, key);
    if (!v) return DUEL_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return duel_error_set(err, DUEL_EINVAL, "rollout: %s%s: an integer in %lld..%lld", where,
                              key, lo, hi);
    *out = json_integer_value(v);
    return DUEL_OK;
}

static int get_rate(const json_t *o, const char *key, double *out, duel_error *err) {
    const json_t *v = json_object_get(o, key);
    if (!v) return DUEL_OK;
    if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= 1))
        return duel_error_set(err, DUEL_EINVAL, "rollout: analysis.%s: a number in [0, 1]", key);
    *out = json_number_value(v);
    return DUEL_OK;
}

static int parse_arm(const json_t *a, int i, rollout_arm_spec *out, duel_error *err) {
    static const char *const fields[] = {"name", "snapshot", "weight", NULL};
    char where[32];
    snprintf(where, sizeof where, "arms[%d].", i);
    if (!json_is_object(a)) return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d]: not an object", i);
    int rc = only_fields(a, fields, where, err);
    if (rc) return rc;
    const char *name = json_string_value(json_object_get(a, "name"));
    if (!name) return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d].name: missing", i);
    if (!name_ok(name))
        return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d].name: 1 to %d of [A-Za-z0-9_.-]",
                              i, ROLLOUT_NAME_MAX - 1);
    snprintf(out->name, sizeof out->name, "%s", name);
    const json_t *snap = json_object_get(a, "snapshot");
    if (json_is_string(snap) && strcmp(json_string_value(snap), "latest") == 0)
        out->snapshot = ROLLOUT_SNAPSHOT_LATEST;
    else if (json_is_string(snap) && strcmp(json_string_value(snap), "base") == 0)
        out->snapshot = ROLLOUT_SNAPSHOT_BASE;
    else if (json_is_integer(snap) && json_integer_value(snap) >= 1)
        out->snapshot = json_integer_value(snap);
    else
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: arms[%d].snapshot: a version (1, 2, ...), \"latest\" or "
                              "\"base\"",
                              i);
    if (!json_object_get(a, "weight"))
        return duel_error_set(err, DUEL_EINVAL, "rollout: arms[%d].weight: missing", i);
    long long w = 0;
    if ((rc = get_int(a, "weight", 0, ROLLOUT_WEIGHT_TOTAL, &w, where, err))) return rc;
    out->weight = (int)w;
    return DUEL_OK;
}

static int parse_step(const json_t *st, int i, rollout_step *out, duel_error *err) {
    if (!json_is_object(st) || json_object_size(st) != 1)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: steps[%d]: one of {\"set_weight\": W}, {\"pause\": {...}}, "
                              "{\"analysis\": {}}",
                              i);
    char where[48];
    snprintf(where, sizeof where, "steps[%d].", i);
    const json_t *v;
    if ((v = json_object_get(st, "set_weight"))) {
        long long w = 0;
        int rc = get_int(st, "set_weight", 0, ROLLOUT_WEIGHT_TOTAL, &w, where, err);
        *out = (rollout_step){.kind = ROLLOUT_STEP_SET_WEIGHT, .weight = (int)w};
        return rc;
    }
    if ((v = json_object_get(st, "pause"))) {
        static const char *const fields[] = {"duration_s", NULL};
        snprintf(where, sizeof where, "steps[%d].pause.", i);
        if (!json_is_object(v)) return duel_error_set(err, DUEL_EINVAL, "rollout: steps[%d].pause: an object", i);
        int rc = only_fields(v, fields, where, err);
        *out = (rollout_step){.kind = ROLLOUT_STEP_PAUSE};
        return rc ? rc : get_int(v, "duration_s", 0, 365LL * 86400, &out->duration_s, where, err);
    }
    if ((v = json_object_get(st, "analysis"))) {
        if (!json_is_object(v) || json_object_size(v) != 0)
            return duel_error_set(err, DUEL_EINVAL,
                                  "rollout: steps[%d].analysis: {} (thresholds are in \"analysis\")", i);
        *out = (rollout_step){.kind = ROLLOUT_STEP_ANALYSIS};
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EINVAL, "rollout: steps[%d]: unknown step", i);
}

static int parse_analysis(const json_t *a, rollout_analysis *out, duel_error *err) {
    static const char *const fields[] = {"window_s", "interval_s", "failure_limit", "min_votes",
                                         "max_error_rate", "max_both_bad_rate", "min_win_rate",
                                         NULL};
    if (!a) return DUEL_OK;
    if (!json_is_object(a)) return duel_error_set(err, DUEL_EINVAL, "rollout: analysis: an object");
    long long limit = out->failure_limit;
    int rc;
    if ((rc = only_fields(a, fields, "analysis.", err)) ||
        (rc = get_int(a, "window_s", 1, 7LL * 86400, &out->window_s, "analysis.", err)) ||
        (rc = get_int(a, "interval_s", 1, 86400, &out->interval_s, "analysis.", err)) ||
        (rc = get_int(a, "failure_limit", 1, 1000, &limit, "analysis.", err)) ||
        (rc = get_int(a, "min_votes", 0, 1000000000, &out->min_votes, "analysis.", err)) ||
        (rc = get_rate(a, "max_error_rate", &out->max_error_rate, err)) ||
        (rc = get_rate(a, "max_both_bad_rate", &out->max_both_bad_rate, err)) ||
        (rc = get_rate(a, "min_win_rate", &out->min_win_rate, err)))
        return rc;
    out->failure_limit = (int)limit;
    return DUEL_OK;
}

static int parse_root(const json_t *root, rollout_spec *s, duel_error *err) {
    static const char *const fields[] = {"revision", "arms", "stable", "steps", "step",
                                         "analysis", "status", "arena_fraction", NULL};
    if (!json_is_object(root)) return duel_error_set(err, DUEL_EINVAL, "rollout: not a JSON object");
    int rc = only_fields(root, fields, "", err);
    if (rc) return rc;
    memset(s, 0, sizeof *s);
    analysis_defaults(&s->analysis);
    if ((rc = get_int(root, "revision", 0, INT64_MAX, &s->revision, "", err))) return rc;
    const json_t *arms = json_object_get(root, "arms");
    if (!json_is_array(arms) || json_array_size(arms) == 0)
        return duel_error_set(err, DUEL_EINVAL, "rollout: arms: a non-empty array");
    if (json_array_size(arms) > ROLLOUT_MAX_ARMS)
        return duel_error_set(err, DUEL_EINVAL, "rollout: arms: %zu arms, at most %d",
                              json_array_size(arms), ROLLOUT_MAX_ARMS);
    size_t i;
    const json_t *v;
    json_array_foreach(arms, i, v) {
        if ((rc = parse_arm(v, (int)i, &s->arms[i], err))) return rc;
        s->n_arms++;
    }
    const json_t *stable = json_object_get(root, "stable");
    if (!json_is_string(stable))
        return duel_error_set(err, DUEL_EINVAL, "rollout: stable: the name of an arm");
    if ((s->stable = rollout_spec_arm_index(s, json_string_value(stable))) < 0)
        return duel_error_set(err, DUEL_EINVAL, "rollout: stable: \"%s\" is not an arm",
                              json_string_value(stable));
    const json_t *steps = json_object_get(root, "steps");
    if (steps && (!json_is_array(steps) || json_array_size(steps) > ROLLOUT_MAX_STEPS))
        return duel_error_set(err, DUEL_EINVAL, "rollout: steps: an array of at most %d steps",
                              ROLLOUT_MAX_STEPS);
    json_array_foreach(steps, i, v) {
        if ((rc = parse_step(v, (int)i, &s->steps[i], err))) return rc;
        s->n_steps++;
    }
    long long step = 0;
    if ((rc = get_int(root, "step", 0, ROLLOUT_MAX_STEPS, &step, "", err))) return rc;
    s->step = (int)step;
    if ((rc = parse_analysis(json_object_get(root, "analysis"), &s->analysis, err))) return rc;
    const json_t *status = json_object_get(root, "status");
    s->status = ROLLOUT_PROGRESSING;
    if (status) {
        int k = -1;
        for (int n = 0; n <= ROLLOUT_ABORTED && json_is_string(status); n++)
            if (strcmp(status_names[n], json_string_value(status)) == 0) k = n;
        if (k < 0)
            return duel_error_set(err, DUEL_EINVAL,
                                  "rollout: status: progressing, paused, healthy, degraded or "
                                  "aborted");
        s->status = (rollout_status)k;
    }
    const json_t *fraction = json_object_get(root, "arena_fraction");
    if (fraction && !json_is_number(fraction))
        return duel_error_set(err, DUEL_EINVAL, "rollout: arena_fraction: a number in [0, 1]");
    s->arena_fraction = fraction ? json_number_value(fraction) : 0;
    return DUEL_OK;
}

int rollout_spec_parse(const char *text, size_t len, const rollout_limits *limits,
                       rollout_spec *out, duel_error *err) {
    if (!text || len == 0) return duel_error_set(err, DUEL_EFORMAT, "rollout: empty spec");
    if (len > ROLLOUT_MAX_TEXT)
        return duel_error_set(err, DUEL_EFORMAT, "rollout: the spec is over %d bytes", ROLLOUT_MAX_TEXT);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return duel_error_set(err, DUEL_EFORMAT, "rollout: not JSON: %s (line %d, column %d)",
                              jerr.text, jerr.line, jerr.column);
    rollout_spec *s = malloc(sizeof *s);
    int rc = s ? parse_root(root, s, err) : duel_error_set(err, DUEL_ENOMEM, "rollout: out of memory");
    json_decref(root);
    if (!rc) rc = rollout_spec_check(s, limits, err);
    if (!rc) *out = *s;
    free(s);
    return rc;
}

/* ---- writing -------------------------------------------------------------------------------- */

json_t *rollout_spec_json(const rollout_spec *s) {
    json_t *arms = json_array(), *steps = json_array();
    for (int i = 0; arms && i < s->n_arms; i++) {
        const rollout_arm_spec *a = &s->arms[i];
        json_t *snap = a->snapshot == ROLLOUT_SNAPSHOT_LATEST ? json_string("latest")
                       : a->snapshot == ROLLOUT_SNAPSHOT_BASE ? json_string("base")
                                                              : json_integer(a->snapshot);
        json_array_append_new(arms, json_pack("{s:s, s:o, s:i}", "name", a->name, "snapshot", snap,
                                              "weight", a->weight));
    }
    for (int i = 0; steps && i < s->n_steps; i++) {
        const rollout_step *st = &s->steps[i];
        json_t *o = st->kind == ROLLOUT_STEP_SET_WEIGHT ? json_pack("{s:i}", "set_weight", st->weight)
                    : st->kind == ROLLOUT_STEP_PAUSE
                        ? (st->duration_s ? json_pack("{s:{s:I}}", "pause", "duration_s",
                                                      (json_int_t)st->duration_s)
                                          : json_pack("{s:{}}", "pause"))
                        : json_pack("{s:{}}", "analysis");
        json_array_append_new(steps, o);
    }
    const rollout_analysis *a = &s->analysis;
    json_t *analysis = json_pack("{s:I, s:I, s:i, s:I, s:f, s:f, s:f}", "window_s",
                                 (json_int_t)a->window_s, "interval_s", (json_int_t)a->interval_s,
                                 "failure_limit", a->failure_limit, "min_votes",
                                 (json_int_t)a->min_votes, "max_error_rate", a->max_error_rate,
                                 "max_both_bad_rate", a->max_both_bad_rate, "min_win_rate",
                                 a->min_win_rate);
    if (!arms || !steps || !analysis) {
        json_decref(arms);
        json_decref(steps);
        json_decref(analysis);
        return NULL;
    }
    return json_pack("{s:I, s:o, s:s, s:o, s:i, s:o, s:s, s:f}", "revision",
                     (json_int_t)s->revision, "arms", arms, "stable", s->arms[s->stable].name,
                     "steps", steps, "step", s->step, "analysis", analysis, "status",
                     rollout_status_name(s->status), "arena_fraction", s->arena_fraction);
}

char *rollout_spec_dump(const rollout_spec *s) {
    json_t *o = rollout_spec_json(s);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

/* ---- assignment ----------------------------------------------------------------------------- */

/* FNV-1a of the arm name, a NUL and the id, then SplitMix64's finaliser: stable across
 * processes and machines (every gateway assigns alike), and well mixed in every bit. */
static uint64_t arm_hash(const char *arm, const char *id) {
    uint64_t h = 1469598103934665603ull;
    for (const char *p = arm; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0) * 1099511628211ull;
    for (const char *p = id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

int rollout_spec_assign(const rollout_spec *spec, const char *client_id) {
    int best = -1;
    double best_score = 0;
    for (int i = 0; i < spec->n_arms; i++) {
        if (spec->arms[i].weight <= 0) continue;
        double u = ((double)(arm_hash(spec->arms[i].name, client_id) >> 11) + 0.5) * 0x1.0p-53;
        double score = spec->arms[i].weight / -log(u); /* u in (0, 1): -log u > 0 */
        if (best < 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

/* ---- actions -------------------------------------------------------------------------------- */

int rollout_spec_set_weight(rollout_spec *s, const char *arm, int weight, duel_error *err) {
    int i = rollout_spec_arm_index(s, arm);
    if (i < 0) return duel_error_set(err, DUEL_EINVAL, "rollout: no arm \"%s\"", arm ? arm : "");
    if (i == s->stable)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: \"%s\" is the stable arm: it takes what the others leave",
                              arm);
    if (weight < 0 || weight > ROLLOUT_WEIGHT_TOTAL)
        return duel_error_set(err, DUEL_EINVAL, "rollout: weight %d is not in 0..%d", weight,
                              ROLLOUT_WEIGHT_TOTAL);
    int stable = s->arms[s->stable].weight + s->arms[i].weight - weight;
    if (stable < 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: weight %d leaves the stable arm %d: lower another arm first",
                              weight, stable);
    s->arms[i].weight = weight;
    s->arms[s->stable].weight = stable;
    return DUEL_OK;
}

int rollout_spec_promote(rollout_spec *s, const char *arm, duel_error *err) {
    int i = -1;
    if (arm) {
        i = rollout_spec_arm_index(s, arm);
        if (i < 0) return duel_error_set(err, DUEL_EINVAL, "rollout: no arm \"%s\"", arm);
    } else if (s->n_arms == 2) {
        i = 1 - s->stable;
    } else {
        return duel_error_set(err, DUEL_EINVAL, "rollout: %d arms: name the arm to promote", s->n_arms);
    }
    s->arms[s->stable].snapshot = s->arms[i].snapshot;
    for (int k = 0; k < s->n_arms; k++) s->arms[k].weight = k == s->stable ? ROLLOUT_WEIGHT_TOTAL : 0;
    s->step = s->n_steps;
    s->status = ROLLOUT_HEALTHY;
    return DUEL_OK;
}

void rollout_spec_abort(rollout_spec *s, rollout_status status) {
    for (int k = 0; k < s->n_arms; k++) s->arms[k].weight = k == s->stable ? ROLLOUT_WEIGHT_TOTAL : 0;
    s->status = status;
}

int rollout_spec_pause(rollout_spec *s, bool pause, duel_error *err) {
    if (s->status == ROLLOUT_ABORTED || s->status == ROLLOUT_DEGRADED)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout: the rollout is %s: set a new spec instead",
                              rollout_status_name(s->status));
    if (!pause && s->status != ROLLOUT_PAUSED)
        return duel_error_set(err, DUEL_EINVAL, "rollout: not paused (status %s)",
                              rollout_status_name(s->status));
    s->status = pause ? ROLLOUT_PAUSED : ROLLOUT_PROGRESSING;
    return DUEL_OK;
}
