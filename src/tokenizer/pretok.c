/* Regex pre-tokenizer: a list of stages, each splitting every piece of the
 * previous stage into its matches and the gaps between them (HF's
 * "Isolated" split; GPT-2's pattern covers all text, so it leaves no gaps).
 * PCRE2 runs in UTF + UCP mode with PCRE2_MATCH_INVALID_UTF, so invalid
 * bytes never match and fall into gaps instead of failing the match. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

const char *const TOK_RE_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char *const RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const RE_QWEN2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const RE_DIGIT = "\\p{N}";

struct tok_pretok {
    size_t n;
    pcre2_code *re[PT_TOK_MAX_REGEX];
};

size_t tok_pretok_patterns(pt_pretok_kind kind, const char **stages) {
    switch (kind) {
    case PT_PRETOK_GPT2: stages[0] = TOK_RE_GPT2; return 1;
    case PT_PRETOK_SMOLLM: stages[0] = RE_DIGIT; stages[1] = TOK_RE_GPT2; return 2;
    case PT_PRETOK_LLAMA3: stages[0] = RE_LLAMA3; return 1;
    case PT_PRETOK_QWEN2: stages[0] = RE_QWEN2; return 1;
    default: return 0;
    }
}

pt_pretok_kind tok_pretok_from_name(const char *name, bool *known) {
    *known = true;
    if (!name || !strcmp(name, "default") || !strcmp(name, "gpt2") || !strcmp(name, "gpt-2"))
        return PT_PRETOK_GPT2;
    if (!strcmp(name, "smollm") || !strcmp(name, "starcoder")) return PT_PRETOK_SMOLLM;
    if (!strcmp(name, "llama-bpe") || !strcmp(name, "llama3") || !strcmp(name, "llama-v3"))
        return PT_PRETOK_LLAMA3;
    if (!strcmp(name, "qwen2")) return PT_PRETOK_QWEN2;
    *known = false;
    return PT_PRETOK_GPT2;
}

int tok_pretok_new(tok_pretok **out, const char *const *regex, size_t n, pt_err *err) {
    if (n > PT_TOK_MAX_REGEX)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "tokenizer: %zu pre-tokenizer stages (max %d)",
                          n, PT_TOK_MAX_REGEX);
    tok_pretok *p = pt_xcalloc(1, sizeof(*p));
    for (size_t i = 0; i < n; i++) {
        int ec;
        PCRE2_SIZE eo;
        p->re[i] = pcre2_compile((PCRE2_SPTR)regex[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
        if (!p->re[i]) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            p->n = i;
            tok_pretok_free(p);
            return pt_err_set(err, PT_ERR_FORMAT, "tokenizer: pre-tokenizer regex %zu at offset %zu: %s",
                              i, (size_t)eo, (const char *)msg);
        }
        pcre2_jit_compile(p->re[i], PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    }
    p->n = n;
    *out = p;
    return PT_OK;
}

void tok_pretok_free(tok_pretok *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) pcre2_code_free(p->re[i]);
    free(p);
}

int tok_spans_push(tok_spans *s, size_t off, size_t len) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        tok_span *v = realloc(s->v, cap * sizeof(*v));
        if (!v) return PT_ERR_NOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (tok_span){off, len};
    return PT_OK;
}

/* Split text[base, base + len) with one regex, appending matches and gaps. */
static int split_one(pcre2_code *re, pcre2_match_data *md, const char *text, size_t base, size_t len,
                     tok_spans *out) {
    const PCRE2_SPTR subj = (PCRE2_SPTR)(text + base);
    size_t pos = 0, gap = 0;
    while (pos < len) {
        int rc = pcre2_match(re, subj, len, pos, 0, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return PT_ERR_FORMAT;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (e == s) { /* empty match: step over one character */
            pos = s + tok_utf8_char_len((const uint8_t *)subj + s, len - s);
            continue;
        }
        if (s > gap && tok_spans_push(out, base + gap, s - gap)) return PT_ERR_NOMEM;
        if (tok_spans_push(out, base + s, e - s)) return PT_ERR_NOMEM;
        pos = gap = e;
    }
    if (len > gap && tok_spans_push(out, base + gap, len - gap)) return PT_ERR_NOMEM;
    return PT_OK;
}

int tok_pretok_split(const tok_pretok *p, const char *text, size_t len, tok_spans *out) {
    out->n = 0;
    if (len == 0) return PT_OK;
    if (tok_spans_push(out, 0, len)) return PT_ERR_NOMEM;
    tok_spans tmp = {0};
    int rc = PT_OK;
    for (size_t st = 0; st < p->n && rc == PT_OK; st++) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(p->re[st], NULL);
        if (!md) { rc = PT_ERR_NOMEM; break; }
        tmp.n = 0;
        for (size_t i = 0; i < out->n && rc == PT_OK; i++)
            rc = split_one(p->re[st], md, text, out->v[i].off, out->v[i].len, &tmp);
        pcre2_match_data_free(md);
        tok_spans sw = *out;
        *out = tmp;
        tmp = sw;
    }
    free(tmp.v);
    return rc;
}
