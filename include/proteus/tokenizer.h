/* Tokenizers: text <-> token ids, the way Hugging Face `tokenizers` does it.
 *
 * Three kinds, chosen by the model file:
 *   BYTE_BPE  GPT-2 style byte-level BPE (GGUF tokenizer.ggml.model "gpt2", or a
 *             tokenizer.json with a ByteLevel pre-tokenizer). Text is split by the
 *             pre-tokenizer regex of the model (tokenizer.ggml.pre: smollm, gpt2,
 *             llama-bpe / llama3, qwen2; or the Split/Digits/ByteLevel stages of
 *             tokenizer.json), every byte is mapped to its printable stand-in
 *             character, and each piece is merged by merge rank.
 *   SPM_BPE   SentencePiece-style BPE (GGUF "llama", or a tokenizer.json with the
 *             Llama normalizer Prepend("▁") + Replace(" ", "▁") or a Metaspace
 *             pre-tokenizer): spaces become "▁", pieces merge by merge rank or by
 *             piece score, characters outside the vocabulary fall back to
 *             <0xNN> byte tokens.
 *   BYTES     256 byte tokens and nothing else: the fallback for synthetic
 *             models, whose files carry no vocabulary.
 *
 * Special tokens in text. Hugging Face splits every added token (special or
 * not) out of the input before anything else, so "<|im_start|>" typed by a
 * user becomes the single control token. pt_tokenizer_encode does the same
 * when parse_special is true; with parse_special false the whole text is
 * ordinary text and "<|im_start|>" becomes the ids of its characters. The
 * goldens (tests/golden/tokenizer) use HF's default, parse_special = true.
 * Servers should render a chat template with parse_special = true but may
 * want to encode untrusted user content with false, so users cannot forge
 * turn markers.
 *
 * The tokenizer is immutable once loaded and safe to share between threads. */
#ifndef PROTEUS_TOKENIZER_H
#define PROTEUS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/model_file.h"
#include "proteus/util.h"

typedef struct pt_tokenizer pt_tokenizer;

typedef enum {
    PT_TOKENIZER_BYTES = 0,
    PT_TOKENIZER_BYTE_BPE = 1,
    PT_TOKENIZER_SPM_BPE = 2,
} pt_tokenizer_kind;

/* Token types, numbered as GGUF's tokenizer.ggml.token_type. */
enum {
    PT_TOKEN_NORMAL = 1,
    PT_TOKEN_UNKNOWN = 2,
    PT_TOKEN_CONTROL = 3,      /* special: split out of text, skippable in decode */
    PT_TOKEN_USER_DEFINED = 4, /* added, not special: split out of text, always decoded */
    PT_TOKEN_UNUSED = 5,
    PT_TOKEN_BYTE = 6,         /* <0xNN> byte-fallback token */
};

/* Pre-tokenizers known by name (GGUF tokenizer.ggml.pre). */
typedef enum {
    PT_PRETOK_NONE = 0,   /* whole text is one piece (SentencePiece style) */
    PT_PRETOK_GPT2,
    PT_PRETOK_SMOLLM,     /* every digit alone, then GPT-2 */
    PT_PRETOK_LLAMA3,     /* digits in groups of 1-3 */
    PT_PRETOK_QWEN2,      /* Llama 3's pattern with single digits */
} pt_pretok_kind;

/* Everything needed to build a tokenizer from plain arrays. Strings are
 * byte strings with explicit lengths; they are copied. */
typedef struct {
    pt_tokenizer_kind kind;
    size_t n_vocab;
    const char *const *tokens;   /* (n_vocab) piece text, as stored in the vocab */
    const size_t *token_lens;    /* (n_vocab) or NULL: NUL-terminated */
    const float *scores;         /* (n_vocab) or NULL; SPM without merges merges by score */
    const int32_t *types;        /* (n_vocab) PT_TOKEN_*, or NULL: all normal */
    size_t n_merges;
    const char *const *merges;   /* (n_merges) "left right", rank = index */
    const size_t *merge_lens;    /* (n_merges) or NULL */
    pt_pretok_kind pretok;       /* used when n_regex == 0 */
    size_t n_regex;
    const char *const *regex;    /* Isolated split stages, applied in order */
    bool add_space_prefix;       /* SPM: "▁" before each text segment */
    bool prefix_first_only;      /* SPM: ... before the first segment only (Metaspace "first") */
    bool metaspace_split;        /* SPM: split pieces before each "▁" */
    bool ignore_merges;          /* a piece found whole in the vocab is one token */
    bool byte_fallback;          /* SPM: unknown characters become <0xNN> tokens */
    int32_t unk_id, bos_id, eos_id, eot_id; /* -1 when absent; eot -1: guessed from the vocab */
    bool add_bos;
} pt_tokenizer_spec;

