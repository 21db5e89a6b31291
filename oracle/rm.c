/* rm.c: the reward-model oracle: r*(x, y) from a *ForSequenceClassification checkpoint run by
 * the CPU forward pass (inference/model.h). The score is label 0 of the classifier at the last
 * token of the rendered conversation, as transformers reads a sequence classifier on an
 * unpadded sequence. Owns the model, its tokenizer and chat template; one thread at a time. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chat_template.h"
#include "model.h"
#include "oracle.h"
#include "tokenizer.h"

struct oracle_rm {
    model *model;
    tokenizer *tokenizer; /* NULL when the checkpoint has no tokenizer.json */
    chat_template_kind template_kind;
    char dir[PATH_MAX];
};

void oracle_rm_free(oracle_rm *rm) {
    if (!rm) return;
    model_free(rm->model);
    tokenizer_free(rm->tokenizer);
    free(rm);
}

int oracle_rm_load(const char *dir, oracle_rm **out, duel_error *err) {
    if (!dir || !out) return duel_error_set(err, DUEL_EINVAL, "rm oracle: NULL argument");
    *out = NULL;
    oracle_rm *rm = calloc(1, sizeof *rm);
    if (!rm) return duel_error_set(err, DUEL_ENOMEM, "rm oracle: out of memory");
    snprintf(rm->dir, sizeof rm->dir, "%s", dir);
    int rc = model_load(dir, &rm->model, err);
    if (rc) goto fail;
    const model_config *c = model_get_config(rm->model);
    if (c->head != MODEL_HEAD_SEQUENCE_CLASSIFICATION) {
        rc = duel_error_set(err, DUEL_EUNSUPPORTED, "%s: %s is not a sequence classifier (a reward "
                            "model is a *ForSequenceClassification checkpoint)", dir,
                            c->architecture);
        goto fail;
    }
    if (model_output_size(rm->model) < 1) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: the classifier has no labels", dir);
        goto fail;
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        if ((rc = tokenizer_load(path, &rm->tokenizer, err))) goto fail;
        if ((rc = chat_template_detect(dir, &rm->template_kind, err))) goto fail;
    }
    *out = rm;
    return 0;
fail:
    oracle_rm_free(rm);
    return rc;
}

int oracle_rm_score_tokens(oracle_rm *rm, const int32_t *tokens, int n, double *score,
                           duel_error *err) {
    if (!rm || !tokens || !score) return duel_error_set(err, DUEL_EINVAL, "rm oracle: NULL argument");
    const model_config *c = model_get_config(rm->model);
    if (n < 1 || n > c->max_position_embeddings)
        return duel_error_set(err, DUEL_EINVAL, "rm oracle %s: %d tokens outside 1..%d", rm->dir, n,
                              c->max_position_embeddings);
    int labels = model_output_size(rm->model);
    float *logits = malloc(sizeof(float) * (size_t)labels);
    if (!logits) return duel_error_set(err, DUEL_ENOMEM, "rm oracle: out of memory");
    /* A cache sized to this sequence: memory follows the request, not the model's context. */
    model_kv_cache *kv = NULL;
    int rc = model_kv_cache_create(rm->model, n, &kv, err);
    if (!rc) rc = model_forward(rm->model, kv, tokens, n, logits, false, NULL, err);
    if (!rc && !isfinite(logits[0]))
        rc = duel_error_set(err, DUEL_EFORMAT, "rm oracle %s: the model's score is %s", rm->dir,
                            isnan(logits[0]) ? "NaN" : "infinite");
    if (!rc) *score = logits[0];
    model_kv_cache_free(kv);
    free(logits);
    return rc;
}

int oracle_rm_score_text(oracle_rm *rm, const char *prompt, const char *answer, double *score,
                         duel_error *err) {
    if (!rm || !prompt || !answer || !score)
        return duel_error_set(err, DUEL_EINVAL, "rm oracle: NULL argument");
    if (!rm->tokenizer)
        return duel_error_set(err, DUEL_EINVAL, "rm oracle %s: no tokenizer.json, so only token "
                              "ids can be scored", rm->dir);
    chat_message messages[2] = {{"user", prompt}, {"assistant", answer}};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    /* Encoded per part, so an answer containing a marker string cannot end its own turn. */
    int rc = chat_template_encode(rm->template_kind, rm->tokenizer, messages, 2, false, &ids,
                                  &n_ids, err);
    if (!rc && n_ids > INT_MAX) rc = duel_error_set(err, DUEL_ELIMIT, "rm oracle: text too long");
    if (!rc) rc = oracle_rm_score_tokens(rm, ids, (int)n_ids, score, err);
    free(ids);
    return rc;
}
