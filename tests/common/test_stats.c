/* test_stats.c: duel:stats entries and their aggregation (common/stats.c). Histogram quantiles
 * against the exact quantile of sorted random data (within one bucket, NaN never counted), merges
 * equal to adding everything to one histogram; an entry written and decoded back unchanged;
 * every malformed entry refused with a message; the view: two instances' entries summed per step,
 * totals over the window, old entries outside the ring dropped, an instance whose entries stop
 * shown stale, the regret trend's sign. */
#include <jansson.h>

#include "rng.h"
#include "stats.h"
#include "test_helpers.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_hist_quantiles(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    enum { N = 5000 };
    static double values[N];
    stats_hist h = {0}, a = {0}, b = {0};
    for (int i = 0; i < N; i++) {
        /* log-uniform over 1e-3 .. 1e2: every decade used */
        values[i] = pow(10.0, -3.0 + 5.0 * duel_rng_uniform(&rng));
        stats_hist_add(&h, values[i]);
        stats_hist_add(i % 2 ? &a : &b, values[i]);
    }
    stats_hist_add(&h, NAN); /* not counted */
    stats_hist_add(&h, INFINITY);
    assert_int_equal(h.n, N);
    qsort(values, N, sizeof values[0], cmp_double);
    const double step = pow(10.0, 1.0 / STATS_HIST_PER_DECADE);
    const double qs[] = {0.05, 0.5, 0.9, 0.95, 0.99};
    for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
        double exact = values[(size_t)(qs[k] * N) - 1];
        double got = stats_hist_quantile(&h, qs[k]);
        if (!(got >= exact / step && got <= exact * step))
            fail_msg("q%.2f: %g, exact %g (more than one bucket apart)", qs[k], got, exact);
    }
    double sum = 0;
    for (int i = 0; i < N; i++) sum += values[i];
    assert_true(fabs(h.sum - sum) <= 1e-9 * sum);
    stats_hist_merge(&a, &b);
    assert_memory_equal(a.counts, h.counts, sizeof h.counts);
    assert_int_equal(a.n, h.n);
    stats_hist empty = {0};
    assert_true(isnan(stats_hist_quantile(&empty, 0.5)));
    /* zero and negative values land in the first bucket; huge ones in the last */
    stats_hist z = {0};
    stats_hist_add(&z, 0);
    stats_hist_add(&z, -3);
    stats_hist_add(&z, 1e9);
    assert_int_equal(z.counts[0], 2);
    assert_int_equal(z.counts[STATS_HIST_BUCKETS - 1], 1);
    assert_true(stats_hist_quantile(&z, 0.5) <= STATS_HIST_LOW);
    assert_true(isinf(stats_hist_upper(STATS_HIST_BUCKETS - 1)));
}

/* Fields of an entry as XADD would write them. */
static size_t entry_fields(const char *instance, const char *role, const char *ts,
                           const char *interval, const char *data, stats_field *f) {
    const char *pairs[] = {"instance", instance, "role", role, "ts_ms", ts, "interval_ms", interval, "data", data};
    size_t n = 0;
    for (size_t i = 0; i < 10; i += 2)
        if (pairs[i + 1]) {
            f[n] = (stats_field){pairs[i], strlen(pairs[i]), pairs[i + 1], strlen(pairs[i + 1])};
            n++;
        }
    return n;
}

static void sample_serving(stats_serving *s, double regret, uint64_t duels) {
    memset(s, 0, sizeof *s);
    s->version = 3;
    s->tokens_per_s = 12.5;
    s->queue_depth = 2;
    s->redis_up = true;
    stats_group *g = stats_serving_group(s, "v000003", "ee_ts");
    for (uint64_t i = 0; i < duels; i++) {
        g->duels++;
        stats_hist_add(&g->regret, regret);
        stats_hist_add(&g->disagree, 0.2);
        stats_hist_add(&g->time_to_duel, 0.5);
        stats_hist_add(&g->time_to_first_delta, 0.6);
    }
    g->votes[STATS_VOTE_A] = 2;
    g->votes[STATS_VOTE_TIE] = 1;
    g->agree = 1;
    g->agree_n = 2;
    stats_serving_error(s, "rate_limited");
    stats_serving_error(s, "rate_limited");
    stats_serving_error(s, "busy");
}

static void decode_ok(const char *instance, const char *role, int64_t ts, const char *data,
                      stats_entry *e) {
    char t[32];
    snprintf(t, sizeof t, "%lld", (long long)ts);
    stats_field f[5];
    size_t n = entry_fields(instance, role, t, "5000", data, f);
    duel_error err = {0};
    if (stats_entry_decode(f, n, e, &err)) fail_msg("%s", err.message);
}

