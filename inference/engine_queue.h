/* engine_queue.h: a thread-safe FIFO of pointers (pthread mutex + condition variable), how the
 * engine thread and its callers talk: callers push commands, the engine pushes events. Any
 * number of producers and consumers. Ownership of an item passes with it: whoever pops it owns
 * it. Unbounded unless created with a capacity. After engine_queue_close, pushes fail and pops
 * drain what is left, then return nothing at once. */
#ifndef DUEL_ENGINE_QUEUE_H
#define DUEL_ENGINE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

typedef struct engine_queue engine_queue;

/* capacity 0: unbounded. DUEL_ENOMEM. */
int engine_queue_create(size_t capacity, engine_queue **out, duel_error *err);
/* Frees the queue (items still inside are not freed: drain first). NULL is a no-op. */
void engine_queue_destroy(engine_queue *q);

/* Appends item (non-NULL). DUEL_ELIMIT when a bounded queue is full, DUEL_EINVAL when closed or
 * item is NULL, DUEL_ENOMEM. Never blocks. */
int engine_queue_push(engine_queue *q, void *item, duel_error *err);

/* Removes the oldest item into *item. Waits up to timeout_seconds (< 0: forever, 0: not at
 * all) for one; *item is NULL when none came in time or the queue is closed and empty. */
void engine_queue_pop(engine_queue *q, double timeout_seconds, void **item);

/* Wakes every waiter; later pushes fail. */
void engine_queue_close(engine_queue *q);
bool engine_queue_is_closed(engine_queue *q);

#endif
