/* config.h: the shared configuration (DESIGN.md section 11). One JSON document with the sections
 * model, engine, duel, erm, trainer, gateway, redis, rollout, oracle and sim.
 *
 * The schema is config/default.json itself, embedded in the library at build time: every key a
 * config may hold exists there, with the default value and therefore the type. Loading:
 *   1. start from the embedded defaults;
 *   2. merge the file (optional): every key must exist in the defaults (unknown section or key:
 *      DUEL_EFORMAT naming its dotted path) with a matching type (see below);
 *   3. apply the environment (addresses only; secrets go to duel_config_secrets, never into the
 *      JSON, so that printing the effective config never prints a secret):
 *        DUEL_REDIS=HOST:PORT      -> redis.host, redis.port
 *        DUEL_BIND=ADDR:PORT       -> gateway.bind, gateway.port
 *        DUEL_JUDGE_URL=URL        -> oracle.judge.url
 *        DUEL_ADMIN_TOKEN=TOKEN    -> secrets->admin_token (gateway admin API bearer token)
 *        DUEL_JUDGE_API_KEY=KEY    -> secrets->judge_api_key (oracle_judge_config.api_key)
 *      An empty value counts as unset; other DUEL_* variables are ignored here;
 *   4. apply `--set section.key=value` overrides in order (the command line wins).
 * The result is the complete document (every default present), ready for the sections' own
 * parsers (trainer, gateway, oracle), which check ranges.
 *
 * Types: an integer default takes only JSON integers; a real default takes any number (stored
 * as a real); strings, booleans take their own type; an object takes an object merged key by
 * key; an array with a non-empty default takes an array whose elements have the type of the
 * default's first element; an array with an empty default takes any array.
 *
 * --set values: for a string key the text is taken as is (a JSON string literal "..." is
 * decoded); for any other key the text must parse as JSON of the right type (e.g.
 * trainer.lr=3e-6, gateway.origins=["http://a"], oracle.preference={"stochastic":true}).
 *
 * Live knobs (the Redis hash duel:knobs: field -> text value) are validated with a table of
 * duel_knob_spec; duel_knobs_default lists the ones the engine reads. */
#ifndef DUEL_CONFIG_H
#define DUEL_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#define DUEL_CONFIG_MAX_BYTES (1u << 20) /* a config file larger than this is refused */
#define DUEL_CONFIG_SECRET_MAX 256       /* bytes of a secret, NUL included */
#define DUEL_CONFIG_SECTION_COUNT 10

/* The ten section names, in the order of DESIGN.md section 11. */
extern const char *const duel_config_sections[DUEL_CONFIG_SECTION_COUNT];

typedef struct duel_config_secrets {
    char admin_token[DUEL_CONFIG_SECRET_MAX];   /* DUEL_ADMIN_TOKEN; "" when unset */
    char judge_api_key[DUEL_CONFIG_SECRET_MAX]; /* DUEL_JUDGE_API_KEY; "" when unset */
} duel_config_secrets;

/* The embedded config/default.json as text (NUL-terminated) and its length. */
const char *duel_config_default_text(size_t *len);

/* A fresh copy of the embedded defaults (caller json_decrefs *out). */
int duel_config_defaults(json_t **out, duel_error *err);

/* Loads the configuration as described above. path NULL: defaults only. sets[0..n_sets): the
 * texts after --set ("section.key=value"). envp: a NULL-terminated "NAME=VALUE" list (pass
 * `environ` from main; NULL: no environment). secrets may be NULL (the variables are then still
 * checked). On success *out is the complete document (caller json_decrefs); on failure *out is
 * NULL and err names the source (file, variable or --set text) and the dotted path. */
int duel_config_load(const char *path, const char *const *sets, size_t n_sets,
                     const char *const *envp, json_t **out, duel_config_secrets *secrets,
                     duel_error *err);

/* Merges src into dst (an object from the defaults) with the rules above; source and prefix
 * ("trainer") name things in messages. Exposed for callers that hold JSON already. */
int duel_config_merge(json_t *dst, const json_t *src, const char *source, const char *prefix,
                      duel_error *err);

/* Applies one "dotted.path=value" override to root (see the --set rules above). */
int duel_config_apply_set(json_t *root, const char *assignment, duel_error *err);

/* Removes every "--set ASSIGNMENT" and "--set=ASSIGNMENT" from argv[0..*argc) in place (a
 * subcommand's options, as main hands them on; the command's own option parser never sees them) and appends the ASSIGNMENT pointers (into argv)
 * to sets[0..cap); *n_sets is their count. A trailing "--set" without a value, or more than cap
 * of them, is DUEL_EINVAL. */
int duel_config_take_sets(int *argc, char **argv, const char **sets, size_t cap, size_t *n_sets,
                          duel_error *err);

/* root.section (borrowed), or NULL when root has no such object. */
json_t *duel_config_section(const json_t *root, const char *section);

/* ---- live knobs --------------------------------------------------------------------------- */

typedef enum duel_knob_type {
    DUEL_KNOB_INT,    /* decimal integer, within [min, max] */
    DUEL_KNOB_NUMBER, /* finite number (strtod syntax), within [min, max] (min excluded when
                         min_exclusive) */
    DUEL_KNOB_BOOL,   /* true/false/1/0 */
    DUEL_KNOB_CHOICE, /* one of the space-separated words in choices */
} duel_knob_type;

typedef struct duel_knob_spec {
    const char *name;    /* the field of duel:knobs */
    duel_knob_type type;
    double min, max;     /* INT and NUMBER */
    bool min_exclusive;  /* NUMBER: min itself is refused (e.g. top_p > 0) */
    const char *choices; /* CHOICE: "ee_ts bai_ts ..." */
    const char *config_path; /* the config key whose value is the knob's default, or NULL */
} duel_knob_spec;

typedef struct duel_knob_value {
    const duel_knob_spec *spec;
    long long i;    /* INT */
    double number;  /* INT and NUMBER */
    bool b;         /* BOOL */
    char text[64];  /* CHOICE (and the raw text, cut to 63 bytes, for every type) */
} duel_knob_value;

/* The knobs of duel:knobs (DESIGN.md section 8). Serving: strategy, M, temperature, top_p,
 * top_k, max_new_tokens, arena_fraction. Trainer (same ranges as trainer/online_trainer.c):
 * loss, beta, gamma, lr_scale, clip_norm, publish_every_seconds, batch_size, publish_every,
 * checkpoint_every, burn_in. docs/CONFIG.md lists them with their ranges. */
extern const duel_knob_spec duel_knobs_default[];
extern const size_t duel_knobs_default_count;

/* Parses one knob: unknown name, wrong syntax or out of range is DUEL_EINVAL naming the knob,
 * the value and the rule ("knob M = 100: outside [2, 64]"). */
int duel_knob_parse(const duel_knob_spec *specs, size_t n_specs, const char *name,
                    const char *text, duel_knob_value *out, duel_error *err);

/* All-or-nothing check of a whole hash (fields[i] = values[i], i < count): out[i] filled; on the
 * first bad knob returns its error and out's contents are unspecified. */
int duel_knobs_parse(const duel_knob_spec *specs, size_t n_specs, const char *const *fields,
                     const char *const *values, size_t count, duel_knob_value *out,
                     duel_error *err);

#endif
