/* knobs.c: the live-knob table and everything derived from it (see knobs.h). Invariant: a value
 * any function here accepts, from duel:knobs or from the configuration, satisfies its knob's row
 * of the table, and a set of values it returns satisfies the cross-knob rules. */
#include "knobs.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "text_buf.h"

/* The strategies serving can run: all of them. pilaf's duels have no ERM features or rewards
 * (the engine decodes them without the feature pass): their votes are unscored duels that the
 * trainer applies to the policy only (common/vote_entry.h), and they add no R-hat or ERM figure
 * to the serving statistics. */
#define SERVING_STRATEGIES "ee_ts bai_ts uncertainty passive bon pilaf arena"

const duel_knob_spec duel_knobs[DUEL_KNOB_COUNT] = {
    {"strategy", DUEL_KNOB_CHOICE, 0, 0, false, SERVING_STRATEGIES, "duel.strategy", NULL,
     DUEL_KNOB_SERVING,
     "how the pair is chosen from the M candidates (pilaf: two samples, M = 2 whatever M says, "
     "half of them from logits mixed with the base model's; arena: the latest snapshot against "
     "the base model; needs snapshots and an even M)"},
    {"M", DUEL_KNOB_INT, 2, DUEL_KNOB_M_MAX, false, NULL, "duel.candidates", NULL, DUEL_KNOB_SERVING,
     "candidates decoded per duel"},
    {"temperature", DUEL_KNOB_NUMBER, 0, 10, false, NULL, "duel.temperature", NULL,
     DUEL_KNOB_SERVING, "sampling temperature (0: greedy)"},
    {"top_p", DUEL_KNOB_NUMBER, 0, 1, true, NULL, "duel.top_p", NULL, DUEL_KNOB_SERVING,
     "nucleus sampling (1: off)"},
    {"top_k", DUEL_KNOB_INT, 0, 1000000, false, NULL, "duel.top_k", NULL, DUEL_KNOB_SERVING,
     "keep the k most likely tokens (0: off)"},
    {"max_new_tokens", DUEL_KNOB_INT, 1, 8192, false, NULL, "duel.max_new_tokens", NULL,
     DUEL_KNOB_SERVING, "tokens per candidate at most"},
    {"arena_fraction", DUEL_KNOB_NUMBER, 0, 1, false, NULL, "rollout.arena_fraction", NULL,
     DUEL_KNOB_SERVING,
     "share of duels served as arena (latest snapshot against the base model) while a snapshot "
     "serves and M is even"},
    {"loss", DUEL_KNOB_CHOICE, 0, 0, false, "dpo ipo slic simpo", "trainer.loss", NULL,
     DUEL_KNOB_TRAINER,
     "preference loss of the policy update (switching takes that loss's own beta unless beta is "
     "set too)"},
    {"beta", DUEL_KNOB_NUMBER, 0, 1e6, true, NULL, "trainer.beta", NULL, DUEL_KNOB_TRAINER,
     "beta of the loss"},
    {"gamma", DUEL_KNOB_NUMBER, 0, 1, true, NULL, "trainer.gamma", NULL, DUEL_KNOB_TRAINER,
     "real fraction of the policy batch (1: no synthetic pairs)"},
    {"lr_scale", DUEL_KNOB_NUMBER, 0, 1000, true, NULL, NULL, "1", DUEL_KNOB_TRAINER,
     "multiplies the scheduled policy learning rate"},
    {"clip_norm", DUEL_KNOB_NUMBER, 0, 1e6, false, NULL, "trainer.clip_norm", NULL,
     DUEL_KNOB_TRAINER, "gradient clipping (global L2 norm)"},
    {"publish_every_seconds", DUEL_KNOB_NUMBER, 0, 1e9, false, NULL,
     "trainer.publish_every_seconds", NULL, DUEL_KNOB_TRAINER,
     "publish once this long has passed with an update unpublished (0: never)"},
    {"batch_size", DUEL_KNOB_INT, 1, 4096, false, NULL, "trainer.batch_size", NULL,
     DUEL_KNOB_TRAINER, "real a/b pairs per policy update"},
    {"publish_every", DUEL_KNOB_INT, 0, 1 << 30, false, NULL, "trainer.publish_every", NULL,
     DUEL_KNOB_TRAINER, "updates between snapshots (0: never)"},
    {"checkpoint_every", DUEL_KNOB_INT, 1, 1 << 30, false, NULL, "trainer.checkpoint_every", NULL,
     DUEL_KNOB_TRAINER, "updates between checkpoints"},
    {"burn_in", DUEL_KNOB_INT, 0, 1099511627776.0, false, NULL, "trainer.burn_in", NULL,
     DUEL_KNOB_TRAINER, "real pairs applied before synthetic pairs start"},
};

