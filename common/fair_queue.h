/* fair_queue.h: items waiting for a shared server (the engine's admission, the test backend's
 * worker), taken fairly across the keys that asked for them: each key (a user: the gateway's
 * hash of the client's address) has its own FIFO, and the next item is the head of the key
 * served least recently (a key seen for the first time, or again after its queue emptied, comes
 * first; ties go to the older item). So a burst of many items from a few keys waits behind
 * itself, and a key with one item waits at most for one item of each other key already
 * waiting, never for the whole burst. Within a key the order is arrival order.
 *
 * Not thread-safe: its owner serialises (a lock or one thread). Items are the caller's
 * pointers; the queue never frees them. Pop and remove are O(keys waiting). */
#ifndef DUEL_FAIR_QUEUE_H
#define DUEL_FAIR_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fair_queue_node fair_queue_node;

typedef struct fair_queue_flow {
    uint64_t key;
    uint64_t last_served;   /* the queue's clock when this key's item was last popped; 0 never */
    size_t count;
    fair_queue_node *head, *tail;
} fair_queue_flow;

typedef struct fair_queue {
    fair_queue_flow *flows; /* keys with items waiting (a key leaves when its FIFO empties) */
    size_t n_flows, cap_flows;
    size_t count;           /* items waiting, all keys */
    uint64_t clock;         /* pops so far */
    uint64_t arrivals;      /* pushes so far (ties between keys never served go to the older) */
} fair_queue;

void fair_queue_init(fair_queue *q);
/* Frees the queue's own memory; items still inside are not freed (pop them first). */
void fair_queue_free(fair_queue *q);
/* Appends item (non-NULL) to key's FIFO. -1 when out of memory (nothing queued), else 0. */
int fair_queue_push(fair_queue *q, uint64_t key, void *item);
/* The next item by the rule above, removed; NULL when empty. */
void *fair_queue_pop(fair_queue *q);
/* Removes and returns the oldest item for which match(item, ctx) is true (any key); NULL when
 * none matches. */
void *fair_queue_remove(fair_queue *q, bool (*match)(const void *item, void *ctx), void *ctx);
/* Items waiting: all of them, or key's. */
size_t fair_queue_count(const fair_queue *q);
size_t fair_queue_count_key(const fair_queue *q, uint64_t key);

#endif
