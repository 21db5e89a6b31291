/* online_knobs.c: the trainer's live knobs (DESIGN.md section 8, the hash duel:knobs; see
 * online_trainer.h): each (name, value) pair is validated by the knob table (common/knobs.h, the
 * same rule as the config key behind it) and overrides the configured option; a rejected one is
 * reported with its reason and the others still apply; serving knobs are left to the servers.
 * The options in effect are always the configured ones overridden by the current knobs, so a
 * knob deleted from the hash reverts. */
#include <stdio.h>
#include <string.h>

#include "knobs.h"
#include "online_trainer_state.h"

/* The table's bound on batch_size is the trainer's. */
_Static_assert(ONLINE_MAX_BATCH == 4096, "knob batch_size's range in common/knobs.c");

/* Applies one trainer knob, already checked against the table (common/knobs.h), to o. */
static void apply_knob(online_trainer_options *o, const char *name, const duel_knob_value *v) {
    double x = v->number;
    if (strcmp(name, "beta") == 0) o->loss.beta = x;
    else if (strcmp(name, "gamma") == 0) o->gamma = x;
    else if (strcmp(name, "loss") == 0) {
        dap_loss_kind kind;
        if (dap_loss_kind_parse(v->text, &kind, NULL) == 0 && kind != o->loss.kind) {
            double simpo_gamma = o->loss.simpo_gamma;
            dap_loss_default_options(kind, &o->loss); /* that loss's beta unless a beta knob is set */
            o->loss.simpo_gamma = kind == DAP_LOSS_SIMPO ? o->loss.simpo_gamma : simpo_gamma;
            o->loss.xpo_alpha = 0;
        }
    } else if (strcmp(name, "lr_scale") == 0) o->lr_scale = x;
    else if (strcmp(name, "clip_norm") == 0) o->clip_norm = x;
    else if (strcmp(name, "publish_every_seconds") == 0) o->publish_every_seconds = x;
    else if (strcmp(name, "batch_size") == 0) o->batch_size = (int)x;
    else if (strcmp(name, "publish_every") == 0) o->publish_every = (int)x;
    else if (strcmp(name, "checkpoint_every") == 0) o->checkpoint_every = (int)x;
    else if (strcmp(name, "burn_in") == 0) o->burn_in = (int64_t)x;
}

int online_trainer_set_knobs(online_trainer *t, int n, const char *const *names, const char *const *values,
                             online_knob_report *report) {
    online_trainer_options o = t->base;
    memset(report, 0, sizeof *report);
    /* loss first: a beta knob then overrides that loss's default beta, whatever the order */
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < n; k++) {
            if ((strcmp(names[k], "loss") == 0) != (pass == 0)) continue;
            duel_error kerr = {0};
            duel_knob_value v;
            int index = -1;
            int rc = duel_knob_parse(names[k], values[k], &v, &index, &kerr);
            if (rc == 0 && !(duel_knobs[index].readers & DUEL_KNOB_TRAINER)) continue; /* serving's */
            if (rc == 0) {
                apply_knob(&o, names[k], &v);
                report->applied++;
                continue;
            }
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