static void test_entry_round_trip(void **state) {
    (void)state;
    stats_serving s;
    sample_serving(&s, 0.3, 4);
    s.publish_to_serve_s = 1.25;
    s.vote_to_serving_s = NAN; /* a snapshot whose meta.json has no votes_mean_ms */
    char *text = stats_serving_json(&s);
    assert_non_null(text);
    stats_entry *e = malloc(sizeof *e);
    decode_ok("serve@host:8080", STATS_ROLE_SERVING, 1700000000000, text, e);
    free(text);
    assert_true(e->serving.publish_to_serve_s == 1.25);
    assert_true(isnan(e->serving.vote_to_serving_s));
    s.vote_to_serving_s = 6.5;
    text = stats_serving_json(&s);
    decode_ok("serve@host:8080", STATS_ROLE_SERVING, 1700000000000, text, e);
    free(text);
    assert_true(e->serving.vote_to_serving_s == 6.5);
    /* an entry of an older gateway has neither latency: unknown, not 0 s */
    decode_ok("serve@old:8080", STATS_ROLE_SERVING, 1700000000000, "{\"version\":3,\"queue\":0}", e);
    assert_true(isnan(e->serving.publish_to_serve_s) && isnan(e->serving.vote_to_serving_s));
    text = stats_serving_json(&s);
    decode_ok("serve@host:8080", STATS_ROLE_SERVING, 1700000000000, text, e);
    free(text);
    assert_false(e->trainer);
    assert_string_equal(e->instance, "serve@host:8080");
    assert_int_equal(e->ts_ms, 1700000000000);
    assert_int_equal(e->interval_ms, 5000);
    assert_int_equal(e->serving.version, 3);
    assert_true(e->serving.tokens_per_s == 12.5);
    assert_int_equal(e->serving.n_groups, 1);
    const stats_group *g = &e->serving.groups[0];
    assert_string_equal(g->arm, "v000003");
    assert_int_equal(g->duels, 4);
    assert_int_equal(g->votes[STATS_VOTE_TIE], 1);
    assert_memory_equal(g->regret.counts, s.groups[0].regret.counts, sizeof g->regret.counts);
    assert_int_equal(e->serving.n_errors, 2);
    assert_int_equal(e->serving.errors[0].count, 2);
    assert_int_equal(e->serving.rollout_revision, 0);
    assert_int_equal(g->errors, 0);
    /* the rollout revision served and a group's failed duels (issue 20) travel too */
    s.rollout_revision = 7;
    s.groups[0].errors = 3;
    text = stats_serving_json(&s);
    decode_ok("serve@host:8080", STATS_ROLE_SERVING, 1700000000000, text, e);
    free(text);
    assert_int_equal(e->serving.rollout_revision, 7);
    assert_int_equal(e->serving.groups[0].errors, 3);
    stats_field nf[5];
    size_t nn = entry_fields("serve@x:1", STATS_ROLE_SERVING, "1", "5000",
                             "{\"version\":3,\"queue\":0,\"rollout_revision\":-1}", nf);
    duel_error nerr = {0};
    assert_int_equal(stats_entry_decode(nf, nn, e, &nerr), DUEL_EFORMAT);
    stats_trainer t = {.step = 7, .prefs_applied = 56, .published_version = 2, .batch_size = 8,
                       .lag_entries = 3, .lag_s = 1.5, .loss = 0.69, .erm_loss = 0.7, .kl = 0.01,
                       .grad_norm = 0.4, .lr = 3e-5, .erm_accuracy = 0.6,
                       .vote_to_publish_s = NAN, .vote_to_publish_max_s = NAN};
    text = stats_trainer_json(&t);
    decode_ok("train@host:trainer-1", STATS_ROLE_TRAINER, 1700000000000, text, e);
    free(text);
    assert_true(e->trainer);
    assert_int_equal(e->train.step, 7);
    assert_true(e->train.lr == 3e-5);
    assert_true(isnan(e->train.vote_to_publish_s)); /* NaN travels as null */
    free(e);
}

