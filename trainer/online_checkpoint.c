/* online_checkpoint.c: the online trainer's checkpoint format (see online_trainer.h):
 * <trainer_dir>/checkpoint/ = policy/ (checkpoint.h), erm.safetensors, erm_optimizer.safetensors,
 * entries.bin and state.json, written into checkpoint.tmp with every file synced and swapped
 * into place (durable_file.h), so that a crash leaves the old or the new checkpoint whole.
 * state.json records the sha256 of the ERM files and of entries.bin (the policy's folder hashes
 * its own files); loading checks every hash, shape and count before the trainer uses any of it.
 * STATE_VERSION 3: the policy's files are hashed with SHA-256 (checkpoint.h format 2); a version
 * 2 checkpoint is refused with a message saying so. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "json_util.h"
#include "online_trainer_state.h"
#include "safetensors.h"
#include "sha256.h"

#define STATE_FORMAT "duel-online-trainer"
#define STATE_VERSION 3 /* 2: SEA store and pending entries in entries.bin; 3: SHA-256 policy/ */
#define ENTRIES_MAGIC "DUELENT1"
#define ENTRIES_MAX_BYTES ((uint64_t)16 << 30)
#define STATE_MAX_BYTES ((size_t)64 << 20)

static char *u64_hex(uint64_t v, char *buf) {
    snprintf(buf, 17, "%016" PRIx64, v);
    return buf;
}

static int write_erm_optimizer(const char *path, const adamw_state *opt, duel_error *err) {
    safetensors_write_tensor ts[2] = {
        {"adamw.m", SAFETENSORS_F32, 1, {(int64_t)opt->num_parameters}, opt->m},
        {"adamw.v", SAFETENSORS_F32, 1, {(int64_t)opt->num_parameters}, opt->v}};
    return safetensors_write_file(path, ts, 2, NULL, err);
}

/* entries.bin: ENTRIES_MAGIC, u32 store count, u32 pending count (little-endian), then each
 * entry (the store oldest first, then the pending batch) in the vote codec's framing outside
 * Redis (vote_entry_pack: u32 field count and per field u32 name length, name, u32 value
 * length, value), the spill log's too. */
static int put_u32(durable_writer *w, uint64_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    return durable_writer_write(w, b, 4);
}

/* One entry; a failed write shows at commit (the writer remembers it). */
static int put_entry(durable_writer *w, const vote_entry *e, duel_error *err) {
    vote_entry_encoded enc;
    char *packed = NULL;
    size_t n = 0;
    int rc = vote_entry_encode(e, NULL, &enc, err);
    if (rc) return rc;
    rc = vote_entry_pack(enc.fields, enc.n_fields, &packed, &n, err);
    vote_entry_encoded_free(&enc);
    if (rc == 0) durable_writer_write(w, packed, n);
    free(packed);
    return rc;
}

static int write_entries(const online_trainer *t, const char *path, duel_error *err) {
    durable_writer *w = NULL;
    int rc = durable_writer_open(t->options.io, path, &w, err);
    if (rc) return rc;
    durable_writer_write(w, ENTRIES_MAGIC, 8);
    put_u32(w, (uint64_t)t->store.count);
    put_u32(w, (uint64_t)t->num_pending);
    for (int i = 0; rc == 0 && i < t->store.count; i++) rc = put_entry(w, sea_store_at(&t->store, i), err);
    for (int i = 0; rc == 0 && i < t->num_pending; i++) rc = put_entry(w, &t->pending[i], err);
    if (rc) {
        durable_writer_abort(w);
        return rc;
    }
    return durable_writer_commit(w, err);
}

static int get_u32(const unsigned char *buf, size_t len, size_t *at, uint32_t *out) {
    if (len - *at < 4) return -1;
    const unsigned char *b = buf + *at;
    *out = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    *at += 4;
    return 0;
}

/* Reads entries.bin into the (empty) store and pending batch, decoding every entry with the
 * trainer's limits. */
