/* protocol.h: the duel.v1 websocket protocol (DESIGN.md section 7), the one place where client
 * frames are parsed. Parsing is strict: a frame must be valid UTF-8, at most max_frame_bytes, one
 * JSON object without duplicate keys, with a known "type", exactly the fields that type allows, each
 * of the right JSON type and within its limits. Every rejection carries a stable error code
 * (protocol_error_code) that the server sends back in an `error` frame. Also builds the server's
 * frames (compact JSON) and the ids they carry. Pure functions but protocol_new_id (getrandom);
 * no state. */
#ifndef DUEL_GATEWAY_PROTOCOL_H
#define DUEL_GATEWAY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>

#include "vote_entry.h"

/* Conversation and duel ids: 32 lowercase hex characters (128 random bits). */
#define PROTOCOL_ID_LEN 32

/* Error codes sent in {"type":"error","code":...}. The string names are the wire format. */
typedef enum protocol_error_code {
    PROTOCOL_OK = 0,
    PROTOCOL_E_TOO_LARGE,         /* "too_large": frame over the frame size limit */
    PROTOCOL_E_BINARY,            /* "binary_frame": only text frames are accepted */
    PROTOCOL_E_BAD_UTF8,          /* "bad_utf8": frame is not valid UTF-8 */
    PROTOCOL_E_BAD_JSON,          /* "bad_json": not JSON */
    PROTOCOL_E_DUPLICATE_KEY,     /* "duplicate_key": an object repeats a key */
    PROTOCOL_E_NOT_OBJECT,        /* "not_object": top level is not an object */
    PROTOCOL_E_MISSING_TYPE,      /* "missing_type": no "type" */
    PROTOCOL_E_UNKNOWN_TYPE,      /* "unknown_type": "type" is not hello/ask/vote/cancel */
    PROTOCOL_E_UNKNOWN_FIELD,     /* "unknown_field": a field the type does not allow */
    PROTOCOL_E_MISSING_FIELD,     /* "missing_field": a required field is absent */
    PROTOCOL_E_WRONG_TYPE,        /* "wrong_type": a field has the wrong JSON type */
    PROTOCOL_E_BAD_VALUE,         /* "bad_value": malformed id, unknown choice */
    PROTOCOL_E_EMPTY_TEXT,        /* "empty_text": ask text is empty or only whitespace */
    PROTOCOL_E_TEXT_TOO_LONG,     /* "text_too_long": ask text over the ask size limit */
    /* Codes the server uses for requests that parse but cannot be served. */
    PROTOCOL_E_HELLO_REQUIRED,    /* "hello_required": ask/vote/cancel before hello */
    PROTOCOL_E_DUPLICATE_HELLO,   /* "duplicate_hello": a second hello on one connection */
    PROTOCOL_E_BUSY,              /* "busy": an ask while this connection's duel is running */
    PROTOCOL_E_RATE_LIMITED,      /* "rate_limited": asks per minute of this connection */
    PROTOCOL_E_ADDRESS_RATE_LIMITED, /* "address_rate_limited": asks per minute of the client's
                                        address (all its connections) */
    PROTOCOL_E_TOO_MANY_PENDING,  /* "too_many_pending": the client's address already has
                                     asks_pending_per_address asks waiting for their answers */
    PROTOCOL_E_TOO_MANY_CONNECTIONS, /* "too_many_connections": per address */
    PROTOCOL_E_TURN_LIMIT,        /* "turn_limit": conversation has too many turns */
    PROTOCOL_E_CONVERSATION_TOO_LONG, /* "conversation_too_long": the new message alone does not
                                         fit the model's context (old turns are dropped first) */
    PROTOCOL_E_UNKNOWN_DUEL,      /* "unknown_duel": no such duel (or it expired) */
    PROTOCOL_E_NOT_YOUR_DUEL,     /* "not_your_duel": the duel belongs to another conversation */
    PROTOCOL_E_ALREADY_VOTED,     /* "already_voted" */
    PROTOCOL_E_DUEL_NOT_FINISHED, /* "duel_not_finished": vote before duel_end */
    PROTOCOL_E_NOTHING_TO_CANCEL, /* "nothing_to_cancel" */
    PROTOCOL_E_ENGINE,            /* "engine_error": generation failed */
    PROTOCOL_E_SHUTTING_DOWN,     /* "shutting_down": the server is stopping */
    PROTOCOL_E_VOTE_FAILED,       /* "vote_failed": the vote could not be stored anywhere */
    PROTOCOL_E_INTERNAL,          /* "internal": out of memory and the like */
    PROTOCOL_E_COUNT
} protocol_error_code;

