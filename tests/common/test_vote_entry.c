/* test_vote_entry.c: the vote codec (common/vote_entry.h): a round trip through the encoder in
 * the wire's field order, every class of bad entry the decoder refuses (missing fields, wrong
 * sizes, wrong model id, bad values) with its reason, the encoder refusing what the decoder
 * would, and the framing outside Redis (pack / unpack) with damaged and truncated records. */
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
    /* The field names in the wire's order (DESIGN.md section 8; the gateway's since it
     * encodes with this codec). */
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

/* A pilaf duel carries no features: d_feat 0 and no heads encode and decode under a trainer's
 * limits (whose ERM width and head count do not apply to it); heads without features do not. */
static void test_unscored_duel(void **state) {
    (void)state;
    fixture f;
    make(&f);
    vote_entry_encoded_free(&f.enc);
    vote_entry e = f.entry;
    strcpy(e.strategy, "pilaf");
    e.d_feat = 0;
    e.num_heads = 0;
    e.features = NULL;
    e.erm_rewards = NULL;
    vote_entry_encoded enc;
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, NULL), 0);
    vote_entry out;
    assert_int_equal(vote_entry_decode(enc.fields, enc.n_fields, &f.limits, &out, NULL), 0);
    assert_true(out.d_feat == 0 && out.num_heads == 0);
    assert_string_equal(out.strategy, "pilaf");
    assert_true(out.chosen_idx == 2 && out.rejected_idx == 0);
    vote_entry_free(&out);
    vote_entry_encoded_free(&enc);
    e.num_heads = E; /* rewards of no features */
    e.erm_rewards = f.rewards;
    duel_error err = {0};
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "num_heads 2 without features (d_feat 0)"));
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

/* The optional conversation id: written when set, decoded back, absent decodes to "". */
static void test_conversation(void **state) {
    (void)state;
    fixture f;
    make(&f);
    assert_null(vote_entry_field_find(f.enc.fields, f.enc.n_fields, "conversation"));
    vote_entry out;
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    assert_string_equal(out.conversation, "");
    vote_entry_free(&out);
    vote_entry_encoded_free(&f.enc);
    strcpy(f.entry.conversation, "00112233445566778899aabbccddeeff");
    assert_int_equal(vote_entry_encode(&f.entry, NULL, &f.enc, NULL), 0);
    const vote_entry_field *c = vote_entry_field_find(f.enc.fields, f.enc.n_fields, "conversation");
    assert_non_null(c);
    assert_int_equal(c - f.enc.fields, 24); /* after features_dtype */
    assert_int_equal(vote_entry_decode(f.enc.fields, f.enc.n_fields, &f.limits, &out, NULL), 0);
    assert_string_equal(out.conversation, f.entry.conversation);
    vote_entry_free(&out);
    field(&f, "conversation")->value = "a\tb";
    field(&f, "conversation")->value_len = 3;
    expect_error(&f, "conversation: byte 1 is not printable");
    vote_entry_encoded_free(&f.enc);
}

/* The encoder refuses what the decoder would refuse, with the decoder's reason, and leaves
 * nothing allocated: a producer cannot write a vote that no trainer can read. */
static void test_encoder_is_strict(void **state) {
    (void)state;
    fixture f;
    make(&f);
    vote_entry_encoded_free(&f.enc);
    vote_entry e = f.entry;
    vote_entry_encoded enc;
    duel_error err = {0};
    e.rejected_idx = e.chosen_idx;
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "chosen_idx and rejected_idx are both 2"));
    assert_int_equal(enc.n_fields, 0);
    e = f.entry;
    e.n_prompt_tokens = 0;
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "empty prompt"));
    e = f.entry;
    f.features[3] = INFINITY;
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "features: value 3 is not finite"));
    f.features[3] = 0.5f;
    e.features = NULL; /* sizes that promise an array that is not there */
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "features: 12 values but no array"));
    e = f.entry;
    e.num_candidates = 100000; /* would read far past cand_offsets */
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "out of range"));
    e = f.entry;
    e.vote_id[0] = '\0';
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "vote_id: length 0"));
    e = f.entry;
    e.cand_offsets[3] = 6; /* offsets that stop short of the candidates' tokens */
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "cand_offsets: must run from 0 to 7"));
    e.cand_offsets[3] = 7;
    char *big = malloc(VOTE_ENTRY_MAX_TEXT + 2);
    memset(big, 'x', VOTE_ENTRY_MAX_TEXT + 1);
    big[VOTE_ENTRY_MAX_TEXT + 1] = '\0';
    vote_entry_texts t = {NULL, big, NULL, NULL};
    assert_int_equal(vote_entry_encode(&e, &t, &enc, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "prompt_text"));
    free(big);
    assert_int_equal(vote_entry_encode(&e, NULL, &enc, &err), 0);
    vote_entry_encoded_free(&enc);
}

