/* oracle.h: preference oracles for simulation and evaluation (DESIGN.md section 10). An oracle
 * stands in for a user: it scores an answer, r*(x, y), and turns two scores into a preference,
 * either deterministically (the higher score wins) or as Bernoulli(sigmoid((r*(a)-r*(b))/tau)).
 * Kinds:
 *   lexical: token-F1 overlap with a reference answer minus length and repetition penalties
 *            (oracle/lexical.c), for the embedded WordNet model whose glosses are references;
 *   rm:      a *ForSequenceClassification checkpoint run by the CPU forward pass (oracle/rm.c);
 *   judge:   an OpenAI-compatible chat endpoint asked which of two answers is better
 *            (oracle/judge.c). A pairwise judge gives a preference but no r*, so regret against
 *            the oracle cannot be measured with it.
 * All functions follow the project's convention (int status, duel_error); none print. */
#ifndef DUEL_ORACLE_H
#define DUEL_ORACLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "error.h"
#include "rng.h"

typedef enum oracle_kind { ORACLE_LEXICAL, ORACLE_RM, ORACLE_JUDGE } oracle_kind;
/* "lexical", "rm", "judge"; anything else is DUEL_EINVAL. */
int oracle_kind_parse(const char *name, oracle_kind *out, duel_error *err);
const char *oracle_kind_name(oracle_kind kind);

/* ---- preferences: the noise model of a simulated user (oracle/preference.c) --------------- */

typedef enum oracle_choice {
    ORACLE_PREFER_A, /* the answer shown as a */
    ORACLE_PREFER_B,
    ORACLE_TIE,      /* scores within the tie margin (or a judge disagreeing with itself) */
    ORACLE_BOTH_BAD, /* both scores below the both-bad threshold */
} oracle_choice;

/* "a", "b", "tie", "both_bad" as in the vote protocol. */
const char *oracle_choice_name(oracle_choice choice);

/* How a user turns two oracle scores r*(a), r*(b) into a vote, in this order:
 *   1. both_bad: when both_bad is set and both scores are below both_bad_below: both_bad;
 *   2. tie:      when |r*(a) - r*(b)| <= tie_margin: tie (deterministic with the default margin
 *                0: only equal scores tie; stochastic with margin 0: never, equal scores are a
 *                coin flip as Bradley-Terry says);
 *   3. label:    deterministic: the higher score wins; stochastic (Bradley-Terry): a wins with
 *                probability sigmoid((r*(a) - r*(b)) / temperature), one rng draw;
 *   4. flip:     with probability flip_probability the a/b label is swapped (one rng draw, taken
 *                only when flip_probability > 0): a careless click.
 * A stochastic label or a flip needs an rng. */
typedef struct oracle_preference_config {
    bool stochastic;         /* default false */
    double temperature;      /* tau > 0 of the Bernoulli label; default 1 */
    double tie_margin;       /* >= 0, in score units; default 0 */
    double flip_probability; /* in [0, 1]; default 0 */
    bool both_bad;           /* default false */
    double both_bad_below;   /* threshold of step 1 (finite); default 0 */
} oracle_preference_config;

void oracle_preference_config_default(oracle_preference_config *config);
/* Temperature finite and > 0, tie_margin finite and >= 0, flip_probability in [0, 1],
 * both_bad_below finite; DUEL_EINVAL naming the field. */
int oracle_preference_config_validate(const oracle_preference_config *config, duel_error *err);

/* sigmoid(delta / tau), evaluated without overflow for any finite delta. */
double oracle_preference_probability(double delta, double temperature);

/* Labels a pair from its oracle scores by the rules above. Non-finite rewards, an invalid
 * config, or a NULL rng where a draw is due are DUEL_EINVAL and give no choice. */
int oracle_prefer(const oracle_preference_config *config, double reward_a, double reward_b,
                  duel_rng *rng, oracle_choice *out, duel_error *err);

