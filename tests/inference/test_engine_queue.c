/* test_engine_queue.c: inference/engine_queue.c, the FIFO between the engine thread and its
 * callers: order kept across the ring's growth and wrap-around; a bounded queue refuses with
 * DUEL_ELIMIT and takes again after a pop; NULL items and pushes after close are refused; a
 * closed queue still drains, then pops return at once; a timed pop on an empty queue returns
 * NULL after about its timeout, and a waiting pop wakes for a push from another thread and for
 * close; two producers and two consumers lose and duplicate nothing. */
#include "test_helpers.h"

#include <pthread.h>
#include <unistd.h>

#include "engine_queue.h"
#include "timer.h"

#define ITEM(i) ((void *)(uintptr_t)((i) + 1)) /* non-NULL items that carry their number */
#define NUMBER(p) ((int)((uintptr_t)(p) - 1))

static void test_order_growth_and_wrap(void **state) {
    (void)state;
    engine_queue *q = NULL;
    duel_error err = {0};
    assert_int_equal(engine_queue_create(0, &q, &err), 0);
    int next_in = 0, next_out = 0;
    /* Interleaved pushes and pops move the head around the ring while it grows past 16. */
    for (int round = 0; round < 50; round++) {
        for (int k = 0; k < 7; k++) assert_int_equal(engine_queue_push(q, ITEM(next_in++), &err), 0);
        for (int k = 0; k < 5; k++) {
            void *it = NULL;
            engine_queue_pop(q, 0, &it);
            assert_non_null(it);
            assert_int_equal(NUMBER(it), next_out++);
        }
    }
    for (void *it = NULL;; next_out++) {
        engine_queue_pop(q, 0, &it);
        if (!it) break;
        assert_int_equal(NUMBER(it), next_out);
    }
    assert_int_equal(next_out, next_in);
    assert_int_equal(engine_queue_push(q, NULL, &err), DUEL_EINVAL);
    engine_queue_destroy(q);
    engine_queue_destroy(NULL);
}

static void test_bounded_and_closed(void **state) {
    (void)state;
    engine_queue *q = NULL;
    duel_error err = {0};
    assert_int_equal(engine_queue_create(3, &q, &err), 0);
    for (int i = 0; i < 3; i++) assert_int_equal(engine_queue_push(q, ITEM(i), &err), 0);
    assert_int_equal(engine_queue_push(q, ITEM(3), &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "full"));
    void *it = NULL;
    engine_queue_pop(q, 0, &it);
    assert_int_equal(NUMBER(it), 0);
    assert_int_equal(engine_queue_push(q, ITEM(3), &err), 0);
    assert_false(engine_queue_is_closed(q));
    engine_queue_close(q);
    assert_true(engine_queue_is_closed(q));
    assert_int_equal(engine_queue_push(q, ITEM(4), &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "closed"));
    for (int i = 1; i <= 3; i++) { /* what was in it still comes out, in order */
        engine_queue_pop(q, -1, &it);
        assert_int_equal(NUMBER(it), i);
    }
    double t0 = duel_time_seconds();
    engine_queue_pop(q, -1, &it); /* closed and empty: at once, even with no timeout */
    assert_null(it);
    assert_true(duel_time_seconds() - t0 < 5);
    engine_queue_destroy(q);
}

typedef struct pusher {
    engine_queue *q;
    int first, count;
    double delay_s;
} pusher;

static void *push_thread(void *arg) {
    pusher *p = arg;
    if (p->delay_s > 0) usleep((useconds_t)(p->delay_s * 1e6));
    for (int i = 0; i < p->count; i++)
        if (engine_queue_push(p->q, ITEM(p->first + i), NULL)) return (void *)1;
    return NULL;
}

static void *close_thread(void *arg) {
    usleep(50000);
    engine_queue_close(arg);
    return NULL;
}

static void test_timed_and_waking_pops(void **state) {
    (void)state;
    engine_queue *q = NULL;
    duel_error err = {0};
    assert_int_equal(engine_queue_create(0, &q, &err), 0);
    void *it = ITEM(0);
    double t0 = duel_time_seconds();
    engine_queue_pop(q, 0.05, &it);
    double waited = duel_time_seconds() - t0;
    assert_null(it);
    assert_true(waited >= 0.045); /* not before its timeout */
    /* A pop waiting forever wakes for another thread's push, then for a close. */
    pusher p = {.q = q, .first = 7, .count = 1, .delay_s = 0.05};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, push_thread, &p), 0);
    engine_queue_pop(q, -1, &it);
    assert_int_equal(NUMBER(it), 7);
    pthread_join(t, NULL);
    assert_int_equal(pthread_create(&t, NULL, close_thread, q), 0);
    engine_queue_pop(q, -1, &it);
    assert_null(it);
    pthread_join(t, NULL);
    engine_queue_destroy(q);
}

typedef struct popper {
    engine_queue *q;
    int *seen; /* [2 * PER] times each item was popped, under lock */
    pthread_mutex_t *lock;
    int got;
} popper;

static void *pop_thread(void *arg) {
    popper *c = arg;
    for (;;) {
        void *it = NULL;
        engine_queue_pop(c->q, -1, &it);
        if (!it) return NULL; /* closed and drained */
        pthread_mutex_lock(c->lock);
        c->seen[NUMBER(it)]++;
        pthread_mutex_unlock(c->lock);
        c->got++;
    }
}

static void test_producers_and_consumers(void **state) {
    (void)state;
    enum { PER = 20000 };
    engine_queue *q = NULL;
    duel_error err = {0};
    assert_int_equal(engine_queue_create(0, &q, &err), 0);
    int *seen = calloc(2 * PER, sizeof *seen);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pusher pp[2] = {{q, 0, PER, 0}, {q, PER, PER, 0}};
    popper cc[2] = {{q, seen, &lock, 0}, {q, seen, &lock, 0}};
    pthread_t tp[2], tc[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_create(&tc[i], NULL, pop_thread, &cc[i]), 0);
        assert_int_equal(pthread_create(&tp[i], NULL, push_thread, &pp[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        void *failed = NULL;
        pthread_join(tp[i], &failed);
        assert_null(failed);
    }
    engine_queue_close(q);
    for (int i = 0; i < 2; i++) pthread_join(tc[i], NULL);
    assert_int_equal(cc[0].got + cc[1].got, 2 * PER);
    for (int i = 0; i < 2 * PER; i++)
        if (seen[i] != 1) fail_msg("item %d popped %d times", i, seen[i]);
    free(seen);
    engine_queue_destroy(q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_growth_and_wrap),
        cmocka_unit_test(test_bounded_and_closed),
        cmocka_unit_test(test_timed_and_waking_pops),
        cmocka_unit_test(test_producers_and_consumers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
