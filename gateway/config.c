/* config.c: the gateway's configuration: defaults, the "gateway" and "redis" sections of a JSON
 * config (a parsed document, gateway_config_from_json, e.g. the one duel_config_load assembles;
 * or a file, gateway_config_load; strict: unknown keys, wrong types and values out of range are
 * errors naming the key, gateway.port style) and --redis HOST:PORT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "gateway.h"
#include "http_route.h"
#include "json_util.h"
#include "rollout_spec.h"

#define CONFIG_MAX_BYTES (1u << 20)

void gateway_config_defaults(gateway_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    json_t *root = NULL;
    duel_error err = {0};
    /* The embedded config/default.json cannot fail to parse (test_config checks it is what the
     * parsers accept); should it, the fields stay zero and gateway_create refuses them. */
    if (duel_config_defaults(&root, &err) == 0) {
        gateway_config_from_json(cfg, root, "config/default.json (embedded)", &err);
        duel_knobs_defaults(root, NULL, &cfg->knobs, &err);
    }
    json_decref(root);
}

typedef struct int_key {
    const char *name;
    long long lo, hi;
    size_t offset;
    int width; /* sizeof the field: int, size_t or long long */
} int_key;

#define INT_KEY(field, lo, hi) {#field, lo, hi, offsetof(gateway_config, field), sizeof(((gateway_config *)0)->field)}

static const int_key INT_KEYS[] = {
    INT_KEY(port, 0, 65535),
    INT_KEY(redis_timeout_ms, 1, 60000),
    INT_KEY(max_frame_bytes, 256, 1 << 20),
    INT_KEY(max_ask_bytes, 1, 1 << 20),
    INT_KEY(asks_per_minute_connection, 1, 1000000),
    INT_KEY(asks_per_minute_address, 1, 1000000),
    INT_KEY(asks_pending_per_address, 1, 1000000),
    INT_KEY(connections_per_address, 1, 1000000),
    INT_KEY(max_connections, 1, 1000000),
    INT_KEY(max_turns, 1, 100000),
    INT_KEY(max_context_tokens, 1, 1LL << 40),
    INT_KEY(conversation_ttl_s, 1, 1LL << 40),
    INT_KEY(duel_retention_s, 1, 1 << 30),
    INT_KEY(max_duels, 1, 100000000),
    INT_KEY(max_duel_bytes, 1 << 20, 1LL << 40),
    INT_KEY(stream_interval_ms, 0, 10000),
    INT_KEY(stream_chunk_bytes, 1, 4096),
    INT_KEY(abuse_limit, 1, 1000000),
    INT_KEY(partial_message_timeout_s, 1, 3600),
    INT_KEY(hello_timeout_s, 1, 3600),
    INT_KEY(idle_timeout_s, 1, 86400),
    INT_KEY(max_header_bytes, 1024, 32000),
    INT_KEY(shutdown_grace_ms, 0, 600000),
    INT_KEY(snapshot_poll_ms, 100, 600000),
    INT_KEY(stats_interval_ms, 0, 3600000),
    INT_KEY(knobs_poll_ms, 100, 600000),
};

static void store_int(gateway_config *cfg, const int_key *k, long long v) {
    char *p = (char *)cfg + k->offset;
    if (k->width == sizeof(int)) *(int *)p = (int)v;
    else if (k->width == sizeof(long long)) *(long long *)p = v;
}

