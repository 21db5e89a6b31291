/* cmd_bench.c: `duel bench forward` (prefill and decode speed of a model, GEMM share of the time,
 * as fractions of this machine's limits measured in the same run) and `duel bench machine` (the
 * limits alone: OpenBLAS sgemm rate and memory read bandwidth). Progress goes to stderr, the
 * figures to stdout; with --json the last stdout line is one JSON object holding them all.
 *
 * The anchors: prefill is GEMM-bound, so its useful FLOP/s (the model's GEMM FLOP count over the
 * whole prefill's wall time) is compared with sgemm on large square matrices. Batch-1 decode
 * reads every weight once per token, so its weight bytes per second are compared with the
 * streaming read bandwidth. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_json.h"
#include "cli.h"
#include "machine_limits.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "timer.h"

/* model_forward's contiguous KV cache is f32 whatever the weights (model.h). */
#define BENCH_KV_BYTES 4

typedef struct limits_options {
    long long sgemm_size, bandwidth_mib, bandwidth_threads;
} limits_options;

/* The best of every sample so far. */
typedef struct machine_figures {
    double sgemm_gflops;
    double read_gb_per_s;
    int samples;
} machine_figures;

static int limits_open(const limits_options *o, machine_probe **probe, duel_error *err) {
    fprintf(stderr, "preparing machine probes: sgemm %lld x %lld, read %lld MiB with %lld threads\n",
            o->sgemm_size, o->sgemm_size, o->bandwidth_mib, o->bandwidth_threads);
    return machine_probe_create((int)o->sgemm_size, (size_t)o->bandwidth_mib << 20,
                                (int)o->bandwidth_threads, probe, err);
}

/* One sample of each limit (two reads of the buffer), folded into the running best. */
static int limits_sample(machine_probe *probe, machine_figures *f, duel_error *err) {
    double gflops, gbps;
    int rc = machine_probe_sgemm(probe, &gflops, err);
    if (rc) return rc;
    if (gflops > f->sgemm_gflops) f->sgemm_gflops = gflops;
    for (int i = 0; i < 2; i++) {
        rc = machine_probe_bandwidth(probe, &gbps, err);
        if (rc) return rc;
        if (gbps > f->read_gb_per_s) f->read_gb_per_s = gbps;
    }
    f->samples++;
    return DUEL_OK;
}

#define LIMIT_OPTIONS(lo)                                                                       \
    {"--sgemm-size", CLI_OPT_INT, &(lo).sgemm_size, "N",                                        \
     "side of the square matrices of the sgemm probe (default 2048)", 256, 8192, false, NULL},  \
    {"--bandwidth-mib", CLI_OPT_INT, &(lo).bandwidth_mib, "N",                                  \
     "buffer of the bandwidth probe, MiB; far larger than cache (default 1024)", 64, 65536,     \
     false, NULL},                                                                              \
    {"--bandwidth-threads", CLI_OPT_INT, &(lo).bandwidth_threads, "N",                          \
     "threads of the bandwidth probe (default 2)", 1, 64, false, NULL}

