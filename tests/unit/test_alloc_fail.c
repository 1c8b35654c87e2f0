/* Allocation-failure walk over the request path that must not abort.
 *
 * This program is linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,
 * --wrap=strdup (CMakeLists.txt, "allocation-failure injection"): every call
 * to those functions from the program and from libproteus_core goes through
 * the __wrap_ functions below, which fail the Nth allocation after the walk
 * arms them (and only that one). cJSON lives in a shared library that the
 * wrap does not reach, but pt_oai_parse installs cJSON hooks that allocate
 * with malloc from inside libproteus_core, so cJSON's allocations (parse
 * trees, printed JSON) are counted too. pcre2's (the pre-tokenizer's match
 * data) are not: they stay in the shared library.
 *
 * Each walk runs one operation with N = 1, 2, ... until a run finishes
 * without reaching the Nth allocation; every run must either fail with the
 * operation's out-of-memory error (PT_ERR_NOMEM; a 500 "server_error" from
 * the OpenAI parser; NULL from a JSON builder) or succeed with exactly the
 * output of an unarmed run. An abort (pt_x* allocations abort by design) or
 * a crash fails the test; a leak on a failure path fails the ASan build.
 *
 * Walked: pt_oai_parse of a chat body (messages with content parts, stop,
 * logit_bias, n, stream options) and of completions bodies (a batch of text
 * prompts, of token prompts; stop list, logit_bias, n), the /tokenize and
 * /detokenize bodies; pt_oai_render_chat with the four built-in templates;
 * pt_tokenizer_encode of a rendered prompt with special tokens; every
 * response builder of src/api/openai_response.c (chat and text completions
 * with logprobs, stream chunks, usage chunk, SSE frame, error, models,
 * tokenize, detokenize).
 * Not walked: the tokenizer and chat template set-up (pt_xstrdup of the
 * bos/eos texts and the vocabulary tables are load-time bookkeeping, done
 * before arming). The whole server (HTTP, scheduler, batcher, engine, on
 * every thread) has its own walk: test_serve_alloc_fail.c. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/chat_template.h"
#include "proteus/openai_api.h"
#include "proteus/tokenizer.h"
#include "proteus/util.h"
#include "test.h"

/* ---------------------------------------------------------------------------
 * The injector. */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

static long fail_at;   /* 0: off; else the allocation (1-based, since arming) that fails */
static long n_allocs;  /* allocations since arming */
static bool fired;     /* the armed allocation was reached (and failed) */

