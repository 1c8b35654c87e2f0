/* Tokenizer core: building from plain arrays, the BPE merge loop, encode,
 * decode, streaming detokenization and accessors.
 *
 * BPE works on one pre-tokenized piece ("word") at a time. The word starts
 * as one symbol per UTF-8 character; a binary heap holds every adjacent pair
 * that can merge, keyed by (merge rank or -score, position), so the best
 * pair is found in O(log n) and a word of n characters costs O(n log n).
 * Heap entries are not removed when a neighbour changes: an entry is checked
 * against the symbols' current lengths when popped and dropped if stale. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int32_t pt_tokenizer_find(const pt_tokenizer *t, const char *s, size_t n) {
    if (!t->vocab_slots) return -1;
    size_t mask = t->vocab_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t v = t->vocab_slots[i];
        if (v == 0) return -1;
        int32_t id = v - 1;
        if (t->tok_len[id] == n && memcmp(t->tok[id], s, n) == 0) return id;
    }
}

static void vocab_insert(pt_tokenizer *t, int32_t id) {
    if (pt_tokenizer_find(t, t->tok[id], t->tok_len[id]) >= 0) return; /* first one wins */
    size_t mask = t->vocab_cap - 1;
    size_t i = hash_bytes(t->tok[id], t->tok_len[id]) & mask;
    while (t->vocab_slots[i]) i = (i + 1) & mask;
    t->vocab_slots[i] = id + 1;
}

static bool merge_find(const pt_tokenizer *t, int32_t l, int32_t r, int32_t *rank, int32_t *res) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t mask = t->merge_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (t->merge_keys[i] == UINT64_MAX) return false;
        if (t->merge_keys[i] == key) {
            *rank = t->merge_rank[i];
            *res = t->merge_res[i];
            return true;
        }
    }
}

static void merge_insert(pt_tokenizer *t, int32_t l, int32_t r, int32_t rank, int32_t res) {
    int32_t rk, rs;
    if (merge_find(t, l, r, &rk, &rs)) return; /* a repeated merge keeps its first rank */
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t mask = t->merge_cap - 1;
    size_t i = hash_u64(key) & mask;
    while (t->merge_keys[i] != UINT64_MAX) i = (i + 1) & mask;
    t->merge_keys[i] = key;
    t->merge_rank[i] = rank;
    t->merge_res[i] = res;
}

/* ---------------------------------------------------------------- build */

static bool is_added_type(int type) {
    return type == PT_TOKEN_CONTROL || type == PT_TOKEN_USER_DEFINED || type == PT_TOKEN_UNKNOWN;
}

static int parse_byte_token(const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    const char *h = strchr(hex, s[3]), *l = strchr(hex, s[4]);
    if (!h || !l || !s[3] || !s[4]) return -1;
    return (int)((h - hex) * 16 + (l - hex));
}

/* Decoded bytes of one token: what it contributes to text. */
static void build_dec(pt_tokenizer *t, int32_t id) {
    const char *s = t->tok[id];
    size_t n = t->tok_len[id];
    char *d = pt_xmalloc(n + 1);
    size_t m = 0;
    int b;
    if (t->kind == PT_TOKENIZER_BYTES) {
        if (id < 256) d[m++] = (char)id;
        else { memcpy(d, s, n); m = n; }
    } else if (t->kind == PT_TOKENIZER_SPM_BPE && t->type[id] == PT_TOKEN_BYTE &&
               (b = parse_byte_token(s, n)) >= 0) {
        d[m++] = (char)b;
    } else if (t->kind == PT_TOKENIZER_SPM_BPE) {
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) { d[m++] = ' '; i += 3; }
            else d[m++] = s[i++];
        }
    } else { /* byte-level: each stand-in character is one byte */
        for (size_t i = 0; i < n;) {
            size_t adv;
            uint32_t cp = tok_utf8_decode((const uint8_t *)s + i, n - i, &adv);
            int byte = tok_cp_to_byte(cp);
            if (byte >= 0) d[m++] = (char)byte;
            else { memcpy(d + m, s + i, adv); m += adv; }
            i += adv;
        }
    }
    d[m] = 0;
    t->dec[id] = d;
    t->dec_len[id] = (uint32_t)m;
    if (m > t->max_dec) t->max_dec = m;
}

