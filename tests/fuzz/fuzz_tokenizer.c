/* pt_tokenizer_encode and pt_tokenizer_decode on arbitrary bytes, with the
 * tokenizers the server meets: synthetic:tiny-llama (what tests and the
 * sanitizer build serve), GPT-2 byte-level BPE, Qwen2's pre-tokenizer and
 * normalizer, and SentencePiece BPE with byte fallback (the golden
 * tokenizer.json files under tests/golden/tokenizer).
 *
 * Input: byte 0 picks the tokenizer and the flags, the rest is the text;
 * the same rest, read as little-endian int32s, is decoded as token ids
 * (out-of-range ids included) and pushed through the streaming detokenizer.
 * Checked: every id encode returns is in the vocabulary; GPT-2 (no
 * normalizer, every byte a token) decodes its own encoding back to the
 * exact text; the streaming detokenizer's output is valid UTF-8, as
 * tokenizer.h promises. */
#include "fuzz_common.h"
#include "proteus/model_file.h"
#include "proteus/tokenizer.h"

#ifndef FUZZ_SOURCE_DIR
#define FUZZ_SOURCE_DIR "."
#endif

enum { TOK_TINY_LLAMA, TOK_GPT2, TOK_QWEN2, TOK_SPM_BPE, N_TOK };
static pt_tokenizer *toks[N_TOK];

static pt_tokenizer *load_json(const char *name) {
    char path[1024];
    const char *src = getenv("PROTEUS_SOURCE_DIR") ? getenv("PROTEUS_SOURCE_DIR") : FUZZ_SOURCE_DIR;
    snprintf(path, sizeof path, "%s/tests/golden/tokenizer/%s", src, name);
    pt_tokenizer *t = NULL;
    pt_err err;
    if (pt_tokenizer_load_json(&t, path, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    pt_model_file mf;
    pt_err err;
    if (pt_model_file_open(&mf, "synthetic:tiny-llama", &err) != 0 || pt_tokenizer_load(&toks[TOK_TINY_LLAMA], &mf, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    pt_model_file_close(&mf);
    toks[TOK_GPT2] = load_json("bl_gpt2.tokenizer.json");
    toks[TOK_QWEN2] = load_json("bl_qwen2.tokenizer.json");
    toks[TOK_SPM_BPE] = load_json("spm_bpe.tokenizer.json");
    return 0;
}

/* Length of the valid UTF-8 prefix of s[0, n) (no overlongs, surrogates or code points past U+10FFFF). */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n) return i;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % N_TOK;
    bool add_bos = data[0] & 0x10, parse_special = data[0] & 0x20, skip_special = data[0] & 0x40;
    const pt_tokenizer *t = toks[which];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    int32_t *ids = NULL;
    size_t n = 0;
    pt_err err;
    FUZZ_CHECK(pt_tokenizer_encode(t, text, len, add_bos, parse_special, &ids, &n, &err) == 0, "encode: %s", err.msg);
    size_t vocab = pt_tokenizer_vocab_size(t);
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < vocab, "id %d at %zu", ids[i], i);
    char *out = NULL;
    size_t out_len = 0;
    FUZZ_CHECK(pt_tokenizer_decode(t, ids, n, skip_special, &out, &out_len) == 0, "decode of an encoding failed");
    if (which == TOK_GPT2 && !add_bos && !parse_special)
        FUZZ_CHECK(out_len == len && !memcmp(out, text, len), "GPT-2 round trip: %zu bytes in, %zu out", len, out_len);
    free(out);
    free(ids);

    /* The same bytes as token ids, valid or not. */
    size_t n_raw = len / 4;
    int32_t *raw = malloc((n_raw ? n_raw : 1) * sizeof *raw);
    memcpy(raw, text, n_raw * 4);
    FUZZ_CHECK(pt_tokenizer_decode(t, raw, n_raw, skip_special, &out, &out_len) == 0, "decode of raw ids failed");
    FUZZ_CHECK(strlen(out) <= out_len, "decode: NUL terminator past the length");
    free(out);
    pt_detok d;
    pt_detok_init(&d, t, skip_special);
    size_t cap = pt_tokenizer_max_piece(t) * 3 + 16;
    char *piece = malloc(cap);
    for (size_t i = 0; i < n_raw; i++) {
        size_t m = pt_detok_push(&d, raw[i], piece, cap);
        FUZZ_CHECK(m <= cap && utf8_valid_prefix((uint8_t *)piece, m) == m, "detok push of %d: invalid UTF-8", raw[i]);
    }
    size_t m = pt_detok_flush(&d, piece, 16);
    FUZZ_CHECK(m <= 16 && utf8_valid_prefix((uint8_t *)piece, m) == m, "detok flush: invalid UTF-8");
    free(piece);
    free(raw);
    return 0;
}
