/* protocol.c: strict parsing of duel.v1 client frames and encoding of server frames (see
 * protocol.h). Invariant: a message that leaves protocol_parse with PROTOCOL_OK has exactly the
 * fields its type allows, ids are well-formed and ask text is valid, non-empty UTF-8 under the
 * limit; nothing past this file re-checks the wire format. */
#include "protocol.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "utf8.h"

static const char *const ERROR_NAMES[PROTOCOL_E_COUNT] = {
    [PROTOCOL_OK] = "ok",
    [PROTOCOL_E_TOO_LARGE] = "too_large",
    [PROTOCOL_E_BINARY] = "binary_frame",
    [PROTOCOL_E_BAD_UTF8] = "bad_utf8",
    [PROTOCOL_E_BAD_JSON] = "bad_json",
    [PROTOCOL_E_DUPLICATE_KEY] = "duplicate_key",
    [PROTOCOL_E_NOT_OBJECT] = "not_object",
    [PROTOCOL_E_MISSING_TYPE] = "missing_type",
    [PROTOCOL_E_UNKNOWN_TYPE] = "unknown_type",
    [PROTOCOL_E_UNKNOWN_FIELD] = "unknown_field",
    [PROTOCOL_E_MISSING_FIELD] = "missing_field",
    [PROTOCOL_E_WRONG_TYPE] = "wrong_type",
    [PROTOCOL_E_BAD_VALUE] = "bad_value",
    [PROTOCOL_E_EMPTY_TEXT] = "empty_text",
    [PROTOCOL_E_TEXT_TOO_LONG] = "text_too_long",
    [PROTOCOL_E_HELLO_REQUIRED] = "hello_required",
    [PROTOCOL_E_DUPLICATE_HELLO] = "duplicate_hello",
    [PROTOCOL_E_BUSY] = "busy",
    [PROTOCOL_E_RATE_LIMITED] = "rate_limited",
    [PROTOCOL_E_ADDRESS_RATE_LIMITED] = "address_rate_limited",
    [PROTOCOL_E_TOO_MANY_PENDING] = "too_many_pending",
    [PROTOCOL_E_TOO_MANY_CONNECTIONS] = "too_many_connections",
    [PROTOCOL_E_TURN_LIMIT] = "turn_limit",
    [PROTOCOL_E_CONVERSATION_TOO_LONG] = "conversation_too_long",
    [PROTOCOL_E_UNKNOWN_DUEL] = "unknown_duel",
    [PROTOCOL_E_NOT_YOUR_DUEL] = "not_your_duel",
    [PROTOCOL_E_ALREADY_VOTED] = "already_voted",
    [PROTOCOL_E_DUEL_NOT_FINISHED] = "duel_not_finished",
    [PROTOCOL_E_NOTHING_TO_CANCEL] = "nothing_to_cancel",
    [PROTOCOL_E_ENGINE] = "engine_error",
    [PROTOCOL_E_SHUTTING_DOWN] = "shutting_down",
    [PROTOCOL_E_VOTE_FAILED] = "vote_failed",
    [PROTOCOL_E_INTERNAL] = "internal",
};

const char *protocol_error_name(protocol_error_code code) {
    if ((int)code < 0 || code >= PROTOCOL_E_COUNT) return "internal";
    return ERROR_NAMES[code];
}