typedef struct {
    uint8_t first;
    uint32_t len;
    int32_t id;
} added_key;

/* By first byte, then longest first, so the first hit is the longest match. */
static int cmp_added(const void *a, const void *b) {
    const added_key *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void build_added(pt_tokenizer *t) {
    size_t n = 0;
    for (size_t i = 0; i < t->n_vocab; i++) n += is_added_type(t->type[i]) && t->tok_len[i] > 0;
    t->added_ids = pt_xcalloc(n ? n : 1, sizeof(int32_t));
    size_t k = 0;
    for (size_t i = 0; i < t->n_vocab; i++)
        if (is_added_type(t->type[i]) && t->tok_len[i] > 0) t->added_ids[k++] = (int32_t)i;
    added_key *keys = pt_xcalloc(n ? n : 1, sizeof(added_key));
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->added_ids[i];
        keys[i] = (added_key){(uint8_t)t->tok[id][0], t->tok_len[id], id};
    }
    qsort(keys, n, sizeof(added_key), cmp_added);
    for (size_t i = 0; i < n; i++) t->added_ids[i] = keys[i].id;
    free(keys);
    size_t j = 0;
    for (int b = 0; b < 256; b++) {
        t->added_start[b] = (uint32_t)j;
        while (j < n && (uint8_t)t->tok[t->added_ids[j]][0] == b) j++;
    }
    t->added_start[256] = (uint32_t)n;
}

static void build_eog(pt_tokenizer *t) {
    static const char *const eot_names[] = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<|eom_id|>",
                                            "<end_of_turn>"};
    static const char *const end_names[] = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<|eom_id|>",
                                            "<|endoftext|>", "<|end_of_text|>", "</s>",
                                            "<end_of_turn>"};
    if (t->eot_id < 0) {
        for (size_t i = 0; i < sizeof(eot_names) / sizeof(*eot_names) && t->eot_id < 0; i++) {
            int32_t id = pt_tokenizer_find(t, eot_names[i], strlen(eot_names[i]));
            if (id >= 0 && is_added_type(t->type[id])) t->eot_id = id;
        }
        if (t->eot_id < 0) t->eot_id = t->eos_id;
    }
    size_t cap = 2 + sizeof(end_names) / sizeof(*end_names);
    t->eog = pt_xcalloc(cap, sizeof(int32_t));
    int32_t cand[16];
    size_t nc = 0;
    cand[nc++] = t->eos_id;
    cand[nc++] = t->eot_id;
    for (size_t i = 0; i < sizeof(end_names) / sizeof(*end_names); i++) {
        int32_t id = pt_tokenizer_find(t, end_names[i], strlen(end_names[i]));
        if (id >= 0 && is_added_type(t->type[id])) cand[nc++] = id;
    }
    for (size_t i = 0; i < nc; i++) {
        if (cand[i] < 0) continue;
        bool dup = false;
        for (size_t j = 0; j < t->n_eog; j++) dup |= t->eog[j] == cand[i];
        if (!dup) t->eog[t->n_eog++] = cand[i];
    }
}

