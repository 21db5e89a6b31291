/* knobs.h: the one table of live knobs (DESIGN.md sections 8 and 11: the Redis hash duel:knobs,
 * field -> text value). Each knob has a name, a type, a range or a list of choices, the config
 * key whose value is its default, who reads it (serving: every `duel serve`; trainer: `duel
 * train`) and one sentence of help. The table drives every reader:
 *   - validation of a knob's text (duel_knob_parse) and of a whole change, all or nothing
 *     (duel_knobs_apply: cross-knob rules included);
 *   - validation of the config keys behind the knobs (duel_knob_config_value: the same ranges,
 *     so a config value is accepted exactly when the knob would accept it);
 *   - the trainer's live knobs (trainer/online_knobs.c) and the gateway's (gateway/console.c);
 *   - `/api/knobs` and the dashboard's form (duel_knobs_describe);
 *   - `duel knobs` and the knob list of docs/CONFIG.md (duel_knobs_markdown; a test compares).
 *
 * Values are kept as canonical text (what goes into duel:knobs and into the audit log: an INT
 * as "%lld", a NUMBER as "%.9g", a CHOICE as the word) plus the number. */
#ifndef DUEL_KNOBS_H
#define DUEL_KNOBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

typedef enum duel_knob_type {
    DUEL_KNOB_INT,    /* decimal integer within [min, max] */
    DUEL_KNOB_NUMBER, /* finite number (strtod syntax) within [min, max], min excluded when
                         min_exclusive */
    DUEL_KNOB_CHOICE, /* one of the space-separated words in choices */
} duel_knob_type;

enum {
    DUEL_KNOB_SERVING = 1, /* read by every `duel serve` at the next duel */
    DUEL_KNOB_TRAINER = 2, /* read by `duel train` before every batch */
};

typedef struct duel_knob_spec {
    const char *name;        /* the field of duel:knobs */
    duel_knob_type type;
    double min, max;         /* INT and NUMBER */
    bool min_exclusive;      /* NUMBER: min itself is refused (top_p > 0) */
    const char *choices;     /* CHOICE: "ee_ts bai_ts ..." */
    const char *config_path; /* the config key whose value is the default; NULL: fixed_default */
    const char *fixed_default; /* default text of a knob with no config key (lr_scale: "1") */
    unsigned readers;        /* DUEL_KNOB_SERVING | DUEL_KNOB_TRAINER */
    const char *help;        /* one sentence (docs, dashboard) */
} duel_knob_spec;

#define DUEL_KNOB_COUNT 17
#define DUEL_KNOB_M_MAX 64 /* knob M's maximum: servers size their engines for it */
#define DUEL_KNOB_TEXT_MAX 32 /* bytes of a canonical value, NUL included */

/* The table, in a fixed order (serving knobs first). */
extern const duel_knob_spec duel_knobs[DUEL_KNOB_COUNT];

/* The knob's index in duel_knobs, or -1. */
int duel_knob_index(const char *name);

typedef struct duel_knob_value {
    double number;                  /* INT and NUMBER */
    char text[DUEL_KNOB_TEXT_MAX];  /* canonical text, every type */
} duel_knob_value;

/* Every knob's value, in table order. */
typedef struct duel_knob_values {
    duel_knob_value v[DUEL_KNOB_COUNT];
} duel_knob_values;

/* Parses one knob's text: unknown name, wrong syntax or out of range is DUEL_EINVAL naming the
 * knob, the value and the rule ("knob M = 100: outside [2, 64]"). *index (may be NULL) gets the
 * knob's index. */
int duel_knob_parse(const char *name, const char *text, duel_knob_value *out, int *index,
                    duel_error *err);

/* The default of every knob from a configuration document (the one duel_config_load returns, so
 * a --config file or --set moves the defaults): each knob's config key, checked with the knob's
 * rule (duel_knob_config_value); source names the document in messages (NULL: "the
 * configuration"). The set is then checked with the cross-knob rules. */
int duel_knobs_defaults(const json_t *config, const char *source, duel_knob_values *out,
                        duel_error *err);

/* The value of knob `name`'s config key in config, checked against the knob's type and range;
 * messages name the key and the knob ("SOURCE: duel.candidates = 100 is outside [2, 64] (knob
 * M)"). source names the configuration in messages. */
int duel_knob_config_value(const json_t *config, const char *name, const char *source,
                           duel_knob_value *out, duel_error *err);

/* Cross-knob rules of a complete set (the arena strategy splits M between two arms: M even).
 * DUEL_EINVAL naming the knobs. */
int duel_knobs_check(const duel_knob_values *values, duel_error *err);

/* Applies a change to *values, all or nothing: names[i] = texts[i] for i < n (text NULL: back to
 * defaults' value), every one parsed, then the whole result checked (duel_knobs_check). On any
 * error *values is unchanged and err names the first bad knob. */
int duel_knobs_apply(duel_knob_values *values, const duel_knob_values *defaults,
                     const char *const *names, const char *const *texts, size_t n,
                     duel_error *err);

/* The table as JSON for /api/knobs and the dashboard: an array of {name, type, min, max,
 * min_exclusive, choices, readers, config, default, help}, defaults from `defaults` (NULL:
 * config/default.json's). Caller json_decrefs; NULL on out of memory. */
json_t *duel_knobs_describe(const duel_knob_values *defaults);

/* The knob list of docs/CONFIG.md as a Markdown table (defaults from config/default.json);
 * malloc'd, NULL on out of memory. */
char *duel_knobs_markdown(void);

/* "serving", "trainer" or "serving, trainer". */
const char *duel_knob_readers_name(unsigned readers);

#endif