bool protocol_id_valid(const char *s, size_t len) {
    if (len != PROTOCOL_ID_LEN) return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

void protocol_msg_clear(protocol_msg *msg) {
    free(msg->text);
    memset(msg, 0, sizeof *msg);
}

static protocol_error_code fail(protocol_error_code code, char *detail, size_t cap,
                                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static protocol_error_code fail(protocol_error_code code, char *detail, size_t cap,
                                const char *fmt, ...) {
    if (detail && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, cap, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* The fields each type allows besides "type"; required ones first (n_required of them). */
typedef struct type_spec {
    const char *name;
    protocol_msg_type type;
    const char *fields[2];
    int n_fields;
    int n_required;
} type_spec;

static const type_spec TYPES[] = {
    {"hello", PROTOCOL_MSG_HELLO, {"conversation", "client"}, 2, 0},
    {"ask", PROTOCOL_MSG_ASK, {"text"}, 1, 1},
    {"vote", PROTOCOL_MSG_VOTE, {"duel", "choice"}, 2, 2},
    {"cancel", PROTOCOL_MSG_CANCEL, {NULL}, 0, 0},
};

static bool only_whitespace(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) return false;
    return true;
}

static protocol_error_code parse_object(json_t *root, const protocol_limits *limits,
                                        protocol_msg *out, char *detail, size_t cap) {
    if (!json_is_object(root))
        return fail(PROTOCOL_E_NOT_OBJECT, detail, cap, "a message must be a JSON object");
    json_t *type = json_object_get(root, "type");
    if (!type) return fail(PROTOCOL_E_MISSING_TYPE, detail, cap, "\"type\" is missing");
    if (!json_is_string(type))
        return fail(PROTOCOL_E_WRONG_TYPE, detail, cap, "\"type\" must be a string");
    const type_spec *spec = NULL;
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (strcmp(json_string_value(type), TYPES[i].name) == 0 &&
            json_string_length(type) == strlen(TYPES[i].name))
            spec = &TYPES[i];
    if (!spec)
        return fail(PROTOCOL_E_UNKNOWN_TYPE, detail, cap,
                    "\"type\" must be hello, ask, vote or cancel");
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "type") == 0) continue;
        bool allowed = false;
        for (int f = 0; f < spec->n_fields; f++)
            if (strcmp(key, spec->fields[f]) == 0) allowed = true;
        if (!allowed) {
            /* Keys are UTF-8 checked already; cut long ones so the detail stays short. */
            return fail(PROTOCOL_E_UNKNOWN_FIELD, detail, cap, "%s does not take a field \"%.40s\"",
                        spec->name, key);
        }
    }
    for (int f = 0; f < spec->n_required; f++)
        if (!json_object_get(root, spec->fields[f]))
            return fail(PROTOCOL_E_MISSING_FIELD, detail, cap, "%s needs \"%s\"", spec->name,
                        spec->fields[f]);
    out->type = spec->type;
    switch (spec->type) {
    case PROTOCOL_MSG_HELLO: {
        json_t *conv = json_object_get(root, "conversation");
        if (conv && !json_is_null(conv)) {
            if (!json_is_string(conv))
                return fail(PROTOCOL_E_WRONG_TYPE, detail, cap,
                            "\"conversation\" must be a string or null");
            if (!protocol_id_valid(json_string_value(conv), json_string_length(conv)))
                return fail(PROTOCOL_E_BAD_VALUE, detail, cap,
                            "\"conversation\" must be %d lowercase hex characters",
                            PROTOCOL_ID_LEN);
            memcpy(out->conversation, json_string_value(conv), PROTOCOL_ID_LEN + 1);
            out->has_conversation = true;
        }
        json_t *client = json_object_get(root, "client");
        if (client && !json_is_null(client)) {
            if (!json_is_string(client))
                return fail(PROTOCOL_E_WRONG_TYPE, detail, cap, "\"client\" must be a string or null");
            if (!protocol_id_valid(json_string_value(client), json_string_length(client)))
                return fail(PROTOCOL_E_BAD_VALUE, detail, cap,
                            "\"client\" must be %d lowercase hex characters", PROTOCOL_ID_LEN);
            memcpy(out->client, json_string_value(client), PROTOCOL_ID_LEN + 1);
            out->has_client = true;
        }
        break;
    }
    case PROTOCOL_MSG_ASK: {
        json_t *text = json_object_get(root, "text");
        if (!json_is_string(text))
            return fail(PROTOCOL_E_WRONG_TYPE, detail, cap, "\"text\" must be a string");
        size_t n = json_string_length(text);
        if (n > limits->max_ask_bytes)
            return fail(PROTOCOL_E_TEXT_TOO_LONG, detail, cap,
                        "\"text\" is %zu bytes; the limit is %zu", n, limits->max_ask_bytes);
        if (only_whitespace(json_string_value(text), n))
            return fail(PROTOCOL_E_EMPTY_TEXT, detail, cap, "\"text\" is empty");
        out->text = malloc(n + 1);
        if (!out->text) return fail(PROTOCOL_E_INTERNAL, detail, cap, "out of memory");
        memcpy(out->text, json_string_value(text), n + 1);
        out->text_len = n;
        break;
    }
    case PROTOCOL_MSG_VOTE: {
        json_t *duel = json_object_get(root, "duel");
        json_t *choice = json_object_get(root, "choice");
        if (!json_is_string(duel))
            return fail(PROTOCOL_E_WRONG_TYPE, detail, cap, "\"duel\" must be a string");
        if (!json_is_string(choice))
            return fail(PROTOCOL_E_WRONG_TYPE, detail, cap, "\"choice\" must be a string");
        if (!protocol_id_valid(json_string_value(duel), json_string_length(duel)))
            return fail(PROTOCOL_E_BAD_VALUE, detail, cap,
                        "\"duel\" must be %d lowercase hex characters", PROTOCOL_ID_LEN);
        memcpy(out->duel, json_string_value(duel), PROTOCOL_ID_LEN + 1);
        if (vote_choice_parse(json_string_value(choice), json_string_length(choice), &out->choice))
            return fail(PROTOCOL_E_BAD_VALUE, detail, cap,
                        "\"choice\" must be \"a\", \"b\", \"tie\" or \"both_bad\"");
        break;
    }
    case PROTOCOL_MSG_CANCEL: break;
    }
    return PROTOCOL_OK;
}

