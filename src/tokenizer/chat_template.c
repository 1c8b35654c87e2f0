/* Chat template rendering for the well-known formats (see chat_template.h).
 * Each renderer mirrors the official Jinja template line by line; comments
 * quote the Jinja being reproduced where it matters (strip, trim). */
#include <stdlib.h>
#include <string.h>

#include "proteus/chat_template.h"

typedef struct {
    char *s;
    size_t n, cap;
    bool failed; /* out of memory: the rest is dropped, pt_chat_render returns PT_ERR_NOMEM */
} sbuf;

/* Prompt-sized: an allocation failure is the request's error, not the server's end. */
static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->s, cap);
        if (!q) {
            b->failed = true;
            return;
        }
        b->s = q;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* Python's str.strip() on ASCII whitespace (what Jinja's trim and .strip() do
 * for the texts we see; Unicode spaces are left alone). */
static void sb_stripped(sbuf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && strchr(" \t\n\r\v\f", s[i])) i++;
    while (n > i && strchr(" \t\n\r\v\f", s[n - 1])) n--;
    sb_put(b, s + i, n - i);
}

pt_chat_kind pt_chat_detect(const char *j) {
    if (!j) return PT_CHAT_UNKNOWN;
    if (strstr(j, "<|im_start|>")) return PT_CHAT_CHATML;
    if (strstr(j, "<|start_header_id|>")) return PT_CHAT_LLAMA3;
    if (strstr(j, "[INST]")) return strstr(j, "<<SYS>>") ? PT_CHAT_LLAMA2 : PT_CHAT_MISTRAL;
    return PT_CHAT_UNKNOWN;
}

static const char *const NAMES[] = {"unknown", "chatml", "llama3", "llama2", "mistral"};

pt_chat_kind pt_chat_kind_from_name(const char *name) {
    for (int k = 1; name && k < 5; k++)
        if (!strcmp(name, NAMES[k])) return (pt_chat_kind)k;
    return PT_CHAT_UNKNOWN;
}

const char *pt_chat_kind_name(pt_chat_kind kind) {
    return kind >= 0 && kind < 5 ? NAMES[kind] : NAMES[0];
}

/* ChatML templates that inject a system prompt when the conversation has
 * none (SmolLM2, Qwen2.5) spell it as a literal
 * '<|im_start|>system\n<text><|im_end|>' inside a Jinja string. Returns the
 * text with Jinja string escapes undone, or NULL. A system turn built from
 * message['content'] is not a literal and is not matched. */
static char *extract_default_system(const char *j) {
    static const char *const heads[] = {"<|im_start|>system\n", "<|im_start|>system\\n"};
    for (int h = 0; h < 2; h++) {
        const char *p = strstr(j, heads[h]);
        if (!p) continue;
        p += strlen(heads[h]);
        const char *e = strstr(p, "<|im_end|>");
        if (!e) continue;
        /* The literal must not leave its string: no quote or brace in between. */
        if (memchr(p, '\'', (size_t)(e - p)) || memchr(p, '"', (size_t)(e - p)) || memchr(p, '{', (size_t)(e - p)))
            continue;
        char *s = malloc((size_t)(e - p) + 1);
        if (!s) return NULL;
        size_t m = 0;
        for (const char *q = p; q < e; q++) {
            if (*q == '\\' && q + 1 < e) {
                q++;
                s[m++] = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q;
            } else {
                s[m++] = *q;
            }
        }
        s[m] = 0;
        return s;
    }
    return NULL;
}

int pt_chat_template_init(pt_chat_template *ct, const char *jinja, const char *name, const char *bos,
                          const char *eos, pt_err *err) {
    memset(ct, 0, sizeof(*ct));
    pt_chat_kind k = name ? pt_chat_kind_from_name(name) : pt_chat_detect(jinja);
    if (name && k == PT_CHAT_UNKNOWN)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "chat template: unknown name \"%s\" (chatml, llama3, llama2, mistral)", name);
    if (k == PT_CHAT_UNKNOWN)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "chat template: %s",
                          jinja ? "format not recognised; choose one by name" : "model has none; choose one by name");
    ct->kind = k;
    if (k == PT_CHAT_CHATML && jinja && pt_chat_detect(jinja) == PT_CHAT_CHATML)
        ct->default_system = extract_default_system(jinja);
    ct->bos = pt_xstrdup(bos ? bos : "");
    ct->eos = pt_xstrdup(eos ? eos : "");
    return PT_OK;
}

void pt_chat_template_free(pt_chat_template *ct) {
    free(ct->default_system);
    free(ct->bos);
    free(ct->eos);
    memset(ct, 0, sizeof(*ct));
}

static bool is_role(const pt_chat_msg *m, const char *r) { return m->role && !strcmp(m->role, r); }

static const char *content(const pt_chat_msg *m) { return m->content ? m->content : ""; }

/* {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}raise */
static int check_alternation(const pt_chat_msg *m, size_t n, pt_err *err) {
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user") != (i % 2 == 0))
            return pt_err_set(err, PT_ERR_INVALID, "chat template: roles must alternate user/assistant (message %zu is %s)",
                              i, m[i].role ? m[i].role : "null");
        if (!is_role(&m[i], "user") && !is_role(&m[i], "assistant"))
            return pt_err_set(err, PT_ERR_INVALID, "chat template: role %s not supported here", m[i].role ? m[i].role : "null");
    }
    return PT_OK;
}

