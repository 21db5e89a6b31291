/* engine_events.c: the engine's events on their way out, and the per-id state table.
 *
 * Events are built on the engine thread as deep copies (nothing in them points into the
 * scheduler or a request) and pushed to the event queue; from then on they belong to whoever
 * pops them, who frees them with engine_event_free. The state table (one byte per id issued,
 * under the lock) says whether a request is active or has ended; a request is marked ENDED
 * before its last event is pushed, so that a cancel after the caller saw that event is refused
 * as "already finished". */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

void engine_event_free(engine_event *ev) {
    if (!ev) return;
    free(ev->features);
    free(ev->ref_logprobs);
    free(ev->rewards);
    free(ev->candidates);
    free(ev->tokens);
    free(ev->text);
    free(ev->hidden);
    free(ev->message);
    free(ev->arm);
    free(ev);
}

void engine_set_state(engine *e, uint64_t id, uint8_t state) {
    pthread_mutex_lock(&e->lock);
    if (id < e->states_cap) e->states[id] = state;
    pthread_mutex_unlock(&e->lock);
}

void engine_push_event(engine *e, engine_event *ev) {
    if (engine_queue_push(e->events, ev, NULL)) engine_event_free(ev); /* only on ENOMEM */
}

void engine_push_error(engine *e, uint64_t id, void *user, int status, const char *message) {
    engine_event *ev = calloc(1, sizeof *ev);
    if (!ev) return;
    ev->kind = ENGINE_EVENT_ERROR;
    ev->request_id = id;
    ev->user = user;
    ev->status = status;
    ev->message = strdup(message ? message : "error");
    engine_push_event(e, ev);
}

float *engine_copy_floats(const float *src, int n) {
    if (!src) return NULL;
    float *dst = malloc((size_t)n * sizeof *dst);
    if (dst) memcpy(dst, src, (size_t)n * sizeof *dst);
    return dst;
}

int32_t *engine_copy_ints(const int32_t *src, int n) {
    int32_t *dst = malloc(((size_t)n + 1) * sizeof *dst);
    if (dst && n) memcpy(dst, src, (size_t)n * sizeof *dst);
    return dst;
}
