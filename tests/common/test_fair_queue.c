/* test_fair_queue.c: fair admission across users (common/fair_queue.c), by the order items
 * come out, with no clock but the queue's own: a newcomer behind a burst waits for one item of
 * each other key, never for the burst (a FIFO would make it wait for all of it); order within a
 * key is arrival order; a removed (cancelled) item never comes out; every item comes out once. */
#include "fair_queue.h"
#include "rng.h"
#include "test_helpers.h"

/* Items are small integers: key * 1000 + index within the key. */
#define ITEM(k, i) ((void *)(uintptr_t)((k) * 1000 + (i) + 1))
#define KEY_OF(p) (((uintptr_t)(p) - 1) / 1000)
#define INDEX_OF(p) (((uintptr_t)(p) - 1) % 1000)

static void test_newcomer_does_not_wait_for_the_burst(void **state) {
    (void)state;
    fair_queue q;
    fair_queue_init(&q);
    /* The burst: 8 addresses with 16 asks each, all queued before the newcomer. */
    for (int i = 0; i < 16; i++)
        for (uint64_t k = 1; k <= 8; k++) assert_int_equal(fair_queue_push(&q, k, ITEM(k, i)), 0);
    /* The server takes one item per tick; the newcomer (key 99) asks at tick 20, when every
     * key of the burst has been served at least once. */
    int newcomer_served_at = -1, tick = 0;
    size_t popped_per_key[100] = {0};
    for (; fair_queue_count(&q) > 0; tick++) {
        if (tick == 20) assert_int_equal(fair_queue_push(&q, 99, ITEM(99, 0)), 0);
        void *it = fair_queue_pop(&q);
        assert_non_null(it);
        uint64_t k = KEY_OF(it);
        assert_int_equal(INDEX_OF(it), popped_per_key[k]); /* arrival order within a key */
        popped_per_key[k]++;
        if (k == 99) newcomer_served_at = tick;
    }
    /* Served at once: a key never served goes before those served already. A FIFO would
     * serve it at tick 128. */
    assert_int_equal(newcomer_served_at, 20);
    assert_int_equal(tick, 129);
    for (uint64_t k = 1; k <= 8; k++) assert_int_equal(popped_per_key[k], 16);
    assert_null(fair_queue_pop(&q));
    fair_queue_free(&q);
}

/* Keys never served yet go in the order of their oldest item: a newcomer asking at tick 5 of
 * the same burst waits for the first items of keys 6, 7 and 8, which came before it, and no
 * more. */
static void test_newcomer_behind_keys_never_served(void **state) {
    (void)state;
    fair_queue q;
    fair_queue_init(&q);
    for (int i = 0; i < 16; i++)
        for (uint64_t k = 1; k <= 8; k++) assert_int_equal(fair_queue_push(&q, k, ITEM(k, i)), 0);
    for (int tick = 0; tick < 5; tick++) assert_int_equal(KEY_OF(fair_queue_pop(&q)), tick + 1);
    assert_int_equal(fair_queue_push(&q, 99, ITEM(99, 0)), 0);
    for (uint64_t k = 6; k <= 8; k++) assert_int_equal(KEY_OF(fair_queue_pop(&q)), k);
    assert_ptr_equal(fair_queue_pop(&q), ITEM(99, 0));
    while (fair_queue_pop(&q)) {}
    fair_queue_free(&q);
}

static void test_keys_take_turns(void **state) {
    (void)state;
    fair_queue q;
    fair_queue_init(&q);
    /* A floods first, then B and C ask: after A's first item the three alternate. */
    for (int i = 0; i < 6; i++) assert_int_equal(fair_queue_push(&q, 1, ITEM(1, i)), 0);
    assert_int_equal(fair_queue_push(&q, 2, ITEM(2, 0)), 0);
    assert_int_equal(fair_queue_push(&q, 2, ITEM(2, 1)), 0);
    assert_int_equal(fair_queue_push(&q, 3, ITEM(3, 0)), 0);
    assert_int_equal(fair_queue_count(&q), 9);
    assert_int_equal(fair_queue_count_key(&q, 1), 6);
    const int want[][2] = {{1, 0}, {2, 0}, {3, 0}, {1, 1}, {2, 1}, {1, 2}, {1, 3}, {1, 4}, {1, 5}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        void *it = fair_queue_pop(&q);
        assert_ptr_equal(it, ITEM(want[i][0], want[i][1]));
    }
    assert_int_equal(fair_queue_count(&q), 0);
    assert_int_equal(fair_queue_count_key(&q, 1), 0);
    /* A key that waited for nothing and comes back goes first again, before a key whose
     * FIFO never emptied. */
    for (int i = 0; i < 3; i++) assert_int_equal(fair_queue_push(&q, 1, ITEM(1, 10 + i)), 0);
    assert_ptr_equal(fair_queue_pop(&q), ITEM(1, 10));
    assert_int_equal(fair_queue_push(&q, 2, ITEM(2, 10)), 0);
    assert_ptr_equal(fair_queue_pop(&q), ITEM(2, 10));
    assert_ptr_equal(fair_queue_pop(&q), ITEM(1, 11));
    fair_queue_free(&q); /* one item left inside: the queue frees only its own memory */
}

