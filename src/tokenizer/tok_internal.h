/* Internals shared by the tokenizer's files: the tokenizer struct, UTF-8
 * helpers and the regex pre-tokenizer. Not a public interface. */
#ifndef PROTEUS_TOK_INTERNAL_H
#define PROTEUS_TOK_INTERNAL_H

#include "proteus/tokenizer.h"

#define PT_TOK_MAX_REGEX 4

/* A span of bytes inside some text. */
typedef struct {
    size_t off, len;
} tok_span;

typedef struct {
    tok_span *v;
    size_t n, cap;
} tok_spans;

typedef struct tok_pretok tok_pretok; /* compiled regex stages (pretok.c) */

struct pt_tokenizer {
    pt_tokenizer_kind kind;
    size_t n_vocab;
    char **tok;             /* (n_vocab) piece text as stored, NUL-terminated */
    uint32_t *tok_len;      /* (n_vocab) */
    float *scores;          /* (n_vocab) or NULL */
    uint8_t *type;          /* (n_vocab) PT_TOKEN_* */
    char **dec;             /* (n_vocab) decoded bytes of each token (see pt_tokenizer_piece) */
    uint32_t *dec_len;      /* (n_vocab) */
    size_t max_dec;

    /* piece text -> id: open addressing, (vocab_cap) slots holding id + 1 */
    int32_t *vocab_slots;
    size_t vocab_cap;
    /* (left id, right id) -> (rank, merged id), open addressing */
    uint64_t *merge_keys;   /* (merge_cap) left << 32 | right, UINT64_MAX = empty */
    int32_t *merge_rank;    /* (merge_cap) */
    int32_t *merge_res;     /* (merge_cap) */
    size_t merge_cap;
    size_t n_merges;

    char bmap[256][2];      /* byte-level: UTF-8 of each byte's stand-in character */
    uint8_t bmap_len[256];
    int32_t byte_tok[256];  /* byte-level: id of each byte's stand-in; SPM: <0xNN>; -1 absent */

    /* Added tokens (CONTROL, USER_DEFINED, UNKNOWN) matched in text, longest
     * first, indexed by first byte: ids added_ids[added_start[b] .. added_start[b+1]). */
    int32_t *added_ids;
    uint32_t added_start[257];

    tok_pretok *pretok;     /* NULL: the whole segment is one piece */
    bool add_space_prefix, prefix_first_only, metaspace_split;
    bool ignore_merges, byte_fallback;
    int32_t unk_id, bos_id, eos_id, eot_id;
    bool add_bos;
    int32_t *eog;
    size_t n_eog;
};

/* utf8 */
/* Length of the valid UTF-8 sequence starting at s[0, n), or 0 if invalid. */
size_t tok_utf8_valid_len(const uint8_t *s, size_t n);
/* Length of the character at s (1 for an invalid byte). */
size_t tok_utf8_char_len(const uint8_t *s, size_t n);
/* Encode cp as UTF-8 into out (4 bytes room); returns length. */
size_t tok_utf8_put(uint32_t cp, char *out);
/* GPT-2's byte <-> stand-in code point mapping. */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp); /* -1 when cp is no stand-in */
uint32_t tok_utf8_decode(const uint8_t *s, size_t n, size_t *adv);

/* spans */
int tok_spans_push(tok_spans *s, size_t off, size_t len);

/* pretok.c: compile regex stages (Isolated split); split text[0, len) into spans. */
int tok_pretok_new(tok_pretok **out, const char *const *regex, size_t n, pt_err *err);
void tok_pretok_free(tok_pretok *p);
int tok_pretok_split(const tok_pretok *p, const char *text, size_t len, tok_spans *out);
/* Published patterns for a named pre-tokenizer; returns the stage count. */
size_t tok_pretok_patterns(pt_pretok_kind kind, const char **stages);
pt_pretok_kind tok_pretok_from_name(const char *name, bool *known);

extern const char *const TOK_RE_GPT2;

#endif
