/* Model files: the default SmolLM2 GGUF (skipped when absent) has the
 * published hyper-parameters; synthetic shapes validate; a Hugging Face
 * directory written here (config.json, two BF16 safetensors shards and their
 * index) maps onto GGUF names and shapes with the bytes untouched. */
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "proteus/model_file.h"
#include "test.h"

static bool default_model_absent;

static void test_default_model(void) {
    char path[1024];
    const char *env = getenv("PROTEUS_DEFAULT_MODEL");
    if (env && *env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                  getenv("HOME") ? getenv("HOME") : "/root");
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "default model %s absent: test_default_model skipped\n", path);
        default_model_absent = true;
        return;
    }
    pt_model_file mf;
    pt_err err = {{0}};
    int rc = pt_model_file_open(&mf, path, &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc) return;
    const pt_model_config *c = &mf.config;
    CHECK_EQ_INT(c->arch, PT_ARCH_LLAMA);
    CHECK_EQ_INT(c->n_layers, 30);
    CHECK_EQ_INT(c->d_model, 576);
    CHECK_EQ_INT(c->n_heads, 9);
    CHECK_EQ_INT(c->n_kv_heads, 3);
    CHECK_EQ_INT(c->head_dim, 64);
    CHECK_EQ_INT(c->d_ff, 1536);
    CHECK_EQ_INT(c->vocab_size, 49152);
    CHECK_EQ_INT(c->max_ctx, 8192);
    CHECK(c->tied_embeddings && !c->qkv_bias);
    CHECK_EQ_INT(c->rope_style, PT_ROPE_NORM);
    CHECK_NEAR(c->rms_eps, 1e-5, 1e-9);
    CHECK_NEAR(c->rope_theta, 100000.0, 1e-3);
    const pt_tensor *q = pt_model_file_find(&mf, "blk.0.attn_q.weight");
    const pt_tensor *e = pt_model_file_find(&mf, "token_embd.weight");
    CHECK(q && q->type == PT_DTYPE_Q4_1 && q->ne[0] == 576 && q->ne[1] == 576);
    CHECK(e && e->type == PT_DTYPE_Q8_0 && e->ne[0] == 576 && e->ne[1] == 49152);
    CHECK(pt_model_file_find(&mf, "output.weight") == NULL);
    CHECK(mf.gguf != NULL && mf.chat_template != NULL);
    pt_err verr = {{0}};
    CHECK_MSG(pt_model_file_validate(&mf, &verr) == PT_OK, "%s", verr.msg);
    pt_model_file_close(&mf);
}

