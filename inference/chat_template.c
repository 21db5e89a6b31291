/* chat_template.c: the chat templates implemented in C by name (chatml, llama3, plain) and their
 * detection from a model's tokenizer_config.json (see chat_template.h). Rendering produces the
 * exact strings the models' Jinja templates produce for plain system/user/assistant turns. */
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
};

int chat_template_from_name(const char *name, chat_template_kind *out, duel_error *err) {
    for (int k = 0; k < 3; k++)
        if (name && strcmp(name, template_names[k]) == 0) {
            *out = (chat_template_kind)k;
            return DUEL_OK;
        }
    return duel_error_set(err, DUEL_EINVAL,
                          "unknown chat template \"%s\" (choose plain, chatml or llama3)",
                          name ? name : "(null)");
}

const char *chat_template_name(chat_template_kind kind) {
    if ((unsigned)kind > CHAT_TEMPLATE_LLAMA3) return "unknown";
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

static void put(text_buffer *b, const char *s) {
    size_t n = strlen(s);
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
    memcpy(b->p + b->n, s, n + 1);
    b->n += n;
}

int chat_template_render(chat_template_kind kind, const chat_message *messages, size_t count,
                         bool add_generation_prompt, char **out, duel_error *err) {
    *out = NULL;
    if ((unsigned)kind > CHAT_TEMPLATE_LLAMA3)
        return duel_error_set(err, DUEL_EINVAL, "chat_template_render: unknown template kind %d", (int)kind);
    if (count && !messages)
        return duel_error_set(err, DUEL_EINVAL, "chat_template_render: no messages");
    for (size_t i = 0; i < count; i++) {
        const char *role = messages[i].role;
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")))
            return duel_error_set(err, DUEL_EINVAL,
                                  "chat_template_render: message %zu has role \"%s\" (expected "
                                  "system, user or assistant)",
                                  i, role ? role : "(null)");
        if (!messages[i].content)
            return duel_error_set(err, DUEL_EINVAL, "chat_template_render: message %zu has no content", i);
    }
    text_buffer b = {0};
    put(&b, "");
    if (kind == CHAT_TEMPLATE_LLAMA3) put(&b, "<|begin_of_text|>");
    for (size_t i = 0; i < count; i++) {
        const char *role = messages[i].role, *content = messages[i].content;
        switch (kind) {
        case CHAT_TEMPLATE_CHATML:
            put(&b, "<|im_start|>");
            put(&b, role);
            put(&b, "\n");
            put(&b, content);
            put(&b, "<|im_end|>\n");
            break;
        case CHAT_TEMPLATE_LLAMA3:
            put(&b, "<|start_header_id|>");
            put(&b, role);
            put(&b, "<|end_header_id|>\n\n");
            put(&b, content);
            put(&b, "<|eot_id|>");
            break;
        case CHAT_TEMPLATE_PLAIN:
            if (strcmp(role, "user") == 0) put(&b, "User: ");
            else if (strcmp(role, "assistant") == 0) put(&b, "Assistant: ");
            put(&b, content);
            put(&b, "\n");
            break;
        }
    }
    if (add_generation_prompt) {
        if (kind == CHAT_TEMPLATE_CHATML) put(&b, "<|im_start|>assistant\n");
        else if (kind == CHAT_TEMPLATE_LLAMA3) put(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        else put(&b, "Assistant:");
    }
    if (b.failed) {
        free(b.p);
        return duel_error_set(err, DUEL_ENOMEM, "chat_template_render: out of memory");
    }
    *out = b.p;
    return DUEL_OK;
}

const char *chat_template_end_of_turn(chat_template_kind kind) {
    switch (kind) {
    case CHAT_TEMPLATE_CHATML: return "<|im_end|>";
    case CHAT_TEMPLATE_LLAMA3: return "<|eot_id|>";
    default: return NULL;
    }
}
