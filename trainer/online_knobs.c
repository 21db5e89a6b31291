/* online_knobs.c: the trainer's live knobs (DESIGN.md section 8, the hash duel:knobs; see
 * online_trainer.h): each (name, value) pair is validated like the configuration and overrides
 * the configured option; a rejected one is reported with its reason and the others still apply.
 * The options in effect are always the configured ones overridden by the current knobs, so a
 * knob deleted from the hash reverts. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "online_trainer_state.h"

/* Knobs of duel:knobs that belong to serving (the engine and the gateway read them): the
 * trainer ignores them without a word. */
static const char *const SERVING_KNOBS[] = {"strategy", "M", "temperature", "top_p", "top_k", "max_new_tokens",
                                            "min_p", "repetition_penalty", "arena_fraction", NULL};

static int knob_int(const char *name, const char *v, long long lo, long long hi, long long *out, duel_error *err) {
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!v[0] || *end || errno || (v[0] != '-' && (v[0] < '0' || v[0] > '9')))
        return duel_error_set(err, DUEL_EFORMAT, "knob %s: '%.64s' is not an integer", name, v);
    if (x < lo || x > hi)
        return duel_error_set(err, DUEL_EINVAL, "knob %s: %lld outside %lld..%lld", name, x, lo, hi);
    *out = x;
    return 0;
}

/* lo_open: the lower bound itself is excluded. */
static int knob_real(const char *name, const char *v, double lo, bool lo_open, double hi, double *out,
                     duel_error *err) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (!v[0] || *end || errno || !isfinite(x) || (v[0] != '-' && v[0] != '.' && (v[0] < '0' || v[0] > '9')))
        return duel_error_set(err, DUEL_EFORMAT, "knob %s: '%.64s' is not a finite number", name, v);
    if (x < lo || (lo_open && x == lo) || x > hi)
        return duel_error_set(err, DUEL_EINVAL, "knob %s: %g outside %s%g, %g]", name, x, lo_open ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

/* Applies one knob to o; DUEL_ENOTFOUND when it is not a trainer knob. */
static int apply_knob(online_trainer_options *o, const char *name, const char *v, duel_error *err) {
    long long i = 0;
    double x = 0;
    int rc;
    if (strcmp(name, "beta") == 0) {
        if ((rc = knob_real(name, v, 0, true, 1e6, &x, err)) == 0) o->loss.beta = x;
    } else if (strcmp(name, "gamma") == 0) {
        if ((rc = knob_real(name, v, 0, true, 1, &x, err)) == 0) o->gamma = x;
    } else if (strcmp(name, "loss") == 0) {
        dap_loss_kind kind;
        if ((rc = dap_loss_kind_parse(v, &kind, err)) == 0 && kind != o->loss.kind) {
            double simpo_gamma = o->loss.simpo_gamma;
            dap_loss_default_options(kind, &o->loss); /* that loss's beta unless a beta knob is set */
            o->loss.simpo_gamma = kind == DAP_LOSS_SIMPO ? o->loss.simpo_gamma : simpo_gamma;
            o->loss.xpo_alpha = 0;
        }
    } else if (strcmp(name, "lr_scale") == 0) {
        if ((rc = knob_real(name, v, 0, true, 1000, &x, err)) == 0) o->lr_scale = x;
    } else if (strcmp(name, "clip_norm") == 0) {
        if ((rc = knob_real(name, v, 0, false, 1e6, &x, err)) == 0) o->clip_norm = x;
    } else if (strcmp(name, "publish_every_seconds") == 0) {
        if ((rc = knob_real(name, v, 0, false, 1e9, &x, err)) == 0) o->publish_every_seconds = x;
    } else if (strcmp(name, "batch_size") == 0) {
        if ((rc = knob_int(name, v, 1, ONLINE_MAX_BATCH, &i, err)) == 0) o->batch_size = (int)i;
    } else if (strcmp(name, "publish_every") == 0) {
        if ((rc = knob_int(name, v, 0, 1 << 30, &i, err)) == 0) o->publish_every = (int)i;
    } else if (strcmp(name, "checkpoint_every") == 0) {
        if ((rc = knob_int(name, v, 1, 1 << 30, &i, err)) == 0) o->checkpoint_every = (int)i;
    } else if (strcmp(name, "burn_in") == 0) {
        if ((rc = knob_int(name, v, 0, 1LL << 40, &i, err)) == 0) o->burn_in = i;
    } else {
        return DUEL_ENOTFOUND;
    }
    return rc;
}

int online_trainer_set_knobs(online_trainer *t, int n, const char *const *names, const char *const *values,
                             online_knob_report *report) {
    online_trainer_options o = t->base;
    memset(report, 0, sizeof *report);
    /* loss first: a beta knob then overrides that loss's default beta, whatever the order */
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < n; k++) {
            if ((strcmp(names[k], "loss") == 0) != (pass == 0)) continue;
            bool serving = false;
            for (int s = 0; SERVING_KNOBS[s]; s++) serving |= strcmp(SERVING_KNOBS[s], names[k]) == 0;
            if (serving) continue;
            duel_error kerr = {0};
            int rc = apply_knob(&o, names[k], values[k], &kerr);
            if (rc == 0) {
                report->applied++;
                continue;
            }
            if (rc == DUEL_ENOTFOUND) duel_error_set(&kerr, rc, "unknown knob %.64s", names[k]);
            if (report->num_rejected < ONLINE_MAX_KNOB_REPORTS) {
                online_knob_rejection *r = &report->rejected[report->num_rejected++];
                snprintf(r->name, sizeof r->name, "%.63s", names[k]);
                snprintf(r->value, sizeof r->value, "%.63s", values[k]);
                snprintf(r->reason, sizeof r->reason, "%.191s", kerr.message);
            }
        }
    }
    t->options = o;
    return report->num_rejected > 0 ? DUEL_EINVAL : 0;
}

int online_trainer_knobs_json(const online_trainer *t, char *out, size_t cap) {
    const online_trainer_options *o = &t->options;
    int n = snprintf(out, cap,
                     "{\"loss\":\"%s\",\"beta\":%.9g,\"gamma\":%.9g,\"lr_scale\":%.9g,\"clip_norm\":%.9g,"
                     "\"batch_size\":%d,\"burn_in\":%lld,\"publish_every\":%d,\"publish_every_seconds\":%.9g,"
                     "\"checkpoint_every\":%d}",
                     dap_loss_kind_name(o->loss.kind), o->loss.beta, o->gamma, o->lr_scale, o->clip_norm, o->batch_size,
                     (long long)o->burn_in, o->publish_every, o->publish_every_seconds, o->checkpoint_every);
    return n >= 0 && (size_t)n < cap ? 0 : DUEL_ELIMIT;
}