static bool fail_now(void) {
    if (!fail_at) return false;
    if (++n_allocs != fail_at) return false;
    fired = true;
    return true;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return fail_now() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { return fail_now() ? NULL : __real_strdup(s); }

/* An operation under test: runs once, frees all it made, and returns 1 when
 * it succeeded with `out` (a fingerprint of its result) filled, 0 when it
 * reported its out-of-memory error, -1 for any other failure. */
typedef int (*op_fn)(const void *arg, char *out, size_t cap);

#define FP_CAP 65536

/* Runs op with the Nth allocation failing for N = 1, 2, ... until a run
 * reaches no Nth allocation; returns the number of allocations walked. */
static long walk(const char *name, op_fn op, const void *arg) {
    static char ref[FP_CAP], got[FP_CAP];
    ref[0] = 0;
    int r = op(arg, ref, sizeof(ref));
    CHECK_MSG(r == 1, "%s: the unarmed run did not succeed (%d)", name, r);
    if (r != 1) return 0;
    long n;
    int clean = 0, same = 0;
    for (n = 1; n < 1000000; n++) {
        got[0] = 0;
        n_allocs = 0;
        fired = false;
        fail_at = n;
        r = op(arg, got, sizeof(got));
        fail_at = 0;
        if (!fired) {
            CHECK_MSG(r == 1 && !strcmp(got, ref), "%s: the run past the last allocation differs", name);
            break;
        }
        if (r == 0) {
            clean++;
        } else if (r == 1 && !strcmp(got, ref)) {
            same++; /* the failure had a fallback and the result is unchanged */
        } else {
            CHECK_MSG(0, "%s: allocation %ld failed: %s", name, n,
                      r == 1 ? "the operation succeeded with a different result" : "not the out-of-memory error");
        }
    }
    printf("%-34s %4ld allocations: %d out-of-memory errors, %d recovered with the same result\n", name, n - 1,
           clean, same);
    CHECK_MSG(n > 1, "%s: no allocation at all (is the wrap linked?)", name);
    return n - 1;
}

/* ---------------------------------------------------------------------------
 * Request parsing. */

static const char *const SERVED[] = {"smollm"};
static const pt_oai_limits LIM = {.served_models = SERVED, .n_served_models = 1, .max_model_len = 4096,
                                  .vocab_size = 50000};

static const char CHAT_BODY[] =
    "{\"model\":\"smollm\",\"messages\":["
    "{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"caf\xC3\xA9\"},{\"type\":\"text\",\"text\":"
    "\"\\u00e9\\ud83d\\ude00 two\"}],\"name\":\"bob\"},"
    "{\"role\":\"assistant\",\"content\":\"Hello there, how can I help?\"},"
    "{\"role\":\"user\",\"content\":\"Tell me about <|im_start|> tokens.\\n\\tPlease.\"}],"
    "\"max_tokens\":100,\"temperature\":0.7,\"top_p\":0.9,\"seed\":42,"
    "\"stop\":[\"END\",\"\\n\\n\",\"stop here\"],\"n\":3,\"stream\":true,"
    "\"stream_options\":{\"include_usage\":true},\"logprobs\":true,\"top_logprobs\":5,"
    "\"logit_bias\":{\"5\":-100,\"999\":100,\"007\":0.5,\"12345\":-3},\"ignore_eos\":true,"
    "\"cache_salt\":\"salt-1\",\"user\":\"u1\"}";

static const char COMPLETION_BODY[] =
    "{\"model\":\"smollm\",\"prompt\":[\"Once upon a time\",\"def quicksort(xs):\",\"x\"],"
    "\"logprobs\":2,\"n\":2,\"stop\":[\"\\n\\n\",\"END\"],\"max_tokens\":16,"
    "\"logit_bias\":{\"17\":1.5,\"18\":-1},\"stream\":false,\"temperature\":0,\"echo\":false}";

static const char COMPLETION_TOKENS_BODY[] =
    "{\"prompt\":[[1,2,3,4,5,6,7,8],[9,10,11]],\"max_tokens\":4,\"stop\":\"!\",\"n\":2}";

typedef struct {
    pt_oai_kind kind;
    const char *body;
} parse_arg;

/* A fingerprint of a parsed request, written without allocating. */
static void request_fp(const pt_oai_request *r, char *out, size_t cap) {
    size_t m = (size_t)snprintf(out, cap, "model=%s n=%d max=%lld stream=%d usage=%d lp=%d/%d salt=%s stops=",
                                r->model ? r->model : "-", r->n, (long long)r->max_tokens, r->stream,
                                r->include_usage, r->logprobs, r->top_logprobs,
                                r->cache_salt ? r->cache_salt : "-");
    for (size_t i = 0; i < r->n_stop && m < cap; i++) m += (size_t)snprintf(out + m, cap - m, "[%s]", r->stop[i]);
    for (size_t i = 0; i < r->n_logit_bias && m < cap; i++)
        m += (size_t)snprintf(out + m, cap - m, " bias%d=%g", r->logit_bias[i].token, r->logit_bias[i].bias);
    for (size_t i = 0; i < r->n_messages && m < cap; i++)
        m += (size_t)snprintf(out + m, cap - m, " msg(%s,%s,%s)", r->messages[i].role, r->messages[i].content,
                              r->messages[i].name ? r->messages[i].name : "-");
    for (size_t i = 0; i < r->n_prompts && m < cap; i++) {
        if (r->prompts[i].text) m += (size_t)snprintf(out + m, cap - m, " prompt(%s)", r->prompts[i].text);
        for (size_t k = 0; k < r->prompts[i].n_tokens && m < cap; k++)
            m += (size_t)snprintf(out + m, cap - m, " t%d", r->prompts[i].tokens[k]);
    }
}

static bool is_oom(const pt_oai_error *e) {
    return e->status == 500 && e->type && !strcmp(e->type, "server_error") && !strcmp(e->message, "out of memory");
}

static int op_parse(const void *arg, char *out, size_t cap) {
    const parse_arg *a = arg;
    pt_oai_request r;
    pt_oai_error e;
    memset(&e, 0, sizeof(e));
    if (pt_oai_parse(&r, a->kind, a->body, strlen(a->body), &LIM, &e)) return is_oom(&e) ? 0 : -1;
    request_fp(&r, out, cap);
    pt_oai_request_free(&r);
    return 1;
}

static const char TOKENIZE_BODY[] =
    "{\"model\":\"smollm\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"Hi there\"}],\"add_special_tokens\":false,\"add_generation_prompt\":true}";
static const char DETOKENIZE_BODY[] = "{\"model\":\"smollm\",\"tokens\":[1,2,3,4,5,6,7,8,9,10,11,12]}";

static int op_parse_tokenize(const void *arg, char *out, size_t cap) {
    (void)arg;
    pt_oai_tokenize_request r;
    pt_oai_error e;
    memset(&e, 0, sizeof(e));
    if (pt_oai_parse_tokenize(&r, TOKENIZE_BODY, strlen(TOKENIZE_BODY), &LIM, &e)) return is_oom(&e) ? 0 : -1;
    size_t m = (size_t)snprintf(out, cap, "model=%s special=%d gen=%d", r.model ? r.model : "-",
                                r.add_special_tokens, r.add_generation_prompt);
    for (size_t i = 0; i < r.n_messages && m < cap; i++)
        m += (size_t)snprintf(out + m, cap - m, " msg(%s,%s)", r.messages[i].role, r.messages[i].content);
    pt_oai_tokenize_request_free(&r);
    return 1;
}

static int op_parse_detokenize(const void *arg, char *out, size_t cap) {
    (void)arg;
    pt_oai_detokenize_request r;
    pt_oai_error e;
    memset(&e, 0, sizeof(e));
    if (pt_oai_parse_detokenize(&r, DETOKENIZE_BODY, strlen(DETOKENIZE_BODY), &LIM, &e)) return is_oom(&e) ? 0 : -1;
    size_t m = (size_t)snprintf(out, cap, "model=%s", r.model ? r.model : "-");
    for (size_t i = 0; i < r.n_tokens && m < cap; i++) m += (size_t)snprintf(out + m, cap - m, " %d", r.tokens[i]);
    pt_oai_detokenize_request_free(&r);
    return 1;
}

static void test_parse_walk(void) {
    /* The first parse installs the cJSON hooks (see the top of this file). */
    parse_arg chat = {PT_OAI_CHAT, CHAT_BODY}, comp = {PT_OAI_COMPLETION, COMPLETION_BODY},
              toks = {PT_OAI_COMPLETION, COMPLETION_TOKENS_BODY};
    char fp[FP_CAP];
    CHECK_EQ_INT(op_parse(&chat, fp, sizeof(fp)), 1);
    CHECK_MSG(strstr(fp, "n=3") && strstr(fp, "[END][\n\n][stop here]") && strstr(fp, "bias12345=-3") &&
                  strstr(fp, "msg(user,Tell me about"),
              "chat fingerprint: %s", fp);
    walk("parse chat", op_parse, &chat);
    walk("parse completions (text prompts)", op_parse, &comp);
    walk("parse completions (token prompts)", op_parse, &toks);
    walk("parse /tokenize (messages)", op_parse_tokenize, NULL);
    walk("parse /detokenize", op_parse_detokenize, NULL);
}

/* ---------------------------------------------------------------------------
 * Chat template rendering. */

typedef struct {
    const pt_oai_request *r;
    const pt_chat_template *ct;
} render_arg;

static int op_render(const void *arg, char *out, size_t cap) {
    const render_arg *a = arg;
    pt_oai_error e;
    memset(&e, 0, sizeof(e));
    char *text = NULL;
    if (pt_oai_render_chat(a->r, a->ct, &text, &e)) return is_oom(&e) && !text ? 0 : -1;
    snprintf(out, cap, "%s", text);
    free(text);
    return 1;
}

static void test_render_walk(void) {
    pt_oai_request r;
    pt_oai_error e;
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, CHAT_BODY, strlen(CHAT_BODY), &LIM, &e), 0);
    static const char *const kinds[] = {"chatml", "llama3", "llama2", "mistral"};
    for (size_t k = 0; k < 4; k++) {
        pt_chat_template ct;
        pt_err err = {{0}};
        /* Set-up (two pt_xstrdup of the bos/eos texts) is bookkeeping, done before arming. */
        CHECK_EQ_INT(pt_chat_template_init(&ct, NULL, kinds[k], "<s>", "</s>", &err), PT_OK);
        render_arg a = {&r, &ct};
        char name[64];
        snprintf(name, sizeof(name), "render chat (%s)", kinds[k]);
        walk(name, op_render, &a);
        pt_chat_template_free(&ct);
    }
    pt_oai_request_free(&r);
}

