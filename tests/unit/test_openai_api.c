/* OpenAI API layer: a table of bad bodies (status and offending parameter
 * for each), good bodies parsed into exact struct values, and every response
 * shape parsed back with cJSON and checked key by key. */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "proteus/openai_api.h"
#include "test.h"

static const char *const SERVED[] = {"smollm"};
static const pt_oai_limits LIM = {.served_models = SERVED, .n_served_models = 1, .max_model_len = 2048,
                                  .vocab_size = 1000};

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
#define CHAT(extra) "{" MSG "," extra "}"
#define COMP(extra) "{\"prompt\":\"hi\"," extra "}"

typedef struct {
    pt_oai_kind kind;
    const char *body;
    int status;
    const char *param; /* expected e.param exactly */
} bad_case;

static const bad_case BAD_CASES[] = {
    /* the body as a whole */
    {PT_OAI_CHAT, "{", 400, ""},
    {PT_OAI_CHAT, "", 400, ""},
    {PT_OAI_CHAT, "[1,2]", 400, ""},
    {PT_OAI_CHAT, "\"hello\"", 400, ""},
    {PT_OAI_CHAT, "null", 400, ""},
    {PT_OAI_CHAT, "{" MSG "} x", 400, ""},
    {PT_OAI_CHAT, "{" MSG ",}", 400, ""},
    /* model */
    {PT_OAI_CHAT, CHAT("\"model\":\"gpt-4\""), 404, "model"},
    {PT_OAI_CHAT, CHAT("\"model\":5"), 400, "model"},
    /* messages */
    {PT_OAI_CHAT, "{}", 400, "messages"},
    {PT_OAI_CHAT, "{\"messages\":[]}", 400, "messages"},
    {PT_OAI_CHAT, "{\"messages\":\"hi\"}", 400, "messages"},
    {PT_OAI_CHAT, "{\"messages\":[1]}", 400, "messages[0]"},
    {PT_OAI_CHAT, "{\"messages\":[{\"content\":\"hi\"}]}", 400, "messages[0].role"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400, "messages[0].role"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages[0].role"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":7,\"content\":\"x\"}]}", 400, "messages[0].role"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT,
     "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
     "\"image_url\":{\"url\":\"http://x\"}}]}]}",
     400, "messages[1].content[0].type"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", 400,
     "messages[0].content[0].text"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[\"hi\"]}]}", 400, "messages[0].content[0]"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"tool_calls\":[]}]}", 400,
     "messages[0].tool_calls"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"name\":1}]}", 400, "messages[0].name"},
    /* sampling numbers */
    {PT_OAI_CHAT, CHAT("\"temperature\":\"hot\""), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":true"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":2.5"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":-0.1"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":1e400"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":NaN"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":Infinity"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":01"), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"temperature\":1."), 400, "temperature"},
    {PT_OAI_CHAT, CHAT("\"top_p\":0"), 400, "top_p"},
    {PT_OAI_CHAT, CHAT("\"top_p\":1.01"), 400, "top_p"},
    {PT_OAI_CHAT, CHAT("\"top_p\":1e-50"), 400, "top_p"},
    {PT_OAI_CHAT, CHAT("\"top_k\":-2"), 400, "top_k"},
    {PT_OAI_CHAT, CHAT("\"top_k\":1.5"), 400, "top_k"},
    {PT_OAI_CHAT, CHAT("\"min_p\":1.5"), 400, "min_p"},
    {PT_OAI_CHAT, CHAT("\"presence_penalty\":-3"), 400, "presence_penalty"},
    {PT_OAI_CHAT, CHAT("\"frequency_penalty\":2.01"), 400, "frequency_penalty"},
    {PT_OAI_CHAT, CHAT("\"repetition_penalty\":0"), 400, "repetition_penalty"},
    {PT_OAI_CHAT, CHAT("\"repetition_penalty\":2.5"), 400, "repetition_penalty"},
    /* lengths and counts */
    {PT_OAI_CHAT, CHAT("\"max_tokens\":0"), 400, "max_tokens"},
    {PT_OAI_CHAT, CHAT("\"max_tokens\":10.5"), 400, "max_tokens"},
    {PT_OAI_CHAT, CHAT("\"max_tokens\":1e30"), 400, "max_tokens"},
    {PT_OAI_CHAT, CHAT("\"max_tokens\":\"10\""), 400, "max_tokens"},
    {PT_OAI_CHAT, CHAT("\"max_completion_tokens\":4096"), 400, "max_completion_tokens"},
    {PT_OAI_CHAT, CHAT("\"n\":17"), 400, "n"},
    {PT_OAI_CHAT, CHAT("\"n\":0"), 400, "n"},
    {PT_OAI_CHAT, CHAT("\"seed\":1.5"), 400, "seed"},
    {PT_OAI_CHAT, CHAT("\"seed\":9223372036854775808"), 400, "seed"},
    {PT_OAI_CHAT, CHAT("\"seed\":-9223372036854775809"), 400, "seed"},
    {PT_OAI_CHAT, CHAT("\"seed\":1e19"), 400, "seed"},
    {PT_OAI_CHAT, CHAT("\"seed\":\"42\""), 400, "seed"},
    /* stop */
    {PT_OAI_CHAT, CHAT("\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\","
                       "\"n\",\"o\",\"p\",\"q\"]"),
     400, "stop"},
    {PT_OAI_CHAT, CHAT("\"stop\":[\"\"]"), 400, "stop[0]"},
    {PT_OAI_CHAT, CHAT("\"stop\":\"\""), 400, "stop"},
    {PT_OAI_CHAT, CHAT("\"stop\":[\"a\",3]"), 400, "stop[1]"},
    {PT_OAI_CHAT, CHAT("\"stop\":5"), 400, "stop"},
    /* stream */
    {PT_OAI_CHAT, CHAT("\"stream\":\"true\""), 400, "stream"},
    {PT_OAI_CHAT, CHAT("\"stream_options\":{\"include_usage\":true}"), 400, "stream_options"},
    {PT_OAI_CHAT, CHAT("\"stream\":false,\"stream_options\":{\"include_usage\":true}"), 400, "stream_options"},
    {PT_OAI_CHAT, CHAT("\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}"), 400,
     "stream_options.include_usage"},
    {PT_OAI_CHAT, CHAT("\"stream\":true,\"stream_options\":{\"continuous_usage_stats\":true}"), 400,
     "stream_options.continuous_usage_stats"},
    {PT_OAI_CHAT, CHAT("\"stream\":true,\"stream_options\":true"), 400, "stream_options"},
    /* logprobs */
    {PT_OAI_CHAT, CHAT("\"logprobs\":1"), 400, "logprobs"},
    {PT_OAI_CHAT, CHAT("\"logprobs\":true,\"top_logprobs\":21"), 400, "top_logprobs"},
    {PT_OAI_CHAT, CHAT("\"logprobs\":true,\"top_logprobs\":-1"), 400, "top_logprobs"},
    {PT_OAI_CHAT, CHAT("\"top_logprobs\":2"), 400, "top_logprobs"},
    {PT_OAI_COMPLETION, COMP("\"logprobs\":21"), 400, "logprobs"},
    {PT_OAI_COMPLETION, COMP("\"logprobs\":true"), 400, "logprobs"},
    {PT_OAI_COMPLETION, COMP("\"top_logprobs\":2"), 400, "top_logprobs"},
    /* logit_bias */
    {PT_OAI_CHAT, CHAT("\"logit_bias\":{\"abc\":1}"), 400, "logit_bias.abc"},
    {PT_OAI_CHAT, CHAT("\"logit_bias\":{\"-5\":1}"), 400, "logit_bias.-5"},
    {PT_OAI_CHAT, CHAT("\"logit_bias\":{\"5\":101}"), 400, "logit_bias.5"},
    {PT_OAI_CHAT, CHAT("\"logit_bias\":{\"5\":\"1\"}"), 400, "logit_bias.5"},
    {PT_OAI_CHAT, CHAT("\"logit_bias\":{\"1000\":1}"), 400, "logit_bias.1000"},
    {PT_OAI_CHAT, CHAT("\"logit_bias\":[]"), 400, "logit_bias"},
    /* unknown and unsupported fields */
    {PT_OAI_CHAT, CHAT("\"tools\":[{\"type\":\"function\"}]"), 400, "tools"},
    {PT_OAI_CHAT, CHAT("\"response_format\":{\"type\":\"json_object\"}"), 400, "response_format"},
    {PT_OAI_CHAT, CHAT("\"foo\":1"), 400, "foo"},
    {PT_OAI_CHAT, CHAT("\"foo\":null"), 400, "foo"},
    {PT_OAI_CHAT, CHAT("\"prompt\":\"x\""), 400, "prompt"},
    {PT_OAI_CHAT, CHAT("\"echo\":false"), 400, "echo"},
    {PT_OAI_CHAT, CHAT("\"user\":5"), 400, "user"},
    {PT_OAI_CHAT, CHAT("\"ignore_eos\":1"), 400, "ignore_eos"},
    /* completions prompt */
    {PT_OAI_COMPLETION, "{}", 400, "prompt"},
    {PT_OAI_COMPLETION, "{\"prompt\":\"\"}", 400, "prompt"},
    {PT_OAI_COMPLETION, "{\"prompt\":[]}", 400, "prompt"},
    {PT_OAI_COMPLETION, "{\"prompt\":[[]]}", 400, "prompt[0]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[1,-1]}", 400, "prompt[1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[1,1000]}", 400, "prompt[1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[1,2.5]}", 400, "prompt[1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[1,1e400]}", 400, "prompt[1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[[1],[2,\"x\"]]}", 400, "prompt[1][1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[\"a\",1]}", 400, "prompt[1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[\"a\",\"\"]}", 400, "prompt[1]"},
    {PT_OAI_COMPLETION, "{\"prompt\":[true]}", 400, "prompt[0]"},
    {PT_OAI_COMPLETION, "{\"prompt\":5}", 400, "prompt"},
    {PT_OAI_COMPLETION, "{" MSG "}", 400, "messages"},
    {PT_OAI_COMPLETION, COMP("\"echo\":true"), 400, "echo"},
    {PT_OAI_COMPLETION, COMP("\"suffix\":\"x\""), 400, "suffix"},
    {PT_OAI_COMPLETION, COMP("\"best_of\":3"), 400, "best_of"},
    {PT_OAI_COMPLETION, COMP("\"max_completion_tokens\":5"), 400, "max_completion_tokens"},
    /* JSON-level rules cJSON does not enforce */
    {PT_OAI_CHAT, CHAT("\"temperature\":1,\"temperature\":1"), 400, "temperature"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"role\":\"user\",\"content\":\"x\"}]}", 400,
     "messages[0].role"},
    {PT_OAI_CHAT, CHAT("\"logit_bias\":{\"5\":1,\"5\":2}"), 400, "logit_bias.5"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xf4\x90\x80\x80\"}]}", 400,
     "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xe2\x82\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\ud800b\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\nb\"}]}", 400, "messages[0].content"},
    {PT_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"f\xff\":1}", 400, ""},
    {PT_OAI_CHAT, CHAT("\"stop\":[[[[[[[[[[[[[[[[[[[[\"x\"]]]]]]]]]]]]]]]]]]]"), 400,
     "stop[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"},
};

