/* Chat templates rendered by C against Hugging Face's apply_chat_template
 * (tokenize=False, add_generation_prompt=True) on the same template strings:
 * SmolLM2's ChatML (from the GGUF), and the official Llama 3, Llama 2 and
 * Mistral templates (goldens in tests/golden/tokenizer/chat_*.json). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/chat_template.h"
#include "test.h"

static cJSON *load(const char *kind) {
    const char *src = getenv("PROTEUS_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/golden/tokenizer/chat_%s.json", src ? src : ".", kind);
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "missing %s", path);
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    b[fread(b, 1, (size_t)n, f)] = 0;
    fclose(f);
    cJSON *j = cJSON_Parse(b);
    free(b);
    return j;
}

static void check_kind(const char *kind, pt_chat_kind want) {
    cJSON *j = load(kind);
    if (!j) return;
    const char *tmpl = cJSON_GetObjectItem(j, "template")->valuestring;
    CHECK_EQ_INT(pt_chat_detect(tmpl), want);
    pt_chat_template ct;
    pt_err err;
    CHECK_EQ_INT(pt_chat_template_init(&ct, tmpl, NULL, cJSON_GetObjectItem(j, "bos")->valuestring,
                                       cJSON_GetObjectItem(j, "eos")->valuestring, &err), PT_OK);
    int cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        pt_chat_msg msgs[16];
        size_t n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItem(c, "messages")) {
            msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
            n++;
        }
        char *out = NULL;
        CHECK_EQ_INT(pt_chat_render(&ct, msgs, n, true, &out, &err), PT_OK);
        const char *want_text = cJSON_GetObjectItem(c, "text")->valuestring;
        CHECK_MSG(out && !strcmp(out, want_text), "%s case %d:\n--- ours\n%s\n--- HF\n%s", kind, cases,
                  out ? out : "(null)", want_text);
        free(out);
        cases++;
    }
    CHECK(cases >= 2);
    printf("%s: %d conversations identical to HF\n", kind, cases);
    pt_chat_template_free(&ct);
    cJSON_Delete(j);
}

static void test_chatml_smollm2(void) { check_kind("chatml", PT_CHAT_CHATML); }
static void test_llama3(void) { check_kind("llama3", PT_CHAT_LLAMA3); }
static void test_llama2(void) { check_kind("llama2", PT_CHAT_LLAMA2); }
static void test_mistral(void) { check_kind("mistral", PT_CHAT_MISTRAL); }

static void test_default_system_extracted(void) {
    cJSON *j = load("chatml");
    if (!j) return;
    pt_chat_template ct;
    pt_err err;
    CHECK_EQ_INT(pt_chat_template_init(&ct, cJSON_GetObjectItem(j, "template")->valuestring, NULL, "", "", &err),
                 PT_OK);
    CHECK(ct.default_system && !strcmp(ct.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
    pt_chat_template_free(&ct);
    cJSON_Delete(j);
    /* A ChatML template that builds the system turn from the message has no default. */
    CHECK_EQ_INT(pt_chat_template_init(&ct, "{{'<|im_start|>' + message['role'] + '\\n'}}", NULL, "", "", &err), PT_OK);
    CHECK(ct.default_system == NULL);
    pt_chat_template_free(&ct);
}

static void test_override_and_errors(void) {
    pt_chat_template ct;
    pt_err err;
    CHECK_EQ_INT(pt_chat_template_init(&ct, "{{ '<|im_start|>' }}", "llama3", "<|begin_of_text|>", "", &err), PT_OK);
    CHECK_EQ_INT(ct.kind, PT_CHAT_LLAMA3);
    CHECK(!strcmp(pt_chat_stop_strings(&ct)[0], "<|eot_id|>"));
    pt_chat_template_free(&ct);
    CHECK_EQ_INT(pt_chat_template_init(&ct, NULL, "nope", NULL, NULL, &err), PT_ERR_UNSUPPORTED);
    CHECK_EQ_INT(pt_chat_template_init(&ct, "{{ messages }}", NULL, NULL, NULL, &err), PT_ERR_UNSUPPORTED);
    CHECK_EQ_INT(pt_chat_template_init(&ct, NULL, "mistral", "<s>", "</s>", &err), PT_OK);
    pt_chat_msg bad[] = {{"user", "a"}, {"user", "b"}};
    char *out = NULL;
    CHECK_EQ_INT(pt_chat_render(&ct, bad, 2, true, &out, &err), PT_ERR_INVALID);
    CHECK(out == NULL);
    pt_chat_msg sys[] = {{"system", "S"}, {"user", "U"}};
    CHECK_EQ_INT(pt_chat_render(&ct, sys, 2, true, &out, &err), PT_OK);
    CHECK(out && !strcmp(out, "<s>[INST] S\n\nU [/INST]"));
    free(out);
    CHECK(!strcmp(pt_chat_stop_strings(&ct)[0], "</s>"));
    pt_chat_template_free(&ct);
}

TEST_MAIN(TEST(test_chatml_smollm2), TEST(test_llama3), TEST(test_llama2), TEST(test_mistral),
          TEST(test_default_system_extracted), TEST(test_override_and_errors))
