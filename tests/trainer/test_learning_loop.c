/* test_learning_loop.c: issue 7's end-to-end test of the learning loop without the gateway, on
 * the shipped default model (models/default) and a real redis-server, through `duel bench loop`
 * (cli/cmd_bench_loop.c): the gateway's engine adapter serves duels (M = 4, E&E-TS over the
 * serving snapshot's ERM), scripted users ask "Define X." about the training headwords and vote
 * with the lexical oracle against X's WordNet gloss (models/wordnet_data.py writes them), the
 * votes are XADDed to duel:prefs, `duel train` applies them and publishes snapshots, and the
 * gateway's snapshot loader verifies and hot-swaps them in while duels keep being served.
 *
 * Why "Define X.": the shipped model answers "What does X mean?" (the question form of its
 * training) with the gloss for 84 % of the held-out common words already, so votes on that form
 * have almost nothing to teach (docs/BENCHMARKS.md, "Learning loop"). "Define X." is a form it was
 * never taught: its answers are fluent definitions of other words (mean oracle score 0.09 against
 * 0.82 for the same words asked the other way). The users' votes teach it what they want from
 * that question, which is what the product is for, and it transfers to headwords nobody asked.
 *
 * The shipped configuration, except a checkpoint every 8 updates instead of every 5 (it changes
 * only what a crash would redo; the crash tests cover that) and fixed batches of 8 pairs (below). What the test holds the loop to
 * (fixed seeds; snapshot timing still decides which policy generates which duel):
 *   - nothing lost, nothing applied twice: every a/b vote sent was applied or waits in a batch
 *     not yet full (ties are counted, not trained on);
 *   - the serving side hot-swapped at least twice, refused nothing, and ended on a snapshot;
 *   - the margin: on "Define Y." for held-out headwords never asked during the run, the final
 *     snapshot's greedy answers beat the base model's with a win rate of at least
 *     LOOP_MIN_WIN_RATE (ties half; the base against itself is 0.5) and raise the mean oracle
 *     score by at least LOOP_MIN_GAIN; its answers sampled as duels are (4 per prompt, the same
 *     seeds for both models) win at least LOOP_MIN_SAMPLED_WIN_RATE;
 *   - what the votes cost elsewhere: on the same held-out headwords asked "What does Y mean?"
 *     (the control), the greedy mean score drops by at most LOOP_MAX_CONTROL_LOSS.
 * A sanitizer build runs 120 votes and checks everything but the scores (the instrumented model
 * is too slow for 1,200). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_helpers.h"

#if defined(__SANITIZE_ADDRESS__)
#define LOOP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOOP_SANITIZED 1
#endif
#endif
#ifndef LOOP_SANITIZED
#define LOOP_SANITIZED 0
#endif

/* The margin and the cost. At the shipped configuration (lr 3e-5) over four 2,000-vote runs on
 * the 2-core development VM (docs/BENCHMARKS.md, "Learning loop"): greedy win rate 0.730 to
 * 0.775, mean score +0.267 to +0.356 (from 0.089), sampled win rate 0.815 to 0.865, control score
 * -0.071 to -0.115 (from 0.817). The test runs 1,200 votes with fixed batches (below), which
 * take CI half the time: two runs, greedy win rate 0.715 and 0.703, mean score +0.239 and +0.214,
 * sampled 0.807 and 0.762, control -0.087 and -0.093. The bounds sit between those and a policy
 * that learnt nothing (win rates 0.5, gain 0), about three standard errors of 200 prompts (0.035
 * on a win rate) from each. The control's bound is for a policy the votes break (lr 1e-4 costs it
 * 0.22 at 2,000 votes, and 0.41 when users ask "What does X mean?"), not for the trade-off. */
#define LOOP_MIN_WIN_RATE 0.62
#define LOOP_MIN_GAIN 0.10
#define LOOP_MIN_SAMPLED_WIN_RATE 0.66
#define LOOP_MAX_CONTROL_LOSS 0.20
/* What a run learns must not depend on how fast the machine is. The trainer's batches do unless
 * fixed: one that falls behind the stream takes up to trainer.max_batch_size (64) pairs per
 * update, so a busy machine made fewer, larger updates at the same learning rate. On this VM at
 * load 16 (other engineers' builds), the same 2,000 votes: adaptive batches, win rate 0.647 and
 * a gain of 0.10 (vote -> serving p50 12 s); with serving held to 40 votes behind, 0.672 and
 * 0.11; with fixed batches of 8 as well, 0.780 and 0.358 (sampled 0.828, control -0.093), as on
 * a quiet machine. So the batches are fixed (max_batch_size = batch_size = 8) and users wait
 * while more than LOOP_MAX_LAG a/b votes are not yet served (duel bench loop --max-lag), which
 * bounds how stale the policy behind the duels is: a busy machine takes longer, not learns less. */
#define LOOP_MAX_LAG "40"
#define LOOP_VOTES (LOOP_SANITIZED ? 120 : 1200)
#define LOOP_HELD_OUT (LOOP_SANITIZED ? 24 : 200)