protocol_error_code protocol_parse(const char *data, size_t len, const protocol_limits *limits,
                                   protocol_msg *out, char *detail, size_t detail_cap) {
    memset(out, 0, sizeof *out);
    if (detail && detail_cap) detail[0] = '\0';
    if (len > limits->max_frame_bytes)
        return fail(PROTOCOL_E_TOO_LARGE, detail, detail_cap,
                    "message is %zu bytes; the limit is %zu", len, limits->max_frame_bytes);
    size_t bad = 0;
    if (!duel_utf8_valid(data, len, &bad))
        return fail(PROTOCOL_E_BAD_UTF8, detail, detail_cap, "invalid UTF-8 at byte %zu", bad);
    json_error_t jerr;
    /* No JSON_ALLOW_NUL: "\u0000" inside strings is rejected, so C strings are whole. */
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return fail(PROTOCOL_E_DUPLICATE_KEY, detail, detail_cap, "%s", jerr.text);
        if (json_error_code(&jerr) == json_error_wrong_type)
            return fail(PROTOCOL_E_NOT_OBJECT, detail, detail_cap,
                        "a message must be a JSON object");
        return fail(PROTOCOL_E_BAD_JSON, detail, detail_cap, "invalid JSON at column %d: %s",
                    jerr.column, jerr.text);
    }
    protocol_error_code rc = parse_object(root, limits, out, detail, detail_cap);
    json_decref(root);
    if (rc != PROTOCOL_OK) protocol_msg_clear(out);
    return rc;
}

/* ---- server frames ---------------------------------------------------------------------- */

static char *dump(json_t *obj, size_t *len) {
    if (!obj) return NULL;
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (s && len) *len = strlen(s);
    return s;
}