static void test_malformed_entries_refused(void **state) {
    (void)state;
    stats_serving s;
    sample_serving(&s, 0.3, 2);
    char *good = stats_serving_json(&s);
    struct { const char *instance, *role, *ts, *interval, *data, *needle; } bad[] = {
        {NULL, "serving", "1", "5000", "{}", "instance"},
        {"a b", "serving", "1", "5000", "{}", "plain name"},
        {"<script>", "serving", "1", "5000", "{}", "plain name"},
        {"x", "gateway", "1", "5000", "{}", "role"},
        {"x", "serving", "-1", "5000", "{}", "ts_ms"},
        {"x", "serving", "1", "0", "{}", "interval_ms"},
        {"x", "serving", "1", "5000", "[1]", "not a JSON object"},
        {"x", "serving", "1", "5000", "{\"a\":1,\"a\":2}", "not a JSON object"},
        {"x", "serving", "1", "5000", "{\"queue\":-1}", "sign"},
        {"x", "serving", "1", "5000", "{\"vote_to_serving_s\":-1.5}", "sign"},
        {"x", "serving", "1", "5000", "{\"publish_to_serve_s\":\"2\"}", "type"},
        {"x", "serving", "1", "5000", "{\"groups\":[{\"arm\":\"a\",\"strategy\":\"s\",\"duels\":-1,"
                                      "\"votes\":[0,0,0,0],\"agree\":[0,0]}]}", "group"},
        {"x", "serving", "1", "5000", "{\"groups\":[{\"arm\":\"a\",\"strategy\":\"s\",\"duels\":1,"
                                      "\"votes\":[0,0,0,0],\"agree\":[2,1]}]}", "group"},
        {"x", "serving", "1", "5000", "{\"groups\":[{\"arm\":\"a\",\"strategy\":\"s\",\"duels\":1,"
                                      "\"votes\":[0,0,0,0],\"agree\":[0,0],"
                                      "\"regret\":{\"n\":2,\"sum\":1,\"b\":[[3,1]]}}]}", "group"},
        {"x", "serving", "1", "5000", "{\"groups\":[{\"arm\":\"a\",\"strategy\":\"s\",\"duels\":1,"
                                      "\"votes\":[0,0,0,0],\"agree\":[0,0],"
                                      "\"regret\":{\"n\":1,\"sum\":1,\"b\":[[99,1]]}}]}", "group"},
        {"x", "serving", "1", "5000", "{\"errors\":{\"bad code\":1}}", "error count"},
        {"x", "trainer", "1", "5000", "{\"step\":\"7\"}", "trainer figure"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        stats_field f[5];
        size_t n = entry_fields(bad[i].instance, bad[i].role, bad[i].ts, bad[i].interval, bad[i].data, f);
        stats_entry *e = malloc(sizeof *e);
        duel_error err = {0};
        int rc = stats_entry_decode(f, n, e, &err);
        free(e);
        if (rc != DUEL_EFORMAT) fail_msg("case %zu accepted", i);
        if (!strstr(err.message, bad[i].needle))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.message, bad[i].needle);
    }
    /* 17 groups: more than an entry may hold */
    json_t *o = json_loads(good, 0, NULL);
    json_t *groups = json_object_get(o, "groups");
    while (json_array_size(groups) <= STATS_MAX_GROUPS) json_array_append(groups, json_array_get(groups, 0));
    char *many = json_dumps(o, JSON_COMPACT);
    stats_field f[5];
    size_t n = entry_fields("x", "serving", "1", "5000", many, f);
    stats_entry *e = malloc(sizeof *e);
    duel_error err = {0};
    assert_int_equal(stats_entry_decode(f, n, e, &err), DUEL_EFORMAT);
    free(e);
    free(many);
    json_decref(o);
    free(good);
}

static json_t *render(const stats_view *v, int window_s, int64_t now) {
    json_t *o = stats_view_render(v, window_s, now);
    assert_non_null(o);
    return o;
}

static double last_number(const json_t *arr) {
    for (size_t i = json_array_size(arr); i-- > 0;)
        if (json_is_number(json_array_get(arr, i))) return json_number_value(json_array_get(arr, i));
    return NAN;
}