static void test_bad_requests(void) {
    size_t n = sizeof(BAD_CASES) / sizeof(BAD_CASES[0]);
    CHECK(n >= 40);
    for (size_t i = 0; i < n; i++) {
        const bad_case *c = &BAD_CASES[i];
        pt_oai_request r;
        pt_oai_error e = {0};
        int rc = pt_oai_parse(&r, c->kind, c->body, strlen(c->body), &LIM, &e);
        CHECK_MSG(rc == PT_ERR_INVALID, "case %zu accepted: %s", i, c->body);
        if (rc != PT_ERR_INVALID) {
            pt_oai_request_free(&r);
            continue;
        }
        CHECK_MSG(e.status == c->status, "case %zu: status %d, want %d (%s)", i, e.status, c->status, e.message);
        CHECK_MSG(!strcmp(e.param, c->param), "case %zu: param '%s', want '%s' (%s)", i, e.param, c->param,
                  e.message);
        CHECK_MSG(e.message[0] && e.type, "case %zu: no message", i);
        /* The message names the parameter whenever there is one. */
        CHECK_MSG(!c->param[0] || strstr(e.message, c->param), "case %zu: message '%s' does not name '%s'", i,
                  e.message, c->param);
        /* A failed parse leaves nothing to free. */
        CHECK(r.model == NULL && r.messages == NULL && r.prompts == NULL && r.n_stop == 0 && r.logit_bias == NULL);
    }
}

