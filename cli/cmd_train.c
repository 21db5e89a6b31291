/* cmd_train.c: `duel pretrain` (next-token loss on text, one document per line) and `duel sft`
 * (prompt/response JSONL, loss on the response) over trainer/lm_trainer.h, and `duel dpo`
 * (offline DPO/IPO/SLiC on a preference file). Each writes its
 * checkpoint in <out>/checkpoint, resumes from it when present, prints a progress line
 * (step, loss, tokens/s, ETA) and validation losses, and at the end exports an HF model folder
 * into <out> (config.json, model.safetensors, tokenizer.json, tokenizer_config.json). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat_template.h"
#include "cli.h"
#include "dpo_trainer.h"
#include "file_map.h"
#include "lm_trainer.h"
#include "model_config.h"
#include "timer.h"
#include "tokenizer.h"

#define TRAIN_PATH_MAX 4096

typedef struct train_cli {
    const char *model_dir, *config_path, *tokenizer_path, *train_path, *valid_path, *out_dir;
    const char *template_name, *dtype;
    long long steps, batch_size, grad_accum, seq_len, warmup, eval_every, eval_batches;
    long long checkpoint_every, seed, stop_at, log_every, max_examples;
    double lr, min_lr, weight_decay, clip, init_std;
    bool skip_bad_lines;
    /* progress printing */
    bool tty;
    double last_print;
} train_cli;

static void format_duration(double s, char *out, size_t cap) {
    if (!isfinite(s) || s < 0) s = 0;
    long long t = (long long)(s + 0.5);
    if (t >= 3600) snprintf(out, cap, "%lldh%02lldm", t / 3600, t / 60 % 60);
    else snprintf(out, cap, "%lldm%02llds", t / 60, t % 60);
}

static void on_progress(void *ctx, const lm_train_progress *p) {
    train_cli *c = ctx;
    char eta[32], elapsed[32];
    switch (p->event) {
    case LM_TRAIN_RESUMED:
        fprintf(stderr, "resumed from %s/checkpoint at step %lld\n", c->out_dir, (long long)p->step);
        break;
    case LM_TRAIN_STEP:
        if (p->step % c->log_every != 0 && p->step != p->total_steps) break;
        format_duration(p->eta_seconds, eta, sizeof eta);
        format_duration(p->elapsed_seconds, elapsed, sizeof elapsed);
        fprintf(stderr, "%sstep %lld/%lld  loss %.4f  lr %.2e  |g| %.2f  %.0f tok/s  %s elapsed  ETA %s%s",
                c->tty ? "\r" : "", (long long)p->step, (long long)p->total_steps, p->loss, p->lr,
                p->grad_norm, p->tokens_per_second, elapsed, eta, c->tty ? "\033[K" : "\n");
        break;
    case LM_TRAIN_EVAL:
        fprintf(stderr, "%sstep %lld: validation loss %.4f\n", c->tty ? "\n" : "", (long long)p->step,
                p->valid_loss);
        break;
    case LM_TRAIN_CHECKPOINT:
        break;
    }
    fflush(stderr);
}

static int copy_file(const char *from, const char *to, duel_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = duel_file_read_all(from, (size_t)1 << 30, &text, &len, err);
    if (rc != 0) return rc;
    FILE *f = fopen(to, "wb");
    bool ok = f != NULL && fwrite(text, 1, len, f) == len;
    if (f != NULL && fclose(f) != 0) ok = false;
    free(text);
    return ok ? 0 : duel_error_set(err, DUEL_EIO, "%s: cannot write", to);
}

static const char *CHATML_JINJA =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
    "}}{% endif %}";

static const char *QA_JINJA =
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'Question: ' + "
    "message['content'] + ' Answer:' }}{% elif message['role'] == 'assistant' %}{{ ' ' + "
    "message['content'] + '<|endoftext|>' }}{% else %}{{ message['content'] + ' ' }}{% endif %}"
    "{% endfor %}";

