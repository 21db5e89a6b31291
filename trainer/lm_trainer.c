/* lm_trainer.c: the pretrain/SFT loop, evaluation, and HF model load/init/export (see
 * lm_trainer.h). */
#include "lm_trainer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "file_map.h"
#include "model_config.h"
#include "rng.h"
#include "safetensors.h"
#include "timer.h"

void lm_train_default_options(lm_train_options *o) {
    memset(o, 0, sizeof(*o));
    o->batch_size = 16;
    o->grad_accum = 1;
    o->total_steps = 1000;
    o->lr = 1e-3;
    o->min_lr = 1e-4;
    o->warmup_steps = 50;
    adamw_default_options(&o->adamw);
    o->clip_norm = 1.0;
    o->eval_every = 100;
    o->eval_batches = 20;
    o->seed = 1234;
}

static int check_options(const lm_train_options *o, duel_error *err) {
    if (o->batch_size <= 0 || o->batch_size > 65536 || o->grad_accum <= 0 ||
        o->grad_accum > 65536) {
        return duel_error_set(err, DUEL_EINVAL, "batch size and accumulation must be in [1, 65536]");
    }
    if (o->eval_every < 0 || o->eval_batches < 0 || o->checkpoint_every < 0 || o->stop_at_step < 0) {
        return duel_error_set(err, DUEL_EINVAL, "negative evaluation or checkpoint interval");
    }
    if (o->checkpoint_dir != NULL && o->config_json == NULL) {
        return duel_error_set(err, DUEL_EINVAL, "checkpoints need the model's config.json text");
    }
    lr_schedule s = {o->lr, o->min_lr, o->warmup_steps, o->total_steps};
    return lr_schedule_check(&s, err);
}


int lm_train_evaluate(train_model *model, const lm_dataset *data, int batch_size, int max_batches,
                      double *loss, duel_error *err) {
    int max_len = 1;
    for (size_t i = 0; i < data->num_examples; i++) {
        max_len = data->examples[i].len > max_len ? data->examples[i].len : max_len;
    }
    lm_batch batch;
    int rc = lm_batch_init(&batch, batch_size, max_len, err);
    if (rc != 0) {
        return rc;
    }
    const lm_example **rows = malloc((size_t)batch_size * sizeof(*rows));
    double *seq_logprob = malloc((size_t)batch_size * sizeof(double));
    double *seq_count = malloc((size_t)batch_size * sizeof(double));
    if (rows == NULL || seq_logprob == NULL || seq_count == NULL) {
        rc = duel_error_set(err, DUEL_ENOMEM, "evaluation: out of memory");
        goto done;
    }
    double total = 0, count = 0;
    int batches = 0;
    for (size_t start = 0; start < data->num_examples; start += (size_t)batch_size) {
        if (max_batches > 0 && batches >= max_batches) {
            break;
        }
        int n = 0;
        for (size_t i = start; i < data->num_examples && n < batch_size; i++) {
            rows[n++] = &data->examples[i];
        }
        lm_batch_fill(&batch, rows, n);
        train_batch tb = {batch.batch_size, batch.seq_len, batch.tokens, batch.targets, batch.mask};
        if ((rc = train_model_forward(model, &tb, seq_logprob, seq_count, NULL, err)) != 0) {
            goto done;
        }
        for (int b = 0; b < n; b++) {
            total -= seq_logprob[b];
            count += seq_count[b];
        }
        batches++;
    }
    *loss = count > 0 ? total / count : NAN;
done:
    free(rows);
    free(seq_logprob);
    free(seq_count);
    lm_batch_free(&batch);
    return rc;
}

