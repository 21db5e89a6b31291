/* engine_queue.c: the thread-safe pointer FIFO of engine_queue.h: a growable ring buffer under
 * one mutex, one condition variable (on CLOCK_MONOTONIC, so that a wall-clock jump does not
 * stretch a timed wait) signalled on push and broadcast on close. */
#include "engine_queue.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct engine_queue {
    pthread_mutex_t lock;
    pthread_cond_t nonempty;
    void **items;      /* ring of cap slots */
    size_t cap, head, count, limit;
    bool closed;
};

int engine_queue_create(size_t capacity, engine_queue **out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "engine_queue_create: NULL argument");
    *out = NULL;
    engine_queue *q = calloc(1, sizeof *q);
    if (!q) return duel_error_set(err, DUEL_ENOMEM, "out of memory for a queue");
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&q->lock, NULL) || pthread_cond_init(&q->nonempty, &attr)) {
        pthread_condattr_destroy(&attr);
        free(q);
        return duel_error_set(err, DUEL_ENOMEM, "queue: cannot create mutex/condition");
    }
    pthread_condattr_destroy(&attr);
    q->limit = capacity;
    *out = q;
    return DUEL_OK;
}

void engine_queue_destroy(engine_queue *q) {
    if (!q) return;
    pthread_cond_destroy(&q->nonempty);
    pthread_mutex_destroy(&q->lock);
    free(q->items);
    free(q);
}

int engine_queue_push(engine_queue *q, void *item, duel_error *err) {
    if (!q || !item) return duel_error_set(err, DUEL_EINVAL, "engine_queue_push: NULL argument");
    pthread_mutex_lock(&q->lock);
    int rc = DUEL_OK;
    if (q->closed) {
        rc = duel_error_set(err, DUEL_EINVAL, "queue is closed");
    } else if (q->limit && q->count >= q->limit) {
        rc = duel_error_set(err, DUEL_ELIMIT, "queue is full (%zu items)", q->limit);
    } else {
        if (q->count == q->cap) {
            size_t cap = q->cap ? q->cap * 2 : 16;
            void **grown = malloc(cap * sizeof *grown);
            if (!grown) {
                rc = duel_error_set(err, DUEL_ENOMEM, "out of memory growing a queue");
                goto out;
            }
            for (size_t i = 0; i < q->count; i++) grown[i] = q->items[(q->head + i) % q->cap];
            free(q->items);
            q->items = grown;
            q->cap = cap;
            q->head = 0;
        }
        q->items[(q->head + q->count) % q->cap] = item;
        q->count++;
        pthread_cond_signal(&q->nonempty);
    }
out:
    pthread_mutex_unlock(&q->lock);
    return rc;
}

void engine_queue_pop(engine_queue *q, double timeout_seconds, void **item) {
    *item = NULL;
    if (!q) return;
    pthread_mutex_lock(&q->lock);
    if (q->count == 0 && !q->closed && timeout_seconds != 0) {
        if (timeout_seconds < 0) {
            while (q->count == 0 && !q->closed) pthread_cond_wait(&q->nonempty, &q->lock);
        } else {
            struct timespec deadline;
            clock_gettime(CLOCK_MONOTONIC, &deadline);
            double whole = floor(timeout_seconds);
            deadline.tv_sec += (time_t)whole;
            deadline.tv_nsec += (long)((timeout_seconds - whole) * 1e9);
            if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
            }
            while (q->count == 0 && !q->closed)
                if (pthread_cond_timedwait(&q->nonempty, &q->lock, &deadline) == ETIMEDOUT) break;
        }
    }
    if (q->count) {
        *item = q->items[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    pthread_mutex_unlock(&q->lock);
}

void engine_queue_close(engine_queue *q) {
    if (!q) return;
    pthread_mutex_lock(&q->lock);
    q->closed = true;
    pthread_cond_broadcast(&q->nonempty);
    pthread_mutex_unlock(&q->lock);
}

bool engine_queue_is_closed(engine_queue *q) {
    pthread_mutex_lock(&q->lock);
    bool closed = q->closed;
    pthread_mutex_unlock(&q->lock);
    return closed;
}