int pt_tokenizer_build(pt_tokenizer **out, const pt_tokenizer_spec *sp, pt_err *err) {
    *out = NULL;
    if (!sp || sp->n_vocab == 0 || sp->n_vocab > INT32_MAX / 2 || !sp->tokens)
        return pt_err_set(err, PT_ERR_INVALID, "tokenizer: empty or oversized vocabulary");
    pt_tokenizer *t = pt_xcalloc(1, sizeof(*t));
    size_t n = sp->n_vocab;
    t->kind = sp->kind;
    t->n_vocab = n;
    t->tok = pt_xcalloc(n, sizeof(char *));
    t->tok_len = pt_xcalloc(n, sizeof(uint32_t));
    t->type = pt_xcalloc(n, 1);
    t->dec = pt_xcalloc(n, sizeof(char *));
    t->dec_len = pt_xcalloc(n, sizeof(uint32_t));
    if (sp->scores) {
        t->scores = pt_xcalloc(n, sizeof(float));
        memcpy(t->scores, sp->scores, n * sizeof(float));
    }
    for (size_t i = 0; i < n; i++) {
        const char *s = sp->tokens[i] ? sp->tokens[i] : "";
        size_t len = sp->token_lens ? sp->token_lens[i] : strlen(s);
        if (len > UINT32_MAX / 2) {
            pt_tokenizer_free(t);
            return pt_err_set(err, PT_ERR_FORMAT, "tokenizer: token %zu is %zu bytes long", i, len);
        }
        t->tok[i] = pt_xmalloc(len + 1);
        memcpy(t->tok[i], s, len);
        t->tok[i][len] = 0;
        t->tok_len[i] = (uint32_t)len;
        int ty = sp->types ? sp->types[i] : PT_TOKEN_NORMAL;
        t->type[i] = (uint8_t)((ty >= PT_TOKEN_NORMAL && ty <= PT_TOKEN_BYTE) ? ty : PT_TOKEN_NORMAL);
        if (t->kind == PT_TOKENIZER_SPM_BPE && t->type[i] == PT_TOKEN_NORMAL && sp->byte_fallback &&
            parse_byte_token(s, len) >= 0)
            t->type[i] = PT_TOKEN_BYTE;
    }
    t->vocab_cap = pow2_at_least(n * 2);
    t->vocab_slots = pt_xcalloc(t->vocab_cap, sizeof(int32_t));
    for (size_t i = 0; i < n; i++) vocab_insert(t, (int32_t)i);

    t->merge_cap = pow2_at_least(sp->n_merges * 2);
    t->merge_keys = pt_xmalloc(t->merge_cap * sizeof(uint64_t));
    memset(t->merge_keys, 0xFF, t->merge_cap * sizeof(uint64_t));
    t->merge_rank = pt_xcalloc(t->merge_cap, sizeof(int32_t));
    t->merge_res = pt_xcalloc(t->merge_cap, sizeof(int32_t));
    size_t skipped = 0;
    for (size_t i = 0; i < sp->n_merges; i++) {
        const char *m = sp->merges[i];
        size_t ml = sp->merge_lens ? sp->merge_lens[i] : strlen(m);
        const char *sp_at = ml > 1 ? memchr(m + 1, ' ', ml - 1) : NULL;
        if (!sp_at) { skipped++; continue; }
        size_t ll = (size_t)(sp_at - m), rl = ml - ll - 1;
        int32_t l = pt_tokenizer_find(t, m, ll), r = pt_tokenizer_find(t, sp_at + 1, rl);
        char *cat = pt_xmalloc(ll + rl + 1);
        memcpy(cat, m, ll);
        memcpy(cat + ll, sp_at + 1, rl);
        int32_t res = pt_tokenizer_find(t, cat, ll + rl);
        free(cat);
        if (l < 0 || r < 0 || res < 0) { skipped++; continue; }
        merge_insert(t, l, r, (int32_t)i, res);
        t->n_merges++;
    }
    if (skipped) pt_log(PT_LOG_WARN, "tokenizer: %zu merges name tokens not in the vocabulary", skipped);

    for (int b = 0; b < 256; b++) {
        char buf[8];
        size_t bl;
        t->bmap_len[b] = (uint8_t)tok_utf8_put(tok_byte_to_cp((uint8_t)b), t->bmap[b]);
        if (t->kind == PT_TOKENIZER_BYTE_BPE) bl = tok_utf8_put(tok_byte_to_cp((uint8_t)b), buf);
        else if (t->kind == PT_TOKENIZER_SPM_BPE) bl = (size_t)snprintf(buf, sizeof(buf), "<0x%02X>", b);
        else { buf[0] = (char)b; bl = 1; }
        t->byte_tok[b] = t->kind == PT_TOKENIZER_BYTES ? (b < (int)n ? b : -1)
                                                        : pt_tokenizer_find(t, buf, bl);
    }
    if (t->kind == PT_TOKENIZER_BYTE_BPE) {
        /* Some vocabularies (SmolLM2) lack a few control bytes; like HF, such
         * bytes then encode to unk, or to nothing when there is no unk. */
        int missing = 0;
        for (int b = 0; b < 256; b++) missing += t->byte_tok[b] < 0;
        if (missing) pt_log(PT_LOG_DEBUG, "tokenizer: %d bytes have no byte-level token", missing);
    }
    for (size_t i = 0; i < n; i++) build_dec(t, (int32_t)i);
    build_added(t);

    if (t->kind == PT_TOKENIZER_BYTE_BPE) {
        const char *stages[PT_TOK_MAX_REGEX];
        size_t ns = sp->n_regex;
        if (ns) {
            if (ns > PT_TOK_MAX_REGEX) ns = PT_TOK_MAX_REGEX + 1; /* let tok_pretok_new complain */
            for (size_t i = 0; i < ns && i < PT_TOK_MAX_REGEX; i++) stages[i] = sp->regex[i];
        } else {
            ns = tok_pretok_patterns(sp->pretok == PT_PRETOK_NONE ? PT_PRETOK_GPT2 : sp->pretok, stages);
        }
        int rc = tok_pretok_new(&t->pretok, ns > PT_TOK_MAX_REGEX ? sp->regex : stages, ns, err);
        if (rc) {
            pt_tokenizer_free(t);
            return rc;
        }
    }
    t->add_space_prefix = sp->add_space_prefix;
    t->prefix_first_only = sp->prefix_first_only;
    t->metaspace_split = sp->metaspace_split;
    t->ignore_merges = sp->ignore_merges;
    t->byte_fallback = sp->byte_fallback;
    int32_t nv = (int32_t)n;
    t->unk_id = sp->unk_id >= 0 && sp->unk_id < nv ? sp->unk_id : -1;
    t->bos_id = sp->bos_id >= 0 && sp->bos_id < nv ? sp->bos_id : -1;
    t->eos_id = sp->eos_id >= 0 && sp->eos_id < nv ? sp->eos_id : -1;
    t->eot_id = sp->eot_id >= 0 && sp->eot_id < nv ? sp->eot_id : -1;
    t->add_bos = sp->add_bos && t->bos_id >= 0;
    build_eog(t);
    *out = t;
    return PT_OK;
}

