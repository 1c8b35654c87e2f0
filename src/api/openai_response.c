/* Results -> OpenAI response JSON.
 *
 * Objects are built with cJSON; every piece of generated or token text goes
 * in as a raw, already-escaped JSON string from pt_oai_json_string, so that
 * bytes cJSON cannot carry (NUL) or must not carry (ill-formed UTF-8) come
 * out exactly right. Floats are printed with the fewest digits that read
 * back as the same float ("-0.1", not "-0.10000000149011612"). */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/openai_api.h"

/* ---------------------------------------------------------------------------
 * UTF-8. */

/* Length of the well-formed sequence at s[0, n) (1..4), or 0 with *bad set to
 * the length of its maximal ill-formed subpart (>= 1), per Unicode 15 §3.9. */
static size_t utf8_next(const unsigned char *s, size_t n, size_t *bad) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c == 0xE0) { need = 3; lo = 0xA0; }
    else if (c == 0xED) { need = 3; hi = 0x9F; }   /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF) need = 3;
    else if (c == 0xF0) { need = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 4;
    else if (c == 0xF4) { need = 4; hi = 0x8F; }   /* <= U+10FFFF */
    else { *bad = 1; return 0; }
    for (size_t i = 1; i < need; i++) {
        unsigned b = i < n ? s[i] : 0;
        if (i >= n || b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) {
            *bad = i;
            return 0;
        }
    }
    return need;
}

size_t pt_oai_utf8_valid_prefix(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, bad;
    while (i < len) {
        size_t l = utf8_next(u + i, len - i, &bad);
        if (!l) break;
        i += l;
    }
    return i;
}