/* Bodies the table cannot hold: built at run time. */
static void test_bad_requests_built(void) {
    pt_oai_request r;
    pt_oai_error e;
    /* A stop string one byte over the limit. */
    size_t cap = PT_STOP_MAX_BYTES + 200;
    char *body = malloc(cap);
    char *stop = malloc(PT_STOP_MAX_BYTES + 2);
    memset(stop, 'x', PT_STOP_MAX_BYTES + 1);
    stop[PT_STOP_MAX_BYTES + 1] = '\0';
    snprintf(body, cap, CHAT("\"stop\":[\"%s\"]"), stop);
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &LIM, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "stop[0]"));
    stop[PT_STOP_MAX_BYTES] = '\0'; /* exactly at the limit: fine */
    snprintf(body, cap, CHAT("\"stop\":[\"%s\"]"), stop);
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &LIM, &e), 0);
    CHECK(r.n_stop == 1 && strlen(r.stop[0]) == PT_STOP_MAX_BYTES);
    pt_oai_request_free(&r);
    free(stop);
    free(body);

    /* 5000 levels: beyond cJSON's own limit too; still a 400 about depth. */
    size_t depth = 5000;
    body = malloc(2 * depth + 64);
    size_t k = (size_t)sprintf(body, "{\"x\":");
    for (size_t i = 0; i < depth; i++) body[k++] = '[';
    for (size_t i = 0; i < depth; i++) body[k++] = ']';
    body[k++] = '}';
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, k, &LIM, &e), PT_ERR_INVALID);
    CHECK(e.status == 400 && strstr(e.message, "nested deeper"));
    free(body);

    /* 17 levels is one too many; 16 is accepted by the lexer (then "x" is unknown). */
    const char *d16 = "{\"x\":[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, d16, strlen(d16), &LIM, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "x") && strstr(e.message, "unsupported field"));
    const char *d17 = "{\"x\":[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, d17, strlen(d17), &LIM, &e), PT_ERR_INVALID);
    CHECK(strstr(e.message, "nested deeper"));

    /* A body with an embedded NUL byte inside a string. */
    const char nul[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\0b\"}]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, nul, sizeof(nul) - 1, &LIM, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "messages[0].content"));

    /* Too many messages. */
    size_t nm = PT_OAI_MAX_MESSAGES + 1, mcap = nm * 40 + 32;
    body = malloc(mcap);
    k = (size_t)sprintf(body, "{\"messages\":[");
    for (size_t i = 0; i < nm; i++) k += (size_t)sprintf(body + k, "%s{\"role\":\"user\",\"content\":\"x\"}", i ? "," : "");
    k += (size_t)sprintf(body + k, "]}");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, k, &LIM, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "messages"));
    free(body);

    /* Too many prompts in a batch. */
    body = malloc(PT_OAI_MAX_PROMPTS * 8 + 64);
    k = (size_t)sprintf(body, "{\"prompt\":[");
    for (int i = 0; i <= PT_OAI_MAX_PROMPTS; i++) k += (size_t)sprintf(body + k, "%s\"p\"", i ? "," : "");
    k += (size_t)sprintf(body + k, "]}");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_COMPLETION, body, k, &LIM, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "prompt"));
    free(body);
}

static void test_chat_defaults(void) {
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}";
    pt_oai_request r;
    pt_oai_error e;
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &LIM, &e), 0);
    CHECK(r.kind == PT_OAI_CHAT);
    CHECK(r.model && !strcmp(r.model, "smollm"));
    CHECK(r.n_messages == 1 && !strcmp(r.messages[0].role, "user") && !strcmp(r.messages[0].content, "Hello"));
    CHECK(r.messages[0].name == NULL);
    CHECK(r.prompts == NULL && r.n_prompts == 0);
    CHECK_EQ_INT(r.max_tokens, -1);
    CHECK_EQ_INT(r.n, 1);
    CHECK(!r.stream && !r.include_usage && !r.logprobs && r.top_logprobs == 0);
    CHECK(!r.ignore_eos && !r.include_stop && r.n_stop == 0 && !r.has_seed);
    CHECK(r.sampling.temperature == 1.0f && r.sampling.top_p == 1.0f && r.sampling.top_k == 0);
    CHECK(r.sampling.min_p == 0.0f && r.sampling.presence_penalty == 0.0f && r.sampling.frequency_penalty == 0.0f);
    CHECK(r.sampling.repetition_penalty == 1.0f && r.sampling.seed == 0);
    CHECK(r.sampling.n_logit_bias == 0 && r.n_logit_bias == 0);
    pt_oai_request_free(&r);

    /* Without served models any name is echoed; with none given, model stays NULL. */
    pt_oai_limits open = {0};
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &open, &e), 0);
    CHECK(r.model == NULL);
    pt_oai_request_free(&r);
    const char *named = "{\"model\":\"anything\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, named, strlen(named), NULL, &e), 0);
    CHECK(r.model && !strcmp(r.model, "anything"));
    pt_oai_request_free(&r);
}

static void test_chat_full(void) {
    const char *body =
        "\xEF\xBB\xBF{\"model\":\"smollm\",\"messages\":["
        "{\"role\":\"developer\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"caf\xC3\xA9\"},{\"type\":\"text\",\"text\":"
        "\"\\u00e9\\ud83d\\ude00\"}],\"name\":\"bob\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":null,\"refusal\":null},"
        "{\"role\":\"user\",\"content\":\"tab\\there\"}],"
        "\"max_tokens\":100,\"max_completion_tokens\":50,\"temperature\":0.7,\"top_p\":0.9,\"top_k\":-1,"
        "\"min_p\":0.05,\"presence_penalty\":-2,\"frequency_penalty\":2,\"repetition_penalty\":1.1,"
        "\"seed\":9223372036854775807,\"stop\":\"END\",\"n\":3.0,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"logprobs\":true,\"top_logprobs\":20,"
        "\"logit_bias\":{\"5\":-100,\"999\":100,\"007\":0.5},\"ignore_eos\":true,"
        "\"include_stop_str_in_output\":true,\"user\":\"u1\",\"tools\":null,\"response_format\":null}";
    pt_oai_request r;
    pt_oai_error e;
    int rc = pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &LIM, &e);
    CHECK_MSG(rc == 0, "%s (%s)", e.message, e.param);
    if (rc) return;
    CHECK(!strcmp(r.model, "smollm"));
    CHECK_EQ_INT(r.n_messages, 4);
    CHECK(!strcmp(r.messages[0].role, "system") && !strcmp(r.messages[0].content, "Be brief."));
    CHECK(!strcmp(r.messages[1].role, "user"));
    CHECK(!strcmp(r.messages[1].content, "caf\xC3\xA9\n\xC3\xA9\xF0\x9F\x98\x80"));
    CHECK(r.messages[1].name && !strcmp(r.messages[1].name, "bob"));
    CHECK(!strcmp(r.messages[2].role, "assistant") && !strcmp(r.messages[2].content, ""));
    CHECK(!strcmp(r.messages[3].content, "tab\there"));
    CHECK_EQ_INT(r.max_tokens, 50); /* max_completion_tokens wins */
    CHECK(r.sampling.temperature == 0.7f && r.sampling.top_p == 0.9f && r.sampling.top_k == 0);
    CHECK(r.sampling.min_p == 0.05f && r.sampling.presence_penalty == -2.0f);
    CHECK(r.sampling.frequency_penalty == 2.0f && r.sampling.repetition_penalty == 1.1f);
    CHECK(r.has_seed && r.sampling.seed == (uint64_t)INT64_MAX);
    CHECK(r.n_stop == 1 && !strcmp(r.stop[0], "END"));
    CHECK_EQ_INT(r.n, 3);
    CHECK(r.stream && r.include_usage && r.logprobs && r.top_logprobs == 20);
    CHECK(r.ignore_eos && r.include_stop);
    CHECK_EQ_INT(r.n_logit_bias, 3);
    CHECK(r.sampling.logit_bias == r.logit_bias && r.sampling.n_logit_bias == 3);
    CHECK(r.logit_bias[0].token == 5 && r.logit_bias[0].bias == -100.0f);
    CHECK(r.logit_bias[1].token == 999 && r.logit_bias[1].bias == 100.0f);
    CHECK(r.logit_bias[2].token == 7 && r.logit_bias[2].bias == 0.5f);
    pt_oai_request_free(&r);
    CHECK(r.model == NULL && r.n_messages == 0);

    /* Seeds: negative int64 wraps to uint64; exponent form; null fields are defaults. */
    const char *b2 = CHAT("\"seed\":-1,\"temperature\":null,\"stop\":[],\"max_tokens\":null,\"n\":null");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b2, strlen(b2), &LIM, &e), 0);
    CHECK(r.has_seed && r.sampling.seed == UINT64_MAX);
    CHECK(r.sampling.temperature == 1.0f && r.n_stop == 0 && r.max_tokens == -1 && r.n == 1);
    pt_oai_request_free(&r);
    const char *b3 = CHAT("\"seed\":-9223372036854775808,\"max_tokens\":2048");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b3, strlen(b3), &LIM, &e), 0);
    CHECK(r.sampling.seed == (uint64_t)INT64_MIN && r.max_tokens == 2048);
    pt_oai_request_free(&r);
    const char *b4 = CHAT("\"seed\":1.2e3,\"stream\":true,\"stream_options\":{\"include_usage\":false}");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b4, strlen(b4), &LIM, &e), 0);
    CHECK(r.sampling.seed == 1200 && r.stream && !r.include_usage);
    pt_oai_request_free(&r);
    /* A "seed" key nested elsewhere does not confuse the top-level seed. */
    const char *b5 = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"seed\":null}],\"seed\":12345678901234567}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b5, strlen(b5), &LIM, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "messages[0].seed"));
    const char *b6 = CHAT("\"seed\":12345678901234567");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b6, strlen(b6), &LIM, &e), 0);
    CHECK(r.sampling.seed == 12345678901234567ULL); /* not representable as a double */
    pt_oai_request_free(&r);
    /* logprobs false with top_logprobs null is fine; max_tokens alone is used. */
    const char *b7 = CHAT("\"logprobs\":false,\"top_logprobs\":null,\"max_tokens\":7");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b7, strlen(b7), &LIM, &e), 0);
    CHECK(!r.logprobs && r.max_tokens == 7);
    pt_oai_request_free(&r);
}