/* The probability that this user prefers a to b, a tie counting half and both_bad ignored
 * (what a win rate averages): within the tie margin 1/2; else deterministic 1 or 0, stochastic
 * sigmoid(delta / tau); then the flip: p' = (1 - f) p + f (1 - p). NaN for non-finite input. */
double oracle_preference_win_probability(const oracle_preference_config *config, double reward_a,
                                         double reward_b);

/* ---- lexical oracle (oracle/lexical.c) ----------------------------------------------------- */

/* Text is split into words: maximal runs of ASCII letters and digits and of non-ASCII bytes
 * (so UTF-8 words stay whole), lowercased (ASCII); apostrophes inside a word are dropped
 * ("don't" -> "dont"); every other ASCII character (spaces, punctuation) separates words.
 *
 *   score = overlap_weight    * F1(answer words, reference words)
 *         + char_ngram_weight * F1(answer character trigrams, reference character trigrams)
 *         - length_weight     * max(0, |answer| / |reference| - length_target_ratio)
 *         - repetition_weight * (rep2 + rep3) / 2
 *
 * F1 is the bag-of-words F1 (multiset overlap, as SQuAD scores): common = sum over words of
 * min(count in answer, count in reference), precision = common/|answer|, recall =
 * common/|reference|, F1 = 2PR/(P+R), 0 when nothing is shared. rep_n is the fraction of the
 * answer's word n-grams that repeat an earlier n-gram ((count - distinct) / count; 0 when the
 * answer has fewer than n words). An empty answer has F1 0 and no penalties: it scores 0.
 * The character trigrams are those of the normalised text " w1 w2 ... wn " (the lowercase
 * words, one space between and around them), compared as multisets like the words. Word F1 is
 * coarse: two different answers that share no word with the reference (or the same number of
 * them) score the same, and a deterministic user calls that a tie. The trigram term is the graded
 * mode (char_ngram_weight > 0): it tells almost any two different answers apart by how close
 * their spelling comes to the reference, so ties are rare unless the answers are equal, as with
 * the paper's reward-model oracle. The reference must have at least one word. Scores lie in
 * [-inf, overlap_weight + char_ngram_weight]. */
typedef struct oracle_lexical_config {
    double overlap_weight;      /* default 1.0 */
    double length_weight;       /* default 0.25, per unit of length ratio beyond the target */
    double length_target_ratio; /* default 2.0: answers up to twice the reference are free */
    double repetition_weight;   /* default 1.0 */
    double char_ngram_weight;   /* default 0 (off); the graded mode: e.g. 0.5 */
} oracle_lexical_config;

#define ORACLE_LEXICAL_MAX_BYTES (1u << 20) /* reference or answer text, bytes */

void oracle_lexical_config_default(oracle_lexical_config *config);
/* Every weight finite and >= 0, target ratio finite and > 0; DUEL_EINVAL naming the field. */
int oracle_lexical_config_validate(const oracle_lexical_config *config, duel_error *err);

typedef struct oracle_lexical_detail {
    size_t answer_words, reference_words, common_words;
    double precision, recall, f1;
    double length_ratio, length_penalty; /* penalty before weighting */
    double repetition_bigram, repetition_trigram, repetition; /* repetition = mean of the two */
    double char_f1; /* the trigram F1 (computed only when char_ngram_weight > 0, else 0) */
    double score;
} oracle_lexical_detail;

/* Scores answer[0..answer_len) against reference[0..reference_len). detail may be NULL. Inputs
 * longer than ORACLE_LEXICAL_MAX_BYTES are DUEL_ELIMIT; a reference without words DUEL_EINVAL. */
int oracle_lexical_score(const oracle_lexical_config *config, const char *reference,
                         size_t reference_len, const char *answer, size_t answer_len,
                         double *score, oracle_lexical_detail *detail, duel_error *err);

/* ---- reward-model oracle (oracle/rm.c) ------------------------------------------------------ */

typedef struct oracle_rm oracle_rm;

