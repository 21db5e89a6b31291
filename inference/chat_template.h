/* chat_template.h: turning a conversation into the prompt text a model was tuned on. Templates
 * are implemented in C by name (chatml, llama3, plain, qa); no Jinja. The name comes from config or
 * is detected from the model's tokenizer_config.json. */
#ifndef DUEL_CHAT_TEMPLATE_H
#define DUEL_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <stdint.h>

#include "error.h"
#include "tokenizer.h"

typedef enum chat_template_kind {
    CHAT_TEMPLATE_PLAIN,  /* "User: ...\nAssistant: ..." lines, for base models */
    CHAT_TEMPLATE_CHATML, /* <|im_start|>role\n...<|im_end|>\n (Qwen2, SmolLM2) */
    CHAT_TEMPLATE_LLAMA3, /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    CHAT_TEMPLATE_QA,     /* "Question: ... Answer: ...<|endoftext|>": a model that learned to
                             answer questions in its pretraining text (the default model) */
} chat_template_kind;

typedef struct chat_message {
    const char *role; /* "system", "user" or "assistant" */
    const char *content;
} chat_message;

/* "plain", "chatml", "llama3", "qa" -> kind; anything else is DUEL_EINVAL naming the choices. */
int chat_template_from_name(const char *name, chat_template_kind *out, duel_error *err);
const char *chat_template_name(chat_template_kind kind);

/* Reads <model_dir>/tokenizer_config.json: a "duel_chat_template" key naming a template wins;
 * otherwise the "chat_template" string is recognised by its markers (<|im_start|> -> chatml,
 * <|start_header_id|> -> llama3); a missing file or template gives plain. */
int chat_template_detect(const char *model_dir, chat_template_kind *out, duel_error *err);

/* Renders messages; with add_generation_prompt the text ends where the assistant's answer
 * begins. *out is heap-allocated; free() it. Unknown roles are DUEL_EINVAL. */
int chat_template_render(chat_template_kind kind, const chat_message *messages, size_t count,
                         bool add_generation_prompt, char **out, duel_error *err);

/* Renders and encodes in one go, safely: message content is encoded with special-token parsing
 * off, so a user who types "<|im_end|>" gets those characters, not the control token; only the
 * template's own markers become special ids. Gives the same ids as encoding the rendered text
 * with special parsing on whenever the content holds no special-token strings. A marker the
 * tokenizer lacks is DUEL_ENOTFOUND. *ids is heap-allocated; free() it. */
int chat_template_encode(chat_template_kind kind, const tokenizer *tok,
                         const chat_message *messages, size_t count, bool add_generation_prompt,
                         int32_t **ids, size_t *n_ids, duel_error *err);

/* The same without what the template puts once at the start of a conversation (llama3's
 * <|begin_of_text|>): the encoding of messages that continue an earlier encoded conversation. */
int chat_template_encode_continuation(chat_template_kind kind, const tokenizer *tok,
                                      const chat_message *messages, size_t count,
                                      bool add_generation_prompt, int32_t **ids, size_t *n_ids,
                                      duel_error *err);

/* Whether a conversation's encoding is the concatenation of its parts' encodings when it is cut
 * after an assistant message: chat_template_encode(m[0..n)) == chat_template_encode(m[0..k),
 * false) ++ chat_template_encode_continuation(m[k..n)) for every such k. True for chatml, llama3
 * and qa (a special token sits at each such cut, where text is encoded apart); false for plain,
 * whose whole conversation is one text. So a server can keep each turn's ids and encode only
 * the new message. */
bool chat_template_turns_concatenate(chat_template_kind kind);

/* The token string that ends an assistant turn ("<|im_end|>", "<|eot_id|>", "<|endoftext|>" for
 * qa; NULL for plain). */
const char *chat_template_end_of_turn(chat_template_kind kind);

/* The text the template puts before an assistant's answer after the generation prompt (" " for
 * qa, whose prompt ends with "Answer:" as its pretraining text did; "" otherwise): training
 * prepends it to a response so that the response's first token is the one the model generates. */
const char *chat_template_answer_prefix(chat_template_kind kind);

/* A generated answer without the answer prefix it starts with (the model generates it: qa's
 * answers start with " "): the text to show and to keep as the assistant's turn, which rendering
 * puts the prefix back before. answer itself when it does not start with the prefix. */
const char *chat_template_strip_answer_prefix(chat_template_kind kind, const char *answer);

#endif
