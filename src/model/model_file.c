/* Opening model files: dispatch on the path, read-only mappings, the GGUF and
 * Hugging Face views turned into one tensor table with GGUF names, config
 * sanity limits, and the shape check of pt_model_file_validate.
 *
 * Every message begins with the path of the file at fault. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "model/loader.h"
#include "model/safetensors.h"
#include "proteus/gguf.h"

#define MAX_LAYERS 1024
#define MAX_D_MODEL 65536
#define MAX_HEADS 1024
#define MAX_HEAD_DIM 1024
#define MAX_D_FF (1u << 20)
#define MAX_VOCAB (1u << 22)
#define MAX_JSON_FILE (64u << 20)

/* ---- mappings and lifetime ---- */

int pt_model_map_file(pt_model_file *mf, const char *path, const uint8_t **data, uint64_t *size,
                      pt_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pt_err_set(err, PT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pt_err_set(err, PT_ERR_IO, "%s: not a regular file", path);
    }
    *size = (uint64_t)st.st_size;
    *data = (const uint8_t *)"";
    if (st.st_size == 0) {
        close(fd);
        return PT_OK;
    }
    void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (addr == MAP_FAILED) return pt_err_set(err, PT_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
    if (pt_model_add_mapping(mf, addr, (size_t)st.st_size) != PT_OK) {
        munmap(addr, (size_t)st.st_size);
        return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
    }
    *data = addr;
    return PT_OK;
}

int pt_model_add_mapping(pt_model_file *mf, void *addr, size_t len) {
    pt_model_priv *p = mf->priv;
    struct pt_mapping *m = realloc(p->maps, (p->n_maps + 1) * sizeof *m);
    if (!m) return PT_ERR_NOMEM;
    p->maps = m;
    p->maps[p->n_maps].addr = addr;
    p->maps[p->n_maps].len = len;
    p->n_maps++;
    return PT_OK;
}

void pt_model_file_close(pt_model_file *mf) {
    if (!mf) return;
    for (size_t i = 0; i < mf->n_tensors; i++) free(mf->tensors[i].name);
    free(mf->tensors);
    pt_gguf_free(mf->gguf);
    free(mf->tokenizer_json);
    free(mf->chat_template);
    free(mf->path);
    pt_model_priv *p = mf->priv;
    if (p) {
        for (size_t i = 0; i < p->n_maps; i++) munmap(p->maps[i].addr, p->maps[i].len);
        free(p->maps);
        free(p);
    }
    memset(mf, 0, sizeof *mf);
}

const pt_tensor *pt_model_file_find(const pt_model_file *mf, const char *name) {
    for (size_t i = 0; i < mf->n_tensors; i++)
        if (!strcmp(mf->tensors[i].name, name)) return &mf->tensors[i];
    return NULL;
}

/* ---- config sanity ---- */

int pt_model_config_check(const pt_model_config *c, const char *path, pt_err *err) {
#define RANGE(v, lo, hi, what)                                                                      \
    if ((uint64_t)(v) < (lo) || (uint64_t)(v) > (hi))                                              \
        return pt_err_set(err, PT_ERR_FORMAT, "%s: %s %llu out of range [%llu, %llu]", path, what, \
                          (unsigned long long)(v), (unsigned long long)(lo), (unsigned long long)(hi));
    RANGE(c->n_layers, 1, MAX_LAYERS, "n_layers");
    RANGE(c->d_model, 1, MAX_D_MODEL, "d_model");
    RANGE(c->n_heads, 1, MAX_HEADS, "n_heads");
    RANGE(c->n_kv_heads, 1, c->n_heads, "n_kv_heads");
    RANGE(c->head_dim, 2, MAX_HEAD_DIM, "head_dim");
    RANGE(c->d_ff, 1, MAX_D_FF, "d_ff");
    RANGE(c->vocab_size, 1, MAX_VOCAB, "vocab_size");
    RANGE(c->max_ctx, 1, UINT32_MAX, "context length");
#undef RANGE
    if (c->n_heads % c->n_kv_heads)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: n_heads %u is not a multiple of n_kv_heads %u", path,
                          c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: head_dim %u is odd", path, c->head_dim);
    if (c->rope_dim != c->head_dim)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: rope dimension %u differs from head_dim %u", path,
                          c->rope_dim, c->head_dim);
    if (!(c->rms_eps > 0.0f && c->rms_eps < 1.0f))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: rms_norm_eps %g out of range (0, 1)", path,
                          (double)c->rms_eps);
    if (!(c->rope_theta > 0.0f && isfinite(c->rope_theta)))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: rope theta %g out of range", path, (double)c->rope_theta);
    if (c->rope_scale_factor != 0.0f &&
        (!(c->rope_scale_factor >= 1.0f && isfinite(c->rope_scale_factor)) || c->rope_orig_ctx == 0 ||
         !(c->rope_high_freq_factor > c->rope_low_freq_factor && c->rope_low_freq_factor > 0.0f)))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: rope scaling parameters out of range", path);
    return PT_OK;
}

