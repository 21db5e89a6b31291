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
 *        DUEL_TOKENS=ROLE:NAME:SECRET,...  -> secrets->tokens (the admin API's bearer tokens;
 *                                 gateway/admin_auth.h parses them)
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
 * trainer.lr=3e-6, gateway.allowed_origins=["http://a"], oracle.preference={"stochastic":true}).
 *
 * Live knobs (the Redis hash duel:knobs) and the config keys behind them are validated by the
 * knob table (knobs.h). */
#ifndef DUEL_CONFIG_H
#define DUEL_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#define DUEL_CONFIG_MAX_BYTES (1u << 20) /* a config file larger than this is refused */
#define DUEL_CONFIG_SECRET_MAX 256       /* bytes of a secret, NUL included */
#define DUEL_CONFIG_TOKENS_MAX 4096      /* bytes of DUEL_TOKENS, NUL included */
#define DUEL_CONFIG_SECTION_COUNT 10

/* The ten section names, in the order of DESIGN.md section 11. */
extern const char *const duel_config_sections[DUEL_CONFIG_SECTION_COUNT];

typedef struct duel_config_secrets {
    char tokens[DUEL_CONFIG_TOKENS_MAX];        /* DUEL_TOKENS; "" when unset */
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

/* "HOST:PORT" (HOST may be "[v6addr]") into host[0..cap) and *port in [min_port, 65535]; name
 * (an option or variable) starts the message. The parser behind DUEL_REDIS and DUEL_BIND. */
int duel_config_parse_host_port(const char *name, const char *value, int min_port, char *host,
                                size_t cap, long *port, duel_error *err);

/* root.section (borrowed), or NULL when root has no such object. */
json_t *duel_config_section(const json_t *root, const char *section);

#endif
