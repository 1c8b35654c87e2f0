/* GGUF reader: a well-formed tiny model parses to the values written, and
 * each kind of malformed file is rejected with the specific message that
 * names the problem. Files are built in memory by tests/unit/gguf_build.h
 * and parsed from exact-size heap copies so that any overread is caught by
 * ASan. */
#include <unistd.h>

#include "gguf_build.h"
#include "proteus/gguf.h"
#include "proteus/model_file.h"
#include "test.h"

/* Parse an exact-size copy of b; returns the code and leaves the message in err. */
static int parse_copy(const gb_buf *b, size_t n, pt_err *err) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, b->p, n);
    pt_gguf *g = NULL;
    err->msg[0] = 0;
    int rc = pt_gguf_parse(&g, copy, n, err);
    if (rc == PT_OK) CHECK(g != NULL);
    pt_gguf_free(g);
    free(copy);
    return rc;
}

#define EXPECT_ERR(b, code, substr)                                                          \
    do {                                                                                     \
        pt_err e_;                                                                           \
        int rc_ = parse_copy(b, (b)->n, &e_);                                                \
        CHECK_EQ_INT(rc_, code);                                                             \
        CHECK_MSG(strstr(e_.msg, substr) != NULL, "message '%s' lacks '%s'", e_.msg, substr); \
    } while (0)

static void test_parse_tiny(void) {
    gb_buf b = {0};
    size_t data_off;
    gb_build_tiny_llama(&b, PT_DTYPE_Q8_0, &data_off);
    pt_gguf *g = NULL;
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_gguf_parse(&g, b.p, b.n, &err), PT_OK);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        free(b.p);
        return;
    }
    CHECK_EQ_INT(g->version, 3);
    CHECK_EQ_INT(g->n_kvs, 12);
    CHECK_EQ_INT(g->n_tensors, 1 + 9 * GB_TINY_LAYERS + 2);
    CHECK_EQ_INT(g->alignment, 32);
    CHECK_EQ_INT(g->data_offset, data_off);
    uint32_t u = 0;
    CHECK(pt_gguf_get_u32(g, "llama.block_count", &u) && u == 2);
    CHECK(!pt_gguf_get_u32(g, "general.architecture", &u)); /* a string, not an integer */
    float f = 0;
    CHECK(pt_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) && f == 1e-5f);
    bool bo;
    CHECK(!pt_gguf_get_bool(g, "nope", &bo));
    char *arch = pt_gguf_get_str(g, "general.architecture");
    CHECK(arch && !strcmp(arch, "llama"));
    free(arch);
    const pt_gguf_kv *tok = pt_gguf_get_arr(g, "tokenizer.ggml.tokens", PT_GGUF_STRING);
    CHECK(tok && tok->n == 256);
    if (tok) CHECK(tok->strs[255].len == 4 && !memcmp(tok->strs[255].ptr, "t255", 4));
    CHECK(pt_gguf_get_arr(g, "tokenizer.ggml.tokens", PT_GGUF_INT32) == NULL);
    const pt_gguf_tensor *t = pt_gguf_find_tensor(g, "blk.1.ffn_down.weight");
    CHECK(t && t->n_dims == 2 && t->ne[0] == 128 && t->ne[1] == 64 && t->type == PT_DTYPE_Q8_0);
    if (t) CHECK_EQ_INT(t->nbytes, 64 * (128 / 32) * 34);
    CHECK(pt_gguf_find_tensor(g, "blk.2.ffn_down.weight") == NULL);
    pt_gguf_free(g);
    free(b.p);
}