static char g_dir[512];

/* "What does X mean?" -> "Define X." (NULL when the question has another form). */
static char *define_question(const char *what_does) {
    static const char head[] = "What does ", tail[] = " mean?";
    const size_t n = strlen(what_does), h = sizeof head - 1, t = sizeof tail - 1;
    if (n <= h + t || strncmp(what_does, head, h) != 0 || strcmp(what_does + n - t, tail) != 0) return NULL;
    char *q = malloc(n);
    assert_non_null(q);
    snprintf(q, n, "Define %.*s.", (int)(n - h - t), what_does + h);
    return q;
}

static void write_qa(FILE *out, const char *prompt, const char *reference) {
    json_t *q = json_pack("{s:s, s:s}", "prompt", prompt, "reference", reference);
    assert_non_null(q);
    char *text = json_dumps(q, JSON_COMPACT);
    fprintf(out, "%s\n", text);
    free(text);
    json_decref(q);
}

/* Writes the prompt files. What the users ask: "Define X." for the training headwords, with the
 * gloss as the oracle's reference. The evaluation: "Define Y." for the held-out headwords that
 * are in the pretraining text (held_out), and their "What does Y mean?" (control). */
static void write_prompts(const char *asks, const char *held_out, const char *control) {
    const char *src = test_env("DUEL_SOURCE_DIR", ".");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/models/wordnet_data.py' '%s/wordnet' >/dev/null", src, g_dir);
    if (system(cmd) != 0) fail_msg("%s failed", cmd);
    char path[1024];
    snprintf(path, sizeof path, "%s/wordnet/sft_train.jsonl", g_dir);
    FILE *in = fopen(path, "r"), *out = fopen(asks, "w");
    assert_non_null(in);
    assert_non_null(out);
    char line[1 << 16];
    int n = 0;
    while (n < 4000 && fgets(line, sizeof line, in)) {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        char *q = define_question(json_string_value(json_object_get(o, "prompt")));
        if (q) {
            write_qa(out, q, json_string_value(json_object_get(o, "response")));
            free(q);
            n++;
        }
        json_decref(o);
    }
    fclose(in);
    fclose(out);
    assert_true(n >= 2000);
    snprintf(path, sizeof path, "%s/wordnet/test.jsonl", g_dir);
    in = fopen(path, "r");
    out = fopen(held_out, "w");
    FILE *out_control = fopen(control, "w");
    assert_non_null(in);
    assert_non_null(out);
    assert_non_null(out_control);
    n = 0;
    while (fgets(line, sizeof line, in)) {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        if (json_is_true(json_object_get(o, "in_pretraining"))) {
            const char *prompt = json_string_value(json_object_get(o, "prompt")),
                       *gloss = json_string_value(json_object_get(o, "gloss"));
            char *q = define_question(prompt);
            assert_non_null(q);
            write_qa(out, q, gloss);
            write_qa(out_control, prompt, gloss);
            free(q);
            n++;
        }
        json_decref(o);
    }
    fclose(in);
    fclose(out);
    fclose(out_control);
    assert_true(n >= LOOP_HELD_OUT);
}

/* Runs duel bench loop and returns its JSON line. */
static json_t *run_loop(const char *asks, const char *held_out, const char *control) {
    char votes[32], held[32], out_path[700], err_path[700], work[700];
    snprintf(votes, sizeof votes, "%d", LOOP_VOTES);
    snprintf(held, sizeof held, "%d", LOOP_HELD_OUT);
    snprintf(out_path, sizeof out_path, "%s/loop.out", g_dir);
    snprintf(err_path, sizeof err_path, "%s/loop.err", g_dir);
    snprintf(work, sizeof work, "%s/work", g_dir);
    char model[1024];
    snprintf(model, sizeof model, "%s/models/default", test_env("DUEL_SOURCE_DIR", "."));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(out_path, "w", stdout) || !freopen(err_path, "w", stderr)) _exit(126);
        setenv("TMPDIR", g_dir, 1);
        execl(DUEL_EXE, DUEL_EXE, "bench", "loop", "--model", model, "--prompts", asks, "--held-out", held_out,
              "--control", control, "--votes", votes, "--held-out-count", held, "--keep", work, "--json",
              /* fewer checkpoints: a shorter test, same learning */
              "--max-lag", LOOP_MAX_LAG, "--set", "trainer.checkpoint_every=8", "--set",
              "trainer.max_batch_size=8", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char cmd[1600];
    /* the loader's line per hot-swap (about 150 of them) is left out: CI shows a failing test's
     * output cut in the middle, and those lines pushed the figures and the failed bound out */
    snprintf(cmd, sizeof cmd, "grep -v '^duel serve: serving snapshot v' '%s' >&2; tail -n 8 '%s' >&2", err_path,
             out_path);
    (void)system(cmd); /* grep's status 1 (every line filtered) is not a failure */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail_msg("duel bench loop failed (status %d)", status);
    FILE *f = fopen(out_path, "r");
    assert_non_null(f);
    char line[1 << 14], last[1 << 14] = "";
    while (fgets(line, sizeof line, f)) memcpy(last, line, sizeof line);
    fclose(f);
    json_error_t je;
    json_t *o = json_loads(last, 0, &je);
    if (!json_is_object(o)) fail_msg("last line is not JSON: %s", je.text);
    return o;
}