/* ---------------------------------------------------------------------------
 * Tokenizer encode. */

typedef struct {
    const pt_tokenizer *t;
    const char *text;
} encode_arg;

static int op_encode(const void *arg, char *out, size_t cap) {
    const encode_arg *a = arg;
    int32_t *ids = NULL;
    size_t n = 0;
    pt_err err = {{0}};
    int rc = pt_tokenizer_encode(a->t, a->text, strlen(a->text), true, true, &ids, &n, &err);
    if (rc) return rc == PT_ERR_NOMEM && !ids ? 0 : -1;
    size_t m = (size_t)snprintf(out, cap, "%zu:", n);
    for (size_t i = 0; i < n && m < cap; i++) m += (size_t)snprintf(out + m, cap - m, " %d", ids[i]);
    free(ids);
    return 1;
}

static void test_encode_walk(void) {
    const char *src = getenv("PROTEUS_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/golden/tokenizer/bl_smollm.tokenizer.json", src ? src : ".");
    pt_tokenizer *t = NULL;
    pt_err err = {{0}};
    /* Loading builds the vocabulary tables with pt_x* (bookkeeping sized by
     * the model file, once at start-up): done before arming. */
    int rc = pt_tokenizer_load_json(&t, path, &err);
    CHECK_MSG(rc == PT_OK, "%s: %s", path, err.msg);
    if (rc) return;
    /* A rendered ChatML prompt: special tokens, digits, Unicode, and long
     * enough (over 256 tokens) for the id vector to grow more than once. */
    static char text[8192];
    size_t m = (size_t)snprintf(text, sizeof(text), "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n");
    for (int i = 0; i < 40 && m < sizeof(text); i++)
        m += (size_t)snprintf(text + m, sizeof(text) - m, "caf\xC3\xA9 %d, the quick brown fox\tjumps; ", i * 37);
    snprintf(text + m, sizeof(text) - m, "<|im_end|>\n<|im_start|>assistant\n");
    encode_arg a = {t, text};
    char fp[FP_CAP];
    CHECK_EQ_INT(op_encode(&a, fp, sizeof(fp)), 1);
    CHECK_MSG(atoi(fp) > 256, "prompt of %d tokens", atoi(fp));
    walk("tokenizer encode", op_encode, &a);
    pt_tokenizer_free(t);
}

