/* weight_transport.c: the weight transports (see weight_transport.h): the file kind, and the
 * Redis exchange of the CUDA IPC handle and the NCCL unique id around cuda/'s GPU halves
 * (weight_transport_cuda.h). */
#include "weight_transport.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "redis_link.h"
#include "snapshot.h"
#include "weight_transport_cuda.h"

#define WT_KEY_MAX 256
#define WT_NCCL_POLL_MS 50 /* between GETs of the NCCL id while rank 0 has not written it */

struct weight_transport {
    weight_transport_options o;
    char data_dir[4096], host[256], prefix[128];
    redisContext *redis;
    weight_transport_ipc_export *ipc;
    weight_transport_nccl *nccl;
};

static const char *const KIND_NAMES[] = {"file", "cuda_ipc", "nccl"};

void weight_transport_default_options(weight_transport_options *o) {
    memset(o, 0, sizeof *o);
    o->kind = WEIGHT_TRANSPORT_FILE;
    o->role = WEIGHT_TRANSPORT_SENDER;
    o->redis_host = "127.0.0.1";
    o->redis_port = 6379;
    o->key_prefix = "duel:";
    o->world_size = 2;
    o->timeout_ms = 10000;
}

int weight_transport_kind_parse(const char *name, weight_transport_kind *out, duel_error *err) {
    for (int k = 0; k < 3; k++)
        if (name && strcmp(name, KIND_NAMES[k]) == 0) {
            *out = (weight_transport_kind)k;
            return 0;
        }
    return duel_error_set(err, DUEL_EINVAL, "weight transport '%s': not file, cuda_ipc or nccl", name ? name : "");
}

const char *weight_transport_kind_name(weight_transport_kind k) {
    return (int)k >= 0 && k <= WEIGHT_TRANSPORT_NCCL ? KIND_NAMES[k] : "?";
}

/* ---- Redis ------------------------------------------------------------------------------ */

static int redis_connect(weight_transport *t, duel_error *err) {
    t->redis = redis_link_connect(t->o.link, t->host, t->o.redis_port, t->o.timeout_ms, NULL, 0, err);
    return t->redis ? 0 : duel_error_prefix(err, "%s transport", KIND_NAMES[t->o.kind]);
}

static int redis_set(weight_transport *t, const char *key, const void *value, size_t len, duel_error *err) {
    const char *argv[] = {"SET", key, value};
    size_t lens[] = {3, strlen(key), len};
    redisReply *r = redisCommandArgv(t->redis, 3, argv, lens);
    int rc = 0;
    if (!r || r->type == REDIS_REPLY_ERROR)
        rc = duel_error_set(err, DUEL_EIO, "%s transport: SET %s failed: %s", KIND_NAMES[t->o.kind], key,
                            r ? r->str : t->redis->errstr);
    if (r) freeReplyObject(r);
    return rc;
}

/* GETs key into out (exactly len bytes); DUEL_ENOTFOUND when absent, DUEL_EFORMAT for another size. */
static int redis_get(weight_transport *t, const char *key, void *out, size_t len, duel_error *err) {
    const char *argv[] = {"GET", key};
    redisReply *r = redisCommandArgv(t->redis, 2, argv, NULL);
    int rc = 0;
    if (!r || r->type == REDIS_REPLY_ERROR)
        rc = duel_error_set(err, DUEL_EIO, "%s transport: GET %s failed: %s", KIND_NAMES[t->o.kind], key,
                            r ? r->str : t->redis->errstr);
    else if (r->type != REDIS_REPLY_STRING)
        rc = duel_error_set(err, DUEL_ENOTFOUND, "%s transport: %s is not set", KIND_NAMES[t->o.kind], key);
    else if (r->len != len)
        rc = duel_error_set(err, DUEL_EFORMAT, "%s transport: %s holds %zu bytes, expected %zu", KIND_NAMES[t->o.kind],
                            key, r->len, len);
    else
        memcpy(out, r->str, len);
    if (r) freeReplyObject(r);
    return rc;
}