/* ---- GGUF ---- */

static int gguf_u32(const pt_gguf *g, const char *path, const char *arch, const char *suffix,
                    uint32_t *out, bool required, pt_err *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (pt_gguf_get_u32(g, key, out)) return PT_OK;
    if (pt_gguf_find(g, key))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: key '%s' is not an unsigned 32-bit integer", path, key);
    if (required) return pt_err_set(err, PT_ERR_FORMAT, "%s: key '%s' missing", path, key);
    return 1;
}

static int gguf_f32(const pt_gguf *g, const char *path, const char *arch, const char *suffix,
                    float *out, pt_err *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    float v;
    if (pt_gguf_get_f32(g, key, &v)) {
        if (!isfinite(v)) return pt_err_set(err, PT_ERR_FORMAT, "%s: key '%s' is not finite", path, key);
        *out = v;
        return PT_OK;
    }
    if (pt_gguf_find(g, key)) return pt_err_set(err, PT_ERR_FORMAT, "%s: key '%s' is not a float", path, key);
    return 1;
}

static int gguf_config(pt_model_file *mf, pt_err *err) {
    const pt_gguf *g = mf->gguf;
    const char *path = mf->path;
    pt_model_config *c = &mf->config;
    char *arch = pt_gguf_get_str(g, "general.architecture");
    int rc = PT_OK;
    if (!arch) return pt_err_set(err, PT_ERR_FORMAT, "%s: key 'general.architecture' missing", path);
    if (!strcmp(arch, "llama")) {
        c->arch = PT_ARCH_LLAMA;
        c->rope_style = PT_ROPE_NORM; /* convert_hf_to_gguf permutes Q/K rows for llama */
    } else if (!strcmp(arch, "qwen2")) {
        c->arch = PT_ARCH_QWEN2;
        c->rope_style = PT_ROPE_NEOX;
    } else {
        rc = pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: architecture '%.64s' not supported (llama, qwen2)",
                        path, arch);
        goto out;
    }
    if ((rc = gguf_u32(g, path, arch, "block_count", &c->n_layers, true, err)) < 0) goto out;
    if ((rc = gguf_u32(g, path, arch, "embedding_length", &c->d_model, true, err)) < 0) goto out;
    if ((rc = gguf_u32(g, path, arch, "feed_forward_length", &c->d_ff, true, err)) < 0) goto out;
    if ((rc = gguf_u32(g, path, arch, "attention.head_count", &c->n_heads, true, err)) < 0) goto out;
    c->n_kv_heads = c->n_heads;
    if ((rc = gguf_u32(g, path, arch, "attention.head_count_kv", &c->n_kv_heads, false, err)) < 0) goto out;
    if (c->n_heads == 0) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: key '%s.attention.head_count' is 0", path, arch);
        goto out;
    }
    if ((rc = gguf_u32(g, path, arch, "attention.key_length", &c->head_dim, false, err)) < 0) goto out;
    if (rc == 1) {
        if (c->d_model % c->n_heads) {
            rc = pt_err_set(err, PT_ERR_FORMAT, "%s: embedding_length %u not divisible by head_count %u",
                            path, c->d_model, c->n_heads);
            goto out;
        }
        c->head_dim = c->d_model / c->n_heads;
    }
    uint32_t vlen = c->head_dim;
    if ((rc = gguf_u32(g, path, arch, "attention.value_length", &vlen, false, err)) < 0) goto out;
    if (vlen != c->head_dim) {
        rc = pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: value_length %u differs from key_length %u", path,
                        vlen, c->head_dim);
        goto out;
    }
    c->rms_eps = 1e-5f;
    if ((rc = gguf_f32(g, path, arch, "attention.layer_norm_rms_epsilon", &c->rms_eps, err)) < 0) goto out;
    c->rope_theta = 10000.0f;
    if ((rc = gguf_f32(g, path, arch, "rope.freq_base", &c->rope_theta, err)) < 0) goto out;
    c->rope_dim = c->head_dim;
    if ((rc = gguf_u32(g, path, arch, "rope.dimension_count", &c->rope_dim, false, err)) < 0) goto out;
    c->max_ctx = 2048;
    if ((rc = gguf_u32(g, path, arch, "context_length", &c->max_ctx, false, err)) < 0) goto out;
    if ((rc = gguf_u32(g, path, arch, "vocab_size", &c->vocab_size, false, err)) < 0) goto out;
    if (rc == 1) {
        const pt_gguf_kv *tok = pt_gguf_get_arr(g, "tokenizer.ggml.tokens", PT_GGUF_STRING);
        const pt_gguf_tensor *emb = pt_gguf_find_tensor(g, "token_embd.weight");
        if (tok) c->vocab_size = tok->n > UINT32_MAX ? UINT32_MAX : (uint32_t)tok->n;
        else if (emb && emb->n_dims >= 2) c->vocab_size = emb->ne[1] > UINT32_MAX ? UINT32_MAX : (uint32_t)emb->ne[1];
    }

    /* RoPE scaling keys: only "none" (or a factor of 1) can be honoured;
     * Llama-3 GGUFs carry their scaling as the rope_freqs tensor instead,
     * which the engine applies (src/engine/weights.c). */
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    char *stype = pt_gguf_get_str(g, key);
    float factor = 1.0f;
    pt_err ignored;
    gguf_f32(g, path, arch, "rope.scaling.factor", &factor, &ignored);
    if (stype && strcmp(stype, "none") != 0 && factor != 1.0f && factor != 0.0f) {
        rc = pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: rope scaling type '%.32s' not supported", path, stype);
        free(stype);
        goto out;
    }
    free(stype);

    c->tied_embeddings = pt_gguf_find_tensor(g, "output.weight") == NULL;
    c->qkv_bias = pt_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    rc = pt_model_config_check(c, path, err);