static int read_entries(online_trainer *t, const char *path, duel_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char *buf = NULL;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    int rc = 0;
    if (size < 16 || (uint64_t)size > ENTRIES_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)size)) || fread(buf, 1, (size_t)size, f) != (size_t)size)
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: cannot read (%ld bytes)", path, size);
    fclose(f);
    const size_t len = (size_t)size;
    size_t at = 8;
    uint32_t n_store = 0, n_pending = 0;
    if (rc == 0 && (memcmp(buf, ENTRIES_MAGIC, 8) != 0 || get_u32(buf, len, &at, &n_store) ||
                    get_u32(buf, len, &at, &n_pending) || n_store > ONLINE_MAX_STORE ||
                    n_pending > ONLINE_MAX_BATCH || online_pending_reserve(t, (int)n_pending, NULL)))
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad header, or more duels (%u) or pending pairs (%u) than "
                            "%d and %d", path, n_store, n_pending, ONLINE_MAX_STORE, ONLINE_MAX_BATCH);
    vote_entry_limits limits;
    online_trainer_limits(t, &limits);
    for (uint32_t k = 0; rc == 0 && k < n_store + n_pending; k++) {
        vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS];
        int nf = 0;
        vote_entry e;
        memset(&e, 0, sizeof e);
        duel_error derr = {0};
        if (vote_entry_unpack(buf, len, &at, fields, &nf, &derr) ||
            vote_entry_decode(fields, nf, &limits, &e, &derr) != 0) {
            vote_entry_free(&e);
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: entry %u: %s", path, k, derr.message);
            break;
        }
        if (k < n_store) sea_store_push(&t->store, &e); /* a smaller store keeps the newest duels */
        else t->pending[t->num_pending++] = e;
    }
    if (rc == 0 && at != len) rc = duel_error_set(err, DUEL_EFORMAT, "%s: trailing bytes", path);
    free(buf);
    return rc;
}


/* A safetensors file written by its own writer, then synced through the trainer's hooks. */
static int sync_and_hash(const online_trainer *t, const char *path, char hex[SHA256_HEX_BYTES], duel_error *err) {
    int rc = durable_fsync_path(t->options.io, path, err);
    return rc ? rc : sha256_file_hex(path, hex, err);
}