void pt_tokenizer_free(pt_tokenizer *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_vocab; i++) {
        if (t->tok) free(t->tok[i]);
        if (t->dec) free(t->dec[i]);
    }
    free(t->tok);
    free(t->tok_len);
    free(t->dec);
    free(t->dec_len);
    free(t->scores);
    free(t->type);
    free(t->vocab_slots);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_res);
    free(t->added_ids);
    free(t->eog);
    tok_pretok_free(t->pretok);
    free(t);
}

int pt_tokenizer_load_bytes(pt_tokenizer **out, pt_err *err) {
    const char *toks[258];
    size_t lens[258];
    int32_t types[258];
    char bytes[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        toks[i] = &bytes[i];
        lens[i] = 1;
        types[i] = PT_TOKEN_NORMAL;
    }
    toks[256] = "<s>";
    toks[257] = "</s>";
    lens[256] = 3;
    lens[257] = 4;
    types[256] = types[257] = PT_TOKEN_CONTROL;
    pt_tokenizer_spec sp = {.kind = PT_TOKENIZER_BYTES, .n_vocab = 258, .tokens = toks, .token_lens = lens,
                            .types = types, .unk_id = -1, .bos_id = 256, .eos_id = 257, .eot_id = -1};
    return pt_tokenizer_build(out, &sp, err);
}

/* ---------------------------------------------------------------- encode */

