/* Tokenizer from GGUF metadata (tokenizer.ggml.*), and the dispatch on a
 * model file's source. */
#include <stdlib.h>
#include <string.h>

#include "proteus/gguf.h"
#include "tokenizer/tok_internal.h"

static int32_t get_id(const pt_gguf *g, const char *key) {
    uint32_t v;
    return pt_gguf_get_u32(g, key, &v) && v <= INT32_MAX ? (int32_t)v : -1;
}

int pt_tokenizer_load_gguf(pt_tokenizer **out, const pt_gguf *g, pt_err *err) {
    *out = NULL;
    char *model = pt_gguf_get_str(g, "tokenizer.ggml.model");
    if (!model || !strcmp(model, "none") || !strcmp(model, "no_vocab")) {
        free(model);
        return pt_tokenizer_load_bytes(out, err);
    }
    pt_tokenizer_spec sp = {.unk_id = -1};
    if (!strcmp(model, "gpt2")) {
        sp.kind = PT_TOKENIZER_BYTE_BPE;
    } else if (!strcmp(model, "llama")) {
        sp.kind = PT_TOKENIZER_SPM_BPE;
        sp.byte_fallback = true;
        sp.add_space_prefix = true;
    } else {
        int rc = pt_err_set(err, PT_ERR_UNSUPPORTED, "tokenizer: tokenizer.ggml.model \"%s\" is not supported", model);
        free(model);
        return rc;
    }
    free(model);

    const pt_gguf_kv *tk = pt_gguf_get_arr(g, "tokenizer.ggml.tokens", PT_GGUF_STRING);
    if (!tk || tk->n == 0)
        return pt_err_set(err, PT_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens missing or not a string array");
    size_t n = tk->n;
    const pt_gguf_kv *sc = pt_gguf_get_arr(g, "tokenizer.ggml.scores", PT_GGUF_FLOAT32);
    const pt_gguf_kv *ty = pt_gguf_get_arr(g, "tokenizer.ggml.token_type", PT_GGUF_INT32);
    const pt_gguf_kv *mg = pt_gguf_get_arr(g, "tokenizer.ggml.merges", PT_GGUF_STRING);
    if ((sc && sc->n != n) || (ty && ty->n != n))
        return pt_err_set(err, PT_ERR_FORMAT, "tokenizer: scores/token_type length differs from tokens (%zu)", n);

    const char **toks = calloc(n, sizeof(char *));
    size_t *lens = calloc(n, sizeof(size_t));
    float *scores = sc ? malloc(n * sizeof(float)) : NULL;
    int32_t *types = ty ? malloc(n * sizeof(int32_t)) : NULL;
    size_t nm = mg ? mg->n : 0;
    const char **merges = calloc(nm ? nm : 1, sizeof(char *));
    size_t *mlens = calloc(nm ? nm : 1, sizeof(size_t));
    char *pre = pt_gguf_get_str(g, "tokenizer.ggml.pre");
    int rc = PT_OK;
    if (!toks || !lens || (sc && !scores) || (ty && !types) || !merges || !mlens) {
        rc = pt_err_set(err, PT_ERR_NOMEM, "tokenizer: out of memory for %zu tokens", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        toks[i] = tk->strs[i].ptr;
        lens[i] = tk->strs[i].len;
    }
    if (sc) memcpy(scores, sc->data, n * sizeof(float));   /* data may be unaligned */
    if (ty) memcpy(types, ty->data, n * sizeof(int32_t));
    for (size_t i = 0; i < nm; i++) {
        merges[i] = mg->strs[i].ptr;
        mlens[i] = mg->strs[i].len;
    }
    sp.n_vocab = n;
    sp.tokens = toks;
    sp.token_lens = lens;
    sp.scores = scores;
    sp.types = types;
    sp.n_merges = nm;
    sp.merges = merges;
    sp.merge_lens = mlens;
    if (sp.kind == PT_TOKENIZER_BYTE_BPE) {
        bool known;
        sp.pretok = tok_pretok_from_name(pre, &known);
        if (!known) pt_log(PT_LOG_WARN, "tokenizer: pre-tokenizer \"%s\" unknown, using GPT-2's", pre);
        /* Llama 3's tokenizer.json sets ignore_merges (a pre-token found whole
         * in the vocabulary is one token); GGUF has no key for it, so it
         * follows from the pre-tokenizer name, as the conversion implies. */
        sp.ignore_merges = pre && (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3") || !strcmp(pre, "llama-v3"));
    }
    bool b;
    if (pt_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b)) sp.add_space_prefix = b;
    sp.unk_id = get_id(g, "tokenizer.ggml.unknown_token_id");
    sp.bos_id = get_id(g, "tokenizer.ggml.bos_token_id");
    sp.eos_id = get_id(g, "tokenizer.ggml.eos_token_id");
    sp.eot_id = get_id(g, "tokenizer.ggml.eot_token_id");
    sp.add_bos = sp.kind == PT_TOKENIZER_SPM_BPE; /* llama.cpp's default per model type */
    if (pt_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b)) sp.add_bos = b;
    rc = pt_tokenizer_build(out, &sp, err);
done:
    free(toks);
    free(lens);
    free(scores);
    free(types);
    free(merges);
    free(mlens);
    free(pre);
    return rc;
}

int pt_tokenizer_load(pt_tokenizer **out, const pt_model_file *mf, pt_err *err) {
    *out = NULL;
    if (!mf) return pt_err_set(err, PT_ERR_INVALID, "tokenizer: no model file");
    if (mf->gguf && pt_gguf_find(mf->gguf, "tokenizer.ggml.model"))
        return pt_tokenizer_load_gguf(out, mf->gguf, err);
    if (mf->tokenizer_json) return pt_tokenizer_load_json(out, mf->tokenizer_json, err);
    return pt_tokenizer_load_bytes(out, err);
}
