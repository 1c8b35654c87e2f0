/* Hugging Face config.json -> pt_model_config. Only the keys the supported
 * architectures need are read; absent optional keys take the library
 * defaults of transformers. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/loader.h"

static int get_u32(const cJSON *root, const char *key, uint32_t *out, bool required,
                   const char *path, pt_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (required) return pt_err_set(err, PT_ERR_FORMAT, "%s: \"%s\" missing", path, key);
        return 1; /* absent: caller keeps its default */
    }
    double d = j->valuedouble;
    if (!cJSON_IsNumber(j) || !(d >= 0 && d <= 4294967295.0) || floor(d) != d)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: \"%s\" is not an unsigned 32-bit integer", path, key);
    *out = (uint32_t)d;
    return PT_OK;
}

static int get_f32(const cJSON *root, const char *key, float *out, const char *path, pt_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return 1;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: \"%s\" is not a number", path, key);
    *out = (float)j->valuedouble;
    return PT_OK;
}

static int parse(pt_model_config *c, const cJSON *root, const char *path, pt_err *err) {
    int rc;
    if (!cJSON_IsObject(root)) return pt_err_set(err, PT_ERR_FORMAT, "%s: not a JSON object", path);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) return pt_err_set(err, PT_ERR_FORMAT, "%s: \"model_type\" missing", path);
    if (!strcmp(mt->valuestring, "llama") || !strcmp(mt->valuestring, "mistral"))
        c->arch = PT_ARCH_LLAMA;
    else if (!strcmp(mt->valuestring, "qwen2"))
        c->arch = PT_ARCH_QWEN2;
    else
        return pt_err_set(err, PT_ERR_UNSUPPORTED,
                          "%s: model_type '%.64s' not supported (llama, mistral, qwen2)", path,
                          mt->valuestring);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: hidden_act '%.64s' not supported (silu only)",
                          path, act->valuestring);

    if ((rc = get_u32(root, "hidden_size", &c->d_model, true, path, err)) < 0) return rc;
    if ((rc = get_u32(root, "intermediate_size", &c->d_ff, true, path, err)) < 0) return rc;
    if ((rc = get_u32(root, "num_hidden_layers", &c->n_layers, true, path, err)) < 0) return rc;
    if ((rc = get_u32(root, "num_attention_heads", &c->n_heads, true, path, err)) < 0) return rc;
    if ((rc = get_u32(root, "vocab_size", &c->vocab_size, true, path, err)) < 0) return rc;
    c->n_kv_heads = c->n_heads;
    if ((rc = get_u32(root, "num_key_value_heads", &c->n_kv_heads, false, path, err)) < 0) return rc;
    c->head_dim = c->n_heads ? c->d_model / c->n_heads : 0;
    bool head_dim_given = false;
    if ((rc = get_u32(root, "head_dim", &c->head_dim, false, path, err)) < 0) return rc;
    head_dim_given = rc == PT_OK;
    if (!head_dim_given && c->n_heads && c->d_model % c->n_heads)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: hidden_size %u not divisible by num_attention_heads %u",
                          path, c->d_model, c->n_heads);
    c->rope_dim = c->head_dim;
    c->max_ctx = 2048;
    if ((rc = get_u32(root, "max_position_embeddings", &c->max_ctx, false, path, err)) < 0) return rc;
    c->rms_eps = 1e-6f;
    if ((rc = get_f32(root, "rms_norm_eps", &c->rms_eps, path, err)) < 0) return rc;
    c->rope_theta = 10000.0f;
    if ((rc = get_f32(root, "rope_theta", &c->rope_theta, path, err)) < 0) return rc;
    c->rope_style = PT_ROPE_NEOX; /* HF checkpoints keep Q/K unpermuted */
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    c->tied_embeddings = cJSON_IsTrue(tie);

    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) return pt_err_set(err, PT_ERR_FORMAT, "%s: \"rope_scaling\" is not an object", path);
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!ty) ty = cJSON_GetObjectItemCaseSensitive(rs, "type");
        const char *type = cJSON_IsString(ty) ? ty->valuestring : "";
        if (!strcmp(type, "llama3")) {
            c->rope_scale_factor = 8.0f;
            c->rope_low_freq_factor = 1.0f;
            c->rope_high_freq_factor = 4.0f;
            c->rope_orig_ctx = 8192;
            if ((rc = get_f32(rs, "factor", &c->rope_scale_factor, path, err)) < 0) return rc;
            if ((rc = get_f32(rs, "low_freq_factor", &c->rope_low_freq_factor, path, err)) < 0) return rc;
            if ((rc = get_f32(rs, "high_freq_factor", &c->rope_high_freq_factor, path, err)) < 0) return rc;
            if ((rc = get_u32(rs, "original_max_position_embeddings", &c->rope_orig_ctx, false, path, err)) < 0)
                return rc;
            if (!(c->rope_scale_factor >= 1.0f) || !(c->rope_low_freq_factor > 0.0f) ||
                !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_orig_ctx == 0)
                return pt_err_set(err, PT_ERR_FORMAT, "%s: rope_scaling llama3 parameters out of range", path);
        } else if (strcmp(type, "default") != 0) {
            return pt_err_set(err, PT_ERR_UNSUPPORTED,
                              "%s: rope_scaling type '%.32s' not supported (llama3 only)", path, type);
        }
    }
    return PT_OK;
}

int pt_hf_config_parse(pt_model_config *cfg, const char *path, const char *json, size_t len,
                       pt_err *err) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return pt_err_set(err, PT_ERR_FORMAT, "%s: not valid JSON", path);
    int rc = parse(cfg, root, path, err);
    cJSON_Delete(root);
    return rc;
}

char *pt_hf_chat_template(const char *json, size_t len) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    char *s = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
    cJSON_Delete(root);
    return s;
}