typedef struct {
    int32_t *v;
    size_t n, cap;
    bool nomem;
} ids_vec;

static void ids_push(ids_vec *o, int32_t id) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 256;
        int32_t *v = realloc(o->v, cap * sizeof(int32_t));
        if (!v) { o->nomem = true; return; }
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = id;
}

typedef struct {
    int32_t id;          /* -1: not in the vocabulary */
    uint32_t start, len; /* bytes of the word; len 0 = merged away */
    int32_t prev, next;  /* -1 at the ends */
} bpe_sym;

typedef struct {
    double pri;          /* merge rank, or -score; lower merges first */
    uint32_t pos;        /* start of the left symbol: ties go to the leftmost pair */
    int32_t left, right;
    uint32_t llen, rlen; /* lengths when queued; a changed length means stale */
    int32_t res;
} bpe_pair;

/* Reusable buffers for one encode call. */
typedef struct {
    bpe_sym *sym;
    size_t sym_cap;
    bpe_pair *heap;
    size_t heap_n, heap_cap;
    char *buf;           /* mapped / normalized text */
    size_t buf_cap;
    bool nomem;
} bpe_scratch;

static bool pair_less(const bpe_pair *a, const bpe_pair *b) {
    return a->pri < b->pri || (a->pri == b->pri && a->pos < b->pos);
}

static void heap_push(bpe_scratch *s, bpe_pair p) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        bpe_pair *h = realloc(s->heap, cap * sizeof(*h));
        if (!h) { s->nomem = true; return; }
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_less(&p, &s->heap[up])) break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = p;
}

static bpe_pair heap_pop(bpe_scratch *s) {
    bpe_pair top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && pair_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!pair_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* Queue the pair (a, b) if the two may merge. */
static void try_pair(const pt_tokenizer *t, bpe_scratch *s, const char *w, int32_t a, int32_t b) {
    if (a < 0 || b < 0) return;
    const bpe_sym *x = &s->sym[a], *y = &s->sym[b];
    bpe_pair p = {.pos = x->start, .left = a, .right = b, .llen = x->len, .rlen = y->len};
    if (t->n_merges) {
        int32_t rank;
        if (x->id < 0 || y->id < 0 || !merge_find(t, x->id, y->id, &rank, &p.res)) return;
        p.pri = rank;
    } else if (t->scores) {
        /* Adjacent symbols are adjacent bytes of the word: the merged text is a span. */
        p.res = pt_tokenizer_find(t, w + x->start, (size_t)x->len + y->len);
        if (p.res < 0 || t->type[p.res] != PT_TOKEN_NORMAL) return;
        p.pri = -(double)t->scores[p.res];
    } else {
        return;
    }
    heap_push(s, p);
}

static void emit_unknown(const pt_tokenizer *t, const char *w, const bpe_sym *y, ids_vec *o, bool *last_unk) {
    if (t->kind == PT_TOKENIZER_BYTE_BPE) {
        /* An unknown symbol is the stand-in of a byte the vocabulary lacks:
         * dropped, as HF does without an unk token. */
        return;
    }
    if (t->byte_fallback) {
        bool all = true;
        for (uint32_t k = 0; k < y->len; k++) all &= t->byte_tok[(uint8_t)w[y->start + k]] >= 0;
        if (all) {
            for (uint32_t k = 0; k < y->len; k++) ids_push(o, t->byte_tok[(uint8_t)w[y->start + k]]);
            *last_unk = false;
            return;
        }
    }
    if (t->unk_id >= 0 && !*last_unk) ids_push(o, t->unk_id); /* HF fuse_unk */
    *last_unk = t->unk_id >= 0;
}

/* BPE over one word w[0, n), appending ids. */
static void bpe_word(const pt_tokenizer *t, bpe_scratch *s, const char *w, size_t n, ids_vec *o) {
    if (n == 0) return;
    if (t->ignore_merges) {
        int32_t id = pt_tokenizer_find(t, w, n);
        if (id >= 0) { ids_push(o, id); return; }
    }
    if (n > s->sym_cap) {
        bpe_sym *v = realloc(s->sym, n * sizeof(*v));
        if (!v) { s->nomem = true; return; }
        s->sym = v;
        s->sym_cap = n;
    }
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = tok_utf8_char_len((const uint8_t *)w + i, n - i);
        s->sym[ns] = (bpe_sym){pt_tokenizer_find(t, w + i, cl), (uint32_t)i, (uint32_t)cl, ns - 1, ns + 1};
        ns++;
        i += cl;
    }
    s->sym[ns - 1].next = -1;
    s->heap_n = 0;
    for (int32_t i = 0; i + 1 < ns; i++) try_pair(t, s, w, i, i + 1);
    while (s->heap_n && !s->nomem) {
        bpe_pair p = heap_pop(s);
        bpe_sym *x = &s->sym[p.left], *y = &s->sym[p.right];
        if (x->len != p.llen || y->len != p.rlen || x->next != p.right) continue; /* stale */
        x->len += y->len;
        x->id = p.res;
        x->next = y->next;
        if (y->next >= 0) s->sym[y->next].prev = p.left;
        y->len = 0;
        try_pair(t, s, w, x->prev, p.left);
        try_pair(t, s, w, p.left, x->next);
    }
    bool last_unk = false;
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const bpe_sym *y = &s->sym[i];
        if (y->id >= 0) {
            ids_push(o, y->id);
            last_unk = false;
        } else {
            emit_unknown(t, w, y, o, &last_unk);
        }
    }
}

