/* session.c: the gateway's websocket connections (the duel.v1 protocol's lws callbacks). Owns the
 * sessions, their outboxes and the per-address state (connections, ask token buckets, asks pending;
 * the address is the peer's, or behind gateway.trusted_proxies the client that X-Forwarded-For
 * names: http_route.h): a connection is admitted (not draining, under max_connections, an allowed
 * Origin: http_route.h), gets a session, has its fragments gathered into whole messages
 * (max_frame_bytes; a message that never finishes closes it), has one deadline at a time (hello,
 * partial message or idle: gateway_session_deadline), and writes frames only from
 * LWS_CALLBACK_SERVER_WRITEABLE, one per callback, from its outbox; a client too far behind
 * (OUTBOX_MAX_BYTES) is dropped. What a message means is chat_flow.c's business.
 *
 * Thread: the lws service thread, all of it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_route.h"
#include "server_internal.h"
#include "timer.h"

#define OUTBOX_MAX_BYTES (8u << 20) /* a client this far behind is dropped */

bool gateway_bucket_take(double *tokens, double *last, int per_minute, double now) {
    if (*last == 0) *tokens = per_minute, *last = now;
    *tokens += (now - *last) * per_minute / 60.0;
    if (*tokens > per_minute) *tokens = per_minute;
    *last = now;
    if (*tokens < 1) return false;
    *tokens -= 1;
    return true;
}

/* Asks of addr whose duel the backend still works on. A scan of the sessions: an ask is rare
 * next to everything else a session does (asks_per_minute_*), and there is no second copy of
 * the duels' states to keep in step. */
static int pending_asks(gateway *gw, const char *addr) {
    int n = 0;
    for (size_t b = 0; b < gw->sessions.n_buckets; b++)
        for (str_map_entry *e = gw->sessions.buckets[b]; e; e = e->next) {
            const session *o = e->value;
            n += o->duel && o->duel->state == DS_RUNNING && strcmp(o->addr, addr) == 0;
        }
    return n;
}

bool gateway_ask_allowed(gateway *gw, session *s, double now) {
    addr_state *as = str_map_get(&gw->addrs, s->addr);
    if (!gateway_bucket_take(&s->tokens, &s->last, gw->cfg.asks_per_minute_connection, now)) {
        gateway_send_error(gw, s, PROTOCOL_E_RATE_LIMITED, "too many questions; wait a moment");
        return false;
    }
    if (as && !gateway_bucket_take(&as->tokens, &as->last, gw->cfg.asks_per_minute_address, now)) {
        gateway_send_error(gw, s, PROTOCOL_E_ADDRESS_RATE_LIMITED,
                           "too many questions from your address; wait a moment");
        return false;
    }
    int pending = pending_asks(gw, s->addr);
    if (pending >= gw->cfg.asks_pending_per_address) {
        char msg[120];
        snprintf(msg, sizeof msg,
                 "%d questions from your address are still waiting for their answers", pending);
        gateway_send_error(gw, s, PROTOCOL_E_TOO_MANY_PENDING, msg);
        return false;
    }
    return true;
}

void gateway_close_soon(session *s) {
    s->close_after_flush = true;
    lws_callback_on_writable(s->wsi);
}

void gateway_send_frame(gateway *gw, session *s, char *json) {
    if (!json) return;
    size_t len = strlen(json);
    if (s->out_bytes + len > OUTBOX_MAX_BYTES) {
        free(json);
        gateway_close_soon(s);
        return;
    }
    outframe *f = malloc(sizeof *f + LWS_PRE + len);
    if (!f) {
        free(json);
        return;
    }
    f->next = NULL;
    f->len = len;
    memcpy(f->buf + LWS_PRE, json, len);
    free(json);
    if (s->out_tail) s->out_tail->next = f;
    else s->out_head = f;
    s->out_tail = f;
    s->out_bytes += len;
    gw->metrics.frames_out++;
    lws_callback_on_writable(s->wsi);
}

