/* sim_gateway.c: `duel sim --gateway ws://HOST:PORT[,ws://...]`, simulated users over real
 * websockets (DESIGN.md section 10): N users, each on its own connection to one of the gateways
 * (user i to gateway i mod G), speak duel.v1 as the chat page does (gateway/web/app.js): hello,
 * ask, the duel's progress, duel_start, deltas and duel_end, then, after a think time, a vote by
 * the oracle and its noise model (oracle/oracle.h), and vote_ok. A session asks a few prompts in
 * one conversation (sim.session_turns; a prompt line with "turns" is one of them), then the user
 * reconnects for a new conversation. Votes flow through the gateways to Redis and a running
 * `duel train`: this is the whole system under load, and the tool its fault tests use.
 *
 * Bounded: at most --votes asks in all and --duration seconds (then no new asks, a grace period
 * for the votes in flight, and the connections close). --rate paces the asks over all users
 * (ask k no earlier than start + k / rate). Loopback gateways only unless --allow-remote.
 *
 * Figures: duels per second, time to duel (ask -> duel_start: the candidates are decoded, scored
 * and the pair chosen) and to both answers (ask -> duel_end) p50/p95/p99, vote acknowledgement
 * latency (vote -> vote_ok) p50/p95/p99, errors by code (the server's error frames, plus
 * connection failures and duels cancelled). Every acknowledged vote's duel id (the id the vote
 * names; a duel is voted at most once) is appended to --acked FILE as it arrives, flushed, so
 * that a fault test can prove no acknowledged vote was lost. One thread: lws's service loop;
 * the oracle scores on it (a judge oracle's HTTP call blocks it, which slows only the sim). */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <libwebsockets.h>

#include "bench_json.h"
#include "config.h"
#include "duel_loop.h"
#include "oracle.h"
#include "sim.h"
#include "timer.h"

extern char **environ;

int sim_gateway_command(int argc, char **argv);

#define GW_MAX_GATEWAYS 16
#define GW_MAX_USERS 10000
#define GW_MAX_CODES 48
#define GW_MAX_FRAME (1 << 20)        /* bytes of one server frame we accept */
#define GW_TICK_US (200 * 1000)        /* housekeeping period */
#define GW_GRACE_S 30.0                /* after the last ask: how long votes in flight may take */
#define GW_RECONNECT_MS 500            /* after a failed connection */
#define GW_PROGRESS_S 2.0

typedef struct gw_target {
    char host[256], path[256];
    int port;
} gw_target;

typedef enum user_state {
    USER_IDLE,       /* not connected; a connect is scheduled */
    USER_CONNECTING,
    USER_HELLO,      /* hello sent, waiting for welcome */
    USER_READY,      /* welcomed, no duel: an ask is scheduled */
    USER_ASKED,      /* waiting for the duel */
    USER_THINKING,   /* duel read; the vote is scheduled */
    USER_VOTED,      /* waiting for vote_ok */
    USER_DONE,
} user_state;

typedef struct gw_sim gw_sim;

typedef struct sim_user {
    gw_sim *sim;
    int index, gateway;
    struct lws *wsi;
    user_state state;
    lws_sorted_usec_list_t sul;
    duel_rng rng;
    /* the session: items left to ask, the current item and turn */
    int session_left;
    const oracle_prompt *item;
    int turn;
    char duel[64];
    char *text[2];
    size_t len[2], cap[2];
    oracle_choice choice;
    bool slot; /* holds a paced ask's slot (--rate) */
    double t_ask, t_vote;
    char *rx;
    size_t rx_len;
    char *tx; /* one pending frame, LWS_PRE bytes of headroom before it */
    size_t tx_len;
} sim_user;

typedef struct gw_code {
    char name[48];
    long long count;
} gw_code;

struct gw_sim {
    struct lws_context *ctx;
    lws_sorted_usec_list_t tick;
    gw_target targets[GW_MAX_GATEWAYS];
    int n_targets;
    sim_user *users;
    long long n_users, votes_max, seed;
    double rate, duration, session_turns;
    long long max_session_turns;
    oracle_think_config think;
    oracle_user *oracle;
    oracle_prompt_set prompts;
    int *order;
    long long next_item;
    FILE *acked;
    const char *acked_path;
    bool quiet;
    /* counters */
    long long asked, duels, votes_sent, votes_acked, votes_queued, cancelled, sessions;
    gw_code codes[GW_MAX_CODES];
    int n_codes;
    double *ttd, *ttd_end, *ack; /* [votes_max] samples */
    long long n_ttd, n_ttd_end, n_ack;
    long long slots; /* paced asks' slots handed out */
    double t0, t_stop_asking, last_progress;
    bool stopping, finished;
    int failed; /* an unrecoverable error (writing the acked file) */
    duel_error err;
};