static int write_tokenizer_config(const char *dir, chat_template_kind kind, duel_error *err) {
    json_t *o = json_object();
    json_object_set_new(o, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    json_object_set_new(o, "bos_token", json_string("<|im_start|>"));
    json_object_set_new(o, "eos_token", json_string(kind == CHAT_TEMPLATE_CHATML ? "<|im_end|>" : "<|endoftext|>"));
    json_object_set_new(o, "pad_token", json_string("<|endoftext|>"));
    json_object_set_new(o, "add_prefix_space", json_false());
    json_object_set_new(o, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(o, "duel_chat_template", json_string(chat_template_name(kind)));
    if (kind == CHAT_TEMPLATE_CHATML) json_object_set_new(o, "chat_template", json_string(CHATML_JINJA));
    if (kind == CHAT_TEMPLATE_QA) json_object_set_new(o, "chat_template", json_string(QA_JINJA));
    char path[TRAIN_PATH_MAX];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    int rc = json_dump_file(o, path, JSON_PRESERVE_ORDER | JSON_INDENT(2));
    json_decref(o);
    return rc == 0 ? 0 : duel_error_set(err, DUEL_EIO, "%s: cannot write", path);
}

/* Creates the model and its config text:
 * from --config (fresh model) or from the --model folder. */
static int setup_model(train_cli *c, train_model **model, char **config_json, duel_error *err) {
    if (c->model_dir != NULL) return lm_model_load_hf(c->model_dir, model, config_json, err);
    size_t len = 0;
    int rc = duel_file_read_all(c->config_path, MODEL_CONFIG_MAX_JSON_BYTES, config_json, &len, err);
    if (rc != 0) return rc;
    model_config config;
    if ((rc = model_config_parse(*config_json, len, c->config_path, &config, err)) != 0 ||
        (rc = train_model_create(&config, model, err)) != 0) {
        free(*config_json);
        *config_json = NULL;
        return rc;
    }
    lm_model_init_random(*model, (uint64_t)c->seed, c->init_std);
    return 0;
}

typedef enum train_kind { TRAIN_PRETRAIN, TRAIN_SFT } train_kind;

static int run_training(train_kind kind, int argc, char **argv) {
    train_cli c = {0};
    c.template_name = "chatml";
    c.dtype = "bf16";
    c.steps = 1000;
    c.batch_size = 16;
    c.grad_accum = 1;
    c.seq_len = 0;
    c.warmup = 50;
    c.eval_every = 100;
    c.eval_batches = 20;
    c.checkpoint_every = 200;
    c.seed = 1234;
    c.log_every = 10;
    c.lr = 1e-3;
    c.min_lr = 1e-4;
    c.weight_decay = 0.1;
    c.clip = 1.0;
    c.init_std = 0.02;
    const bool sft = kind == TRAIN_SFT;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &c.model_dir, "DIR",
         sft ? "HF model folder to fine-tune (required)"
             : "HF model folder to continue from (else --config starts a fresh model)",
         0, 0, false, NULL},
        {"--config", CLI_OPT_STRING, &c.config_path, "FILE",
         "config.json of a fresh, randomly initialised model (pretrain without --model)", 0, 0,
         false, NULL},
        {"--tokenizer", CLI_OPT_STRING, &c.tokenizer_path, "FILE",
         "tokenizer.json (default <model>/tokenizer.json)", 0, 0, false, NULL},
        {"--train", CLI_OPT_STRING, &c.train_path, "FILE",
         sft ? "training JSONL, one {\"prompt\", \"response\"} per line (required)"
             : "training text, one document per line (required)", 0, 0, false, NULL},
        {"--valid", CLI_OPT_STRING, &c.valid_path, "FILE", "validation data in the same format", 0, 0,
         false, NULL},
        {"--out", CLI_OPT_STRING, &c.out_dir, "DIR",
         "output folder: checkpoint/ during training (resumed from when present), the HF model "
         "at the end (required)", 0, 0, false, NULL},
        {"--steps", CLI_OPT_INT, &c.steps, "N", "optimizer updates (default 1000)", 1, 1e12, false, NULL},
        {"--batch-size", CLI_OPT_INT, &c.batch_size, "N", "sequences per micro-batch (default 16)", 1, 65536, false, NULL},
        {"--grad-accum", CLI_OPT_INT, &c.grad_accum, "N", "micro-batches per update (default 1)", 1, 65536, false, NULL},
        {"--seq-len", CLI_OPT_INT, &c.seq_len, "N",
         "tokens per sequence; longer examples are cut (default: the model's positions, at most 256)",
         0, 1 << 20, false, NULL},
        {"--lr", CLI_OPT_DOUBLE, &c.lr, "F", "peak learning rate (default 1e-3)", 0, 10, true, NULL},
        {"--min-lr", CLI_OPT_DOUBLE, &c.min_lr, "F", "learning rate at the end of the cosine (default 1e-4)", 0, 10, false, NULL},
        {"--warmup", CLI_OPT_INT, &c.warmup, "N", "linear warmup updates (default 50)", 0, 1e12, false, NULL},
        {"--weight-decay", CLI_OPT_DOUBLE, &c.weight_decay, "F", "AdamW decoupled weight decay on matrices (default 0.1)", 0, 10, false, NULL},
        {"--clip", CLI_OPT_DOUBLE, &c.clip, "F", "gradient global-norm clip, 0 = off (default 1.0)", 0, 1e9, false, NULL},
        {"--eval-every", CLI_OPT_INT, &c.eval_every, "N", "validation every N updates, 0 = only at the end (default 100)", 0, 1e12, false, NULL},
        {"--eval-batches", CLI_OPT_INT, &c.eval_batches, "N", "validation micro-batches per evaluation, 0 = all (default 20)", 0, 1e9, false, NULL},
        {"--checkpoint-every", CLI_OPT_INT, &c.checkpoint_every, "N", "checkpoint every N updates, 0 = only at the end (default 200)", 0, 1e12, false, NULL},
        {"--stop-at", CLI_OPT_INT, &c.stop_at, "N", "stop after update N with a checkpoint, as if interrupted (default: run to the end)", 0, 1e12, false, NULL},
        {"--seed", CLI_OPT_INT, &c.seed, "N", "data order and initialisation seed (default 1234)", 0, 9.2e18, false, NULL},
        {"--init-std", CLI_OPT_DOUBLE, &c.init_std, "F", "standard deviation of a fresh model's weights (default 0.02)", 0, 1, true, NULL},
        {"--template", CLI_OPT_STRING, &c.template_name, "NAME", "chat template for SFT prompts: chatml, llama3, plain, qa (default chatml)", 0, 0, false, NULL},
        {"--dtype", CLI_OPT_STRING, &c.dtype, "TYPE", "dtype of the exported model.safetensors: bf16 or f32 (default bf16)", 0, 0, false, NULL},
        {"--skip-bad-lines", CLI_OPT_FLAG, &c.skip_bad_lines, NULL, "skip malformed lines (counted and reported) instead of failing", 0, 0, false, NULL},
        {"--max-examples", CLI_OPT_INT, &c.max_examples, "N", "read at most N lines of each file, 0 = all (default 0)", 0, 1e15, false, NULL},
        {"--log-every", CLI_OPT_INT, &c.log_every, "N", "progress line every N updates (default 10)", 1, 1e12, false, NULL},
    };
    const cli_command cmd = {
        sft ? "sft" : "pretrain",
        sft ? "--model DIR --train FILE.jsonl --out DIR [options]"
            : "(--config config.json | --model DIR) --tokenizer tokenizer.json --train FILE.txt --out DIR [options]",
        sft ? "Supervised fine-tuning: each JSONL line {\"prompt\": ..., \"response\": ...} becomes a\n"
              "user turn rendered with the chat template and the response followed by the end-of-turn\n"
              "token; the loss is the mean negative log-likelihood of the response tokens. AdamW\n"
              "(0.9, 0.95), gradient clipping, warmup + cosine schedule, fp32 master weights.\n"
              "Malformed lines are errors naming the line (or skipped with --skip-bad-lines).\n"
              "Checkpoints go to <out>/checkpoint; running the same command again resumes there and\n"
              "reaches the same weights as an uninterrupted run. The HF model is written to <out>."
            : "Pretraining: next-token loss on text files with one document per line (each followed\n"
              "by <|endoftext|>, concatenated and cut into sequences). AdamW (0.9, 0.95), gradient\n"
              "clipping, warmup + cosine schedule, fp32 master weights. Checkpoints go to\n"
              "<out>/checkpoint; running the same command again resumes there and reaches the same\n"
              "weights as an uninterrupted run. The HF model is written to <out>.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (c.train_path == NULL || c.out_dir == NULL)
        return cli_usage_error(&cmd, "--train and --out are required");
    if (sft && c.model_dir == NULL) return cli_usage_error(&cmd, "--model is required");
    if (!sft && (c.model_dir == NULL) == (c.config_path == NULL))
        return cli_usage_error(&cmd, "give exactly one of --config and --model");
    if (strcmp(c.dtype, "bf16") != 0 && strcmp(c.dtype, "f32") != 0)
        return cli_usage_error(&cmd, "--dtype must be bf16 or f32");
    if (c.warmup > c.steps) return cli_usage_error(&cmd, "--warmup exceeds --steps");
    if (c.min_lr > c.lr) return cli_usage_error(&cmd, "--min-lr exceeds --lr");
    duel_error err = {0};
    chat_template_kind template_kind;
    if (chat_template_from_name(c.template_name, &template_kind, &err) != 0)
        return cli_usage_error(&cmd, "%s", err.message);
    char tokenizer_default[TRAIN_PATH_MAX], checkpoint_dir[TRAIN_PATH_MAX], path[TRAIN_PATH_MAX];
    if (c.tokenizer_path == NULL) {
        if (c.model_dir == NULL) return cli_usage_error(&cmd, "--tokenizer is required with --config");
        snprintf(tokenizer_default, sizeof tokenizer_default, "%s/tokenizer.json", c.model_dir);
        c.tokenizer_path = tokenizer_default;
    }
    c.tty = isatty(STDERR_FILENO);
    double t0 = duel_time_seconds();
    tokenizer *tok = NULL;
    train_model *model = NULL;
    char *config_json = NULL;
    lm_dataset train = {0}, valid = {0};
    bool have_valid = false;
    if ((rc = tokenizer_load(c.tokenizer_path, &tok, &err)) != 0 ||
        (rc = setup_model(&c, &model, &config_json, &err)) != 0) {
        goto done;
    }
    const model_config *config = train_model_config(model);
    if (tokenizer_vocab_size(tok) > config->vocab_size) {
        rc = duel_error_set(&err, DUEL_EINVAL, "%s has %d tokens, the model's vocabulary only %d",
                            c.tokenizer_path, tokenizer_vocab_size(tok), config->vocab_size);
        goto done;
    }
    int seq_len = (int)c.seq_len;
    if (seq_len == 0) seq_len = config->max_position_embeddings < 256 ? config->max_position_embeddings : 256;
    if (seq_len > config->max_position_embeddings) {
        rc = duel_error_set(&err, DUEL_EINVAL, "--seq-len %d exceeds the model's %d positions",
                            seq_len, config->max_position_embeddings);
        goto done;
    }
    lm_data_options data_options = {tok, template_kind, seq_len, c.skip_bad_lines, c.max_examples};
    rc = sft ? lm_data_load_sft(c.train_path, &data_options, &train, &err)
             : lm_data_load_text(c.train_path, &data_options, &train, &err);
    if (rc != 0) goto done;
    if (c.valid_path != NULL) {
        rc = sft ? lm_data_load_sft(c.valid_path, &data_options, &valid, &err)
                 : lm_data_load_text(c.valid_path, &data_options, &valid, &err);
        if (rc != 0) goto done;
        have_valid = true;
    }
    fprintf(stderr, "%s: %s, %zu parameters; %zu training sequences (%lld tokens)", cmd.name,
            config->architecture, train_model_num_parameters(model), train.num_examples,
            train.num_tokens);
    if (have_valid) fprintf(stderr, ", %zu validation sequences", valid.num_examples);
    fprintf(stderr, "; data ready in %.1f s\n", duel_time_seconds() - t0);
    for (int i = 0; i < 2; i++) {
        const lm_dataset *d = i == 0 ? &train : &valid;
        if (d->bad_lines > 0) {
            fprintf(stderr, "warning: %s: skipped %lld malformed line(s), first at line(s)",
                    i == 0 ? c.train_path : c.valid_path, d->bad_lines);
            for (long long k = 0; k < d->bad_lines && k < LM_DATA_BAD_LINES_KEPT; k++)
                fprintf(stderr, " %lld", d->first_bad_lines[k]);
            fprintf(stderr, "\n");
        }
        if (d->truncated > 0)
            fprintf(stderr, "note: %lld example(s) cut to %d tokens\n", d->truncated, seq_len);
    }
    if (mkdir(c.out_dir, 0755) != 0 && access(c.out_dir, W_OK) != 0) {
        rc = duel_error_set(&err, DUEL_EIO, "%s: cannot create the output folder", c.out_dir);
        goto done;
    }
    snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/checkpoint", c.out_dir);
    lm_train_options o;
    lm_train_default_options(&o);
    o.batch_size = (int)c.batch_size;
    o.grad_accum = (int)c.grad_accum;
    o.total_steps = c.steps;
    o.lr = c.lr;
    o.min_lr = c.min_lr;
    o.warmup_steps = c.warmup;
    o.adamw.weight_decay = c.weight_decay;
    o.clip_norm = c.clip;
    o.eval_every = c.eval_every;
    o.eval_batches = (int)c.eval_batches;
    o.checkpoint_every = c.checkpoint_every;
    o.checkpoint_dir = checkpoint_dir;
    o.stop_at_step = c.stop_at;
    o.seed = (uint64_t)c.seed;
    o.config_json = config_json;
    lm_train_progress final;
    double t_train = duel_time_seconds();
    rc = lm_train_run(model, &train, have_valid ? &valid : NULL, &o, on_progress, &c, &final, &err);
    if (rc != 0) goto done;
    if (c.tty) fprintf(stderr, "\n");
    if (final.step < c.steps) {
        fprintf(stderr, "stopped at step %lld (checkpoint in %s); run again to resume\n",
                (long long)final.step, checkpoint_dir);
        goto done;
    }
    if ((rc = lm_model_export_hf(model, config_json, c.out_dir, strcmp(c.dtype, "bf16") == 0, &err)) != 0)
        goto done;
    snprintf(path, sizeof path, "%s/tokenizer.json", c.out_dir);
    if (strcmp(c.tokenizer_path, path) != 0 && (rc = copy_file(c.tokenizer_path, path, &err)) != 0)
        goto done;
    if ((rc = write_tokenizer_config(c.out_dir, template_kind, &err)) != 0) goto done;
    json_t *summary = json_pack("{s:s, s:I, s:f, s:f, s:f, s:f, s:I}", "command", cmd.name, "steps",
                                (json_int_t)final.step, "final_train_loss", isfinite(final.loss) ? final.loss : -1.0,
                                "final_valid_loss", isfinite(final.valid_loss) ? final.valid_loss : -1.0,
                                "train_seconds_this_run", duel_time_seconds() - t_train,
                                "tokens_seen", final.tokens_seen, "parameters",
                                (json_int_t)train_model_num_parameters(model));
    snprintf(path, sizeof path, "%s/train_summary.json", c.out_dir);
    json_dump_file(summary, path, JSON_PRESERVE_ORDER | JSON_INDENT(2));
    json_decref(summary);
    char train_loss[48] = "- (no step in this run)";
    if (isfinite(final.loss)) snprintf(train_loss, sizeof train_loss, "%.4f", final.loss);
    printf("%s: %lld steps, train loss %s, validation loss %.4f; model written to %s (%.1f s)\n",
           cmd.name, (long long)final.step, train_loss, final.valid_loss, c.out_dir,
           duel_time_seconds() - t0);
done:
    if (rc != 0) fprintf(stderr, "duel %s: %s\n", cmd.name, err.message);
    lm_data_free(&train);
    lm_data_free(&valid);
    train_model_free(model);
    tokenizer_free(tok);
    free(config_json);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}

int cmd_pretrain(int argc, char **argv) { return run_training(TRAIN_PRETRAIN, argc, argv); }
int cmd_sft(int argc, char **argv) { return run_training(TRAIN_SFT, argc, argv); }

typedef struct dpo_cli {
    const char *out_dir;
    long long log_every;
    bool tty;
} dpo_cli;

static void on_dpo_progress(void *ctx, const dpo_progress *p) {
    dpo_cli *c = ctx;
    char eta[32], elapsed[32];
    if (p->event == 0) {
        fprintf(stderr, "resumed from %s/checkpoint at step %lld\n", c->out_dir, (long long)p->step);
    } else if (p->event == 1 && (p->step % c->log_every == 0 || p->step == p->total_steps)) {
        format_duration(p->eta_seconds, eta, sizeof eta);
        format_duration(p->elapsed_seconds, elapsed, sizeof elapsed);
        fprintf(stderr, "%sstep %lld/%lld  loss %.4f  margin %.3f  acc %.2f  lr %.2e  %.1f pairs/s  %s elapsed  ETA %s%s",
                c->tty ? "\r" : "", (long long)p->step, (long long)p->total_steps, p->loss, p->margin,
                p->accuracy, p->lr, p->pairs_per_second, elapsed, eta, c->tty ? "\033[K" : "\n");
    } else if (p->event == 2) {
        fprintf(stderr, "%sstep %lld: held-out loss %.4f, reward margin %.4f, accuracy %.3f, "
                        "chosen log-prob %.3f, rejected %.3f\n",
                c->tty ? "\n" : "", (long long)p->step, p->valid.loss, p->valid.reward_margin,
                p->valid.accuracy, p->valid.chosen_logprob, p->valid.rejected_logprob);
    }
    fflush(stderr);
}

int cmd_dpo(int argc, char **argv) {
    const char *model_dir = NULL, *pairs_path = NULL, *valid_path = NULL, *out_dir = NULL;
    const char *loss_name = "dpo", *template_name = NULL, *dtype = "bf16";
    long long steps = 100, batch_pairs = 8, warmup = 10, eval_every = 20, checkpoint_every = 50;
    long long stop_at = 0, seed = 1234, seq_len = 0, log_every = 10;
    double beta = 0, lr = 1e-4, min_lr = 1e-5, clip = 1.0;
    bool skip_bad_lines = false;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model_dir, "DIR", "HF model folder: the starting policy and the frozen reference (required)", 0, 0, false, NULL},
        {"--pairs", CLI_OPT_STRING, &pairs_path, "FILE", "preference JSONL, one {\"prompt\", \"chosen\", \"rejected\"} per line (required)", 0, 0, false, NULL},
        {"--valid", CLI_OPT_STRING, &valid_path, "FILE", "held-out pairs for the margin/accuracy report", 0, 0, false, NULL},
        {"--out", CLI_OPT_STRING, &out_dir, "DIR", "output folder: checkpoint/ during training (resumed from), the HF model at the end (required)", 0, 0, false, NULL},
        {"--loss", CLI_OPT_STRING, &loss_name, "NAME", "dpo, ipo or slic (default dpo)", 0, 0, false, NULL},
        {"--beta", CLI_OPT_DOUBLE, &beta, "F", "loss beta (default: 0.1 for DPO and IPO, 0.2 for SLiC)", 0, 1e6, true, NULL},
        {"--steps", CLI_OPT_INT, &steps, "N", "optimizer updates (default 100)", 1, 1e12, false, NULL},
        {"--batch-pairs", CLI_OPT_INT, &batch_pairs, "N", "pairs per update (default 8)", 1, 32768, false, NULL},
        {"--lr", CLI_OPT_DOUBLE, &lr, "F", "peak learning rate (default 1e-4)", 0, 10, true, NULL},
        {"--min-lr", CLI_OPT_DOUBLE, &min_lr, "F", "final learning rate of the cosine (default 1e-5)", 0, 10, false, NULL},
        {"--warmup", CLI_OPT_INT, &warmup, "N", "linear warmup updates (default 10)", 0, 1e12, false, NULL},
        {"--clip", CLI_OPT_DOUBLE, &clip, "F", "gradient global-norm clip, 0 = off (default 1.0)", 0, 1e9, false, NULL},
        {"--eval-every", CLI_OPT_INT, &eval_every, "N", "held-out report every N updates, 0 = at the end (default 20)", 0, 1e12, false, NULL},
        {"--checkpoint-every", CLI_OPT_INT, &checkpoint_every, "N", "checkpoint every N updates, 0 = at the end (default 50)", 0, 1e12, false, NULL},
        {"--stop-at", CLI_OPT_INT, &stop_at, "N", "stop after update N with a checkpoint, as if interrupted", 0, 1e12, false, NULL},
        {"--seed", CLI_OPT_INT, &seed, "N", "pair order seed (default 1234)", 0, 9.2e18, false, NULL},
        {"--seq-len", CLI_OPT_INT, &seq_len, "N", "tokens per sequence (default: the model's positions, at most 256)", 0, 1 << 20, false, NULL},
        {"--template", CLI_OPT_STRING, &template_name, "NAME", "chat template (default: from the model's tokenizer_config.json)", 0, 0, false, NULL},
        {"--dtype", CLI_OPT_STRING, &dtype, "TYPE", "dtype of the exported model.safetensors: bf16 or f32 (default bf16)", 0, 0, false, NULL},
        {"--skip-bad-lines", CLI_OPT_FLAG, &skip_bad_lines, NULL, "skip malformed lines (counted and reported) instead of failing", 0, 0, false, NULL},
        {"--log-every", CLI_OPT_INT, &log_every, "N", "progress line every N updates (default 10)", 1, 1e12, false, NULL},
    };
    const cli_command cmd = {
        "dpo", "--model DIR --pairs FILE.jsonl --out DIR [options]",
        "Offline preference optimisation (DPO, IPO or SLiC) on a preference file: the policy\n"
        "starts from --model and the same weights, frozen, are the reference (its log-probabilities\n"
        "are computed once). Prints loss, implicit reward margin and accuracy per update, and on\n"
        "--valid pairs the held-out margin, accuracy and the chosen answers' log-probability.\n"
        "Checkpoints go to <out>/checkpoint and are resumed from; the HF model is written to <out>.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (model_dir == NULL || pairs_path == NULL || out_dir == NULL)
        return cli_usage_error(&cmd, "--model, --pairs and --out are required");
    duel_error err = {0};
    dap_loss_kind kind;
    if (dap_loss_kind_parse(loss_name, &kind, &err) != 0 || kind == DAP_LOSS_SIMPO)
        return cli_usage_error(&cmd, "--loss must be dpo, ipo or slic");
    if (strcmp(dtype, "bf16") != 0 && strcmp(dtype, "f32") != 0)
        return cli_usage_error(&cmd, "--dtype must be bf16 or f32");
    if (warmup > steps || min_lr > lr) return cli_usage_error(&cmd, "--warmup exceeds --steps or --min-lr exceeds --lr");
    chat_template_kind template_kind;
    if (template_name != NULL ? chat_template_from_name(template_name, &template_kind, &err) != 0
                              : chat_template_detect(model_dir, &template_kind, &err) != 0)
        return cli_usage_error(&cmd, "%s", err.message);
    char tokenizer_path[TRAIN_PATH_MAX], checkpoint_dir[TRAIN_PATH_MAX], path[TRAIN_PATH_MAX];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/tokenizer.json", model_dir);
    dpo_cli c = {out_dir, log_every, isatty(STDERR_FILENO)};
    tokenizer *tok = NULL;
    train_model *model = NULL;
    char *config_json = NULL;
    lm_dataset pairs = {0}, valid = {0};
    dpo_logprobs ref = {0}, valid_ref = {0};
    bool have_valid = false;
    double t0 = duel_time_seconds();
    if ((rc = tokenizer_load(tokenizer_path, &tok, &err)) != 0 ||
        (rc = lm_model_load_hf(model_dir, &model, &config_json, &err)) != 0)
        goto done;
    const model_config *config = train_model_config(model);
    int T = (int)seq_len;
    if (T == 0) T = config->max_position_embeddings < 256 ? config->max_position_embeddings : 256;
    if (T > config->max_position_embeddings) {
        rc = duel_error_set(&err, DUEL_EINVAL, "--seq-len %d exceeds the model's %d positions", T,
                            config->max_position_embeddings);
        goto done;
    }
    lm_data_options data_options = {tok, template_kind, T, skip_bad_lines, 0};
    if ((rc = lm_data_load_pairs(pairs_path, &data_options, &pairs, &err)) != 0) goto done;
    if (valid_path != NULL) {
        if ((rc = lm_data_load_pairs(valid_path, &data_options, &valid, &err)) != 0) goto done;
        have_valid = true;
    }
    for (int i = 0; i < 2; i++) {
        const lm_dataset *d = i == 0 ? &pairs : &valid;
        if (d->bad_lines > 0) {
            fprintf(stderr, "warning: %s: skipped %lld malformed line(s), first at line(s)",
                    i == 0 ? pairs_path : valid_path, d->bad_lines);
            for (long long k = 0; k < d->bad_lines && k < LM_DATA_BAD_LINES_KEPT; k++)
                fprintf(stderr, " %lld", d->first_bad_lines[k]);
            fprintf(stderr, "\n");
        }
    }
    /* The reference is the starting model: its log-probabilities, before any update. */
    if ((rc = dpo_logprobs_compute(model, &pairs, (int)batch_pairs, &ref, &err)) != 0) goto done;
    if (have_valid && (rc = dpo_logprobs_compute(model, &valid, (int)batch_pairs, &valid_ref, &err)) != 0)
        goto done;
    fprintf(stderr, "dpo (%s): %zu parameters, %zu pairs%s; reference ready in %.1f s\n", loss_name,
            train_model_num_parameters(model), pairs.num_pairs, have_valid ? " (+ held-out)" : "",
            duel_time_seconds() - t0);
    if (mkdir(out_dir, 0755) != 0 && access(out_dir, W_OK) != 0) {
        rc = duel_error_set(&err, DUEL_EIO, "%s: cannot create the output folder", out_dir);
        goto done;
    }
    snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/checkpoint", out_dir);
    dpo_train_options o;
    dpo_train_default_options(kind, &o);
    if (beta > 0) o.loss.beta = beta;
    o.pairs_per_batch = (int)batch_pairs;
    o.total_steps = steps;
    o.lr = lr;
    o.min_lr = min_lr;
    o.warmup_steps = warmup;
    o.clip_norm = clip;
    o.eval_every = eval_every;
    o.checkpoint_every = checkpoint_every;
    o.checkpoint_dir = checkpoint_dir;
    o.stop_at_step = stop_at;
    o.seed = (uint64_t)seed;
    o.config_json = config_json;
    dpo_progress final;
    rc = dpo_train_run(model, &pairs, &ref, have_valid ? &valid : NULL, have_valid ? &valid_ref : NULL,
                       &o, on_dpo_progress, &c, &final, &err);
    if (rc != 0) goto done;
    if (c.tty) fprintf(stderr, "\n");
    if (final.step < steps) {
        fprintf(stderr, "stopped at step %lld (checkpoint in %s); run again to resume\n",
                (long long)final.step, checkpoint_dir);
        goto done;
    }
    if ((rc = lm_model_export_hf(model, config_json, out_dir, strcmp(dtype, "bf16") == 0, &err)) != 0) goto done;
    snprintf(path, sizeof path, "%s/tokenizer.json", out_dir);
    if ((rc = copy_file(tokenizer_path, path, &err)) != 0) goto done;
    if ((rc = write_tokenizer_config(out_dir, template_kind, &err)) != 0) goto done;
    printf("dpo: %lld steps, loss %.4f", (long long)final.step, final.loss);
    if (have_valid)
        printf(", held-out reward margin %.4f, accuracy %.3f", final.valid.reward_margin, final.valid.accuracy);
    printf("; model written to %s (%.1f s)\n", out_dir, duel_time_seconds() - t0);
done:
    if (rc != 0) fprintf(stderr, "duel dpo: %s\n", err.message);
    dpo_logprobs_free(&ref);
    dpo_logprobs_free(&valid_ref);
    lm_data_free(&pairs);
    lm_data_free(&valid);
    train_model_free(model);
    tokenizer_free(tok);
    free(config_json);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