int lm_train_run(train_model *model, const lm_dataset *train, const lm_dataset *valid,
                 const lm_train_options *o, lm_train_callback callback, void *ctx,
                 lm_train_progress *final, duel_error *err) {
    int rc = check_options(o, err);
    if (rc != 0) {
        return rc;
    }
    size_t n = train_model_num_parameters(model);
    int A = o->grad_accum, B = o->batch_size;
    int max_len = 1;
    for (size_t i = 0; i < train->num_examples; i++) {
        max_len = train->examples[i].len > max_len ? train->examples[i].len : max_len;
    }
    adamw_state opt = {0};
    lm_order order = {0};
    lm_batch *batches = calloc((size_t)A, sizeof(lm_batch));
    const lm_example **rows = malloc((size_t)B * sizeof(*rows));
    double *seq_logprob = malloc((size_t)B * sizeof(double));
    double *seq_count = malloc((size_t)B * sizeof(double));
    double *dseq = malloc((size_t)B * sizeof(double));
    unsigned char *mask = train_model_decay_mask(model);
    if (batches == NULL || rows == NULL || seq_logprob == NULL || seq_count == NULL ||
        dseq == NULL || mask == NULL) {
        rc = duel_error_set(err, DUEL_ENOMEM, "training: out of memory");
        goto done;
    }
    for (int a = 0; a < A; a++) {
        if ((rc = lm_batch_init(&batches[a], B, max_len, err)) != 0) {
            goto done;
        }
    }
    if ((rc = adamw_init(&opt, n, err)) != 0 ||
        (rc = lm_order_init(&order, train, B, o->seed, err)) != 0) {
        goto done;
    }
    lm_train_progress p = {0};
    p.total_steps = o->total_steps;
    p.valid_loss = NAN;
    p.loss = NAN;
    if (o->checkpoint_dir != NULL && checkpoint_exists(o->checkpoint_dir)) {
        checkpoint_progress cp;
        if ((rc = checkpoint_load(o->checkpoint_dir, model, &opt, &cp, err)) != 0) {
            goto done;
        }
        if (cp.seed != o->seed) {
            rc = duel_error_set(err, DUEL_EINVAL,
                                "%s: checkpoint was trained with seed %llu, this run has %llu",
                                o->checkpoint_dir, (unsigned long long)cp.seed,
                                (unsigned long long)o->seed);
            goto done;
        }
        p.step = cp.step;
        p.tokens_seen = cp.tokens_seen;
        p.event = LM_TRAIN_RESUMED;
        if (callback != NULL) {
            callback(ctx, &p);
        }
    }
    lr_schedule schedule = {o->lr, o->min_lr, o->warmup_steps, o->total_steps};
    float *params = train_model_parameter_memory(model);
    float *grads = train_model_gradient_memory(model);
    double start = duel_time_seconds(), run_tokens = 0;
    int64_t start_step = p.step;
    int64_t end_step = o->stop_at_step > 0 && o->stop_at_step < o->total_steps ? o->stop_at_step
                                                                               : o->total_steps;
    while (p.step < end_step) {
        double step_tokens = 0, input_tokens = 0;
        for (int a = 0; a < A; a++) {
            int num_rows = 0;
            lm_order_batch(&order, train, (long long)p.step * A + a, rows, &num_rows);
            lm_batch_fill(&batches[a], rows, num_rows);
            step_tokens += batches[a].loss_tokens;
            input_tokens += (double)batches[a].batch_size * batches[a].seq_len;
        }
        train_model_zero_grad(model);
        double loss_sum = 0;
        for (int a = 0; a < A && step_tokens > 0; a++) {
            lm_batch *b = &batches[a];
            train_batch tb = {b->batch_size, b->seq_len, b->tokens, b->targets, b->mask};
            if ((rc = train_model_forward(model, &tb, seq_logprob, seq_count, NULL, err)) != 0) {
                goto done;
            }
            for (int r = 0; r < b->batch_size; r++) {
                loss_sum -= seq_logprob[r];
                dseq[r] = -1.0 / step_tokens;
            }
            if ((rc = train_model_backward(model, dseq, err)) != 0) {
                goto done;
            }
        }
        p.loss = step_tokens > 0 ? loss_sum / step_tokens : 0;
        if (!isfinite(p.loss)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "training diverged: loss %g at step %lld",
                                p.loss, (long long)p.step + 1);
            goto done;
        }
        p.grad_norm = adamw_clip_grad_norm(grads, n, o->clip_norm);
        if (!isfinite(p.grad_norm)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "training diverged: gradient norm %g at step %lld",
                                p.grad_norm, (long long)p.step + 1);
            goto done;
        }
        p.lr = lr_schedule_at(&schedule, p.step);
        if ((rc = adamw_update(&opt, &o->adamw, params, grads, mask, p.lr, err)) != 0) {
            goto done;
        }
        p.step++;
        p.tokens_seen += input_tokens;
        run_tokens += input_tokens;
        p.elapsed_seconds = duel_time_seconds() - start;
        p.tokens_per_second = p.elapsed_seconds > 0 ? run_tokens / p.elapsed_seconds : 0;
        p.eta_seconds = p.step > start_step ? p.elapsed_seconds / (double)(p.step - start_step) *
                                                  (double)(o->total_steps - p.step)
                                            : 0;
        p.event = LM_TRAIN_STEP;
        if (callback != NULL) {
            callback(ctx, &p);
        }
        bool last = p.step == end_step;
        if (valid != NULL && ((o->eval_every > 0 && p.step % o->eval_every == 0) ||
                              p.step == o->total_steps)) {
            if ((rc = lm_train_evaluate(model, valid, B, o->eval_batches, &p.valid_loss, err)) != 0) {
                goto done;
            }
            p.event = LM_TRAIN_EVAL;
            if (callback != NULL) {
                callback(ctx, &p);
            }
        }
        if (o->checkpoint_dir != NULL &&
            (last || (o->checkpoint_every > 0 && p.step % o->checkpoint_every == 0))) {
            checkpoint_progress cp = {p.step, o->seed, p.tokens_seen};
            if ((rc = checkpoint_save(o->checkpoint_dir, model, &opt, &cp, o->config_json, NULL, err)) != 0) {
                goto done;
            }
            p.event = LM_TRAIN_CHECKPOINT;
            if (callback != NULL) {
                callback(ctx, &p);
            }
        }
    }
    /* A run resumed at its end still reports the validation loss of the weights it holds. */
    if (valid != NULL && isnan(p.valid_loss) && p.step == o->total_steps &&
        (rc = lm_train_evaluate(model, valid, B, o->eval_batches, &p.valid_loss, err)) != 0) {
        goto done;
    }
    if (final != NULL) {
        *final = p;
    }