void gateway_send_error(gateway *gw, session *s, protocol_error_code code, const char *message) {
    gw->metrics.protocol_errors++;
    if (gw->cfg.stats_interval_ms > 0) serving_stats_error(&gw->stats, protocol_error_name(code));
    gateway_send_frame(gw, s, protocol_encode_error(code, message, NULL));
}

session *gateway_find_session(gateway *gw, uint64_t conn_id) {
    char key[24];
    snprintf(key, sizeof key, "%016llx", (unsigned long long)conn_id);
    return str_map_get(&gw->sessions, key);
}

static bool origin_allowed(gateway *gw, struct lws *wsi) {
    char origin[256];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0) return true; /* not a browser */
    int n = lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
    if (n <= 0) return false;
    return http_origin_allowed(origin, (size_t)n, (const char (*)[256])gw->cfg.origins,
                               gw->cfg.n_origins, gw->cfg.bind, gw->port);
}

/* The one deadline a websocket has at a time (lws keeps one pending timeout per connection, in
 * whole seconds): the rest of its hello time until it said hello, the partial-message time
 * from a message's first fragment (later fragments do not extend it), and otherwise the idle
 * time, from its last message or its last duel's end. A running duel has none. */
void gateway_session_deadline(gateway *gw, session *s) {
    if (s->rx_started) return; /* the partial-message deadline stands */
    if (!s->hello_done) {
        int left = (int)(s->hello_deadline - duel_time_seconds() + 0.999);
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, left > 0 ? left : LWS_TO_KILL_ASYNC);
    } else if (s->duel) {
        lws_set_timeout(s->wsi, NO_PENDING_TIMEOUT, 0);
    } else {
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, gw->cfg.idle_timeout_s);
    }
}

static void session_destroy(gateway *gw, session *s) {
    if (s->duel) {
        gateway_cancel_generation(gw, s->duel);
        gw->metrics.duels_cancelled++;
        duel_table_drop(&gw->duels, s->duel);
        s->duel = NULL;
    }
    if (s->conv) s->conv->refs--;
    addr_state *as = str_map_get(&gw->addrs, s->addr);
    if (as && --as->connections <= 0) {
        str_map_remove(&gw->addrs, s->addr);
        free(as);
    }
    str_map_remove(&gw->sessions, s->key);
    while (s->out_head) {
        outframe *f = s->out_head;
        s->out_head = f->next;
        free(f);
    }
    free(s->rx);
    free(s);
    gw->metrics.connections_open--;
}

static int on_established(gateway *gw, struct lws *wsi, session **slot) {
    session *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->conn_id = ++gw->next_conn_id;
    snprintf(s->key, sizeof s->key, "%016llx", (unsigned long long)s->conn_id);
    s->wsi = wsi;
    s->hello_deadline = duel_time_seconds() + gw->cfg.hello_timeout_s;
    char peer[HTTP_ADDRESS_MAX] = "";
    lws_get_peer_simple(wsi, peer, sizeof peer);
    char *xff = NULL;
    int xff_len = gw->n_trusted_proxies ? lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR) : 0;
    if (xff_len > 0 && (xff = malloc((size_t)xff_len + 1)) &&
        (xff_len = lws_hdr_copy(wsi, xff, xff_len + 1, WSI_TOKEN_X_FORWARDED_FOR)) < 0)
        xff_len = 0;
    http_client_address(peer, xff, xff_len > 0 ? (size_t)xff_len : 0, gw->trusted_proxies,
                        gw->n_trusted_proxies, s->addr);
    free(xff);
    /* FNV-1a of the address: the same client has the same key on every gateway */
    s->fairness_key = 1469598103934665603ull;
    for (const char *p = s->addr; *p; p++)
        s->fairness_key = (s->fairness_key ^ (unsigned char)*p) * 1099511628211ull;
    if (str_map_put(&gw->sessions, s->key, s)) {
        free(s);
        return -1;
    }
    *slot = s;
    gw->metrics.connections_total++;
    gw->metrics.connections_open++;
    addr_state *as = str_map_get(&gw->addrs, s->addr);
    if (!as && (as = calloc(1, sizeof *as)) && str_map_put(&gw->addrs, s->addr, as)) {
        free(as);
        as = NULL;
    }
    if (as) as->connections++;
    if (as && as->connections > gw->cfg.connections_per_address) {
        gw->metrics.connections_rejected++;
        gateway_send_error(gw, s, PROTOCOL_E_TOO_MANY_CONNECTIONS,
                           "too many connections from your address");
        gateway_close_soon(s);
    }
    gateway_session_deadline(gw, s);
    return 0;
}