static void test_synthetic(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    int rc = pt_model_file_open(&mf, "synthetic:tiny-llama", &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc == PT_OK) {
        CHECK_EQ_INT(mf.source, PT_SOURCE_SYNTHETIC);
        CHECK_EQ_INT(mf.config.n_layers, 2);
        CHECK_EQ_INT(mf.config.d_model, 64);
        CHECK_EQ_INT(mf.config.rope_style, PT_ROPE_NEOX);
        CHECK(mf.gguf == NULL && mf.tokenizer_json == NULL);
        const pt_tensor *t = pt_model_file_find(&mf, "blk.1.ffn_down.weight");
        CHECK(t && t->type == PT_DTYPE_Q4_0 && t->ne[0] == 128 && t->ne[1] == 64);
        const pt_tensor *n = pt_model_file_find(&mf, "blk.0.attn_norm.weight");
        CHECK(n && n->type == PT_DTYPE_F32 && fabsf(((const float *)n->data)[5] - 1.0f) <= 0.01f);
        CHECK_MSG(pt_model_file_validate(&mf, &err) == PT_OK, "%s", err.msg);
        /* Deterministic: a second open gives the same bytes. */
        pt_model_file mf2;
        CHECK_EQ_INT(pt_model_file_open(&mf2, "synthetic:tiny-llama", &err), PT_OK);
        const pt_tensor *t2 = pt_model_file_find(&mf2, "blk.1.ffn_down.weight");
        CHECK(t2 && !memcmp(t->data, t2->data, t->nbytes));
        pt_model_file_close(&mf2);
        pt_model_file_close(&mf);
    }

    rc = pt_model_file_open(&mf, "synthetic:smollm2-135m:q8_0", &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc == PT_OK) {
        CHECK_EQ_INT(mf.config.n_layers, 30);
        CHECK_EQ_INT(mf.config.vocab_size, 49152);
        CHECK(mf.config.tied_embeddings);
        const pt_tensor *e = pt_model_file_find(&mf, "token_embd.weight");
        CHECK(e && e->type == PT_DTYPE_Q8_0);
        CHECK_MSG(pt_model_file_validate(&mf, &err) == PT_OK, "%s", err.msg);
        pt_model_file_close(&mf);
    }

    rc = pt_model_file_open(&mf, "synthetic:tiny-qwen2:f32", &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc == PT_OK) {
        CHECK(mf.config.qkv_bias && mf.config.arch == PT_ARCH_QWEN2);
        /* Weights of std 0.02: the sample std of a 64x64 matrix lies within 10%. */
        const pt_tensor *q = pt_model_file_find(&mf, "blk.0.attn_q.weight");
        double s2 = 0;
        for (int i = 0; i < 64 * 64; i++) s2 += (double)((const float *)q->data)[i] * ((const float *)q->data)[i];
        CHECK_NEAR(sqrt(s2 / 4096), 0.02, 0.002);
        CHECK_MSG(pt_model_file_validate(&mf, &err) == PT_OK, "%s", err.msg);
        pt_model_file_close(&mf);
    }

    CHECK_EQ_INT(pt_model_file_open(&mf, "synthetic:gpt5", &err), PT_ERR_INVALID);
    CHECK_MSG(!strncmp(err.msg, "synthetic:gpt5: unknown synthetic shape", 39), "%s", err.msg);
    CHECK_EQ_INT(pt_model_file_open(&mf, "synthetic:tiny-llama:q2_k", &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "unknown synthetic dtype 'q2_k'"), "%s", err.msg);
    CHECK_EQ_INT(pt_model_file_open(&mf, "/nonexistent/model.gguf", &err), PT_ERR_IO);
    CHECK_MSG(!strncmp(err.msg, "/nonexistent/model.gguf: cannot open", 36), "%s", err.msg);
}

/* ---- a Hugging Face directory written from C ---- */

typedef struct {
    char name[80];
    int n_dims;
    uint64_t shape[2]; /* HF order: [out, in] */
} hf_tensor;