int duel_knob_index(const char *name) {
    for (int i = 0; i < DUEL_KNOB_COUNT; i++)
        if (strcmp(duel_knobs[i].name, name) == 0) return i;
    return -1;
}

const char *duel_knob_readers_name(unsigned readers) {
    switch (readers & (DUEL_KNOB_SERVING | DUEL_KNOB_TRAINER)) {
    case DUEL_KNOB_SERVING: return "serving";
    case DUEL_KNOB_TRAINER: return "trainer";
    case DUEL_KNOB_SERVING | DUEL_KNOB_TRAINER: return "serving, trainer";
    }
    return "nobody";
}

static bool choice_contains(const char *choices, const char *word) {
    size_t n = strlen(word);
    for (const char *p = choices; *p;) {
        while (*p == ' ') p++;
        const char *q = p;
        while (*q && *q != ' ') q++;
        if ((size_t)(q - p) == n && n > 0 && strncmp(p, word, n) == 0) return true;
        p = q;
    }
    return false;
}

/* "[2, 64]", "(0, 1]" or "one of: a b c" into out. */
static void rule_text(const duel_knob_spec *s, char *out, size_t cap) {
    if (s->type == DUEL_KNOB_CHOICE) snprintf(out, cap, "one of: %s", s->choices);
    else snprintf(out, cap, "%c%.10g, %.10g]", s->min_exclusive ? '(' : '[', s->min, s->max);
}

/* Checks a number against the spec's range and stores it with its canonical text. what names
 * the value in messages ("knob M" or "SOURCE: duel.candidates"). */
static int check_number(const duel_knob_spec *s, double v, const char *what, const char *suffix,
                        duel_knob_value *out, duel_error *err) {
    char rule[64];
    rule_text(s, rule, sizeof rule);
    if (v < s->min || v > s->max || (s->min_exclusive && v == s->min)) {
        if (s->type == DUEL_KNOB_INT)
            return duel_error_set(err, DUEL_EINVAL, "%s = %lld: outside %s%s", what, (long long)v,
                                  rule, suffix);
        return duel_error_set(err, DUEL_EINVAL, "%s = %.10g: outside %s%s", what, v, rule, suffix);
    }
    out->number = v;
    if (s->type == DUEL_KNOB_INT) snprintf(out->text, sizeof out->text, "%lld", (long long)v);
    else snprintf(out->text, sizeof out->text, "%.9g", v);
    return DUEL_OK;
}

int duel_knob_parse(const char *name, const char *text, duel_knob_value *out, int *index,
                    duel_error *err) {
    int k = duel_knob_index(name);
    if (index) *index = k;
    if (k < 0) return duel_error_set(err, DUEL_EINVAL, "unknown knob \"%.64s\"", name);
    const duel_knob_spec *s = &duel_knobs[k];
    char what[80];
    snprintf(what, sizeof what, "knob %s", s->name);
    memset(out, 0, sizeof *out);
    if (!text[0] || isspace((unsigned char)text[0]))
        return duel_error_set(err, DUEL_EINVAL, "knob %s = \"%.64s\": empty or leading space",
                              s->name, text);
    char *end = NULL;
    switch (s->type) {
    case DUEL_KNOB_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (*end || errno)
            return duel_error_set(err, DUEL_EINVAL, "knob %s = \"%.64s\": not an integer",
                                  s->name, text);
        return check_number(s, (double)v, what, "", out, err);
    }
    case DUEL_KNOB_NUMBER: {
        double v = strtod(text, &end);
        if (*end || !isfinite(v))
            return duel_error_set(err, DUEL_EINVAL, "knob %s = \"%.64s\": not a finite number",
                                  s->name, text);
        return check_number(s, v, what, "", out, err);
    }
    case DUEL_KNOB_CHOICE:
        if (strlen(text) >= sizeof out->text || !choice_contains(s->choices, text))
            return duel_error_set(err, DUEL_EINVAL, "knob %s = \"%.64s\": expected one of: %s",
                                  s->name, text, s->choices);
        snprintf(out->text, sizeof out->text, "%s", text);
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EINVAL, "knob %s: bad spec type", s->name);
}