/* Gathers a message's fragments; a whole one goes to chat_flow.c (or is refused here). */
static int on_receive(gateway *gw, struct lws *wsi, session *s, const void *in, size_t len) {
    if (!s->rx_started) {
        s->rx_binary = lws_frame_is_binary(wsi);
        s->rx_started = true;
        /* A message that never finishes (slowloris) closes the connection: the time counts
         * from its first bytes, whatever arrives after. */
        if (!lws_is_final_fragment(wsi))
            lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, gw->cfg.partial_message_timeout_s);
    }
    if (!s->rx_overflow && !s->rx_binary) {
        if (s->rx_len + len > gw->cfg.max_frame_bytes) {
            s->rx_overflow = true;
        } else {
            if (!s->rx && !(s->rx = malloc(gw->cfg.max_frame_bytes + 1))) return -1;
            memcpy(s->rx + s->rx_len, in, len);
            s->rx_len += len;
        }
    }
    if (!lws_is_final_fragment(wsi)) return 0;
    s->rx_started = false;
    if (s->rx_binary) {
        gw->metrics.frames_in++;
        gateway_send_error(gw, s, PROTOCOL_E_BINARY, "only text frames are accepted");
        if (++s->errors >= gw->cfg.abuse_limit) gateway_close_soon(s);
    } else if (s->rx_overflow) {
        gw->metrics.frames_in++;
        char msg[96];
        snprintf(msg, sizeof msg, "messages are limited to %zu bytes", gw->cfg.max_frame_bytes);
        gateway_send_error(gw, s, PROTOCOL_E_TOO_LARGE, msg);
        if (++s->errors >= gw->cfg.abuse_limit) gateway_close_soon(s);
    } else {
        gateway_handle_message(gw, s, s->rx ? s->rx : "", s->rx_len);
    }
    s->rx_len = 0;
    s->rx_overflow = s->rx_binary = false;
    gateway_session_deadline(gw, s);
    return 0;
}

static int on_writeable(gateway *gw, struct lws *wsi, session *s) {
    outframe *f = s->out_head;
    if (f) {
        s->out_head = f->next;
        if (!s->out_head) s->out_tail = NULL;
        s->out_bytes -= f->len;
        int n = lws_write(wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT);
        free(f);
        if (n < 0) return -1;
    }
    if (!s->out_head && s->close_after_flush) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)"bye", 3);
        return -1;
    }
    /* With no stream interval the next round of deltas goes out once the outbox drains. */
    if (!s->out_head && gw->cfg.stream_interval_ms == 0 && s->duel && s->duel->state == DS_STREAMING)
        gateway_stream_step(gw, s);
    if (s->out_head) lws_callback_on_writable(wsi);
    return 0;
}

int gateway_ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len) {
    gateway *gw = lws_context_user(lws_get_context(wsi));
    session **slot = user;
    session *s = slot ? *slot : NULL;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        if (gw->draining || gw->metrics.connections_open >= gw->max_connections ||
            !origin_allowed(gw, wsi)) {
            gw->metrics.connections_rejected++;
            return 1;
        }
        return 0;
    case LWS_CALLBACK_ESTABLISHED: return on_established(gw, wsi, slot);
    case LWS_CALLBACK_RECEIVE:
        if (!s || s->close_after_flush) return 0;
        return on_receive(gw, wsi, s, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE: return s ? on_writeable(gw, wsi, s) : 0;
    case LWS_CALLBACK_TIMER: /* the stream interval between rounds of deltas */
        if (s) gateway_stream_step(gw, s);
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (s) {
            session_destroy(gw, s);
            *slot = NULL;
        }
        return 0;
    default: break;
    }
    return 0;
}
