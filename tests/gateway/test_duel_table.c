/* test_duel_table.c: the duel table's byte budget (issue 21: finished duels nobody votes on held
 * ~14 KB each for an hour, 1.4 GB at the max_duels cap): finished duels holding more than
 * max_bytes are forgotten oldest first, the newest stay votable, a vote frees all but the
 * tombstone, and the bytes counted go back to zero when every duel has expired. */
#include "test_helpers.h"

#include <stdlib.h>
#include <string.h>

#include "duel_table.h"

/* A result of about the shipped model's size: 8 candidates of 32 tokens, 640-dim features. */
static duel_backend_result *fake_result(void) {
    duel_backend_result *r = calloc(1, sizeof *r);
    r->num_candidates = 8;
    r->d_feat = 640;
    r->num_heads = 20;
    r->features = calloc(8 * 640, sizeof(float));
    r->rewards = calloc(8 * 20, sizeof(float));
    r->cand_tokens = calloc(8 * 32, sizeof(int32_t));
    r->n_cand_tokens = 8 * 32;
    r->cand_offsets = calloc(9, sizeof(int32_t));
    r->prompt_tokens = calloc(40, sizeof(int32_t));
    r->n_prompt_tokens = 40;
    r->text_a = strdup("an answer");
    r->len_a = 9;
    r->text_b = strdup("another answer");
    r->len_b = 14;
    r->strategy = strdup("ee_ts");
    return r;
}

static duel_rec *finished_duel(duel_table *t, double now) {
    duel_rec *d = duel_table_add(t, "0123456789abcdef0123456789abcdef", 1, strdup("a question"), -1, now);
    assert_non_null(d);
    assert_true(duel_table_start_streaming(d, fake_result()));
    duel_table_finish(t, d, now);
    return d;
}

static void test_byte_budget(void **state) {
    (void)state;
    duel_table t;
    duel_table_init(&t);
    duel_rec *first = finished_duel(&t, 1.0);
    size_t one = t.finished_bytes;
    assert_true(one > 8 * 640 * 4); /* the features alone */
    char first_id[PROTOCOL_ID_LEN + 1], ids[20][PROTOCOL_ID_LEN + 1];
    memcpy(first_id, first->id, sizeof first_id);
    for (int i = 0; i < 20; i++) memcpy(ids[i], finished_duel(&t, 2.0 + i)->id, sizeof ids[i]);
    assert_int_equal(t.finished_bytes, 21 * one);
    /* Room for five: the sixteen oldest go, whatever max_duels and the retention say. */
    duel_table_expire(&t, 30.0, 3600, 100000, 5 * one);
    assert_int_equal(t.finished, 5);
    assert_true(t.finished_bytes <= 5 * one);
    assert_null(duel_table_find(&t, first_id));
    for (int i = 0; i < 15; i++) assert_null(duel_table_find(&t, ids[i]));
    for (int i = 15; i < 20; i++) assert_non_null(duel_table_find(&t, ids[i]));
    /* A vote frees the candidates: the tombstone is small. */
    duel_rec *voted = duel_table_find(&t, ids[19]);
    duel_table_mark_voted(&t, voted, 31.0);
    assert_true(t.finished_bytes < 4 * one + one / 4);
    /* Past the retention every one goes, and nothing is left counted. */
    duel_table_expire(&t, 10000.0, 3600, 100000, 5 * one);
    assert_int_equal(t.finished, 0);
    assert_int_equal(t.finished_bytes, 0);
    duel_table_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_byte_budget)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
