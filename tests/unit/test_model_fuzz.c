/* Deterministic mutation tests of the model readers: a valid tiny GGUF and a
 * valid safetensors image are corrupted a few hundred ways (byte flips in the
 * header, truncations, counts/lengths/offsets/types overwritten with extreme
 * values). Every mutant must either open (and then validate and close
 * cleanly) or fail with a message that starts with the file name. Mutants
 * are parsed from exact-size heap copies so that ASan sees any overread; the
 * leak checker sees any missed free. */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_build.h"
#include "model/safetensors.h"
#include "proteus/model_file.h"
#include "test.h"

static const uint64_t extremes[] = {0, 1, 5, 32, 0x7f, 0xff, 0xffff, 0xffffffffull, 0x100000000ull,
                                    1ull << 62, 1ull << 63, UINT64_MAX, UINT64_MAX - 31};

typedef struct {
    int opened, failed, bad_msg;
} tally;

static void try_gguf(const uint8_t *img, size_t n, tally *t) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, img, n);
    pt_model_file mf;
    pt_err err = {{0}};
    int rc = pt_model_file_open_gguf_memory(&mf, "fuzz.gguf", copy, n, &err);
    if (rc == PT_OK) {
        t->opened++;
        pt_err verr = {{0}};
        if (pt_model_file_validate(&mf, &verr) != PT_OK && strncmp(verr.msg, "fuzz.gguf: ", 11) != 0) t->bad_msg++;
        pt_model_file_close(&mf);
    } else {
        t->failed++;
        if (strncmp(err.msg, "fuzz.gguf: ", 11) != 0 || strchr(err.msg, '\n')) {
            if (t->bad_msg++ < 5) fprintf(stderr, "bad message: '%s'\n", err.msg);
        }
    }
    free(copy);
}

/* Offsets of every occurrence of s inside buf[0, n). */
static size_t find_all(const uint8_t *buf, size_t n, const char *s, size_t *out, size_t cap) {
    size_t k = 0, l = strlen(s);
    for (size_t i = 0; i + l <= n && k < cap; i++)
        if (!memcmp(buf + i, s, l)) out[k++] = i;
    return k;
}

static void test_fuzz_gguf_no_crash(void) {
    gb_buf b = {0};
    size_t hdr;
    gb_build_tiny_llama(&b, PT_DTYPE_Q8_0, &hdr);
    tally t = {0};
    try_gguf(b.p, b.n, &t);
    CHECK_EQ_INT(t.opened, 1); /* the unmutated image is valid */

    /* Fields worth hitting: string length prefixes of keys and tensor names,
     * and the fields that follow a tensor name (n_dims, ne, type, offset). */
    size_t fields[256], nf = 0;
    size_t hits[64];
    const char *landmarks[] = {"general.alignment", "llama.block_count", "tokenizer.ggml.tokens",
                               "llama.embedding_length", "blk.0.attn_q.weight", "output.weight",
                               "token_embd.weight"};
    for (size_t i = 0; i < sizeof landmarks / sizeof landmarks[0]; i++) {
        size_t k = find_all(b.p, hdr, landmarks[i], hits, 64);
        for (size_t j = 0; j < k && nf + 6 < 256; j++) {
            size_t end = hits[j] + strlen(landmarks[i]);
            fields[nf++] = hits[j] - 8;  /* length prefix */
            fields[nf++] = end;          /* value type, or n_dims */
            fields[nf++] = end + 4;      /* array element type / value, or ne[0] */
            fields[nf++] = end + 12;     /* array length, or ne[1] */
            fields[nf++] = end + 20;     /* tensor type (2-D) */
            fields[nf++] = end + 24;     /* tensor offset (2-D) */
        }
    }
    fields[nf++] = 4;  /* version */
    fields[nf++] = 8;  /* n_tensors */
    fields[nf++] = 16; /* n_kv */

    pt_rng rng;
    pt_rng_seed(&rng, 20240501);
    uint8_t *m = malloc(b.n);
    for (int iter = 0; iter < 600; iter++) {
        memcpy(m, b.p, b.n);
        size_t n = b.n;
        switch (iter % 4) {
        case 0: { /* 1 to 4 random byte flips in the header */
            int k = 1 + (int)(pt_rng_next(&rng) % 4);
            for (int i = 0; i < k; i++) {
                size_t at = (size_t)(pt_rng_next(&rng) % hdr); /* one call per statement: a fixed order */
                m[at] ^= (uint8_t)(1 + pt_rng_next(&rng) % 255);
            }
            break;
        }
        case 1: /* truncation anywhere */
            n = (size_t)(pt_rng_next(&rng) % b.n);
            break;
        case 2: { /* an extreme 64-bit value over a known field */
            size_t at = fields[pt_rng_next(&rng) % nf];
            uint64_t v = extremes[pt_rng_next(&rng) % (sizeof extremes / sizeof extremes[0])];
            if (at + 8 <= n) memcpy(m + at, &v, 8);
            break;
        }
        default: { /* an extreme 32-bit value (types, n_dims) over a known field */
            size_t at = fields[pt_rng_next(&rng) % nf];
            uint32_t v = (uint32_t)extremes[pt_rng_next(&rng) % (sizeof extremes / sizeof extremes[0])];
            if (pt_rng_next(&rng) & 1) v = (uint32_t)(pt_rng_next(&rng) % 40);
            if (at + 4 <= n) memcpy(m + at, &v, 4);
            break;
        }
        }
        try_gguf(m, n, &t);
    }
    free(m);
    free(b.p);
    CHECK_EQ_INT(t.bad_msg, 0);
    CHECK(t.failed > 300); /* most mutants hit something the reader must reject */
    CHECK(t.opened >= 1);
    printf("gguf mutants: %d opened, %d rejected\n", t.opened, t.failed);
}

