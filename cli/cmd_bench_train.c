/* cmd_bench_train.c: `duel bench train`: training speed on the CPU. For the default model
 * (models/default, or its shape with random weights) and a ~100M-parameter Llama, it times full
 * pretraining updates (forward, backward, clipping, AdamW) on random tokens and offline DPO
 * updates (reference forward over the pair, policy forward and backward, AdamW), and reports
 * training tokens/s, DPO pairs/s, and the achieved FLOP rate as a fraction of this machine's
 * sgemm rate measured in the same run (the best of the interleaved probes).
 *
 * FLOPs per trained position: 6 x (weights in matrix products) plus the causal attention's
 * 6 x layers x T x (heads x head_dim) (score and value products, halved by the mask, forward and
 * backward), plus 6 x vocab x hidden for the output head on positions that carry loss. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adamw.h"
#include "bench_json.h"
#include "cli.h"
#include "dap_loss.h"
#include "lm_trainer.h"
#include "machine_limits.h"
#include "model_config.h"
#include "rng.h"
#include "timer.h"

static const char *LARGE_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32000, \"hidden_size\": 768,"
    " \"intermediate_size\": 2048, \"num_hidden_layers\": 12, \"num_attention_heads\": 12,"
    " \"num_key_value_heads\": 4, \"max_position_embeddings\": 1024, \"rms_norm_eps\": 1e-5,"
    " \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": true}";
static const char *DEFAULT_SHAPE_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 4096, \"hidden_size\": 320,"
    " \"intermediate_size\": 864, \"num_hidden_layers\": 4, \"num_attention_heads\": 10,"
    " \"num_key_value_heads\": 2, \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5,"
    " \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": true}";

typedef struct bench_result {
    char name[64];
    size_t parameters;
    double tokens_per_second, train_gflops;
    double pairs_per_second, dpo_gflops;
} bench_result;

static void random_batch(duel_rng *rng, int vocab, int n, int32_t *tokens, int32_t *targets,
                         float *mask) {
    for (int i = 0; i < n; i++) {
        tokens[i] = (int32_t)duel_rng_below(rng, (uint64_t)vocab);
        targets[i] = (int32_t)duel_rng_below(rng, (uint64_t)vocab);
        mask[i] = 1.0f;
    }
}

/* Best-of-steps timings of one training update and one DPO update. */
static int bench_model(const char *name, train_model *m, int B, int T, int pairs, int steps,
                       machine_probe *probe, double *sgemm_best, bench_result *r,
                       duel_error *err) {
    memset(r, 0, sizeof(*r));
    snprintf(r->name, sizeof r->name, "%s", name);
    size_t n = train_model_num_parameters(m);
    r->parameters = n;
    const model_config *c = train_model_config(m);
    int rows = B > 2 * pairs ? B : 2 * pairs;
    int32_t *tokens = malloc((size_t)rows * T * sizeof(int32_t));
    int32_t *targets = malloc((size_t)rows * T * sizeof(int32_t));
    float *mask = malloc((size_t)rows * T * sizeof(float));
    double *lp = malloc((size_t)rows * sizeof(double)), *cnt = malloc((size_t)rows * sizeof(double));
    double *ref = malloc((size_t)rows * sizeof(double)), *dseq = malloc((size_t)rows * sizeof(double));
    adamw_state opt = {0};
    adamw_options ao;
    adamw_default_options(&ao);
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    int rc = adamw_init(&opt, n, err);
    if (rc == 0 && (tokens == NULL || targets == NULL || mask == NULL || lp == NULL ||
                    cnt == NULL || ref == NULL || dseq == NULL))
        rc = duel_error_set(err, DUEL_ENOMEM, "bench: out of memory");
    double best_train = INFINITY, best_dpo = INFINITY;
    for (int s = 0; rc == 0 && s <= steps; s++) { /* s == 0 warms up */
        double gflops;
        if ((rc = machine_probe_sgemm(probe, &gflops, err)) != 0) break;
        if (gflops > *sgemm_best) *sgemm_best = gflops;
        /* pretraining update */
        random_batch(&rng, c->vocab_size, B * T, tokens, targets, mask);
        train_batch tb = {B, T, tokens, targets, mask};
        double t0 = duel_time_seconds();
        train_model_zero_grad(m);
        if ((rc = train_model_forward(m, &tb, lp, cnt, NULL, err)) != 0) break;
        for (int b = 0; b < B; b++) dseq[b] = -1.0 / ((double)B * T);
        if ((rc = train_model_backward(m, dseq, err)) != 0) break;
        adamw_clip_grad_norm(train_model_gradient_memory(m), n, 1.0);
        if ((rc = adamw_update(&opt, &ao, train_model_parameter_memory(m),
                               train_model_gradient_memory(m), NULL, 1e-6, err)) != 0) break;
        double dt = duel_time_seconds() - t0;
        if (s > 0 && dt < best_train) best_train = dt;
        /* DPO update: reference forward (same shape), policy forward + backward, AdamW */
        random_batch(&rng, c->vocab_size, 2 * pairs * T, tokens, targets, mask);
        for (int i = 0; i < 2 * pairs * T; i++) mask[i] = (i % T) >= T / 2 ? 1.0f : 0.0f; /* responses */
        train_batch pb = {2 * pairs, T, tokens, targets, mask};
        t0 = duel_time_seconds();
        if ((rc = train_model_forward(m, &pb, ref, cnt, NULL, err)) != 0) break;
        train_model_zero_grad(m);
        if ((rc = train_model_forward(m, &pb, lp, cnt, NULL, err)) != 0) break;
        dap_loss_options lo;
        dap_loss_default_options(DAP_LOSS_DPO, &lo);
        dap_loss_batch db = {pairs, lp, lp + pairs, cnt, cnt + pairs, ref, ref + pairs, NULL, NULL};
        dap_loss_grads dg = {dseq, dseq + pairs, NULL};
        dap_loss_result dr;
        if ((rc = dap_loss_compute(&lo, &db, &dr, &dg, err)) != 0) break;
        if ((rc = train_model_backward(m, dseq, err)) != 0) break;
        adamw_clip_grad_norm(train_model_gradient_memory(m), n, 1.0);
        if ((rc = adamw_update(&opt, &ao, train_model_parameter_memory(m),
                               train_model_gradient_memory(m), NULL, 1e-6, err)) != 0) break;
        dt = duel_time_seconds() - t0;
        if (s > 0 && dt < best_dpo) best_dpo = dt;
        fprintf(stderr, "  %s: step %d/%d\n", name, s, steps);
    }
    if (rc == 0) {
        double body, head;
        train_model_flops_per_position(m, T, &body, &head);
        r->tokens_per_second = (double)B * T / best_train;
        r->train_gflops = r->tokens_per_second * (body + head) / 1e9;
        r->pairs_per_second = pairs / best_dpo;
        /* The reference forward is 1/3 of a trained position's FLOPs, so each position costs
         * 4/3; the head runs on the response half of the positions only. */
        double positions = 2.0 * pairs * T;
        r->dpo_gflops = positions * (body + 0.5 * head) * (4.0 / 3.0) / best_dpo / 1e9;
    }
    adamw_free(&opt);
    free(tokens);
    free(targets);
    free(mask);
    free(lp);
    free(cnt);
    free(ref);
    free(dseq);
    return rc;
}

