/* cmd_bench_trainer.c: `duel bench trainer`: votes applied per second by the online trainer
 * (trainer/stream_consumer.h over trainer/online_trainer.h) on a model on the CPU, fed through a
 * real Redis stream. It starts its own redis-server on a free loopback port (or uses --redis),
 * XADDs synthetic a/b votes in the gateway's format (vote_entry_encode: M candidates of random
 * tokens, random features of the ERM's width), then times the consumer from its first read
 * until every vote is applied, checkpointed and acknowledged, with the trainer's defaults
 * (DESIGN.md section 6) unless options say otherwise: ERM update, SEA mixture (burn-in 0 here,
 * so the steady state is measured), checkpoint, snapshots. Reports votes/s and where the time
 * went (updates, checkpoints, snapshots). With --json the last stdout line is one JSON object. */
#include <errno.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_redis.h"
#include "bench_json.h"
#include "cli.h"
#include "cpu_ops.h"
#include "machine_limits.h"
#include "model.h"
#include "online_trainer.h"
#include "rng.h"
#include "stream_consumer.h"
#include "timer.h"

int bench_trainer(int argc, char **argv);

/* Token counts drawn uniformly from lo..hi. */
typedef struct length_range {
    long long lo, hi;
} length_range;

/* log pi(cand[i] | prompt) for M candidates, as the serving engine's reference pass gives them
 * (ref_logprobs): the prompt runs once; each candidate runs after it with every position's
 * logits, and log softmax picks its tokens. */
static int reference_logprobs(model *m, model_kv_cache *kv, const int32_t *prompt, int np, const int32_t *cand,
                              const int32_t *offsets, int M, float *first, float *logits, float *out,
                              duel_error *err) {
    const int V = model_output_size(m);
    model_kv_cache_reset(kv);
    int rc = model_forward(m, kv, prompt, np, first, false, NULL, err); /* the prompt's last row */
    if (rc) return rc;
    for (int i = 0; i < M; i++) {
        const int32_t *tok = cand + offsets[i];
        const int len = offsets[i + 1] - offsets[i];
        double sum = 0;
        model_kv_cache_truncate(kv, np);
        if (len > 0 && (rc = model_forward(m, kv, tok, len, logits, true, NULL, err))) return rc;
        for (int t = 0; t < len; t++) {
            const float *row = t == 0 ? first : logits + (size_t)(t - 1) * V;
            sum += (double)row[tok[t]] - cpu_log_sum_exp(row, V); /* as the engine's */
        }
        out[i] = (float)sum;
    }
    return 0;
}

/* XADDs n a/b votes: M candidates, prompt and responses of random tokens with lengths drawn
 * from the ranges, features N(0, 1) of width d_feat, choice by a random linear reward; with ref
 * (the reference model) each also carries ref_logprobs, as the serving engine writes them. */
