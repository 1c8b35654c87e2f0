/* Tokenizer from a Hugging Face tokenizer.json (model.type "BPE"), with
 * tokenizer_config.json from the same directory, when present, for
 * bos/eos and add_bos_token.
 *
 * Understood: normalizer null | Prepend("▁") | Replace(" ", "▁") | Sequence of
 * those; pre_tokenizer null | ByteLevel | Split(Regex, Isolated) | Digits |
 * Metaspace | Sequence of those. Anything else is reported and ignored. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define METASPACE "\xE2\x96\x81"
#define TOK_JSON_MAX_UNUSED_IDS 65536 /* ids below the largest that no entry defines */

typedef struct {
    bool byte_level, spm;
    bool add_space_prefix, prefix_first_only, metaspace_split;
    const char *regex[PT_TOK_MAX_REGEX + 1];
    char *owned[PT_TOK_MAX_REGEX + 1];
    size_t n_regex;
} json_cfg;

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void add_regex(json_cfg *c, const char *re, bool owned) {
    if (c->n_regex <= PT_TOK_MAX_REGEX) {
        c->regex[c->n_regex] = re;
        c->owned[c->n_regex] = owned ? (char *)re : NULL;
        c->n_regex++;
    } else if (owned) {
        free((char *)re);
    }
}

/* A literal string as a PCRE2 pattern. */
static char *quote_regex(const char *s) {
    size_t n = strlen(s);
    char *q = pt_xmalloc(n + 5);
    snprintf(q, n + 5, "\\Q%s\\E", s);
    return q;
}

static void walk_normalizer(const cJSON *n, json_cfg *c) {
    const char *type = jstr(n, "type");
    if (!type) return;
    if (!strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) walk_normalizer(it, c);
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (p && !strcmp(p, METASPACE)) { c->add_space_prefix = true; c->spm = true; }
        else pt_log(PT_LOG_WARN, "tokenizer.json: Prepend of \"%s\" ignored", p ? p : "?");
    } else if (!strcmp(type, "Replace")) {
        const char *from = jstr(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "String");
        const char *to = jstr(n, "content");
        if (from && to && !strcmp(from, " ") && !strcmp(to, METASPACE)) c->spm = true;
        else pt_log(PT_LOG_WARN, "tokenizer.json: Replace normalizer ignored");
    } else {
        pt_log(PT_LOG_WARN, "tokenizer.json: normalizer %s ignored", type);
    }
}

static void walk_pretok(const cJSON *n, json_cfg *c) {
    const char *type = jstr(n, "type");
    if (!type) return;
    if (!strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "pretokenizers")) walk_pretok(it, c);
    } else if (!strcmp(type, "ByteLevel")) {
        c->byte_level = true;
        if (!cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(n, "use_regex"))) add_regex(c, TOK_RE_GPT2, false);
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "add_prefix_space")))
            pt_log(PT_LOG_WARN, "tokenizer.json: ByteLevel add_prefix_space ignored");
    } else if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        const char *beh = jstr(n, "behavior");
        if ((beh && strcmp(beh, "Isolated")) || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "invert")))
            pt_log(PT_LOG_WARN, "tokenizer.json: Split behavior %s treated as Isolated", beh ? beh : "?");
        if (re) add_regex(c, pt_xstrdup(re), true);
        else if (lit) add_regex(c, quote_regex(lit), true);
    } else if (!strcmp(type, "Digits")) {
        bool single = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "individual_digits"));
        add_regex(c, single ? "\\p{N}" : "\\p{N}+", false);
    } else if (!strcmp(type, "Metaspace")) {
        c->spm = true;
        const char *scheme = jstr(n, "prepend_scheme");
        const cJSON *aps = cJSON_GetObjectItemCaseSensitive(n, "add_prefix_space");
        c->add_space_prefix = scheme ? strcmp(scheme, "never") != 0 : !cJSON_IsFalse(aps);
        c->prefix_first_only = scheme && !strcmp(scheme, "first");
        c->metaspace_split = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(n, "split"));
    } else {
        pt_log(PT_LOG_WARN, "tokenizer.json: pre-tokenizer %s ignored", type);
    }
}

/* "bos_token": "<s>" or {"content": "<s>", ...} */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    return jstr(v, "content");
}

static int32_t find_first(const pt_tokenizer_spec *sp, const char *const *names, size_t k) {
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < sp->n_vocab; i++)
            if (sp->tokens[i] && !strcmp(sp->tokens[i], names[j])) return (int32_t)i;
    return -1;
}