done:
    if (batches != NULL) {
        for (int a = 0; a < A; a++) {
            lm_batch_free(&batches[a]);
        }
    }
    free(batches);
    free(rows);
    free(seq_logprob);
    free(seq_count);
    free(dseq);
    free(mask);
    adamw_free(&opt);
    lm_order_free(&order);
    return rc;
}

void lm_model_init_random(train_model *model, uint64_t seed, double std) {
    const model_config *c = train_model_config(model);
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    double out_std = std / sqrt(2.0 * c->num_layers);
    for (int i = 0; i < train_model_num_tensors(model); i++) {
        train_tensor t;
        train_model_tensor_at(model, i, &t);
        const char *name = t.name;
        bool norm = strstr(name, "norm") != NULL;
        bool bias = strstr(name, ".bias") != NULL;
        bool output = strstr(name, "o_proj") != NULL || strstr(name, "down_proj") != NULL ||
                      strstr(name, "attention.dense") != NULL ||
                      strstr(name, "dense_4h_to_h") != NULL;
        for (size_t k = 0; k < t.numel; k++) {
            if (norm && !bias) {
                t.param[k] = 1.0f;
            } else if (bias) {
                t.param[k] = 0.0f;
            } else {
                t.param[k] = (float)(duel_rng_normal(&rng) * (output ? out_std : std));
            }
        }
    }
}