static int make_model(const char *config_text, train_model **out, duel_error *err) {
    model_config config;
    int rc = model_config_parse(config_text, strlen(config_text), "bench config", &config, err);
    if (rc == 0) rc = train_model_create(&config, out, err);
    if (rc == 0) lm_model_init_random(*out, 1, 0.02);
    return rc;
}

int bench_train(int argc, char **argv) {
    const char *model_dir = "models/default";
    long long batch = 8, seq_len = 128, pairs = 4, steps = 2, large_batch = 4, large_seq = 256;
    bool skip_large = false, json = false;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model_dir, "DIR", "the small model (default models/default; its shape with random weights when missing)", 0, 0, false, NULL},
        {"--batch-size", CLI_OPT_INT, &batch, "N", "sequences per training update, small model (default 8)", 1, 4096, false, NULL},
        {"--seq-len", CLI_OPT_INT, &seq_len, "N", "tokens per sequence, small model (default 128)", 2, 4096, false, NULL},
        {"--pairs", CLI_OPT_INT, &pairs, "N", "preference pairs per DPO update (default 4)", 1, 4096, false, NULL},
        {"--steps", CLI_OPT_INT, &steps, "N", "timed updates per model after one warm-up; the best counts (default 2)", 1, 1000, false, NULL},
        {"--large-batch-size", CLI_OPT_INT, &large_batch, "N", "sequences per update, ~100M model (default 4)", 1, 4096, false, NULL},
        {"--large-seq-len", CLI_OPT_INT, &large_seq, "N", "tokens per sequence, ~100M model (default 256)", 2, 1024, false, NULL},
        {"--skip-large", CLI_OPT_FLAG, &skip_large, NULL, "only the small model", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL, "also print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench train", "[options]",
        "Training speed on the CPU: pretraining tokens/s and offline DPO pairs/s for the default\n"
        "model and a ~100M-parameter Llama (random tokens; forward, backward, clipping, AdamW),\n"
        "with the achieved GFLOP/s as a fraction of this machine's sgemm rate, measured in the\n"
        "same run (best of the probes interleaved with the updates).",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    duel_error err = {0};
    machine_probe *probe = NULL;
    double sgemm = 0;
    bench_result results[2];
    int n_results = 0;
    if ((rc = machine_probe_create(2048, (size_t)64 << 20, 1, &probe, &err)) != 0) goto done;
    for (int which = 0; which < (skip_large ? 1 : 2); which++) {
        train_model *m = NULL;
        char *config_json = NULL;
        const char *name = which == 0 ? "default" : "llama-100m";
        if (which == 0 && access(model_dir, R_OK) == 0) {
            rc = lm_model_load_hf(model_dir, &m, &config_json, &err);
            free(config_json);
        } else {
            rc = make_model(which == 0 ? DEFAULT_SHAPE_CONFIG : LARGE_CONFIG, &m, &err);
        }
        if (rc != 0) goto done;
        int B = (int)(which == 0 ? batch : large_batch), T = (int)(which == 0 ? seq_len : large_seq);
        int max_pos = train_model_config(m)->max_position_embeddings;
        if (T > max_pos) T = max_pos;
        fprintf(stderr, "%s: %zu parameters, batch %d x %d tokens, %lld DPO pairs\n", name,
                train_model_num_parameters(m), B, T, pairs);
        rc = bench_model(name, m, B, T, (int)pairs, (int)steps, probe, &sgemm, &results[n_results], &err);
        train_model_free(m);
        if (rc != 0) goto done;
        n_results++;
    }
    printf("sgemm: %.1f GFLOP/s (best probe)\n", sgemm);
    for (int i = 0; i < n_results; i++) {
        bench_result *r = &results[i];
        printf("%-10s %6.1fM params  train %8.0f tokens/s  %6.1f GFLOP/s (%4.1f%% of sgemm)  "
               "dpo %7.2f pairs/s  %6.1f GFLOP/s (%4.1f%%)\n",
               r->name, r->parameters / 1e6, r->tokens_per_second, r->train_gflops,
               100 * r->train_gflops / sgemm, r->pairs_per_second, r->dpo_gflops,
               100 * r->dpo_gflops / sgemm);
    }
    if (json) {
        json_t *o = json_object(), *arr = json_array();
        json_object_set_new(o, "sgemm_gflops", json_real(sgemm));
        for (int i = 0; i < n_results; i++) {
            bench_result *r = &results[i];
            json_array_append_new(arr, json_pack("{s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:f}", "model", r->name,
                                                 "parameters", (json_int_t)r->parameters, "tokens_per_second",
                                                 r->tokens_per_second, "train_gflops", r->train_gflops,
                                                 "train_fraction_of_sgemm", r->train_gflops / sgemm,
                                                 "dpo_pairs_per_second", r->pairs_per_second, "dpo_gflops",
                                                 r->dpo_gflops, "dpo_fraction_of_sgemm", r->dpo_gflops / sgemm));
        }
        json_object_set_new(o, "models", arr);
        if (bench_json_print("train", o)) rc = duel_error_set(&err, DUEL_EIO, "the JSON line could not be printed");
    }
done:
    machine_probe_free(probe);
    if (rc != 0) fprintf(stderr, "duel bench train: %s\n", err.message);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