static bool buf_reserve(bpe_scratch *s, size_t n) {
    if (n <= s->buf_cap) return true;
    char *b = realloc(s->buf, n);
    if (!b) { s->nomem = true; return false; }
    s->buf = b;
    s->buf_cap = n;
    return true;
}

/* One stretch of ordinary text (no added tokens inside). */
static int encode_text(const pt_tokenizer *t, bpe_scratch *s, const char *text, size_t len, bool first,
                       tok_spans *spans, ids_vec *o) {
    if (len == 0) return PT_OK;
    if (t->kind == PT_TOKENIZER_BYTES) {
        for (size_t i = 0; i < len; i++) ids_push(o, t->byte_tok[(uint8_t)text[i]]);
        return PT_OK;
    }
    if (t->kind == PT_TOKENIZER_BYTE_BPE) {
        int rc = tok_pretok_split(t->pretok, text, len, spans);
        if (rc) return rc;
        for (size_t k = 0; k < spans->n; k++) {
            const uint8_t *p = (const uint8_t *)text + spans->v[k].off;
            size_t pl = spans->v[k].len;
            if (!buf_reserve(s, pl * 2)) return PT_ERR_NOMEM;
            size_t m = 0;
            for (size_t i = 0; i < pl; i++) {
                memcpy(s->buf + m, t->bmap[p[i]], t->bmap_len[p[i]]);
                m += t->bmap_len[p[i]];
            }
            bpe_word(t, s, s->buf, m, o);
        }
        return s->nomem ? PT_ERR_NOMEM : PT_OK;
    }
    /* SPM: spaces become U+2581 "▁", and one is put in front. */
    bool prefix = t->add_space_prefix && (first || !t->prefix_first_only);
    if (!buf_reserve(s, len * 3 + 3)) return PT_ERR_NOMEM;
    size_t m = 0;
    if (prefix) { memcpy(s->buf, "\xE2\x96\x81", 3); m = 3; }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(s->buf + m, "\xE2\x96\x81", 3); m += 3; }
        else s->buf[m++] = text[i];
    }
    if (!t->metaspace_split) {
        bpe_word(t, s, s->buf, m, o);
    } else {
        size_t start = 0;
        for (size_t i = 1; i <= m; i++) {
            if (i == m || (i + 3 <= m && memcmp(s->buf + i, "\xE2\x96\x81", 3) == 0)) {
                bpe_word(t, s, s->buf + start, i - start, o);
                start = i;
            }
        }
    }
    return s->nomem ? PT_ERR_NOMEM : PT_OK;
}