static char *state_json(online_trainer *t, const char *applied, const char *erm_hash, const char *opt_hash,
                        const char *entries_hash) {
    char hex[8][17];
    duel_rng *rng = erm_trainer_rng(t->erm_trainer);
    json_t *recent = json_array();
    for (int i = 0; i < t->recent.count; i++) json_array_append_new(recent, json_string(vote_dedup_at(&t->recent, i)));
    const online_trainer_status *s = &t->status;
    json_t *state = json_pack(
        "{s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:[s,s,s,s], s:s, s:s,"
        " s:o, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
        "format", STATE_FORMAT, "version", STATE_VERSION, "step", (json_int_t)s->step,
        "prefs_applied", (json_int_t)s->prefs_applied, "ties", (json_int_t)s->ties,
        "both_bad", (json_int_t)s->both_bad, "duplicates", (json_int_t)s->duplicates,
        "published_version", (json_int_t)s->published_version,
        "erm_adam_step", (json_int_t)erm_trainer_optimizer(t->erm_trainer)->step,
        "last_applied_id", applied, "erm_pairs_seen", (json_int_t)erm_trainer_pairs_seen(t->erm_trainer),
        "pair_log_generation", (json_int_t)t->pair_log.generation, "pair_log_base", (json_int_t)t->pair_log.base,
        "pair_log_records", (json_int_t)t->pair_log.records, "erm_rng", u64_hex(rng->s[0], hex[0]),
        u64_hex(rng->s[1], hex[1]), u64_hex(rng->s[2], hex[2]), u64_hex(rng->s[3], hex[3]),
        "erm_sha256", erm_hash, "erm_optimizer_sha256", opt_hash, "recent_vote_ids", recent,
        "erm_right", (json_int_t)t->erm_right, "erm_scored", (json_int_t)s->erm_scored,
        "loss", s->loss, "margin", s->margin, "accuracy", s->accuracy, "kl", s->kl, "lr", s->lr,
        "grad_norm", s->grad_norm, "erm_loss", s->erm_loss);
    if (state &&
        (json_object_set_new(state, "entries_sha256", json_string(entries_hash)) ||
         json_object_set_new(state, "synthetic", json_integer(s->synthetic)) ||
         json_object_set_new(state, "synthetic_total", json_integer(s->synthetic_total)) ||
         json_object_set_new(state, "mix_rng",
                             json_pack("[s,s,s,s]", u64_hex(t->mix_rng.s[0], hex[4]), u64_hex(t->mix_rng.s[1], hex[5]),
                                       u64_hex(t->mix_rng.s[2], hex[6]), u64_hex(t->mix_rng.s[3], hex[7]))))) {
        json_decref(state);
        state = NULL;
    }
    char *text = state ? json_dumps(state, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    json_decref(state);
    return text;
}

/* Every file of the checkpoint into tmp, each synced. */
static int write_files(online_trainer *t, const char *tmp, const char *applied, duel_error *err) {
    const durable_io *io = t->options.io;
    char policy[DURABLE_PATH_MAX], erm_path[DURABLE_PATH_MAX], opt_path[DURABLE_PATH_MAX],
        entries_path[DURABLE_PATH_MAX], path[DURABLE_PATH_MAX];
    char erm_hash[SHA256_HEX_BYTES], opt_hash[SHA256_HEX_BYTES], entries_hash[SHA256_HEX_BYTES];
    checkpoint_progress cp = {t->optimizer.step, t->options.seed, (double)t->status.prefs_applied};
    int rc;
    if ((rc = durable_path_join(policy, tmp, "policy", err))) return rc;
    if (mkdir(policy, 0755) != 0) return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", policy, strerror(errno));
    if ((rc = checkpoint_write_files(policy, t->policy, &t->optimizer, &cp, t->config_json, io, err)) ||
        (rc = durable_path_join(erm_path, tmp, "erm.safetensors", err)) || (rc = erm_save(t->erm, erm_path, err)) ||
        (rc = sync_and_hash(t, erm_path, erm_hash, err)) ||
        (rc = durable_path_join(opt_path, tmp, "erm_optimizer.safetensors", err)) ||
        (rc = write_erm_optimizer(opt_path, erm_trainer_optimizer(t->erm_trainer), err)) ||
        (rc = sync_and_hash(t, opt_path, opt_hash, err)) ||
        (rc = durable_path_join(entries_path, tmp, "entries.bin", err)) ||
        (rc = write_entries(t, entries_path, err)) || (rc = sha256_file_hex(entries_path, entries_hash, err)))
        return rc;
    char *text = state_json(t, applied, erm_hash, opt_hash, entries_hash);
    if (!text) return duel_error_set(err, DUEL_ENOMEM, "online trainer: cannot build state.json");
    rc = durable_path_join(path, tmp, "state.json", err);
    if (rc == 0) rc = durable_write_file(io, path, text, strlen(text), err);
    free(text);
    return rc;
}

int online_checkpoint_write(online_trainer *t, const char *applied, duel_error *err) {
    char dir[DURABLE_PATH_MAX], tmp[DURABLE_PATH_MAX];
    int rc;
    if ((rc = durable_path_join(dir, t->trainer_dir, "checkpoint", err)) ||
        (rc = erm_pair_log_prepare_checkpoint(&t->pair_log, t->erm_trainer, t->options.erm.buffer_capacity, err)) ||
        (rc = durable_dir_begin(dir, tmp, sizeof tmp, err)))
        return rc;
    if ((rc = write_files(t, tmp, applied, err)) || (rc = durable_dir_commit(t->options.io, dir, err))) {
        durable_remove_tree(tmp);
        return rc;
    }
    erm_pair_log_checkpointed(&t->pair_log);
    return 0;
}

static int get_int(json_t *o, const char *key, int64_t *out, const char *src, duel_error *err) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s is missing or not a non-negative integer", src, key);
    *out = json_integer_value(v);
    return 0;
}

static int get_real(json_t *o, const char *key, double *out, const char *src, duel_error *err) {
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s is missing or not a number", src, key);
    *out = json_number_value(v);
    return 0;
}

static int verify_hash(json_t *state, const char *key, const char *path, const char *src, duel_error *err) {
    char hex[SHA256_HEX_BYTES];
    const char *want = json_string_value(json_object_get(state, key));
    int rc = sha256_file_hex(path, hex, err);
    if (rc) return rc;
    if (!want || strcmp(want, hex) != 0)
        return duel_error_set(err, DUEL_EFORMAT, "%s: sha256 of %s does not match %s", path, path, src);
    return 0;
}

