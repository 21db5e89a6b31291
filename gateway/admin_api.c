/* admin_api.c: the admin API (DESIGN.md section 7, issue 19), JSON over HTTP, every request with
 * "Authorization: Bearer NAME:SECRET" (admin_auth.h):
 *   GET  /api/stats?window=900|3600|86400  the console's rendering of duel:stats (viewer)
 *   GET  /api/knobs                        the knob table, the values in effect, who you are
 *   POST /api/knobs {"changes": {NAME: "VALUE" | null, ...}}   admin only: all or nothing,
 *        audited under the token's name (console.c runs it; the reply waits for Redis)
 *   GET  /api/audit                        the newest audit entries
 *   GET  /api/rollout                      {"rollout": the spec in duel:rollout, or null}
 *   POST /api/rollout {"action": "set", "spec": {...}} | {"action": "weight", "arm": A,
 *        "weight": W} | {"action": "pause" | "resume" | "abort"} | {"action": "promote",
 *        "arm": A?}   admin only: checked as a whole, audited (gateway/rollout_store.h);
 *        answers {"rollout": the new spec, "audit": its entry}
 *   GET  /api/arena                        the arena leaderboard (common/arena_ratings.h)
 * Answers: 200; 400 with the refusal's message (a bad value names the knob and its allowed
 * values; nothing was changed); 401 without a valid token (WWW-Authenticate: Bearer); 403 for a
 * viewer's change; 404, 405, 413; 429 after too many failed attempts from the address; 503 when
 * the console has no Redis (nothing changed). Errors are {"error": message}; no answer ever
 * holds a secret, and a token is never read from the URL.
 *
 * Thread: the lws thread (the reply to a change comes back through server.c's inbox). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"
#include "timer.h"

#define API_MAX_BODY 16384 /* bytes of a POST body */

static int respond_json(struct lws *wsi, http_pss *pss, unsigned int status, json_t *o) {
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return -1;
    int rc = gateway_http_respond(wsi, pss, status, "application/json", text, strlen(text),
                                  status == 401 ? "www-authenticate:" : NULL,
                                  status == 401 ? "Bearer realm=\"duel\"" : NULL);
    free(text);
    return rc;
}

static int respond_error(struct lws *wsi, http_pss *pss, unsigned int status, const char *message) {
    return respond_json(wsi, pss, status, json_pack("{s:s}", "error", message));
}

static int respond_text(struct lws *wsi, http_pss *pss, char *text, size_t len) {
    if (!text) return respond_error(wsi, pss, 503, "no figures yet: the console has not read Redis");
    int rc = gateway_http_respond(wsi, pss, 200, "application/json", text, len, NULL, NULL);
    free(text);
    return rc;
}

/* The token's check: 0 and role/who set, or the refusal already answered (1) or failed (-1). */
static int authorize(gateway *gw, struct lws *wsi, http_pss *pss, admin_role need) {
    char header[512] = "", address[64] = "";
    if (lws_hdr_copy(wsi, header, sizeof header, WSI_TOKEN_HTTP_AUTHORIZATION) < 0) header[0] = '\0';
    lws_get_peer_simple(wsi, address, sizeof address);
    const char *who = NULL;
    admin_auth_result r = admin_auth_check(&gw->auth, header, address, duel_time_seconds(), &pss->role, &who);
    memset(header, 0, sizeof header);
    switch (r) {
    case ADMIN_AUTH_OK: break;
    case ADMIN_AUTH_MISSING:
        return respond_error(wsi, pss, 401, "sign in: send Authorization: Bearer NAME:SECRET") ? -1 : 1;
    case ADMIN_AUTH_REFUSED: return respond_error(wsi, pss, 401, "that token is not valid") ? -1 : 1;
    case ADMIN_AUTH_LIMITED:
        return respond_error(wsi, pss, 429, "too many failed attempts from this address; wait a minute")
                   ? -1
                   : 1;
    }
    snprintf(pss->who, sizeof pss->who, "%s", who);
    if (pss->role < need)
        return respond_error(wsi, pss, 403, "this token may read but not change knobs (role viewer)")
                   ? -1
                   : 1;
    return 0;
}