static void test_completion_prompts(void) {
    pt_oai_request r;
    pt_oai_error e;
    const char *b1 = "{\"model\":\"smollm\",\"prompt\":\"Once upon\",\"logprobs\":5,\"echo\":false,\"suffix\":\"\","
                     "\"best_of\":2,\"n\":2,\"stop\":[\"\\n\\n\",\"END\"],\"max_tokens\":16}";
    int rc = pt_oai_parse(&r, PT_OAI_COMPLETION, b1, strlen(b1), &LIM, &e);
    CHECK_MSG(rc == 0, "%s", e.message);
    if (!rc) {
        CHECK(r.kind == PT_OAI_COMPLETION && r.n_prompts == 1 && !strcmp(r.prompts[0].text, "Once upon"));
        CHECK(r.prompts[0].tokens == NULL && r.messages == NULL);
        CHECK(r.logprobs && r.top_logprobs == 5 && r.n == 2 && r.max_tokens == 16);
        CHECK(r.n_stop == 2 && !strcmp(r.stop[0], "\n\n") && !strcmp(r.stop[1], "END"));
        pt_oai_request_free(&r);
    }
    const char *b2 = "{\"prompt\":[\"a\",\"b c\"],\"logprobs\":0}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_COMPLETION, b2, strlen(b2), &LIM, &e), 0);
    CHECK(r.n_prompts == 2 && !strcmp(r.prompts[0].text, "a") && !strcmp(r.prompts[1].text, "b c"));
    CHECK(r.logprobs && r.top_logprobs == 0);
    pt_oai_request_free(&r);
    const char *b3 = "{\"prompt\":[1,2,999,0]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_COMPLETION, b3, strlen(b3), &LIM, &e), 0);
    CHECK(r.n_prompts == 1 && r.prompts[0].text == NULL && r.prompts[0].n_tokens == 4);
    CHECK(r.prompts[0].tokens[0] == 1 && r.prompts[0].tokens[2] == 999 && r.prompts[0].tokens[3] == 0);
    CHECK(!r.logprobs);
    pt_oai_request_free(&r);
    const char *b4 = "{\"prompt\":[[5],[6,7.0]]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_COMPLETION, b4, strlen(b4), &LIM, &e), 0);
    CHECK(r.n_prompts == 2 && r.prompts[0].n_tokens == 1 && r.prompts[0].tokens[0] == 5);
    CHECK(r.prompts[1].n_tokens == 2 && r.prompts[1].tokens[1] == 7);
    pt_oai_request_free(&r);
    /* Without vocab_size, ids up to INT32_MAX pass. */
    pt_oai_limits lim = LIM;
    lim.vocab_size = 0;
    const char *b5 = "{\"prompt\":[2147483647]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_COMPLETION, b5, strlen(b5), &lim, &e), 0);
    CHECK(r.prompts[0].tokens[0] == INT32_MAX);
    pt_oai_request_free(&r);
    const char *b6 = "{\"prompt\":[2147483648]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_COMPLETION, b6, strlen(b6), &lim, &e), PT_ERR_INVALID);
    CHECK(!strcmp(e.param, "prompt[0]"));
}

static void test_render(void) {
    pt_chat_template ct;
    pt_err err;
    CHECK_EQ_INT(pt_chat_template_init(&ct, NULL, "chatml", "", "<|im_end|>", &err), 0);
    const char *body = "{\"messages\":[{\"role\":\"developer\",\"content\":\"S\"},{\"role\":\"user\",\"content\":"
                       "[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}]}";
    pt_oai_request r;
    pt_oai_error e;
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &LIM, &e), 0);
    char *out = NULL;
    CHECK_EQ_INT(pt_oai_render_chat(&r, &ct, &out, &e), 0);
    CHECK_MSG(out && !strcmp(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na\nb<|im_end|>\n"
                                  "<|im_start|>assistant\n"),
              "%s", out ? out : "(null)");
    free(out);
    pt_chat_template_free(&ct);

    /* Llama 2 needs alternation: two user turns in a row are the client's error. */
    CHECK_EQ_INT(pt_chat_template_init(&ct, NULL, "llama2", "<s>", "</s>", &err), 0);
    pt_oai_request_free(&r);
    const char *b2 = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]}";
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, b2, strlen(b2), &LIM, &e), 0);
    CHECK_EQ_INT(pt_oai_render_chat(&r, &ct, &out, &e), PT_ERR_INVALID);
    CHECK(out == NULL && e.status == 400 && !strcmp(e.param, "messages"));
    pt_oai_request_free(&r);
    pt_chat_template_free(&ct);
}