/* Characters after replacement: each valid sequence and each ill-formed subpart counts 1. */
static size_t utf8_chars(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, n = 0, bad;
    while (i < len) {
        size_t l = utf8_next(u + i, len - i, &bad);
        i += l ? l : bad;
        n++;
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * Growable text. */

typedef struct {
    char *p;
    size_t n, cap;
    bool failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) {
            if (cap > SIZE_MAX / 2) { b->failed = true; return; }
            cap *= 2;
        }
        char *q = realloc(b->p, cap);
        if (!q) { b->failed = true; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

static char *sb_take(sbuf *b, size_t *len) {
    if (b->failed || !b->p) {
        free(b->p);
        return NULL;
    }
    if (len) *len = b->n;
    return b->p;
}

static void sb_json_string(sbuf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    sb_put(b, "\"", 1);
    size_t i = 0;
    while (i < len) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t j = i, bad;
        while (j < len && u[j] >= 0x20 && u[j] != '"' && u[j] != '\\' && u[j] < 0x80) j++;
        sb_put(b, s + i, j - i);
        i = j;
        if (i >= len) break;
        unsigned c = u[i];
        if (c >= 0x80) {
            size_t l = utf8_next(u + i, len - i, &bad);
            if (l) sb_put(b, s + i, l);
            else sb_put(b, "\xEF\xBF\xBD", 3); /* U+FFFD */
            i += l ? l : bad;
            continue;
        }
        char esc[7] = {'\\', 0};
        size_t el = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        sb_put(b, esc, el);
        i++;
    }
    sb_put(b, "\"", 1);
}

char *pt_oai_json_string(const char *s, size_t len, size_t *out_len) {
    sbuf b = {0};
    sb_json_string(&b, s ? s : "", s ? len : 0);
    return sb_take(&b, out_len);
}

/* The shortest decimal that reads back as the same float; non-finite as
 * -9999 (vLLM's stand-in for -inf, since JSON has no infinity). */
static double float_value(float x, char *text, size_t cap) {
    if (!isfinite(x)) x = -9999.0f;
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(text, cap, "%.*g", prec, (double)x);
        if (strtof(text, NULL) == x) break;
    }
    return strtod(text, NULL);
}

/* ---------------------------------------------------------------------------
 * cJSON helpers. A failed allocation anywhere marks *ok false; the caller
 * then frees the tree and returns NULL. */

static void add_item(cJSON *obj, const char *key, cJSON *item, bool *ok) {
    if (!item || !obj) {
        cJSON_Delete(item);
        *ok = false;
        return;
    }
    if (!(key ? cJSON_AddItemToObject(obj, key, item) : cJSON_AddItemToArray(obj, item))) {
        cJSON_Delete(item);
        *ok = false;
    }
}

static void add_text(cJSON *obj, const char *key, const char *s, size_t len, bool *ok) {
    char *raw = pt_oai_json_string(s, len, NULL);
    add_item(obj, key, raw ? cJSON_CreateRaw(raw) : NULL, ok);
    free(raw);
}

static void add_str(cJSON *obj, const char *key, const char *s, bool *ok) {
    add_text(obj, key, s ? s : "", s ? strlen(s) : 0, ok);
}

static void add_num(cJSON *obj, const char *key, double x, bool *ok) {
    add_item(obj, key, cJSON_CreateNumber(x), ok);
}

static void add_float(cJSON *obj, const char *key, float x, bool *ok) {
    char text[32];
    add_num(obj, key, float_value(x, text, sizeof(text)), ok);
}

static void add_null(cJSON *obj, const char *key, bool *ok) {
    add_item(obj, key, cJSON_CreateNull(), ok);
}

static char *finish(cJSON *root, bool ok) {
    char *s = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

static const char *finish_reason(pt_oai_finish f) {
    return f == PT_OAI_FINISH_STOP ? "stop" : f == PT_OAI_FINISH_LENGTH ? "length" : NULL;
}

static void add_finish(cJSON *obj, pt_oai_finish f, bool *ok) {
    const char *r = finish_reason(f);
    if (r) add_str(obj, "finish_reason", r, ok);
    else add_null(obj, "finish_reason", ok);
}

static void add_usage(cJSON *obj, const pt_oai_usage *u, bool *ok) {
    cJSON *o = cJSON_CreateObject();
    add_num(o, "prompt_tokens", (double)u->prompt_tokens, ok);
    add_num(o, "completion_tokens", (double)u->completion_tokens, ok);
    add_num(o, "total_tokens", (double)(u->prompt_tokens + u->completion_tokens), ok);
    add_item(obj, "usage", o, ok);
}

static cJSON *head(const pt_oai_meta *m, const char *object, bool *ok) {
    cJSON *root = cJSON_CreateObject();
    if (!root) {
        *ok = false;
        return NULL;
    }
    add_str(root, "id", m->id, ok);
    add_str(root, "object", object, ok);
    add_num(root, "created", (double)m->created, ok);
    add_str(root, "model", m->model, ok);
    return root;
}

/* ---------------------------------------------------------------------------
 * Logprobs. */

/* One chat entry: {token, logprob, bytes} (+ top_logprobs for the chosen one). */
static cJSON *chat_lp_entry(const pt_oai_lp_entry *t, bool *ok) {
    cJSON *o = cJSON_CreateObject();
    add_text(o, "token", t->text, t->len, ok);
    add_float(o, "logprob", t->logprob, ok);
    cJSON *bytes = cJSON_CreateArray();
    for (size_t i = 0; i < t->len && *ok; i++) add_num(bytes, NULL, (unsigned char)t->text[i], ok);
    add_item(o, "bytes", bytes, ok);
    return o;
}

/* {"content":[{token, logprob, bytes, top_logprobs:[...]}]} */
static void add_chat_logprobs(cJSON *choice, const pt_oai_choice *c, bool *ok) {
    if (!c->has_logprobs) {
        add_null(choice, "logprobs", ok);
        return;
    }
    cJSON *lp = cJSON_CreateObject(), *content = cJSON_CreateArray();
    for (size_t i = 0; i < c->n_lp && *ok; i++) {
        cJSON *e = chat_lp_entry(&c->lp[i].chosen, ok), *top = cJSON_CreateArray();
        for (size_t k = 0; k < c->lp[i].n_top && *ok; k++) add_item(top, NULL, chat_lp_entry(&c->lp[i].top[k], ok), ok);
        add_item(e, "top_logprobs", top, ok);
        add_item(content, NULL, e, ok);
    }
    add_item(lp, "content", content, ok);
    add_item(choice, "logprobs", lp, ok);
}

/* {tokens, token_logprobs, top_logprobs:[{text: logprob} or null], text_offset}.
 * A top dict is written as raw text: two tokens may decode to the same key
 * (two halves of a character both become U+FFFD), and only the first, most
 * likely one is kept. */
static void add_completion_logprobs(cJSON *choice, const pt_oai_choice *c, bool *ok) {
    if (!c->has_logprobs) {
        add_null(choice, "logprobs", ok);
        return;
    }
    cJSON *lp = cJSON_CreateObject(), *tokens = cJSON_CreateArray(), *lps = cJSON_CreateArray(),
          *tops = cJSON_CreateArray(), *offs = cJSON_CreateArray();
    size_t off = c->text_offset_base;
    for (size_t i = 0; i < c->n_lp && *ok; i++) {
        const pt_oai_token_lp *t = &c->lp[i];
        add_text(tokens, NULL, t->chosen.text, t->chosen.len, ok);
        add_float(lps, NULL, t->chosen.logprob, ok);
        add_num(offs, NULL, (double)off, ok);
        off += utf8_chars(t->chosen.text, t->chosen.len);
        if (t->n_top == 0) {
            add_null(tops, NULL, ok);
            continue;
        }
        sbuf b = {0};
        char **keys = calloc(t->n_top, sizeof(*keys));
        if (!keys) *ok = false;
        sb_put(&b, "{", 1);
        for (size_t k = 0; k < t->n_top && keys; k++) {
            keys[k] = pt_oai_json_string(t->top[k].text, t->top[k].len, NULL);
            if (!keys[k]) {
                b.failed = true;
                break;
            }
            bool dup = false;
            for (size_t j = 0; j < k && !dup; j++) dup = !strcmp(keys[j], keys[k]);
            if (dup) continue;
            char num[32];
            float_value(t->top[k].logprob, num, sizeof(num));
            if (b.n > 1) sb_put(&b, ",", 1);
            sb_str(&b, keys[k]);
            sb_put(&b, ":", 1);
            sb_str(&b, num);
        }
        sb_put(&b, "}", 1);
        for (size_t k = 0; keys && k < t->n_top; k++) free(keys[k]);
        free(keys);
        char *raw = sb_take(&b, NULL);
        add_item(tops, NULL, raw ? cJSON_CreateRaw(raw) : NULL, ok);
        free(raw);
    }
    add_item(lp, "tokens", tokens, ok);
    add_item(lp, "token_logprobs", lps, ok);
    add_item(lp, "top_logprobs", tops, ok);
    add_item(lp, "text_offset", offs, ok);
    add_item(choice, "logprobs", lp, ok);
}

/* ---------------------------------------------------------------------------
 * Completions. */

void pt_oai_make_id(char *out, pt_oai_kind kind, uint64_t r0, uint64_t r1) {
    snprintf(out, PT_OAI_ID_MAX, "%s%016" PRIx64 "%016" PRIx64, kind == PT_OAI_CHAT ? "chatcmpl-" : "cmpl-", r0,
             r1);
}

char *pt_oai_chat_completion_json(const pt_oai_meta *m, const pt_oai_choice *c, size_t n, const pt_oai_usage *u) {
    bool ok = true;
    cJSON *root = head(m, "chat.completion", &ok), *choices = cJSON_CreateArray();
    for (size_t i = 0; i < n && ok; i++) {
        cJSON *ch = cJSON_CreateObject(), *msg = cJSON_CreateObject();
        add_num(ch, "index", c[i].index, &ok);
        add_str(msg, "role", "assistant", &ok);
        add_text(msg, "content", c[i].text ? c[i].text : "", c[i].text ? c[i].len : 0, &ok);
        add_item(ch, "message", msg, &ok);
        add_chat_logprobs(ch, &c[i], &ok);
        add_finish(ch, c[i].finish, &ok);
        add_item(choices, NULL, ch, &ok);
    }
    add_item(root, "choices", choices, &ok);
    if (u) add_usage(root, u, &ok);
    return finish(root, ok);
}

char *pt_oai_text_completion_json(const pt_oai_meta *m, const pt_oai_choice *c, size_t n,
                                  const pt_oai_usage *u) {
    bool ok = true;
    cJSON *root = head(m, "text_completion", &ok), *choices = cJSON_CreateArray();
    for (size_t i = 0; i < n && ok; i++) {
        cJSON *ch = cJSON_CreateObject();
        add_num(ch, "index", c[i].index, &ok);
        add_text(ch, "text", c[i].text ? c[i].text : "", c[i].text ? c[i].len : 0, &ok);
        add_completion_logprobs(ch, &c[i], &ok);
        add_finish(ch, c[i].finish, &ok);
        add_item(choices, NULL, ch, &ok);
    }
    add_item(root, "choices", choices, &ok);
    if (u) add_usage(root, u, &ok);
    return finish(root, ok);
}

char *pt_oai_chunk_json(const pt_oai_meta *m, pt_oai_kind kind, const pt_oai_choice *c, bool usage_null) {
    bool ok = true;
    bool chat = kind == PT_OAI_CHAT;
    cJSON *root = head(m, chat ? "chat.completion.chunk" : "text_completion", &ok);
    cJSON *choices = cJSON_CreateArray(), *ch = cJSON_CreateObject();
    add_num(ch, "index", c->index, &ok);
    if (chat) {
        cJSON *delta = cJSON_CreateObject();
        if (c->role) add_str(delta, "role", "assistant", &ok);
        if (c->text) add_text(delta, "content", c->text, c->len, &ok);
        add_item(ch, "delta", delta, &ok);
        add_chat_logprobs(ch, c, &ok);
    } else {
        add_text(ch, "text", c->text ? c->text : "", c->text ? c->len : 0, &ok);
        add_completion_logprobs(ch, c, &ok);
    }
    add_finish(ch, c->finish, &ok);
    add_item(choices, NULL, ch, &ok);
    add_item(root, "choices", choices, &ok);
    if (usage_null) add_null(root, "usage", &ok);
    return finish(root, ok);
}

char *pt_oai_usage_chunk_json(const pt_oai_meta *m, pt_oai_kind kind, const pt_oai_usage *u) {
    bool ok = true;
    cJSON *root = head(m, kind == PT_OAI_CHAT ? "chat.completion.chunk" : "text_completion", &ok);
    add_item(root, "choices", cJSON_CreateArray(), &ok);
    add_usage(root, u, &ok);
    return finish(root, ok);
}

char *pt_oai_sse_frame(const char *json, size_t *len) {
    if (!json) return NULL;
    sbuf b = {0};
    sb_str(&b, "data: ");
    sb_str(&b, json);
    sb_str(&b, "\n\n");
    return sb_take(&b, len);
}

/* ---------------------------------------------------------------------------
 * Errors, models, tokenize. */

char *pt_oai_error_json(const pt_oai_error *e) {
    bool ok = true;
    cJSON *root = cJSON_CreateObject(), *err = cJSON_CreateObject();
    add_str(err, "message", e->message, &ok);
    add_str(err, "type", e->type ? e->type : "invalid_request_error", &ok);
    if (e->param[0]) add_str(err, "param", e->param, &ok);
    else add_null(err, "param", &ok);
    if (e->code) add_str(err, "code", e->code, &ok);
    else add_num(err, "code", e->status, &ok);
    add_item(root, "error", err, &ok);
    return finish(root, ok);
}

char *pt_oai_models_json(const char *const *ids, size_t n, int64_t created, size_t max_model_len) {
    bool ok = true;
    cJSON *root = cJSON_CreateObject(), *data = cJSON_CreateArray();
    add_str(root, "object", "list", &ok);
    for (size_t i = 0; i < n && ok; i++) {
        cJSON *mo = cJSON_CreateObject();
        add_str(mo, "id", ids[i], &ok);
        add_str(mo, "object", "model", &ok);
        add_num(mo, "created", (double)created, &ok);
        add_str(mo, "owned_by", "proteus", &ok);
        add_num(mo, "max_model_len", (double)max_model_len, &ok);
        add_item(data, NULL, mo, &ok);
    }
    add_item(root, "data", data, &ok);
    return finish(root, ok);
}

char *pt_oai_tokenize_json(const int32_t *tokens, size_t n, size_t max_model_len) {
    bool ok = true;
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    add_num(root, "count", (double)n, &ok);
    add_num(root, "max_model_len", (double)max_model_len, &ok);
    for (size_t i = 0; i < n && ok; i++) add_num(arr, NULL, tokens[i], &ok);
    add_item(root, "tokens", arr, &ok);
    return finish(root, ok);
}

char *pt_oai_detokenize_json(const char *text, size_t len) {
    bool ok = true;
    cJSON *root = cJSON_CreateObject();
    add_text(root, "prompt", text ? text : "", text ? len : 0, &ok);
    return finish(root, ok);
}