int pt_chat_render(const pt_chat_template *ct, const pt_chat_msg *msgs, size_t n, bool add_gen, char **out,
                   pt_err *err) {
    *out = NULL;
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role) return pt_err_set(err, PT_ERR_INVALID, "chat template: message %zu has no role", i);
    sbuf b = {0};
    sb_str(&b, "");
    int rc = PT_OK;
    switch (ct->kind) {
    case PT_CHAT_CHATML:
        if (ct->default_system && (n == 0 || !is_role(&msgs[0], "system"))) {
            sb_str(&b, "<|im_start|>system\n");
            sb_str(&b, ct->default_system);
            sb_str(&b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            sb_str(&b, "<|im_start|>");
            sb_str(&b, msgs[i].role);
            sb_str(&b, "\n");
            sb_str(&b, content(&msgs[i]));
            sb_str(&b, "<|im_end|>\n");
        }
        if (add_gen) sb_str(&b, "<|im_start|>assistant\n");
        break;
    case PT_CHAT_LLAMA3:
        /* '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content | trim + '<|eot_id|>',
         * bos before the first. */
        for (size_t i = 0; i < n; i++) {
            if (i == 0) sb_str(&b, ct->bos);
            sb_str(&b, "<|start_header_id|>");
            sb_str(&b, msgs[i].role);
            sb_str(&b, "<|end_header_id|>\n\n");
            sb_stripped(&b, content(&msgs[i]));
            sb_str(&b, "<|eot_id|>");
        }
        if (add_gen) sb_str(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case PT_CHAT_LLAMA2: {
        const char *sys = NULL;
        const pt_chat_msg *m = msgs;
        size_t k = n;
        if (n && is_role(&msgs[0], "system")) {
            sys = content(&msgs[0]);
            m++;
            k--;
        }
        if ((rc = check_alternation(m, k, err))) break;
        for (size_t i = 0; i < k; i++) {
            sbuf c = {0};
            if (i == 0 && sys) {
                sb_str(&c, "<<SYS>>\n");
                sb_str(&c, sys);
                sb_str(&c, "\n<</SYS>>\n\n");
            }
            sb_str(&c, content(&m[i]));
            if (c.failed) {
                free(c.s);
                b.failed = true;
                break;
            }
            if (is_role(&m[i], "user")) { /* bos + '[INST] ' + content.strip() + ' [/INST]' */
                sb_str(&b, ct->bos);
                sb_str(&b, "[INST] ");
                sb_stripped(&b, c.s);
                sb_str(&b, " [/INST]");
            } else { /* ' ' + content.strip() + ' ' + eos */
                sb_str(&b, " ");
                sb_stripped(&b, c.s);
                sb_str(&b, " ");
                sb_str(&b, ct->eos);
            }
            free(c.s);
        }
        break;
    }
    case PT_CHAT_MISTRAL: {
        const char *sys = NULL;
        const pt_chat_msg *m = msgs;
        size_t k = n;
        if (n && is_role(&msgs[0], "system")) {
            sys = content(&msgs[0]);
            m++;
            k--;
        }
        if ((rc = check_alternation(m, k, err))) break;
        sb_str(&b, ct->bos);
        for (size_t i = 0; i < k; i++) {
            if (is_role(&m[i], "user")) {
                sb_str(&b, "[INST] ");
                if (i == 0 && sys) {
                    sb_str(&b, sys);
                    sb_str(&b, "\n\n");
                }
                sb_str(&b, content(&m[i]));
                sb_str(&b, " [/INST]");
            } else {
                sb_str(&b, content(&m[i]));
                sb_str(&b, ct->eos);
            }
        }
        break;
    }
    default:
        rc = pt_err_set(err, PT_ERR_INVALID, "chat template: not initialised");
    }
    if (!rc && b.failed) rc = pt_err_set(err, PT_ERR_NOMEM, "chat template: out of memory");
    if (rc) {
        free(b.s);
        return rc;
    }
    *out = b.s;
    return PT_OK;
}

const char *const *pt_chat_stop_strings(const pt_chat_template *ct) {
    static const char *const chatml[] = {"<|im_end|>", "<|endoftext|>", NULL};
    static const char *const llama3[] = {"<|eot_id|>", "<|end_of_text|>", NULL};
    static const char *const inst[] = {"</s>", NULL};
    static const char *const none[] = {NULL};
    switch (ct->kind) {
    case PT_CHAT_CHATML: return chatml;
    case PT_CHAT_LLAMA3: return llama3;
    case PT_CHAT_LLAMA2:
    case PT_CHAT_MISTRAL: return inst;
    default: return none;
    }
}

int pt_chat_template_init_tok(pt_chat_template *ct, const char *jinja, const char *name, const pt_tokenizer *tok,
                              pt_err *err) {
    char *bos = pt_tokenizer_bos(tok) >= 0 ? pt_tokenizer_piece_dup(tok, pt_tokenizer_bos(tok), NULL) : NULL;
    char *eos = pt_tokenizer_eos(tok) >= 0 ? pt_tokenizer_piece_dup(tok, pt_tokenizer_eos(tok), NULL) : NULL;
    if ((pt_tokenizer_bos(tok) >= 0 && !bos) || (pt_tokenizer_eos(tok) >= 0 && !eos)) {
        free(bos);
        free(eos);
        return pt_err_set(err, PT_ERR_NOMEM, "chat template: out of memory");
    }
    int rc = pt_chat_template_init(ct, jinja, name, bos, eos, err);
    free(bos);
    free(eos);
    return rc;
}