out:
    free(arch);
    return rc;
}

static int open_gguf(pt_model_file *mf, const uint8_t *buf, uint64_t size, pt_err *err) {
    pt_err e;
    int rc = pt_gguf_parse(&mf->gguf, buf, size, &e);
    if (rc) return pt_err_set(err, rc, "%s: %s", mf->path, e.msg);
    const pt_gguf *g = mf->gguf;
    mf->source = PT_SOURCE_GGUF;
    if ((rc = gguf_config(mf, err))) return rc;
    mf->chat_template = pt_gguf_get_str(g, "tokenizer.chat_template");
    mf->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof(pt_tensor));
    if (!mf->tensors) return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", mf->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const pt_gguf_tensor *gt = &g->tensors[i];
        pt_tensor *t = &mf->tensors[i];
        t->name = strndup(gt->name.ptr, (size_t)gt->name.len);
        if (!t->name) return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", mf->path);
        mf->n_tensors = i + 1;
        t->type = gt->type;
        t->n_dims = gt->n_dims;
        memcpy(t->ne, gt->ne, sizeof t->ne);
        t->data = g->base + g->data_offset + gt->offset;
        t->nbytes = gt->nbytes;
    }
    return PT_OK;
}

/* ---- Hugging Face directories ---- */

bool pt_model_hf_name_to_gguf(const char *hf, char *out, size_t cap) {
    static const struct {
        const char *hf, *gguf;
    } top[] = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
    };
    static const struct {
        const char *hf, *gguf;
    } layer[] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},
        {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.bias", "attn_v.bias"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
    };
    int n;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strcmp(hf, top[i].hf)) {
            n = snprintf(out, cap, "%s", top[i].gguf);
            return n >= 0 && (size_t)n < cap;
        }
    const char *prefix = "model.layers.";
    size_t pl = strlen(prefix);
    if (strncmp(hf, prefix, pl) != 0) return false;
    const char *p = hf + pl;
    unsigned long idx = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 7) idx = idx * 10 + (unsigned long)(*p++ - '0'), digits++;
    if (digits == 0 || *p != '.' || (digits > 1 && hf[pl] == '0')) return false;
    p++;
    for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++)
        if (!strcmp(p, layer[i].hf)) {
            n = snprintf(out, cap, "blk.%lu.%s", idx, layer[i].gguf);
            return n >= 0 && (size_t)n < cap;
        }
    return false;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *s = pt_xmalloc(n);
    snprintf(s, n, "%s/%s", dir, name);
    return s;
}