static int bench_machine(int argc, char **argv) {
    limits_options lo = {2048, 1024, 2};
    long long repeats = 5;
    bool json = false;
    const cli_option options[] = {
        LIMIT_OPTIONS(lo),
        {"--repeats", CLI_OPT_INT, &repeats, "N", "samples of each probe; the best is reported "
                                                  "(default 5)", 1, 1000, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL,
         "print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench machine", "[options]",
        "Measures this machine's limits: OpenBLAS sgemm GFLOP/s on large square matrices and\n"
        "memory read bandwidth (GB/s, 1e9 bytes/s) of a multi-threaded streaming read over a\n"
        "buffer far larger than cache. Best of --repeats samples after one warm-up.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    machine_figures f = {0, 0, 0};
    machine_probe *probe = NULL;
    duel_error err = {0};
    rc = limits_open(&lo, &probe, &err);
    for (long long r = 0; rc == 0 && r < repeats; r++) rc = limits_sample(probe, &f, &err);
    machine_probe_free(probe);
    if (rc) {
        fprintf(stderr, "duel bench machine: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    printf("sgemm: %.1f GFLOP/s (%lld x %lld, best of %lld)\n", f.sgemm_gflops, lo.sgemm_size,
           lo.sgemm_size, repeats);
    printf("memory read bandwidth: %.2f GB/s (%lld MiB, %lld threads, best of %lld)\n",
           f.read_gb_per_s, lo.bandwidth_mib, lo.bandwidth_threads, 2 * repeats);
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "sgemm_gflops", json_real(f.sgemm_gflops));
        json_object_set_new(o, "sgemm_size", json_integer(lo.sgemm_size));
        json_object_set_new(o, "read_gb_per_s", json_real(f.read_gb_per_s));
        json_object_set_new(o, "bandwidth_mib", json_integer(lo.bandwidth_mib));
        json_object_set_new(o, "bandwidth_threads", json_integer(lo.bandwidth_threads));
        json_object_set_new(o, "repeats", json_integer(repeats));
        if (bench_json_print("machine", o)) return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}

/* One measured run: a prefill of the prompt into an empty cache, then greedy decode steps. */
typedef struct forward_run {
    double prefill_seconds, decode_seconds;
    double prefill_cpu_seconds, decode_cpu_seconds; /* the process's, every thread */
    model_timing prefill_timing, decode_timing;
} forward_run;

static int run_forward_once(model *m, model_kv_cache *kv, const int32_t *prompt, int n_prompt,
                            int n_decode, float *logits, forward_run *out, duel_error *err) {
    const sampler_params greedy = {0.0f, 1.0f, 0};
    int vocab = model_output_size(m);
    model_kv_cache_reset(kv);
    model_reset_timing(m);
    double t0 = duel_time_seconds(), c0 = duel_process_cpu_seconds();
    int rc = model_forward(m, kv, prompt, n_prompt, logits, false, NULL, err);
    if (rc) return rc;
    double t1 = duel_time_seconds(), c1 = duel_process_cpu_seconds();
    out->prefill_seconds = t1 - t0;
    out->prefill_cpu_seconds = c1 - c0;
    out->prefill_timing = model_get_timing(m);
    model_reset_timing(m);
    for (int i = 0; i < n_decode; i++) {
        int32_t id = sampler_sample(logits, vocab, &greedy, NULL, NULL, err);
        if (id < 0) return id;
        rc = model_forward(m, kv, &id, 1, logits, false, NULL, err);
        if (rc) return rc;
    }
    out->decode_seconds = duel_time_seconds() - t1;
    out->decode_cpu_seconds = duel_process_cpu_seconds() - c1;
    out->decode_timing = model_get_timing(m);
    return DUEL_OK;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* FLOPs of the prefill's matrix products from the config, for models whose timing does not
 * count them: 2 per weight per token for the layers, the output head on the last token only,
 * and the attention products (QK^T and PV, causal: about half of n^2). */
static double estimate_prefill_flops(const model_config *c, int n) {
    double h = c->hidden_size, q = (double)c->num_heads * c->head_dim,
           kv = (double)c->num_kv_heads * c->head_dim, inter = c->intermediate_size;
    double per_layer = c->arch == MODEL_ARCH_LLAMA ? h * q + 2 * h * kv + q * h + 3 * h * inter
                                                   : 4 * h * q + 2 * h * inter;
    double attention = 2.0 * 2.0 * q * ((double)n * (n + 1) / 2.0);
    return c->num_layers * (2.0 * per_layer * n + attention) + 2.0 * h * c->vocab_size;
}

static int bench_forward(int argc, char **argv) {
    const char *dir = NULL, *weights_name = "f32";
    long long n_prefill = 128, n_decode = 64, repeats = 3, threads = 2;
    limits_options lo = {2048, 1024, 2};
    bool json = false, no_limits = false;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &dir, "DIR", "model directory (config.json, safetensors); "
                                                 "required", 0, 0, false, NULL},
        {"--weights", CLI_OPT_STRING, &weights_name, "FMT",
         "weight storage: f32 (default), bf16 or q8 (blocks of 32 int8 + a scale, like Q8_0)", 0,
         0, false, NULL},
        {"--threads", CLI_OPT_INT, &threads, "N",
         "2 (default): this thread and the model's helper thread; 1: this thread alone (set "
         "OPENBLAS_NUM_THREADS=1 too for f32)", 1, 2, false, NULL},
        {"--prefill", CLI_OPT_INT, &n_prefill, "N", "prompt tokens per prefill (default 128)", 1,
         1e6, false, NULL},
        {"--decode", CLI_OPT_INT, &n_decode, "N", "decode steps after the prefill (default 64)",
         1, 1e6, false, NULL},
        {"--repeats", CLI_OPT_INT, &repeats, "N",
         "measured runs after one warm-up; best and median are reported (default 3)", 1, 1000,
         false, NULL},
        LIMIT_OPTIONS(lo),
        {"--no-limits", CLI_OPT_FLAG, &no_limits, NULL,
         "skip the sgemm and bandwidth probes (no fractions reported)", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL,
         "print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench forward", "--model DIR [options]",
        "Measures the CPU forward pass: a prefill of --prefill random tokens into an empty KV\n"
        "cache, then --decode greedy batch-1 decode steps, repeated --repeats times after a\n"
        "warm-up. Reports tokens/s of each phase (best run; median too), the share of the time\n"
        "spent in GEMM/GEMV calls, and this machine's sgemm rate and memory read bandwidth,\n"
        "sampled between the runs (best sample), with the fractions of them reached: prefill\n"
        "GEMM FLOP/s over the whole prefill vs sgemm, and decode weight bytes read per second\n"
        "vs bandwidth.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (!dir) return cli_usage_error(&cmd, "--model DIR is required");
    duel_error err = {0};
    model_load_options lopt = {.weights = WEIGHT_F32, .threads = (int)threads};
    if (weight_format_parse(weights_name, &lopt.weights, &err))
        return cli_usage_error(&cmd, "--weights: %s", err.message);

    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "duel bench forward: model directory '%s' does not exist\n", dir);
        return CLI_EXIT_FAILURE;
    }
    fprintf(stderr, "loading %s (%s weights)...\n", dir, weights_name);
    double tl = duel_time_seconds();
    model *m = NULL;
    if (model_load_with(dir, &lopt, &m, &err)) {
        fprintf(stderr, "duel bench forward: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    double load_seconds = duel_time_seconds() - tl;
    const model_config *c = model_get_config(m);
    int total_tokens = (int)(n_prefill + n_decode);
    if (total_tokens > c->max_position_embeddings) {
        fprintf(stderr,
                "duel bench forward: --prefill + --decode = %d exceeds the model's "
                "max_position_embeddings (%d)\n",
                total_tokens, c->max_position_embeddings);
        model_free(m);
        return CLI_EXIT_USAGE;
    }
    model_kv_cache *kv = NULL;
    machine_probe *probe = NULL;
    int32_t *prompt = malloc((size_t)n_prefill * sizeof *prompt);
    float *logits = malloc((size_t)model_output_size(m) * sizeof *logits);
    forward_run *runs = calloc((size_t)repeats, sizeof *runs);
    int status = CLI_EXIT_FAILURE;
    if (!prompt || !logits || !runs) {
        fprintf(stderr, "duel bench forward: out of memory\n");
        goto done;
    }
    if (model_kv_cache_create(m, total_tokens, &kv, &err)) {
        fprintf(stderr, "duel bench forward: %s\n", err.message);
        goto done;
    }
    duel_rng rng;
    duel_rng_seed(&rng, 1234);
    for (long long i = 0; i < n_prefill; i++)
        prompt[i] = (int32_t)duel_rng_below(&rng, (uint64_t)c->vocab_size);

    /* The limits are sampled before every run and once after the last, and the best sample
     * kept: on a shared machine the limits and the model then get the same chances at quiet
     * moments, and a limit is the best the machine can do. */
    machine_figures f = {0, 0, 0};
    if (!no_limits && limits_open(&lo, &probe, &err)) {
        fprintf(stderr, "duel bench forward: %s\n", err.message);
        goto done;
    }

    long long params = model_config_num_parameters(c);
    fprintf(stderr, "%s, %.1fM parameters, loaded in %.2f s; prefill %lld + decode %lld tokens, "
                    "warm-up + %lld runs\n",
            c->architecture, params / 1e6, load_seconds, n_prefill, n_decode, repeats);
    for (long long r = -1; r < repeats; r++) {
        forward_run run;
        if (probe && limits_sample(probe, &f, &err)) {
            fprintf(stderr, "duel bench forward: %s\n", err.message);
            goto done;
        }
        if (run_forward_once(m, kv, prompt, (int)n_prefill, (int)n_decode, logits, &run, &err)) {
            fprintf(stderr, "duel bench forward: %s\n", err.message);
            goto done;
        }
        if (r >= 0) runs[r] = run;
        fprintf(stderr, "  %s: prefill %.1f tokens/s, decode %.2f tokens/s\n",
                r < 0 ? "warm-up" : "run", n_prefill / run.prefill_seconds,
                n_decode / run.decode_seconds);
    }

    /* Best run of each phase (the least disturbed by other work on the machine). */
    int bp = 0, bd = 0;
    double *pre = malloc((size_t)repeats * sizeof *pre), *dec = malloc((size_t)repeats * sizeof *dec);
    if (!pre || !dec) {
        free(pre);
        free(dec);
        fprintf(stderr, "duel bench forward: out of memory\n");
        goto done;
    }
    for (int r = 0; r < repeats; r++) {
        if (runs[r].prefill_seconds < runs[bp].prefill_seconds) bp = r;
        if (runs[r].decode_seconds < runs[bd].decode_seconds) bd = r;
        pre[r] = n_prefill / runs[r].prefill_seconds;
        dec[r] = n_decode / runs[r].decode_seconds;
    }
    double prefill_median = median(pre, (int)repeats), decode_median = median(dec, (int)repeats);
    /* Tokens per CPU-second (the process's, helper and BLAS threads included): with one thread,
     * a speed that other work on the machine does not lower, unlike wall time. */
    for (int r = 0; r < repeats; r++) {
        pre[r] = n_prefill / runs[r].prefill_cpu_seconds;
        dec[r] = n_decode / runs[r].decode_cpu_seconds;
    }
    double prefill_cpu_median = median(pre, (int)repeats);
    double decode_cpu_median = median(dec, (int)repeats);
    free(pre);
    free(dec);
    const forward_run *P = &runs[bp], *D = &runs[bd];
    double prefill_tps = n_prefill / P->prefill_seconds, decode_tps = n_decode / D->decode_seconds;
    double prefill_gemm_share = P->prefill_timing.forward_seconds > 0
                                    ? P->prefill_timing.gemm_seconds / P->prefill_timing.forward_seconds
                                    : 0.0;
    double decode_gemm_share = D->decode_timing.forward_seconds > 0
                                   ? D->decode_timing.gemm_seconds / D->decode_timing.forward_seconds
                                   : 0.0;
    bool flops_counted = P->prefill_timing.gemm_flops > 0;
    double prefill_flops = flops_counted ? (double)P->prefill_timing.gemm_flops
                                         : estimate_prefill_flops(c, (int)n_prefill);
    double prefill_gflops = prefill_flops / P->prefill_seconds / 1e9;
    double prefill_gemm_gflops = P->prefill_timing.gemm_seconds > 0 && flops_counted
                                     ? prefill_flops / P->prefill_timing.gemm_seconds / 1e9
                                     : 0.0;
    /* Decode reads every layer weight and the output head once per token, in the format they
     * are held in; an untied input embedding is read one row at a time and is left out (so are
     * the norms: a few KB). */
    double weight_bytes = (double)model_weight_bytes(m);
    /* K and V of every earlier position are read too: on average at position P + D/2. */
    double kv_bytes = 2.0 * c->num_layers * c->num_kv_heads * c->head_dim * BENCH_KV_BYTES *
                      ((double)n_prefill + n_decode / 2.0);
    double decode_gb_per_s = weight_bytes * decode_tps / 1e9;
    double decode_gb_per_s_with_kv = (weight_bytes + kv_bytes) * decode_tps / 1e9;

    if (probe && limits_sample(probe, &f, &err)) {
        fprintf(stderr, "duel bench forward: %s\n", err.message);
        goto done;
    }

    printf("model: %s (%s, %.1fM parameters, weights held as %s)\n", dir, c->architecture,
           params / 1e6, weights_name);
    printf("prefill: %.1f tokens/s best of %lld (median %.1f), %lld tokens, GEMM share %.0f%%, "
           "%.1f GFLOP/s%s over the whole prefill\n",
           prefill_tps, repeats, prefill_median, n_prefill, 100 * prefill_gemm_share,
           prefill_gflops, flops_counted ? "" : " (FLOPs estimated from config)");
    printf("per CPU-second (median): prefill %.1f tokens, decode %.2f tokens\n", prefill_cpu_median,
           decode_cpu_median);
    printf("decode: %.2f tokens/s best of %lld (median %.2f), %lld steps at batch 1, GEMM share "
           "%.0f%%, %.2f GB/s of weights (%.1f MB per token; %.2f GB/s with the KV cache)\n",
           decode_tps, repeats, decode_median, n_decode, 100 * decode_gemm_share,
           decode_gb_per_s, weight_bytes / 1e6, decode_gb_per_s_with_kv);
    if (!no_limits) {
        printf("machine: sgemm %.1f GFLOP/s (%lld^3), memory read %.2f GB/s (%lld threads); best "
               "of %d samples taken between the runs\n",
               f.sgemm_gflops, lo.sgemm_size, f.read_gb_per_s, lo.bandwidth_threads, f.samples);
        printf("fractions: prefill %.0f%% of sgemm, decode %.0f%% of bandwidth\n",
               100 * prefill_gflops / f.sgemm_gflops, 100 * decode_gb_per_s / f.read_gb_per_s);
    }
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "model", json_string(dir));
        json_object_set_new(o, "architecture", json_string(c->architecture));
        json_object_set_new(o, "parameters", json_integer(params));
        json_object_set_new(o, "weights", json_string(weights_name));
        json_object_set_new(o, "threads", json_integer(threads));
        json_object_set_new(o, "prefill_tokens", json_integer(n_prefill));
        json_object_set_new(o, "decode_tokens", json_integer(n_decode));
        json_object_set_new(o, "repeats", json_integer(repeats));
        json_object_set_new(o, "statistic", json_string("best"));
        json_object_set_new(o, "prefill_tokens_per_s", json_real(prefill_tps));
        json_object_set_new(o, "prefill_tokens_per_s_median", json_real(prefill_median));
        json_object_set_new(o, "decode_tokens_per_s", json_real(decode_tps));
        json_object_set_new(o, "decode_tokens_per_s_median", json_real(decode_median));
        json_object_set_new(o, "prefill_tokens_per_cpu_s", json_real(prefill_cpu_median));
        json_object_set_new(o, "decode_tokens_per_cpu_s", json_real(decode_cpu_median));
        json_object_set_new(o, "prefill_gemm_share", json_real(prefill_gemm_share));
        json_object_set_new(o, "decode_gemm_share", json_real(decode_gemm_share));
        json_object_set_new(o, "prefill_gflops", json_real(prefill_gflops));
        json_object_set_new(o, "prefill_gemm_only_gflops", json_real(prefill_gemm_gflops));
        json_object_set_new(o, "prefill_flops_counted", json_boolean(flops_counted));
        json_object_set_new(o, "decode_weight_bytes_per_token", json_real(weight_bytes));
        json_object_set_new(o, "decode_weight_gb_per_s", json_real(decode_gb_per_s));
        json_object_set_new(o, "decode_gb_per_s_with_kv", json_real(decode_gb_per_s_with_kv));
        if (!no_limits) {
            json_object_set_new(o, "sgemm_gflops", json_real(f.sgemm_gflops));
            json_object_set_new(o, "read_gb_per_s", json_real(f.read_gb_per_s));
            json_object_set_new(o, "limit_samples", json_integer(f.samples));
            json_object_set_new(o, "prefill_fraction_of_sgemm",
                                json_real(prefill_gflops / f.sgemm_gflops));
            json_object_set_new(o, "decode_fraction_of_bandwidth",
                                json_real(decode_gb_per_s / f.read_gb_per_s));
        }
        if (bench_json_print("forward", o)) goto done;
    }
    status = CLI_EXIT_OK;
done:
    machine_probe_free(probe);
    model_kv_cache_free(kv);
    model_free(m);
    free(prompt);
    free(logits);
    free(runs);
    return status;
}

int bench_engine(int argc, char **argv); /* cmd_bench_engine.c */

int bench_trainer(int argc, char **argv); /* cmd_bench_trainer.c */
int bench_loop(int argc, char **argv);    /* cmd_bench_loop.c */

static const struct {
    const char *name;
    const char *summary;
    int (*run)(int, char **);
} BENCHES[] = {
    {"forward", "prefill and decode tokens/s of a model, as fractions of the machine's limits",
     bench_forward},
    {"machine", "this machine's limits: sgemm GFLOP/s and memory read bandwidth", bench_machine},
    {"engine", "serving engine: batched decode tokens/s, time to duel, prefix cache hit rate",
     bench_engine},
    {"train", "training tokens/s and DPO pairs/s on the CPU, as fractions of sgemm", bench_train},
    {"trainer", "online trainer: votes applied per second through a real Redis stream", bench_trainer},
    {"loop", "the learning loop: serving, oracle votes, duel train, hot-swap; latency and win rate", bench_loop},
};

static void print_bench_help(FILE *out) {
    fprintf(out, "usage: duel bench <benchmark> [options]\n\nbenchmarks:\n");
    for (size_t i = 0; i < sizeof BENCHES / sizeof BENCHES[0]; i++)
        fprintf(out, "  %-10s %s\n", BENCHES[i].name, BENCHES[i].summary);
    fprintf(out, "\noptions:\n  --help, -h  print this help and exit\n\n"
                 "Every benchmark accepts --json: its figures as one JSON object on the last line "
                 "of stdout.\n'duel bench <benchmark> --help' describes its options.\n");
}

int cmd_bench(int argc, char **argv) {
    if (argc < 1) {
        print_bench_help(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        print_bench_help(stdout);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof BENCHES / sizeof BENCHES[0]; i++)
        if (strcmp(argv[0], BENCHES[i].name) == 0) return BENCHES[i].run(argc - 1, argv + 1);
    fprintf(stderr, "duel bench: unknown benchmark '%s' (see 'duel bench --help')\n", argv[0]);
    return CLI_EXIT_USAGE;
}
