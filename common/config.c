/* config.c: the shared configuration (see config.h): the embedded defaults as schema, strict
 * merging of a file, DUEL_* environment variables and --set overrides. Invariant: every document this file returns has exactly the keys and types of the embedded
 * config/default.json. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

/* config_default_json.c, generated from config/default.json by config/embed_json.cmake. */
extern const char duel_config_default_json[];
extern const size_t duel_config_default_json_len;

#define CONFIG_PATH_MAX 256 /* bytes of a dotted key path in messages */

const char *const duel_config_sections[DUEL_CONFIG_SECTION_COUNT] = {
    "model", "engine", "duel", "erm", "trainer", "gateway", "redis", "rollout", "oracle", "sim"};

const char *duel_config_default_text(size_t *len) {
    if (len) *len = duel_config_default_json_len;
    return duel_config_default_json;
}

int duel_config_defaults(json_t **out, duel_error *err) {
    return duel_json_parse(duel_config_default_json, duel_config_default_json_len,
                           "config/default.json (embedded)", out, err);
}

json_t *duel_config_section(const json_t *root, const char *section) {
    json_t *s = json_object_get(root, section);
    return json_is_object(s) ? s : NULL;
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "true or false";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* prefix.key (or key alone) into out[0..cap), cut to fit. */
static void join_path(char *out, size_t cap, const char *prefix, const char *key) {
    size_t n = 0;
    for (const char *p = prefix && *prefix ? prefix : ""; *p && n + 1 < cap; p++) out[n++] = *p;
    if (prefix && *prefix && n + 1 < cap) out[n++] = '.';
    for (const char *p = key; *p && n + 1 < cap; p++) out[n++] = *p;
    out[n] = '\0';
}

/* True when v may replace the default def (scalar and array rules of config.h). */
static bool type_matches(const json_t *def, const json_t *v) {
    switch (json_typeof(def)) {
    case JSON_INTEGER: return json_is_integer(v);
    case JSON_REAL: return json_is_number(v);
    case JSON_TRUE:
    case JSON_FALSE: return json_is_boolean(v);
    case JSON_NULL: return true;
    default: return json_typeof(def) == json_typeof(v);
    }
}

static int type_error(const json_t *def, const json_t *v, const char *source, const char *path,
                      duel_error *err) {
    return duel_error_set(err, DUEL_EFORMAT, "%s: %s must be %s, not %s", source, path,
                          type_name(def), type_name(v));
}

/* A fresh value to store in place of def: a type-checked copy of v. */
static int coerce(const json_t *def, const json_t *v, const char *source, const char *path,
                  json_t **out, duel_error *err) {
    if (!type_matches(def, v)) return type_error(def, v, source, path, err);
    if (json_is_real(def)) {
        *out = json_real(json_number_value(v));
    } else if (json_is_array(def) && json_array_size(def) > 0) {
        const json_t *first = json_array_get(def, 0);
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e) {
            if (!type_matches(first, e) || json_is_object(e) != json_is_object(first)) {
                char p[CONFIG_PATH_MAX];
                snprintf(p, sizeof p, "%s[%zu]", path, i);
                return type_error(first, e, source, p, err);
            }
        }
        *out = json_deep_copy(v);
    } else {
        *out = json_deep_copy(v);
    }
    if (!*out) return duel_error_set(err, DUEL_ENOMEM, "%s: %s: out of memory", source, path);
    return DUEL_OK;
}

static int unknown_key(const char *source, const char *prefix, const char *path, duel_error *err) {
    if (prefix && *prefix)
        return duel_error_set(err, DUEL_EFORMAT, "%s: unknown key %s", source, path);
    char list[256] = "";
    for (int i = 0; i < DUEL_CONFIG_SECTION_COUNT; i++) {
        strcat(list, duel_config_sections[i]);
        if (i + 1 < DUEL_CONFIG_SECTION_COUNT) strcat(list, ", ");
    }
    return duel_error_set(err, DUEL_EFORMAT, "%s: unknown section \"%.64s\" (sections: %s)",
                          source, path, list);
}

int duel_config_merge(json_t *dst, const json_t *src, const char *source, const char *prefix,
                      duel_error *err) {
    if (!json_is_object(src)) {
        if (prefix && *prefix)
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s must be an object, not %s", source,
                                  prefix, type_name(src));
        return duel_error_set(err, DUEL_EFORMAT, "%s: the config must be a JSON object, not %s",
                              source, type_name(src));
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)src, key, v) {
        char path[CONFIG_PATH_MAX];
        join_path(path, sizeof path, prefix, key);
        json_t *d = json_object_get(dst, key);
        if (!d) return unknown_key(source, prefix, path, err);
        int rc;
        if (json_is_object(d)) {
            if ((rc = duel_config_merge(d, v, source, path, err))) return rc;
            continue;
        }
        json_t *nv = NULL;
        if ((rc = coerce(d, v, source, path, &nv, err))) return rc;
        if (json_object_set_new(dst, key, nv))
            return duel_error_set(err, DUEL_ENOMEM, "%s: %s: out of memory", source, path);
    }
    return DUEL_OK;
}

