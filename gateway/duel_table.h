/* duel_table.h: the gateway's duels, from ask to vote (DESIGN.md section 7). A duel's life:
 * ask -> RUNNING (the backend generates; found by its request id) -> STREAMING (the answers,
 * sanitised, go out in deltas) -> FINISHED (votable until it expires: duel_retention_s, or
 * sooner when more than max_duels are finished) -> VOTED (a tombstone that keeps only what
 * refusing a second vote needs). A duel that never finishes (cancel, engine error, closed
 * connection, shutdown) is dropped at once. Also the one place that turns a duel and a choice
 * into its duel:prefs entry (the vote codec, common/vote_entry.h).
 *
 * Thread: the lws service thread owns the table and every duel in it. */
#ifndef DUEL_GATEWAY_DUEL_TABLE_H
#define DUEL_GATEWAY_DUEL_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duel_backend.h"
#include "protocol.h"
#include "stats.h"
#include "str_map.h"
#include "vote_entry.h"

typedef enum duel_state { DS_RUNNING, DS_STREAMING, DS_FINISHED, DS_VOTED } duel_state;

typedef struct duel_rec {
    char id[PROTOCOL_ID_LEN + 1];
    char conv_id[PROTOCOL_ID_LEN + 1];
    uint64_t request_id;   /* the backend's id for it, unique per process */
    char request_key[24];  /* request_id in hex: the key of the by-request map */
    uint64_t conn_id;
    duel_state state;
    char *user_text;
    long long arm;
    int dropped_turns;     /* the conversation's oldest turns left out of its prompt (to fit) */
    duel_backend_result *result;
    char *text_a, *text_b; /* sanitised (common/utf8.h's rule, NUL replaced) */
    size_t len_a, len_b, pos_a, pos_b;
    double t_ask, t_vote, finished_at;
    bool first_delta_sent;
    /* its serving figures' group (serving_stats.h), and which side the ERM's mean preferred */
    char stats_arm[32], stats_strategy[32];
    int erm_preference;
    size_t bytes;          /* memory it holds once FINISHED (duel_table's byte budget) */
    struct duel_rec *expire_next;
} duel_rec;

typedef struct duel_table {
    str_map by_id, by_request;
    duel_rec *expire_head, *expire_tail; /* FINISHED and VOTED duels, oldest first */
    size_t finished;
    size_t finished_bytes; /* what the FINISHED and VOTED duels hold, summed */
    uint64_t next_request_id;
} duel_table;

void duel_table_init(duel_table *t);
/* Frees every duel. */
void duel_table_free(duel_table *t);

/* A new RUNNING duel of conversation conv_id asked on connection conn_id, with a fresh id and
 * request id; takes user_text (also on failure). NULL when out of memory. */
duel_rec *duel_table_add(duel_table *t, const char *conv_id, uint64_t conn_id, char *user_text,
                         long long arm, double now);
duel_rec *duel_table_find(duel_table *t, const char *id);
/* The RUNNING or STREAMING duel of a backend request, or NULL. */
duel_rec *duel_table_find_request(duel_table *t, uint64_t request_id);
/* A per-duel seed for the backend, from the duel's random id. */
uint64_t duel_seed(const duel_rec *d);

/* Forgets a duel that never reached FINISHED. */
void duel_table_drop(duel_table *t, duel_rec *d);
/* RUNNING -> STREAMING: takes r and sanitises its texts. false when out of memory (r is then
 * d's and freed with it). */
bool duel_table_start_streaming(duel_rec *d, duel_backend_result *r);
/* STREAMING -> FINISHED: votable until it expires. */
void duel_table_finish(duel_table *t, duel_rec *d, double now);
/* FINISHED -> VOTED: keeps the tombstone only. */
void duel_table_mark_voted(duel_table *t, duel_rec *d, double now);
/* Frees the finished duels older than retention_s, and the oldest while more than max_finished
 * are kept or they hold more than max_bytes (an unvoted duel keeps its candidates, features and
 * rewards: a count alone does not bound the memory). */
void duel_table_expire(duel_table *t, double now, double retention_s, size_t max_finished,
                       size_t max_bytes);

/* Where the next delta of text ends when it starts at pos: at least min bytes, then up to just
 * after a word break (so chunks read as words). Breaks only after ASCII whitespace or, for long
 * runs without spaces, before a UTF-8 lead byte. */
size_t duel_next_chunk(const char *text, size_t len, size_t pos, size_t min);

/* The duel:prefs entry of a vote for choice on FINISHED duel d (common/vote_entry.h's encoder:
 * what it writes, the trainer reads). Fails with err's reason when the entry cannot be encoded. */
int duel_build_vote(const duel_rec *d, vote_choice choice, vote_entry_encoded *out,
                    duel_error *err);

#endif
