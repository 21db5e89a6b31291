/* weight_transport_model.c: a snapshot's model from the weights a GPU transport delivered
 * (weight_transport_model.h): model.safetensors' header from the folder, the data section from
 * the transport, the sha256 of both against meta.json, then model_load_archive. */
#include "weight_transport_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "sha256.h"
#include "snapshot.h"

#define WTM_MAX_HEADER (100u << 20) /* bytes of a safetensors header we accept */

struct weight_transport_model_receiver {
    weight_transport_options o;
    char host[256], prefix[128], data_dir[4096];
    weight_transport *t;   /* opened at the first load */
    size_t num_params;
    int64_t last_version;  /* nccl: the last version taken */
    long long received;
};

int weight_transport_model_receiver_create(const weight_transport_options *o,
                                           weight_transport_model_receiver **out, duel_error *err) {
    *out = NULL;
    if (!o || (o->kind != WEIGHT_TRANSPORT_CUDA_IPC && o->kind != WEIGHT_TRANSPORT_NCCL))
        return duel_error_set(err, DUEL_EINVAL,
                              "weight transport receiver: cuda_ipc or nccl (the file kind is the "
                              "snapshot folder itself)");
    weight_transport_model_receiver *r = calloc(1, sizeof *r);
    if (!r) return duel_error_set(err, DUEL_ENOMEM, "weight transport receiver: out of memory");
    r->o = *o;
    snprintf(r->host, sizeof r->host, "%s", o->redis_host ? o->redis_host : "127.0.0.1");
    snprintf(r->prefix, sizeof r->prefix, "%s", o->key_prefix ? o->key_prefix : "duel:");
    snprintf(r->data_dir, sizeof r->data_dir, "%s", o->data_dir ? o->data_dir : ".");
    r->o.redis_host = r->host;
    r->o.key_prefix = r->prefix;
    r->o.data_dir = r->data_dir;
    r->o.role = WEIGHT_TRANSPORT_RECEIVER;
    *out = r;
    return DUEL_OK;
}

void weight_transport_model_receiver_free(weight_transport_model_receiver *r) {
    if (!r) return;
    weight_transport_close(r->t);
    free(r);
}

const char *weight_transport_model_kind(const weight_transport_model_receiver *r) {
    return weight_transport_kind_name(r->o.kind);
}

long long weight_transport_model_received(const weight_transport_model_receiver *r) {
    return r ? r->received : 0;
}

/* model.safetensors' header (8-byte length and JSON) into *head, and the data size. */
static int read_header(const char *path, unsigned char **head, size_t *head_bytes, size_t *data_bytes,
                       duel_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return duel_error_set(err, DUEL_EIO, "%s: cannot open", path);
    unsigned char len8[8];
    int rc = DUEL_OK;
    uint64_t n = 0;
    long size = -1;
    if (fread(len8, 1, 8, f) != 8) rc = duel_error_set(err, DUEL_EFORMAT, "%s: too short", path);
    for (int i = 0; !rc && i < 8; i++) n |= (uint64_t)len8[i] << (8 * i);
    if (!rc && (n == 0 || n > WTM_MAX_HEADER))
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: header of %llu bytes", path,
                            (unsigned long long)n);
    if (!rc && (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < (long)(8 + n)))
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: shorter than its header", path);
    if (!rc) {
        *head_bytes = 8 + (size_t)n;
        *data_bytes = (size_t)size - *head_bytes;
        *head = malloc(*head_bytes);
        if (!*head) rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
    }
    if (!rc && (fseek(f, 0, SEEK_SET) != 0 || fread(*head, 1, *head_bytes, f) != *head_bytes))
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot read its header", path);
    fclose(f);
    return rc;
}

/* meta.json's sha256 of model.safetensors (common/snapshot.h reads meta.json). */
static int meta_hash(const char *dir, char hex[SHA256_HEX_BYTES], duel_error *err) {
    snapshot_meta meta;
    int rc = snapshot_meta_read(dir, &meta, err);
    if (rc) return rc;
    for (int i = 0; i < meta.num_files; i++)
        if (strcmp(meta.files[i].name, SNAPSHOT_FILE_MODEL) == 0) {
            memcpy(hex, meta.files[i].sha256, SHA256_HEX_BYTES);
            return DUEL_OK;
        }
    return duel_error_set(err, DUEL_EFORMAT, "%s/%s: no sha256 of %s", dir, SNAPSHOT_FILE_META,
                          SNAPSHOT_FILE_MODEL);
}