/* ---- open / close ----------------------------------------------------------------------- */

static int copy_str(char *dst, size_t cap, const char *src, const char *what, duel_error *err) {
    if (!src) src = "";
    if (strlen(src) >= cap) return duel_error_set(err, DUEL_EINVAL, "weight transport: %s is too long", what);
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

static int open_nccl(weight_transport *t, duel_error *err) {
    char key[WT_KEY_MAX + 32];
    snprintf(key, sizeof key, "%stransport:nccl_id", t->prefix);
    unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES];
    int rc;
    if (t->o.rank == 0) {
        if ((rc = weight_transport_nccl_unique_id(t->o.device, id, err)) || (rc = redis_set(t, key, id, sizeof id, err)))
            return rc;
    } else {
        for (int waited = 0;; waited += WT_NCCL_POLL_MS) {
            rc = redis_get(t, key, id, sizeof id, err);
            if (rc != DUEL_ENOTFOUND) break;
            if (waited >= t->o.timeout_ms)
                return duel_error_set(err, DUEL_EIO, "nccl transport: rank 0 did not publish %s within %d ms", key,
                                      t->o.timeout_ms);
            struct timespec ts = {0, WT_NCCL_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (rc) return rc;
    }
    return weight_transport_nccl_create(t->o.device, id, t->o.rank, t->o.world_size, t->o.num_params, &t->nccl, err);
}

int weight_transport_open(const weight_transport_options *o, weight_transport **out, duel_error *err) {
    *out = NULL;
    if ((int)o->kind < 0 || o->kind > WEIGHT_TRANSPORT_NCCL || (o->role != WEIGHT_TRANSPORT_SENDER &&
                                                               o->role != WEIGHT_TRANSPORT_RECEIVER))
        return duel_error_set(err, DUEL_EINVAL, "weight transport: bad kind or role");
    if (o->kind == WEIGHT_TRANSPORT_FILE && !o->data_dir)
        return duel_error_set(err, DUEL_EINVAL, "file transport: data_dir is required");
    if (o->kind != WEIGHT_TRANSPORT_FILE) {
        /* the device first: without one, say so before touching Redis */
        int rc = weight_transport_cuda_check_device(o->device, err);
        if (rc) {
            duel_error inner = *err;
            return duel_error_set(err, rc, "%s transport: %s", KIND_NAMES[o->kind], inner.message);
        }
        if (o->num_params == 0 || o->redis_port < 1 || o->redis_port > 65535 || o->timeout_ms < 1 ||
            (o->kind == WEIGHT_TRANSPORT_NCCL && (o->world_size < 2 || o->rank < 0 || o->rank >= o->world_size)))
            return duel_error_set(err, DUEL_EINVAL, "%s transport: bad options (num_params, redis port, timeout, "
                                  "rank %d of %d)", KIND_NAMES[o->kind], o->rank, o->world_size);
    }
    weight_transport *t = calloc(1, sizeof *t);
    if (!t) return duel_error_set(err, DUEL_ENOMEM, "weight transport: out of memory");
    t->o = *o;
    int rc;
    if ((rc = copy_str(t->data_dir, sizeof t->data_dir, o->data_dir, "data_dir", err)) ||
        (rc = copy_str(t->host, sizeof t->host, o->redis_host ? o->redis_host : "127.0.0.1", "redis_host", err)) ||
        (rc = copy_str(t->prefix, sizeof t->prefix, o->key_prefix ? o->key_prefix : "duel:", "key_prefix", err)))
        goto fail;
    if (o->kind != WEIGHT_TRANSPORT_FILE && (rc = redis_connect(t, err))) goto fail;
    if (o->kind == WEIGHT_TRANSPORT_CUDA_IPC && o->role == WEIGHT_TRANSPORT_SENDER &&
        (rc = weight_transport_ipc_export_create(o->device, o->num_params, &t->ipc, err)))
        goto fail;
    if (o->kind == WEIGHT_TRANSPORT_NCCL && (rc = open_nccl(t, err))) goto fail;
    *out = t;
    return 0;
fail:
    weight_transport_close(t);
    return rc;
}

void weight_transport_close(weight_transport *t) {
    if (!t) return;
    weight_transport_ipc_export_free(t->ipc);
    weight_transport_nccl_free(t->nccl);
    if (t->redis) redisFree(t->redis);
    free(t);
}

/* ---- send / receive --------------------------------------------------------------------- */

int weight_transport_send(weight_transport *t, const weight_transport_snapshot *s, duel_error *err) {
    if (t->o.role != WEIGHT_TRANSPORT_SENDER)
        return duel_error_set(err, DUEL_EINVAL, "%s transport: send on a receiver", KIND_NAMES[t->o.kind]);
    if (s->version < 1) return duel_error_set(err, DUEL_EINVAL, "weight transport: version %lld < 1", (long long)s->version);
    if (t->o.kind == WEIGHT_TRANSPORT_FILE) {
        char meta[4200];
        struct stat st;
        if (!s->dir || snprintf(meta, sizeof meta, "%s/meta.json", s->dir) >= (int)sizeof meta || stat(meta, &st) != 0)
            return duel_error_set(err, DUEL_ENOTFOUND, "file transport: snapshot %lld has no %s/meta.json",
                                  (long long)s->version, s->dir ? s->dir : "(no folder)");
        return 0;
    }
    if (!s->params) return duel_error_set(err, DUEL_EINVAL, "%s transport: no parameters", KIND_NAMES[t->o.kind]);
    if (t->o.kind == WEIGHT_TRANSPORT_NCCL) return weight_transport_nccl_broadcast(t->nccl, (float *)s->params, err);
    unsigned char value[8 + WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES];
    for (int i = 0; i < 8; i++) value[i] = (unsigned char)((uint64_t)s->version >> (8 * i));
    int rc = weight_transport_ipc_export_publish(t->ipc, s->params, value + 8, err);
    if (rc) return rc;
    char key[WT_KEY_MAX + 32];
    snprintf(key, sizeof key, "%stransport:ipc", t->prefix);
    return redis_set(t, key, value, sizeof value, err);
}

int weight_transport_receive(weight_transport *t, int64_t version, char *dir_out, size_t cap, float *params_out,
                             duel_error *err) {
    if (t->o.role != WEIGHT_TRANSPORT_RECEIVER)
        return duel_error_set(err, DUEL_EINVAL, "%s transport: receive on a sender", KIND_NAMES[t->o.kind]);
    if (t->o.kind == WEIGHT_TRANSPORT_FILE) {
        char dir[4200];
        int rc = snapshot_path(t->data_dir, version, dir, sizeof dir, err);
        if (rc == 0) rc = snapshot_verify(dir, NULL, err);
        if (rc) return rc;
        if (!dir_out || strlen(dir) >= cap)
            return duel_error_set(err, DUEL_EINVAL, "file transport: no room for the folder name");
        memcpy(dir_out, dir, strlen(dir) + 1);
        return 0;
    }
    if (!params_out) return duel_error_set(err, DUEL_EINVAL, "%s transport: no output block", KIND_NAMES[t->o.kind]);
    if (t->o.kind == WEIGHT_TRANSPORT_NCCL) return weight_transport_nccl_broadcast(t->nccl, params_out, err);
    char key[WT_KEY_MAX + 32];
    snprintf(key, sizeof key, "%stransport:ipc", t->prefix);
    unsigned char value[8 + WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES];
    int rc = redis_get(t, key, value, sizeof value, err);
    if (rc) return rc;
    uint64_t have = 0;
    for (int i = 0; i < 8; i++) have |= (uint64_t)value[i] << (8 * i);
    if ((int64_t)have != version)
        return duel_error_set(err, DUEL_ENOTFOUND, "cuda_ipc transport: the exported buffer holds version %lld, "
                              "not %lld", (long long)have, (long long)version);
    return weight_transport_ipc_import(t->o.device, value + 8, t->o.num_params, params_out, err);
}