static void test_tokenize_requests(void) {
    pt_oai_tokenize_request t;
    pt_oai_error e;
    const char *b1 = "{\"model\":\"smollm\",\"prompt\":\"hello\"}";
    CHECK_EQ_INT(pt_oai_parse_tokenize(&t, b1, strlen(b1), &LIM, &e), 0);
    CHECK(!strcmp(t.prompt, "hello") && t.messages == NULL && t.add_special_tokens && t.add_generation_prompt);
    CHECK(!strcmp(t.model, "smollm"));
    pt_oai_tokenize_request_free(&t);
    const char *b2 = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"add_generation_prompt\":false}";
    CHECK_EQ_INT(pt_oai_parse_tokenize(&t, b2, strlen(b2), &LIM, &e), 0);
    CHECK(t.prompt == NULL && t.n_messages == 1 && !t.add_special_tokens && !t.add_generation_prompt);
    pt_oai_tokenize_request_free(&t);
    const char *b3 = "{\"prompt\":\"\",\"add_special_tokens\":false}";
    CHECK_EQ_INT(pt_oai_parse_tokenize(&t, b3, strlen(b3), &LIM, &e), 0);
    CHECK(t.prompt && t.prompt[0] == '\0' && !t.add_special_tokens);
    pt_oai_tokenize_request_free(&t);
    const char *bad[][2] = {
        {"{}", "prompt"},
        {"{\"prompt\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "messages"},
        {"{\"prompt\":1}", "prompt"},
        {"{\"prompt\":\"a\",\"add_special_tokens\":\"no\"}", "add_special_tokens"},
        {"{\"prompt\":\"a\",\"return_token_strs\":true}", "return_token_strs"},
        {"{\"messages\":[]}", "messages"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ_INT(pt_oai_parse_tokenize(&t, bad[i][0], strlen(bad[i][0]), &LIM, &e), PT_ERR_INVALID);
        CHECK_MSG(!strcmp(e.param, bad[i][1]), "tokenize case %zu: '%s'", i, e.param);
    }
    const char *b4 = "{\"model\":\"other\",\"prompt\":\"a\"}";
    CHECK_EQ_INT(pt_oai_parse_tokenize(&t, b4, strlen(b4), &LIM, &e), PT_ERR_INVALID);
    CHECK(e.status == 404 && !strcmp(e.code, "model_not_found"));

    pt_oai_detokenize_request d;
    const char *d1 = "{\"tokens\":[1,2,999]}";
    CHECK_EQ_INT(pt_oai_parse_detokenize(&d, d1, strlen(d1), &LIM, &e), 0);
    CHECK(d.n_tokens == 3 && d.tokens[2] == 999 && !strcmp(d.model, "smollm"));
    pt_oai_detokenize_request_free(&d);
    const char *d2 = "{\"tokens\":[]}";
    CHECK_EQ_INT(pt_oai_parse_detokenize(&d, d2, strlen(d2), &LIM, &e), 0);
    CHECK(d.n_tokens == 0);
    pt_oai_detokenize_request_free(&d);
    const char *dbad[][2] = {{"{}", "tokens"}, {"{\"tokens\":[1,-1]}", "tokens[1]"},
                             {"{\"tokens\":[1000]}", "tokens[0]"}, {"{\"tokens\":\"1 2\"}", "tokens"},
                             {"{\"tokens\":[1],\"x\":1}", "x"}};
    for (size_t i = 0; i < sizeof(dbad) / sizeof(dbad[0]); i++) {
        CHECK_EQ_INT(pt_oai_parse_detokenize(&d, dbad[i][0], strlen(dbad[i][0]), &LIM, &e), PT_ERR_INVALID);
        CHECK_MSG(!strcmp(e.param, dbad[i][1]), "detokenize case %zu: '%s'", i, e.param);
    }
}

/* ---------------------------------------------------------------------------
 * Responses. */

static cJSON *parse_json(const char *s) {
    cJSON *v = s ? cJSON_Parse(s) : NULL;
    CHECK_MSG(v != NULL, "output is not JSON: %s", s ? s : "(null)");
    return v;
}

static const cJSON *get(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static bool is_str(const cJSON *v, const char *s) {
    return cJSON_IsString(v) && !strcmp(v->valuestring, s);
}

static bool is_num(const cJSON *v, double x) {
    return cJSON_IsNumber(v) && v->valuedouble == x;
}

static size_t n_keys(const cJSON *o) {
    size_t n = 0;
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next) n++;
    return n;
}

static void test_json_string(void) {
    struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"plain", 5, "\"plain\""},
        {"q\"b\\n\n\t\x01", 8, "\"q\\\"b\\\\n\\n\\t\\u0001\""},
        {"a\0b", 3, "\"a\\u0000b\""},
        {"caf\xC3\xA9 \xF0\x9F\x98\x80", 10, "\"caf\xC3\xA9 \xF0\x9F\x98\x80\""},
        {"a\xFF" "b", 3, "\"a\xEF\xBF\xBD" "b\""},
        {"\xE2\x82", 2, "\"\xEF\xBF\xBD\""},                       /* truncated: one subpart */
        {"\xE2\x82" "x", 3, "\"\xEF\xBF\xBDx\""},
        {"\xF0\x80\x80", 3, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\""}, /* overlong lead: three */
        {"\xED\xA0\x80", 3, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\""}, /* surrogate: three */
        {"\xC0\xAF", 2, "\"\xEF\xBF\xBD\xEF\xBF\xBD\""},
        {"\xF4\x90\x80\x80", 4, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\""},
        {"\xF4\x8F\xBF\xBF", 4, "\"\xF4\x8F\xBF\xBF\""},            /* U+10FFFF is fine */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n;
        char *s = pt_oai_json_string(cases[i].in, cases[i].len, &n);
        CHECK_MSG(s && !strcmp(s, cases[i].want) && n == strlen(s), "case %zu: %s", i, s ? s : "(null)");
        CHECK(s && pt_oai_utf8_valid_prefix(s, n) == n);
        free(s);
    }
    CHECK_EQ_INT(pt_oai_utf8_valid_prefix("ab\xC3\xA9\xE2\x82", 6), 4);
    CHECK_EQ_INT(pt_oai_utf8_valid_prefix("\x80", 1), 0);
}

