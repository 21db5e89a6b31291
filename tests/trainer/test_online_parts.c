/* test_online_parts.c: the online trainer's small parts on their own: stream ids (parse and
 * order, overflow and junk refused), the recent vote ids (a ring: the oldest leaves), the SEA
 * duel store (a ring of owned entries; duels too long for the model are not kept) and its
 * synthetic count, and the batch-cut log (replayed cuts from the checkpoint's step on, a torn
 * line or a gap ends them, the rewrite keeps exactly them, a checkpoint empties the log once
 * they are used). */
#include "test_helpers.h"

#include "batch_cuts.h"
#include "durable_file.h"
#include "file_map.h"
#include "online_test_env.h"
#include "sea_store.h"
#include "stream_id.h"
#include "vote_dedup.h"

static void test_stream_ids(void **state) {
    (void)state;
    uint64_t ms = 0, seq = 0;
    assert_int_equal(stream_id_parse("1700000000000-7", &ms, &seq), 0);
    assert_true(ms == 1700000000000ull && seq == 7);
    assert_int_equal(stream_id_parse("18446744073709551615-18446744073709551615", &ms, &seq), 0);
    assert_true(ms == UINT64_MAX && seq == UINT64_MAX);
    const char *bad[] = {"", "-", "1", "1-", "-1", "1-2-3", "1-2 ", " 1-2", "a-1", "1-b",
                         "18446744073709551616-0", "0-18446744073709551616", "1--2", "+1-2"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (stream_id_parse(bad[i], &ms, &seq) != DUEL_EINVAL) fail_msg("'%s' parsed", bad[i]);
    /* numeric, not lexical, order */
    assert_int_equal(stream_id_compare("9-0", "10-0"), -1);
    assert_int_equal(stream_id_compare("10-0", "9-5"), 1);
    assert_int_equal(stream_id_compare("5-10", "5-9"), 1);
    assert_int_equal(stream_id_compare("5-9", "5-9"), 0);
}

static void test_vote_dedup(void **state) {
    (void)state;
    vote_dedup d;
    assert_int_equal(vote_dedup_init(&d, 0, NULL), DUEL_EINVAL);
    assert_int_equal(vote_dedup_init(&d, 3, NULL), 0);
    const char *ids[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 3; i++) vote_dedup_add(&d, ids[i]);
    assert_true(vote_dedup_contains(&d, "a") && vote_dedup_contains(&d, "c"));
    vote_dedup_add(&d, ids[3]); /* "a" leaves */
    assert_false(vote_dedup_contains(&d, "a"));
    assert_true(vote_dedup_contains(&d, "d"));
    assert_int_equal(d.count, 3);
    assert_string_equal(vote_dedup_at(&d, 0), "b"); /* oldest first */
    assert_string_equal(vote_dedup_at(&d, 2), "d");
    vote_dedup_clear(&d);
    assert_false(vote_dedup_contains(&d, "d"));
    vote_dedup_free(&d);
}

static void test_sea_store(void **state) {
    (void)state;
    sea_store s;
    assert_int_equal(sea_store_init(&s, 3, 20, NULL), 0);
    for (int serial = 0; serial < 5; serial++) {
        duel_rng rng;
        duel_rng_seed(&rng, (uint64_t)serial);
        vote_entry e;
        online_test_entry(&rng, serial, VOTE_CHOICE_A, &e);
        if (serial == 2) e.n_prompt_tokens = 19; /* with any candidate, past the 20 positions */
        sea_store_push(&s, &e);
        assert_null(e.prompt_tokens); /* taken (or freed) either way */
        vote_entry_free(&e);
    }
    assert_int_equal(s.count, 3); /* 0 and 1 left as 3 and 4 came; 2 was never kept */
    assert_string_equal(sea_store_at(&s, 0)->vote_id, "mix-000001");
    assert_string_equal(sea_store_at(&s, 1)->vote_id, "mix-000003");
    assert_string_equal(sea_store_at(&s, 2)->vote_id, "mix-000004");
    sea_store_free(&s);
    /* S = floor(P (1 - gamma) / gamma + 1/2) after burn-in, capped */
    assert_int_equal(sea_synthetic_count(8, 0.7, 5, 100, 100, 4096), 3);
    assert_int_equal(sea_synthetic_count(8, 0.7, 5, 99, 100, 4096), 0); /* before burn-in */
    assert_int_equal(sea_synthetic_count(8, 0.7, 0, 100, 100, 4096), 0); /* empty store */
    assert_int_equal(sea_synthetic_count(8, 1.0, 5, 100, 100, 4096), 0);
    assert_int_equal(sea_synthetic_count(4096, 0.01, 5, 100, 0, 4096), 4096);
}

/* The replayed cuts a log with these lines gives a checkpoint at step `step`. */
static void cuts_from(const char *dir, const char *log_text, int64_t step, batch_cuts *b) {
    char path[700];
    snprintf(path, sizeof path, "%s/batch_cuts.log", dir);
    test_write_file(path, log_text, strlen(log_text));
    duel_error err = {0};
    if (batch_cuts_open(b, dir, step, NULL, &err)) fail_msg("%s", err.message);
}

static char *log_text(const char *dir) {
    char path[700], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/batch_cuts.log", dir);
    assert_int_equal(duel_file_read_all(path, 1 << 20, &text, &len, NULL), 0);
    return text;
}

static void test_batch_cuts(void **state) {
    (void)state;
    char dir[512];
    test_make_temp_dir("batch-cuts", dir, sizeof dir);
    batch_cuts b;
    /* steps 3 and 4 are in the checkpoint; 5, 6 replay; the torn 7 and what follows do not */
    cuts_from(dir, "3 1-4\n4 1-8\n5 1-12\n6 1-20\n7 1-2", 4, &b);
    assert_int_equal(b.num_replay, 2);
    assert_string_equal(batch_cuts_next(&b), "1-12");
    char *text = log_text(dir);
    assert_string_equal(text, "5 1-12\n6 1-20\n"); /* rewritten with exactly those */
    free(text);
    duel_error err = {0};
    assert_int_equal(batch_cuts_record(&b, 5, "1-12", &err), 0); /* replayed: consumed, not appended */
    assert_int_equal(batch_cuts_checkpointed(&b, &err), 0);     /* one left: the log stays */
    text = log_text(dir);
    assert_string_equal(text, "5 1-12\n6 1-20\n");
    free(text);
    assert_int_equal(batch_cuts_record(&b, 6, "1-20", &err), 0);
    assert_null(batch_cuts_next(&b));
    assert_int_equal(batch_cuts_record(&b, 7, "1-24", &err), 0); /* a new cut: appended */
    assert_int_equal(batch_cuts_sync(&b, NULL, &err), 0);
    text = log_text(dir);
    assert_string_equal(text, "5 1-12\n6 1-20\n7 1-24\n");
    free(text);
    assert_int_equal(batch_cuts_checkpointed(&b, &err), 0);
    text = log_text(dir);
    assert_string_equal(text, "");
    free(text);
    batch_cuts_close(&b);
    /* a gap (6 missing) ends the replay; a bad id too; no log at all: none */
    cuts_from(dir, "5 1-12\n7 1-20\n", 4, &b);
    assert_int_equal(b.num_replay, 1);
    batch_cuts_close(&b);
    cuts_from(dir, "5 1-12\n6 x-20\n7 1-24\n", 4, &b);
    assert_int_equal(b.num_replay, 1);
    batch_cuts_close(&b);
    char path[700];
    snprintf(path, sizeof path, "%s/batch_cuts.log", dir);
    unlink(path);
    assert_int_equal(batch_cuts_open(&b, dir, 0, NULL, &err), 0);
    assert_null(batch_cuts_next(&b));
    batch_cuts_close(&b);
    durable_remove_tree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_ids),
        cmocka_unit_test(test_vote_dedup),
        cmocka_unit_test(test_sea_store),
        cmocka_unit_test(test_batch_cuts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
