/* The OpenAI-compatible API as pure functions: request bodies in, C structs
 * out; results in, JSON text out. No sockets, no threads, no model: the
 * server (src/server) reads the body, calls pt_oai_parse, renders and
 * tokenizes, runs the request, and sends what the pt_oai_*_json functions
 * return. Every function here is safe to call from any thread at once.
 *
 * Parsing is strict, as the issue asks: a field this server does not
 * implement is rejected with 400 rather than silently ignored, so a client
 * never believes it got tools, JSON mode or beam search when it did not.
 * Exceptions, all harmless: "user" (accepted, ignored), and any known OpenAI
 * field given as JSON null (null means "not given" for every field).
 *
 * Rules beyond the per-field ranges (see pt_oai_parse):
 *   - the body must be one JSON object, strict RFC 8259 (no NaN/Infinity, no
 *     leading zeros, no raw control characters in strings), valid UTF-8,
 *     nested at most PT_OAI_MAX_DEPTH deep, no "\u0000" in strings, and no
 *     key repeated within one object;
 *   - numbers must be finite (1e400 is rejected, not read as infinity);
 *     integer fields accept 3 and 3.0 but not 3.5.
 *
 * Errors: every failure fills a pt_oai_error with the HTTP status, the
 * OpenAI error type, the offending parameter as a path into the body
 * ("messages[2].content", "stop[0]", "temperature"; "" when the body as a
 * whole is at fault, sent as null) and a message that names it.
 *
 * Output strings are always valid UTF-8: text is emitted through
 * pt_oai_json_string, which replaces every ill-formed sequence with U+FFFD
 * (one per maximal ill-formed subpart, as Unicode recommends) and escapes
 * control characters, so an SSE frame is always one line. */
#ifndef PROTEUS_OPENAI_API_H
#define PROTEUS_OPENAI_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/chat_template.h"
#include "proteus/sampler.h"
#include "proteus/stop_matcher.h"

/* Limits chosen here (the OpenAI API documents n <= 128 and logit_bias <= 300
 * entries; vLLM sets none). They bound the work one request can ask for. */
#define PT_OAI_MAX_N 16            /* choices per prompt */
#define PT_OAI_MAX_PROMPTS 64      /* completions: prompts in one batch */
#define PT_OAI_MAX_MESSAGES 4096   /* chat: messages in one request */
#define PT_OAI_MAX_LOGIT_BIAS 1024 /* logit_bias entries */
#define PT_OAI_MAX_DEPTH 16        /* JSON nesting (a chat body needs 5) */
#define PT_OAI_MAX_LOGPROBS PT_LOGPROBS_MAX /* top_logprobs / completions logprobs: 0..20 */
#define PT_OAI_ID_MAX 48           /* room for "chatcmpl-" + 32 hex digits + NUL */

typedef enum {
    PT_OAI_CHAT = 0,       /* POST /v1/chat/completions */
    PT_OAI_COMPLETION = 1, /* POST /v1/completions */
} pt_oai_kind;

/* What a request may ask for, from the server's configuration. */
typedef struct {
    const char *const *served_models; /* (n_served_models) names a request may give as "model";
                                         the first is used when a request gives none */
    size_t n_served_models;           /* 0: any name is accepted and echoed back */
    size_t max_model_len;             /* context length; max_tokens above it is 400. 0 = unchecked */
    size_t vocab_size;                /* token ids (prompt arrays, logit_bias, /detokenize) must be
                                         below it. 0 = unchecked: the caller validates */
} pt_oai_limits;

/* An error as the API reports it. type and code point at static strings. */
typedef struct {
    int status;        /* HTTP status: 400, 404, 413, 500, ... */
    const char *type;  /* "invalid_request_error", "not_found_error", "server_error", ... */
    const char *code;  /* a string code such as "model_not_found", or NULL: the body's "code"
                          is then the status number (as vLLM sends it) */
    char param[128];   /* path of the offending field; "" = none (JSON null) */
    char message[512];
} pt_oai_error;

/* printf-style fill; returns PT_ERR_INVALID so parsers can `return pt_oai_error_set(...)`.
 * param may be NULL. e may be NULL. */