static int produce(redisContext *c, const char *stream, int n, int M, int d_feat, int vocab, int max_seq,
                   length_range prompt_len, length_range response_len, const char *model_id, model *ref,
                   duel_error *err) {
    duel_rng rng;
    duel_rng_seed(&rng, 2026);
    float *w = malloc((size_t)d_feat * sizeof(float)), *features = malloc((size_t)M * d_feat * sizeof(float));
    float *rewards = calloc((size_t)M, sizeof(float));
    int32_t *prompt = malloc((size_t)prompt_len.hi * sizeof(int32_t));
    int32_t *cand = malloc((size_t)M * (size_t)response_len.hi * sizeof(int32_t));
    int32_t *offsets = malloc((size_t)(M + 1) * sizeof(int32_t));
    double *r = malloc((size_t)M * sizeof(double));
    float *ref_lp = malloc((size_t)M * sizeof(float)), *logits = NULL;
    model_kv_cache *kv = NULL;
    int rc = 0;
    if (ref) {
        /* the prompt's last row, then a candidate's rows */
        logits = malloc((size_t)(response_len.hi + 1) * (size_t)model_output_size(ref) * sizeof(float));
        if ((rc = model_kv_cache_create(ref, (int)(prompt_len.hi + response_len.hi), &kv, err))) goto done;
    }
    if (!w || !features || !rewards || !prompt || !cand || !offsets || !r || !ref_lp || (ref && !logits)) {
        rc = duel_error_set(err, DUEL_ENOMEM, "bench trainer: out of memory");
        goto done;
    }
    for (int k = 0; k < d_feat; k++) w[k] = (float)duel_rng_normal(&rng);
    for (int v = 0; v < n && rc == 0; v++) {
        vote_entry e;
        memset(&e, 0, sizeof e);
        int np = (int)prompt_len.lo + (int)duel_rng_below(&rng, (uint64_t)(prompt_len.hi - prompt_len.lo + 1));
        int max_resp = max_seq > 0 && max_seq - np < response_len.hi ? max_seq - np : (int)response_len.hi;
        for (int i = 0; i < np; i++) prompt[i] = 3 + (int32_t)duel_rng_below(&rng, (uint64_t)vocab - 3);
        offsets[0] = 0;
        for (int m = 0; m < M; m++) {
            const int lo = (int)response_len.lo;
            int len = lo + (int)duel_rng_below(&rng, (uint64_t)(max_resp > lo ? max_resp - lo + 1 : 1));
            if (len > max_resp) len = max_resp;
            for (int i = 0; i < len; i++) cand[offsets[m] + i] = 3 + (int32_t)duel_rng_below(&rng, (uint64_t)vocab - 3);
            offsets[m + 1] = offsets[m] + len;
            r[m] = 0;
            for (int k = 0; k < d_feat; k++) {
                features[(size_t)m * d_feat + k] = (float)duel_rng_normal(&rng);
                r[m] += w[k] * features[(size_t)m * d_feat + k];
            }
        }
        int a = (int)duel_rng_below(&rng, (uint64_t)M), b = (a + 1 + (int)duel_rng_below(&rng, (uint64_t)M - 1)) % M;
        snprintf(e.vote_id, sizeof e.vote_id, "bench-%08d", v);
        snprintf(e.duel_id, sizeof e.duel_id, "duel-%08d", v);
        snprintf(e.model_id, sizeof e.model_id, "%s", model_id);
        snprintf(e.strategy, sizeof e.strategy, "ee_ts");
        e.ts_ms = 1795000000000LL + v;
        e.choice = r[a] >= r[b] ? VOTE_CHOICE_A : VOTE_CHOICE_B;
        e.chosen_idx = e.choice == VOTE_CHOICE_A ? a : b;
        e.rejected_idx = e.choice == VOTE_CHOICE_A ? b : a;
        e.num_candidates = M;
        e.d_feat = d_feat;
        e.num_heads = 1;
        e.n_prompt_tokens = np;
        e.prompt_tokens = prompt;
        e.n_cand_tokens = offsets[M];
        e.cand_tokens = cand;
        e.cand_offsets = offsets;
        e.features = features;
        e.erm_rewards = rewards;
        if (ref) {
            if ((rc = reference_logprobs(ref, kv, prompt, np, cand, offsets, M, logits,
                                         logits + (size_t)model_output_size(ref), ref_lp, err))) break;
            e.ref_logprobs = ref_lp;
        }
        vote_entry_encoded enc;
        if ((rc = vote_entry_encode(&e, NULL, &enc, err))) break;
        rc = bench_xadd_vote(c, stream, &enc, err);
        vote_entry_encoded_free(&enc);
    }
done:
    free(w), free(features), free(rewards), free(prompt), free(cand), free(offsets), free(r);
    free(ref_lp), free(logits);
    model_kv_cache_free(kv);
    return rc;
}

