/* snapshot_loader.h: the gateway's snapshot loader thread (DESIGN.md sections 7-9, docs/SERVING.md).
 * It owns two hiredis connections: one SUBSCRIBEd to <prefix>notify, one for commands. On a
 * {"kind":"snapshot"} note, and every poll_ms anyway (pub/sub drops messages while a connection
 * is down), it reads the newest member of the zset <prefix>snapshots; when that version is newer
 * than the one serving and was not refused before, it reads the folder from the hash
 * <prefix>snapshot:{v} (field path), checks every sha256 of its meta.json (snapshot_verify) and
 * the version in it, and hands the folder to the backend's install_snapshot, which loads it on
 * this thread and switches new duels to it. A snapshot that fails any of that is refused: logged
 * once (stderr), counted, remembered (never retried), and serving goes on with the arm it has.
 * The same check (and a {"kind":"rollout"} note) reads <prefix>rollout: every version an arm
 * at a weight above 0 pins is verified the same way and made resident beside the latest
 * (backend hold_snapshot), and the snapshots no arm needs any more are retired (set_pins).
 *
 * Threads: the loader's thread alone touches its connections and the refused list; the stats are
 * behind a mutex for the lws thread (/metrics, /healthz). */
#ifndef DUEL_GATEWAY_SNAPSHOT_LOADER_H
#define DUEL_GATEWAY_SNAPSHOT_LOADER_H

#include <stdbool.h>

#include "duel_backend.h"
#include "error.h"

#define SNAPSHOT_LOADER_DEFAULT_POLL_MS 3000

typedef struct snapshot_loader_config {
    const struct redis_link_config *link; /* sentinels (redis_link.h); NULL: host:port */
    const char *host;
    int port;
    int timeout_ms;       /* connect and command timeout; 0: 1000 */
    int poll_ms;          /* zset poll interval; 0: SNAPSHOT_LOADER_DEFAULT_POLL_MS */
    const char *key_prefix; /* NULL: "duel:" */
} snapshot_loader_config;

typedef struct snapshot_loader_stats {
    long long serving_version;  /* the backend's (0: the base model) */
    long long newest_seen;      /* highest version in the zset at the last poll */
    unsigned long long loaded;  /* snapshots installed (as the latest or for a rollout arm) */
    int pinned;                 /* versions the rollout pins (at a weight above 0) */
    unsigned long long rejected;/* snapshots refused */
    unsigned long long notes;   /* snapshot notes received on pub/sub */
    unsigned long long polls;   /* zset reads */
    bool connected;
    /* Of the snapshot installed last (NAN before the first, or when its meta.json lacks the
     * figure): seconds from its created_ms, and from its votes_mean_ms (the mean time of the
     * votes it is the first to hold), to the moment new duels switched to it. Clocks of other
     * hosts may run ahead: a negative difference counts as 0. */
    double publish_to_serve_s, vote_to_serving_s;
    char last_error[512];       /* the latest refusal or connection error */
} snapshot_loader_stats;

typedef struct snapshot_loader snapshot_loader;

/* Starts the thread. backend is borrowed (its install_snapshot must be set) and must outlive
 * the loader. DUEL_EINVAL for a backend without hot-swap, DUEL_ENOMEM. Redis being down is not
 * an error: the thread retries. */
int snapshot_loader_create(const snapshot_loader_config *cfg, const duel_backend *backend,
                           snapshot_loader **out, duel_error *err);
void snapshot_loader_get_stats(snapshot_loader *l, snapshot_loader_stats *out);
/* Stops and joins the thread (an install in progress finishes first). NULL is a no-op. */
void snapshot_loader_destroy(snapshot_loader *l);

#endif