/* Loads a LlamaForSequenceClassification / GPTNeoXForSequenceClassification checkpoint from dir
 * (config.json + safetensors; a causal LM is DUEL_EUNSUPPORTED). When dir has a tokenizer.json
 * it is loaded too, with the chat template of tokenizer_config.json (or "plain"), for
 * oracle_rm_score_text. One thread at a time: the model keeps scratch buffers. */
int oracle_rm_load(const char *dir, oracle_rm **out, duel_error *err);
void oracle_rm_free(oracle_rm *rm);

/* r* = the label-0 score at the last token of tokens[0..n) (as transformers' sequence
 * classifiers read the last non-padding token; there is no padding here). */
int oracle_rm_score_tokens(oracle_rm *rm, const int32_t *tokens, int n, double *score,
                           duel_error *err);

/* Renders [user: prompt, assistant: answer] with the model's chat template, encodes it with its
 * tokenizer and scores it. DUEL_EINVAL when the checkpoint has no tokenizer.json. */
int oracle_rm_score_text(oracle_rm *rm, const char *prompt, const char *answer, double *score,
                         duel_error *err);

/* ---- LLM judge over HTTP (oracle/judge.c) ------------------------------------------------- */

#define ORACLE_JUDGE_MAX_URL 512
#define ORACLE_JUDGE_MAX_RESPONSE_BYTES (4u << 20) /* one HTTP response, headers included */
#define ORACLE_JUDGE_MAX_TEXT_BYTES (256u << 10)   /* prompt or answer sent to the judge */

typedef struct oracle_judge_config {
    /* Plain http:// only: "http://host[:port]/path", e.g.
     * "http://127.0.0.1:8000/v1/chat/completions". https needs a proxy in front. */
    char url[ORACLE_JUDGE_MAX_URL];
    char model[128];        /* the "model" field of the request */
    char api_key[256];      /* "Authorization: Bearer <key>" when not empty (from DUEL_* env) */
    int connect_timeout_ms; /* default 5000: TCP connect, per attempt */
    int read_timeout_ms;    /* default 60000: sending the request and reading the whole answer */
    int max_attempts;       /* default 3: 1 + retries */
    int backoff_ms;         /* default 500: wait before the first retry, doubled each time */
    int backoff_max_ms;     /* default 8000: cap on one wait */
    int max_tokens;         /* default 8: the judge answers with one letter */
    double temperature;     /* default 0 */
    bool both_orders;       /* default false: also ask with A and B swapped; disagreement = tie */
} oracle_judge_config;

void oracle_judge_config_default(oracle_judge_config *config);
/* Checks the URL (scheme, host, port, path), the model name and the numbers. */
int oracle_judge_config_validate(const oracle_judge_config *config, duel_error *err);

typedef struct oracle_judge_result {
    oracle_choice choice;
    int attempts;    /* HTTP requests made, retries included, over both orders */
    int http_status; /* status of the last response (0 when none arrived) */
} oracle_judge_result;

/* Asks the judge which of answer_a and answer_b better answers prompt (all UTF-8 text).
 * Retried with backoff: connection failures, timeouts, connections closed early, HTTP 408, 429
 * and 5xx, malformed HTTP, JSON that is not a chat completion, and answers that are not A or B.
 * Not retried: other 4xx (a wrong URL, model or key will not heal). On failure every error is
 * returned with a message naming the endpoint, the attempt count and the last problem, and
 * *out's choice is not set: no vote. */
int oracle_judge_compare(const oracle_judge_config *config, const char *prompt,
                         const char *answer_a, const char *answer_b, oracle_judge_result *out,
                         duel_error *err);

/* The pieces of oracle_judge_compare, exposed for tests and fuzzing. */
/* The request body (a JSON object; caller frees with free()). */
int oracle_judge_build_request(const oracle_judge_config *config, const char *prompt,
                               const char *answer_a, const char *answer_b, char **body,
                               duel_error *err);