/* Messages name the dotted path: "SOURCE: gateway.port = 70000 is outside [0, 65535]". */
static int get_string(const json_t *v, const char *source, const char *key, char *out,
                      size_t cap, duel_error *err) {
    if (!json_is_string(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: gateway.%s must be a string", source, key);
    if (json_string_length(v) >= cap)
        return duel_error_set(err, DUEL_ELIMIT, "%s: gateway.%s is longer than %zu bytes", source,
                              key, cap - 1);
    snprintf(out, cap, "%s", json_string_value(v));
    return DUEL_OK;
}

/* An array of at most max strings, each shorter than width, into out[max][width] (*n of them);
 * cidr: each must be an address or a CIDR range (http_cidr_parse). */
static int get_string_list(const json_t *v, const char *source, const char *key, char *out,
                           size_t width, int max, bool cidr, int *n, duel_error *err) {
    if (!json_is_array(v) || json_array_size(v) > (size_t)max)
        return duel_error_set(err, DUEL_EFORMAT, "%s: gateway.%s must be an array of at most %d "
                              "strings", source, key, max);
    size_t i;
    json_t *o;
    *n = 0;
    json_array_foreach(v, i, o) {
        http_cidr c;
        if (!json_is_string(o) || json_string_length(o) >= width)
            return duel_error_set(err, DUEL_EFORMAT, "%s: gateway.%s[%zu] must be a string "
                                  "(< %zu bytes)", source, key, i, width);
        if (cidr && !http_cidr_parse(json_string_value(o), &c))
            return duel_error_set(err, DUEL_EFORMAT, "%s: gateway.%s[%zu] must be an address or "
                                  "a CIDR range (\"10.0.0.0/8\", \"::1\")", source, key, i);
        snprintf(out + (size_t)(*n)++ * width, width, "%s", json_string_value(o));
    }
    return DUEL_OK;
}

static int load_gateway_section(gateway_config *cfg, json_t *sec, const char *source,
                                duel_error *err) {
    if (!json_is_object(sec))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"gateway\" must be an object", source);
    const char *key;
    json_t *value;
    json_object_foreach(sec, key, value) {
        bool known = false;
        for (size_t i = 0; i < sizeof INT_KEYS / sizeof INT_KEYS[0]; i++) {
            const int_key *k = &INT_KEYS[i];
            if (strcmp(key, k->name) != 0) continue;
            known = true;
            if (!json_is_integer(value))
                return duel_error_set(err, DUEL_EFORMAT, "%s: gateway.%s must be an integer",
                                      source, key);
            long long v = json_integer_value(value);
            if (v < k->lo || v > k->hi)
                return duel_error_set(err, DUEL_EFORMAT,
                                      "%s: gateway.%s = %lld is outside [%lld, %lld]", source, key,
                                      v, k->lo, k->hi);
            if (k->width == sizeof(size_t) && strstr(key, "bytes"))
                *(size_t *)((char *)cfg + k->offset) = (size_t)v;
            else
                store_int(cfg, k, v);
        }
        if (known) continue;
        int rc = 0;
        if (strcmp(key, "bind") == 0)
            rc = get_string(value, source, key, cfg->bind, sizeof cfg->bind, err);
        else if (strcmp(key, "web_root") == 0)
            rc = get_string(value, source, key, cfg->web_root, sizeof cfg->web_root, err);
        else if (strcmp(key, "spill_path") == 0)
            rc = get_string(value, source, key, cfg->spill_path, sizeof cfg->spill_path, err);
        else if (strcmp(key, "tokens_file") == 0)
            rc = get_string(value, source, key, cfg->tokens_file, sizeof cfg->tokens_file, err);
        else if (strcmp(key, "uplot_dir") == 0)
            rc = get_string(value, source, key, cfg->uplot_dir, sizeof cfg->uplot_dir, err);
        else if (strcmp(key, "tls_cert") == 0)
            rc = get_string(value, source, key, cfg->tls_cert, sizeof cfg->tls_cert, err);
        else if (strcmp(key, "tls_key") == 0)
            rc = get_string(value, source, key, cfg->tls_key, sizeof cfg->tls_key, err);
        else if (strcmp(key, "trusted_proxies") == 0)
            rc = get_string_list(value, source, key, cfg->trusted_proxies[0],
                                 sizeof cfg->trusted_proxies[0], GATEWAY_MAX_TRUSTED_PROXIES,
                                 true, &cfg->n_trusted_proxies, err);
        else if (strcmp(key, "allowed_origins") == 0)
            rc = get_string_list(value, source, key, cfg->origins[0], sizeof cfg->origins[0],
                                 GATEWAY_MAX_ORIGINS, false, &cfg->n_origins, err);
        else
            return duel_error_set(err, DUEL_EFORMAT, "%s: unknown key gateway.%s", source, key);
        if (rc) return rc;
    }
    if (!cfg->tls_cert[0] != !cfg->tls_key[0])
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: gateway.tls_cert and gateway.tls_key go together (both or neither)",
                              source);
    return DUEL_OK;
}