/* Longest added token starting at text[i], or -1. */
static int32_t match_added(const pt_tokenizer *t, const char *text, size_t len, size_t i) {
    uint8_t b = (uint8_t)text[i];
    for (uint32_t k = t->added_start[b]; k < t->added_start[b + 1]; k++) {
        int32_t id = t->added_ids[k];
        size_t tl = t->tok_len[id];
        if (tl <= len - i && memcmp(text + i, t->tok[id], tl) == 0) return id;
    }
    return -1;
}

int pt_tokenizer_encode(const pt_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t **ids, size_t *n, pt_err *err) {
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len))
        return pt_err_set(err, PT_ERR_INVALID, "tokenizer: encode of NULL");
    ids_vec o = {0};
    bpe_scratch s = {0};
    tok_spans spans = {0};
    int rc = PT_OK;
    if (add_bos && t->bos_id >= 0) ids_push(&o, t->bos_id);
    size_t seg = 0;
    bool first = true;
    for (size_t i = 0; i < len && rc == PT_OK;) {
        int32_t id = parse_special ? match_added(t, text, len, i) : -1;
        if (id < 0) { i++; continue; }
        rc = encode_text(t, &s, text + seg, i - seg, first, &spans, &o);
        if (i > seg) first = false;
        ids_push(&o, id);
        first = false;
        i += t->tok_len[id];
        seg = i;
    }
    if (rc == PT_OK) rc = encode_text(t, &s, text + seg, len - seg, first, &spans, &o);
    free(s.sym);
    free(s.heap);
    free(s.buf);
    free(spans.v);
    if (rc == PT_OK && (o.nomem || s.nomem)) rc = PT_ERR_NOMEM;
    if (rc) {
        free(o.v);
        return pt_err_set(err, rc, "tokenizer: encode failed (%s)", rc == PT_ERR_NOMEM ? "out of memory" : "pre-tokenizer");
    }
    /* No token at all: still a buffer the caller frees. */
    *ids = o.v ? o.v : calloc(1, sizeof(int32_t));
    if (!*ids) return pt_err_set(err, PT_ERR_NOMEM, "tokenizer: encode failed (out of memory)");
    *n = o.n;
    return PT_OK;
}

/* ---------------------------------------------------------------- decode */

static bool strips_first_space(const pt_tokenizer *t) {
    return t->kind == PT_TOKENIZER_SPM_BPE && t->add_space_prefix;
}

static bool skipped(const pt_tokenizer *t, int32_t id, bool skip_special) {
    return id < 0 || (size_t)id >= t->n_vocab || (skip_special && pt_tokenizer_is_special(t, id));
}

int pt_tokenizer_decode(const pt_tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                        char **out, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (!skipped(t, ids[i], skip_special)) total += t->dec_len[ids[i]];
    char *s = malloc(total + 1);
    if (!s) return PT_ERR_NOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (skipped(t, ids[i], skip_special)) continue;
        memcpy(s + m, t->dec[ids[i]], t->dec_len[ids[i]]);
        m += t->dec_len[ids[i]];
    }
    size_t off = strips_first_space(t) && m > 0 && s[0] == ' ';
    memmove(s, s + off, m - off);
    m -= off;
    s[m] = 0;
    *out = s;
    *len = m;
    return PT_OK;
}

size_t pt_tokenizer_piece(const pt_tokenizer *t, int32_t id, char *buf, size_t cap) {
    if (id < 0 || (size_t)id >= t->n_vocab) return 0;
    size_t l = t->dec_len[id];
    if (cap) memcpy(buf, t->dec[id], l < cap ? l : cap); /* cap 0 (buf may be NULL) asks for the length */
    return l;
}

size_t pt_tokenizer_max_piece(const pt_tokenizer *t) { return t->max_dec; }

char *pt_tokenizer_piece_dup(const pt_tokenizer *t, int32_t id, size_t *len) {
    size_t n = pt_tokenizer_piece(t, id, NULL, 0);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    pt_tokenizer_piece(t, id, s, n);
    s[n] = 0;
    if (len) *len = n;
    return s;
}