/* Parses a chat-completion response body strictly (duplicate keys rejected; choices[0].message
 * .content must be a string) and extracts the verdict: after trimming whitespace, quotes, '*',
 * '.', ')' and an optional "Answer:" / "Answer " prefix, the content must be exactly "A" or "B"
 * (either case). Anything else is DUEL_EFORMAT quoting (the start of) what the judge said. */
int oracle_judge_parse_response(const char *body, size_t len, oracle_choice *out,
                                duel_error *err);

/* ---- configuration from JSON (oracle/config.c) ---------------------------------------------- */

/* Each reads one JSON object (e.g. config/default.json's "oracle.lexical") on top of *config,
 * which the caller has set to defaults: present keys override, absent keys keep their value,
 * unknown keys and wrong types are DUEL_EFORMAT naming source and key, and the result is
 * validated. Keys are the struct's field names:
 *   lexical:    overlap_weight, length_weight, length_target_ratio, repetition_weight,
 *               char_ngram_weight
 *   preference: stochastic, temperature, tie_margin, flip_probability, both_bad, both_bad_below
 *   judge:      url, model, connect_timeout_ms, read_timeout_ms, max_attempts, backoff_ms,
 *               backoff_max_ms, max_tokens, temperature, both_orders
 * The judge's api_key is a secret and is not read from JSON: set it from the environment
 * (DUEL_JUDGE_API_KEY by convention). */
int oracle_lexical_config_from_json(const json_t *obj, const char *source,
                                    oracle_lexical_config *config, duel_error *err);
int oracle_preference_config_from_json(const json_t *obj, const char *source,
                                       oracle_preference_config *config, duel_error *err);
int oracle_judge_config_from_json(const json_t *obj, const char *source,
                                  oracle_judge_config *config, duel_error *err);

/* ---- prompt sets (oracle/prompt_set.c) ---------------------------------------------------- */

/* What simulated users ask, JSONL, one object per line, with the oracle's reference data
 * travelling with each prompt (so any dataset of this shape works, not only WordNet's):
 *   {"prompt": "Define tea.", "reference": "a beverage made by steeping tea leaves in water"}
 *   {"turns": [{"prompt": "...", "reference": "..."}, {"prompt": "..."}]}   (one session)
 * The reference is the first of "reference", "gloss", "response" present (the WordNet files'
 * names); the lexical oracle needs one on every turn, rm and judge none. Other keys are ignored
 * (datasets carry metadata); blank lines are skipped. Errors name FILE:LINE: a line that is not
 * a JSON object, no "prompt" (or "turns"), both, a prompt or reference that is not a non-empty
 * string, more than ORACLE_PROMPT_MAX_TURNS turns, a line over ORACLE_PROMPT_MAX_LINE bytes;
 * and a file without prompts. */
#define ORACLE_PROMPT_MAX_LINE (1 << 16) /* bytes of one JSONL line */
#define ORACLE_PROMPT_MAX_TURNS 32
#define ORACLE_PROMPT_MAX_ITEMS 1000000

typedef struct oracle_turn {
    char *prompt;    /* what the user asks (UTF-8) */
    char *reference; /* the oracle's reference answer, or NULL */
} oracle_turn;

typedef struct oracle_prompt {
    oracle_turn *turns; /* a session, asked in order in one conversation */
    int num_turns;      /* >= 1 */
    int line;           /* line in the file, for messages */
} oracle_prompt;

typedef struct oracle_prompt_set {
    oracle_prompt *items;
    int count;
    char *path;
} oracle_prompt_set;

/* Reads the first max_items prompts of path (max_items <= ORACLE_PROMPT_MAX_ITEMS). With
 * require_reference, a turn without a reference is an error naming FILE:LINE. */
int oracle_prompt_set_load(const char *path, int max_items, bool require_reference,
                           oracle_prompt_set *out, duel_error *err);