static void test_model_from_tiny_gguf(void) {
    gb_buf b = {0};
    size_t data_off;
    gb_build_tiny_llama(&b, PT_DTYPE_Q8_0, &data_off);
    char path[] = "/tmp/pt_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK_EQ_INT(gb_write_file(path, b.p, b.n), 0);
    pt_model_file mf;
    pt_err err = {{0}};
    int rc = pt_model_file_open(&mf, path, &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc == PT_OK) {
        const pt_model_config *c = &mf.config;
        CHECK_EQ_INT(mf.source, PT_SOURCE_GGUF);
        CHECK_EQ_INT(c->arch, PT_ARCH_LLAMA);
        CHECK_EQ_INT(c->n_layers, 2);
        CHECK_EQ_INT(c->d_model, 64);
        CHECK_EQ_INT(c->n_heads, 4);
        CHECK_EQ_INT(c->n_kv_heads, 2);
        CHECK_EQ_INT(c->head_dim, 16);
        CHECK_EQ_INT(c->rope_dim, 16);
        CHECK_EQ_INT(c->d_ff, 128);
        CHECK_EQ_INT(c->vocab_size, 256); /* from tokenizer.ggml.tokens */
        CHECK_EQ_INT(c->max_ctx, 512);
        CHECK_EQ_INT(c->rope_style, PT_ROPE_NORM);
        CHECK(!c->tied_embeddings && !c->qkv_bias);
        CHECK(c->rope_theta == 10000.0f && c->rope_scale_factor == 0.0f);
        CHECK(mf.chat_template && !strcmp(mf.chat_template, "{{ messages }}"));
        CHECK(mf.gguf != NULL && mf.tokenizer_json == NULL);
        CHECK_EQ_INT(mf.n_tensors, 21);
        const pt_tensor *t = pt_model_file_find(&mf, "output_norm.weight");
        CHECK(t && t->type == PT_DTYPE_F32 && ((const float *)t->data)[63] == 1.0f);
        pt_err verr = {{0}};
        CHECK_MSG(pt_model_file_validate(&mf, &verr) == PT_OK, "%s", verr.msg);

        /* A renamed tensor and a reshaped one are each reported by name. */
        pt_tensor *up = (pt_tensor *)pt_model_file_find(&mf, "blk.1.ffn_up.weight");
        up->name[0] = 'X';
        CHECK_EQ_INT(pt_model_file_validate(&mf, &verr), PT_ERR_FORMAT);
        CHECK_MSG(strstr(verr.msg, "tensor 'blk.1.ffn_up.weight' missing") && !strncmp(verr.msg, path, strlen(path)),
                  "%s", verr.msg);
        up->name[0] = 'b';
        pt_tensor *k = (pt_tensor *)pt_model_file_find(&mf, "blk.0.attn_k.weight");
        k->ne[1] = 64;
        CHECK_EQ_INT(pt_model_file_validate(&mf, &verr), PT_ERR_FORMAT);
        CHECK_MSG(strstr(verr.msg, "tensor 'blk.0.attn_k.weight' has shape [64, 64, 1, 1], expected [64, 32]"),
                  "%s", verr.msg);
        k->ne[1] = 32;
        pt_tensor *n = (pt_tensor *)pt_model_file_find(&mf, "blk.0.ffn_norm.weight");
        n->type = PT_DTYPE_F16;
        CHECK_EQ_INT(pt_model_file_validate(&mf, &verr), PT_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(verr.msg, "'blk.0.ffn_norm.weight' is F16, expected F32"), "%s", verr.msg);
        pt_model_file_close(&mf);
    }
    CHECK(mf.tensors == NULL && mf.path == NULL); /* close leaves it zeroed */
    unlink(path);

    /* The same image from memory, and a bad one: messages start with the name. */
    CHECK_EQ_INT(pt_model_file_open_gguf_memory(&mf, "mem.gguf", b.p, b.n, &err), PT_OK);
    pt_model_file_close(&mf);
    memcpy(b.p + 4, "\x01\x00\x00\x00", 4);
    CHECK_EQ_INT(pt_model_file_open_gguf_memory(&mf, "mem.gguf", b.p, b.n, &err), PT_ERR_UNSUPPORTED);
    CHECK_MSG(!strncmp(err.msg, "mem.gguf: GGUF version 1", 24), "%s", err.msg);
    free(b.p);
}

static void test_unsupported_arch(void) {
    gb_buf b = {0};
    gb_header(&b, 3, 0, 1);
    gb_kv_str(&b, "general.architecture", "gpt2");
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_model_file_open_gguf_memory(&mf, "a.gguf", b.p, b.n, &err), PT_ERR_UNSUPPORTED);
    CHECK_MSG(!strcmp(err.msg, "a.gguf: architecture 'gpt2' not supported (llama, qwen2)"), "%s", err.msg);
    b.n = 0;
    gb_header(&b, 3, 0, 2);
    gb_kv_str(&b, "general.architecture", "llama");
    gb_kv_u32(&b, "llama.block_count", 2);
    CHECK_EQ_INT(pt_model_file_open_gguf_memory(&mf, "a.gguf", b.p, b.n, &err), PT_ERR_FORMAT);
    CHECK_MSG(!strcmp(err.msg, "a.gguf: key 'llama.embedding_length' missing"), "%s", err.msg);
    free(b.p);
}