/* config at a dotted path ("duel.candidates"), or NULL. */
static const json_t *config_at(const json_t *config, const char *path) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const json_t *v = config;
    for (char *seg = buf, *dot; v && seg; seg = dot ? dot + 1 : NULL) {
        dot = strchr(seg, '.');
        if (dot) *dot = '\0';
        v = json_object_get(v, seg);
    }
    return v;
}

int duel_knob_config_value(const json_t *config, const char *name, const char *source,
                           duel_knob_value *out, duel_error *err) {
    int k = duel_knob_index(name);
    if (k < 0) return duel_error_set(err, DUEL_EINVAL, "unknown knob \"%.64s\"", name);
    const duel_knob_spec *s = &duel_knobs[k];
    memset(out, 0, sizeof *out);
    if (!s->config_path) {
        int rc = duel_knob_parse(s->name, s->fixed_default, out, NULL, err);
        return rc;
    }
    const json_t *v = config_at(config, s->config_path);
    char what[160], suffix[80];
    snprintf(what, sizeof what, "%s: %s", source, s->config_path);
    snprintf(suffix, sizeof suffix, " (knob %s)", s->name);
    switch (s->type) {
    case DUEL_KNOB_INT:
        if (!json_is_integer(v))
            return duel_error_set(err, DUEL_EFORMAT, "%s must be an integer", what);
        return check_number(s, (double)json_integer_value(v), what, suffix, out, err);
    case DUEL_KNOB_NUMBER:
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return duel_error_set(err, DUEL_EFORMAT, "%s must be a number", what);
        return check_number(s, json_number_value(v), what, suffix, out, err);
    case DUEL_KNOB_CHOICE:
        if (!json_is_string(v)) return duel_error_set(err, DUEL_EFORMAT, "%s must be a string", what);
        if (json_string_length(v) >= sizeof out->text ||
            !choice_contains(s->choices, json_string_value(v)))
            return duel_error_set(err, DUEL_EINVAL, "%s = \"%.64s\": expected one of: %s%s", what,
                                  json_string_value(v), s->choices, suffix);
        snprintf(out->text, sizeof out->text, "%s", json_string_value(v));
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EINVAL, "knob %s: bad spec type", s->name);
}

int duel_knobs_defaults(const json_t *config, const char *source, duel_knob_values *out,
                        duel_error *err) {
    for (int k = 0; k < DUEL_KNOB_COUNT; k++) {
        int rc = duel_knob_config_value(config, duel_knobs[k].name,
                                        source ? source : "the configuration", &out->v[k], err);
        if (rc) return rc;
    }
    return duel_knobs_check(out, err);
}

int duel_knobs_check(const duel_knob_values *values, duel_error *err) {
    int strategy = duel_knob_index("strategy"), m = duel_knob_index("M");
    if (strcmp(values->v[strategy].text, "arena") == 0 && (long long)values->v[m].number % 2 != 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "knob strategy = arena splits M between two arms: M must be even "
                              "(M = %lld)",
                              (long long)values->v[m].number);
    return DUEL_OK;
}

int duel_knobs_apply(duel_knob_values *values, const duel_knob_values *defaults,
                     const char *const *names, const char *const *texts, size_t n,
                     duel_error *err) {
    duel_knob_values next = *values;
    for (size_t i = 0; i < n; i++) {
        int k = duel_knob_index(names[i]);
        if (k < 0) return duel_error_set(err, DUEL_EINVAL, "unknown knob \"%.64s\"", names[i]);
        int rc = texts[i] ? duel_knob_parse(names[i], texts[i], &next.v[k], NULL, err) : 0;
        if (rc) return rc;
        if (!texts[i]) next.v[k] = defaults->v[k];
    }
    int rc = duel_knobs_check(&next, err);
    if (rc) return rc;
    *values = next;
    return DUEL_OK;
}