/* ---------------------------------------------------------------------------
 * Response JSON building. */

static const pt_oai_lp_entry TOPS[3] = {{"Hel", 3, -0.1f}, {"He", 2, -2.5f}, {"\xC3\xA9", 2, -3.0f}};
static const pt_oai_token_lp LPS[3] = {{{"Hel", 3, -0.1f}, TOPS, 3},
                                       {{"lo", 2, -0.2f}, TOPS, 3},
                                       {{" \"w\"\n", 5, -1.0f}, TOPS, 2}};

static void make_choices(pt_oai_choice *c, size_t n, bool role) {
    for (size_t i = 0; i < n; i++)
        c[i] = (pt_oai_choice){.index = (uint32_t)i, .text = "Hello \"world\"\n\xC3\xA9", .len = 15, .role = role,
                               .finish = i ? PT_OAI_FINISH_LENGTH : PT_OAI_FINISH_STOP, .has_logprobs = true,
                               .lp = LPS, .n_lp = 3};
}

typedef enum {
    RESP_CHAT, RESP_TEXT, RESP_CHUNK_CHAT, RESP_CHUNK_TEXT, RESP_USAGE, RESP_SSE, RESP_ERROR, RESP_MODELS,
    RESP_TOKENIZE, RESP_DETOKENIZE
} resp_kind;

