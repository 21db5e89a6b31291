/* test_vote_entry.c: decoding and validation of duel:prefs entries (trainer/vote_entry.h):
 * a round trip through the reference encoder, the gateway's field layout, and every class of
 * bad entry (missing fields, wrong sizes, wrong model id, bad values) with its reason. */
#include "test_helpers.h"

#include "vote_entry.h"

#define M 3
#define D 4
#define E 2

typedef struct fixture {
    int32_t prompt[5], cand[7], offsets[M + 1];
    float features[M * D], rewards[M * E];
    vote_entry entry;
    vote_entry_encoded enc;
    vote_entry_limits limits;
} fixture;

static void make(fixture *f) {
    memset(f, 0, sizeof *f);
    for (int i = 0; i < 5; i++) f->prompt[i] = 10 + i;
    for (int i = 0; i < 7; i++) f->cand[i] = 100 + 3 * i;
    f->offsets[0] = 0;
    f->offsets[1] = 2;
    f->offsets[2] = 5;
    f->offsets[3] = 7;
    for (int i = 0; i < M * D; i++) f->features[i] = 0.25f * (float)i - 1.0f;
    for (int i = 0; i < M * E; i++) f->rewards[i] = (float)i * -0.5f;
    vote_entry *e = &f->entry;
    strcpy(e->vote_id, "0123456789abcdef0123456789abcdef");
    strcpy(e->duel_id, "fedcba9876543210fedcba9876543210");
    strcpy(e->model_id, "tiny");
    strcpy(e->strategy, "ee_ts");
    e->ts_ms = 1700000000123;
    e->arm = 2;
    e->policy_version = 7;
    e->choice = VOTE_CHOICE_B;
    e->side_swap = 1;
    e->num_candidates = M;
    e->d_feat = D;
    e->num_heads = E;
    e->chosen_idx = 2;
    e->rejected_idx = 0;
    e->n_prompt_tokens = 5;
    e->n_cand_tokens = 7;
    e->prompt_tokens = f->prompt;
    e->cand_tokens = f->cand;
    e->cand_offsets = f->offsets;
    e->features = f->features;
    e->erm_rewards = f->rewards;
    vote_entry_texts t = {"{\"temperature\":1}", "prompt", "chosen", "rejected"};
    assert_int_equal(vote_entry_encode(e, &t, &f->enc, NULL), 0);
    f->limits = (vote_entry_limits){"tiny", D, E, 512, 64};
}

static vote_entry_field *field(fixture *f, const char *name) {
    for (int i = 0; i < f->enc.n_fields; i++)
        if (strcmp(f->enc.fields[i].name, name) == 0) return &f->enc.fields[i];
    fail_msg("no field %s", name);
    return NULL;
}

/* Decodes and expects failure whose message contains want. */
static void expect_error(fixture *f, const char *want) {
    vote_entry out;
    duel_error err = {0};
    int rc = vote_entry_decode(f->enc.fields, f->enc.n_fields, &f->limits, &out, &err);
    vote_entry_free(&out);
    if (rc != DUEL_EFORMAT || !strstr(err.message, want))
        fail_msg("rc %d, message '%s', wanted '%s'", rc, err.message, want);
}