/* GET /api/knobs's document: the console's, plus who asked and the set this gateway serves. */
static json_t *knobs_document(gateway *gw, const http_pss *pss) {
    json_t *o = console_knobs_json(gw->console);
    if (!o) return NULL;
    json_t *effect = json_object();
    for (int k = 0; effect && k < DUEL_KNOB_COUNT; k++)
        if (duel_knobs[k].readers & DUEL_KNOB_SERVING)
            json_object_set_new(effect, duel_knobs[k].name, json_string(gw->knobs.v[k].text));
    json_object_set_new(o, "serving_here", effect ? effect : json_null());
    json_object_set_new(o, "you", json_pack("{s:s, s:s}", "name", pss->who, "role",
                                            pss->role == ADMIN_ROLE_ADMIN ? "admin" : "viewer"));
    return o;
}

/* A path without its query string equals name. */
static bool path_is(const char *path, const char *name) {
    size_t n = strlen(name);
    return strncmp(path, name, n) == 0 && (path[n] == '\0' || path[n] == '?');
}

/* Queues a rollout job on the console; the reply comes with its result (gateway_api_on_console).
 * 0, or the refusal answered (1) or failed (-1). */
static int wait_for_rollout(gateway *gw, struct lws *wsi, http_pss *pss, const rollout_change *change,
                            bool arena) {
    duel_error err = {0};
    uint64_t id = ++gw->next_api_id;
    char key_text[24];
    snprintf(key_text, sizeof key_text, "%016llx", (unsigned long long)id);
    if (str_map_put(&gw->api_waiting, key_text, wsi)) return -1;
    if (console_rollout(gw->console, id, pss->who, change, arena, &err)) {
        str_map_remove(&gw->api_waiting, key_text);
        return respond_error(wsi, pss, err.code == DUEL_ELIMIT ? 503 : 400, err.message) ? -1 : 1;
    }
    pss->api_id = id;
    pss->api_document = true;
    return 0;
}

int gateway_api_get(gateway *gw, struct lws *wsi, http_pss *pss, const char *path) {
    bool stats = path_is(path, "/api/stats"), knobs = path_is(path, "/api/knobs"),
         audit = path_is(path, "/api/audit"), rollout = path_is(path, "/api/rollout"),
         arena = path_is(path, "/api/arena");
    if (!stats && !knobs && !audit && !rollout && !arena)
        return respond_error(wsi, pss, 404, "no such API");
    int rc = authorize(gw, wsi, pss, ADMIN_ROLE_VIEWER);
    if (rc) return rc < 0 ? -1 : 0;
    if (rollout || arena) return wait_for_rollout(gw, wsi, pss, NULL, arena) < 0 ? -1 : 0;
    if (stats) {
        char arg[48];
        const char *window = lws_get_urlarg_by_name(wsi, "window=", arg, (int)sizeof arg);
        int w = window ? atoi(window) : 900;
        size_t len = 0;
        char *text = console_stats_text(gw->console, w, &len);
        if (!text && w != 900 && w != 3600 && w != 86400)
            return respond_error(wsi, pss, 400, "window must be 900, 3600 or 86400 (seconds)");
        return respond_text(wsi, pss, text, len);
    }
    if (audit) {
        size_t len = 0;
        char *text = console_audit_text(gw->console, &len);
        return respond_text(wsi, pss, text, len);
    }
    json_t *o = knobs_document(gw, pss);
    return o ? respond_json(wsi, pss, 200, o) : -1;
}

int gateway_api_post_start(gateway *gw, struct lws *wsi, http_pss *pss, const char *path) {
    pss->post_rollout = path_is(path, "/api/rollout");
    if (!path_is(path, "/api/knobs") && !pss->post_rollout)
        return respond_error(wsi, pss, 405, "only /api/knobs and /api/rollout take a POST");
    int rc = authorize(gw, wsi, pss, ADMIN_ROLE_ADMIN);
    if (rc) return rc < 0 ? -1 : 0;
    pss->is_api_post = true; /* the body follows (LWS_CALLBACK_HTTP_BODY) */
    return 0;
}

