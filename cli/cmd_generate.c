/* cmd_generate.c: `duel generate`: one prompt (raw text or as a chat turn) or an interactive
 * chat, run on the inference engine (engine.h) and streamed token by token to stdout with
 * prefill and decode speeds on stderr; with --n M, M candidates of the one prompt, printed whole
 * and labelled once all have finished.
 *
 * A generator owns the model, the tokenizer and an engine with that model as its only arm. Each
 * request is the full token sequence (the whole conversation in chat mode); the engine's prefix
 * cache finds the blocks a previous turn already computed, so a chat's next turn costs its new
 * tokens, not the whole history. Generation stops at an EOS id from config.json, the chat
 * template's end-of-turn token, --max-new-tokens, or a full context (--context). Candidate i
 * samples with seed + i (engine.h), so the single answer of seed s is candidate 0 of --n with
 * seed s. Same seed, same model, same backend: same text. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chat_template.h"
#include "cli.h"
#include "compute.h"
#include "duel.h"
#include "engine.h"
#include "erm.h"
#include "json_util.h"
#include "model.h"
#include "sampler.h"
#include "timer.h"
#include "tokenizer.h"
#include "utf8.h"
#include "utf8_stream.h"

/* Context allocated when --context is not given: the model's max_position_embeddings, capped so
 * that a model with a 128k window does not reserve gigabytes of KV cache for a CLI chat. */
#define GENERATE_DEFAULT_CONTEXT_CAP 4096
/* Largest tokenizer_config.json we read (they embed Jinja chat templates), bytes. */
#define GENERATE_MAX_TOKENIZER_CONFIG_BYTES (8u << 20)
/* Longest interactive input line, bytes. */
#define GENERATE_MAX_LINE_BYTES (1u << 20)
/* --n limit (candidates of one prompt); also the engine's max_candidates. */
#define GENERATE_MAX_CANDIDATES 64

typedef struct generator {
    model *model;
    tokenizer *tok;
    const model_config *config;
    engine *engine;
    int context;      /* tokens (prompt + answer) one sequence may hold */
    int candidates;   /* M the engine's KV pool was sized for */
    sampler_params sampling;
    unsigned long long seed;
    int32_t stop_ids[MODEL_CONFIG_MAX_EOS + 1];
    int n_stop_ids;
    int32_t bos_id; /* prepended to prompts that lack it (add_bos_token), or -1 */
    erm *erm;             /* --duel: the ERM scoring the candidates (owned) */
    duel_strategy strategy;
    double beta;          /* pilaf */
    model *reference;     /* --reference: the frozen reference (owned), or NULL: the model */
    model *arena;         /* --arena-model: arena's second arm (owned), or NULL */
    chat_template_kind answer_template; /* --chat: answers lose this template's answer prefix */
    bool chat;
    model_load_options load; /* --weights, for every model it loads */
    int kv_bytes;            /* --kv-dtype: bytes per KV element (4 f32, 2 bf16) */
    const char *compute;  /* --compute: the engine's compute backend */
} generator;

/* What the engine's DUEL_READY event said. */
typedef struct duel_outcome {
    double *mean;       /* [M] ensemble-mean reward per candidate */
    duel_pair pair;
    duel_placement placement;
    double regret_estimate;
    bool pilaf_mixed;
    int arena_split;    /* arena: candidates from it on are --arena-model's */
    double features_ms, score_ms, select_ms;
} duel_outcome;

typedef struct generation_stats {
    int prompt_tokens;
    int prefilled_tokens; /* prompt tokens actually run (the rest came from the cache) */
    int new_tokens;       /* over all candidates, stop tokens excluded */
    double prefill_seconds;
    double decode_seconds;
    const char *stop_reason; /* of candidate 0 */
} generation_stats;

/* One finished candidate of a request. */
typedef struct generated_answer {
    char *text;
    int tokens;       /* generated, a final stop token excluded */
    double logprob_sum;
    const char *stop_reason;
} generated_answer;

static void generator_free(generator *g) {
    engine_destroy(g->engine); /* before the model and ERM it borrows */
    erm_free(g->erm);
    model_free(g->reference);
    model_free(g->arena);
    model_free(g->model);
    tokenizer_free(g->tok);
    memset(g, 0, sizeof *g);
}

/* Starts the engine with a KV pool for `candidates` sequences of the context that share the
 * prompt (a few spare blocks per candidate for the copy-on-write of the prompt's last block);
 * twice that for pilaf, whose reference decodes each candidate in lockstep in the same pool. */