/* Whole small file into a NUL-terminated heap buffer; PT_ERR_IO if absent. */
static int read_small(const char *path, char **out, size_t *len, pt_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return pt_err_set(err, PT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = PT_OK;
    for (;;) {
        if (cap - n < 65536) {
            if (cap >= MAX_JSON_FILE) {
                rc = pt_err_set(err, PT_ERR_FORMAT, "%s: larger than %u bytes", path, MAX_JSON_FILE);
                break;
            }
            cap = cap ? cap * 2 : 65536 * 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                rc = pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) rc = pt_err_set(err, PT_ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return PT_OK;
}

static int add_shard(pt_model_file *mf, const char *shard_path, size_t *cap, pt_err *err) {
    const uint8_t *data;
    uint64_t size;
    int rc = pt_model_map_file(mf, shard_path, &data, &size, err);
    if (rc) return rc;
    pt_safetensors st;
    pt_err e;
    if ((rc = pt_safetensors_parse(&st, data, size, &e))) return pt_err_set(err, rc, "%s: %s", shard_path, e.msg);
    for (size_t i = 0; i < st.n_tensors; i++) {
        const pt_st_tensor *s = &st.tensors[i];
        char name[96];
        if (!pt_model_hf_name_to_gguf(s->name, name, sizeof name)) {
            pt_log(PT_LOG_DEBUG, "%s: tensor '%s' not used", shard_path, s->name);
            continue;
        }
        if (mf->n_tensors == *cap) {
            size_t nc = *cap ? *cap * 2 : 64;
            pt_tensor *nt = realloc(mf->tensors, nc * sizeof *nt);
            if (!nt) {
                pt_safetensors_free(&st);
                return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", shard_path);
            }
            mf->tensors = nt;
            *cap = nc;
        }
        pt_tensor *t = &mf->tensors[mf->n_tensors++];
        memset(t, 0, sizeof *t);
        t->name = pt_xstrdup(name);
        t->type = s->type;
        t->n_dims = s->n_dims;
        /* safetensors lists the outermost dimension first; ne[0] is innermost. */
        for (uint32_t d = 0; d < 4; d++) t->ne[d] = d < s->n_dims ? s->shape[s->n_dims - 1 - d] : 1;
        t->data = s->data;
        t->nbytes = s->nbytes;
    }
    pt_safetensors_free(&st);
    return PT_OK;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const pt_tensor *const *)a)->name, (*(const pt_tensor *const *)b)->name);
}

/* Shards named by an index file: each distinct file once, in first-seen order. */
#define MAX_SHARDS 4096
static int add_indexed_shards(pt_model_file *mf, const char *index_path, size_t *cap, pt_err *err) {
    char *json;
    size_t len;
    int rc = read_small(index_path, &json, &len, err);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(json, len);
    free(json);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return pt_err_set(err, PT_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
    }
    const char **shards = pt_xcalloc(MAX_SHARDS, sizeof *shards);
    size_t n_shards = 0;
    for (const cJSON *e = wm->child; e && rc == PT_OK; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring[0] || strchr(e->valuestring, '/') ||
            e->valuestring[0] == '.') {
            rc = pt_err_set(err, PT_ERR_FORMAT, "%s: weight_map entry '%.200s' does not name a file in the directory",
                            index_path, e->string);
            break;
        }
        bool seen = false;
        for (size_t i = 0; i < n_shards && !seen; i++) seen = !strcmp(shards[i], e->valuestring);
        if (seen) continue;
        if (n_shards == MAX_SHARDS) {
            rc = pt_err_set(err, PT_ERR_FORMAT, "%s: more than %d shards", index_path, MAX_SHARDS);
            break;
        }
        shards[n_shards++] = e->valuestring;
        char *shard = join(mf->path, e->valuestring);
        rc = add_shard(mf, shard, cap, err);
        free(shard);
    }
    free(shards);
    cJSON_Delete(root);
    return rc;
}