/* ---------------------------------------------------------------- streaming */

void pt_detok_init(pt_detok *d, const pt_tokenizer *t, bool skip_special) {
    memset(d, 0, sizeof(*d));
    d->t = t;
    d->skip_special = skip_special;
}

/* Could s[0, n) (n < full length) still become a valid UTF-8 character? */
static bool utf8_incomplete(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (need == 0 || n >= need || c == 0xC0 || c == 0xC1) return false;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return false;
    if (n >= 2) {
        if (c == 0xE0 && s[1] < 0xA0) return false;
        if (c == 0xED && s[1] > 0x9F) return false;
        if (c == 0xF0 && s[1] < 0x90) return false;
        if (c == 0xF4 && s[1] > 0x8F) return false;
    }
    return true;
}

static size_t put_capped(char *out, size_t m, size_t cap, const void *src, size_t n) {
    if (m + n <= cap) memcpy(out + m, src, n);
    return m + n;
}

size_t pt_detok_push(pt_detok *d, int32_t id, char *out, size_t cap) {
    const pt_tokenizer *t = d->t;
    if (skipped(t, id, d->skip_special)) return 0;
    const uint8_t *p = (const uint8_t *)t->dec[id];
    size_t pl = t->dec_len[id];
    if (!d->started && pl > 0) {
        if (strips_first_space(t) && p[0] == ' ') { p++; pl--; }
        d->started = pl > 0;
    }
    /* Work on the held bytes followed by this token's bytes. */
    size_t total = d->n_pend + pl, m = 0, i = 0;
    uint8_t stack[256];
    uint8_t *b = total <= sizeof(stack) ? stack : malloc(total);
    if (!b) return 0;
    memcpy(b, d->pend, d->n_pend);
    memcpy(b + d->n_pend, p, pl);
    d->n_pend = 0;
    p = b;
    pl = total;
    while (i < pl) {
        size_t vl = tok_utf8_valid_len(p + i, pl - i);
        if (vl) {
            m = put_capped(out, m, cap, p + i, vl);
            i += vl;
        } else if (utf8_incomplete(p + i, pl - i)) {
            memcpy(d->pend, p + i, pl - i);
            d->n_pend = pl - i;
            i = pl;
        } else {
            m = put_capped(out, m, cap, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    if (b != stack) free(b);
    return m <= cap ? m : cap;
}

size_t pt_detok_flush(pt_detok *d, char *out, size_t cap) {
    size_t m = 0;
    if (d->n_pend) m = put_capped(out, 0, cap, "\xEF\xBF\xBD", 3);
    d->n_pend = 0;
    return m <= cap ? m : cap;
}

/* ---------------------------------------------------------------- accessors */

pt_tokenizer_kind pt_tokenizer_get_kind(const pt_tokenizer *t) { return t->kind; }
size_t pt_tokenizer_vocab_size(const pt_tokenizer *t) { return t->n_vocab; }
int32_t pt_tokenizer_bos(const pt_tokenizer *t) { return t->bos_id; }
int32_t pt_tokenizer_eos(const pt_tokenizer *t) { return t->eos_id; }
int32_t pt_tokenizer_eot(const pt_tokenizer *t) { return t->eot_id; }
bool pt_tokenizer_add_bos(const pt_tokenizer *t) { return t->add_bos; }

const int32_t *pt_tokenizer_eog(const pt_tokenizer *t, size_t *n) {
    *n = t->n_eog;
    return t->eog;
}

bool pt_tokenizer_is_eog(const pt_tokenizer *t, int32_t id) {
    for (size_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return true;
    return false;
}

bool pt_tokenizer_is_special(const pt_tokenizer *t, int32_t id) {
    if (id < 0 || (size_t)id >= t->n_vocab) return false;
    return t->type[id] == PT_TOKEN_CONTROL || t->type[id] == PT_TOKEN_UNKNOWN;
}