/* ---- small helpers --------------------------------------------------------------------------- */

static void count_code(gw_sim *g, const char *name) {
    for (int i = 0; i < g->n_codes; i++)
        if (strcmp(g->codes[i].name, name) == 0) {
            g->codes[i].count++;
            return;
        }
    if (g->n_codes == GW_MAX_CODES) name = "other";
    for (int i = 0; i < g->n_codes; i++)
        if (strcmp(g->codes[i].name, name) == 0) {
            g->codes[i].count++;
            return;
        }
    snprintf(g->codes[g->n_codes].name, sizeof g->codes[0].name, "%.47s", name);
    g->codes[g->n_codes++].count = 1;
}

static bool host_is_loopback(const char *host) {
    if (strcmp(host, "localhost") == 0) return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

/* "ws://HOST:PORT[/PATH]" (HOST may be [v6]); DUEL_EINVAL naming the text. */
static int parse_target(const char *url, size_t n, gw_target *t, duel_error *err) {
    char buf[600];
    if (n >= sizeof buf) return duel_error_set(err, DUEL_EINVAL, "--gateway: URL too long");
    memcpy(buf, url, n);
    buf[n] = '\0';
    if (strncmp(buf, "ws://", 5) != 0)
        return duel_error_set(err, DUEL_EINVAL, "--gateway %s: expected ws://HOST:PORT (wss needs a proxy)", buf);
    char *host = buf + 5, *slash = strchr(host, '/'), *colon;
    snprintf(t->path, sizeof t->path, "%s", slash ? slash : "/");
    if (slash) *slash = '\0';
    if (*host == '[') {
        char *end = strchr(host, ']');
        if (!end || end[1] != ':') return duel_error_set(err, DUEL_EINVAL, "--gateway %.*s: bad host", (int)n, url);
        *end = '\0';
        colon = end + 1;
        host++;
    } else {
        colon = strrchr(host, ':');
    }
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || !end || *end || port < 1 || port > 65535)
        return duel_error_set(err, DUEL_EINVAL, "--gateway %.*s: expected ws://HOST:PORT", (int)n, url);
    *colon = '\0';
    if (!*host || strlen(host) >= sizeof t->host)
        return duel_error_set(err, DUEL_EINVAL, "--gateway %.*s: bad host", (int)n, url);
    snprintf(t->host, sizeof t->host, "%s", host);
    t->port = (int)port;
    return 0;
}

static double now_s(void) { return duel_time_seconds(); }

static void schedule(sim_user *u, double seconds, void (*cb)(lws_sorted_usec_list_t *));

/* Queues one frame (JSON text) and asks lws for a writable callback. */
static void send_json(sim_user *u, json_t *o) {
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    size_t n = text ? strlen(text) : 0;
    free(u->tx);
    u->tx = text ? malloc(LWS_PRE + n) : NULL;
    if (!u->tx) {
        free(text);
        count_code(u->sim, "sim_out_of_memory");
        return;
    }
    memcpy(u->tx + LWS_PRE, text, n);
    u->tx_len = n;
    free(text);
    if (u->wsi) lws_callback_on_writable(u->wsi);
}

/* ---- the user's steps --------------------------------------------------------------------------- */

static void on_connect_due(lws_sorted_usec_list_t *sul);
static void on_ask_due(lws_sorted_usec_list_t *sul);
static void on_vote_due(lws_sorted_usec_list_t *sul);

static void schedule(sim_user *u, double seconds, void (*cb)(lws_sorted_usec_list_t *)) {
    lws_sul_schedule(u->sim->ctx, 0, &u->sul, cb, (lws_usec_t)(seconds > 0 ? seconds * 1e6 : 0));
}

static void connect_user(sim_user *u) {
    gw_sim *g = u->sim;
    if (g->stopping) {
        u->state = USER_DONE;
        return;
    }
    const gw_target *t = &g->targets[u->gateway];
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = g->ctx;
    ci.address = t->host;
    ci.port = t->port;
    ci.path = t->path;
    ci.host = t->host;
    ci.protocol = "duel.v1";
    ci.pwsi = &u->wsi;
    ci.opaque_user_data = u;
    u->state = USER_CONNECTING;
    if (!lws_client_connect_via_info(&ci)) {
        u->wsi = NULL;
        count_code(g, "connect_failed");
        u->state = USER_IDLE;
        schedule(u, GW_RECONNECT_MS / 1000.0, on_connect_due);
    }
}

