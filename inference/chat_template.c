/* chat_template.c: the chat templates implemented in C by name (chatml, llama3, plain, qa) and
 * their detection from a model's tokenizer_config.json (see chat_template.h). Rendering produces
 * the exact strings the models' Jinja templates produce for plain system/user/assistant turns. */
#include "chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

/* tokenizer_config.json files carry the Jinja template and sometimes large added-token tables. */
#define CHAT_TEMPLATE_MAX_CONFIG_BYTES (16u << 20)

static const char *const template_names[] = {
    [CHAT_TEMPLATE_PLAIN] = "plain",
    [CHAT_TEMPLATE_CHATML] = "chatml",
    [CHAT_TEMPLATE_LLAMA3] = "llama3",
    [CHAT_TEMPLATE_QA] = "qa",
};
#define NUM_TEMPLATES (sizeof template_names / sizeof template_names[0])

int chat_template_from_name(const char *name, chat_template_kind *out, duel_error *err) {
    for (size_t k = 0; k < NUM_TEMPLATES; k++)
        if (name && strcmp(name, template_names[k]) == 0) {
            *out = (chat_template_kind)k;
            return DUEL_OK;
        }
    return duel_error_set(err, DUEL_EINVAL,
                          "unknown chat template \"%s\" (choose plain, chatml, llama3 or qa)",
                          name ? name : "(null)");
}

const char *chat_template_name(chat_template_kind kind) {
    if ((unsigned)kind >= NUM_TEMPLATES) return "unknown";
    return template_names[kind];
}

/* Recognises a Jinja template by the markers it writes; false when it has none we know. */
static bool detect_markers(const char *jinja, chat_template_kind *out) {
    if (strstr(jinja, "<|start_header_id|>")) {
        *out = CHAT_TEMPLATE_LLAMA3;
        return true;
    }
    if (strstr(jinja, "<|im_start|>")) {
        *out = CHAT_TEMPLATE_CHATML;
        return true;
    }
    return false;
}

int chat_template_detect(const char *model_dir, chat_template_kind *out, duel_error *err) {
    *out = CHAT_TEMPLATE_PLAIN;
    if (!model_dir) return duel_error_set(err, DUEL_EINVAL, "chat_template_detect: no model directory");
    size_t n = strlen(model_dir) + sizeof "/tokenizer_config.json";
    char *path = malloc(n);
    if (!path) return duel_error_set(err, DUEL_ENOMEM, "chat_template_detect: out of memory");
    snprintf(path, n, "%s/tokenizer_config.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f) { /* no tokenizer_config.json: a base model, plain text */
        free(path);
        return DUEL_OK;
    }
    fclose(f);
    json_t *root;
    int rc = duel_json_load_file(path, CHAT_TEMPLATE_MAX_CONFIG_BYTES, &root, err);
    if (rc) {
        free(path);
        return rc;
    }
    if (!json_is_object(root)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: the top level must be a JSON object", path);
        goto done;
    }
    const json_t *chosen = json_object_get(root, "duel_chat_template");
    if (chosen && !json_is_null(chosen)) {
        if (!json_is_string(chosen)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: \"duel_chat_template\" must be a string", path);
            goto done;
        }
        rc = chat_template_from_name(json_string_value(chosen), out, err);
        if (rc) duel_error_prefix(err, "%s: \"duel_chat_template\"", path);
        goto done;
    }
    const json_t *jinja = json_object_get(root, "chat_template");
    if (json_is_string(jinja)) {
        detect_markers(json_string_value(jinja), out);
    } else if (json_is_array(jinja)) {
        /* [{"name": "default", "template": "..."}, ...]: the default one decides. */
        size_t i;
        const json_t *entry;
        json_array_foreach(jinja, i, entry) {
            const char *name = json_string_value(json_object_get(entry, "name"));
            const char *text = json_string_value(json_object_get(entry, "template"));
            if (name && text && strcmp(name, "default") == 0) detect_markers(text, out);
        }
    } else if (jinja && !json_is_null(jinja)) {
        rc = duel_error_set(err, DUEL_EFORMAT,
                            "%s: \"chat_template\" must be a string or a list of named templates", path);
    }
done:
    json_decref(root);
    free(path);
    return rc;
}

typedef struct text_buffer {
    char *p;
    size_t n, cap;
    bool failed;
} text_buffer;