/* The framing outside Redis: a real entry packs, unpacks to the same fields pointing into the
 * buffer, and decodes; every truncation, a huge count, a bad name and more fields than the codec
 * holds are errors, never crashes. Two entries back to back unpack one after the other (the
 * trainer's entries.bin). */
static void test_pack_unpack(void **state) {
    (void)state;
    fixture f;
    make(&f);
    char *buf;
    size_t len;
    assert_int_equal(vote_entry_pack(f.enc.fields, f.enc.n_fields, &buf, &len, NULL), 0);
    vote_entry_field back[VOTE_ENTRY_MAX_FIELDS];
    int n = 0;
    size_t at = 0;
    assert_int_equal(vote_entry_unpack(buf, len, &at, back, &n, NULL), 0);
    assert_int_equal(at, len);
    assert_int_equal(n, f.enc.n_fields);
    for (int i = 0; i < n; i++) {
        assert_int_equal(back[i].name_len, f.enc.fields[i].name_len);
        assert_memory_equal(back[i].name, f.enc.fields[i].name, back[i].name_len);
        assert_int_equal(back[i].value_len, f.enc.fields[i].value_len);
        assert_memory_equal(back[i].value, f.enc.fields[i].value, back[i].value_len);
        assert_true(back[i].value >= buf && back[i].value + back[i].value_len <= buf + len);
    }
    const vote_entry_field *ts = vote_entry_field_find(back, n, "ts_ms");
    assert_non_null(ts);
    assert_memory_equal(ts->value, "1700000000123", 13);
    assert_null(vote_entry_field_find(back, n, "missing"));
    vote_entry out;
    assert_int_equal(vote_entry_decode(back, n, &f.limits, &out, NULL), 0);
    assert_memory_equal(out.features, f.features, sizeof f.features);
    vote_entry_free(&out);
    /* Every truncation is an error. */
    for (size_t cut = 0; cut < len; cut++) {
        at = 0;
        duel_error err;
        assert_int_equal(vote_entry_unpack(buf, cut, &at, back, &n, &err), DUEL_EFORMAT);
        assert_int_equal(at, 0);
    }
    /* Two entries back to back. */
    char *two = malloc(2 * len);
    memcpy(two, buf, len);
    memcpy(two + len, buf, len);
    at = 0;
    assert_int_equal(vote_entry_unpack(two, 2 * len, &at, back, &n, NULL), 0);
    assert_int_equal(at, len);
    assert_int_equal(vote_entry_unpack(two, 2 * len, &at, back, &n, NULL), 0);
    assert_int_equal(at, 2 * len);
    free(two);
    /* A huge field count; an empty name; a name with a NUL byte. */
    char *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[0] = (char)0xff;
    at = 0;
    assert_int_equal(vote_entry_unpack(bad, len, &at, back, &n, NULL), DUEL_EFORMAT);
    memcpy(bad, buf, len);
    memset(bad + 4, 0, 4); /* the first name's length */
    at = 0;
    assert_int_equal(vote_entry_unpack(bad, len, &at, back, &n, NULL), DUEL_EFORMAT);
    memcpy(bad, buf, len);
    bad[9] = '\0'; /* inside "vote_id" */
    at = 0;
    duel_error err;
    assert_int_equal(vote_entry_unpack(bad, len, &at, back, &n, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "bad name"));
    free(bad);
    free(buf);
    /* More fields than the codec holds cannot be packed. */
    vote_entry_field many[VOTE_ENTRY_MAX_FIELDS + 1];
    for (int i = 0; i <= VOTE_ENTRY_MAX_FIELDS; i++) many[i] = (vote_entry_field){"x", 1, "", 0};
    assert_int_equal(vote_entry_pack(many, VOTE_ENTRY_MAX_FIELDS + 1, &buf, &len, NULL), DUEL_ELIMIT);
    assert_null(buf);
    vote_entry_encoded_free(&f.enc);
}

static void test_choice_names(void **state) {
    (void)state;
    static const char *names[] = {"a", "b", "tie", "both_bad"};
    for (int c = 0; c < 4; c++) {
        vote_choice got;
        assert_int_equal(vote_choice_parse(names[c], strlen(names[c]), &got), 0);
        assert_int_equal(got, c);
        assert_string_equal(vote_choice_name(got), names[c]);
    }
    vote_choice got;
    assert_int_equal(vote_choice_parse("ti", 2, &got), DUEL_EFORMAT);
    assert_int_equal(vote_choice_parse("tie ", 4, &got), DUEL_EFORMAT);
    assert_int_equal(vote_choice_parse("", 0, &got), DUEL_EFORMAT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_f16_features),
        cmocka_unit_test(test_unscored_duel),
        cmocka_unit_test(test_ref_logprobs),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_conversation),
        cmocka_unit_test(test_encoder_is_strict),
        cmocka_unit_test(test_pack_unpack),
        cmocka_unit_test(test_choice_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