static void on_connect_due(lws_sorted_usec_list_t *sul) {
    connect_user(lws_container_of(sul, sim_user, sul));
}

/* The next prompt of this user: the next turn of its item, else the next item of the session
 * (the set in a seeded order, shared by all users), else NULL: the session is over. */
static const oracle_turn *next_turn(sim_user *u) {
    gw_sim *g = u->sim;
    if (u->item && u->turn + 1 < u->item->num_turns) return &u->item->turns[++u->turn];
    if (u->session_left <= 0) return NULL;
    u->session_left--;
    u->item = &g->prompts.items[g->order[g->next_item++ % g->prompts.count]];
    u->turn = 0;
    return &u->item->turns[0];
}

/* Lets go of the user's connection: it is closed asynchronously, and its remaining callbacks
 * (detached from the user) are ignored, so the user may connect again at once (a close handshake
 * can take seconds that would otherwise throttle the users). */
static void drop_connection(sim_user *u) {
    if (u->wsi) {
        lws_set_opaque_user_data(u->wsi, NULL);
        lws_set_timeout(u->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        u->wsi = NULL;
    }
    free(u->tx);
    u->tx = NULL;
}

/* Ends the session: the user comes back with a new connection and conversation. */
static void end_session(sim_user *u) {
    gw_sim *g = u->sim;
    u->item = NULL;
    drop_connection(u);
    if (!g->stopping && g->asked < g->votes_max) {
        u->state = USER_IDLE;
        schedule(u, 0, on_connect_due);
    } else {
        u->state = USER_DONE;
    }
}

static void ask_next(sim_user *u) {
    gw_sim *g = u->sim;
    /* a session that is over takes no paced slot: its user reconnects first */
    const bool more = (u->item && u->turn + 1 < u->item->num_turns) || u->session_left > 0;
    if (g->stopping || g->asked >= g->votes_max || !more) {
        end_session(u);
        return;
    }
    const double t = now_s();
    if (g->rate > 0 && !u->slot) { /* pacing over all users: the k-th ask no earlier than t0 + k / rate */
        double due = g->t0 + (double)g->slots++ / g->rate;
        u->slot = true;
        if (due > t) {
            u->state = USER_READY;
            schedule(u, due - t, on_ask_due);
            return;
        }
    }
    u->slot = false;
    const oracle_turn *turn = next_turn(u);
    if (!turn) {
        end_session(u);
        return;
    }
    g->asked++;
    u->state = USER_ASKED;
    u->len[0] = u->len[1] = 0;
    u->duel[0] = '\0';
    u->t_ask = t;
    send_json(u, json_pack("{s:s, s:s}", "type", "ask", "text", turn->prompt));
}

static void on_ask_due(lws_sorted_usec_list_t *sul) {
    sim_user *u = lws_container_of(sul, sim_user, sul);
    if (u->state == USER_READY && u->wsi) ask_next(u);
}

static void on_vote_due(lws_sorted_usec_list_t *sul) {
    sim_user *u = lws_container_of(sul, sim_user, sul);
    if (u->state != USER_THINKING || !u->wsi) return;
    u->state = USER_VOTED;
    u->t_vote = now_s();
    u->sim->votes_sent++;
    send_json(u, json_pack("{s:s, s:s, s:s}", "type", "vote", "duel", u->duel, "choice", oracle_choice_name(u->choice)));
}

/* After a duel (or a refused ask): think, then ask again. */
static void think_then_ask(sim_user *u) {
    u->state = USER_READY;
    schedule(u, oracle_think_ms(&u->sim->think, &u->rng) / 1000.0, on_ask_due);
}

static void append_delta(sim_user *u, int side, const char *text) {
    size_t n = strlen(text);
    if (u->len[side] + n + 1 > u->cap[side]) {
        size_t cap = (u->len[side] + n + 1) * 2;
        char *grown = realloc(u->text[side], cap);
        if (!grown) return;
        u->text[side] = grown;
        u->cap[side] = cap;
    }
    memcpy(u->text[side] + u->len[side], text, n + 1);
    u->len[side] += n;
}

static void on_duel_end(sim_user *u, bool cancelled) {
    gw_sim *g = u->sim;
    if (cancelled) {
        g->cancelled++;
        count_code(g, "duel_cancelled");
        think_then_ask(u);
        return;
    }
    g->duels++;
    if (g->n_ttd_end < g->votes_max) g->ttd_end[g->n_ttd_end++] = (now_s() - u->t_ask) * 1000.0;
    for (int s = 0; s < 2; s++)
        if (!u->text[s] || !u->len[s]) append_delta(u, s, "");
    oracle_vote v;
    duel_error err = {0};
    if (oracle_user_vote(g->oracle, &u->item->turns[u->turn], u->text[0] ? u->text[0] : "",
                         u->text[1] ? u->text[1] : "", &u->rng, &v, &err)) {
        count_code(g, "oracle_failed");
        if (!g->quiet) fprintf(stderr, "\nduel sim: the oracle failed: %s\n", err.message);
        think_then_ask(u);
        return;
    }
    u->choice = v.choice;
    u->state = USER_THINKING;
    schedule(u, oracle_think_ms(&g->think, &u->rng) / 1000.0, on_vote_due);
}

static void on_vote_ok(sim_user *u, const json_t *m) {
    gw_sim *g = u->sim;
    const char *duel = json_string_value(json_object_get(m, "duel"));
    if (u->state != USER_VOTED || !duel || strcmp(duel, u->duel) != 0) {
        count_code(g, "unexpected_vote_ok");
        return;
    }
    g->votes_acked++;
    g->votes_queued += json_is_true(json_object_get(m, "queued"));
    if (g->n_ack < g->votes_max) g->ack[g->n_ack++] = (now_s() - u->t_vote) * 1000.0;
    if (g->acked && (fprintf(g->acked, "%s\n", duel) < 0 || fflush(g->acked) != 0) && !g->failed) {
        g->failed = duel_error_set(&g->err, DUEL_EIO, "%s: %s", g->acked_path, strerror(errno));
        g->stopping = true;
    }
    think_then_ask(u);
}

static void on_message(sim_user *u, const char *data, size_t len) {
    gw_sim *g = u->sim;
    json_t *m = json_loadb(data, len, 0, NULL);
    const char *type = json_string_value(json_object_get(m, "type"));
    if (!type) {
        count_code(g, "bad_server_frame");
    } else if (strcmp(type, "welcome") == 0) {
        g->sessions++;
        u->session_left = oracle_session_turns(g->session_turns, (int)g->max_session_turns, &u->rng);
        u->state = USER_READY;
        ask_next(u);
    } else if (strcmp(type, "duel_start") == 0) {
        const char *d = json_string_value(json_object_get(m, "duel"));
        snprintf(u->duel, sizeof u->duel, "%s", d ? d : "");
        if (g->n_ttd < g->votes_max) g->ttd[g->n_ttd++] = (now_s() - u->t_ask) * 1000.0;
    } else if (strcmp(type, "delta") == 0) {
        const char *side = json_string_value(json_object_get(m, "side")), *text = json_string_value(json_object_get(m, "text"));
        if (side && text) append_delta(u, side[0] == 'b', text);
    } else if (strcmp(type, "duel_end") == 0) {
        if (u->state == USER_ASKED) on_duel_end(u, json_is_true(json_object_get(m, "cancelled")));
    } else if (strcmp(type, "vote_ok") == 0) {
        on_vote_ok(u, m);
    } else if (strcmp(type, "error") == 0) {
        const char *code = json_string_value(json_object_get(m, "code"));
        count_code(g, code ? code : "error");
        if (u->state == USER_ASKED && !u->duel[0]) think_then_ask(u); /* the ask was refused */
        else if (u->state == USER_VOTED) think_then_ask(u);           /* the vote was refused */
    } /* progress: the page shows it; nothing to do here */
    json_decref(m);
}

/* ---- lws ---------------------------------------------------------------------------------- */

/* The server closed the connection (or lws dropped it): the user comes back with a new one. */
static void connection_lost(sim_user *u) {
    gw_sim *g = u->sim;
    u->wsi = NULL;
    free(u->tx);
    u->tx = NULL;
    count_code(g, "connection_closed");
    if (u->state == USER_VOTED) count_code(g, "vote_unacknowledged"); /* closed before vote_ok */
    u->state = USER_IDLE;
    if (!g->stopping && g->asked < g->votes_max) schedule(u, 0, on_connect_due); /* a new conversation */
    else u->state = USER_DONE;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    (void)user;
    sim_user *u = lws_get_opaque_user_data(wsi);
    if (!u) return 0;
    gw_sim *g = u->sim;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        count_code(g, "connect_failed");
        u->wsi = NULL;
        u->state = USER_IDLE;
        if (!g->stopping) schedule(u, GW_RECONNECT_MS / 1000.0, on_connect_due);
        else u->state = USER_DONE;
        break;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        u->state = USER_HELLO;
        u->rx_len = 0;
        send_json(u, json_pack("{s:s}", "type", "hello"));
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        if (u->rx_len + len > GW_MAX_FRAME) {
            count_code(g, "server_frame_too_large");
            return -1;
        }
        char *grown = realloc(u->rx, u->rx_len + len + 1);
        if (!grown) return -1;
        u->rx = grown;
        memcpy(u->rx + u->rx_len, in, len);
        u->rx_len += len;
        if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0) {
            u->rx[u->rx_len] = '\0';
            size_t n = u->rx_len;
            u->rx_len = 0;
            on_message(u, u->rx, n);
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (u->tx) {
            int w = lws_write(wsi, (unsigned char *)u->tx + LWS_PRE, u->tx_len, LWS_WRITE_TEXT);
            free(u->tx);
            u->tx = NULL;
            if (w < (int)u->tx_len) return -1;
        }
        break;
    case LWS_CALLBACK_CLIENT_CLOSED: /* not by us: ours are detached first (drop_connection) */
        connection_lost(u);
        break;
    case LWS_CALLBACK_WSI_DESTROY:
        /* A connection lws freed without a close or error callback (a gateway killed while the
         * upgrade was in flight): the user must not keep the freed wsi (the end of the run once
         * set a timeout on it and crashed) nor wait on it forever. */
        if (u->wsi == wsi) connection_lost(u);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"duel.v1", callback, 0, GW_MAX_FRAME, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---- the run ---------------------------------------------------------------------------------- */

static bool busy(const gw_sim *g) {
    for (long long i = 0; i < g->n_users; i++) {
        user_state s = g->users[i].state;
        if (s == USER_ASKED || s == USER_THINKING || s == USER_VOTED) return true;
    }
    return false;
}

static void progress(gw_sim *g, bool last) {
    if (g->quiet) return;
    double t = now_s();
    if (!last && t - g->last_progress < GW_PROGRESS_S) return;
    g->last_progress = t;
    double el = t - g->t0 > 0 ? t - g->t0 : 1e-9, rate = g->votes_acked / el;
    double left = (double)(g->votes_max - g->votes_acked);
    double eta = rate > 0 ? left / rate : 0;
    if (g->duration > 0 && g->t0 + g->duration - t < eta) eta = g->t0 + g->duration - t;
    fprintf(stderr, "\rgateway sim: %lld asked, %lld duels, %lld votes acknowledged, %.2f duels/s, ETA %.0f s   ", g->asked,
            g->duels, g->votes_acked, g->duels / el, eta > 0 ? eta : 0);
    if (last) fprintf(stderr, "\n");
}

/* Housekeeping: the duration, the end of the run, the progress line. */
static void on_tick(lws_sorted_usec_list_t *sul) {
    gw_sim *g = lws_container_of(sul, gw_sim, tick);
    double t = now_s();
    if (!g->stopping && ((g->duration > 0 && t - g->t0 >= g->duration) || g->asked >= g->votes_max)) {
        /* no new asks; the duels and votes in flight get a grace period */
        if (!g->t_stop_asking) g->t_stop_asking = t;
        if (!busy(g) || t - g->t_stop_asking >= GW_GRACE_S) g->stopping = true;
    }
    if (g->stopping) {
        for (long long i = 0; i < g->n_users; i++) {
            sim_user *u = &g->users[i];
            if (u->state == USER_VOTED) count_code(g, "vote_unacknowledged");
            drop_connection(u);
            u->state = USER_DONE;
            lws_sul_cancel(&u->sul);
        }
        g->finished = true;
        lws_cancel_service(g->ctx);
        return;
    }
    progress(g, false);
    lws_sul_schedule(g->ctx, 0, &g->tick, on_tick, GW_TICK_US);
}

static void print_figures(gw_sim *g, double wall) {
    double p[3][3];
    double *series[3] = {g->ttd, g->ttd_end, g->ack};
    long long n[3] = {g->n_ttd, g->n_ttd_end, g->n_ack};
    for (int s = 0; s < 3; s++) {
        p[s][2] = loop_percentile(series[s], (int)n[s], 0.99);
        p[s][1] = loop_percentile(series[s], (int)n[s], 0.95);
        p[s][0] = loop_percentile(series[s], (int)n[s], 0.50);
    }
    printf("gateway sim: %lld users, %lld asked, %lld duels, %lld votes acknowledged (%lld queued) in %.1f s\n",
           g->n_users, g->asked, g->duels, g->votes_acked, g->votes_queued, wall);
    printf("  duels per second        %.2f\n", g->duels / (wall > 0 ? wall : 1));
    const char *names[3] = {"time to duel", "both answers", "vote acknowledged"};
    for (int s = 0; s < 3; s++)
        printf("  %-22s  p50 %.0f ms, p95 %.0f ms, p99 %.0f ms (%lld samples)\n", names[s], p[s][0], p[s][1], p[s][2], n[s]);
    printf("  errors                 ");
    if (!g->n_codes) printf(" none");
    for (int i = 0; i < g->n_codes; i++) printf(" %s %lld", g->codes[i].name, g->codes[i].count);
    printf("\n");
    if (g->acked_path) printf("  acknowledged votes      %s (one duel id per line)\n", g->acked_path);
}

static json_t *figures_json(gw_sim *g, double wall) {
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "users", (json_int_t)g->n_users, "asked",
                          (json_int_t)g->asked, "duels", (json_int_t)g->duels, "votes_sent", (json_int_t)g->votes_sent,
                          "votes_acked", (json_int_t)g->votes_acked, "votes_queued", (json_int_t)g->votes_queued,
                          "sessions", (json_int_t)g->sessions, "wall_seconds", wall, "duels_per_second",
                          g->duels / (wall > 0 ? wall : 1));
    if (!o) return NULL;
    /* the pacer's slots handed out (--rate): one per ask, plus at most one per user left over at
     * the end; a slot spent on anything else slows the pacing whatever the servers' speed */
    json_object_set_new(o, "paced_slots", json_integer((json_int_t)g->slots));
    double *series[3] = {g->ttd, g->ttd_end, g->ack};
    long long n[3] = {g->n_ttd, g->n_ttd_end, g->n_ack};
    const char *names[3] = {"time_to_duel", "both_answers", "vote_ack"};
    const double qs[3] = {0.5, 0.95, 0.99};
    const char *qn[3] = {"p50", "p95", "p99"};
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 3; k++) {
            char key[64];
            snprintf(key, sizeof key, "%s_%s_ms", names[s], qn[k]);
            json_object_set_new(o, key, json_real(loop_percentile(series[s], (int)n[s], qs[k])));
        }
    json_t *errors = json_object();
    for (int i = 0; i < g->n_codes; i++) json_object_set_new(errors, g->codes[i].name, json_integer(g->codes[i].count));
    json_object_set_new(o, "errors", errors);
    if (g->acked_path) json_object_set_new(o, "acked_file", json_string(g->acked_path));
    return o;
}