/* "A:B" (1 <= A <= B <= 1024) into *out; a usage message into err otherwise. */
static int parse_range(const char *flag, const char *text, length_range *out, duel_error *err) {
    char *end = NULL;
    errno = 0;
    long long lo = strtoll(text, &end, 10), hi;
    if (errno == 0 && end != text && *end == ':') {
        const char *second = end + 1;
        hi = strtoll(second, &end, 10);
        if (errno == 0 && end != second && *end == '\0' && lo >= 1 && lo <= hi && hi <= 1024) {
            *out = (length_range){lo, hi};
            return 0;
        }
    }
    return duel_error_set(err, DUEL_EINVAL, "%s '%s': expected MIN:MAX tokens with 1 <= MIN <= MAX <= 1024",
                          flag, text);
}

int bench_trainer(int argc, char **argv) {
    const char *model_dir = "models/default", *redis = NULL, *loss = "dpo";
    const char *prompt_tokens = "8:23", *response_tokens = "16:48", *ref_source = "votes";
    long long votes = 400, batch = -1, max_batch = -1, checkpoint_every = -1, candidates = 4, burn_in = 0;
    double gamma = -1, publish_seconds = -1;
    bool json = false;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model_dir, "DIR", "the policy (default models/default)", 0, 0, false, NULL},
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT", "use this Redis (its duel:bench:* keys are deleted); "
         "default: start redis-server on a free port", 0, 0, false, NULL},
        {"--votes", CLI_OPT_INT, &votes, "N", "a/b votes to apply (default 400)", 1, 10000000, false, NULL},
        {"--candidates", CLI_OPT_INT, &candidates, "M", "candidates per duel (default 4)", 2, 64, false, NULL},
        {"--batch-size", CLI_OPT_INT, &batch, "N", "trainer.batch_size (default: the trainer's, 8)", 1, ONLINE_MAX_BATCH, false, NULL},
        {"--max-batch-size", CLI_OPT_INT, &max_batch, "N", "trainer.max_batch_size (default: the trainer's, 64; the votes are "
         "all in the stream before the timing starts, so the trainer is behind and its batches are this size; "
         "--max-batch-size 1: fixed batches of --batch-size)", 1, ONLINE_MAX_BATCH, false, NULL},
        {"--checkpoint-every", CLI_OPT_INT, &checkpoint_every, "N", "trainer.checkpoint_every (default: the trainer's, 5)", 1, 1 << 30, false, NULL},
        {"--burn-in", CLI_OPT_INT, &burn_in, "N", "trainer.burn_in (default 0: the SEA mixture from the start)", 0, 1LL << 40, false, NULL},
        {"--gamma", CLI_OPT_DOUBLE, &gamma, "G", "trainer.gamma (default: the trainer's, 0.7)", 0, 1, true, NULL},
        {"--publish-every-seconds", CLI_OPT_DOUBLE, &publish_seconds, "S", "trainer.publish_every_seconds (default: the trainer's, 5)", 0, 1e9, false, NULL},
        {"--loss", CLI_OPT_STRING, &loss, "NAME", "dpo, ipo, slic or simpo (default dpo)", 0, 0, false, NULL},
        {"--prompt-tokens", CLI_OPT_STRING, &prompt_tokens, "MIN:MAX", "prompt length of the synthetic votes, uniform (default 8:23)", 0, 0, false, NULL},
        {"--response-tokens", CLI_OPT_STRING, &response_tokens, "MIN:MAX", "candidate length, uniform (default 16:48; the "
         "default model's duels: `duel bench loop` prints their GFLOP per vote)", 0, 0, false, NULL},
        {"--ref-logprobs", CLI_OPT_STRING, &ref_source, "SRC", "votes (default: the votes carry the reference's "
         "log-probabilities, as the serving engine writes them; computed before the timing) or trainer (votes without "
         "them: the trainer runs its reference model)", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL, "also print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench trainer", "[options]",
        "Votes applied per second by the online trainer (`duel train`'s code) on the CPU, fed\n"
        "through a real Redis stream: synthetic a/b votes are XADDed first, then the consumer is\n"
        "timed until all are applied, checkpointed and acknowledged. Trainer defaults (ERM update,\n"
        "SEA mixture after burn-in, checkpoint every 5 updates, snapshots every 10 updates or 5 s;\n"
        "the trainer is behind the stream, so its batches are trainer.max_batch_size).\n"
        "The votes carry the reference's log-probabilities of their candidates, as the serving\n"
        "engine's reference pass writes them (--ref-logprobs trainer: they do not, and the\n"
        "trainer runs its reference model over every pair).\n"
        "Also reports the policy update's FLOPs per vote and the rate they run at against this\n"
        "machine's sgemm rate (probed before and after the run), and the ceiling that rate sets:\n"
        "the votes/s of the policy update alone at the full sgemm rate.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    duel_error err = {0};
    length_range prompt_len, response_len;
    if (parse_range("--prompt-tokens", prompt_tokens, &prompt_len, &err) ||
        parse_range("--response-tokens", response_tokens, &response_len, &err))
        return cli_usage_error(&cmd, "%s", err.message);
    const bool vote_ref = strcmp(ref_source, "votes") == 0;
    if (!vote_ref && strcmp(ref_source, "trainer") != 0)
        return cli_usage_error(&cmd, "--ref-logprobs wants votes or trainer, got '%s'", ref_source);
    model *ref_model = NULL;
    bench_redis rs = {0};
    redisContext *c = NULL;
    online_trainer *trainer = NULL;
    stream_consumer *consumer = NULL;
    char data_dir[600] = "";
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    if (redis) {
        if (bench_redis_parse(redis, &rs, &err)) return cli_usage_error(&cmd, "%s", err.message);
    } else if ((rc = bench_redis_start(&rs, tmp, "duel-bench-trainer", &err))) {
        goto done;
    }
    snprintf(data_dir, sizeof data_dir, "%s/duel-bench-trainer-data-XXXXXX", tmp);
    if (!mkdtemp(data_dir)) {
        data_dir[0] = '\0';
        rc = duel_error_set(&err, DUEL_EIO, "cannot create a data folder under %s", tmp);
        goto done;
    }
    online_trainer_options to;
    online_trainer_default_options(&to);
    if ((rc = dap_loss_kind_parse(loss, &to.loss.kind, &err))) goto done;
    dap_loss_default_options(to.loss.kind, &to.loss);
    to.model_dir = model_dir;
    to.model_id = "bench";
    to.burn_in = burn_in;
    if (batch > 0) to.batch_size = (int)batch;
    if (max_batch > 0) to.max_batch_size = (int)max_batch;
    if (checkpoint_every > 0) to.checkpoint_every = (int)checkpoint_every;
    if (gamma > 0) to.gamma = gamma;
    if (publish_seconds >= 0) to.publish_every_seconds = publish_seconds;
    fprintf(stderr, "loading %s ...\n", model_dir);
    if ((rc = online_trainer_open(&to, data_dir, &trainer, &err))) goto done;
    vote_entry_limits limits;
    online_trainer_limits(trainer, &limits);
    c = redisConnect(rs.host, rs.port);
    if (!c || c->err) {
        rc = duel_error_set(&err, DUEL_EIO, "redis %s:%d: cannot connect", rs.host, rs.port);
        goto done;
    }
    freeReplyObject(redisCommand(c, "DEL duel:bench:prefs duel:bench:prefs:dead"));
    fprintf(stderr, "XADDing %lld votes (M = %lld, d_feat %d, prompts of %lld-%lld tokens, candidates of %lld-%lld) to %s:%d ...\n", votes, candidates, limits.d_feat, prompt_len.lo, prompt_len.hi, response_len.lo, response_len.hi,
            rs.host, rs.port);
    if (vote_ref && (rc = model_load(model_dir, &ref_model, &err))) goto done;
    if ((rc = produce(c, "duel:bench:prefs", (int)votes, (int)candidates, limits.d_feat, limits.vocab,
                      limits.max_sequence, prompt_len, response_len, "bench", ref_model, &err)))
        goto done;
    model_free(ref_model); /* only the votes' producer needs it */
    ref_model = NULL;
    stream_consumer_options so;
    stream_consumer_default_options(&so);
    so.host = rs.host;
    so.port = rs.port;
    so.stream = "duel:bench:prefs";
    so.dead_stream = "duel:bench:prefs:dead";
    so.key_prefix = "duel:bench:";
    so.block_ms = 50;
    so.data_dir = data_dir;
    so.tokenizer_dir = model_dir;
    so.base_model = model_dir;
    if ((rc = stream_consumer_open(&so, trainer, &consumer, &err))) goto done;
    fprintf(stderr, "applying (batch %d, gamma %g, checkpoint every %d, publish every %d updates or %g s) ...\n",
            to.batch_size, to.gamma, to.checkpoint_every, to.publish_every, to.publish_every_seconds);
    /* This machine's sgemm rate, the ceiling of the policy update's matrix work: best of probes
     * before and after the run (the probe's buffers are freed while the trainer runs). */
    double sgemm = 0;
    if ((rc = machine_sgemm_best(2048, 3, &sgemm, &err))) goto done;
    double t0 = duel_time_seconds(), cpu0 = bench_cpu_seconds();
    stream_consumer_stats st;
    online_trainer_status s;
    for (;;) {
        int n = 0;
        if ((rc = stream_consumer_poll(consumer, &n, &err))) goto done;
        stream_consumer_get_stats(consumer, &st);
        online_trainer_get_status(trainer, &s);
        if (n == 0 && st.acked >= votes) break; /* a partial last batch: the idle round checkpointed it */
    }
    double elapsed = duel_time_seconds() - t0, cpu = bench_cpu_seconds() - cpu0;
    if ((rc = machine_sgemm_best(2048, 3, &sgemm, &err))) goto done;
    double busy = st.apply_seconds + st.checkpoint_seconds + st.snapshot_seconds;
    double applied = (double)s.prefs_applied;
    const int most = to.max_batch_size > to.batch_size ? to.max_batch_size : to.batch_size;
    printf("online trainer on %s (CPU): %lld votes, batches of %d to %d (%.1f on average) + synthetic (%d in the\n"
           "  last), %lld updates\n", model_dir, votes, to.batch_size, most,
           st.updates > 0 ? applied / (double)st.updates : 0.0, s.synthetic, (long long)st.updates);
    printf("  reference log-probabilities  %s (%lld of the pairs trained on took the votes')\n",
           vote_ref ? "carried by the votes" : "the trainer's reference model", (long long)s.vote_ref_pairs);
    printf("  votes applied per second  %.1f  (%.2f s wall, until all acknowledged)\n", applied / elapsed, elapsed);
    printf("  per update  %.1f ms  (update %.1f ms, checkpoint %.1f ms x %lld, snapshot %.1f ms x %lld)\n",
           1000.0 * elapsed / (double)(st.updates > 0 ? st.updates : 1),
           1000.0 * st.apply_seconds / (double)(st.updates > 0 ? st.updates : 1),
           1000.0 * st.checkpoint_seconds / (double)(st.checkpoints > 0 ? st.checkpoints : 1), (long long)st.checkpoints,
           1000.0 * st.snapshot_seconds / (double)(st.snapshots > 0 ? st.snapshots : 1), (long long)st.snapshots);
    const double per_update = 1000.0 / (double)(st.updates > 0 ? st.updates : 1);
    printf("  update  ERM %.1f ms, policy forward/backward %.1f ms, clip + AdamW %.1f ms\n",
           s.erm_seconds * per_update, s.policy_seconds * per_update, s.optimizer_seconds * per_update);
    printf("  other (Redis, decoding, waiting)  %.2f s\n", elapsed - busy);
    /* The policy update's matrix work against the machine's sgemm rate: how far the update is
     * from its own ceiling, and the votes/s that ceiling allows even with nothing else to do. */
    const double gflop_per_vote = applied > 0 ? s.update_flops / applied / 1e9 : 0;
    const double update_gflops = st.apply_seconds > 0 ? s.update_flops / st.apply_seconds / 1e9 : 0;
    const double ceiling = gflop_per_vote > 0 ? sgemm / gflop_per_vote : 0;
    printf("  policy update  %.2f GFLOP per vote (reference forward where it ran, policy forward and backward,\n"
           "  synthetic pairs included), %.1f GFLOP/s: %.0f%% of this machine's sgemm rate (%.1f GFLOP/s)\n",
           gflop_per_vote, update_gflops, sgemm > 0 ? 100 * update_gflops / sgemm : 0, sgemm);
    printf("  ceiling  %.1f votes/s: the policy update alone at the full sgemm rate\n", ceiling);
    printf("  CPU time of this process  %.2f s (%.2f cores busy on average; wall figures suffer when the\n"
           "  machine is shared: votes per CPU second %.1f)\n", cpu, cpu / elapsed, applied / cpu);
    if (json) {
        json_t *o = json_pack("{s:s, s:I, s:I, s:i, s:i, s:f, s:i, s:i, s:f, s:f, s:f, s:I, s:f, s:I, s:f, s:I, s:I, s:f, s:f,"
                              " s:f, s:f, s:f, s:f}",
                              "model", model_dir, "votes", (json_int_t)votes,
                              "prefs_applied", (json_int_t)s.prefs_applied, "batch_size", to.batch_size,
                              "synthetic_per_update", s.synthetic, "gamma", to.gamma,
                              "checkpoint_every", to.checkpoint_every, "publish_every", to.publish_every,
                              "votes_per_second", applied / elapsed, "wall_seconds", elapsed,
                              "update_seconds", st.apply_seconds, "updates", (json_int_t)st.updates,
                              "checkpoint_seconds", st.checkpoint_seconds, "checkpoints", (json_int_t)st.checkpoints,
                              "snapshot_seconds", st.snapshot_seconds, "snapshots", (json_int_t)st.snapshots,
                              "candidates", (json_int_t)candidates, "cpu_seconds", cpu,
                              "votes_per_cpu_second", applied / cpu, "gflop_per_vote", gflop_per_vote,
                              "update_gflops", update_gflops, "sgemm_gflops", sgemm,
                              "ceiling_votes_per_second", ceiling);
        if (o) {
            json_object_set_new(o, "prompt_tokens", json_pack("[I,I]", (json_int_t)prompt_len.lo, (json_int_t)prompt_len.hi));
            json_object_set_new(o, "response_tokens",
                                json_pack("[I,I]", (json_int_t)response_len.lo, (json_int_t)response_len.hi));
            json_object_set_new(o, "ref_logprobs", json_string(ref_source));
            json_object_set_new(o, "max_batch_size", json_integer(most));
            json_object_set_new(o, "mean_batch", json_real(st.updates > 0 ? applied / (double)st.updates : 0.0));
            json_object_set_new(o, "vote_ref_pairs", json_integer((json_int_t)s.vote_ref_pairs));
            json_object_set_new(o, "erm_seconds", json_real(s.erm_seconds));
            json_object_set_new(o, "policy_seconds", json_real(s.policy_seconds));
            json_object_set_new(o, "optimizer_seconds", json_real(s.optimizer_seconds));
        }
        if (bench_json_print("trainer", o)) rc = duel_error_set(&err, DUEL_EIO, "the JSON line could not be printed");
    }
done:
    if (rc) fprintf(stderr, "duel bench trainer: %s\n", err.message);
    model_free(ref_model);
    stream_consumer_close(consumer);
    online_trainer_close(trainer);
    if (c) redisFree(c);
    bench_redis_stop(&rs);
    if (data_dir[0]) bench_remove_tree(data_dir);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
