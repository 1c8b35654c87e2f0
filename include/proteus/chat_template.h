/* Chat templates: turning a list of {role, content} messages into the prompt
 * text a model was trained on. A handful of well-known formats are
 * implemented directly in C (no Jinja interpreter); the format is detected
 * from the model's Jinja template by its distinctive markers, or chosen by
 * name. Each renders exactly what Hugging Face's apply_chat_template renders
 * for the official template (tests/golden/tokenizer/chat_*.json).
 *
 * The rendered text contains special-token strings ("<|im_start|>", "<s>");
 * encode it with parse_special = true. */
#ifndef PROTEUS_CHAT_TEMPLATE_H
#define PROTEUS_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "proteus/tokenizer.h"
#include "proteus/util.h"

typedef enum {
    PT_CHAT_UNKNOWN = 0,
    PT_CHAT_CHATML,  /* <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen2) */
    PT_CHAT_LLAMA3,  /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
    PT_CHAT_LLAMA2,  /* <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s> */
    PT_CHAT_MISTRAL, /* <s>[INST] user [/INST]answer</s> (no system role) */
} pt_chat_kind;

typedef struct {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
} pt_chat_msg;

typedef struct {
    pt_chat_kind kind;
    char *default_system; /* ChatML: the system prompt the template adds when none is given; or NULL */
    char *bos;            /* text of the bos token ("<s>", "<|begin_of_text|>"), "" if none */
    char *eos;            /* text of the eos token */
} pt_chat_template;

/* Kind from Jinja text by markers; PT_CHAT_UNKNOWN if none match. */
pt_chat_kind pt_chat_detect(const char *jinja);
/* "chatml", "llama3", "llama2", "mistral"; PT_CHAT_UNKNOWN otherwise. */
pt_chat_kind pt_chat_kind_from_name(const char *name);
const char *pt_chat_kind_name(pt_chat_kind kind);

/* Set up from the model's template text (may be NULL) and/or a name that
 * overrides detection (may be NULL). bos/eos are the token texts (NULL = "").
 * Fails with PT_ERR_UNSUPPORTED when neither gives a known kind. */
int pt_chat_template_init(pt_chat_template *ct, const char *jinja, const char *name, const char *bos,
                          const char *eos, pt_err *err);
void pt_chat_template_free(pt_chat_template *ct);
/* pt_chat_template_init with the bos/eos texts taken from the tokenizer. */
int pt_chat_template_init_tok(pt_chat_template *ct, const char *jinja, const char *name, const pt_tokenizer *tok,
                              pt_err *err);

/* Render msgs into a malloc'd string (*out). add_generation_prompt appends
 * the opening of an assistant turn (ChatML, Llama 3; the [INST] formats end
 * with [/INST] anyway). Llama 2 and Mistral require user/assistant to
 * alternate starting with user (after an optional system message), as their
 * templates do; Mistral has no system role, so a system message is put in
 * front of the first user message, separated by a blank line. */
int pt_chat_render(const pt_chat_template *ct, const pt_chat_msg *msgs, size_t n, bool add_generation_prompt,
                   char **out, pt_err *err);

/* Strings that end the assistant's turn, NULL-terminated list. */
const char *const *pt_chat_stop_strings(const pt_chat_template *ct);

#endif