static int open_hf_dir(pt_model_file *mf, pt_err *err) {
    const char *dir = mf->path;
    mf->source = PT_SOURCE_HF_DIR;
    char *path = join(dir, "config.json");
    char *json;
    size_t len;
    int rc = read_small(path, &json, &len, err);
    if (!rc) {
        rc = pt_hf_config_parse(&mf->config, path, json, len, err);
        free(json);
    }
    free(path);
    if (rc) return rc;

    path = join(dir, "tokenizer.json");
    if (access(path, R_OK) == 0) mf->tokenizer_json = path;
    else free(path);
    path = join(dir, "tokenizer_config.json");
    pt_err ignored;
    if (read_small(path, &json, &len, &ignored) == PT_OK) {
        mf->chat_template = pt_hf_chat_template(json, len);
        free(json);
    }
    free(path);

    size_t cap = 0;
    char *single = join(dir, "model.safetensors");
    char *index = join(dir, "model.safetensors.index.json");
    if (access(single, F_OK) == 0) rc = add_shard(mf, single, &cap, err);
    else if (access(index, F_OK) == 0) rc = add_indexed_shards(mf, index, &cap, err);
    else rc = pt_err_set(err, PT_ERR_IO, "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
    free(single);
    free(index);
    if (rc) return rc;

    if (mf->n_tensors > 1) {
        const pt_tensor **idx = pt_xmalloc(mf->n_tensors * sizeof *idx);
        for (size_t i = 0; i < mf->n_tensors; i++) idx[i] = &mf->tensors[i];
        qsort(idx, mf->n_tensors, sizeof *idx, cmp_tensor_name);
        for (size_t i = 1; i < mf->n_tensors && !rc; i++)
            if (!strcmp(idx[i - 1]->name, idx[i]->name))
                rc = pt_err_set(err, PT_ERR_FORMAT, "%s: tensor '%s' appears twice across the shards", dir,
                                idx[i]->name);
        free(idx);
        if (rc) return rc;
    }
    if (!pt_model_file_find(mf, "output.weight")) mf->config.tied_embeddings = true;
    mf->config.qkv_bias = pt_model_file_find(mf, "blk.0.attn_q.bias") != NULL;
    return pt_model_config_check(&mf->config, dir, err);
}

/* ---- open ---- */

static int open_begin(pt_model_file *mf, const char *path) {
    memset(mf, 0, sizeof *mf);
    mf->path = pt_xstrdup(path);
    mf->priv = pt_xcalloc(1, sizeof(pt_model_priv));
    return PT_OK;
}

void pt_model_err_sanitize(pt_err *err) {
    if (!err) return;
    for (char *p = err->msg; *p; p++)
        if ((unsigned char)*p < 32 || *p == 127) *p = '?';
}

/* Names and strings quoted from a file may hold control characters; the
 * message stays one printable line whatever the file says. */
static int open_end(pt_model_file *mf, int rc, pt_err *err) {
    if (rc) {
        pt_model_file_close(mf);
        pt_model_err_sanitize(err);
    }
    return rc;
}

int pt_model_file_open(pt_model_file *mf, const char *path, pt_err *err) {
    if (!mf || !path) return pt_err_set(err, PT_ERR_INVALID, "pt_model_file_open: NULL argument");
    open_begin(mf, path);
    static const char synth[] = "synthetic:";
    if (!strncmp(path, synth, sizeof synth - 1)) {
        mf->source = PT_SOURCE_SYNTHETIC;
        return open_end(mf, pt_synthetic_open(mf, path + sizeof synth - 1, err), err);
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return open_end(mf, pt_err_set(err, PT_ERR_IO, "%s: cannot open: %s", path, strerror(errno)), err);
    if (S_ISDIR(st.st_mode)) return open_end(mf, open_hf_dir(mf, err), err);
    const uint8_t *data;
    uint64_t size;
    int rc = pt_model_map_file(mf, path, &data, &size, err);
    if (rc) return open_end(mf, rc, err);
    if (size < 4 || memcmp(data, "GGUF", 4) != 0)
        return open_end(mf, pt_err_set(err, PT_ERR_FORMAT,
                                       "%s: not a GGUF file (bad magic) and not a model directory", path),
                        err);
    return open_end(mf, open_gguf(mf, data, size, err), err);
}

int pt_model_file_open_gguf_memory(pt_model_file *mf, const char *name, const void *buf, size_t size,
                                   pt_err *err) {
    if (!mf || !name || (!buf && size))
        return pt_err_set(err, PT_ERR_INVALID, "pt_model_file_open_gguf_memory: NULL argument");
    open_begin(mf, name);
    return open_end(mf, open_gguf(mf, buf, size, err), err);
}

/* ---- validate ---- */

typedef enum { KIND_MATRIX, KIND_NORM } tensor_kind;

static bool weight_type_ok(pt_dtype t) {
    switch (t) {
    case PT_DTYPE_F32: case PT_DTYPE_F16: case PT_DTYPE_BF16: case PT_DTYPE_Q4_0:
    case PT_DTYPE_Q4_1: case PT_DTYPE_Q8_0: case PT_DTYPE_Q4_K: case PT_DTYPE_Q6_K:
        return true;
    default:
        return false;
    }
}

static int expect(const pt_model_file *mf, const char *name, tensor_kind kind, uint64_t ne0,
                  uint64_t ne1, pt_err *err) {
    const pt_tensor *t = pt_model_file_find(mf, name);
    if (!t) return pt_err_set(err, PT_ERR_FORMAT, "%s: tensor '%s' missing", mf->path, name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        if (kind == KIND_NORM)
            return pt_err_set(err, PT_ERR_FORMAT, "%s: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%llu]",
                              mf->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                              (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                              (unsigned long long)ne0);
        return pt_err_set(err, PT_ERR_FORMAT, "%s: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%llu, %llu]",
                          mf->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                          (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                          (unsigned long long)ne0, (unsigned long long)ne1);
    }
    if (kind == KIND_NORM) {
        bool ok = t->type == PT_DTYPE_F32 ||
                  (mf->source == PT_SOURCE_HF_DIR && (t->type == PT_DTYPE_F16 || t->type == PT_DTYPE_BF16));
        if (!ok)
            return pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: tensor '%s' is %s, expected F32%s", mf->path, name,
                              pt_dtype_name(t->type), mf->source == PT_SOURCE_HF_DIR ? ", F16 or BF16" : "");
    } else if (!weight_type_ok(t->type)) {
        return pt_err_set(err, PT_ERR_UNSUPPORTED,
                          "%s: tensor '%s' is %s, not a weight type (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)",
                          mf->path, name, pt_dtype_name(t->type));
    }
    return PT_OK;
}

int pt_model_file_validate(const pt_model_file *mf, pt_err *err) {
    const pt_model_config *c = &mf->config;
    int rc = pt_model_config_check(c, mf->path, err);
    if (rc) return rc;
    uint64_t d = c->d_model, q = (uint64_t)c->n_heads * c->head_dim,
             kv = (uint64_t)c->n_kv_heads * c->head_dim, ff = c->d_ff, v = c->vocab_size;
    char name[64];
#define EXPECT(kind, ne0, ne1, ...)                              \
    do {                                                         \
        snprintf(name, sizeof name, __VA_ARGS__);                \
        if ((rc = expect(mf, name, kind, ne0, ne1, err))) return rc; \
    } while (0)
    EXPECT(KIND_MATRIX, d, v, "token_embd.weight");
    for (uint32_t i = 0; i < c->n_layers; i++) {
        EXPECT(KIND_NORM, d, 1, "blk.%u.attn_norm.weight", i);
        EXPECT(KIND_MATRIX, d, q, "blk.%u.attn_q.weight", i);
        EXPECT(KIND_MATRIX, d, kv, "blk.%u.attn_k.weight", i);
        EXPECT(KIND_MATRIX, d, kv, "blk.%u.attn_v.weight", i);
        if (c->qkv_bias) {
            EXPECT(KIND_NORM, q, 1, "blk.%u.attn_q.bias", i);
            EXPECT(KIND_NORM, kv, 1, "blk.%u.attn_k.bias", i);
            EXPECT(KIND_NORM, kv, 1, "blk.%u.attn_v.bias", i);
        }
        EXPECT(KIND_MATRIX, q, d, "blk.%u.attn_output.weight", i);
        EXPECT(KIND_NORM, d, 1, "blk.%u.ffn_norm.weight", i);
        EXPECT(KIND_MATRIX, d, ff, "blk.%u.ffn_gate.weight", i);
        EXPECT(KIND_MATRIX, d, ff, "blk.%u.ffn_up.weight", i);
        EXPECT(KIND_MATRIX, ff, d, "blk.%u.ffn_down.weight", i);
    }
    EXPECT(KIND_NORM, d, 1, "output_norm.weight");
    if (!c->tied_embeddings) EXPECT(KIND_MATRIX, d, v, "output.weight");
#undef EXPECT
    return PT_OK;
}