int gateway_config_from_json(gateway_config *cfg, const json_t *root, const char *source,
                             duel_error *err) {
    if (!json_is_object(root))
        return duel_error_set(err, DUEL_EFORMAT, "%s: the config must be a JSON object", source);
    int rc = DUEL_OK;
    json_t *sec = json_object_get(root, "gateway");
    if (sec) rc = load_gateway_section(cfg, sec, source, err);
    json_t *redis = json_object_get(root, "redis");
    if (!rc && redis) {
        /* Keys of "redis" the gateway does not read belong to other parts; an absent one leaves
         * cfg as it was. */
        char src[1200];
        snprintf(src, sizeof src, "%s: redis", source);
        long long port = cfg->redis_port;
        if (!json_is_object(redis))
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: \"redis\" must be an object", source);
        if (!rc)
            rc = duel_json_get_string(redis, "host", cfg->redis_host, sizeof cfg->redis_host, src,
                                      err);
        if (!rc) rc = duel_json_get_int(redis, "port", 1, 65535, &port, src, err);
        if (!rc) cfg->redis_port = (int)port;
        if (!rc) rc = redis_link_config_read(&cfg->redis_link, redis, source, err);
        if (!rc && json_object_get(redis, "stats_max_entries"))
            rc = duel_json_get_int(redis, "stats_max_entries", 100, 100000000,
                                   &cfg->stats_max_entries, src, err);
    }
    json_t *rollout = json_object_get(root, "rollout");
    char rsrc[1200];
    snprintf(rsrc, sizeof rsrc, "%s: rollout", source);
    if (!rc && json_is_object(rollout) && json_object_get(rollout, "max_arms")) {
        /* the admin API's rollout changes are checked against it (rollout_store.h) */
        long long max_arms = cfg->rollout_max_arms;
        rc = duel_json_get_int(rollout, "max_arms", 1, ROLLOUT_MAX_ARMS, &max_arms, rsrc, err);
        if (!rc) cfg->rollout_max_arms = (int)max_arms;
    }
    if (!rc && json_is_object(rollout) && json_object_get(rollout, "controller_tick_ms")) {
        long long tick = cfg->rollout_controller_tick_ms;
        rc = duel_json_get_int(rollout, "controller_tick_ms", 0, 600000, &tick, rsrc, err);
        if (!rc) cfg->rollout_controller_tick_ms = (int)tick;
    }
    return rc;
}

int gateway_config_load(gateway_config *cfg, const char *path, duel_error *err) {
    json_t *root = NULL;
    int rc = duel_json_load_file(path, CONFIG_MAX_BYTES, &root, err);
    if (rc) return rc;
    rc = gateway_config_from_json(cfg, root, path, err);
    json_decref(root);
    return rc;
}

int gateway_config_set_redis(gateway_config *cfg, const char *host_port, duel_error *err) {
    const char *colon = strrchr(host_port, ':');
    if (!colon || colon == host_port || (size_t)(colon - host_port) >= sizeof cfg->redis_host)
        return duel_error_set(err, DUEL_EINVAL, "--redis: expected HOST:PORT, got \"%s\"",
                              host_port);
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (!*(colon + 1) || *end || port < 1 || port > 65535)
        return duel_error_set(err, DUEL_EINVAL, "--redis: bad port in \"%s\"", host_port);
    snprintf(cfg->redis_host, sizeof cfg->redis_host, "%.*s", (int)(colon - host_port), host_port);
    cfg->redis_port = (int)port;
    return DUEL_OK;
}