/* The default model's header, mutated in a private copy-on-write mapping. */
static void test_fuzz_default_model_header_no_crash(void) {
    char path[1024];
    const char *env = getenv("PROTEUS_DEFAULT_MODEL");
    if (env && *env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                  getenv("HOME") ? getenv("HOME") : "/root");
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "default model absent: default-model mutations skipped\n");
        return;
    }
    struct stat st;
    fstat(fd, &st);
    uint8_t *map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    CHECK(map != MAP_FAILED);
    if (map == MAP_FAILED) return;
    pt_gguf *g = NULL;
    pt_err err;
    CHECK_EQ_INT(pt_gguf_parse(&g, map, (uint64_t)st.st_size, &err), PT_OK);
    size_t hdr = g ? (size_t)g->data_offset : 4096;
    pt_gguf_free(g);
    pt_rng rng;
    pt_rng_seed(&rng, 7);
    int bad = 0;
    for (int iter = 0; iter < 40; iter++) {
        size_t at = (size_t)(pt_rng_next(&rng) % hdr);
        uint8_t old = map[at];
        map[at] ^= (uint8_t)(1 + pt_rng_next(&rng) % 255);
        pt_model_file mf;
        int rc = pt_model_file_open_gguf_memory(&mf, "fuzz.gguf", map, (size_t)st.st_size, &err);
        if (rc == PT_OK) pt_model_file_close(&mf);
        else if (strncmp(err.msg, "fuzz.gguf: ", 11) != 0) bad++;
        map[at] = old;
    }
    CHECK_EQ_INT(bad, 0);
    munmap(map, (size_t)st.st_size);
}

static size_t build_safetensors(uint8_t *out, size_t cap) {
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
                      "\"lm_head.weight\":{\"dtype\":\"BF16\",\"shape\":[4,8],\"data_offsets\":[32,96]},"
                      "\"model.embed_tokens.weight\":{\"dtype\":\"F16\",\"shape\":[2,2,2,2],\"data_offsets\":[96,128]}}";
    uint64_t hl = strlen(hdr);
    size_t n = 8 + (size_t)hl + 128;
    if (n > cap) return 0;
    memcpy(out, &hl, 8);
    memcpy(out + 8, hdr, hl);
    for (size_t i = 0; i < 128; i++) out[8 + hl + i] = (uint8_t)i;
    return n;
}

static void test_fuzz_safetensors_no_crash(void) {
    uint8_t base[1024];
    size_t n = build_safetensors(base, sizeof base);
    pt_safetensors st;
    pt_err err;
    CHECK_EQ_INT(pt_safetensors_parse(&st, base, n, &err), PT_OK);
    CHECK_EQ_INT(st.n_tensors, 3);
    pt_safetensors_free(&st);

    const char *digits_at[] = {"[8]", "[4,8]", "[0,32]", "[32,96]", "[96,128]", "F32", "BF16", "{"};
    pt_rng rng;
    pt_rng_seed(&rng, 99);
    int ok = 0, failed = 0, bad = 0;
    for (int iter = 0; iter < 300; iter++) {
        uint8_t *m = malloc(n);
        memcpy(m, base, n);
        size_t len = n;
        switch (iter % 3) {
        case 0: { /* flip bytes of the header length and the JSON */
            int k = 1 + (int)(pt_rng_next(&rng) % 3);
            for (int i = 0; i < k; i++) {
                size_t at = (size_t)(pt_rng_next(&rng) % (n - 128));
                m[at] ^= (uint8_t)(1 + pt_rng_next(&rng) % 255);
            }
            break;
        }
        case 1:
            len = (size_t)(pt_rng_next(&rng) % n);
            break;
        default: { /* replace a digit or dtype character with another character */
            size_t hits[8];
            const char *lm = digits_at[pt_rng_next(&rng) % (sizeof digits_at / sizeof digits_at[0])];
            size_t k = find_all(m, n - 128, lm, hits, 8);
            if (k) {
                size_t at = hits[pt_rng_next(&rng) % k];
                at += pt_rng_next(&rng) % strlen(lm);
                static const char alphabet[] = "0123456789-.e,[]\"{}: 9999999999999999999";
                m[at] = (uint8_t)alphabet[pt_rng_next(&rng) % (sizeof alphabet - 1)];
            }
            break;
        }
        }
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, m, len);
        free(m);
        err.msg[0] = 0;
        int rc = pt_safetensors_parse(&st, exact, len, &err);
        if (rc == PT_OK) {
            ok++;
            for (size_t i = 0; i < st.n_tensors; i++) /* every tensor lies inside the buffer */
                if (st.tensors[i].data < exact || st.tensors[i].data + st.tensors[i].nbytes > exact + len) bad++;
            pt_safetensors_free(&st);
        } else {
            failed++;
            if (!err.msg[0] || strchr(err.msg, '\n')) bad++;
        }
        free(exact);
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(failed > 150);
    printf("safetensors mutants: %d parsed, %d rejected\n", ok, failed);
}

TEST_MAIN(TEST(test_fuzz_gguf_no_crash), TEST(test_fuzz_default_model_header_no_crash),
          TEST(test_fuzz_safetensors_no_crash))