static void test_chat_completion_json(void) {
    pt_oai_lp_entry top0[2] = {{"Hi", 2, -0.1f}, {"Hello", 5, -2.5f}};
    pt_oai_lp_entry top1[1] = {{"\xC3", 1, -INFINITY}};
    pt_oai_token_lp lp[2] = {{{"Hi", 2, -0.1f}, top0, 2}, {{"\xC3", 1, -INFINITY}, top1, 1}};
    pt_oai_choice ch[2] = {
        {.index = 0, .text = "Hello there", .len = 11, .finish = PT_OAI_FINISH_STOP},
        {.index = 1, .text = "Hi\xC3", .len = 3, .finish = PT_OAI_FINISH_LENGTH, .has_logprobs = true, .lp = lp,
         .n_lp = 2},
    };
    char id[PT_OAI_ID_MAX];
    pt_oai_make_id(id, PT_OAI_CHAT, 0x0123456789abcdefULL, 42);
    CHECK(!strcmp(id, "chatcmpl-0123456789abcdef000000000000002a"));
    pt_oai_meta m = {id, 1700000000, "smollm"};
    pt_oai_usage u = {12, 7};
    char *s = pt_oai_chat_completion_json(&m, ch, 2, &u);
    cJSON *v = parse_json(s);
    CHECK(strstr(s, "\"logprob\":-0.1,")); /* shortest float text */
    CHECK(is_str(get(v, "id"), id) && is_str(get(v, "object"), "chat.completion"));
    CHECK(is_num(get(v, "created"), 1700000000) && is_str(get(v, "model"), "smollm"));
    CHECK(n_keys(v) == 6);
    const cJSON *choices = get(v, "choices");
    CHECK(cJSON_GetArraySize(choices) == 2);
    const cJSON *c0 = cJSON_GetArrayItem(choices, 0), *c1 = cJSON_GetArrayItem(choices, 1);
    CHECK(n_keys(c0) == 4 && is_num(get(c0, "index"), 0));
    CHECK(is_str(get(get(c0, "message"), "role"), "assistant") && n_keys(get(c0, "message")) == 2);
    CHECK(is_str(get(get(c0, "message"), "content"), "Hello there"));
    CHECK(cJSON_IsNull(get(c0, "logprobs")) && is_str(get(c0, "finish_reason"), "stop"));
    CHECK(is_num(get(c1, "index"), 1) && is_str(get(c1, "finish_reason"), "length"));
    CHECK(is_str(get(get(c1, "message"), "content"), "Hi\xEF\xBF\xBD"));
    const cJSON *content = get(get(c1, "logprobs"), "content");
    CHECK(n_keys(get(c1, "logprobs")) == 1 && cJSON_GetArraySize(content) == 2);
    const cJSON *t0 = cJSON_GetArrayItem(content, 0), *t1 = cJSON_GetArrayItem(content, 1);
    CHECK(n_keys(t0) == 4 && is_str(get(t0, "token"), "Hi"));
    CHECK(cJSON_IsNumber(get(t0, "logprob")) && (float)get(t0, "logprob")->valuedouble == -0.1f);
    const cJSON *bytes = get(t0, "bytes");
    CHECK(cJSON_GetArraySize(bytes) == 2 && is_num(cJSON_GetArrayItem(bytes, 0), 'H') &&
          is_num(cJSON_GetArrayItem(bytes, 1), 'i'));
    const cJSON *tops = get(t0, "top_logprobs");
    CHECK(cJSON_GetArraySize(tops) == 2);
    const cJSON *tp1 = cJSON_GetArrayItem(tops, 1);
    CHECK(n_keys(tp1) == 3 && is_str(get(tp1, "token"), "Hello") && is_num(get(tp1, "logprob"), -2.5));
    CHECK(cJSON_GetArraySize(get(tp1, "bytes")) == 5);
    /* A lone byte: U+FFFD as text, the real byte in bytes, -inf as -9999. */
    CHECK(is_str(get(t1, "token"), "\xEF\xBF\xBD") && is_num(get(t1, "logprob"), -9999));
    CHECK(cJSON_GetArraySize(get(t1, "bytes")) == 1 && is_num(cJSON_GetArrayItem(get(t1, "bytes"), 0), 0xC3));
    const cJSON *usage = get(v, "usage");
    CHECK(n_keys(usage) == 3 && is_num(get(usage, "prompt_tokens"), 12));
    CHECK(is_num(get(usage, "completion_tokens"), 7) && is_num(get(usage, "total_tokens"), 19));
    cJSON_Delete(v);
    free(s);
}

static void test_text_completion_json(void) {
    /* "a" (1 char), "é" (1 char, 2 bytes), half of "€" (1 U+FFFD). */
    pt_oai_lp_entry top0[3] = {{"a", 1, -0.25f}, {"b", 1, -1.5f}, {"\n", 1, -3.0f}};
    pt_oai_lp_entry top2[2] = {{"\xE2", 1, -0.5f}, {"\xE3", 1, -0.75f}}; /* both become U+FFFD: one key */
    pt_oai_token_lp lp[3] = {{{"a", 1, -0.25f}, top0, 3}, {{"\xC3\xA9", 2, -1.0f}, NULL, 0},
                             {{"\xE2", 1, -0.5f}, top2, 2}};
    pt_oai_choice ch = {.index = 0, .text = "a\xC3\xA9\xE2", .len = 4, .finish = PT_OAI_FINISH_LENGTH,
                        .has_logprobs = true, .lp = lp, .n_lp = 3, .text_offset_base = 10};
    char id[PT_OAI_ID_MAX];
    pt_oai_make_id(id, PT_OAI_COMPLETION, 1, 2);
    CHECK(!strncmp(id, "cmpl-", 5) && strlen(id) == 5 + 32);
    pt_oai_meta m = {id, 5, "smollm"};
    pt_oai_usage u = {3, 3};
    char *s = pt_oai_text_completion_json(&m, &ch, 1, &u);
    cJSON *v = parse_json(s);
    CHECK(is_str(get(v, "object"), "text_completion") && is_str(get(v, "id"), id) && n_keys(v) == 6);
    const cJSON *c0 = cJSON_GetArrayItem(get(v, "choices"), 0);
    CHECK(n_keys(c0) == 4 && is_str(get(c0, "text"), "a\xC3\xA9\xEF\xBF\xBD"));
    CHECK(is_str(get(c0, "finish_reason"), "length"));
    const cJSON *lpj = get(c0, "logprobs");
    CHECK(n_keys(lpj) == 4);
    const cJSON *toks = get(lpj, "tokens"), *tlp = get(lpj, "token_logprobs"), *tops = get(lpj, "top_logprobs"),
                *offs = get(lpj, "text_offset");
    CHECK(cJSON_GetArraySize(toks) == 3 && is_str(cJSON_GetArrayItem(toks, 1), "\xC3\xA9"));
    CHECK(is_num(cJSON_GetArrayItem(tlp, 0), -0.25) && is_num(cJSON_GetArrayItem(tlp, 1), -1.0));
    CHECK(is_num(cJSON_GetArrayItem(offs, 0), 10) && is_num(cJSON_GetArrayItem(offs, 1), 11) &&
          is_num(cJSON_GetArrayItem(offs, 2), 12));
    const cJSON *d0 = cJSON_GetArrayItem(tops, 0);
    CHECK(n_keys(d0) == 3 && is_num(get(d0, "a"), -0.25) && is_num(get(d0, "b"), -1.5) && is_num(get(d0, "\n"), -3));
    CHECK(cJSON_IsNull(cJSON_GetArrayItem(tops, 1)));
    const cJSON *d2 = cJSON_GetArrayItem(tops, 2);
    CHECK(n_keys(d2) == 1 && is_num(get(d2, "\xEF\xBF\xBD"), -0.5));
    CHECK(is_num(get(get(v, "usage"), "total_tokens"), 6));
    cJSON_Delete(v);
    free(s);

    /* No logprobs, no usage. */
    pt_oai_choice plain = {.index = 2, .text = "x", .len = 1, .finish = PT_OAI_FINISH_STOP};
    s = pt_oai_text_completion_json(&m, &plain, 1, NULL);
    v = parse_json(s);
    CHECK(get(v, "usage") == NULL && n_keys(v) == 5);
    c0 = cJSON_GetArrayItem(get(v, "choices"), 0);
    CHECK(is_num(get(c0, "index"), 2) && cJSON_IsNull(get(c0, "logprobs")) && is_str(get(c0, "finish_reason"), "stop"));
    cJSON_Delete(v);
    free(s);
}

