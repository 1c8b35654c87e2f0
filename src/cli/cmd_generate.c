/* proteus generate: one prompt or chat message in, text streamed out as it is
 * produced, then prompt and generation speed on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "proteus/chat_template.h"
#include "proteus/engine.h"
#include "proteus/sampler.h"
#include "proteus/stop_matcher.h"
#include "proteus/tokenizer.h"

#define MAX_STOPS PT_STOP_MAX_STRINGS

typedef struct {
    const char *model, *prompt, *chat, *system, *template_name;
    long n_predict, threads, tp, select_budget, select_dense;
    int device, device_index;
    bool ignore_eos;
    const char *stops[MAX_STOPS];
    size_t n_stops;
    pt_sampler_params sp;
} gen_args;

static void usage(FILE *f) {
    fputs("usage: proteus generate [-m MODEL] (-p PROMPT | --chat MESSAGE) [options]\n"
          "  -m MODEL               GGUF file, Hugging Face directory or synthetic:<shape>\n"
          "                         (default: the default model, SmolLM2-135M-Instruct Q4_1)\n"
          "  -p, --prompt TEXT      raw prompt, tokenized as is (with BOS if the model wants one)\n"
          "  --chat MESSAGE         one user message, rendered with the model's chat template\n"
          "  --system TEXT          system message for --chat\n"
          "  --chat-template NAME   chatml | llama3 | llama2 | mistral (default: from the model)\n"
          "  -n N                   tokens to generate at most (default 128)\n"
          "  -t THREADS             threads per rank (default: all cores)\n"
          "  --tp N                 tensor-parallel ranks (default 1)\n"
          "  --device D             cpu | cuda | cuda:N (default cpu)\n"
          "  --page-select-budget N query-aware page selection: decode attends to N tokens'\n"
          "                         pages (default 0: off)\n"
          "  --page-select-dense-layers N   first layers kept dense (default 2)\n"
          "  --temp T               temperature, 0 = greedy (default 0)\n"
          "  --top-k K, --top-p P, --min-p P      sampling filters (default off)\n"
          "  --seed S               sampling seed (default 0)\n"
          "  --repeat-penalty R, --presence-penalty P, --frequency-penalty F\n"
          "  --stop TEXT            stop string (repeatable, up to 16)\n"
          "  --ignore-eos           keep generating past end-of-generation tokens\n"
          "exit codes: 0 ok, 1 model or generation failure, 2 usage error\n",
          f);
}

static int parse_args(int argc, char **argv, gen_args *a) {
    memset(a, 0, sizeof(*a));
    a->n_predict = 128;
    a->threads = cli_default_threads();
    a->tp = 1;
    a->select_dense = 2;
    pt_sampler_params_default(&a->sp);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
        long l;
        uint64_t u;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            usage(stdout);
            exit(CLI_OK);
        } else if (!strcmp(f, "--ignore-eos")) {
            a->ignore_eos = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "proteus generate: unknown option or missing value: '%s'\n", f);
            return CLI_USAGE;
        }
        i++;
        if (!strcmp(f, "-m")) a->model = v;
        else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) a->prompt = v;
        else if (!strcmp(f, "--chat")) a->chat = v;
        else if (!strcmp(f, "--system")) a->system = v;
        else if (!strcmp(f, "--chat-template")) a->template_name = v;
        else if (!strcmp(f, "-n")) { if (!cli_parse_long(f, v, 0, 1 << 24, &a->n_predict)) return CLI_USAGE; }
        else if (!strcmp(f, "-t")) { if (!cli_parse_long(f, v, 1, 1024, &a->threads)) return CLI_USAGE; }
        else if (!strcmp(f, "--tp")) { if (!cli_parse_long(f, v, 1, 64, &a->tp)) return CLI_USAGE; }
        else if (!strcmp(f, "--device")) { if (!cli_parse_device(f, v, &a->device, &a->device_index)) return CLI_USAGE; }
        else if (!strcmp(f, "--page-select-budget")) { if (!cli_parse_long(f, v, 0, 1 << 24, &a->select_budget)) return CLI_USAGE; }
        else if (!strcmp(f, "--page-select-dense-layers")) { if (!cli_parse_long(f, v, 0, 1 << 16, &a->select_dense)) return CLI_USAGE; }
        else if (!strcmp(f, "--temp")) { if (!cli_parse_float(f, v, 0, 100, &d)) return CLI_USAGE; a->sp.temperature = (float)d; }
        else if (!strcmp(f, "--top-k")) { if (!cli_parse_long(f, v, -1, 1 << 24, &l)) return CLI_USAGE; a->sp.top_k = (int32_t)l; }
        else if (!strcmp(f, "--top-p")) { if (!cli_parse_float(f, v, 1e-9, 1, &d)) return CLI_USAGE; a->sp.top_p = (float)d; }
        else if (!strcmp(f, "--min-p")) { if (!cli_parse_float(f, v, 0, 1, &d)) return CLI_USAGE; a->sp.min_p = (float)d; }
        else if (!strcmp(f, "--seed")) { if (!cli_parse_u64(f, v, &u)) return CLI_USAGE; a->sp.seed = u; }
        else if (!strcmp(f, "--repeat-penalty")) { if (!cli_parse_float(f, v, 1e-6, 100, &d)) return CLI_USAGE; a->sp.repetition_penalty = (float)d; }
        else if (!strcmp(f, "--presence-penalty")) { if (!cli_parse_float(f, v, -2, 2, &d)) return CLI_USAGE; a->sp.presence_penalty = (float)d; }
        else if (!strcmp(f, "--frequency-penalty")) { if (!cli_parse_float(f, v, -2, 2, &d)) return CLI_USAGE; a->sp.frequency_penalty = (float)d; }
        else if (!strcmp(f, "--stop")) {
            if (a->n_stops == MAX_STOPS || !*v) {
                fprintf(stderr, "proteus generate: --stop: at most %d non-empty stop strings\n", MAX_STOPS);
                return CLI_USAGE;
            }
            a->stops[a->n_stops++] = v;
        } else {
            fprintf(stderr, "proteus generate: unknown option '%s'\n", f);
            return CLI_USAGE;
        }
    }
    if (!a->prompt == !a->chat) {
        fputs("proteus generate: give exactly one of -p PROMPT or --chat MESSAGE\n", stderr);
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* The text the model sees: the raw prompt, or the chat message rendered with
 * the model's (or the named) chat template. */