static const char *type_name(duel_knob_type t) {
    switch (t) {
    case DUEL_KNOB_INT: return "integer";
    case DUEL_KNOB_NUMBER: return "number";
    case DUEL_KNOB_CHOICE: return "choice";
    }
    return "?";
}

/* The defaults of config/default.json (embedded). */
static int embedded_defaults(duel_knob_values *out) {
    json_t *config = NULL;
    duel_error err = {0};
    int rc = duel_config_defaults(&config, &err);
    if (!rc) rc = duel_knobs_defaults(config, NULL, out, &err);
    json_decref(config);
    return rc;
}

json_t *duel_knobs_describe(const duel_knob_values *defaults) {
    duel_knob_values embedded;
    if (!defaults) {
        if (embedded_defaults(&embedded)) return NULL;
        defaults = &embedded;
    }
    json_t *arr = json_array();
    for (int k = 0; arr && k < DUEL_KNOB_COUNT; k++) {
        const duel_knob_spec *s = &duel_knobs[k];
        json_t *readers = json_array();
        if (readers && (s->readers & DUEL_KNOB_SERVING)) json_array_append_new(readers, json_string("serving"));
        if (readers && (s->readers & DUEL_KNOB_TRAINER)) json_array_append_new(readers, json_string("trainer"));
        json_t *o = json_pack("{s:s, s:s, s:o, s:s?, s:s, s:s}", "name", s->name, "type",
                              type_name(s->type), "readers", readers, "config", s->config_path,
                              "default", defaults->v[k].text, "help", s->help);
        if (o && s->type == DUEL_KNOB_CHOICE) {
            json_t *choices = json_array();
            const char *p = s->choices;
            while (choices && *p) {
                while (*p == ' ') p++;
                const char *q = p;
                while (*q && *q != ' ') q++;
                if (q > p) json_array_append_new(choices, json_stringn(p, (size_t)(q - p)));
                p = q;
            }
            json_object_set_new(o, "choices", choices ? choices : json_null());
        } else if (o) {
            json_object_set_new(o, "min", json_real(s->min));
            json_object_set_new(o, "max", json_real(s->max));
            json_object_set_new(o, "min_exclusive", json_boolean(s->min_exclusive));
        }
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* A bound in the docs' notation: powers of two as 2^n, others as %g. */
static void bound_text(double v, char *out, size_t cap) {
    int e = 0;
    double f = frexp(v, &e);
    if (v >= 1 << 20 && f == 0.5) snprintf(out, cap, "2^%d", e - 1);
    else snprintf(out, cap, "%.10g", v);
}

char *duel_knobs_markdown(void) {
    duel_knob_values d;
    if (embedded_defaults(&d)) return NULL;
    text_buf b = {0};
    text_buf_printf(&b, "| knob | read by | type | allowed | default | config key | what it does |\n"
            "|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < DUEL_KNOB_COUNT; k++) {
        const duel_knob_spec *s = &duel_knobs[k];
        char allowed[160], lo[32], hi[32];
        if (s->type == DUEL_KNOB_CHOICE) {
            size_t n = 0;
            allowed[0] = '\0';
            for (const char *p = s->choices; *p && n + 2 < sizeof allowed; p++)
                if (*p == ' ') n += (size_t)snprintf(allowed + n, sizeof allowed - n, ", ");
                else allowed[n++] = *p, allowed[n] = '\0';
        } else {
            bound_text(s->min, lo, sizeof lo);
            bound_text(s->max, hi, sizeof hi);
            snprintf(allowed, sizeof allowed, "%c%s, %s]", s->min_exclusive ? '(' : '[', lo, hi);
        }
        text_buf_printf(&b, "| `%s` | %s | %s | %s | `%s` | %s%s%s | %s |\n", s->name,
            duel_knob_readers_name(s->readers), type_name(s->type), allowed, d.v[k].text,
            s->config_path ? "`" : "", s->config_path ? s->config_path : "(none)",
            s->config_path ? "`" : "", s->help);
    }
    return text_buf_take(&b, NULL);
}