/* Finds the value at a dotted path: *parent is its object and *leaf its key inside path_buf
 * (which is modified). Unknown parts are errors naming the path up to them. */
static int find_path(json_t *root, char *path_buf, const char *source, json_t **parent,
                     const char **leaf, duel_error *err) {
    json_t *obj = root;
    char *seg = path_buf;
    for (;;) {
        char *dot = strchr(seg, '.');
        if (dot) *dot = '\0';
        if (!*seg) {
            if (dot) *dot = '.';
            return duel_error_set(err, DUEL_EINVAL, "%s: empty part in the key path \"%s\"",
                                  source, path_buf);
        }
        json_t *child = json_object_get(obj, seg);
        if (!child) {
            const char *prefix = seg == path_buf ? "" : path_buf;
            if (seg != path_buf) seg[-1] = '\0';
            char path[CONFIG_PATH_MAX];
            join_path(path, sizeof path, prefix, seg);
            return unknown_key(source, prefix, path, err);
        }
        if (!dot) {
            *parent = obj;
            *leaf = seg;
            return DUEL_OK;
        }
        if (!json_is_object(child)) {
            return duel_error_set(err, DUEL_EINVAL, "%s: %s is %s, it has no key \"%s\"", source,
                                  path_buf, type_name(child), dot + 1);
        }
        *dot = '.';
        obj = child;
        seg = dot + 1;
    }
}

int duel_config_apply_set(json_t *root, const char *assignment, duel_error *err) {
    char source[CONFIG_PATH_MAX + 16];
    snprintf(source, sizeof source, "--set %.*s", CONFIG_PATH_MAX, assignment);
    const char *eq = strchr(assignment, '=');
    size_t plen = eq ? (size_t)(eq - assignment) : 0;
    if (!eq || plen == 0)
        return duel_error_set(err, DUEL_EINVAL, "%s: expected section.key=value", source);
    if (plen >= CONFIG_PATH_MAX)
        return duel_error_set(err, DUEL_ELIMIT, "%s: key path longer than %d bytes", source,
                              CONFIG_PATH_MAX - 1);
    char path[CONFIG_PATH_MAX];
    memcpy(path, assignment, plen);
    path[plen] = '\0';
    json_t *parent = NULL;
    const char *leaf = NULL;
    int rc = find_path(root, path, source, &parent, &leaf, err);
    if (rc) return rc;
    /* find_path restored the dots: path is the whole dotted key again. */
    const char *text = eq + 1;
    json_t *def = json_object_get(parent, leaf);
    json_t *v = NULL;
    if (json_is_string(def) && text[0] != '"') {
        v = json_string(text);
        if (!v)
            return duel_error_set(err, DUEL_EINVAL, "%s: %s: the value is not valid UTF-8",
                                  source, path);
    } else {
        json_error_t jerr;
        v = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (!v)
            return duel_error_set(err, DUEL_EINVAL, "%s: %s must be %s; \"%.64s\" is not (%s)",
                                  source, path, type_name(def), text, jerr.text);
    }
    if (json_is_object(def)) {
        rc = duel_config_merge(def, v, source, path, err);
    } else {
        json_t *nv = NULL;
        rc = coerce(def, v, source, path, &nv, err);
        if (!rc && json_object_set_new(parent, leaf, nv))
            rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
    }
    json_decref(v);
    return rc;
}

int duel_config_take_sets(int *argc, char **argv, const char **sets, size_t cap, size_t *n_sets,
                          duel_error *err) {
    int out = 0;
    *n_sets = 0;
    for (int i = 0; i < *argc; i++) {
        const char *value = NULL;
        if (strcmp(argv[i], "--set") == 0) {
            if (i + 1 >= *argc)
                return duel_error_set(err, DUEL_EINVAL, "--set needs section.key=value");
            value = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0) {
            value = argv[i] + 6;
        } else if (strcmp(argv[i], "--") == 0) {
            while (i < *argc) argv[out++] = argv[i++]; /* operands after "--" are not options */
            break;
        } else {
            argv[out++] = argv[i];
            continue;
        }
        if (*n_sets >= cap)
            return duel_error_set(err, DUEL_EINVAL, "more than %zu --set options", cap);
        sets[(*n_sets)++] = value;
    }
    *argc = out;
    argv[out] = NULL;
    return DUEL_OK;
}

/* ---- environment ------------------------------------------------------------------------ */

int duel_config_parse_host_port(const char *name, const char *value, int min_port, char *host,
                                size_t cap, long *port, duel_error *err) {
    const char *colon = strrchr(value, ':');
    if (!colon || colon == value)
        return duel_error_set(err, DUEL_EINVAL, "%s: expected HOST:PORT, got \"%.64s\"", name,
                              value);
    const char *h = value;
    size_t hlen = (size_t)(colon - value);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= cap)
        return duel_error_set(err, DUEL_EINVAL, "%s: bad host in \"%.64s\"", name, value);
    for (size_t i = 0; i < hlen; i++)
        if (isspace((unsigned char)h[i]) || iscntrl((unsigned char)h[i]))
            return duel_error_set(err, DUEL_EINVAL, "%s: bad host in \"%.64s\"", name, value);
    char *end = NULL;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (!isdigit((unsigned char)colon[1]) || *end || errno || p < min_port || p > 65535)
        return duel_error_set(err, DUEL_EINVAL, "%s: port in \"%.64s\" must be %d..65535", name,
                              value, min_port);
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = p;
    return DUEL_OK;
}