int pt_tokenizer_load_json(pt_tokenizer **out, const char *path, pt_err *err) {
    *out = NULL;
    size_t len = 0;
    char *text = pt_read_file(path, &len);
    if (!text) return pt_err_set(err, PT_ERR_IO, "tokenizer: cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return pt_err_set(err, PT_ERR_FORMAT, "tokenizer: %s is not valid JSON", path);

    int rc = PT_OK;
    json_cfg c = {0};
    const char **toks = NULL, **merges = NULL;
    char **merge_buf = NULL;
    int32_t *types = NULL;
    size_t n = 0, nm = 0;
    cJSON *cfg = NULL;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *mtype = jstr(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!model || (mtype && strcmp(mtype, "BPE")) || !cJSON_IsObject(vocab)) {
        rc = pt_err_set(err, PT_ERR_UNSUPPORTED, "tokenizer: %s: model.type %s (only BPE is supported)", path,
                        mtype ? mtype : "missing");
        goto done;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= INT32_MAX / 4) {
            rc = pt_err_set(err, PT_ERR_FORMAT, "tokenizer: %s: bad id for vocab entry \"%s\"", path, it->string);
            goto done;
        }
        if ((size_t)it->valueint + 1 > n) n = (size_t)it->valueint + 1;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= INT32_MAX / 4 || !jstr(it, "content")) {
            rc = pt_err_set(err, PT_ERR_FORMAT, "tokenizer: %s: bad added_tokens entry", path);
            goto done;
        }
        if ((size_t)id->valueint + 1 > n) n = (size_t)id->valueint + 1;
    }
    /* Every id below the largest gets a slot and is built, so a sparse
     * vocabulary (one entry with id 500000000) would cost gigabytes and
     * minutes. Real files are dense; a few unused ids are tolerated. */
    size_t n_defined = (size_t)cJSON_GetArraySize(vocab) + (size_t)cJSON_GetArraySize(added);
    if (n > n_defined + TOK_JSON_MAX_UNUSED_IDS) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "tokenizer: %s: ids reach %zu but only %zu tokens are defined", path,
                        n - 1, n_defined);
        goto done;
    }
    toks = pt_xcalloc(n ? n : 1, sizeof(char *));
    types = pt_xcalloc(n ? n : 1, sizeof(int32_t));
    for (size_t i = 0; i < n; i++) types[i] = PT_TOKEN_UNUSED;
    cJSON_ArrayForEach(it, vocab) {
        toks[it->valueint] = it->string;
        types[it->valueint] = PT_TOKEN_NORMAL;
    }
    cJSON_ArrayForEach(it, added) {
        int id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        toks[id] = jstr(it, "content");
        types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special")) ? PT_TOKEN_CONTROL
                                                                                  : PT_TOKEN_USER_DEFINED;
    }

    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(model, "merges");
    nm = (size_t)cJSON_GetArraySize(jm);
    merges = pt_xcalloc(nm ? nm : 1, sizeof(char *));
    merge_buf = pt_xcalloc(nm ? nm : 1, sizeof(char *));
    size_t k = 0;
    cJSON_ArrayForEach(it, jm) {
        if (cJSON_IsString(it)) {
            merges[k++] = it->valuestring;
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) && cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring, *b = cJSON_GetArrayItem(it, 1)->valuestring;
            size_t la = strlen(a), lb = strlen(b);
            char *m = pt_xmalloc(la + lb + 2);
            memcpy(m, a, la);
            m[la] = ' ';
            memcpy(m + la + 1, b, lb + 1);
            merge_buf[k] = m;
            merges[k++] = m;
        } else {
            rc = pt_err_set(err, PT_ERR_FORMAT, "tokenizer: %s: merge %zu is neither \"a b\" nor [a, b]", path, k);
            goto done;
        }
    }

    walk_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &c);
    walk_pretok(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &c);
    if (!c.byte_level && !c.spm) {
        const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
        const char *dt = jstr(dec, "type");
        if (dt && !strcmp(dt, "ByteLevel")) c.byte_level = true;
        else c.spm = true; /* a BPE over raw text: SentencePiece style without the space handling */
    }

    pt_tokenizer_spec sp = {.kind = c.byte_level ? PT_TOKENIZER_BYTE_BPE : PT_TOKENIZER_SPM_BPE,
                            .n_vocab = n, .tokens = toks, .types = types, .n_merges = nm, .merges = merges,
                            .n_regex = c.n_regex, .regex = c.regex, .pretok = PT_PRETOK_NONE,
                            .add_space_prefix = c.add_space_prefix, .prefix_first_only = c.prefix_first_only,
                            .metaspace_split = c.metaspace_split, .unk_id = -1, .bos_id = -1, .eos_id = -1,
                            .eot_id = -1};
    if (c.byte_level && c.n_regex == 0) {
        /* ByteLevel without its regex and no Split: the whole text is one piece. */
        sp.n_regex = 1;
        static const char *const whole[] = {"(?s).+"};
        sp.regex = whole;
    }
    sp.ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    sp.byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    const char *unk = jstr(model, "unk_token");
    if (unk) sp.unk_id = find_first(&sp, &unk, 1);

    /* bos / eos / add_bos: tokenizer_config.json beside the file, else guesses. */
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path + 1) : 0;
    char *cfg_path = pt_xmalloc(dl + 32);
    memcpy(cfg_path, path, dl);
    strcpy(cfg_path + dl, "tokenizer_config.json");
    size_t cl;
    char *ctext = pt_read_file(cfg_path, &cl);
    free(cfg_path);
    if (ctext) {
        cfg = cJSON_ParseWithLength(ctext, cl);
        free(ctext);
    }
    const char *bos = cfg ? config_token(cfg, "bos_token") : NULL;
    const char *eos = cfg ? config_token(cfg, "eos_token") : NULL;
    static const char *const bos_guess[] = {"<s>", "<|begin_of_text|>"};
    static const char *const eos_guess[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"};
    sp.bos_id = bos ? find_first(&sp, &bos, 1) : find_first(&sp, bos_guess, 2);
    sp.eos_id = eos ? find_first(&sp, &eos, 1) : find_first(&sp, eos_guess, 4);
    const cJSON *ab = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token") : NULL;
    if (cJSON_IsBool(ab)) {
        sp.add_bos = cJSON_IsTrue(ab);
    } else {
        /* TemplateProcessing that starts with a special token adds bos. */
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
        const cJSON *first = cJSON_GetArrayItem(single, 0);
        sp.add_bos = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken") != NULL;
    }
    rc = pt_tokenizer_build(out, &sp, err);
done:
    for (size_t i = 0; i < nm && merge_buf; i++) free(merge_buf[i]);
    for (size_t i = 0; i < c.n_regex; i++) free(c.owned[i]);
    free(merge_buf);
    free(merges);
    free(toks);
    free(types);
    cJSON_Delete(cfg);
    cJSON_Delete(root);
    return rc;
}