static void test_bad_header(void) {
    gb_buf b = {0};
    gb_put(&b, "GGUX", 4);
    gb_u32(&b, 3);
    gb_u64(&b, 0);
    gb_u64(&b, 0);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "not a GGUF file (bad magic)");
    b.n = 0;
    gb_header(&b, 1, 0, 0);
    EXPECT_ERR(&b, PT_ERR_UNSUPPORTED, "GGUF version 1 is not supported");
    b.n = 0;
    gb_header(&b, 7, 0, 0);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "unknown GGUF version 7");
    b.n = 0;
    gb_header(&b, 2, 0, 0); /* v2, empty: valid */
    pt_err err;
    CHECK_EQ_INT(parse_copy(&b, b.n, &err), PT_OK);
    b.n = 0;
    gb_header(&b, 3, 1ull << 40, 0);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "byte offset 8: tensor count 1099511627776 exceeds file");
    b.n = 0;
    gb_header(&b, 3, 0, UINT64_MAX);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "byte offset 16: metadata count 18446744073709551615 exceeds file");
    free(b.p);
}

static void test_truncated(void) {
    gb_buf b = {0};
    size_t data_off;
    gb_build_tiny_llama(&b, PT_DTYPE_Q8_0, &data_off);
    /* Every cut inside the header and metadata fails, and so does any cut of the data. */
    size_t cuts[] = {0, 3, 4, 7, 10, 23, 24, 30, 60, 200, 1000, 2000, data_off - 1, data_off + 1, b.n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        pt_err err;
        int rc = parse_copy(&b, cuts[i], &err);
        CHECK_MSG(rc == PT_ERR_FORMAT, "cut at %zu: rc %d", cuts[i], rc);
        CHECK_MSG(strstr(err.msg, "truncated") || strstr(err.msg, "exceeds file") ||
                      strstr(err.msg, "past end of file") || strstr(err.msg, "bad magic"),
                  "cut at %zu: '%s'", cuts[i], err.msg);
    }
    pt_err err;
    CHECK_EQ_INT(parse_copy(&b, 10, &err), PT_ERR_FORMAT);
    CHECK_MSG(!strcmp(err.msg, "byte offset 8: truncated: tensor count needs 8 bytes, file size 10"), "%s", err.msg);
    CHECK_EQ_INT(parse_copy(&b, b.n - 1, &err), PT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "tensor 'output.weight': data [") && strstr(err.msg, "past end of file"), "%s", err.msg);
    free(b.p);
}

static void test_bad_metadata(void) {
    gb_buf b = {0};
    gb_header(&b, 3, 0, 1);
    gb_u64(&b, 9999999); /* key length */
    gb_put(&b, "abcdefgh", 8);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "byte offset 24: key: string length 9999999 exceeds file (size 40)");

    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_str(&b, "k");
    gb_u32(&b, PT_GGUF_ARRAY);
    gb_u32(&b, PT_GGUF_UINT32);
    gb_u64(&b, 1ull << 62); /* times 4 bytes overflows */
    gb_u32(&b, 0);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "key 'k': array length 4611686018427387904 exceeds file");

    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_str(&b, "k");
    gb_u32(&b, PT_GGUF_ARRAY);
    gb_u32(&b, PT_GGUF_STRING);
    gb_u64(&b, 1000);
    gb_str(&b, "x");
    EXPECT_ERR(&b, PT_ERR_FORMAT, "key 'k': array length 1000 exceeds file");

    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_str(&b, "k");
    gb_u32(&b, PT_GGUF_ARRAY);
    gb_u32(&b, PT_GGUF_ARRAY);
    gb_u64(&b, 1);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "key 'k': nested arrays are not supported");

    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_str(&b, "k");
    gb_u32(&b, 13);
    gb_u64(&b, 0);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "key 'k': unknown value type 13");

    b.n = 0;
    gb_header(&b, 3, 0, 2);
    gb_kv_u32(&b, "k", 1);
    gb_kv_u32(&b, "k", 2);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "duplicate key 'k'");

    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_kv_u32(&b, "general.alignment", 48);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "general.alignment must be a power of two");
    free(b.p);
}