int online_checkpoint_read(online_trainer *t, duel_error *err) {
    char dir[DURABLE_PATH_MAX], path[DURABLE_PATH_MAX], src[DURABLE_PATH_MAX];
    int rc;
    if ((rc = durable_path_join(dir, t->trainer_dir, "checkpoint", err))) return rc;
    if ((rc = durable_dir_recover(dir, err)) < 0) return rc; /* a crash between the swap's renames */
    if (rc == 0) return erm_pair_log_start(&t->pair_log, err); /* fresh start: no pair log survives */
    if ((rc = durable_path_join(src, dir, "state.json", err))) return rc;
    json_t *state = NULL;
    if ((rc = duel_json_load_file(src, STATE_MAX_BYTES, &state, err))) return rc;
    const char *format = json_string_value(json_object_get(state, "format"));
    int64_t version = 0, erm_step = 0, seen = 0, gen = 0, base = 0, records = 0;
    online_trainer_status s = {0};
    if (!format || strcmp(format, STATE_FORMAT) != 0 || get_int(state, "version", &version, src, NULL) ||
        version != STATE_VERSION) {
        rc = duel_error_set(err, DUEL_EFORMAT,
                            version == 2 ? "%s: a version 2 online trainer checkpoint (its policy hashed with FNV-1a), "
                                           "which this version no longer reads (version %d, SHA-256): move %s "
                                           "away to start afresh, or keep running the duel build that wrote it"
                                         : "%s: not a version %d online trainer state (%s)",
                            src, STATE_VERSION, t->trainer_dir);
        goto done;
    }
    if ((rc = get_int(state, "step", &s.step, src, err)) ||
        (rc = get_int(state, "prefs_applied", &s.prefs_applied, src, err)) ||
        (rc = get_int(state, "ties", &s.ties, src, err)) ||
        (rc = get_int(state, "both_bad", &s.both_bad, src, err)) ||
        (rc = get_int(state, "duplicates", &s.duplicates, src, err)) ||
        (rc = get_int(state, "published_version", &s.published_version, src, err)) ||
        (rc = get_int(state, "erm_adam_step", &erm_step, src, err)) ||
        (rc = get_int(state, "erm_pairs_seen", &seen, src, err)) ||
        (rc = get_int(state, "pair_log_generation", &gen, src, err)) ||
        (rc = get_int(state, "pair_log_base", &base, src, err)) ||
        (rc = get_int(state, "pair_log_records", &records, src, err)) ||
        (rc = get_int(state, "erm_right", &t->erm_right, src, err)) ||
        (rc = get_int(state, "erm_scored", &s.erm_scored, src, err)) ||
        (rc = get_real(state, "loss", &s.loss, src, err)) || (rc = get_real(state, "margin", &s.margin, src, err)) ||
        (rc = get_real(state, "accuracy", &s.accuracy, src, err)) || (rc = get_real(state, "kl", &s.kl, src, err)) ||
        (rc = get_real(state, "lr", &s.lr, src, err)) || (rc = get_real(state, "grad_norm", &s.grad_norm, src, err)) ||
        (rc = get_real(state, "erm_loss", &s.erm_loss, src, err)))
        goto done;
    const char *applied = json_string_value(json_object_get(state, "last_applied_id"));
    uint64_t a, b;
    if (!applied || strlen(applied) >= STREAM_ID_MAX || (applied[0] && stream_id_parse(applied, &a, &b) != 0)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad last_applied_id", src);
        goto done;
    }
    json_t *rng = json_object_get(state, "erm_rng"), *recent = json_object_get(state, "recent_vote_ids");
    if (!json_is_array(rng) || json_array_size(rng) != 4 || !json_is_array(recent) || base + records != seen) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad erm_rng, recent_vote_ids or pair log counts", src);
        goto done;
    }
    uint64_t rng_state[4], mix_state[4];
    json_t *mix = json_object_get(state, "mix_rng");
    for (int i = 0; i < 8; i++) {
        const char *h = json_string_value(json_array_get(i < 4 ? rng : mix, (size_t)(i % 4)));
        char *end = NULL;
        uint64_t *dst = i < 4 ? &rng_state[i] : &mix_state[i - 4];
        if (!h || strlen(h) != 16 || (*dst = strtoull(h, &end, 16), *end != '\0')) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad %s", src, i < 4 ? "erm_rng" : "mix_rng");
            goto done;
        }
    }
    int64_t synthetic = 0;
    if ((rc = get_int(state, "synthetic_total", &s.synthetic_total, src, err)) ||
        (rc = get_int(state, "synthetic", &synthetic, src, err)))
        goto done;
    s.synthetic = (int)synthetic;
    /* ERM parameters and moments, verified by hash and shape. */
    char erm_path[DURABLE_PATH_MAX], opt_path[DURABLE_PATH_MAX], entries_path[DURABLE_PATH_MAX];
    if ((rc = durable_path_join(erm_path, dir, "erm.safetensors", err)) ||
        (rc = durable_path_join(opt_path, dir, "erm_optimizer.safetensors", err)) ||
        (rc = durable_path_join(entries_path, dir, "entries.bin", err)) ||
        (rc = verify_hash(state, "erm_sha256", erm_path, src, err)) ||
        (rc = verify_hash(state, "erm_optimizer_sha256", opt_path, src, err)) ||
        (rc = verify_hash(state, "entries_sha256", entries_path, src, err)))
        goto done;
    erm *loaded = NULL;
    if ((rc = erm_load(erm_path, t->erm->config.d_feat, &loaded, err))) goto done;
    if (loaded->config.num_heads != t->erm->config.num_heads || loaded->config.hidden != t->erm->config.hidden) {
        erm_free(loaded);
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: ERM shape differs from the configured one", erm_path);
        goto done;
    }
    adamw_state *eo = erm_trainer_optimizer(t->erm_trainer);
    safetensors_archive *ar = NULL;
    const safetensors_tensor *tm = NULL, *tv = NULL;
    int64_t shape[1] = {(int64_t)eo->num_parameters};
    if ((rc = safetensors_open_file(opt_path, &ar, err)) == 0 &&
        (rc = safetensors_expect(ar, "adamw.m", 1, shape, &tm, err)) == 0 &&
        (rc = safetensors_expect(ar, "adamw.v", 1, shape, &tv, err)) == 0 &&
        (rc = safetensors_to_f32(tm, eo->m, err)) == 0)
        rc = safetensors_to_f32(tv, eo->v, err);
    safetensors_close(ar);
    if (rc) {
        erm_free(loaded);
        goto done;
    }
    memcpy(t->erm->params.memory, loaded->params.memory, t->erm->num_params * sizeof(float));
    memcpy(t->erm->initial.memory, loaded->initial.memory, t->erm->num_params * sizeof(float));
    erm_free(loaded);
    eo->step = erm_step;
    memcpy(erm_trainer_rng(t->erm_trainer)->s, rng_state, sizeof rng_state);
    memcpy(t->mix_rng.s, mix_state, sizeof mix_state);
    /* The SEA store and the pending batch. */
    if ((rc = read_entries(t, entries_path, err))) goto done;
    /* Policy weights and moments. */
    checkpoint_progress cp;
    if ((rc = durable_path_join(path, dir, "policy", err)) ||
        (rc = checkpoint_load(path, t->policy, &t->optimizer, &cp, err)))
        goto done;
    /* The pair buffer: the last buffer_capacity valid records of the log. */
    if ((rc = erm_pair_log_resume(&t->pair_log, gen, base, records, t->erm_trainer, t->options.erm.buffer_capacity,
                                  err)))
        goto done;
    erm_trainer_set_pairs_seen(t->erm_trainer, seen);
    /* Bookkeeping. */
    vote_dedup_clear(&t->recent);
    for (size_t i = 0; i < json_array_size(recent); i++) {
        const char *v = json_string_value(json_array_get(recent, i));
        if (!v || strlen(v) > VOTE_ENTRY_MAX_ID) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad recent_vote_ids entry %zu", src, i);
            goto done;
        }
        vote_dedup_add(&t->recent, v);
    }
    snprintf(t->last_applied_id, sizeof t->last_applied_id, "%s", applied);
    s.erm_accuracy = s.erm_scored > 0 ? (double)t->erm_right / (double)s.erm_scored : 0;
    t->status = s;
done:
    json_decref(state);
    return rc;
}