int gateway_api_post_body(gateway *gw, http_pss *pss, const void *in, size_t len) {
    (void)gw;
    if (pss->request_too_large || pss->request_len + len > API_MAX_BODY) {
        pss->request_too_large = true;
        return 0;
    }
    char *grown = realloc(pss->request, pss->request_len + len + 1);
    if (!grown) return -1;
    memcpy(grown + pss->request_len, in, len);
    pss->request = grown;
    pss->request_len += len;
    pss->request[pss->request_len] = '\0';
    return 0;
}

/* POST /api/rollout's body (doc) into a rollout change, queued; the reply waits for it. */
static int post_rollout(gateway *gw, struct lws *wsi, http_pss *pss, json_t *doc) {
    static const char *const fields[] = {"action", "spec", "arm", "weight", NULL};
    const char *action = json_string_value(json_object_get(doc, "action"));
    rollout_change change = {0};
    if (!json_is_object(doc) || !action || rollout_action_parse(action, &change.action))
        return respond_error(wsi, pss, 400,
                             "expected {\"action\": \"set\" | \"weight\" | \"pause\" | "
                             "\"resume\" | \"promote\" | \"abort\", ...}") ? -1 : 0;
    const char *key;
    json_t *value;
    json_object_foreach(doc, key, value) {
        bool known = false;
        for (const char *const *f = fields; *f && !known; f++) known = strcmp(*f, key) == 0;
        if (!known) {
            char message[160];
            snprintf(message, sizeof message, "%.60s: unknown field", key);
            return respond_error(wsi, pss, 400, message) ? -1 : 0;
        }
    }
    json_t *spec = json_object_get(doc, "spec"), *arm = json_object_get(doc, "arm"),
           *weight = json_object_get(doc, "weight");
    const char *problem = NULL;
    if (change.action == ROLLOUT_ACTION_SET && !json_is_object(spec))
        problem = "set takes \"spec\": the rollout spec as a JSON object";
    else if (change.action == ROLLOUT_ACTION_WEIGHT && (!json_is_string(arm) || !json_is_integer(weight)))
        problem = "weight takes \"arm\": NAME and \"weight\": an integer percentage";
    else if (arm && !json_is_string(arm))
        problem = "\"arm\" is an arm's name";
    if (problem) return respond_error(wsi, pss, 400, problem) ? -1 : 0;
    char *spec_text = spec ? json_dumps(spec, JSON_COMPACT) : NULL;
    if (spec && !spec_text) return -1;
    change.spec_text = spec_text;
    change.arm = json_string_value(arm);
    long long w = json_integer_value(weight);
    change.weight = w < -1 ? -1 : w > 1000 ? 1000 : (int)w; /* the spec checks the range */
    int rc = wait_for_rollout(gw, wsi, pss, &change, false);
    free(spec_text);
    return rc < 0 ? -1 : 0;
}

