/* fair_queue.c: per-key FIFOs served least-recently-served first (see fair_queue.h).
 * Invariant: flows[0..n_flows) are exactly the keys with count > 0, each once; the sum of their
 * counts is q->count; every node's seq is its push number, increasing along each FIFO. */
#include "fair_queue.h"

#include <stdlib.h>
#include <string.h>

struct fair_queue_node {
    fair_queue_node *next;
    void *item;
    uint64_t seq;
};

void fair_queue_init(fair_queue *q) { memset(q, 0, sizeof *q); }

void fair_queue_free(fair_queue *q) {
    for (size_t f = 0; f < q->n_flows; f++)
        for (fair_queue_node *n = q->flows[f].head, *next; n; n = next) {
            next = n->next;
            free(n);
        }
    free(q->flows);
    memset(q, 0, sizeof *q);
}

/* A key's flow leaves the table when it empties: it forgets when it was last served, which is
 * what lets a key that comes back after waiting for nothing go first again. */
static void drop_flow_if_empty(fair_queue *q, size_t f) {
    if (q->flows[f].count) return;
    q->flows[f] = q->flows[--q->n_flows];
}

int fair_queue_push(fair_queue *q, uint64_t key, void *item) {
    size_t f = 0;
    while (f < q->n_flows && q->flows[f].key != key) f++;
    if (f == q->n_flows && q->n_flows == q->cap_flows) {
        size_t cap = q->cap_flows ? q->cap_flows * 2 : 8;
        fair_queue_flow *flows = realloc(q->flows, cap * sizeof *flows);
        if (!flows) return -1;
        q->flows = flows;
        q->cap_flows = cap;
    }
    fair_queue_node *n = malloc(sizeof *n);
    if (!n) return -1;
    *n = (fair_queue_node){.item = item, .seq = ++q->arrivals};
    if (f == q->n_flows) q->flows[q->n_flows++] = (fair_queue_flow){.key = key};
    fair_queue_flow *flow = &q->flows[f];
    if (flow->tail) flow->tail->next = n;
    else flow->head = n;
    flow->tail = n;
    flow->count++;
    q->count++;
    return 0;
}

void *fair_queue_pop(fair_queue *q) {
    if (!q->n_flows) return NULL;
    size_t best = 0;
    for (size_t f = 1; f < q->n_flows; f++) {
        const fair_queue_flow *a = &q->flows[f], *b = &q->flows[best];
        if (a->last_served < b->last_served ||
            (a->last_served == b->last_served && a->head->seq < b->head->seq))
            best = f;
    }
    fair_queue_flow *flow = &q->flows[best];
    fair_queue_node *n = flow->head;
    flow->head = n->next;
    if (!flow->head) flow->tail = NULL;
    flow->count--;
    flow->last_served = ++q->clock;
    q->count--;
    void *item = n->item;
    free(n);
    drop_flow_if_empty(q, best);
    return item;
}

void *fair_queue_remove(fair_queue *q, bool (*match)(const void *item, void *ctx), void *ctx) {
    size_t best_flow = 0;
    fair_queue_node *best = NULL, *best_prev = NULL;
    for (size_t f = 0; f < q->n_flows; f++)
        for (fair_queue_node *n = q->flows[f].head, *prev = NULL; n; prev = n, n = n->next)
            if ((!best || n->seq < best->seq) && match(n->item, ctx)) {
                best = n, best_prev = prev, best_flow = f;
                break; /* later nodes of this FIFO are younger */
            }
    if (!best) return NULL;
    fair_queue_flow *flow = &q->flows[best_flow];
    if (best_prev) best_prev->next = best->next;
    else flow->head = best->next;
    if (flow->tail == best) flow->tail = best_prev;
    flow->count--;
    q->count--;
    void *item = best->item;
    free(best);
    drop_flow_if_empty(q, best_flow);
    return item;
}

size_t fair_queue_count(const fair_queue *q) { return q->count; }

size_t fair_queue_count_key(const fair_queue *q, uint64_t key) {
    for (size_t f = 0; f < q->n_flows; f++)
        if (q->flows[f].key == key) return q->flows[f].count;
    return 0;
}
