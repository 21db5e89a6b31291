/* fuzz_protocol.c: libFuzzer target for the duel.v1 message parser (gateway/protocol.c), the one
 * place client frames are parsed. The input is one whole message. A message that parses must
 * hold what protocol.h promises past this point: a known type, ids of exactly 32 lowercase hex
 * characters, ask text that is valid UTF-8, non-empty, NUL-free and under the ask limit; a
 * refusal must name a code with a wire name and leave the message cleared. The error and the
 * server frames built from what was parsed must be valid JSON. Seeds in corpus/fuzz_protocol. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "utf8.h"

static void check_json(char *frame) {
    if (!frame) return; /* out of memory */
    json_t *j = json_loads(frame, JSON_REJECT_DUPLICATES, NULL);
    if (!j) abort();
    json_decref(j);
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    protocol_limits limits = {16384, 4000};
    protocol_msg m;
    char detail[256];
    protocol_error_code code = protocol_parse((const char *)data, size, &limits, &m, detail,
                                              sizeof detail);
    if (code != PROTOCOL_OK) {
        if (code <= PROTOCOL_OK || code >= PROTOCOL_E_COUNT) abort();
        if (m.text || m.has_conversation) abort(); /* cleared on refusal */
        if (memchr(detail, '\0', sizeof detail) == NULL) abort();
        /* the detail may quote the input's bytes: the error frame must still be built */
        char *frame = protocol_encode_error(code, detail, NULL);
        if (!frame) abort();
        check_json(frame);
        return 0;
    }
    switch (m.type) {
    case PROTOCOL_MSG_HELLO:
        if (m.has_conversation && !protocol_id_valid(m.conversation, strlen(m.conversation))) abort();
        break;
    case PROTOCOL_MSG_ASK:
        if (!m.text || m.text_len == 0 || m.text_len > limits.max_ask_bytes) abort();
        if (strlen(m.text) != m.text_len) abort(); /* no NUL inside */
        if (!duel_utf8_valid(m.text, m.text_len, NULL)) abort();
        check_json(protocol_encode_delta("0123456789abcdef0123456789abcdef", 'a', m.text,
                                         m.text_len, NULL));
        break;
    case PROTOCOL_MSG_VOTE:
        if (!protocol_id_valid(m.duel, strlen(m.duel))) abort();
        if ((int)m.choice < 0 || (int)m.choice > 3) abort();
        check_json(protocol_encode_vote_ok(m.duel, false, NULL));
        break;
    case PROTOCOL_MSG_CANCEL: break;
    default: abort();
    }
    protocol_msg_clear(&m);
    return 0;
}