int gateway_api_post_done(gateway *gw, struct lws *wsi, http_pss *pss) {
    pss->is_api_post = false;
    if (pss->request_too_large) return respond_error(wsi, pss, 413, "the body is over 16 KiB") ? -1 : 0;
    json_error_t jerr;
    json_t *doc = pss->request ? json_loadb(pss->request, pss->request_len, JSON_REJECT_DUPLICATES, &jerr)
                               : NULL;
    if (pss->post_rollout) {
        int rc = post_rollout(gw, wsi, pss, doc);
        json_decref(doc);
        free(pss->request);
        pss->request = NULL;
        pss->request_len = 0;
        return rc;
    }
    json_t *changes = json_object_get(doc, "changes");
    const char *names[DUEL_KNOB_COUNT * 2], *texts[DUEL_KNOB_COUNT * 2];
    size_t n = 0;
    const char *problem = NULL;
    if (!json_is_object(doc) || json_object_size(doc) != 1 || !json_is_object(changes))
        problem = "expected {\"changes\": {\"NAME\": \"VALUE\" or null, ...}}";
    else if (json_object_size(changes) == 0 || json_object_size(changes) > DUEL_KNOB_COUNT * 2)
        problem = "name between one knob and all of them";
    const char *key;
    json_t *value;
    if (!problem) {
        json_object_foreach(changes, key, value) {
            if (!json_is_string(value) && !json_is_null(value) && !json_is_number(value)) {
                problem = "each value is a string (or null: back to the default)";
                break;
            }
            names[n] = key;
            texts[n++] = json_is_null(value) ? NULL : json_string_value(value);
        }
    }
    /* numbers sent as JSON numbers: their text as the knob table reads it */
    char numbers[DUEL_KNOB_COUNT * 2][40];
    for (size_t i = 0; !problem && i < n; i++) {
        value = json_object_get(changes, names[i]);
        if (!json_is_number(value)) continue;
        if (json_is_integer(value)) snprintf(numbers[i], sizeof numbers[i], "%lld", (long long)json_integer_value(value));
        else snprintf(numbers[i], sizeof numbers[i], "%.17g", json_real_value(value));
        texts[i] = numbers[i];
    }
    int rc = 0;
    if (problem) {
        rc = respond_error(wsi, pss, 400, problem);
    } else {
        duel_error err = {0};
        uint64_t id = ++gw->next_api_id;
        char key_text[24];
        snprintf(key_text, sizeof key_text, "%016llx", (unsigned long long)id);
        if (str_map_put(&gw->api_waiting, key_text, wsi)) {
            rc = -1;
        } else if (console_change_knobs(gw->console, id, pss->who, names, texts, n, &err)) {
            str_map_remove(&gw->api_waiting, key_text);
            rc = respond_error(wsi, pss, err.code == DUEL_ELIMIT ? 503 : 400, err.message);
        } else {
            pss->api_id = id; /* the reply comes with the console's result */
        }
    }
    json_decref(doc);
    free(pss->request);
    pss->request = NULL;
    pss->request_len = 0;
    return rc < 0 ? -1 : 0;
}

void gateway_api_on_console(gateway *gw, console_result *r) {
    char key_text[24];
    snprintf(key_text, sizeof key_text, "%016llx", (unsigned long long)r->request_id);
    struct lws *wsi = str_map_remove(&gw->api_waiting, key_text);
    if (!wsi) return; /* the client went away; the change is made (or refused) all the same */
    http_pss *pss = lws_wsi_user(wsi);
    pss->api_id = 0;
    if (pss->api_document) { /* /api/rollout, /api/arena: the console's document is the reply */
        pss->api_document = false;
        int rc = r->status == DUEL_OK && r->audit
                     ? gateway_http_respond(wsi, pss, 200, "application/json", r->audit,
                                            strlen(r->audit), NULL, NULL)
                     : respond_error(wsi, pss,
                                     r->status == DUEL_EINVAL || r->status == DUEL_EFORMAT ? 400 : 503,
                                     r->status == DUEL_OK ? "out of memory" : r->message);
        if (rc) lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, LWS_TO_KILL_ASYNC);
        return;
    }
    if (r->status == DUEL_OK) {
        /* the set this gateway serves from its next duel */
        console_knobs_changed(gw->console, &gw->knobs_seen, &gw->knobs);
        console_serving_params(&gw->knobs, &gw->params);
    }
    int rc;
    if (r->status == DUEL_OK) {
        json_t *o = knobs_document(gw, pss);
        json_t *audit = r->audit ? json_loads(r->audit, 0, NULL) : NULL;
        if (o) json_object_set_new(o, "audit", audit ? audit : json_null());
        rc = o ? respond_json(wsi, pss, 200, o) : -1;
    } else {
        rc = respond_error(wsi, pss, r->status == DUEL_EINVAL ? 400 : 503, r->message);
    }
    if (rc) lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, LWS_TO_KILL_ASYNC);
}

void gateway_api_closed(gateway *gw, http_pss *pss) {
    if (!pss->api_id) return;
    char key_text[24];
    snprintf(key_text, sizeof key_text, "%016llx", (unsigned long long)pss->api_id);
    str_map_remove(&gw->api_waiting, key_text);
    pss->api_id = 0;
}