static size_t hf_tensors(hf_tensor *t, int layer_lo, int layer_hi, bool first, bool last, bool bias,
                         bool lm_head) {
    size_t n = 0;
#define ADD(nd, a, b, ...) \
    (snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__), t[n].n_dims = nd, t[n].shape[0] = a, t[n].shape[1] = b, n++)
    if (first) ADD(2, 256, 64, "model.embed_tokens.weight");
    for (int l = layer_lo; l < layer_hi; l++) {
        ADD(1, 64, 1, "model.layers.%d.input_layernorm.weight", l);
        ADD(2, 64, 64, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(2, 32, 64, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(2, 32, 64, "model.layers.%d.self_attn.v_proj.weight", l);
        if (bias) {
            ADD(1, 64, 1, "model.layers.%d.self_attn.q_proj.bias", l);
            ADD(1, 32, 1, "model.layers.%d.self_attn.k_proj.bias", l);
            ADD(1, 32, 1, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        ADD(2, 64, 64, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(1, 64, 1, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(2, 128, 64, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(2, 128, 64, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(2, 64, 128, "model.layers.%d.mlp.down_proj.weight", l);
    }
    if (last) {
        ADD(1, 64, 1, "model.norm.weight");
        if (lm_head) ADD(2, 256, 64, "lm_head.weight");
    }
#undef ADD
    return n;
}

/* Element i of every tensor is bf16(i / 1024) so that reads can be checked. */
static int write_shard(const char *path, const hf_tensor *t, size_t n) {
    char *hdr = malloc(65536);
    size_t hl = 0;
    uint64_t off = 0;
    hl += (size_t)snprintf(hdr + hl, 65536 - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        uint64_t bytes = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1) * 2;
        if (t[i].n_dims == 2)
            hl += (size_t)snprintf(hdr + hl, 65536 - hl, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu,%llu],\"data_offsets\":[%llu,%llu]}",
                                   t[i].name, (unsigned long long)t[i].shape[0], (unsigned long long)t[i].shape[1],
                                   (unsigned long long)off, (unsigned long long)(off + bytes));
        else
            hl += (size_t)snprintf(hdr + hl, 65536 - hl, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}",
                                   t[i].name, (unsigned long long)t[i].shape[0], (unsigned long long)off,
                                   (unsigned long long)(off + bytes));
        off += bytes;
    }
    hl += (size_t)snprintf(hdr + hl, 65536 - hl, "}");
    while (hl % 8) hdr[hl++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        return -1;
    }
    uint64_t len = hl;
    fwrite(&len, 8, 1, f);
    fwrite(hdr, 1, hl, f);
    for (size_t i = 0; i < n; i++) {
        uint64_t count = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1);
        for (uint64_t j = 0; j < count; j++) {
            pt_bf16 v = pt_f32_to_bf16((float)j / 1024.0f);
            fwrite(&v, 2, 1, f);
        }
    }
    free(hdr);
    return fclose(f);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void rm_dir(const char *dir, const char *const *names, size_t n) {
    char path[512];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_hf_dir(void) {
    char dir[] = "/tmp/pt_test_hf_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    write_text(dir, "config.json",
               "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
               "\"rms_norm_eps\":1e-05,\"rope_theta\":500000.0,\"max_position_embeddings\":4096,"
               "\"vocab_size\":256,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
               "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}");
    write_text(dir, "tokenizer.json", "{}");
    write_text(dir, "tokenizer_config.json", "{\"chat_template\":\"{% for m in messages %}{% endfor %}\"}");
    hf_tensor t[64];
    char path[512];
    size_t n1 = hf_tensors(t, 0, 1, true, false, false, true);
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    CHECK_EQ_INT(write_shard(path, t, n1), 0);
    char index[8192];
    size_t il = (size_t)snprintf(index, sizeof index, "{\"metadata\":{},\"weight_map\":{");
    for (size_t i = 0; i < n1; i++)
        il += (size_t)snprintf(index + il, sizeof index - il, "%s\"%s\":\"model-00001-of-00002.safetensors\"",
                               i ? "," : "", t[i].name);
    size_t n2 = hf_tensors(t, 1, 2, false, true, false, true);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    CHECK_EQ_INT(write_shard(path, t, n2), 0);
    for (size_t i = 0; i < n2; i++)
        il += (size_t)snprintf(index + il, sizeof index - il, ",\"%s\":\"model-00002-of-00002.safetensors\"", t[i].name);
    snprintf(index + il, sizeof index - il, "}}");
    write_text(dir, "model.safetensors.index.json", index);

    pt_model_file mf;
    pt_err err = {{0}};
    int rc = pt_model_file_open(&mf, dir, &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc == PT_OK) {
        const pt_model_config *c = &mf.config;
        CHECK_EQ_INT(mf.source, PT_SOURCE_HF_DIR);
        CHECK_EQ_INT(c->arch, PT_ARCH_LLAMA);
        CHECK_EQ_INT(c->n_layers, 2);
        CHECK_EQ_INT(c->n_heads, 4);
        CHECK_EQ_INT(c->n_kv_heads, 2);
        CHECK_EQ_INT(c->head_dim, 16);
        CHECK_EQ_INT(c->max_ctx, 4096);
        CHECK_EQ_INT(c->rope_style, PT_ROPE_NEOX);
        CHECK(!c->tied_embeddings && !c->qkv_bias);
        CHECK(c->rope_theta == 500000.0f && c->rope_scale_factor == 8.0f && c->rope_low_freq_factor == 1.0f &&
              c->rope_high_freq_factor == 4.0f && c->rope_orig_ctx == 8192);
        CHECK_EQ_INT(mf.n_tensors, 21);
        CHECK(mf.tokenizer_json && strstr(mf.tokenizer_json, "/tokenizer.json"));
        CHECK(mf.chat_template && !strncmp(mf.chat_template, "{% for m", 8));
        const pt_tensor *k = pt_model_file_find(&mf, "blk.1.attn_k.weight");
        CHECK(k && k->type == PT_DTYPE_BF16 && k->n_dims == 2 && k->ne[0] == 64 && k->ne[1] == 32 &&
              k->nbytes == 64 * 32 * 2);
        /* Row-major [out, in]: element (out 2, in 3) is at 2 * 64 + 3. */
        if (k) CHECK(pt_bf16_to_f32(((const pt_bf16 *)k->data)[2 * 64 + 3]) == pt_bf16_to_f32(pt_f32_to_bf16(131.0f / 1024.0f)));
        const pt_tensor *dn = pt_model_file_find(&mf, "blk.0.ffn_down.weight");
        CHECK(dn && dn->ne[0] == 128 && dn->ne[1] == 64);
        CHECK(pt_model_file_find(&mf, "output.weight") && pt_model_file_find(&mf, "output_norm.weight"));
        CHECK_MSG(pt_model_file_validate(&mf, &err) == PT_OK, "%s", err.msg);
        pt_model_file_close(&mf);
    }

    /* Unsupported model_type is named. */
    write_text(dir, "config.json", "{\"model_type\":\"gemma\",\"hidden_size\":64}");
    CHECK_EQ_INT(pt_model_file_open(&mf, dir, &err), PT_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "config.json: model_type 'gemma' not supported") && !strncmp(err.msg, dir, strlen(dir)),
              "%s", err.msg);
    const char *names[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                           "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                           "model.safetensors.index.json"};
    rm_dir(dir, names, sizeof names / sizeof names[0]);
}

/* Qwen2: one unsharded file, QKV biases, tied embeddings (no lm_head). */
static void test_hf_dir_qwen2(void) {
    char dir[] = "/tmp/pt_test_hfq_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    write_text(dir, "config.json",
               "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
               "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,\"max_position_embeddings\":32768,"
               "\"vocab_size\":256,\"tie_word_embeddings\":true,\"rope_scaling\":null}");
    hf_tensor t[64];
    size_t n = hf_tensors(t, 0, 2, true, true, true, false);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_EQ_INT(write_shard(path, t, n), 0);
    pt_model_file mf;
    pt_err err = {{0}};
    int rc = pt_model_file_open(&mf, dir, &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    if (rc == PT_OK) {
        CHECK_EQ_INT(mf.config.arch, PT_ARCH_QWEN2);
        CHECK(mf.config.qkv_bias && mf.config.tied_embeddings);
        CHECK(mf.tokenizer_json == NULL && mf.chat_template == NULL);
        CHECK_NEAR(mf.config.rms_eps, 1e-6, 1e-12);
        const pt_tensor *b = pt_model_file_find(&mf, "blk.1.attn_k.bias");
        CHECK(b && b->n_dims == 1 && b->ne[0] == 32 && b->ne[1] == 1 && b->type == PT_DTYPE_BF16);
        CHECK_MSG(pt_model_file_validate(&mf, &err) == PT_OK, "%s", err.msg);
        pt_model_file_close(&mf);
    }
    /* Config says 3 layers: validation names the first missing tensor. */
    write_text(dir, "config.json",
               "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
               "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
               "\"vocab_size\":256,\"tie_word_embeddings\":true}");
    CHECK_EQ_INT(pt_model_file_open(&mf, dir, &err), PT_OK);
    CHECK_EQ_INT(pt_model_file_validate(&mf, &err), PT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, ": tensor 'blk.2.attn_norm.weight' missing"), "%s", err.msg);
    pt_model_file_close(&mf);
    const char *names[] = {"config.json", "model.safetensors"};
    rm_dir(dir, names, 2);
}

static void test_hf_names(void) {
    char out[64];
    CHECK(pt_model_hf_name_to_gguf("model.layers.17.self_attn.o_proj.weight", out, sizeof out) &&
          !strcmp(out, "blk.17.attn_output.weight"));
    CHECK(pt_model_hf_name_to_gguf("model.layers.0.self_attn.v_proj.bias", out, sizeof out) &&
          !strcmp(out, "blk.0.attn_v.bias"));
    CHECK(pt_model_hf_name_to_gguf("model.layers.3.post_attention_layernorm.weight", out, sizeof out) &&
          !strcmp(out, "blk.3.ffn_norm.weight"));
    CHECK(pt_model_hf_name_to_gguf("lm_head.weight", out, sizeof out) && !strcmp(out, "output.weight"));
    CHECK(!pt_model_hf_name_to_gguf("model.layers.x.mlp.up_proj.weight", out, sizeof out));
    CHECK(!pt_model_hf_name_to_gguf("model.layers.01.mlp.up_proj.weight", out, sizeof out));
    CHECK(!pt_model_hf_name_to_gguf("model.rotary_emb.inv_freq", out, sizeof out));
    CHECK(!pt_model_hf_name_to_gguf("model.layers.3.mlp.up_proj.weight", out, 8)); /* does not fit */
}

static void test_safetensors_errors(void) {
    const char *hdr = "{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}";
    uint8_t buf[256];
    uint64_t hl = strlen(hdr);
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, hl);
    memset(buf + 8 + hl, 0, 16);
    pt_safetensors st;
    pt_err err;
    CHECK_EQ_INT(pt_safetensors_parse(&st, buf, 8 + hl + 16, &err), PT_ERR_UNSUPPORTED);
    CHECK_MSG(!strcmp(err.msg, "tensor 'a': dtype I64 not supported (F32, F16, BF16 only)"), "%s", err.msg);
    hdr = "{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,16]}}";
    hl = strlen(hdr);
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, hl);
    CHECK_EQ_INT(pt_safetensors_parse(&st, buf, 8 + hl + 16, &err), PT_ERR_FORMAT);
    CHECK_MSG(!strcmp(err.msg, "tensor 'a': data_offsets span 16 bytes, shape and dtype F16 need 6"), "%s", err.msg);
    hdr = "{\"a\":{\"dtype\":\"F16\",\"shape\":[8],\"data_offsets\":[0,16]}}";
    hl = strlen(hdr);
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, hl);
    CHECK_EQ_INT(pt_safetensors_parse(&st, buf, 8 + hl + 8, &err), PT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "data_offsets [0, 16) outside the data section (size 8)"), "%s", err.msg);
    CHECK_EQ_INT(pt_safetensors_parse(&st, buf, 8 + hl + 16, &err), PT_OK);
    CHECK(st.n_tensors == 1 && st.tensors[0].nbytes == 16 && st.tensors[0].data == buf + 8 + hl);
    pt_safetensors_free(&st);
    hl = 1ull << 40;
    memcpy(buf, &hl, 8);
    CHECK_EQ_INT(pt_safetensors_parse(&st, buf, 64, &err), PT_ERR_FORMAT);
    CHECK_MSG(!strcmp(err.msg, "byte offset 0: header length 1099511627776 exceeds file (size 64)"), "%s", err.msg);
}

/* The other tests need no files, so they run either way; a missing default
 * model then turns a clean pass into exit 77 so that ctest shows the skip. */
int main(void) {
    static const test_case tests[] = {TEST(test_default_model), TEST(test_synthetic), TEST(test_hf_dir), TEST(test_hf_dir_qwen2),
                                      TEST(test_hf_names), TEST(test_safetensors_errors)};
    int rc = test_run_all(tests, sizeof tests / sizeof tests[0]);
    if (rc == 0 && default_model_absent) {
        fprintf(stderr, "SKIP: default model absent (set PROTEUS_DEFAULT_MODEL)\n");
        return 77;
    }
    return rc;
}