static int generator_start_engine(generator *g, int candidates, int max_new, duel_error *err) {
    const model_config *c = g->config;
    size_t per_token = 2 * (size_t)c->num_layers * (size_t)c->num_kv_heads * (size_t)c->head_dim *
                       (size_t)g->kv_bytes;
    int answer = max_new < g->context ? max_new : g->context;
    size_t tokens = (size_t)g->context * (g->arena ? 2 : 1) + /* arena: a prompt per arm */
                    (size_t)(candidates - 1) * (size_t)answer +
                    (size_t)candidates * 2 * KV_BLOCK_SIZE;
    if (g->strategy == DUEL_STRATEGY_PILAF) tokens *= 2; /* the reference's copy of everything */
    engine_model_params arms[3] = {{.arm = "default", .model = g->model, .tokenizer = g->tok}};
    int n_arms = 1;
    if (g->reference)
        arms[n_arms++] = (engine_model_params){.arm = "reference", .model = g->reference};
    if (g->arena) /* shares the model's tokenizer (same vocabulary, checked at load) */
        arms[n_arms++] = (engine_model_params){.arm = "arena", .model = g->arena,
                                               .tokenizer = g->tok};
    engine_params ep = {.models = arms,
                        .num_models = n_arms,
                        .reference_arm = g->reference ? "reference" : NULL,
                        .kv_memory_bytes = tokens * per_token,
                        .kv_bytes_per_element = g->kv_bytes,
                        .max_candidates = GENERATE_MAX_CANDIDATES,
                        /* without --reference the model is its own frozen reference */
                        .erm = g->erm,
                        .features = ENGINE_FEATURES_REFERENCE,
                        .backend = g->compute};
    ep.providers = cli_compute_providers(&ep.num_providers);
    g->candidates = candidates;
    return engine_create(&ep, &g->engine, err);
}