static void test_round_trip(void **state) {
    (void)state;
    fixture f;
    make(&f);
    /* The gateway's field names, in its order (gateway/server.c build_vote). */
    static const char *gateway_order[] = {
        "vote_id", "duel_id", "ts_ms", "arm", "policy_version", "strategy", "choice", "side_swap",
        "prompt_tokens", "cand_tokens", "cand_offsets", "chosen_idx", "rejected_idx", "features",
        "erm_rewards", "gen_params", "prompt_text", "chosen_text", "rejected_text", "model_id",
        "num_candidates", "d_feat", "num_heads", "features_dtype"};
    assert_int_equal(f.enc.n_fields, 24);
    for (int i = 0; i < 24; i++) assert_string_equal(f.enc.fields[i].name, gateway_order[i]);
    /* Little-endian on the wire: prompt token 10 is 0a 00 00 00. */
    assert_memory_equal(field(&f, "prompt_tokens")->value, "\x0a\x00\x00\x00\x0b", 5);
    vote_entry out;
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    assert_string_equal(out.vote_id, f.entry.vote_id);
    assert_string_equal(out.duel_id, f.entry.duel_id);
    assert_string_equal(out.model_id, "tiny");
    assert_string_equal(out.strategy, "ee_ts");
    assert_true(out.ts_ms == 1700000000123 && out.arm == 2 && out.policy_version == 7);
    assert_int_equal(out.choice, VOTE_CHOICE_B);
    assert_true(vote_choice_is_pair(out.choice));
    assert_int_equal(out.side_swap, 1);
    assert_true(out.chosen_idx == 2 && out.rejected_idx == 0);
    assert_memory_equal(out.prompt_tokens, f.prompt, sizeof f.prompt);
    assert_memory_equal(out.cand_tokens, f.cand, sizeof f.cand);
    assert_memory_equal(out.features, f.features, sizeof f.features);
    assert_memory_equal(out.erm_rewards, f.rewards, sizeof f.rewards);
    int len;
    const int32_t *c = vote_entry_candidate(&out, 2, &len);
    assert_int_equal(len, 2);
    assert_int_equal(c[0], 115);
    vote_entry_free(&out);
    /* Unknown fields are ignored; a tie decodes but is not a trainable pair. */
    f.enc.fields[f.enc.n_fields++] = (vote_entry_field){"conversation", 12, "abc", 3};
    f.enc.fields[f.enc.n_fields++] = (vote_entry_field){"future_field", 12, "x", 1};
    field(&f, "choice")->value = "tie";
    field(&f, "choice")->value_len = 3;
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    assert_int_equal(out.choice, VOTE_CHOICE_TIE);
    assert_false(vote_choice_is_pair(out.choice));
    vote_entry_free(&out);
    f.enc.n_fields -= 2;
    vote_entry_encoded_free(&f.enc);
}

static void test_f16_features(void **state) {
    (void)state;
    fixture f;
    make(&f);
    unsigned char half[M * D * 2];
    for (int i = 0; i < M * D; i++) { /* 1.5 in f16 is 0x3e00 */
        half[2 * i] = 0x00;
        half[2 * i + 1] = 0x3e;
    }
    field(&f, "features")->value = (const char *)half;
    field(&f, "features")->value_len = sizeof half;
    field(&f, "features_dtype")->value = "f16";
    vote_entry out;
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    for (int i = 0; i < M * D; i++) assert_true(out.features[i] == 1.5f);
    vote_entry_free(&out);
    field(&f, "features_dtype")->value = "f64";
    expect_error(&f, "features_dtype");
    vote_entry_encoded_free(&f.enc);
}

/* The optional reference log-probabilities: absent decodes to NULL; present round-trips, and a
 * wrong size, a non-finite or a positive value (not a log-probability) is refused. */
static void test_ref_logprobs(void **state) {
    (void)state;
    fixture f;
    make(&f);
    vote_entry out;
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    assert_null(out.ref_logprobs);
    vote_entry_free(&out);
    vote_entry_encoded_free(&f.enc);
    float ref[M] = {-12.5f, -3.25f, -40.0f};
    f.entry.ref_logprobs = ref;
    assert_int_equal(vote_entry_encode(&f.entry, NULL, &f.enc, NULL), 0);
    assert_int_equal(field(&f, "ref_logprobs")->value_len, M * 4);
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    assert_non_null(out.ref_logprobs);
    assert_memory_equal(out.ref_logprobs, ref, sizeof ref);
    vote_entry_free(&out);
    vote_entry_field *fr = field(&f, "ref_logprobs");
    vote_entry_field saved = *fr;
    fr->value_len = (M - 1) * 4;
    expect_error(&f, "ref_logprobs: 8 bytes, expected 12");
    *fr = saved;
    float bad[M] = {-1.0f, NAN, -2.0f};
    fr->value = (const char *)bad;
    expect_error(&f, "ref_logprobs: value 1 is not finite");
    bad[1] = -1.0f;
    bad[2] = 0.5f;
    expect_error(&f, "ref_logprobs: value 2 is 0.5, not a log-probability");
    bad[2] = 0.0f; /* a certain candidate */
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    vote_entry_free(&out);
    vote_entry_encoded_free(&f.enc);
}