static void test_view_aggregates_instances_and_windows(void **state) {
    (void)state;
    stats_view *v = stats_view_create();
    assert_non_null(v);
    stats_entry *e = calloc(1, sizeof *e);
    const int64_t t0 = 1700000000000; /* a multiple of 5 s, 20 s and 480 s */
    /* two gateways, entries 5 s apart for 10 minutes; regret rising over time */
    for (int i = 0; i < 120; i++) {
        for (int gw = 0; gw < 2; gw++) {
            memset(e, 0, sizeof *e);
            snprintf(e->instance, sizeof e->instance, "serve@h:%d", 8080 + gw);
            e->ts_ms = t0 + i * 5000 + 1000;
            e->interval_ms = 5000;
            sample_serving(&e->serving, 0.1 + 0.005 * i, 3);
            /* gateway 1 serves snapshots later; gateway 0 has installed none */
            e->serving.publish_to_serve_s = gw ? 1.5 : NAN;
            e->serving.vote_to_serving_s = gw ? 7.0 + 0.01 * i : NAN;
            stats_view_add(v, e);
        }
    }
    /* the trainer stopped writing 60 s before now */
    memset(e, 0, sizeof *e);
    snprintf(e->instance, sizeof e->instance, "train@h:trainer-1");
    e->trainer = true;
    e->ts_ms = t0 + 540 * 1000;
    e->interval_ms = 5000;
    e->train.step = 9;
    e->train.lag_entries = 4;
    e->train.vote_to_publish_s = NAN;
    e->train.vote_to_publish_max_s = NAN;
    stats_view_add(v, e);
    const int64_t now = t0 + 600 * 1000;
    json_t *o = render(v, 900, now);
    assert_int_equal(json_integer_value(json_object_get(o, "window_s")), 900);
    assert_int_equal(json_array_size(json_object_get(o, "t")), STATS_VIEW_POINTS);
    json_t *tot = json_object_get(o, "totals");
    assert_int_equal(json_integer_value(json_object_get(tot, "duels")), 2 * 120 * 3);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(tot, "votes"), "a")), 2 * 120 * 2);
    assert_true(json_number_value(json_object_get(tot, "agree")) == 0.5);
    assert_true(json_number_value(json_object_get(tot, "regret_trend_per_h")) > 0);
    /* one 5 s step holds both gateways' entries: 6 duels, 1.2 duels/s */
    json_t *series = json_object_get(o, "series");
    assert_true(last_number(json_object_get(series, "duels_per_s")) == 6.0 / 5.0);
    assert_true(fabs(last_number(json_object_get(series, "tokens_per_s")) - 25.0) < 1e-9);
    /* vote to serving: the slowest gateway's, a gateway without a snapshot not counted as 0 */
    assert_true(last_number(json_object_get(series, "vote_to_serving_s")) == 7.0 + 0.01 * 119);
    assert_true(last_number(json_object_get(series, "publish_to_serve_s")) == 1.5);
    json_t *groups = json_object_get(o, "groups");
    assert_int_equal(json_array_size(groups), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(groups, 0), "strategy")), "ee_ts");
    /* instances: both gateways healthy, the trainer stale */
    json_t *instances = json_object_get(o, "instances");
    assert_int_equal(json_array_size(instances), 3);
    size_t i;
    json_t *in;
    int stale = 0;
    json_array_foreach(instances, i, in) {
        bool is_trainer = strcmp(json_string_value(json_object_get(in, "role")), "trainer") == 0;
        if (strcmp(json_string_value(json_object_get(in, "instance")), "serve@h:8081") == 0)
            assert_true(json_number_value(json_object_get(in, "vote_to_serving_s")) == 7.0 + 0.01 * 119);
        if (strcmp(json_string_value(json_object_get(in, "instance")), "serve@h:8080") == 0)
            assert_true(json_is_null(json_object_get(in, "vote_to_serving_s")));
        assert_int_equal(json_is_true(json_object_get(in, "stale")), is_trainer);
        stale += json_is_true(json_object_get(in, "stale"));
    }
    assert_int_equal(stale, 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "trainer"), "step")), 9);
    json_decref(o);
    /* the 1 h and 24 h windows hold the same totals */
    for (int w = 1; w < STATS_VIEW_WINDOWS; w++) {
        o = render(v, stats_view_windows_s[w], now);
        tot = json_object_get(o, "totals");
        assert_int_equal(json_integer_value(json_object_get(tot, "duels")), 2 * 120 * 3);
        json_decref(o);
    }
    /* 20 minutes later the 15 min window has none of it, the 1 h window all */
    o = render(v, 900, now + 20 * 60 * 1000);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "totals"), "duels")), 0);
    assert_true(json_is_null(json_object_get(json_object_get(o, "totals"), "regret_mean")));
    json_decref(o);
    o = render(v, 3600, now + 20 * 60 * 1000);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "totals"), "duels")), 720);
    json_decref(o);
    /* an entry older than a ring reaches is dropped there, kept where it fits */
    memset(e, 0, sizeof *e);
    snprintf(e->instance, sizeof e->instance, "serve@h:8080");
    e->ts_ms = t0 - 2 * 3600 * 1000;
    e->interval_ms = 5000;
    sample_serving(&e->serving, 0.1, 5);
    stats_view_add(v, e);
    o = render(v, 3600, now);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "totals"), "duels")), 720);
    json_decref(o);
    o = render(v, 86400, now);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "totals"), "duels")), 725);
    json_decref(o);
    assert_null(stats_view_render(v, 60, now)); /* not a window */
    free(e);
    stats_view_free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_quantiles),
        cmocka_unit_test(test_entry_round_trip),
        cmocka_unit_test(test_malformed_entries_refused),
        cmocka_unit_test(test_view_aggregates_instances_and_windows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