/* Checks one SSE frame and returns its parsed JSON. */
static cJSON *sse_parse(char *json) {
    size_t len;
    char *frame = pt_oai_sse_frame(json, &len);
    CHECK(frame && len == strlen(frame) && !strncmp(frame, "data: ", 6));
    CHECK(len >= 8 && !strcmp(frame + len - 2, "\n\n"));
    CHECK(memchr(frame, '\n', len - 2) == NULL); /* one line */
    cJSON *v = parse_json(frame + 6);
    free(frame);
    free(json);
    return v;
}

/* The sequence a server sends for n = 2 with include_usage: per choice a role
 * chunk, content chunks and a finish chunk; then the usage chunk. */
static void test_chat_stream(void) {
    char id[PT_OAI_ID_MAX];
    pt_oai_make_id(id, PT_OAI_CHAT, 7, 8);
    pt_oai_meta m = {id, 1700000123, "smollm"};
    const char *texts[2][2] = {{"Hel", "lo"}, {"Hi", "\n!"}};
    cJSON *chunks[16];
    size_t nc = 0;
    for (uint32_t i = 0; i < 2; i++) {
        pt_oai_choice first = {.index = i, .role = true, .text = "", .len = 0};
        chunks[nc++] = sse_parse(pt_oai_chunk_json(&m, PT_OAI_CHAT, &first, true));
        for (int k = 0; k < 2; k++) {
            pt_oai_choice d = {.index = i, .text = texts[i][k], .len = strlen(texts[i][k])};
            chunks[nc++] = sse_parse(pt_oai_chunk_json(&m, PT_OAI_CHAT, &d, true));
        }
        pt_oai_choice fin = {.index = i, .finish = i ? PT_OAI_FINISH_LENGTH : PT_OAI_FINISH_STOP};
        chunks[nc++] = sse_parse(pt_oai_chunk_json(&m, PT_OAI_CHAT, &fin, true));
    }
    pt_oai_usage u = {9, 4};
    char *last = pt_oai_usage_chunk_json(&m, PT_OAI_CHAT, &u);
    chunks[nc++] = sse_parse(last);
    CHECK_EQ_INT(nc, 9);
    for (size_t k = 0; k < nc; k++) {
        cJSON *c = chunks[k];
        CHECK(is_str(get(c, "id"), id) && is_num(get(c, "created"), 1700000123));
        CHECK(is_str(get(c, "object"), "chat.completion.chunk") && is_str(get(c, "model"), "smollm"));
        CHECK(n_keys(c) == 6);
        if (k == nc - 1) break;
        CHECK(cJSON_IsNull(get(c, "usage")));
        const cJSON *choices = get(c, "choices");
        CHECK(cJSON_GetArraySize(choices) == 1);
        const cJSON *ch = cJSON_GetArrayItem(choices, 0), *delta = get(ch, "delta");
        size_t i = k / 4, step = k % 4;
        CHECK(n_keys(ch) == 4 && is_num(get(ch, "index"), (double)i) && cJSON_IsNull(get(ch, "logprobs")));
        if (step == 0) {
            CHECK(n_keys(delta) == 2 && is_str(get(delta, "role"), "assistant") && is_str(get(delta, "content"), ""));
            CHECK(cJSON_IsNull(get(ch, "finish_reason")));
        } else if (step < 3) {
            CHECK(n_keys(delta) == 1 && is_str(get(delta, "content"), texts[i][step - 1]));
            CHECK(cJSON_IsNull(get(ch, "finish_reason")));
        } else {
            CHECK(cJSON_IsObject(delta) && n_keys(delta) == 0);
            CHECK(is_str(get(ch, "finish_reason"), i ? "length" : "stop"));
        }
    }
    cJSON *fin = chunks[nc - 1];
    CHECK(cJSON_IsArray(get(fin, "choices")) && cJSON_GetArraySize(get(fin, "choices")) == 0);
    CHECK(is_num(get(get(fin, "usage"), "prompt_tokens"), 9) && is_num(get(get(fin, "usage"), "total_tokens"), 13));
    for (size_t k = 0; k < nc; k++) cJSON_Delete(chunks[k]);
    CHECK(!strcmp(PT_OAI_SSE_DONE, "data: [DONE]\n\n"));

    /* Without include_usage there is no "usage" key; a chunk may carry logprobs. */
    pt_oai_lp_entry t = {"x", 1, -1.0f};
    pt_oai_token_lp lp = {t, NULL, 0};
    pt_oai_choice d = {.index = 0, .text = "x", .len = 1, .has_logprobs = true, .lp = &lp, .n_lp = 1};
    cJSON *c = sse_parse(pt_oai_chunk_json(&m, PT_OAI_CHAT, &d, false));
    CHECK(get(c, "usage") == NULL && n_keys(c) == 5);
    const cJSON *content = get(get(cJSON_GetArrayItem(get(c, "choices"), 0), "logprobs"), "content");
    CHECK(cJSON_GetArraySize(content) == 1 && cJSON_GetArraySize(get(cJSON_GetArrayItem(content, 0), "top_logprobs")) == 0);
    cJSON_Delete(c);
}

static void test_completion_stream(void) {
    char id[PT_OAI_ID_MAX];
    pt_oai_make_id(id, PT_OAI_COMPLETION, 1, 1);
    pt_oai_meta m = {id, 3, "smollm"};
    pt_oai_lp_entry t = {"b", 1, -0.5f};
    pt_oai_token_lp lp = {t, &t, 1};
    pt_oai_choice d = {.index = 1, .text = "b", .len = 1, .has_logprobs = true, .lp = &lp, .n_lp = 1,
                       .text_offset_base = 4};
    cJSON *c = sse_parse(pt_oai_chunk_json(&m, PT_OAI_COMPLETION, &d, true));
    CHECK(is_str(get(c, "object"), "text_completion") && cJSON_IsNull(get(c, "usage")));
    const cJSON *ch = cJSON_GetArrayItem(get(c, "choices"), 0);
    CHECK(n_keys(ch) == 4 && is_num(get(ch, "index"), 1) && is_str(get(ch, "text"), "b"));
    CHECK(cJSON_IsNull(get(ch, "finish_reason")));
    CHECK(is_num(cJSON_GetArrayItem(get(get(ch, "logprobs"), "text_offset"), 0), 4));
    cJSON_Delete(c);
    pt_oai_choice fin = {.index = 1, .finish = PT_OAI_FINISH_STOP};
    c = sse_parse(pt_oai_chunk_json(&m, PT_OAI_COMPLETION, &fin, false));
    ch = cJSON_GetArrayItem(get(c, "choices"), 0);
    CHECK(is_str(get(ch, "text"), "") && is_str(get(ch, "finish_reason"), "stop"));
    cJSON_Delete(c);
    pt_oai_usage u = {1, 2};
    c = sse_parse(pt_oai_usage_chunk_json(&m, PT_OAI_COMPLETION, &u));
    CHECK(is_str(get(c, "object"), "text_completion") && cJSON_GetArraySize(get(c, "choices")) == 0);
    CHECK(is_num(get(get(c, "usage"), "total_tokens"), 3));
    cJSON_Delete(c);
}