int lm_model_load_hf(const char *dir, train_model **out, char **config_json, duel_error *err) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/config.json", dir) >= (int)sizeof(path)) {
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    }
    char *text = NULL;
    size_t len = 0;
    model_config config;
    int rc = duel_file_read_all(path, MODEL_CONFIG_MAX_JSON_BYTES, &text, &len, err);
    if (rc != 0) {
        return rc;
    }
    if ((rc = model_config_parse(text, len, path, &config, err)) != 0) {
        free(text);
        return rc;
    }
    train_model *model = NULL;
    safetensors_archive *archive = NULL;
    if ((rc = train_model_create(&config, &model, err)) != 0 ||
        (rc = safetensors_open_dir(dir, &archive, err)) != 0) {
        goto fail;
    }
    for (int i = 0; i < train_model_num_tensors(model); i++) {
        train_tensor t;
        const safetensors_tensor *st = NULL;
        int64_t shape[2];
        train_model_tensor_at(model, i, &t);
        for (int d = 0; d < t.ndim; d++) {
            shape[d] = t.shape[d];
        }
        if ((rc = safetensors_expect(archive, t.name, t.ndim, shape, &st, err)) != 0 ||
            (rc = safetensors_to_f32(st, t.param, err)) != 0) {
            goto fail;
        }
    }
    safetensors_close(archive);
    *out = model;
    *config_json = text;
    return 0;
fail:
    safetensors_close(archive);
    train_model_free(model);
    free(text);
    return rc;
}

void lm_model_export_block(train_model *model, float *out) {
    size_t offset = 0;
    for (int i = 0; i < train_model_num_tensors(model); i++) {
        train_tensor t;
        train_model_tensor_at(model, i, &t);
        memcpy(out + offset, t.param, t.numel * sizeof *out);
        offset += t.numel;
    }
}

int lm_model_export_hf(train_model *model, const char *config_json, const char *dir, bool bf16,
                       duel_error *err) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", dir, strerror(errno));
    }
    int num = train_model_num_tensors(model);
    size_t total = 0;
    for (int i = 0; i < num; i++) {
        train_tensor t;
        train_model_tensor_at(model, i, &t);
        total += t.numel;
    }
    safetensors_write_tensor *tensors = calloc((size_t)num, sizeof(*tensors));
    train_tensor *views = calloc((size_t)num, sizeof(*views));
    uint16_t *half = bf16 ? malloc(total * sizeof(uint16_t)) : NULL;
    int rc = 0;
    if (tensors == NULL || views == NULL || (bf16 && half == NULL)) {
        rc = duel_error_set(err, DUEL_ENOMEM, "export: out of memory");
        goto done;
    }
    size_t offset = 0;
    for (int i = 0; i < num; i++) {
        train_model_tensor_at(model, i, &views[i]);
        tensors[i].name = views[i].name;
        tensors[i].ndim = views[i].ndim;
        for (int d = 0; d < views[i].ndim; d++) {
            tensors[i].shape[d] = views[i].shape[d];
        }
        if (bf16) {
            for (size_t k = 0; k < views[i].numel; k++) {
                half[offset + k] = safetensors_f32_to_bf16(views[i].param[k]);
            }
            tensors[i].dtype = SAFETENSORS_BF16;
            tensors[i].data = half + offset;
            offset += views[i].numel;
        } else {
            tensors[i].dtype = SAFETENSORS_F32;
            tensors[i].data = views[i].param;
        }
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if ((rc = safetensors_write_file(path, tensors, (size_t)num, "{\"format\": \"pt\"}", err)) != 0) {
        goto done;
    }
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    bool written = f != NULL && fputs(config_json, f) >= 0;
    if (f != NULL && fclose(f) != 0) {
        written = false;
    }
    if (!written) {
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot write", path);
        goto done;
    }
done:
    free(tensors);
    free(views);
    free(half);
    return rc;
}