int sim_gateway_command(int argc, char **argv) {
    gw_sim *g = calloc(1, sizeof *g);
    if (!g) return CLI_EXIT_FAILURE;
    const char *gateways = NULL, *config_path = NULL, *think = NULL, *prompts = NULL, *out_dir = NULL;
    bool allow_remote = false, json = false;
    const cli_option options[] = {
        {"--gateway", CLI_OPT_STRING, &gateways, "URLS", "ws://HOST:PORT[,ws://...]: the gateways; user i uses gateway i mod G", 0, 0, false, NULL},
        {"--users", CLI_OPT_INT, &g->n_users, "N", "concurrent users, one connection each (sim.users)", 1, GW_MAX_USERS, false, NULL},
        {"--votes", CLI_OPT_INT, &g->votes_max, "V", "asks in all: each becomes a vote unless refused (sim.votes)", 1, 1e8, false, NULL},
        {"--rate", CLI_OPT_DOUBLE, &g->rate, "R", "asks per second over all users; 0: as fast as they go (sim.rate)", 0, 1e6, false, NULL},
        {"--duration", CLI_OPT_DOUBLE, &g->duration, "S", "stop asking after S seconds, then a grace for the votes in flight (sim.duration_seconds)", 0, 1e7, false, NULL},
        {"--think", CLI_OPT_STRING, &think, "SPEC", "think time before each vote and ask: 0, fixed:MS, uniform:LO:HI, exp:MEAN, lognormal:MEDIAN:SIGMA (sim.think)", 0, 0, false, NULL},
        {"--session-turns", CLI_OPT_DOUBLE, &g->session_turns, "N", "mean prompts per conversation, geometric (sim.session_turns)", 1, 1000, false, NULL},
        {"--max-session-turns", CLI_OPT_INT, &g->max_session_turns, "N", "cap on prompts per conversation (sim.max_session_turns)", 1, 1000, false, NULL},
        {"--prompts", CLI_OPT_STRING, &prompts, "FILE", "JSONL the users ask (sim.prompts)", 0, 0, false, NULL},
        {"--seed", CLI_OPT_INT, &g->seed, "N", "prompt order, think times, oracle noise (sim.seed)", 0, 1e15, false, NULL},
        {"--acked", CLI_OPT_STRING, &g->acked_path, "FILE", "append every acknowledged vote's duel id (default OUT_DIR/gateway-acked.txt)", 0, 0, false, NULL},
        {"--out-dir", CLI_OPT_STRING, &out_dir, "DIR", "folder of the default --acked file (sim.out_dir)", 0, 0, false, NULL},
        {"--allow-remote", CLI_OPT_FLAG, &allow_remote, NULL, "allow gateways that are not on this machine (sim.allow_remote)", 0, 0, false, NULL},
        {"--config", CLI_OPT_STRING, &config_path, "FILE", "configuration (sections sim and oracle); --set K=V overrides", 0, 0, false, NULL},
        {"--quiet", CLI_OPT_FLAG, &g->quiet, NULL, "no progress on stderr", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL, "the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    static const char *const keys[] = {NULL, "users", "votes", "rate", "duration_seconds", "think", "session_turns",
                                       "max_session_turns", "prompts", "seed", NULL, "out_dir", "allow_remote", NULL,
                                       NULL, NULL};
    const size_t n = sizeof options / sizeof *options;
    bool given[sizeof options / sizeof *options];
    cli_option opts[sizeof options / sizeof *options];
    sim_options_track(options, n, opts, given);
    const cli_command cmd = {
        "sim --gateway", "ws://HOST:PORT[,ws://...] [--users N] [--votes V] [--rate R] [options] [--set K=V ...]",
        "Simulated users over real websockets against running gateways (`duel serve`), speaking\n"
        "duel.v1 as the chat page does: each asks prompts from --prompts, reads the duel, thinks,\n"
        "votes by the oracle and its noise model (the oracle section), in sessions of a few\n"
        "prompts per conversation. Votes go through the gateways to Redis and `duel train`.\n"
        "Prints duels per second, time to duel (ask -> duel_start) and to both answers (ask ->\n"
        "duel_end) and the vote acknowledgement latency (p50, p95, p99), and errors by code;\n"
        "appends every acknowledged vote's duel id to --acked. Bounded by --votes and --duration;\n"
        "loopback gateways only unless --allow-remote. A progress line goes to stderr.\n"
        "\n"
        "Every user connects from this machine's one address, and a gateway limits each address\n"
        "(gateway.connections_per_address 32, asks_per_minute_address 60, asks_pending_per_address\n"
        "8 by default): beyond them the users' asks are refused (address_rate_limited,\n"
        "too_many_pending, counted under errors). For a load test, start the gateways with those\n"
        "limits raised, as ops/chaos does (--set gateway.asks_pending_per_address=1000000 ...).",
        opts, n};
    const char *sets[SIM_MAX_SETS];
    size_t n_sets = 0;
    int rc = 0;
    json_t *config = NULL;
    char acked_default[1200];
    if (duel_config_take_sets(&argc, argv, sets, SIM_MAX_SETS, &n_sets, &g->err)) {
        rc = cli_usage_error(&cmd, "%s", g->err.message);
        goto out;
    }
    for (int i = 0; i < argc; i++) /* before --gateway takes "--help" for its URL */
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cli_print_help(&cmd, stdout);
            goto out;
        }
    if ((rc = cli_parse(&cmd, argc, argv))) {
        rc = rc < 0 ? CLI_EXIT_OK : rc;
        goto out;
    }
    oracle_config oc;
    oracle_config_default(&oc);
    if (duel_config_load(config_path, sets, n_sets, (const char *const *)environ, &config, NULL, &g->err) ||
        sim_options_from_config(opts, keys, given, n, duel_config_section(config, "sim"), &g->err) ||
        oracle_config_from_json(duel_config_section(config, "oracle"), "oracle", &oc, &g->err)) {
        fprintf(stderr, "duel sim: %s\n", g->err.message);
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (!gateways || !*gateways) {
        rc = cli_usage_error(&cmd, "--gateway needs ws://HOST:PORT");
        goto out;
    }
    for (const char *p = gateways; *p;) {
        size_t len = strcspn(p, ",");
        if (g->n_targets == GW_MAX_GATEWAYS) {
            rc = cli_usage_error(&cmd, "--gateway: at most %d gateways", GW_MAX_GATEWAYS);
            goto out;
        }
        if (parse_target(p, len, &g->targets[g->n_targets], &g->err)) {
            rc = cli_usage_error(&cmd, "%s", g->err.message);
            goto out;
        }
        if (!allow_remote && !host_is_loopback(g->targets[g->n_targets].host)) {
            rc = cli_usage_error(&cmd, "--gateway %.*s is not on this machine: add --allow-remote to load it", (int)len, p);
            goto out;
        }
        g->n_targets++;
        p += len + (p[len] == ',');
    }
    if (oracle_think_parse(think ? think : "0", &g->think, &g->err)) {
        rc = cli_usage_error(&cmd, "--think: %s", g->err.message);
        goto out;
    }
    if (!prompts) {
        rc = cli_usage_error(&cmd, "--prompts is required (or sim.prompts)");
        goto out;
    }
    /* Everything the users need, checked before the first connection. */
    if (oracle_user_open(&oc, &g->oracle, &g->err) ||
        oracle_prompt_set_load(prompts, ORACLE_PROMPT_MAX_ITEMS, oc.kind == ORACLE_LEXICAL, &g->prompts, &g->err) ||
        oracle_user_check(g->oracle, &g->prompts, &g->err)) {
        fprintf(stderr, "duel sim: %s\n", g->err.message);
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    if (!g->acked_path) {
        snprintf(acked_default, sizeof acked_default, "%s/gateway-acked.txt", out_dir ? out_dir : "sim-out");
        if (mkdir(out_dir ? out_dir : "sim-out", 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "duel sim: %s: %s\n", out_dir ? out_dir : "sim-out", strerror(errno));
            rc = CLI_EXIT_FAILURE;
            goto out;
        }
        g->acked_path = acked_default;
    }
    if (!(g->acked = fopen(g->acked_path, "a"))) {
        fprintf(stderr, "duel sim: %s: %s\n", g->acked_path, strerror(errno));
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    g->users = calloc((size_t)g->n_users, sizeof *g->users);
    g->ttd = calloc((size_t)g->votes_max, sizeof(double));
    g->ttd_end = calloc((size_t)g->votes_max, sizeof(double));
    g->ack = calloc((size_t)g->votes_max, sizeof(double));
    if (!g->users || !g->ttd || !g->ttd_end || !g->ack) {
        fprintf(stderr, "duel sim: out of memory\n");
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    if (oracle_prompt_order(&g->prompts, (uint64_t)g->seed * 0x9e3779b97f4a7c15ull + 1, &g->order, &g->err)) {
        fprintf(stderr, "duel sim: %s\n", g->err.message);
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.fd_limit_per_thread = (unsigned int)(g->n_users + 64);
    if (!(g->ctx = lws_create_context(&info))) {
        fprintf(stderr, "duel sim: cannot create the websocket client context\n");
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    g->t0 = g->last_progress = now_s();
    for (long long i = 0; i < g->n_users; i++) {
        sim_user *u = &g->users[i];
        u->sim = g;
        u->index = (int)i;
        u->gateway = (int)(i % g->n_targets);
        duel_rng_seed(&u->rng, (uint64_t)g->seed * 1000003ull + (uint64_t)i);
        schedule(u, 0, on_connect_due);
    }
    lws_sul_schedule(g->ctx, 0, &g->tick, on_tick, GW_TICK_US);
    while (!g->finished)
        if (lws_service(g->ctx, 0) < 0) break;
    double wall = now_s() - g->t0;
    progress(g, true);
    if (g->failed) {
        fprintf(stderr, "duel sim: %s\n", g->err.message);
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    print_figures(g, wall);
    if (json && bench_json_print("sim gateway", figures_json(g, wall))) rc = CLI_EXIT_FAILURE;
out:
    if (g->ctx) lws_context_destroy(g->ctx);
    for (long long i = 0; g->users && i < g->n_users; i++) {
        free(g->users[i].text[0]);
        free(g->users[i].text[1]);
        free(g->users[i].rx);
        free(g->users[i].tx);
    }
    if (g->acked) fclose(g->acked);
    free(g->users);
    free(g->order);
    free(g->ttd);
    free(g->ttd_end);
    free(g->ack);
    oracle_prompt_set_free(&g->prompts);
    oracle_user_close(g->oracle);
    json_decref(config);
    free(g);
    return rc;
}