static int op_response(const void *arg, char *out, size_t cap) {
    resp_kind k = *(const resp_kind *)arg;
    pt_oai_meta meta = {"chatcmpl-0123456789abcdef", 1700000000, "smollm"};
    pt_oai_usage u = {12, 6};
    pt_oai_choice c[2];
    make_choices(c, 2, k == RESP_CHUNK_CHAT);
    pt_oai_error e;
    pt_oai_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
    char *j = NULL;
    size_t len = 0;
    switch (k) {
    case RESP_CHAT: j = pt_oai_chat_completion_json(&meta, c, 2, &u); break;
    case RESP_TEXT: j = pt_oai_text_completion_json(&meta, c, 2, &u); break;
    case RESP_CHUNK_CHAT: j = pt_oai_chunk_json(&meta, PT_OAI_CHAT, &c[0], true); break;
    case RESP_CHUNK_TEXT: j = pt_oai_chunk_json(&meta, PT_OAI_COMPLETION, &c[1], false); break;
    case RESP_USAGE: j = pt_oai_usage_chunk_json(&meta, PT_OAI_CHAT, &u); break;
    case RESP_SSE: j = pt_oai_sse_frame("{\"a\":\"" "0123456789012345678901234567890123456789" "\"}", &len); break;
    case RESP_ERROR: j = pt_oai_error_json(&e); break;
    case RESP_MODELS: j = pt_oai_models_json(SERVED, 1, 1700000000, 2048); break;
    case RESP_TOKENIZE: {
        static const int32_t ids[] = {1, 2, 3, 50000, 7};
        j = pt_oai_tokenize_json(ids, 5, 2048);
        break;
    }
    case RESP_DETOKENIZE: j = pt_oai_detokenize_json("caf\xC3\xA9 \"q\"\n", 10); break;
    }
    if (!j) return 0;
    snprintf(out, cap, "%s", j);
    free(j);
    return 1;
}

static void test_response_walk(void) {
    static const struct {
        resp_kind k;
        const char *name;
    } cases[] = {{RESP_CHAT, "chat.completion JSON"}, {RESP_TEXT, "text_completion JSON"},
                 {RESP_CHUNK_CHAT, "chat stream chunk"}, {RESP_CHUNK_TEXT, "completion stream chunk"},
                 {RESP_USAGE, "usage chunk"}, {RESP_SSE, "SSE frame"}, {RESP_ERROR, "error JSON (500)"},
                 {RESP_MODELS, "/v1/models JSON"}, {RESP_TOKENIZE, "/tokenize JSON"},
                 {RESP_DETOKENIZE, "/detokenize JSON"}};
    char fp[FP_CAP];
    resp_kind chat = RESP_CHAT;
    CHECK_EQ_INT(op_response(&chat, fp, sizeof(fp)), 1);
    cJSON *v = cJSON_Parse(fp);
    CHECK_MSG(v && cJSON_GetArraySize(cJSON_GetObjectItem(v, "choices")) == 2, "%s", fp);
    cJSON_Delete(v);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) walk(cases[i].name, op_response, &cases[i].k);
}

TEST_MAIN(TEST(test_parse_walk), TEST(test_render_walk), TEST(test_encode_walk), TEST(test_response_walk))
