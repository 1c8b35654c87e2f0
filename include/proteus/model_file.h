/* A model file opened for reading: its hyper-parameters, its tensors (named
 * the GGUF way), and where its tokenizer lives. Three sources give the same
 * view: a GGUF file (mmap), a Hugging Face directory (config.json +
 * *.safetensors, mmap), and `synthetic:<shape>` (random weights in memory).
 *
 * Every size and offset read from a file is validated before use; a bad file
 * gives PT_ERR_FORMAT and a one-line reason naming the key, tensor or byte
 * offset. Nothing here trusts the file. */
#ifndef PROTEUS_MODEL_FILE_H
#define PROTEUS_MODEL_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/dtype.h"
#include "proteus/util.h"

typedef enum { PT_ARCH_LLAMA = 0, PT_ARCH_QWEN2 = 1 } pt_arch;

/* How RoPE pairs the channels of a head. GGUF llama files store Q/K rows
 * permuted for adjacent pairs (NORM); Hugging Face llama and every qwen2 use
 * rotate_half pairs (i, i + d/2) (NEOX). */
typedef enum { PT_ROPE_NORM = 0, PT_ROPE_NEOX = 1 } pt_rope_style;

typedef struct {
    pt_arch arch;
    uint32_t n_layers;
    uint32_t d_model;      /* hidden size */
    uint32_t n_heads;      /* query heads */
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t d_ff;         /* MLP intermediate size */
    uint32_t vocab_size;
    uint32_t max_ctx;      /* trained context length */
    float rms_eps;
    float rope_theta;
    uint32_t rope_dim;     /* channels rotated per head (= head_dim for these archs) */
    pt_rope_style rope_style;
    /* Llama-3 RoPE frequency scaling; factor == 0 means none. */
    float rope_scale_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    uint32_t rope_orig_ctx;
    bool tied_embeddings;  /* no output.weight: the LM head is token_embd */
    bool qkv_bias;         /* attn_{q,k,v}.bias present (qwen2) */
} pt_model_config;

typedef struct {
    char *name;        /* GGUF naming: "blk.3.attn_q.weight", "token_embd.weight" */
    pt_dtype type;
    uint32_t n_dims;
    uint64_t ne[4];    /* ne[0] is the contiguous (innermost) dimension; unused dims are 1 */
    const void *data;  /* points into the mapping or an owned buffer */
    uint64_t nbytes;
} pt_tensor;

typedef enum { PT_SOURCE_GGUF, PT_SOURCE_HF_DIR, PT_SOURCE_SYNTHETIC } pt_model_source;

typedef struct pt_gguf pt_gguf; /* parsed GGUF header, see gguf.h */

typedef struct {
    pt_model_source source;
    char *path;             /* as given */
    pt_model_config config;
    pt_tensor *tensors;
    size_t n_tensors;
    pt_gguf *gguf;          /* GGUF source: metadata, for the tokenizer; else NULL */
    char *tokenizer_json;   /* HF source: path of tokenizer.json if present; else NULL */
    char *chat_template;    /* from GGUF metadata or tokenizer_config.json; may be NULL */
    void *priv;             /* mappings and owned buffers */
} pt_model_file;

/* Open `path`: a .gguf file, a Hugging Face model directory, or
 * "synthetic:<shape>" (shapes: smollm2-135m, llama3-8b, tiny-llama, tiny-qwen2;
 * optionally followed by ":<dtype>" with dtype one of f32, f16, bf16, q4_0,
 * q4_1, q8_0; the default is q4_0). On failure mf is left zeroed and the
 * message begins with the path. */
int pt_model_file_open(pt_model_file *mf, const char *path, pt_err *err);
/* Open a GGUF image held in memory (borrowed: buf must outlive mf); `name`
 * stands in for the path in messages. Used by tests and fuzzing. */
int pt_model_file_open_gguf_memory(pt_model_file *mf, const char *name, const void *buf,
                                   size_t size, pt_err *err);
void pt_model_file_close(pt_model_file *mf);

/* Tensor by GGUF name, or NULL. */
const pt_tensor *pt_model_file_find(const pt_model_file *mf, const char *name);

/* Check that every tensor the architecture needs is present with the right
 * shape; the message names the first missing or misshapen tensor. */
int pt_model_file_validate(const pt_model_file *mf, pt_err *err);

/* Hugging Face tensor name -> GGUF name ("model.layers.3.self_attn.q_proj.weight"
 * -> "blk.3.attn_q.weight"). False for names with no GGUF counterpart or when
 * the result does not fit in cap bytes. */
bool pt_model_hf_name_to_gguf(const char *hf_name, char *out, size_t cap);

#endif