char *protocol_encode_welcome(const char *conversation, const protocol_welcome_limits *limits,
                              bool resumed, const char *const *user_texts,
                              const char *const *assistant_texts, size_t n_turns,
                              bool test_backend, size_t *len) {
    json_t *history = json_array();
    if (!history) return NULL;
    for (size_t i = 0; i < n_turns; i++) {
        json_t *turn = json_pack("{s:s, s:s}", "user", user_texts[i], "assistant",
                                 assistant_texts[i]);
        if (!turn || json_array_append_new(history, turn)) {
            json_decref(history);
            return NULL;
        }
    }
    json_t *frame = json_pack("{s:s, s:s, s:b, s:{s:I, s:I, s:i, s:i}, s:o}", "type", "welcome",
                              "conversation", conversation, "resumed", resumed, "limits",
                              "max_frame_bytes", (json_int_t)limits->max_frame_bytes,
                              "max_ask_bytes", (json_int_t)limits->max_ask_bytes,
                              "asks_per_minute", limits->asks_per_minute, "max_turns",
                              limits->max_turns, "history", history);
    if (frame && test_backend) json_object_set_new(frame, "test_backend", json_true());
    return dump(frame, len);
}

char *protocol_encode_progress(const char *duel, long long tokens, size_t *len) {
    return dump(json_pack("{s:s, s:s, s:I}", "type", "progress", "duel", duel, "tokens",
                          (json_int_t)tokens),
                len);
}

char *protocol_encode_duel_start(const char *duel, int dropped_turns, size_t *len) {
    if (dropped_turns > 0)
        return dump(json_pack("{s:s, s:s, s:i}", "type", "duel_start", "duel", duel,
                              "dropped_turns", dropped_turns),
                    len);
    return dump(json_pack("{s:s, s:s}", "type", "duel_start", "duel", duel), len);
}

char *protocol_encode_delta(const char *duel, char side, const char *text, size_t text_len,
                            size_t *len) {
    char side_str[2] = {side, '\0'};
    return dump(json_pack("{s:s, s:s, s:s, s:s%}", "type", "delta", "duel", duel, "side",
                          side_str, "text", text, text_len),
                len);
}

char *protocol_encode_duel_end(const char *duel, bool cancelled, size_t *len) {
    if (cancelled)
        return dump(json_pack("{s:s, s:s, s:b}", "type", "duel_end", "duel", duel, "cancelled", 1),
                    len);
    return dump(json_pack("{s:s, s:s}", "type", "duel_end", "duel", duel), len);
}

char *protocol_encode_vote_ok(const char *duel, bool queued, size_t *len) {
    if (queued)
        return dump(json_pack("{s:s, s:s, s:b}", "type", "vote_ok", "duel", duel, "queued", 1),
                    len);
    return dump(json_pack("{s:s, s:s}", "type", "vote_ok", "duel", duel), len);
}

char *protocol_encode_error(protocol_error_code code, const char *message, size_t *len) {
    /* A message may quote client bytes cut short (a field name at 40 bytes can end inside a
     * character): made valid UTF-8 here, or jansson would refuse it and no frame would go out. */
    char *text = protocol_sanitize_utf8(message ? message : "", message ? strlen(message) : 0, NULL);
    if (!text) return NULL;
    char *frame = dump(json_pack("{s:s, s:s, s:s}", "type", "error", "code",
                                 protocol_error_name(code), "message", text),
                       len);
    free(text);
    return frame;
}

char *protocol_sanitize_utf8(const char *s, size_t n, size_t *out_len) {
    /* The one replacement rule (utf8.h), and NUL too: answers are kept as C strings. */
    char *out = malloc(DUEL_UTF8_LOSSY_MAX(n) + 1);
    if (!out) return NULL;
    size_t o = duel_utf8_lossy(s, n, DUEL_UTF8_LOSSY_NUL, out);
    out[o] = '\0';
    if (out_len) *out_len = o;
    return out;
}

int protocol_new_id(char out[PROTOCOL_ID_LEN + 1]) {
    unsigned char b[PROTOCOL_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t r = getrandom(b + got, sizeof b - got, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    static const char HEX[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof b; i++) {
        out[2 * i] = HEX[b[i] >> 4];
        out[2 * i + 1] = HEX[b[i] & 15];
    }
    out[PROTOCOL_ID_LEN] = '\0';
    return 0;
}