static char *build_prompt(const gen_args *a, const pt_model_file *mf, const pt_tokenizer *tok, pt_err *err) {
    if (a->prompt) return pt_xstrdup(a->prompt);
    pt_chat_template ct;
    char *out = NULL;
    if (pt_chat_template_init_tok(&ct, mf->chat_template, a->template_name, tok, err) == 0) {
        pt_chat_msg msgs[2];
        size_t n = 0;
        if (a->system) msgs[n++] = (pt_chat_msg){"system", a->system};
        msgs[n++] = (pt_chat_msg){"user", a->chat};
        if (pt_chat_render(&ct, msgs, n, true, &out, err) != 0) out = NULL;
        pt_chat_template_free(&ct);
    }
    return out;
}

int cmd_generate(int argc, char **argv) {
    gen_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) {
        usage(stderr);
        return rc;
    }
    const char *path = cli_model_path(a.model);
    pt_err err = {{0}};
    pt_model_file mf;
    if (pt_model_file_open(&mf, path, &err) != 0) {
        fprintf(stderr, "proteus: %s\n", err.msg);
        return CLI_FAIL;
    }
    pt_tokenizer *tok = NULL;
    pt_engine *e = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    pt_sampler smp = {0};
    pt_sample_work work = {0};
    pt_stop_matcher stop = {0};
    bool have_sampler = false, have_work = false, have_stop = false;
    rc = CLI_FAIL;

    if (pt_tokenizer_load(&tok, &mf, &err) != 0) goto out;
    if (!(text = build_prompt(&a, &mf, tok, &err))) goto out;
    size_t n_prompt = 0;
    bool add_bos = pt_tokenizer_add_bos(tok) && a.prompt;
    /* Chat templates write their own special tokens, so they are parsed as such. */
    if (pt_tokenizer_encode(tok, text, strlen(text), add_bos, a.chat != NULL, &ids, &n_prompt, &err) != 0) goto out;
    if (n_prompt == 0) {
        pt_err_set(&err, PT_ERR_INVALID, "the prompt is empty");
        goto out;
    }
    uint32_t ctx = mf.config.max_ctx ? mf.config.max_ctx : 4096;
    if (n_prompt + (size_t)a.n_predict > ctx) {
        pt_err_set(&err, PT_ERR_INVALID, "prompt (%zu tokens) + -n %ld exceeds the context of %u tokens", n_prompt,
                   a.n_predict, ctx);
        goto out;
    }
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.n_threads = (int)a.threads;
    o.tp = (int)a.tp;
    o.device = (pt_device_kind)a.device;
    o.device_index = a.device_index;
    o.select_budget = (uint32_t)a.select_budget;
    o.select_dense_layers = (uint32_t)a.select_dense;
    o.max_seqs = 1;
    o.max_ctx = (uint32_t)(n_prompt + (size_t)a.n_predict + 1);
    if (pt_engine_create(&e, &mf, &o, &err) != 0) goto out;
    if (pt_sampler_init(&smp, &a.sp, mf.config.vocab_size, &err) != 0) goto out;
    have_sampler = true;
    if (pt_sample_work_init(&work, mf.config.vocab_size, &err) != 0) goto out;
    have_work = true;
    if (pt_stop_matcher_init(&stop, a.stops, a.n_stops, false, &err) != 0) goto out;
    have_stop = true;
    if (pt_sampler_record_prompt(&smp, ids, n_prompt, &err) != 0) goto out;
    logits = pt_xmalloc((size_t)mf.config.vocab_size * sizeof(float));

    int seq = pt_engine_seq_new(e);
    double t0 = pt_now();
    for (size_t i = 0; i < n_prompt; i += o.max_batch_tokens) {
        size_t m = n_prompt - i < o.max_batch_tokens ? n_prompt - i : o.max_batch_tokens;
        pt_batch_entry b = {seq, ids + i, (uint32_t)m, i + m == n_prompt ? logits : NULL, false, false};
        if (pt_engine_step(e, &b, 1, &err) != 0) goto out;
    }
    double t1 = pt_now();

    pt_detok dt;
    pt_detok_init(&dt, tok, true);
    size_t cap = pt_tokenizer_max_piece(tok) * 3 + 16;
    char *piece = pt_xmalloc(cap);
    long n_gen = 0;
    const char *finish = "length";
    pt_stop_result sr;
    while (n_gen < a.n_predict) {
        int32_t next = pt_sampler_sample(&smp, logits, &work);
        if (next < 0) {
            pt_err_set(&err, PT_ERR_INVALID, "no token has a finite logit");
            free(piece);
            goto out;
        }
        n_gen++;
        if (!a.ignore_eos && pt_tokenizer_is_eog(tok, next)) {
            finish = "stop";
            break;
        }
        pt_sampler_accept(&smp, next, NULL);
        size_t n = pt_detok_push(&dt, next, piece, cap);
        if (pt_stop_matcher_feed(&stop, piece, n, &sr, &err) != 0) {
            free(piece);
            goto out;
        }
        fwrite(sr.text, 1, sr.len, stdout);
        fflush(stdout);
        if (sr.stop >= 0) {
            finish = "stop";
            break;
        }
        if (n_gen == a.n_predict) break;
        pt_batch_entry b = {seq, &next, 1, logits, false, false};
        if (pt_engine_step(e, &b, 1, &err) != 0) {
            free(piece);
            goto out;
        }
    }
    if (stop.stop < 0) {
        size_t n = pt_detok_flush(&dt, piece, cap);
        pt_stop_matcher_feed(&stop, piece, n, &sr, &err);
        fwrite(sr.text, 1, sr.len, stdout);
        pt_stop_matcher_flush(&stop, &sr);
        fwrite(sr.text, 1, sr.len, stdout);
    }
    free(piece);
    double t2 = pt_now();
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "\nprompt: %zu tokens, %.1f tok/s | generation: %ld tokens, %.1f tok/s | finish: %s\n", n_prompt,
            n_prompt / (t1 - t0), n_gen, n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0.0, finish);
    rc = CLI_OK;
out:
    if (rc != CLI_OK) fprintf(stderr, "proteus: %s\n", err.msg);
    if (have_stop) pt_stop_matcher_free(&stop);
    if (have_work) pt_sample_work_free(&work);
    if (have_sampler) pt_sampler_free(&smp);
    free(logits);
    free(ids);
    free(text);
    pt_engine_free(e);
    pt_tokenizer_free(tok);
    pt_model_file_close(&mf);
    return rc;
}
