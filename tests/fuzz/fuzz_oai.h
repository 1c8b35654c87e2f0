/* What every harness that reaches pt_oai_parse checks: the server's limits
 * (serve.c limits_of: one served model, a context length, a vocabulary), an
 * error that is a 4xx naming a field, or a result within the documented
 * ranges (include/proteus/openai_api.h). */
#ifndef PROTEUS_FUZZ_OAI_H
#define PROTEUS_FUZZ_OAI_H

#include "fuzz_common.h"
#include "proteus/openai_api.h"

static const char *const fuzz_oai_models[] = {"tiny"};
static const pt_oai_limits fuzz_oai_limits = {fuzz_oai_models, 1, 2048, 32000};

/* Parses body as a `kind` request and checks the outcome; returns the HTTP
 * status the server would answer with (200 for a valid body). */
static inline int fuzz_oai_check(pt_oai_kind kind, const char *body, size_t len) {
    pt_oai_request r;
    pt_oai_error e;
    memset(&e, 0, sizeof e);
    if (pt_oai_parse(&r, kind, body, len, &fuzz_oai_limits, &e) != 0) {
        /* Bad input is the client's fault: never a 5xx (500 is only out of memory). */
        FUZZ_CHECK(e.status == 400 || e.status == 404, "status %d: %s", e.status, e.message);
        FUZZ_CHECK(e.message[0] != 0, "an error without a message");
        FUZZ_CHECK(memchr(e.message, 0, sizeof e.message) && memchr(e.param, 0, sizeof e.param),
                   "unterminated message or param");
        return e.status;
    }
    FUZZ_CHECK(r.kind == kind, "kind %d", (int)r.kind);
    FUZZ_CHECK(r.n >= 1 && r.n <= PT_OAI_MAX_N, "n %d", r.n);
    FUZZ_CHECK(r.max_tokens == -1 || (r.max_tokens >= 1 && (uint64_t)r.max_tokens <= fuzz_oai_limits.max_model_len),
               "max_tokens %lld", (long long)r.max_tokens);
    FUZZ_CHECK(r.top_logprobs >= 0 && r.top_logprobs <= PT_OAI_MAX_LOGPROBS, "top_logprobs %d", r.top_logprobs);
    FUZZ_CHECK(r.stream || !r.include_usage, "include_usage without stream");
    FUZZ_CHECK(r.model && !strcmp(r.model, "tiny"), "model");
    FUZZ_CHECK(r.n_stop <= PT_STOP_MAX_STRINGS, "n_stop %zu", r.n_stop);
    for (size_t i = 0; i < r.n_stop; i++)
        FUZZ_CHECK(r.stop[i] && r.stop[i][0] && strlen(r.stop[i]) <= PT_STOP_MAX_BYTES, "stop %zu", i);
    FUZZ_CHECK(r.n_logit_bias <= PT_OAI_MAX_LOGIT_BIAS, "n_logit_bias %zu", r.n_logit_bias);
    if (kind == PT_OAI_CHAT) {
        FUZZ_CHECK(r.n_messages >= 1 && r.n_messages <= PT_OAI_MAX_MESSAGES && r.messages, "n_messages %zu",
                   r.n_messages);
        for (size_t i = 0; i < r.n_messages; i++) {
            const char *role = r.messages[i].role;
            FUZZ_CHECK(role && (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant")),
                       "message %zu role", i);
            FUZZ_CHECK(r.messages[i].content != NULL, "message %zu content", i);
        }
    } else {
        FUZZ_CHECK(r.n_prompts >= 1 && r.n_prompts <= PT_OAI_MAX_PROMPTS && r.prompts, "n_prompts %zu", r.n_prompts);
        for (size_t i = 0; i < r.n_prompts; i++) {
            const pt_oai_prompt *p = &r.prompts[i];
            FUZZ_CHECK((p->text != NULL) != (p->tokens != NULL), "prompt %zu: text xor tokens", i);
            if (p->text) FUZZ_CHECK(p->text[0], "prompt %zu: empty text", i);
            if (p->tokens) {
                FUZZ_CHECK(p->n_tokens > 0, "prompt %zu: no tokens", i);
                for (size_t k = 0; k < p->n_tokens; k++)
                    FUZZ_CHECK(p->tokens[k] >= 0 && (size_t)p->tokens[k] < fuzz_oai_limits.vocab_size,
                               "prompt %zu token %zu = %d", i, k, p->tokens[k]);
            }
        }
    }
    pt_oai_request_free(&r);
    return 200;
}

#endif