static long long get_int(const json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) fail_msg("%s missing", key);
    return (long long)json_integer_value(v);
}

static double get_real(const json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v)) fail_msg("%s missing", key);
    return json_number_value(v);
}

/* A failed bound names itself and its figures (assert_true would print only the expression). */
static void check_at_least(const char *what, double value, double bound) {
    if (!(value >= bound)) fail_msg("%s %.4f is below its bound %.4f", what, value, bound);
}

static void test_votes_teach_the_policy(void **state) {
    (void)state;
    if (access("/usr/share/wordnet/data.noun", R_OK) != 0) {
        printf("SKIP: Debian's wordnet-base is not installed (ops/test installs it)\n");
        exit(77);
    }
    test_make_temp_dir("learning-loop", g_dir, sizeof g_dir);
    char asks[700], held_out[700], control[700];
    snprintf(asks, sizeof asks, "%s/asks.jsonl", g_dir);
    snprintf(held_out, sizeof held_out, "%s/held_out.jsonl", g_dir);
    snprintf(control, sizeof control, "%s/control.jsonl", g_dir);
    write_prompts(asks, held_out, control);
    json_t *o = run_loop(asks, held_out, control);

    const long long votes = get_int(o, "votes"), ab = get_int(o, "ab_votes"), ties = get_int(o, "ties");
    const long long batch = get_int(o, "batch_size");
    assert_int_equal(votes, LOOP_VOTES);
    assert_int_equal(ab + ties, votes);
    /* The base model ties about half its pairs on "Define X." (both answers score 0 against the
     * gloss), a quarter once it has learnt (27 % over 2,000-vote runs); the 120 votes of a
     * sanitizer build are mostly the base model's (a CI run: 59 a/b of 120). */
    assert_true(ab >= votes / 3);
    /* exactly once: every a/b vote applied or pending in a batch not yet full (fewer than
     * batch_size), nothing twice */
    const long long pending = get_int(o, "pending_pairs");
    assert_true(pending >= 0 && pending < batch);
    assert_int_equal(get_int(o, "prefs_applied") + pending, ab);
    /* hot-swap: the serving side followed the trainer, refused nothing */
    assert_true(get_int(o, "snapshots_loaded") >= 2);
    assert_int_equal(get_int(o, "snapshots_refused"), 0);
    assert_true(get_int(o, "final_version") >= 2);
    assert_true(get_int(o, "latency_count") > 0);
    assert_int_equal(get_int(o, "held_out"), LOOP_HELD_OUT);
    assert_int_equal(get_int(o, "control"), LOOP_HELD_OUT);
    const double rate = get_real(o, "win_rate"), before = get_real(o, "score_before"),
                 after = get_real(o, "score_after");
    const double sampled_rate = get_real(o, "sampled_win_rate"), sampled_before = get_real(o, "sampled_score_before"),
                 sampled_after = get_real(o, "sampled_score_after");
    const double control_rate = get_real(o, "control_win_rate"), control_before = get_real(o, "control_score_before"),
                 control_after = get_real(o, "control_score_after");
    fprintf(stderr,
            "held-out \"Define Y.\": greedy win rate %.3f, mean oracle score %.4f -> %.4f; sampled: win rate %.3f, "
            "%.4f -> %.4f\ncontrol \"What does Y mean?\": greedy win rate %.3f, mean score %.4f -> %.4f\n",
            rate, before, after, sampled_rate, sampled_before, sampled_after, control_rate, control_before,
            control_after);
    assert_true(get_int(o, "sampled_changed") > 0); /* the served policy is not the base model any more */
    /* the trainer's FLOPs per vote (from duel:trainer:status) on these short duels: about 1.1
     * GFLOP measured (docs/BENCHMARKS.md); the ceiling is the machine's sgemm rate over it */
    const double gflop = get_real(o, "gflop_per_vote");
    assert_true(gflop > 0.5 && gflop < 6.0);
    assert_true(get_real(o, "ceiling_votes_per_second") > 0);
    if (!LOOP_SANITIZED) {
        check_at_least("greedy win rate over the base model", rate, LOOP_MIN_WIN_RATE);
        check_at_least("gain of the greedy mean oracle score", after - before, LOOP_MIN_GAIN);
        check_at_least("sampled win rate over the base model", sampled_rate, LOOP_MIN_SAMPLED_WIN_RATE);
        check_at_least("change of the control's mean score", control_after - control_before, -LOOP_MAX_CONTROL_LOSS);
    }
    json_decref(o);
    char cmd[700]; /* the snapshots take ~20 MB each; the folder is kept only when the test fails */
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_votes_teach_the_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