void oracle_prompt_set_free(oracle_prompt_set *set);
/* The order in which simulated users ask the set's prompts: a Fisher-Yates shuffle of 0..count-1
 * from seed (same seed, same order). *order is malloc'd. */
int oracle_prompt_order(const oracle_prompt_set *set, uint64_t seed, int **order, duel_error *err);

/* ---- simulated users (oracle/user.c) ------------------------------------------------------ */

/* The oracle section of the configuration (config/default.json "oracle"): which oracle judges,
 * and the noise model of the user who votes by it. */
typedef struct oracle_config {
    oracle_kind kind;                     /* default lexical */
    char rm_path[4096];                   /* rm: the sequence-classification checkpoint */
    oracle_lexical_config lexical;
    oracle_preference_config preference;  /* the noise model */
    oracle_judge_config judge;
} oracle_config;

void oracle_config_default(oracle_config *config);
/* Reads the whole section (keys kind, rm_path, lexical, preference, judge; strict like the
 * readers above) on top of *config. */
int oracle_config_from_json(const json_t *obj, const char *source, oracle_config *config,
                            duel_error *err);

/* An opened oracle: the rm's model is loaded once. One thread at a time (the rm keeps scratch
 * buffers; the judge's connections are per call). */
typedef struct oracle_user oracle_user;

int oracle_user_open(const oracle_config *config, oracle_user **out, duel_error *err);
void oracle_user_close(oracle_user *user);
const oracle_config *oracle_user_config(const oracle_user *user);

/* Whether the oracle gives r* (lexical, rm) or only preferences (judge). */
bool oracle_user_has_scores(const oracle_user *user);

/* Before any work: that the oracle can judge every turn of set. lexical: every turn has a
 * reference with at least one word (FILE:LINE otherwise); rm: the checkpoint has a tokenizer;
 * judge: one probe comparison on the first prompt succeeds (its message names the URL). */
int oracle_user_check(oracle_user *user, const oracle_prompt_set *set, duel_error *err);

/* r*(turn, answer). DUEL_EINVAL for a judge (no scores). */
int oracle_user_score(oracle_user *user, const oracle_turn *turn, const char *answer,
                      double *score, duel_error *err);

typedef struct oracle_vote {
    oracle_choice choice;
    double score_a, score_b; /* r* of both answers; NaN for a judge */
} oracle_vote;

/* The user's vote on answers a (left) and b (right) to turn: scores, then the noise model
 * (oracle_prefer); a judge's own choice gets only the flip. */
int oracle_user_vote(oracle_user *user, const oracle_turn *turn, const char *answer_a,
                     const char *answer_b, duel_rng *rng, oracle_vote *out, duel_error *err);

/* Think time between reading a duel and voting, and between turns, in milliseconds. Specs:
 * "0" (none), "fixed:MS", "uniform:LO:HI", "exp:MEAN" (exponential), "lognormal:MEDIAN:SIGMA";
 * every draw is capped at max_ms. */
typedef enum oracle_think_kind {
    ORACLE_THINK_NONE,
    ORACLE_THINK_FIXED,
    ORACLE_THINK_UNIFORM,
    ORACLE_THINK_EXPONENTIAL,
    ORACLE_THINK_LOGNORMAL,
} oracle_think_kind;

typedef struct oracle_think_config {
    oracle_think_kind kind;
    double a, b;   /* fixed: a; uniform: [a, b]; exp: mean a; lognormal: median a, sigma b */
    double max_ms; /* cap; default 60000 */
} oracle_think_config;

int oracle_think_parse(const char *spec, oracle_think_config *out, duel_error *err);
double oracle_think_ms(const oracle_think_config *config, duel_rng *rng);

/* Prompts a user asks in one conversation before starting a new one: 1 + a geometric draw with
 * mean mean_turns (>= 1), at most max_turns; 1 when mean_turns is 1 (a session line's own turns
 * come on top: they are one prompt). */
int oracle_session_turns(double mean_turns, int max_turns, duel_rng *rng);

#endif