int pt_oai_error_set(pt_oai_error *e, int status, const char *type, const char *code, const char *param,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* One chat message. role is normalized: "developer" becomes "system". content
 * is the string, or the text parts joined by "\n" (as vLLM joins them). */
typedef struct {
    char *role;    /* "system", "user" or "assistant" */
    char *content; /* NUL-terminated; never NULL ("" for an assistant message with null content) */
    char *name;    /* or NULL; kept for the caller, the built-in templates ignore it */
} pt_oai_message;

/* One completions prompt: text, or token ids given directly. */
typedef struct {
    char *text;      /* NUL-terminated, non-empty; NULL when tokens are given */
    int32_t *tokens; /* (n_tokens) non-empty, each in [0, vocab_size); NULL when text is given */
    size_t n_tokens;
} pt_oai_prompt;

/* A parsed, validated request. It owns every pointer in it; pt_oai_request_free. */
typedef struct {
    pt_oai_kind kind;
    char *model;                 /* as given, or served_models[0] when omitted (NULL when neither) */
    pt_oai_message *messages;    /* (n_messages) chat: at least one */
    size_t n_messages;
    pt_oai_prompt *prompts;      /* (n_prompts) completions: 1..PT_OAI_MAX_PROMPTS; each runs n times */
    size_t n_prompts;

    int64_t max_tokens;          /* >= 1; -1 = not given: up to the end of the context */
    int32_t n;                   /* 1..PT_OAI_MAX_N choices per prompt (default 1) */
    bool stream;                 /* default false */
    bool include_usage;          /* stream_options.include_usage; only true when streaming */
    bool logprobs;               /* chat: logprobs; completions: "logprobs" given (0..20) */
    int32_t top_logprobs;        /* chat: top_logprobs; completions: the logprobs integer. 0..20 */
    bool ignore_eos;             /* vLLM extension: keep going past end-of-sequence tokens */
    bool include_stop;           /* vLLM include_stop_str_in_output */
    bool no_cache_prompt;        /* llama.cpp's cache_prompt: false (opts out of prefix caching) */
    char *cache_salt;            /* vLLM's cache_salt: NULL, or shares cached prefixes only with its equals */

    char *stop[PT_STOP_MAX_STRINGS]; /* (n_stop) each non-empty, <= PT_STOP_MAX_BYTES bytes */
    size_t n_stop;

    /* temperature (default 1, as OpenAI), top_p 1, top_k 0 (off; -1 is
     * accepted and stored as 0), min_p 0, presence/frequency penalties 0,
     * repetition_penalty 1. seed is the request's when has_seed; else 0, and
     * the caller draws one. logit_bias points at logit_bias below. */
    pt_sampler_params sampling;
    bool has_seed;
    pt_logit_bias *logit_bias;   /* (n_logit_bias) owned; ids checked against vocab_size when set */
    size_t n_logit_bias;
} pt_oai_request;

/* Parses and validates body[0, len) as a `kind` request. On success fills *r
 * (free with pt_oai_request_free) and returns 0. On failure returns
 * PT_ERR_INVALID, fills *e, and *r needs no freeing (it is zeroed).
 *
 * Fields and ranges (null = not given, for every optional field):
 *   model                 string; must be one of lim->served_models (else 404
 *                         model_not_found); omitted: served_models[0]
 *   messages (chat)       non-empty array of {role, content, name?}; role system |
 *                         user | assistant | developer; content a string or an
 *                         array of {"type":"text","text":...} parts (null only
 *                         for assistant). "tool"/"function" roles, tool_calls and
 *                         non-text parts are 400.
 *   prompt (completions)  string | [string] | [int] | [[int]]; nothing empty
 *   max_tokens, max_completion_tokens (chat; wins over max_tokens)
 *                         integer >= 1 (<= max_model_len when set)
 *   temperature [0, 2]    top_p (0, 1]    top_k -1 or >= 0    min_p [0, 1]
 *   presence_penalty, frequency_penalty [-2, 2]    repetition_penalty (0, 2]
 *   seed                  any int64 (exact, read from the text); stored as uint64
 *   stop                  string or array of <= 16 non-empty strings
 *   n                     [1, PT_OAI_MAX_N]
 *   stream                bool; stream_options {include_usage: bool} only with stream
 *   logprobs              chat: bool, with top_logprobs [0, 20] (needs logprobs);
 *                         completions: integer [0, 20]
 *   logit_bias            {"<token id>": number in [-100, 100]}, <= 1024 entries
 *   ignore_eos, include_stop_str_in_output   bool (vLLM extensions)
 *   cache_prompt          bool (llama.cpp); false: no prefix caching for it
 *   cache_salt            non-empty string of <= 256 bytes (vLLM)
 *   user                  string, ignored
 *   echo (completions)    only false; suffix only ""; best_of only equal to n
 * Anything else is 400 "unsupported field". */
int pt_oai_parse(pt_oai_request *r, pt_oai_kind kind, const char *body, size_t len, const pt_oai_limits *lim,
                 pt_oai_error *e);
void pt_oai_request_free(pt_oai_request *r);

/* Renders the chat messages with the model's template, ending with the
 * opening of the assistant's turn. *out is malloc'd. A template's own
 * refusal (Llama 2 / Mistral need user and assistant to alternate) is a 400
 * on "messages". The text holds special-token strings: encode it with
 * parse_special = true. */
int pt_oai_render_chat(const pt_oai_request *r, const pt_chat_template *ct, char **out, pt_oai_error *e);
/* The same for any message list (also used by /tokenize). */
int pt_oai_render_messages(const pt_oai_message *msgs, size_t n, bool add_generation_prompt,
                           const pt_chat_template *ct, char **out, pt_oai_error *e);

/* POST /tokenize, as vLLM: {model?, prompt: string, add_special_tokens?: bool (default
 * true)} or {model?, messages: [...], add_generation_prompt?: bool (default true),
 * add_special_tokens?: bool (default false: the template already has them)}. */
typedef struct {
    char *model;
    char *prompt;              /* or NULL when messages are given; may be "" */
    pt_oai_message *messages;  /* (n_messages) */
    size_t n_messages;
    bool add_special_tokens;   /* add bos when encoding */
    bool add_generation_prompt;
} pt_oai_tokenize_request;

int pt_oai_parse_tokenize(pt_oai_tokenize_request *r, const char *body, size_t len, const pt_oai_limits *lim,
                          pt_oai_error *e);
void pt_oai_tokenize_request_free(pt_oai_tokenize_request *r);

/* POST /detokenize: {model?, tokens: [int]} (may be empty). */
typedef struct {
    char *model;
    int32_t *tokens; /* (n_tokens) each in [0, vocab_size) when vocab_size is set */
    size_t n_tokens;
} pt_oai_detokenize_request;

int pt_oai_parse_detokenize(pt_oai_detokenize_request *r, const char *body, size_t len,
                            const pt_oai_limits *lim, pt_oai_error *e);
void pt_oai_detokenize_request_free(pt_oai_detokenize_request *r);

/* ---------------------------------------------------------------------------
 * Responses. Every function returns a malloc'd NUL-terminated JSON text
 * (free()), or NULL when memory runs out. Text inputs are byte strings with a
 * length; they need not be valid UTF-8 nor free of NUL bytes. */

typedef enum {
    PT_OAI_FINISH_NONE = 0, /* "finish_reason": null (a stream chunk that does not end the choice) */
    PT_OAI_FINISH_STOP,     /* "stop": end-of-sequence token or stop string */
    PT_OAI_FINISH_LENGTH,   /* "length": max_tokens or the end of the context */
} pt_oai_finish;

/* Fields every response object of one request shares. */
typedef struct {
    const char *id;    /* from pt_oai_make_id; the same in every chunk of a stream */
    int64_t created;   /* unix seconds; the same in every chunk */
    const char *model;
} pt_oai_meta;

/* "chatcmpl-" (chat) or "cmpl-" (completions) and 32 hex digits of r0, r1
 * (the caller's randomness). out must hold PT_OAI_ID_MAX bytes. */
void pt_oai_make_id(char *out, pt_oai_kind kind, uint64_t r0, uint64_t r1);

/* One token's text and log-probability. A logprob that is not finite is sent
 * as -9999.0, as vLLM does, since JSON has no infinity. */
typedef struct {
    const char *text; /* the token's bytes (pt_tokenizer_piece); may be part of a UTF-8 character */
    size_t len;
    float logprob;
} pt_oai_lp_entry;

/* The sampled token and the most likely alternatives at its position. */
typedef struct {
    pt_oai_lp_entry chosen;
    const pt_oai_lp_entry *top; /* (n_top) most likely first; n_top = the request's top_logprobs */
    size_t n_top;
} pt_oai_token_lp;

/* One choice of a full (non-streamed) response, or one choice's piece of a
 * stream chunk.
 *
 * Chat:        message.content / delta.content is text; logprobs are
 *              {"content":[{token, logprob, bytes, top_logprobs:[{token, logprob, bytes}]}]}.
 * Completions: text is text; logprobs are {tokens, token_logprobs,
 *              top_logprobs:[{token text: logprob}], text_offset}. text_offset
 *              counts characters (code points, as Python's len() does),
 *              starting at text_offset_base: in a stream, the characters the
 *              choice already sent. */
typedef struct {
    uint32_t index;             /* the choice's index: prompt * n + sample */
    const char *text;           /* chat chunks: NULL = no "content" key in the delta */
    size_t len;
    bool role;                  /* chat chunks: the delta carries "role":"assistant" (the first chunk) */
    pt_oai_finish finish;
    bool has_logprobs;          /* false: "logprobs": null */
    const pt_oai_token_lp *lp;  /* (n_lp) one per generated token in text */
    size_t n_lp;
    size_t text_offset_base;    /* completions logprobs only */
} pt_oai_choice;

typedef struct {
    size_t prompt_tokens;
    size_t completion_tokens; /* total_tokens is the sum */
} pt_oai_usage;

/* {"id","object":"chat.completion","created","model","choices":[{"index",
 *  "message":{"role":"assistant","content"},"logprobs","finish_reason"}],"usage"} */
char *pt_oai_chat_completion_json(const pt_oai_meta *m, const pt_oai_choice *c, size_t n, const pt_oai_usage *u);
/* {"id","object":"text_completion","created","model","choices":[{"index","text",
 *  "logprobs","finish_reason"}],"usage"} */
char *pt_oai_text_completion_json(const pt_oai_meta *m, const pt_oai_choice *c, size_t n,
                                  const pt_oai_usage *u);

/* One stream chunk with one choice (as OpenAI sends n > 1: one choice per
 * chunk). Chat: object "chat.completion.chunk", choices [{index, delta, logprobs,
 * finish_reason}]; completions: object "text_completion", choices [{index, text,
 * logprobs, finish_reason}]. usage_null adds "usage": null, which OpenAI sends in
 * every chunk but the last when include_usage is on.
 *
 * A chat stream, per choice: a chunk with role = true and text "" first, then
 * chunks with text, then one with finish set and text NULL (an empty delta).
 * With include_usage, after every choice finished, pt_oai_usage_chunk_json. */
char *pt_oai_chunk_json(const pt_oai_meta *m, pt_oai_kind kind, const pt_oai_choice *c, bool usage_null);
/* The last chunk with include_usage: "choices": [] and the request's usage. */
char *pt_oai_usage_chunk_json(const pt_oai_meta *m, pt_oai_kind kind, const pt_oai_usage *u);

/* SSE framing: "data: " json "\n\n", malloc'd; *len (may be NULL) gets its length. */
char *pt_oai_sse_frame(const char *json, size_t *len);
#define PT_OAI_SSE_DONE "data: [DONE]\n\n"

/* {"error":{"message","type","param","code"}}: param null when e->param is
 * ""; code e->code when set, else the status as a number. Also sent as an SSE
 * frame when a stream fails after it started. */
char *pt_oai_error_json(const pt_oai_error *e);

/* GET /v1/models: {"object":"list","data":[{"id","object":"model","created",
 * "owned_by":"proteus","max_model_len"}]}. */
char *pt_oai_models_json(const char *const *ids, size_t n, int64_t created, size_t max_model_len);

/* /tokenize: {"count","max_model_len","tokens":[...]}. */
char *pt_oai_tokenize_json(const int32_t *tokens, size_t n, size_t max_model_len);
/* /detokenize: {"prompt": text}. */
char *pt_oai_detokenize_json(const char *text, size_t len);

/* The JSON string literal of bytes s[0, len), quotes included, malloc'd:
 * ill-formed UTF-8 becomes U+FFFD, '"' '\\' and control characters are
 * escaped (NUL as \u0000). *out_len (may be NULL) gets its length. */
char *pt_oai_json_string(const char *s, size_t len, size_t *out_len);
/* cJSON says nothing when an allocation fails while building: an object
 * just lacks the member. Its allocations are watched per thread (cJSON's
 * hooks, installed at the first call): pt_json_nomem_begin() before
 * building, pt_json_nomem() after tells whether anything was dropped. */
void pt_json_nomem_begin(void);
bool pt_json_nomem(void);

/* Bytes of s that form valid UTF-8, from the start: s[0, n) is valid and
 * either n == len or s[n] begins an ill-formed (or truncated) sequence. */
size_t pt_oai_utf8_valid_prefix(const char *s, size_t len);

#endif
