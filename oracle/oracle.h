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

/* ---- preferences (oracle/preference.c) ---------------------------------------------------- */

typedef enum oracle_choice {
    ORACLE_PREFER_A, /* the answer shown as a */
    ORACLE_PREFER_B,
    ORACLE_TIE, /* deterministic oracle, exactly equal scores (or judge disagreeing with itself) */
} oracle_choice;

const char *oracle_choice_name(oracle_choice choice); /* "a", "b", "tie" as in the vote protocol */

typedef struct oracle_preference_config {
    bool stochastic;    /* false: a wins iff r*(a) > r*(b) (equal: tie); true: Bernoulli */
    double temperature; /* tau > 0 for the Bernoulli label; default 1 */
} oracle_preference_config;

void oracle_preference_config_default(oracle_preference_config *config);

/* sigmoid(delta / tau), evaluated without overflow for any finite delta. */
double oracle_preference_probability(double delta, double temperature);

/* Labels a pair from its oracle scores. Stochastic labels take one duel_rng_uniform draw: a wins
 * when u < sigmoid((reward_a - reward_b) / tau); they are never ties. Non-finite rewards, a
 * temperature that is not finite and positive, or a NULL rng in stochastic mode are DUEL_EINVAL
 * and give no choice. */
int oracle_prefer(const oracle_preference_config *config, double reward_a, double reward_b,
                  duel_rng *rng, oracle_choice *out, duel_error *err);

/* ---- lexical oracle (oracle/lexical.c) ----------------------------------------------------- */

/* Text is split into words: maximal runs of ASCII letters and digits and of non-ASCII bytes
 * (so UTF-8 words stay whole), lowercased (ASCII); apostrophes inside a word are dropped
 * ("don't" -> "dont"); every other ASCII character (spaces, punctuation) separates words.
 *
 *   score = overlap_weight    * F1(answer words, reference words)
 *         - length_weight     * max(0, |answer| / |reference| - length_target_ratio)
 *         - repetition_weight * (rep2 + rep3) / 2
 *
 * F1 is the bag-of-words F1 (multiset overlap, as SQuAD scores): common = sum over words of
 * min(count in answer, count in reference), precision = common/|answer|, recall =
 * common/|reference|, F1 = 2PR/(P+R), 0 when nothing is shared. rep_n is the fraction of the
 * answer's word n-grams that repeat an earlier n-gram ((count - distinct) / count; 0 when the
 * answer has fewer than n words). An empty answer has F1 0 and no penalties: it scores 0.
 * The reference must have at least one word. Scores lie in [-inf, overlap_weight]. */
typedef struct oracle_lexical_config {
    double overlap_weight;      /* default 1.0 */
    double length_weight;       /* default 0.25, per unit of length ratio beyond the target */
    double length_target_ratio; /* default 2.0: answers up to twice the reference are free */
    double repetition_weight;   /* default 1.0 */
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
 *   lexical:    overlap_weight, length_weight, length_target_ratio, repetition_weight
 *   preference: stochastic, temperature
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

#endif