int pt_tokenizer_build(pt_tokenizer **out, const pt_tokenizer_spec *spec, pt_err *err);

/* From a model file: GGUF metadata, else the HF directory's tokenizer.json
 * (with tokenizer_config.json beside it for bos/eos/add_bos), else BYTES. */
int pt_tokenizer_load(pt_tokenizer **out, const pt_model_file *mf, pt_err *err);
/* From a Hugging Face tokenizer.json. */
int pt_tokenizer_load_json(pt_tokenizer **out, const char *path, pt_err *err);
/* From a parsed GGUF (what pt_tokenizer_load uses for GGUF sources). */
int pt_tokenizer_load_gguf(pt_tokenizer **out, const pt_gguf *g, pt_err *err);
/* 256 byte tokens plus bos (256) and eos (257). */
int pt_tokenizer_load_bytes(pt_tokenizer **out, pt_err *err);
void pt_tokenizer_free(pt_tokenizer *t);

/* Encode text[0, len) (any bytes; invalid UTF-8 never fails). *ids is
 * malloc'd, owned by the caller. add_bos prepends bos when the model has one. */
int pt_tokenizer_encode(const pt_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t **ids, size_t *n, pt_err *err);

/* Decode to a malloc'd, NUL-terminated byte string (*len excludes the NUL).
 * Bytes are returned as the tokens give them: not necessarily valid UTF-8.
 * skip_special drops control tokens. Ids out of range are skipped. */
int pt_tokenizer_decode(const pt_tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                        char **out, size_t *len);

/* The bytes token `id` contributes to decoded text (SPM: "▁" is a space,
 * <0xNN> is one byte; byte-level: the bytes behind the stand-ins; special
 * tokens: their text). Writes min(len, cap) bytes, returns len (0 for a bad id). */
size_t pt_tokenizer_piece(const pt_tokenizer *t, int32_t id, char *buf, size_t cap);
/* The piece as a malloc'd NUL-terminated string (length in *len, may be
 * NULL); "" for a bad id; NULL when out of memory. */
char *pt_tokenizer_piece_dup(const pt_tokenizer *t, int32_t id, size_t *len);
/* Largest value pt_tokenizer_piece can return. */
size_t pt_tokenizer_max_piece(const pt_tokenizer *t);

pt_tokenizer_kind pt_tokenizer_get_kind(const pt_tokenizer *t);
size_t pt_tokenizer_vocab_size(const pt_tokenizer *t);
int32_t pt_tokenizer_bos(const pt_tokenizer *t); /* -1 when none */
int32_t pt_tokenizer_eos(const pt_tokenizer *t);
int32_t pt_tokenizer_eot(const pt_tokenizer *t); /* end of turn: <|im_end|>, <|eot_id|>, <|end|>; else eos */
bool pt_tokenizer_add_bos(const pt_tokenizer *t); /* the model's default */
/* Every id that ends generation (eos, eot, and end markers present in the vocab). */
const int32_t *pt_tokenizer_eog(const pt_tokenizer *t, size_t *n);
bool pt_tokenizer_is_eog(const pt_tokenizer *t, int32_t id);
bool pt_tokenizer_is_special(const pt_tokenizer *t, int32_t id);
/* Exact vocabulary lookup of a piece as stored (byte-level: stand-in form). -1 if absent. */
int32_t pt_tokenizer_find(const pt_tokenizer *t, const char *piece, size_t len);

/* Streaming detokenizer: push one token at a time, get back only complete
 * UTF-8; a multi-byte sequence split across tokens is held until it
 * completes. Bytes that can never become valid UTF-8 come out as U+FFFD, so
 * the output is always valid UTF-8. For SPM models the space prefix of the
 * first token is dropped, as decode does. */
typedef struct {
    const pt_tokenizer *t;
    bool skip_special;
    bool started;      /* a token with text has been seen */
    uint8_t pend[4];   /* an incomplete UTF-8 sequence carried to the next token */
    size_t n_pend;
} pt_detok;

void pt_detok_init(pt_detok *d, const pt_tokenizer *t, bool skip_special);
/* out needs room for pt_tokenizer_max_piece(t) * 3 + 16 bytes. Returns bytes written. */
size_t pt_detok_push(pt_detok *d, int32_t id, char *out, size_t cap);
/* End of stream: what is held becomes U+FFFD. out needs 16 bytes. */
size_t pt_detok_flush(pt_detok *d, char *out, size_t cap);

#endif
