/* bench_json.c: the JSON line of every benchmark (bench_json.h). */
#include "bench_json.h"

#include <stdio.h>
#include <stdlib.h>

int bench_json_print(const char *name, json_t *o) {
    if (!o) {
        fprintf(stderr, "duel: out of memory building the JSON figures\n");
        return -1;
    }
    if (name && json_object_set_new(o, "bench", json_string(name)) != 0) {
        json_decref(o);
        fprintf(stderr, "duel: out of memory building the JSON figures\n");
        return -1;
    }
    /* jansson refuses NaN and infinities (json_real returns NULL for them, and a set_new of NULL
     * fails silently), so a figure that is not finite is missing rather than invalid JSON. */
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!text) {
        fprintf(stderr, "duel: the JSON figures could not be encoded\n");
        return -1;
    }
    printf("%s\n", text);
    free(text);
    return fflush(stdout) == 0 ? 0 : -1;
}
