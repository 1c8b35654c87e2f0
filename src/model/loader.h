/* Internal interfaces between the files of the model loader: model_file.c
 * (dispatch, mappings, GGUF and HF assembly, validation), hf_config.c
 * (config.json), synthetic.c (random models). Not part of the public API. */
#ifndef PROTEUS_MODEL_LOADER_H
#define PROTEUS_MODEL_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "proteus/model_file.h"

/* Owned resources of an open model file (mf->priv). */
typedef struct {
    struct pt_mapping {
        void *addr;
        size_t len;
    } *maps;
    size_t n_maps;
} pt_model_priv;

/* Register a mapping (file or anonymous) for munmap at close. */
int pt_model_add_mapping(pt_model_file *mf, void *addr, size_t len);

/* Map `path` read-only into mf's mappings. Empty files map to an empty range. */
int pt_model_map_file(pt_model_file *mf, const char *path, const uint8_t **data, uint64_t *size,
                      pt_err *err);

/* Parse a Hugging Face config.json text. `path` prefixes messages. */
int pt_hf_config_parse(pt_model_config *cfg, const char *path, const char *json, size_t len,
                       pt_err *err);
/* "chat_template" of a tokenizer_config.json text if it is a string, else NULL. */
char *pt_hf_chat_template(const char *json, size_t len);

/* Replace control characters in a message with '?'. */
void pt_model_err_sanitize(pt_err *err);

/* Sanity limits on any config, whatever its source. `path` prefixes messages. */
int pt_model_config_check(const pt_model_config *c, const char *path, pt_err *err);

/* Build a synthetic model; spec is what follows "synthetic:". */
int pt_synthetic_open(pt_model_file *mf, const char *spec, pt_err *err);

#endif