/* Wire name of a code ("too_large", ...); "internal" for out-of-range values. */
const char *protocol_error_name(protocol_error_code code);

typedef enum protocol_msg_type {
    PROTOCOL_MSG_HELLO,
    PROTOCOL_MSG_ASK,
    PROTOCOL_MSG_VOTE,
    PROTOCOL_MSG_CANCEL,
} protocol_msg_type;

typedef struct protocol_limits {
    size_t max_frame_bytes; /* whole frame, bytes (DESIGN: 16 KiB) */
    size_t max_ask_bytes;   /* ask text after parsing, bytes */
} protocol_limits;

/* A parsed client message. text is malloc'd (ask only); release with protocol_msg_clear. */
typedef struct protocol_msg {
    protocol_msg_type type;
    bool has_conversation;                   /* hello */
    char conversation[PROTOCOL_ID_LEN + 1];  /* hello */
    bool has_client;                         /* hello */
    char client[PROTOCOL_ID_LEN + 1];        /* hello: the browser's stable id (the A/B router's key) */
    char *text;                              /* ask: NUL-terminated, valid UTF-8 */
    size_t text_len;
    char duel[PROTOCOL_ID_LEN + 1];          /* vote */
    vote_choice choice;                      /* vote (vote_entry.h: a, b, tie, both_bad) */
} protocol_msg;

/* Parses one complete text frame. Returns PROTOCOL_OK and fills out, or an error code with a
 * short human-readable detail in detail[0..detail_cap) (naming the field), out left cleared. */
protocol_error_code protocol_parse(const char *data, size_t len, const protocol_limits *limits,
                                   protocol_msg *out, char *detail, size_t detail_cap);
void protocol_msg_clear(protocol_msg *msg);

/* True when s is exactly PROTOCOL_ID_LEN lowercase hex characters. */
bool protocol_id_valid(const char *s, size_t len);

/* Server frames: each returns a malloc'd NUL-terminated compact JSON string (NULL on out of
 * memory); *len gets its length. Text arguments must be valid UTF-8. */
/* welcome: limits tell the page what it may send; history (n_turns user/assistant pairs, may be
 * 0) lets a reloaded page redraw a resumed conversation. */
typedef struct protocol_welcome_limits {
    size_t max_frame_bytes;
    size_t max_ask_bytes;
    int asks_per_minute;
    int max_turns;
} protocol_welcome_limits;
/* test_backend: the answers are the test backend's canned ones (the frame says
 * "test_backend":true, and the page says so). */
char *protocol_encode_welcome(const char *conversation, const protocol_welcome_limits *limits,
                              bool resumed, const char *const *user_texts,
                              const char *const *assistant_texts, size_t n_turns,
                              bool test_backend, size_t *len);
char *protocol_encode_progress(const char *duel, long long tokens, size_t *len);
/* dropped_turns > 0 adds "dropped_turns": the conversation's oldest turns left out of this
 * duel's prompt so that it fits the model's context (the page says so). */
char *protocol_encode_duel_start(const char *duel, int dropped_turns, size_t *len);
char *protocol_encode_delta(const char *duel, char side, const char *text, size_t text_len,
                            size_t *len);
/* cancelled adds "cancelled":true (the user's cancel, an engine error or shutdown). */
char *protocol_encode_duel_end(const char *duel, bool cancelled, size_t *len);
char *protocol_encode_vote_ok(const char *duel, bool queued, size_t *len);
char *protocol_encode_error(protocol_error_code code, const char *message, size_t *len);

/* A fresh unguessable id (PROTOCOL_ID_LEN lowercase hex characters from getrandom) for a
 * conversation, a duel or a vote. -1 when the kernel gives no random bytes. */
int protocol_new_id(char out[PROTOCOL_ID_LEN + 1]);

/* Copies s[0..n) into a new malloc'd NUL-terminated string with the one replacement rule
 * (common/utf8.h: U+FFFD per maximal subpart of invalid UTF-8, as the CLI and the tokenizer do;
 * model output is not guaranteed to be valid) and NUL bytes replaced too. *out_len gets the new
 * length. */
char *protocol_sanitize_utf8(const char *s, size_t n, size_t *out_len);

#endif