static int generator_open(generator *g, const char *dir, long long context,
                          const model_load_options *load, int kv_bytes, duel_error *err) {
    memset(g, 0, sizeof *g);
    g->load = *load;
    g->kv_bytes = kv_bytes;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return duel_error_set(err, DUEL_ENOTFOUND, "model directory '%s' %s", dir,
                              stat(dir, &st) != 0 ? "does not exist" : "is not a directory");
    int rc = model_load_with(dir, &g->load, &g->model, err);
    if (rc) return rc;
    g->config = model_get_config(g->model);
    if (g->config->head != MODEL_HEAD_CAUSAL_LM) {
        rc = duel_error_set(err, DUEL_EUNSUPPORTED,
                            "%s: %s is a sequence classifier, not a text generator", dir,
                            g->config->architecture);
        goto fail;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    rc = tokenizer_load(path, &g->tok, err);
    if (rc) goto fail;

    int max_pos = g->config->max_position_embeddings;
    if (context == 0) {
        g->context = max_pos < GENERATE_DEFAULT_CONTEXT_CAP ? max_pos : GENERATE_DEFAULT_CONTEXT_CAP;
    } else if (context > max_pos) {
        rc = duel_error_set(err, DUEL_EINVAL,
                            "--context %lld exceeds the model's max_position_embeddings (%d)",
                            context, max_pos);
        goto fail;
    } else {
        g->context = (int)context;
    }
    for (int i = 0; i < g->config->num_eos_token_ids; i++)
        g->stop_ids[g->n_stop_ids++] = g->config->eos_token_ids[i];

    /* Llama 2 / TinyLlama style models expect a BOS token first: Hugging Face adds it when
     * tokenizer_config.json says "add_bos_token": true. A missing file means no. */
    g->bos_id = -1;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (access(path, F_OK) == 0) {
        json_t *tc = NULL;
        bool add_bos = false;
        rc = duel_json_load_file(path, GENERATE_MAX_TOKENIZER_CONFIG_BYTES, &tc, err);
        if (rc == 0 && !json_is_object(tc))
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a JSON object", path);
        if (rc == 0) rc = duel_json_get_bool(tc, "add_bos_token", &add_bos, path, err);
        json_decref(tc);
        if (rc) goto fail;
        if (add_bos && g->config->bos_token_id >= 0) g->bos_id = g->config->bos_token_id;
    }
    return DUEL_OK;
fail:
    generator_free(g);
    return rc;
}

/* Adds the chat template's end-of-turn token (when the tokenizer has it) to the stop ids. */
static void generator_stop_at_end_of_turn(generator *g, chat_template_kind kind) {
    const char *eot = chat_template_end_of_turn(kind);
    if (!eot) return;
    int32_t id = tokenizer_token_id(g->tok, eot);
    if (id < 0) return;
    for (int i = 0; i < g->n_stop_ids; i++)
        if (g->stop_ids[i] == id) return;
    g->stop_ids[g->n_stop_ids++] = id;
}

static int is_stop(const generator *g, int32_t id) {
    for (int i = 0; i < g->n_stop_ids; i++)
        if (g->stop_ids[i] == id) return 1;
    return 0;
}

/* Puts the BOS token first when add_bos, the model wants one and *ids lacks it. */
static int prepend_bos(const generator *g, bool add_bos, int32_t **ids, size_t *n_ids,
                       duel_error *err) {
    if (!add_bos || g->bos_id < 0 || (*n_ids > 0 && (*ids)[0] == g->bos_id)) return DUEL_OK;
    int32_t *with_bos = malloc((*n_ids + 1) * sizeof *with_bos);
    if (!with_bos) {
        free(*ids);
        *ids = NULL;
        return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    }
    with_bos[0] = g->bos_id;
    if (*n_ids) memcpy(with_bos + 1, *ids, *n_ids * sizeof *with_bos);
    free(*ids);
    *ids = with_bos;
    (*n_ids)++;
    return DUEL_OK;
}

/* Encodes text, with the BOS token first when add_bos and the model wants one. *ids is
 * heap-allocated. */
static int generator_encode(const generator *g, const char *text, bool parse_special,
                            bool add_bos, int32_t **ids, size_t *n_ids, duel_error *err) {
    int rc = tokenizer_encode(g->tok, text, strlen(text), parse_special, ids, n_ids, err);
    return rc ? rc : prepend_bos(g, add_bos, ids, n_ids, err);
}

static void answers_free(generated_answer *answers, int n) {
    if (!answers) return;
    for (int i = 0; i < n; i++) free(answers[i].text);
    free(answers);
}

/* Runs prompt[0..n) (the whole sequence so far) on the engine and generates `candidates`
 * answers of up to max_new tokens each (fewer when the context fills). With one candidate and
 * out, its tokens are streamed to out as they come. *answers receives the candidates in index
 * order (free with answers_free). */
static int generator_run(generator *g, const int32_t *prompt, int n, int candidates, int max_new,
                         FILE *out, generated_answer **answers, duel_outcome *duel,
                         generation_stats *stats, duel_error *err) {
    memset(stats, 0, sizeof *stats);
    stats->prompt_tokens = n;
    *answers = NULL;
    if (n <= 0) return duel_error_set(err, DUEL_EINVAL, "the prompt encodes to no tokens");
    if (n >= g->context)
        return duel_error_set(err, DUEL_ELIMIT,
                              "the prompt is %d tokens but the context holds %d (model "
                              "max_position_embeddings %d; see --context)",
                              n, g->context, g->config->max_position_embeddings);
    bool context_bound = max_new > g->context - n;
    if (context_bound) max_new = g->context - n;
    if (!g->engine || g->candidates < candidates) {
        engine_destroy(g->engine);
        g->engine = NULL;
        int rc = generator_start_engine(g, candidates, max_new, err);
        if (rc) return rc;
    }
    generated_answer *got = calloc((size_t)candidates, sizeof *got);
    if (!got) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    engine_request req = {.arm = "default",
                          .tokens = prompt,
                          .num_tokens = n,
                          .num_candidates = candidates,
                          .sampling = g->sampling,
                          .seed = g->seed,
                          .max_new_tokens = max_new,
                          .stop_tokens = g->stop_ids,
                          .num_stop_tokens = g->n_stop_ids,
                          .want_progress = candidates == 1 && out != NULL,
                          .duel = duel != NULL,
                          .strategy = g->strategy,
                          .pilaf_beta = g->beta,
                          .arena_arm = g->arena ? "arena" : NULL};
    uint64_t id;
    int rc = engine_submit(g->engine, &req, &id, err);
    if (rc) {
        free(got);
        return rc;
    }
    utf8_stream stream;
    /* A random or badly trained model can emit escape sequences: keep them off terminals. */
    if (out) utf8_stream_init(&stream, isatty(fileno(out)));
    bool done = false;
    /* Chat answers are printed without the template's answer prefix (qa's leading space). */
    const char *prefix_left = g->chat ? chat_template_answer_prefix(g->answer_template) : "";
    while (!done) {
        engine_event *ev;
        engine_poll(g->engine, -1, &ev);
        if (!ev) continue;
        switch (ev->kind) {
        case ENGINE_EVENT_DUEL_READY:
            if (duel && ev->count == candidates) {
                if (ev->rewards) {
                    duel->mean = malloc((size_t)candidates * sizeof *duel->mean);
                    if (!duel->mean ||
                        duel_ensemble_mean(ev->rewards, ev->count, ev->num_heads, duel->mean, err))
                        rc = rc ? rc : duel_error_set(err, DUEL_ENOMEM, "out of memory");
                }
                duel->pilaf_mixed = ev->pilaf_mixed;
                duel->arena_split = ev->arena_split;
                duel->pair = ev->pair;
                duel->placement = ev->placement;
                duel->regret_estimate = ev->regret_estimate;
                duel->features_ms = ev->features_ms;
                duel->score_ms = ev->score_ms;
                duel->select_ms = ev->select_ms;
            }
            break;
        case ENGINE_EVENT_PROGRESS:
            for (int i = 0; i < ev->count && out; i++) {
                int32_t tok = ev->tokens[i];
                const char *bytes;
                size_t len;
                if (!is_stop(g, tok) && !tokenizer_is_special(g->tok, tok) &&
                    tokenizer_token_bytes(g->tok, tok, &bytes, &len) == 0) {
                    while (*prefix_left && len > 0 && *bytes == *prefix_left) bytes++, len--, prefix_left++;
                    if (len > 0) prefix_left = ""; /* the answer has begun */
                    utf8_stream_write(&stream, bytes, len, out);
                    fflush(out);
                }
            }
            break;
        case ENGINE_EVENT_CANDIDATE: {
            generated_answer *a = &got[ev->candidate];
            bool stopped = ev->finish_reason == ENGINE_FINISH_STOP;
            a->tokens = ev->count - (stopped ? 1 : 0);
            a->logprob_sum = ev->logprob_sum;
            a->stop_reason = stopped ? "stop token"
                             : ev->finish_reason == ENGINE_FINISH_CONTEXT ||
                                       (context_bound && ev->count >= max_new)
                                 ? "context full"
                                 : "max-new-tokens";
            a->text = ev->text;
            ev->text = NULL;
            if (a->text && g->chat) {
                const char *answer = chat_template_strip_answer_prefix(g->answer_template, a->text);
                memmove(a->text, answer, strlen(answer) + 1);
            }
            if (!a->text) a->text = strdup("");
            if (!a->text) rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
            stats->new_tokens += a->tokens;
            break;
        }
        case ENGINE_EVENT_FINISHED:
            stats->prefilled_tokens = (int)ev->counts.prompt_computed;
            stats->prefill_seconds = ev->timings.first_token_ms / 1e3;
            stats->decode_seconds = (ev->timings.total_ms - ev->timings.first_token_ms) / 1e3;
            stats->stop_reason = got[0].stop_reason;
            done = true;
            break;
        default: /* CANCELLED cannot happen: nothing cancels */
            rc = duel_error_set(err, ev->status ? ev->status : DUEL_EINVAL, "%s",
                                ev->message ? ev->message : "the request failed");
            done = true;
            break;
        }
        engine_event_free(ev);
    }
    if (out) {
        utf8_stream_finish(&stream, out);
        fflush(out);
    }
    if (rc) {
        answers_free(got, candidates);
        return rc;
    }
    *answers = got;
    return DUEL_OK;
}

static void print_stats(const generation_stats *s, unsigned long long seed) {
    fprintf(stderr,
            "[prompt %d tokens, prefill %d in %.3f s = %.1f tokens/s | decode %d tokens in "
            "%.3f s = %.1f tokens/s | stop: %s | seed %llu]\n",
            s->prompt_tokens, s->prefilled_tokens, s->prefill_seconds,
            s->prefill_seconds > 0 ? s->prefilled_tokens / s->prefill_seconds : 0.0,
            s->new_tokens, s->decode_seconds,
            s->decode_seconds > 0 ? s->new_tokens / s->decode_seconds : 0.0, s->stop_reason,
            seed);
}

/* A chat conversation: messages own their strings. */
typedef struct conversation {
    chat_message *messages;
    size_t count, cap;
} conversation;

static int conversation_add(conversation *c, const char *role, const char *content, size_t len) {
    if (c->count == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        chat_message *m = realloc(c->messages, cap * sizeof *m);
        if (!m) return DUEL_ENOMEM;
        c->messages = m;
        c->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) return DUEL_ENOMEM;
    memcpy(copy, content, len);
    copy[len] = '\0';
    c->messages[c->count].role = role;
    c->messages[c->count].content = copy;
    c->count++;
    return DUEL_OK;
}

static void conversation_truncate(conversation *c, size_t count) {
    while (c->count > count) free((char *)c->messages[--c->count].content);
}

static void conversation_free(conversation *c) {
    conversation_truncate(c, 0);
    free(c->messages);
    memset(c, 0, sizeof *c);
}

/* Renders the conversation with a generation prompt and encodes it (*ids heap-allocated). */
static int encode_conversation(const generator *g, chat_template_kind kind, const conversation *c,
                               int32_t **ids, size_t *n_ids, duel_error *err) {
    /* Content is encoded with special-token parsing off, so typed markers stay text. As Hugging
     * Face's apply_chat_template: the chatml and llama3 templates carry their own start tokens;
     * the plain template is raw text for base models and gets BOS like a prompt. */
    int rc = chat_template_encode(kind, g->tok, c->messages, c->count, true, ids, n_ids, err);
    if (rc == 0) rc = prepend_bos(g, kind == CHAT_TEMPLATE_PLAIN, ids, n_ids, err);
    if (rc == 0 && *n_ids > (size_t)g->context)
        rc = duel_error_set(err, DUEL_ELIMIT,
                            "the conversation is %zu tokens but the context holds %d", *n_ids,
                            g->context);
    return rc;
}

/* Encodes the conversation, generates the answer (streamed) and adds it to the conversation. */
static int chat_turn(generator *g, chat_template_kind kind, conversation *c, int max_new,
                     generation_stats *stats, duel_error *err) {
    generated_answer *answer = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = encode_conversation(g, kind, c, &ids, &n_ids, err);
    if (rc == 0)
        rc = generator_run(g, ids, (int)n_ids, 1, max_new, stdout, &answer, NULL, stats, err);
    if (rc == 0) rc = conversation_add(c, "assistant", answer[0].text, strlen(answer[0].text));
    free(ids);
    answers_free(answer, 1);
    g->seed++; /* the next turn samples with the next seed */
    return rc;
}

/* Prints M finished candidates, each under a label line with its token count, summed
 * log-probability (temperature 1) and stop reason. */
static void print_candidates(const generated_answer *answers, int m, const duel_outcome *duel,
                             FILE *out) {
    for (int i = 0; i < m; i++) {
        fprintf(out, "=== candidate %d: %d tokens, logprob %.4f", i, answers[i].tokens,
                answers[i].logprob_sum);
        if (duel && duel->mean) fprintf(out, ", mean reward %.6f", duel->mean[i]);
        if (duel && duel->arena_split)
            fprintf(out, ", from %s", i < duel->arena_split ? "--model" : "--arena-model");
        fprintf(out, ", stop: %s ===\n", answers[i].stop_reason);
        utf8_stream stream;
        utf8_stream_init(&stream, isatty(fileno(out)));
        utf8_stream_write(&stream, answers[i].text, strlen(answers[i].text), out);
        utf8_stream_finish(&stream, out);
        fputc('\n', out);
    }
    fflush(out);
}

typedef struct generate_options {
    const char *model_dir, *prompt, *system, *template_name;
    bool chat, interactive;
    double temperature, top_p;
    long long top_k, seed, max_new_tokens, context, n;
    bool seed_given, n_given, duel;
    const char *strategy, *erm_path, *reference, *arena_model;
    double beta;
    const char *weights, *kv_dtype;
    const char *compute;
} generate_options;

static int interactive_chat(generator *g, chat_template_kind kind, const generate_options *o,
                            unsigned long long seed) {
    conversation c = {0};
    int status = CLI_EXIT_OK;
    if (o->system && conversation_add(&c, "system", o->system, strlen(o->system))) {
        fprintf(stderr, "duel generate: out of memory\n");
        return CLI_EXIT_FAILURE;
    }
    size_t base = c.count;
    bool tty = isatty(STDIN_FILENO);
    fprintf(stderr,
            "Chat with %s (template %s). Type a message and press Enter; /reset forgets the "
            "conversation; Ctrl-D exits.\n",
            o->model_dir, chat_template_name(kind));
    const char *pending_prompt = o->prompt; /* --prompt given with --interactive: first turn */
    char *line = NULL;
    size_t line_cap = 0;
    for (;;) {
        const char *text;
        size_t len;
        if (pending_prompt) {
            text = pending_prompt;
            len = strlen(text);
            pending_prompt = NULL;
            if (tty) fprintf(stderr, "> %s\n", text);
        } else {
            if (tty) fputs("> ", stderr);
            ssize_t got = getline(&line, &line_cap, stdin);
            if (got < 0) {
                if (tty) fputc('\n', stderr);
                break;
            }
            while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
            text = line;
            len = (size_t)got;
        }
        if (len == 0) continue;
        if (len > GENERATE_MAX_LINE_BYTES) {
            fprintf(stderr, "duel generate: message too long (%zu bytes, at most %u)\n", len,
                    GENERATE_MAX_LINE_BYTES);
            continue;
        }
        size_t bad;
        if (!duel_utf8_valid(text, len, &bad)) {
            fprintf(stderr, "duel generate: message is not valid UTF-8 (byte %zu); ignored\n", bad);
            continue;
        }
        if (strcmp(text, "/reset") == 0) {
            conversation_truncate(&c, base);
            fprintf(stderr, "(conversation forgotten)\n");
            continue;
        }
        if (strcmp(text, "/exit") == 0 || strcmp(text, "/quit") == 0) break;
        if (conversation_add(&c, "user", text, len)) {
            fprintf(stderr, "duel generate: out of memory\n");
            status = CLI_EXIT_FAILURE;
            break;
        }
        generation_stats stats;
        duel_error err = {0};
        int rc = chat_turn(g, kind, &c, (int)o->max_new_tokens, &stats, &err);
        fputc('\n', stdout);
        fflush(stdout);
        if (rc) {
            fprintf(stderr, "duel generate: %s\n", err.message);
            conversation_truncate(&c, c.count - 1); /* drop the unanswered message */
            if (rc == DUEL_ELIMIT) {
                fprintf(stderr, "(type /reset to start over)\n");
                continue;
            }
            status = CLI_EXIT_FAILURE;
            break;
        }
        print_stats(&stats, seed);
    }
    free(line);
    conversation_free(&c);
    return status;
}

int cmd_generate(int argc, char **argv) {
    generate_options o = {
        .strategy = NULL, .beta = 0.1, .temperature = 0.7, .top_p = 0.9, .top_k = 0, .max_new_tokens = 256, .n = 1,
        .weights = "f32", .kv_dtype = "f32", .compute = "auto"};
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &o.model_dir, "DIR",
         "model directory (config.json, model.safetensors, tokenizer.json); required", 0, 0,
         false, NULL},
        {"--prompt", CLI_OPT_STRING, &o.prompt, "TEXT",
         "the prompt (UTF-8); required unless --interactive", 0, 0, false, NULL},
        {"--compute", CLI_OPT_STRING, &o.compute, "NAME",
         "compute backend: auto (CUDA when built in and a GPU answers, else the CPU; default), "
         "cpu or cuda", 0, 0, false, NULL},
        {"--chat", CLI_OPT_FLAG, &o.chat, NULL,
         "wrap the prompt in the model's chat template as a user turn", 0, 0, false, NULL},
        {"--interactive", CLI_OPT_FLAG, &o.interactive, NULL,
         "chat: read messages from stdin line by line, keep the conversation (implies --chat)",
         0, 0, false, NULL},
        {"--system", CLI_OPT_STRING, &o.system, "TEXT", "system message for --chat", 0, 0, false,
         NULL},
        {"--template", CLI_OPT_STRING, &o.template_name, "NAME",
         "chat template: plain, chatml, llama3 or qa (default: from tokenizer_config.json)", 0, 0,
         false, NULL},
        {"--temperature", CLI_OPT_DOUBLE, &o.temperature, "F",
         "sampling temperature, 0 = greedy (default 0.7)", 0, 100, false, NULL},
        {"--top-p", CLI_OPT_DOUBLE, &o.top_p, "F", "nucleus sampling mass, 1 = off (default 0.9)",
         0, 1, true, NULL},
        {"--top-k", CLI_OPT_INT, &o.top_k, "N", "sample among the N likeliest, 0 = off (default 0)",
         0, 1e9, false, NULL},
        {"--seed", CLI_OPT_INT, &o.seed, "N",
         "random seed; same seed, same text (default: from the clock, printed)", 0,
         9.2e18, false, &o.seed_given},
        {"--max-new-tokens", CLI_OPT_INT, &o.max_new_tokens, "N",
         "stop after N generated tokens (default 256)", 1, 1e6, false, NULL},
        {"--context", CLI_OPT_INT, &o.context, "N",
         "tokens of KV cache to allocate (default: max_position_embeddings, at most 4096)", 1,
         1e7, false, NULL},
        {"--n", CLI_OPT_INT, &o.n, "M",
         "generate M candidates of the prompt (seeds seed .. seed+M-1) and print each, labelled "
         "with its token count and summed log-prob, once all are done (default 1: streamed)",
         1, GENERATE_MAX_CANDIDATES, false, &o.n_given},
        {"--duel", CLI_OPT_FLAG, &o.duel, NULL,
         "score the candidates (--n, default 8) with an ERM and print the chosen pair, its "
         "placement and the estimated regret R-hat", 0, 0, false, NULL},
        {"--strategy", CLI_OPT_STRING, &o.strategy, "S",
         "--duel selection: ee_ts (default), bai_ts, uncertainty, passive, bon, pilaf (M = 2) or "
         "arena (--arena-model)",
         0, 0, false, NULL},
        {"--reference", CLI_OPT_STRING, &o.reference, "DIR",
         "--duel: the frozen reference model (ERM features, pilaf); default: the model itself",
         0, 0, false, NULL},
        {"--beta", CLI_OPT_DOUBLE, &o.beta, "F",
         "--strategy pilaf: beta of the mixed logits (default 0.1)", 0, 1e6, false, NULL},
        {"--arena-model", CLI_OPT_STRING, &o.arena_model, "DIR",
         "--strategy arena: the second model (same tokenizer and KV shape); --n/2 candidates "
         "from each, one answer from each", 0, 0, false, NULL},
        {"--erm", CLI_OPT_STRING, &o.erm_path, "FILE",
         "--duel: the ERM (erm.safetensors); default: one freshly initialised from the seed", 0,
         0, false, NULL},
        {"--weights", CLI_OPT_STRING, &o.weights, "FMT",
         "weight storage of every model loaded: f32 (default), bf16 or q8 (blocks of 32 int8 "
         "with a scale, like llama.cpp's Q8_0; quantised at load)", 0, 0, false, NULL},
        {"--kv-dtype", CLI_OPT_STRING, &o.kv_dtype, "T",
         "KV cache storage: f32 (default) or bf16 (half the memory per token)", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "generate",
        "--model DIR (--prompt TEXT | --interactive) [--chat] [--n M] [options]",
        "Generates text with a local model and streams it to stdout; prefill and decode speeds\n"
        "go to stderr. Generation stops at an end-of-sequence token, the chat template's\n"
        "end-of-turn token (with --chat), --max-new-tokens, or a full context. Raw prompts start\n"
        "with the BOS token when tokenizer_config.json sets add_bos_token, as in Hugging Face.\n"
        "With --interactive, each line of stdin is a user message; /reset forgets the\n"
        "conversation; Ctrl-D (end of input) exits. With --n M, M candidates of one prompt\n"
        "are decoded together (candidate i with seed + i, so --n 1 and the streamed answer of\n"
        "the same seed agree) and printed whole, each under a '=== candidate i: N tokens,\n"
        "logprob L, stop: R ===' line. --duel also scores them with an ERM (features: the\n"
        "model's final-norm hidden states at the last prompt and answer tokens), prints each\n"
        "candidate's mean reward, the pair chosen by --strategy with its left/right placement,\n"
        "and the estimated regret R-hat. --strategy pilaf decodes 2 candidates in lockstep with\n"
        "the --reference model: plain policy samples, or (with probability 1/2) y+ and y- from\n"
        "the logits (1+beta) h - beta h_ref and (1-beta) h + beta h_ref. --strategy arena\n"
        "decodes --n/2 candidates with --model (seeds seed..) and --n/2 with --arena-model (seeds\n"
        "seed + n/2..) in one batch, scores all on the reference, and pairs each model's best\n"
        "by mean reward ('from --model' / 'from --arena-model' on each candidate).",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (!o.model_dir) return cli_usage_error(&cmd, "--model DIR is required");
    int n_providers = 0;
    const compute_provider *const *providers = cli_compute_providers(&n_providers);
    if (!compute_name_known(o.compute, providers, n_providers))
        return cli_usage_error(&cmd, "--compute wants auto, cpu or cuda, got '%s'", o.compute);
    if (!o.prompt && !o.interactive)
        return cli_usage_error(&cmd, "--prompt TEXT is required (or --interactive)");
    size_t bad;
    if (o.prompt && !duel_utf8_valid(o.prompt, strlen(o.prompt), &bad))
        return cli_usage_error(&cmd, "--prompt is not valid UTF-8 (byte %zu)", bad);
    if (o.system && !duel_utf8_valid(o.system, strlen(o.system), &bad))
        return cli_usage_error(&cmd, "--system is not valid UTF-8 (byte %zu)", bad);
    if (o.interactive && o.n_given)
        return cli_usage_error(&cmd, "--n takes one --prompt, not --interactive");
    if ((o.strategy || o.erm_path || o.reference || o.arena_model) && !o.duel)
        return cli_usage_error(&cmd, "--strategy, --erm, --reference and --arena-model need --duel");
    duel_strategy strategy = DUEL_STRATEGY_DEFAULT;
    if (o.duel) {
        if (o.interactive) return cli_usage_error(&cmd, "--duel takes one --prompt, not --interactive");
        duel_error serr = {0};
        if (o.strategy && duel_strategy_parse(o.strategy, &strategy, &serr))
            return cli_usage_error(&cmd, "--strategy: %s", serr.message);
        bool pilaf = strategy == DUEL_STRATEGY_PILAF;
        if (pilaf && o.n_given && o.n != 2)
            return cli_usage_error(&cmd, "--strategy pilaf decodes 2 candidates (got --n %lld)",
                                   o.n);
        if (pilaf && o.erm_path)
            return cli_usage_error(&cmd, "--strategy pilaf uses no ERM (--erm)");
        if (!o.n_given) o.n = pilaf ? 2 : 8;
        if (o.n < 2) return cli_usage_error(&cmd, "--duel needs --n of at least 2 (got %lld)", o.n);
        bool arena = strategy == DUEL_STRATEGY_ARENA;
        if (arena != (o.arena_model != NULL))
            return cli_usage_error(&cmd, arena ? "--strategy arena needs --arena-model DIR"
                                               : "--arena-model needs --strategy arena");
        if (arena && o.n % 2)
            return cli_usage_error(&cmd,
                                   "--strategy arena splits --n between two models: it must be "
                                   "even (got %lld)",
                                   o.n);
        if (!pilaf && !arena && !duel_strategy_uses_rewards(strategy))
            return cli_usage_error(&cmd,
                                   "--strategy %s is not supported by generate --duel (it does "
                                   "not choose among one set of candidates)",
                                   duel_strategy_name(strategy));
        o.n_given = true; /* print the candidates whole */
    }
    if (o.interactive) o.chat = true;
    if ((o.system || o.template_name) && !o.chat)
        return cli_usage_error(&cmd, "--system and --template need --chat or --interactive");
    chat_template_kind kind = CHAT_TEMPLATE_PLAIN;
    duel_error err = {0};
    if (o.template_name && chat_template_from_name(o.template_name, &kind, &err))
        return cli_usage_error(&cmd, "--template: %s", err.message);
    model_load_options load = {.weights = WEIGHT_F32};
    int kv_bytes = 4;
    if (weight_format_parse(o.weights, &load.weights, &err))
        return cli_usage_error(&cmd, "--weights: %s", err.message);
    if (kv_dtype_parse(o.kv_dtype, &kv_bytes, &err))
        return cli_usage_error(&cmd, "--kv-dtype: %s", err.message);

    unsigned long long seed = o.seed_given
                                  ? (unsigned long long)o.seed
                                  : (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
    seed &= 0x7fffffffffffffffull; /* printable back as a valid --seed */

    generator g;
    rc = generator_open(&g, o.model_dir, o.context, &load, kv_bytes, &err);
    if (rc) {
        fprintf(stderr, "duel generate: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    g.sampling = (sampler_params){(float)o.temperature, (float)o.top_p, (int)o.top_k};
    g.seed = seed;
    g.strategy = strategy;
    g.compute = o.compute;
    g.beta = o.beta;
    if (o.reference) {
        struct stat rst;
        if (stat(o.reference, &rst) != 0 || !S_ISDIR(rst.st_mode))
            rc = duel_error_set(&err, DUEL_ENOTFOUND, "reference model directory '%s' %s",
                                o.reference,
                                stat(o.reference, &rst) != 0 ? "does not exist"
                                                             : "is not a directory");
        else
            rc = model_load_with(o.reference, &g.load, &g.reference, &err);
        if (rc) {
            fprintf(stderr, "duel generate: %s\n", err.message);
            generator_free(&g);
            return CLI_EXIT_FAILURE;
        }
    }
    if (o.arena_model) {
        struct stat ast;
        if (stat(o.arena_model, &ast) != 0 || !S_ISDIR(ast.st_mode))
            rc = duel_error_set(&err, DUEL_ENOTFOUND, "arena model directory '%s' %s",
                                o.arena_model,
                                stat(o.arena_model, &ast) != 0 ? "does not exist"
                                                               : "is not a directory");
        else
            rc = model_load_with(o.arena_model, &g.load, &g.arena, &err);
        if (rc == 0 && model_output_size(g.arena) != model_output_size(g.model))
            rc = duel_error_set(&err, DUEL_EINVAL,
                                "--arena-model has %d logits, --model %d: they must share the "
                                "tokenizer",
                                model_output_size(g.arena), model_output_size(g.model));
        if (rc) {
            fprintf(stderr, "duel generate: %s\n", err.message);
            generator_free(&g);
            return CLI_EXIT_FAILURE;
        }
    }
    if (o.duel && strategy != DUEL_STRATEGY_PILAF) {
        int d_feat = 2 * g.config->hidden_size;
        if (o.erm_path) {
            rc = erm_load(o.erm_path, d_feat, &g.erm, &err);
        } else {
            erm_config ec = {ERM_DEFAULT_NUM_HEADS, d_feat, ERM_DEFAULT_HIDDEN};
            duel_rng erm_rng;
            duel_rng_seed(&erm_rng, seed);
            rc = erm_create(&ec, &erm_rng, &g.erm, &err);
            if (rc == 0)
                fprintf(stderr,
                        "[ERM: none given (--erm), so a fresh one initialised from seed %llu: "
                        "%d heads, hidden %d, d_feat %d; its rewards are random]\n",
                        seed, ec.num_heads, ec.hidden, d_feat);
        }
        if (rc) {
            fprintf(stderr, "duel generate: %s\n", err.message);
            generator_free(&g);
            return CLI_EXIT_FAILURE;
        }
    }
    if (o.chat && !o.template_name && chat_template_detect(o.model_dir, &kind, &err)) {
        fprintf(stderr, "duel generate: %s\n", err.message);
        generator_free(&g);
        return CLI_EXIT_FAILURE;
    }
    if (o.chat) {
        generator_stop_at_end_of_turn(&g, kind);
        g.chat = true;
        g.answer_template = kind;
    }

    int status = CLI_EXIT_OK;
    if (o.interactive) {
        status = interactive_chat(&g, kind, &o, seed);
    } else {
        generation_stats stats;
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (o.chat) {
            conversation c = {0};
            rc = o.system ? conversation_add(&c, "system", o.system, strlen(o.system)) : 0;
            if (rc == 0) rc = conversation_add(&c, "user", o.prompt, strlen(o.prompt));
            if (rc == 0) rc = encode_conversation(&g, kind, &c, &ids, &n_ids, &err);
            else duel_error_set(&err, rc, "out of memory");
            conversation_free(&c);
        } else {
            rc = generator_encode(&g, o.prompt, false, true, &ids, &n_ids, &err);
            if (rc == 0 && n_ids > (size_t)g.context)
                rc = duel_error_set(&err, DUEL_ELIMIT,
                                    "the prompt is %zu tokens but the context holds %d", n_ids,
                                    g.context);
        }
        int m = (int)o.n;
        generated_answer *answers = NULL;
        duel_outcome duel = {0};
        if (rc == 0)
            rc = generator_run(&g, ids, (int)n_ids, m, (int)o.max_new_tokens,
                               o.n_given ? NULL : stdout, &answers, o.duel ? &duel : NULL,
                               &stats, &err);
        free(ids);
        if (rc) {
            fprintf(stderr, "duel generate: %s\n", err.message);
            status = CLI_EXIT_FAILURE;
        } else {
            if (o.n_given) {
                print_candidates(answers, m, o.duel ? &duel : NULL, stdout);
                if (o.duel && strategy == DUEL_STRATEGY_PILAF) {
                    printf("=== duel (pilaf, %s): a = candidate %d (left), b = candidate %d "
                           "(right), side swap: %s ===\n",
                           duel.pilaf_mixed ? "mixed: candidate 0 is y+, 1 is y-"
                                            : "plain: two policy samples",
                           duel.placement.a, duel.placement.b,
                           duel.placement.side_swap ? "yes" : "no");
                } else if (o.duel && strategy == DUEL_STRATEGY_ARENA) {
                    int a = duel.placement.a, b = duel.placement.b;
                    printf("=== duel (arena): a = candidate %d (left, from %s), b = candidate %d "
                           "(right, from %s), side swap: %s ===\n",
                           a, a < duel.arena_split ? "--model" : "--arena-model", b,
                           b < duel.arena_split ? "--model" : "--arena-model",
                           duel.placement.side_swap ? "yes" : "no");
                } else if (o.duel) {
                    printf("=== duel (%s): a = candidate %d (left), b = candidate %d (right), "
                           "side swap: %s, estimated regret R-hat %.6f ===\n",
                           duel_strategy_name(strategy), duel.placement.a, duel.placement.b,
                           duel.placement.side_swap ? "yes" : "no", duel.regret_estimate);
                    fprintf(stderr,
                            "[duel: features %.2f ms, ERM scoring %.3f ms, selection %.3f ms]\n",
                            duel.features_ms, duel.score_ms, duel.select_ms);
                }
            } else {
                fputc('\n', stdout);
                fflush(stdout);
            }
            print_stats(&stats, seed);
        }
        answers_free(answers, m);
        free(duel.mean);
    }
    generator_free(&g);
    return status;
}