static void test_missing_fields(void **state) {
    (void)state;
    fixture f;
    make(&f);
    for (int drop = 0; drop < 23; drop++) { /* every field but the optional features_dtype */
        vote_entry_field saved = f.enc.fields[drop];
        f.enc.fields[drop] = f.enc.fields[f.enc.n_fields - 1];
        f.enc.n_fields--;
        char want[64];
        snprintf(want, sizeof want, "missing field %s", saved.name);
        expect_error(&f, want);
        f.enc.n_fields++;
        f.enc.fields[drop] = saved;
    }
    /* A repeated field. */
    f.enc.fields[f.enc.n_fields++] = f.enc.fields[0];
    expect_error(&f, "vote_id appears twice");
    f.enc.n_fields--;
    vote_entry_encoded_free(&f.enc);
}

static void test_bad_values(void **state) {
    (void)state;
    fixture f;
    make(&f);
    struct {
        const char *name, *value;
        size_t len;
        const char *want;
    } cases[] = {
        {"model_id", "other", 5, "model_id 'other' is not the trainer's 'tiny'"},
        {"d_feat", "5", 1, "d_feat 5 is not the ERM's 4"},
        {"num_heads", "3", 1, "num_heads 3 is not the ERM's 2"},
        {"num_candidates", "4", 1, "cand_offsets: 4 int32 values, expected 5"},
        {"num_candidates", "1", 1, "num_candidates: 1 outside 2..256"},
        {"choice", "c", 1, "choice: not a, b, tie or both_bad"},
        {"chosen_idx", "0", 1, "chosen_idx and rejected_idx are both 0"},
        {"chosen_idx", "3", 1, "chosen_idx: 3 outside 0..2"},
        {"rejected_idx", "-1", 2, "rejected_idx: -1 outside 0..2"},
        {"side_swap", "2", 1, "side_swap: 2 outside 0..1"},
        {"ts_ms", "12x", 3, "ts_ms: not a decimal integer"},
        {"ts_ms", "", 0, "ts_ms: not a decimal integer"},
        {"ts_ms", "-", 1, "ts_ms: not a decimal integer"},
        {"arm", "99999999999999999999", 20, "arm: 99999999999999999999 outside"},
        {"vote_id", "", 0, "vote_id: length 0"},
        {"vote_id", "a\nb", 3, "vote_id: byte 1 is not printable"},
        {"features", "\0\0\0\0", 4, "features: 4 bytes, expected 48"},
        {"erm_rewards", "\0\0\0\0\0\0\0\0", 8, "erm_rewards: 8 bytes, expected 24"},
        {"prompt_tokens", "\1\0\0", 3, "prompt_tokens: 3 bytes is not a whole number"},
        {"prompt_tokens", "", 0, "prompt_tokens: empty prompt"},
        {"prompt_tokens", "\0\2\0\0", 4, "prompt_tokens: token 0 is 512, outside 0..511"},
        {"cand_tokens", "\1\0\0\0", 4, "cand_offsets: must run from 0 to 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        vote_entry_field *fl = field(&f, cases[i].name);
        vote_entry_field saved = *fl;
        fl->value = cases[i].value;
        fl->value_len = cases[i].len;
        expect_error(&f, cases[i].want);
        *fl = saved;
    }
    /* Decreasing offsets, a NaN feature, and a sequence over the model's positions. */
    int32_t bad_offsets[M + 1] = {0, 5, 2, 7};
    vote_entry_field *fo = field(&f, "cand_offsets");
    vote_entry_field saved = *fo;
    fo->value = (const char *)bad_offsets;
    expect_error(&f, "cand_offsets: decreases at candidate 1");
    *fo = saved;
    float nan_features[M * D];
    memcpy(nan_features, f.features, sizeof nan_features);
    nan_features[5] = NAN;
    vote_entry_field *ff = field(&f, "features");
    saved = *ff;
    ff->value = (const char *)nan_features;
    expect_error(&f, "features: value 5 is not finite");
    *ff = saved;
    f.limits.max_sequence = 6;
    expect_error(&f, "exceed the model's 6 positions");
    f.limits.max_sequence = 7;
    vote_entry out;
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    vote_entry_free(&out);
    /* Any model id, feature width and head count when the limits say nothing. */
    vote_entry_limits open = {0};
    field(&f, "model_id")->value = "other";
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &open, &out, NULL), 0);
    vote_entry_free(&out);
    /* Too many fields. */
    duel_error err;
    assert_int_equal(vote_entry_decode(f.enc.fields, VOTE_ENTRY_MAX_FIELDS + 1, &open, &out, &err),
                     DUEL_EFORMAT);
    vote_entry_free(&out);
    vote_entry_encoded_free(&f.enc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_f16_features),
        cmocka_unit_test(test_ref_logprobs),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_bad_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