/* The header and block in one image, checked against meta.json, made into a model. */
static int assemble(const char *dir, const unsigned char *head, size_t head_bytes,
                    const float *block, size_t data_bytes, int64_t version, const char *via,
                    model **out, duel_error *err) {
    char path[4200], want[SHA256_HEX_BYTES], got[SHA256_HEX_BYTES];
    snprintf(path, sizeof path, "%s/%s", dir, SNAPSHOT_FILE_MODEL);
    int rc = meta_hash(dir, want, err);
    unsigned char *image = rc ? NULL : malloc(head_bytes + data_bytes);
    if (!rc && !image)
        rc = duel_error_set(err, DUEL_ENOMEM, "out of memory for %zu bytes of weights", data_bytes);
    if (!rc) {
        memcpy(image, head, head_bytes);
        memcpy(image + head_bytes, block, data_bytes);
        sha256_hex(image, head_bytes + data_bytes, got);
        if (strcmp(got, want) != 0)
            rc = duel_error_set(err, DUEL_EFORMAT,
                                "snapshot %lld: the weights received over %s do not hash to "
                                "model.safetensors' sha256 in meta.json",
                                (long long)version, via);
    }
    safetensors_archive *st = NULL;
    if (!rc) rc = safetensors_open_memory(image, head_bytes + data_bytes, path, &st, err);
    if (!rc) rc = model_load_archive(dir, st, out, err);
    safetensors_close(st);
    free(image);
    return rc;
}

int weight_transport_model_from_block(const char *dir, const float *block, size_t num_params,
                                      int64_t version, model **out, duel_error *err) {
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, SNAPSHOT_FILE_MODEL);
    unsigned char *head = NULL;
    size_t head_bytes = 0, data_bytes = 0;
    int rc = read_header(path, &head, &head_bytes, &data_bytes, err);
    if (!rc && data_bytes != num_params * sizeof(float))
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: %zu data bytes, the block has %zu floats", path,
                            data_bytes, num_params);
    if (!rc) rc = assemble(dir, head, head_bytes, block, data_bytes, version, "the transport", out, err);
    free(head);
    return rc;
}

int weight_transport_model_load(weight_transport_model_receiver *r, int64_t version,
                                const char *dir, model **out, duel_error *err) {
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, SNAPSHOT_FILE_MODEL);
    unsigned char *head = NULL;
    size_t head_bytes = 0, data_bytes = 0;
    int rc = read_header(path, &head, &head_bytes, &data_bytes, err);
    if (!rc && (data_bytes == 0 || data_bytes % sizeof(float)))
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: %zu data bytes are not an f32 block", path,
                            data_bytes);
    if (!rc && r->t && data_bytes / sizeof(float) != r->num_params)
        rc = duel_error_set(err, DUEL_EFORMAT,
                            "%s: %zu parameters, the transport was opened for %zu", path,
                            data_bytes / sizeof(float), r->num_params);
    if (!rc && !r->t) {
        r->o.num_params = r->num_params = data_bytes / sizeof(float);
        if (r->o.kind == WEIGHT_TRANSPORT_NCCL && r->o.rank < 1) r->o.rank = 1;
        rc = weight_transport_open(&r->o, &r->t, err);
        r->last_version = version - 1;
    }
    float *block = rc ? NULL : malloc(data_bytes);
    if (!rc && !block)
        rc = duel_error_set(err, DUEL_ENOMEM, "out of memory for %zu bytes of weights", data_bytes);
    if (!rc && r->o.kind == WEIGHT_TRANSPORT_NCCL) {
        /* every broadcast since the last one taken, in order; the last is kept */
        if (version <= r->last_version)
            rc = duel_error_set(err, DUEL_ENOTFOUND,
                                "nccl transport: version %lld was broadcast before (the last "
                                "taken is %lld)",
                                (long long)version, (long long)r->last_version);
        for (int64_t v = r->last_version + 1; !rc && v <= version; v++)
            rc = weight_transport_receive(r->t, v, NULL, 0, block, err);
        if (!rc) r->last_version = version;
    } else if (!rc) {
        rc = weight_transport_receive(r->t, version, NULL, 0, block, err);
    }
    if (!rc)
        rc = assemble(dir, head, head_bytes, block, data_bytes, version,
                      weight_transport_kind_name(r->o.kind), out, err);
    if (!rc) r->received++;
    free(block);
    free(head);
    return rc;
}
