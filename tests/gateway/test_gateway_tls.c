/* test_gateway_tls.c: wss through libwebsockets' TLS (gateway.tls_cert / gateway.tls_key). The
 * test makes a self-signed certificate for localhost with the openssl CLI, starts a gateway on
 * it, and a client that verifies that certificate (as its only trust anchor, with the host name
 * checked) completes a duel and a vote over wss; the vote reaches Redis. A plain-text upgrade
 * to the same port gets no websocket, and a certificate that cannot be read is refused at
 * start with a message naming the keys. */
#include "gateway_test_util.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

static char dir[512], cert[600], key[600];

static int group_setup(void **state) {
    (void)state;
    test_make_temp_dir("gwtls", dir, sizeof dir);
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout '%s' -out '%s' "
             ">/dev/null 2>&1",
             key, cert);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_gateway_tls: the openssl CLI could not make a certificate "
                        "(ops/lib.sh installs openssl)\n");
        return -1;
    }
    return tu_group_redis_start(state);
}

/* ws_client's TLS transport. */
static int tls_fill(ws_client *c, int timeout_ms) {
    SSL *ssl = c->io;
    if (SSL_pending(ssl) == 0) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) == 0) return -1;
    }
    int r = SSL_read(ssl, c->buf + c->len, (int)(sizeof c->buf - c->len));
    if (r <= 0) return -2;
    c->len += (size_t)r;
    return 0;
}

static int tls_write(ws_client *c, const void *data, size_t n) {
    return SSL_write(c->io, data, (int)n) == (int)n ? 0 : -1;
}

/* Connects with TLS, checking the server's certificate against ours for host "localhost". */
static SSL *tls_connect(SSL_CTX *ctx, ws_client *c, int port) {
    memset(c, 0, sizeof *c);
    c->fd = tu_tcp_connect(port);
    assert_true(c->fd >= 0);
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    SSL_set_fd(ssl, c->fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    assert_int_equal(SSL_set1_host(ssl, "localhost"), 1);
    if (SSL_connect(ssl) != 1) {
        char msg[256];
        ERR_error_string_n(ERR_get_error(), msg, sizeof msg);
        fail_msg("TLS handshake failed: %s", msg);
    }
    assert_int_equal(SSL_get_verify_result(ssl), X509_V_OK);
    c->io = ssl;
    c->fill = tls_fill;
    c->write = tls_write;
    return ssl;
}

static void test_duel_and_vote_over_wss(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    snprintf(cfg.tls_cert, sizeof cfg.tls_cert, "%s", cert);
    snprintf(cfg.tls_key, sizeof cfg.tls_key, "%s", key);
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, cert, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    ws_client c;
    SSL *ssl = tls_connect(ctx, &c, g.port);
    char origin[64];
    snprintf(origin, sizeof origin, "Origin: https://localhost:%d\r\n", g.port);
    assert_int_equal(ws_upgrade(&c, g.port, origin), 101);
    char conv[33];
    ws_hello(&c, NULL, conv);
    tu_duel d;
    ws_ask_duel(&c, "is this line private?", &d);
    assert_true(d.id[0] && d.a[0] && d.b[0]);
    assert_false(ws_vote(&c, d.id, "b")); /* stored in Redis, not spilled */
    assert_int_equal(tu_redis_int(&tu_group_redis, "XLEN " GATEWAY_TEST_VOTE_STREAM), 1);
    tu_duel_free(&d);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    ws_close(&c);
    SSL_CTX_free(ctx);

    /* Plain text to the TLS port: no websocket. */
    ws_client plain;
    assert_true(ws_connect(&plain, g.port, NULL) != 101);
    ws_close(&plain);
    tu_gateway_stop(&g);

    /* A key that is not there: refused at start, naming the keys. */
    snprintf(cfg.tls_key, sizeof cfg.tls_key, "%s/missing.pem", dir);
    duel_backend backend;
    backend_test_config bcfg = {.step_delay_ms = 0, .queue_capacity = 16};
    assert_int_equal(backend_test_create(&bcfg, &backend, NULL), 0);
    gateway *gw = NULL;
    duel_error err = {0};
    assert_int_not_equal(gateway_create(&cfg, &backend, &gw, &err), 0);
    assert_null(gw);
    assert_non_null(strstr(err.message, "gateway.tls_key"));
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duel_and_vote_over_wss),
    };
    return cmocka_run_group_tests(tests, group_setup, tu_group_redis_stop);
}