static void test_error_json(void) {
    pt_oai_error e;
    pt_oai_request r;
    const char *body = CHAT("\"model\":\"gpt-4\"");
    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, body, strlen(body), &LIM, &e), PT_ERR_INVALID);
    char *s = pt_oai_error_json(&e);
    cJSON *v = parse_json(s);
    const cJSON *err = get(v, "error");
    CHECK(n_keys(v) == 1 && n_keys(err) == 4);
    CHECK(is_str(get(err, "type"), "not_found_error") && is_str(get(err, "param"), "model"));
    CHECK(is_str(get(err, "code"), "model_not_found"));
    CHECK(cJSON_IsString(get(err, "message")) && strstr(get(err, "message")->valuestring, "gpt-4"));
    cJSON_Delete(v);
    free(s);

    CHECK_EQ_INT(pt_oai_parse(&r, PT_OAI_CHAT, "[]", 2, &LIM, &e), PT_ERR_INVALID);
    s = pt_oai_error_json(&e);
    v = parse_json(s);
    err = get(v, "error");
    CHECK(is_str(get(err, "type"), "invalid_request_error") && cJSON_IsNull(get(err, "param")));
    CHECK(is_num(get(err, "code"), 400));
    cJSON_Delete(v);
    free(s);

    /* Messages may quote client bytes: still valid UTF-8 JSON. */
    pt_oai_error_set(&e, 503, "server_error", NULL, NULL, "busy \xFF \"x\"");
    s = pt_oai_error_json(&e);
    v = parse_json(s);
    CHECK(is_str(get(get(v, "error"), "message"), "busy \xEF\xBF\xBD \"x\""));
    CHECK(is_num(get(get(v, "error"), "code"), 503));
    cJSON_Delete(v);
    free(s);
}

static void test_models_tokenize_json(void) {
    const char *ids[] = {"smollm", "alias"};
    char *s = pt_oai_models_json(ids, 2, 1700000000, 2048);
    cJSON *v = parse_json(s);
    CHECK(n_keys(v) == 2 && is_str(get(v, "object"), "list") && cJSON_GetArraySize(get(v, "data")) == 2);
    const cJSON *m1 = cJSON_GetArrayItem(get(v, "data"), 1);
    CHECK(n_keys(m1) == 5 && is_str(get(m1, "id"), "alias") && is_str(get(m1, "object"), "model"));
    CHECK(is_num(get(m1, "created"), 1700000000) && is_str(get(m1, "owned_by"), "proteus"));
    CHECK(is_num(get(m1, "max_model_len"), 2048));
    cJSON_Delete(v);
    free(s);

    int32_t toks[3] = {1, 50256, 0};
    s = pt_oai_tokenize_json(toks, 3, 4096);
    v = parse_json(s);
    CHECK(n_keys(v) == 3 && is_num(get(v, "count"), 3) && is_num(get(v, "max_model_len"), 4096));
    CHECK(cJSON_GetArraySize(get(v, "tokens")) == 3 && is_num(cJSON_GetArrayItem(get(v, "tokens"), 1), 50256));
    cJSON_Delete(v);
    free(s);
    s = pt_oai_tokenize_json(NULL, 0, 4096);
    v = parse_json(s);
    CHECK(is_num(get(v, "count"), 0) && cJSON_GetArraySize(get(v, "tokens")) == 0);
    cJSON_Delete(v);
    free(s);

    s = pt_oai_detokenize_json("hi \xF0\x9F", 5);
    v = parse_json(s);
    CHECK(n_keys(v) == 1 && is_str(get(v, "prompt"), "hi \xEF\xBF\xBD"));
    cJSON_Delete(v);
    free(s);
}

/* Every proper prefix of a good body is malformed (400), and every one-byte
 * corruption either parses or fails with a complete error: under ASan this
 * is also the check that no input reads out of bounds. */
static void test_prefixes_and_corruptions(void) {
    const char *bodies[] = {
        "{\"model\":\"smollm\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"h\xC3\xA9\"}]}],"
        "\"seed\":-12,\"stop\":[\"a\",\"b\"],\"logit_bias\":{\"5\":1.5},\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"temperature\":0.5}",
        "{\"prompt\":[[1,2],[3]],\"logprobs\":3,\"max_tokens\":9,\"n\":2}",
    };
    pt_oai_kind kinds[] = {PT_OAI_CHAT, PT_OAI_COMPLETION};
    for (size_t b = 0; b < 2; b++) {
        size_t len = strlen(bodies[b]);
        char *buf = malloc(len);
        pt_oai_request r;
        pt_oai_error e;
        CHECK_EQ_INT(pt_oai_parse(&r, kinds[b], bodies[b], len, &LIM, &e), 0);
        pt_oai_request_free(&r);
        for (size_t cut = 0; cut < len; cut++) {
            memcpy(buf, bodies[b], cut); /* exactly cut bytes: no terminator to lean on */
            int rc = pt_oai_parse(&r, kinds[b], buf, cut, &LIM, &e);
            CHECK_MSG(rc == PT_ERR_INVALID && e.status == 400, "prefix %zu of body %zu accepted", cut, b);
            if (rc == 0) pt_oai_request_free(&r);
        }
        const unsigned char subst[] = {0x00, '"', '\\', '{', ']', ',', '9', 0xFF, 0xC3};
        for (size_t at = 0; at < len; at++) {
            for (size_t k = 0; k < sizeof(subst); k++) {
                memcpy(buf, bodies[b], len);
                buf[at] = (char)subst[k];
                if (pt_oai_parse(&r, kinds[b], buf, len, &LIM, &e) == 0) {
                    pt_oai_request_free(&r);
                    continue;
                }
                CHECK_MSG((e.status == 400 || e.status == 404) && e.message[0] && e.type,
                          "corruption at %zu: status %d", at, e.status);
                char *j = pt_oai_error_json(&e);
                cJSON *v = j ? cJSON_Parse(j) : NULL;
                CHECK_MSG(v && cJSON_IsObject(cJSON_GetObjectItem(v, "error")), "error body: %s", j ? j : "(null)");
                cJSON_Delete(v);
                free(j);
            }
        }
        free(buf);
    }
}

TEST_MAIN(TEST(test_bad_requests), TEST(test_bad_requests_built), TEST(test_chat_defaults), TEST(test_chat_full),
          TEST(test_completion_prompts), TEST(test_render), TEST(test_tokenize_requests), TEST(test_json_string),
          TEST(test_chat_completion_json), TEST(test_text_completion_json), TEST(test_chat_stream),
          TEST(test_completion_stream), TEST(test_error_json), TEST(test_models_tokenize_json),
          TEST(test_prefixes_and_corruptions))