/* One-tensor file: kv general.alignment, one tensor info, 64 bytes of data. */
static void one_tensor(gb_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                       uint64_t offset, size_t data_bytes) {
    b->n = 0;
    gb_header(b, 3, 1, 1);
    gb_kv_u32(b, "general.alignment", 32);
    gb_tensor_info(b, name, n_dims, ne, type, offset);
    gb_align(b, 32);
    for (size_t i = 0; i < data_bytes; i++) gb_put(b, "", 1);
}

static void test_bad_tensors(void) {
    gb_buf b = {0};
    uint64_t ne[5] = {16, 1, 1, 1, 1};
    pt_err err;
    one_tensor(&b, "a", 1, ne, PT_DTYPE_F32, 0, 64);
    CHECK_EQ_INT(parse_copy(&b, b.n, &err), PT_OK);

    one_tensor(&b, "a", 5, ne, PT_DTYPE_F32, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': n_dims 5 out of range [1, 4]");
    one_tensor(&b, "a", 0, ne, PT_DTYPE_F32, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': n_dims 0 out of range [1, 4]");
    one_tensor(&b, "a", 1, ne, 5, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': unknown type 5");
    one_tensor(&b, "a", 1, ne, 1000, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': unknown type 1000");
    one_tensor(&b, "a", 1, ne, PT_DTYPE_Q4_0, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': ne[0] = 16 is not a multiple of the Q4_0 block size 32");
    uint64_t zero[2] = {16, 0};
    one_tensor(&b, "a", 2, zero, PT_DTYPE_F32, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': dimension 1 is 0");
    uint64_t huge[3] = {1ull << 32, 1ull << 32, 1ull << 32};
    one_tensor(&b, "a", 3, huge, PT_DTYPE_F32, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': element count overflows");
    uint64_t big[2] = {1ull << 31, 1ull << 31};
    one_tensor(&b, "a", 2, big, PT_DTYPE_F32, 0, 64);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': byte size overflows");

    one_tensor(&b, "blk.0.attn_q.weight", 1, ne, PT_DTYPE_F32, 32, 64);
    size_t start = b.n - 64;
    char want[160];
    snprintf(want, sizeof want, "tensor 'blk.0.attn_q.weight': data [%zu, %zu) past end of file (size %zu)",
             start + 32, start + 96, b.n);
    EXPECT_ERR(&b, PT_ERR_FORMAT, want);
    one_tensor(&b, "a", 1, ne, PT_DTYPE_F32, UINT64_MAX - 31, 64); /* aligned, wraps on add */
    EXPECT_ERR(&b, PT_ERR_FORMAT, "past end of file");
    one_tensor(&b, "a", 1, ne, PT_DTYPE_F32, 4, 128);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "tensor 'a': offset 4 is not a multiple of the alignment 32");

    b.n = 0;
    gb_header(&b, 3, 2, 0);
    gb_tensor_info(&b, "dup", 1, ne, PT_DTYPE_F32, 0);
    gb_tensor_info(&b, "dup", 1, ne, PT_DTYPE_F32, 64);
    gb_align(&b, 32);
    for (int i = 0; i < 128; i++) gb_put(&b, "", 1);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "duplicate tensor name 'dup'");

    b.n = 0;
    gb_header(&b, 3, 1, 0);
    gb_u64(&b, 3);
    gb_put(&b, "a\0b", 3);
    gb_u32(&b, 1);
    gb_u64(&b, 16);
    gb_u32(&b, PT_DTYPE_F32);
    gb_u64(&b, 0);
    gb_align(&b, 32);
    for (int i = 0; i < 64; i++) gb_put(&b, "", 1);
    EXPECT_ERR(&b, PT_ERR_FORMAT, "name contains a NUL byte");
    free(b.p);
}

TEST_MAIN(TEST(test_parse_tiny), TEST(test_model_from_tiny_gguf), TEST(test_unsupported_arch),
          TEST(test_bad_header), TEST(test_truncated), TEST(test_bad_metadata), TEST(test_bad_tensors))