static void put_bytes(text_buffer *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* A rendering is a sequence of parts: template text, message content, and special tokens (the
 * markers chatml and llama3 put around turns, the end of a qa answer). render_parts() calls
 * emit() for each in order; render and encode differ only in what they do with the parts. */
typedef enum { PART_TEXT, PART_SPECIAL } part_kind;
typedef void (*part_sink)(void *ctx, part_kind kind, const char *s);

static int validate_messages(const chat_message *messages, size_t count, duel_error *err) {
    if (count && !messages)
        return duel_error_set(err, DUEL_EINVAL, "chat template: no messages");
    for (size_t i = 0; i < count; i++) {
        const char *role = messages[i].role;
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")))
            return duel_error_set(err, DUEL_EINVAL,
                                  "chat template: message %zu has role \"%s\" (expected "
                                  "system, user or assistant)",
                                  i, role ? role : "(null)");
        if (!messages[i].content)
            return duel_error_set(err, DUEL_EINVAL, "chat template: message %zu has no content", i);
    }
    return DUEL_OK;
}

/* start: the conversation's beginning (llama3's <|begin_of_text|>), left out of a continuation. */
static void render_parts(chat_template_kind kind, const chat_message *messages, size_t count,
                         bool start, bool add_generation_prompt, part_sink emit, void *ctx) {
    if (start && kind == CHAT_TEMPLATE_LLAMA3) emit(ctx, PART_SPECIAL, "<|begin_of_text|>");
    for (size_t i = 0; i < count; i++) {
        const char *role = messages[i].role, *content = messages[i].content;
        switch (kind) {
        case CHAT_TEMPLATE_CHATML:
            emit(ctx, PART_SPECIAL, "<|im_start|>");
            emit(ctx, PART_TEXT, role);
            emit(ctx, PART_TEXT, "\n");
            emit(ctx, PART_TEXT, content);
            emit(ctx, PART_SPECIAL, "<|im_end|>");
            emit(ctx, PART_TEXT, "\n");
            break;
        case CHAT_TEMPLATE_LLAMA3:
            emit(ctx, PART_SPECIAL, "<|start_header_id|>");
            emit(ctx, PART_TEXT, role);
            emit(ctx, PART_SPECIAL, "<|end_header_id|>");
            emit(ctx, PART_TEXT, "\n\n");
            emit(ctx, PART_TEXT, content);
            emit(ctx, PART_SPECIAL, "<|eot_id|>");
            break;
        case CHAT_TEMPLATE_QA:
            if (strcmp(role, "user") == 0) {
                emit(ctx, PART_TEXT, "Question: ");
                emit(ctx, PART_TEXT, content);
                emit(ctx, PART_TEXT, " Answer:");
            } else if (strcmp(role, "assistant") == 0) {
                /* the answer prefix after "Answer:" (kept answers are stored without it) */
                emit(ctx, PART_TEXT, chat_template_answer_prefix(kind));
                emit(ctx, PART_TEXT, content);
                emit(ctx, PART_SPECIAL, "<|endoftext|>");
            } else {
                emit(ctx, PART_TEXT, content);
                emit(ctx, PART_TEXT, " ");
            }
            break;
        case CHAT_TEMPLATE_PLAIN:
            if (strcmp(role, "user") == 0) emit(ctx, PART_TEXT, "User: ");
            else if (strcmp(role, "assistant") == 0) emit(ctx, PART_TEXT, "Assistant: ");
            emit(ctx, PART_TEXT, content);
            emit(ctx, PART_TEXT, "\n");
            break;
        }
    }
    if (add_generation_prompt) {
        if (kind == CHAT_TEMPLATE_CHATML) {
            emit(ctx, PART_SPECIAL, "<|im_start|>");
            emit(ctx, PART_TEXT, "assistant\n");
        } else if (kind == CHAT_TEMPLATE_LLAMA3) {
            emit(ctx, PART_SPECIAL, "<|start_header_id|>");
            emit(ctx, PART_TEXT, "assistant");
            emit(ctx, PART_SPECIAL, "<|end_header_id|>");
            emit(ctx, PART_TEXT, "\n\n");
        } else if (kind == CHAT_TEMPLATE_PLAIN) {
            emit(ctx, PART_TEXT, "Assistant:");
        } /* qa: the user's turn ends with "Answer:" */
    }
}

static void render_sink(void *ctx, part_kind kind, const char *s) {
    (void)kind;
    put_bytes(ctx, s, strlen(s));
}

int chat_template_render(chat_template_kind kind, const chat_message *messages, size_t count,
                         bool add_generation_prompt, char **out, duel_error *err) {
    *out = NULL;
    if ((unsigned)kind >= NUM_TEMPLATES)
        return duel_error_set(err, DUEL_EINVAL, "chat_template_render: unknown template kind %d", (int)kind);
    int rc = validate_messages(messages, count, err);
    if (rc) return rc;
    text_buffer b = {0};
    put_bytes(&b, "", 0);
    render_parts(kind, messages, count, true, add_generation_prompt, render_sink, &b);
    if (b.failed) {
        free(b.p);
        return duel_error_set(err, DUEL_ENOMEM, "chat_template_render: out of memory");
    }
    *out = b.p;
    return DUEL_OK;
}

/* Encoding state: text between two special tokens is gathered and encoded as one piece with
 * special-token parsing off, exactly as Hugging Face splits at special tokens before the
 * pre-tokenizer; the markers themselves become their ids. */
typedef struct encode_state {
    const tokenizer *tok;
    text_buffer pending;
    int32_t *ids;
    size_t n, cap;
    int rc;
    duel_error *err;
} encode_state;

static void append_ids(encode_state *st, const int32_t *ids, size_t n) {
    if (st->rc) return;
    if (st->n + n > st->cap) {
        size_t cap = st->cap ? st->cap : 256;
        while (cap < st->n + n) cap *= 2;
        int32_t *p = realloc(st->ids, cap * sizeof *p);
        if (!p) {
            st->rc = duel_error_set(st->err, DUEL_ENOMEM, "chat template: out of memory");
            return;
        }
        st->ids = p;
        st->cap = cap;
    }
    if (n) memcpy(st->ids + st->n, ids, n * sizeof *ids);
    st->n += n;
}

static void flush_pending(encode_state *st) {
    if (st->rc || st->pending.n == 0) return;
    int32_t *ids = NULL;
    size_t n = 0;
    st->rc = tokenizer_encode(st->tok, st->pending.p, st->pending.n, false, &ids, &n, st->err);
    if (!st->rc) append_ids(st, ids, n);
    free(ids);
    st->pending.n = 0;
}

static void encode_sink(void *ctx, part_kind kind, const char *s) {
    encode_state *st = ctx;
    if (st->rc) return;
    if (kind == PART_TEXT) {
        put_bytes(&st->pending, s, strlen(s));
        if (st->pending.failed)
            st->rc = duel_error_set(st->err, DUEL_ENOMEM, "chat template: out of memory");
        return;
    }
    flush_pending(st);
    int32_t id = tokenizer_token_id(st->tok, s);
    if (id < 0) {
        st->rc = duel_error_set(st->err, DUEL_ENOTFOUND,
                                "chat template: the tokenizer has no token \"%s\" (wrong template "
                                "for this model?)",
                                s);
        return;
    }
    append_ids(st, &id, 1);
}

static int encode_parts(chat_template_kind kind, const tokenizer *tok,
                        const chat_message *messages, size_t count, bool start,
                        bool add_generation_prompt, int32_t **ids, size_t *n_ids, duel_error *err) {
    *ids = NULL;
    *n_ids = 0;
    if ((unsigned)kind >= NUM_TEMPLATES)
        return duel_error_set(err, DUEL_EINVAL, "chat_template_encode: unknown template kind %d", (int)kind);
    int rc = validate_messages(messages, count, err);
    if (rc) return rc;
    encode_state st = {.tok = tok, .err = err};
    render_parts(kind, messages, count, start, add_generation_prompt, encode_sink, &st);
    flush_pending(&st);
    free(st.pending.p);
    if (st.rc) {
        free(st.ids);
        return st.rc;
    }
    if (!st.ids) st.ids = malloc(sizeof *st.ids); /* a non-NULL result even when empty */
    if (!st.ids) return duel_error_set(err, DUEL_ENOMEM, "chat template: out of memory");
    *ids = st.ids;
    *n_ids = st.n;
    return DUEL_OK;
}

int chat_template_encode(chat_template_kind kind, const tokenizer *tok,
                         const chat_message *messages, size_t count, bool add_generation_prompt,
                         int32_t **ids, size_t *n_ids, duel_error *err) {
    return encode_parts(kind, tok, messages, count, true, add_generation_prompt, ids, n_ids, err);
}

int chat_template_encode_continuation(chat_template_kind kind, const tokenizer *tok,
                                      const chat_message *messages, size_t count,
                                      bool add_generation_prompt, int32_t **ids, size_t *n_ids,
                                      duel_error *err) {
    return encode_parts(kind, tok, messages, count, false, add_generation_prompt, ids, n_ids, err);
}

bool chat_template_turns_concatenate(chat_template_kind kind) {
    /* Every template but plain ends an assistant turn with a special token (qa, llama3) or puts
     * one right after it (chatml's next <|im_start|>), where encoding flushes its text. */
    return kind == CHAT_TEMPLATE_CHATML || kind == CHAT_TEMPLATE_LLAMA3 || kind == CHAT_TEMPLATE_QA;
}

const char *chat_template_end_of_turn(chat_template_kind kind) {
    switch (kind) {
    case CHAT_TEMPLATE_CHATML: return "<|im_end|>";
    case CHAT_TEMPLATE_LLAMA3: return "<|eot_id|>";
    case CHAT_TEMPLATE_QA: return "<|endoftext|>";
    default: return NULL;
    }
}

const char *chat_template_answer_prefix(chat_template_kind kind) {
    return kind == CHAT_TEMPLATE_QA ? " " : "";
}

const char *chat_template_strip_answer_prefix(chat_template_kind kind, const char *answer) {
    const char *prefix = chat_template_answer_prefix(kind);
    const size_t n = strlen(prefix);
    return n > 0 && strncmp(answer, prefix, n) == 0 ? answer + n : answer;
}
