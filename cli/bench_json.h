/* bench_json.h: the one way a `duel` command prints its figures for scripts (--json of every
 * `duel bench ...`, `duel sim` and `duel info`): one JSON object, compact, on one line, the last
 * line of stdout. Figures are real numbers with 6 significant digits (a benchmark's noise is far
 * above that), integers exact. Nothing may be printed to stdout after it. */
#ifndef DUEL_CLI_BENCH_JSON_H
#define DUEL_CLI_BENCH_JSON_H

#include <jansson.h>

/* Sets o's "bench" to name (unless name is NULL), prints o as described above, flushes stdout
 * and releases o (a reference is stolen, so bench_json_print(name, json_pack(...)) is fine).
 * Returns 0, or -1 with a message on stderr when o is NULL (out of memory while building it) or
 * cannot be encoded (a NaN or infinite real): the caller then exits with a failure, since a
 * script waiting for the line would otherwise read the previous one. */
int bench_json_print(const char *name, json_t *o);

#endif