static int set_string(json_t *root, const char *section, const char *sub, const char *key,
                      const char *value, duel_error *err) {
    json_t *obj = json_object_get(root, section);
    if (sub) obj = json_object_get(obj, sub);
    if (!json_is_object(obj) || json_object_set_new(obj, key, json_string(value)))
        return duel_error_set(err, DUEL_ENOMEM, "config: cannot set %s.%s", section, key);
    return DUEL_OK;
}

static int set_host_port(json_t *root, const char *name, const char *value, const char *section,
                         const char *host_key, const char *port_key, int min_port,
                         duel_error *err) {
    char host[256];
    long port = 0;
    int rc = duel_config_parse_host_port(name, value, min_port, host, sizeof host, &port, err);
    if (rc) return rc;
    if ((rc = set_string(root, section, NULL, host_key, host, err))) return rc;
    if (json_object_set_new(json_object_get(root, section), port_key, json_integer(port)))
        return duel_error_set(err, DUEL_ENOMEM, "config: cannot set %s.%s", section, port_key);
    return DUEL_OK;
}

static int copy_secret(const char *name, const char *value, char *out, size_t cap,
                       duel_error *err) {
    size_t n = strlen(value);
    if (n >= cap)
        return duel_error_set(err, DUEL_ELIMIT, "%s: longer than %zu bytes", name, cap - 1);
    for (size_t i = 0; i < n; i++)
        if (iscntrl((unsigned char)value[i]) || value[i] == ' ')
            return duel_error_set(err, DUEL_EINVAL,
                                  "%s: contains a space or control character at byte %zu", name, i);
    if (out) memcpy(out, value, n + 1);
    return DUEL_OK;
}

static int apply_env(json_t *root, const char *const *envp, duel_config_secrets *secrets,
                     duel_error *err) {
    for (size_t i = 0; envp && envp[i]; i++) {
        const char *e = envp[i];
        if (strncmp(e, "DUEL_", 5) != 0) continue;
        const char *eq = strchr(e, '=');
        if (!eq || !eq[1]) continue; /* empty counts as unset */
        size_t nlen = (size_t)(eq - e);
        const char *value = eq + 1;
        char name[64];
        if (nlen >= sizeof name) continue;
        memcpy(name, e, nlen);
        name[nlen] = '\0';
        int rc = 0;
        if (strcmp(name, "DUEL_REDIS") == 0) {
            rc = set_host_port(root, name, value, "redis", "host", "port", 1, err);
        } else if (strcmp(name, "DUEL_BIND") == 0) {
            rc = set_host_port(root, name, value, "gateway", "bind", "port", 0, err);
        } else if (strcmp(name, "DUEL_JUDGE_URL") == 0) {
            if (strncmp(value, "http://", 7) != 0 || strlen(value) >= 512)
                rc = duel_error_set(err, DUEL_EINVAL,
                                    "%s: expected an http:// URL of < 512 bytes, got \"%.64s\"",
                                    name, value);
            else
                rc = set_string(root, "oracle", "judge", "url", value, err);
        } else if (strcmp(name, "DUEL_TOKENS") == 0) {
            rc = copy_secret(name, value, secrets ? secrets->tokens : NULL, DUEL_CONFIG_TOKENS_MAX,
                             err);
        } else if (strcmp(name, "DUEL_JUDGE_API_KEY") == 0) {
            rc = copy_secret(name, value, secrets ? secrets->judge_api_key : NULL,
                             DUEL_CONFIG_SECRET_MAX, err);
        }
        if (rc) return rc;
    }
    return DUEL_OK;
}

int duel_config_load(const char *path, const char *const *sets, size_t n_sets,
                     const char *const *envp, json_t **out, duel_config_secrets *secrets,
                     duel_error *err) {
    *out = NULL;
    if (secrets) memset(secrets, 0, sizeof *secrets);
    json_t *root = NULL;
    int rc = duel_config_defaults(&root, err);
    if (rc) return rc;
    if (path) {
        json_t *file = NULL;
        rc = duel_json_load_file(path, DUEL_CONFIG_MAX_BYTES, &file, err);
        if (!rc) rc = duel_config_merge(root, file, path, "", err);
        json_decref(file);
    }
    if (!rc) rc = apply_env(root, envp, secrets, err);
    for (size_t i = 0; !rc && i < n_sets; i++) rc = duel_config_apply_set(root, sets[i], err);
    if (rc) {
        json_decref(root);
        if (secrets) memset(secrets, 0, sizeof *secrets);
        return rc;
    }
    *out = root;
    return DUEL_OK;
}