static bool is_item(const void *item, void *ctx) { return item == ctx; }
static bool of_key_2(const void *item, void *ctx) {
    (void)ctx;
    return KEY_OF(item) == 2;
}

static void test_remove_cancelled(void **state) {
    (void)state;
    fair_queue q;
    fair_queue_init(&q);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(fair_queue_push(&q, 1, ITEM(1, i)), 0);
        assert_int_equal(fair_queue_push(&q, 2, ITEM(2, i)), 0);
    }
    assert_ptr_equal(fair_queue_remove(&q, is_item, ITEM(1, 1)), ITEM(1, 1)); /* the middle */
    assert_null(fair_queue_remove(&q, is_item, ITEM(1, 1)));                  /* gone */
    assert_ptr_equal(fair_queue_remove(&q, of_key_2, NULL), ITEM(2, 0));      /* the oldest */
    assert_ptr_equal(fair_queue_remove(&q, is_item, ITEM(1, 2)), ITEM(1, 2)); /* the tail */
    assert_int_equal(fair_queue_count(&q), 3);
    assert_ptr_equal(fair_queue_pop(&q), ITEM(1, 0));
    assert_ptr_equal(fair_queue_pop(&q), ITEM(2, 1));
    assert_int_equal(fair_queue_push(&q, 1, ITEM(1, 5)), 0); /* the tail was fixed */
    assert_ptr_equal(fair_queue_pop(&q), ITEM(1, 5));
    assert_ptr_equal(fair_queue_pop(&q), ITEM(2, 2));
    assert_null(fair_queue_pop(&q));
    assert_null(fair_queue_remove(&q, of_key_2, NULL));
    fair_queue_free(&q);
}

/* Random pushes, pops and removes against the rules: each item out once, in arrival order
 * within its key, and no pop ever passes over a key that has waited longer since it was last
 * served (the least-recently-served rule, checked against a model of last service). */
static void test_random_against_model(void **state) {
    (void)state;
    duel_rng r;
    duel_rng_seed(&r, 2112);
    fair_queue q;
    fair_queue_init(&q);
    enum { KEYS = 12 };
    size_t pushed[KEYS] = {0}, next_out[KEYS] = {0}, waiting[KEYS] = {0};
    uint64_t last_served[KEYS] = {0}, clock = 0;
    bool removed[KEYS][1000] = {{false}};
    for (int step = 0; step < 20000; step++) {
        double u = duel_rng_uniform(&r);
        int k = (int)(duel_rng_uniform(&r) * KEYS);
        if (u < 0.5 && pushed[k] < 999) {
            assert_int_equal(fair_queue_push(&q, (uint64_t)k, ITEM(k, pushed[k])), 0);
            pushed[k]++;
            waiting[k]++;
        } else if (u < 0.55 && waiting[k] > 0) {
            /* cancel this key's youngest item */
            size_t i = pushed[k] - 1;
            while (removed[k][i]) i--;
            assert_ptr_equal(fair_queue_remove(&q, is_item, ITEM(k, i)), ITEM(k, i));
            removed[k][i] = true;
            waiting[k]--;
            if (!waiting[k]) last_served[k] = 0; /* the key leaves and forgets */
        } else {
            void *it = fair_queue_pop(&q);
            size_t total = 0;
            for (int j = 0; j < KEYS; j++) total += waiting[j];
            if (!total) {
                assert_null(it);
                continue;
            }
            assert_non_null(it);
            int got = (int)KEY_OF(it);
            while (removed[got][next_out[got]]) next_out[got]++;
            assert_int_equal(INDEX_OF(it), next_out[got]);
            next_out[got]++;
            for (int j = 0; j < KEYS; j++)
                if (waiting[j]) assert_true(last_served[got] <= last_served[j]);
            waiting[got]--;
            last_served[got] = waiting[got] ? ++clock : (++clock, 0);
        }
        size_t total = 0;
        for (int j = 0; j < KEYS; j++) {
            total += waiting[j];
            assert_int_equal(fair_queue_count_key(&q, (uint64_t)j), waiting[j]);
        }
        assert_int_equal(fair_queue_count(&q), total);
    }
    while (fair_queue_pop(&q)) {}
    fair_queue_free(&q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_newcomer_does_not_wait_for_the_burst),
        cmocka_unit_test(test_newcomer_behind_keys_never_served),
        cmocka_unit_test(test_keys_take_turns),
        cmocka_unit_test(test_remove_cancelled),
        cmocka_unit_test(test_random_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
