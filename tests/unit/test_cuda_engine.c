/* The CUDA backend against the CPU engine on the same weights (issue 5): the
 * whole model's logits on the GPU match the CPU engine's, on a SmolLM2-shaped
 * and a Llama-3-8B-shaped synthetic model with BF16 weights, at TP 1 and,
 * over NCCL, at TP 2 (SmolLM2's 3 KV heads split 1 + 2) and TP 4 (Llama 3
 * only) where the machine has the GPUs (issue item 6).
 *
 * The CPU side is the float reference: exact_activations (f32 activations,
 * the BF16 weights widened exactly) with every matmul input rounded to bf16
 * where the GPU rounds it (bf16_activations), and f16 KV pages like the GPU's.
 * What is left is the order of float sums, so rows are compared by cosine
 * similarity and by the error relative to the row's largest logit:
 *   cosine >= 0.9995 and max |gpu - cpu| <= 0.02 * max |cpu|, every row;
 *   the top-1 token agrees on at least 90% of a model's rows, pooled (a
 *   near-tie may flip).
 * Query-aware selection can choose a different page where two scores are
 * within rounding of each other, so that case allows cosine >= 0.998 and
 * 0.08, and must show that selection ran: the GPU's sparse logits are closer
 * to the CPU's sparse logits than to its own dense ones.
 * Cases: a prompt prefilled in chunks (a prefix in cache), greedy decode, a
 * batch mixing a prefill with decodes of other lengths, two sequences
 * decoding together across a context bucket, query-aware page selection on
 * both devices, and CUDA graphs on vs off at TP 1 (the same kernels on the
 * same inputs: bit-identical logits; replays must have happened). The CPU
 * reference is computed once per model (the CPU engine gives the same bits
 * at any TP degree) and every GPU layout is held to it with the same
 * tolerances. At TP > 1 the test also checks that steps ran eagerly (CUDA
 * graphs are TP 1 only) and each rank's accounting: weights, KV pages and
 * scratch on its device, shards that add up to TP 1's, KV pages as asked.
 *
 * Without a CUDA build or device the engine must refuse devices: cuda with a
 * clear error (checked), and the program exits 77. TP 2 on CUDA must be
 * accepted with two GPUs and refused, naming the missing GPU, without them
 * (checked everywhere). With one GPU the TP 1 checks run and the program
 * then exits 77 (TP 2 skipped, with the reason); with 2 or 3 GPUs TP 4 is
 * skipped with a note. PROTEUS_CUDA_ENGINE_MODELS (comma-separated)
 * overrides the models. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "proteus/engine.h"
#include "test.h"

static uint32_t V;

/* Head pages per rank: 4 sequences of 1024 tokens on every KV head. */
#define KV_PAGES(mf) (4 * 64 * (uint64_t)(mf)->config.n_kv_heads)

static pt_engine *open_engine(pt_model_file *mf, pt_device_kind dev, int tp, bool graphs, uint32_t budget,
                              pt_err *err) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.device = dev;
    o.tp = tp;
    o.cuda_graphs = graphs;
    o.kv_dtype = PT_DTYPE_F16;
    o.exact_activations = true; /* CPU only; the GPU has one arithmetic */
    o.bf16_activations = true;
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    o.n_threads = nproc > 0 ? (int)nproc : 1;
    o.max_ctx = 1024;
    o.max_seqs = 4;
    o.max_batch_tokens = 64;
    o.kv_pages = KV_PAGES(mf); /* per rank */
    o.select_budget = budget;
    o.select_dense_layers = 1;
    pt_engine *e = NULL;
    if (pt_engine_create(&e, mf, &o, err) != 0) return NULL;
    return e;
}

static void prompt_tokens(int32_t *t, uint32_t n, uint32_t seed) {
    for (uint32_t i = 0; i < n; i++) t[i] = (int32_t)((seed * 2654435761u + i * 40503u + 7) % V);
}

static int32_t argmax(const float *l) {
    int32_t b = 0;
    for (uint32_t v = 1; v < V; v++)
        if (l[v] > l[b]) b = (int32_t)v;
    return b;
}

/* Compares rows of logits: the worst cosine and relative error, and top-1
 * agreement (pooled over a model's cases in `pooled`). */
typedef struct {
    size_t rows, top1_same;
    double min_cos, max_rel;
} cmp_stats;
static cmp_stats pooled;

static void compare_rows(const float *gpu, const float *cpu, size_t rows, cmp_stats *st) {
    for (size_t r = 0; r < rows; r++) {
        const float *g = gpu + r * V, *c = cpu + r * V;
        double dot = 0, ng = 0, nc = 0, maxc = 0, maxd = 0;
        for (uint32_t v = 0; v < V; v++) {
            dot += (double)g[v] * c[v];
            ng += (double)g[v] * g[v];
            nc += (double)c[v] * c[v];
            if (fabs(c[v]) > maxc) maxc = fabs(c[v]);
            double d = fabs((double)g[v] - c[v]);
            if (!(d <= maxd)) maxd = d; /* NaN propagates */
        }
        double cos = dot / sqrt(ng * nc + 1e-300), rel = maxd / (maxc + 1e-30);
        if (!(cos >= st->min_cos)) st->min_cos = cos;
        if (!(rel <= st->max_rel)) st->max_rel = rel;
        bool same = argmax(g) == argmax(c);
        st->top1_same += same;
        st->rows++;
        pooled.top1_same += same;
        pooled.rows++;
    }
}

static void check_stats(const char *what, const cmp_stats *st, double min_cos, double max_rel) {
    printf("  %-40s rows %zu, min cosine %.6f, max err / max |logit| %.4f, top-1 same %zu\n", what, st->rows,
           st->min_cos, st->max_rel, st->top1_same);
    CHECK_MSG(st->min_cos >= min_cos, "%s: min cosine %.6f", what, st->min_cos);
    CHECK_MSG(st->max_rel <= max_rel, "%s: max relative error %.4f", what, st->max_rel);
}

/* Root-mean-square difference of rows of logits. */
static double rms_diff(const float *a, const float *b, size_t rows) {
    double s = 0;
    for (size_t i = 0; i < rows * V; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s / (double)(rows * V));
}

/* Prefill 37 tokens in chunks of 16 with all logits, then `gen` greedy
 * steps; tokens of the decode come from `fed` (the CPU run's choices) so that
 * both devices see the same inputs. */
#define PROMPT 37
#define GEN 6
static void run_sequence(pt_engine *e, float *out, int32_t *fed, bool choose) {
    pt_err err = {{0}};
    int32_t prompt[PROMPT];
    prompt_tokens(prompt, PROMPT, 1);
    int s = pt_engine_seq_new(e);
    for (uint32_t i = 0; i < PROMPT; i += 16) {
        uint32_t m = PROMPT - i < 16 ? PROMPT - i : 16;
        pt_batch_entry b = {s, prompt + i, m, out + (size_t)i * V, true, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    for (int g = 0; g < GEN; g++) {
        if (choose) fed[g] = argmax(out + (size_t)(PROMPT - 1 + g) * V);
        pt_batch_entry b = {s, &fed[g], 1, out + (size_t)(PROMPT + g) * V, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    pt_engine_seq_free(e, s);
}

/* One step mixing a 20-token prefill (after a 30-token prefix) with decodes
 * of two sequences of 50 and 300 tokens: logits of the three last rows. */
static void run_mixed(pt_engine *e, float *out) {
    pt_err err = {{0}};
    uint32_t lens[3] = {30, 50, 300};
    int seqs[3];
    int32_t buf[300];
    for (int i = 0; i < 3; i++) {
        seqs[i] = pt_engine_seq_new(e);
        prompt_tokens(buf, lens[i], 10 + (uint32_t)i);
        for (uint32_t j = 0; j < lens[i]; j += 64) {
            uint32_t m = lens[i] - j < 64 ? lens[i] - j : 64;
            pt_batch_entry b = {seqs[i], buf + j, m, NULL, false, false};
            CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
        }
    }
    int32_t pre[20], d1 = 5, d2 = 6;
    prompt_tokens(pre, 20, 99);
    pt_batch_entry b[3] = {{seqs[1], &d1, 1, out, false, false},
                           {seqs[0], pre, 20, out + V, false, false},
                           {seqs[2], &d2, 1, out + 2 * (size_t)V, false, false}};
    CHECK_MSG(pt_engine_step(e, b, 3, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) pt_engine_seq_free(e, seqs[i]);
}

/* Two sequences of 250 tokens decoding together for 12 steps: contexts
 * 251..262 cross the 256-token bucket, so two graph shapes (with split-KV)
 * are captured and replayed. Logits of both rows of every step. */
#define PAIR_STEPS 12
static void run_decode_pair(pt_engine *e, float *out) {
    pt_err err = {{0}};
    int32_t buf[250];
    int seqs[2];
    for (int i = 0; i < 2; i++) {
        seqs[i] = pt_engine_seq_new(e);
        prompt_tokens(buf, 250, 20 + (uint32_t)i);
        for (uint32_t j = 0; j < 250; j += 64) {
            uint32_t m = 250 - j < 64 ? 250 - j : 64;
            pt_batch_entry b = {seqs[i], buf + j, m, NULL, false, false};
            CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
        }
    }
    for (int g = 0; g < PAIR_STEPS; g++) {
        int32_t t0 = (int32_t)(g * 7 + 1), t1 = (int32_t)(g * 11 + 2);
        pt_batch_entry b[2] = {{seqs[0], &t0, 1, out + (size_t)(2 * g) * V, false, false},
                               {seqs[1], &t1, 1, out + (size_t)(2 * g + 1) * V, false, false}};
        CHECK_MSG(pt_engine_step(e, b, 2, &err) == 0, "%s", err.msg);
    }
    for (int i = 0; i < 2; i++) pt_engine_seq_free(e, seqs[i]);
}

/* Decode steps past a 600-token context with page selection (budget 128). */
static void run_selected(pt_engine *e, float *out, int32_t *fed, bool choose) {
    pt_err err = {{0}};
    int32_t buf[600];
    prompt_tokens(buf, 600, 3);
    int s = pt_engine_seq_new(e);
    for (uint32_t j = 0; j < 600; j += 64) {
        uint32_t m = 600 - j < 64 ? 600 - j : 64;
        pt_batch_entry b = {s, buf + j, m, j + m == 600 ? out : NULL, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    for (int g = 0; g < GEN; g++) {
        if (choose) fed[g] = argmax(out + (size_t)g * V);
        pt_batch_entry b = {s, &fed[g], 1, out + (size_t)(g + 1) * V, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    pt_engine_seq_free(e, s);
}

/* The CPU reference of every case of a model, computed once. The decode
 * tokens (fed, fed_sel) are the CPU's greedy choices, fed to every GPU run. */
#define PAIR_ROWS (2 * PAIR_STEPS)
typedef struct {
    float *seq;   /* (PROMPT + GEN) rows */
    float *mixed; /* 3 rows */
    float *pair;  /* PAIR_ROWS rows */
    float *sel;   /* GEN + 1 rows, selection with a budget of 128 */
    int32_t fed[GEN], fed_sel[GEN];
} reference;

static bool reference_run(pt_model_file *mf, reference *ref) {
    pt_err err = {{0}};
    ref->seq = malloc((size_t)(PROMPT + GEN) * V * sizeof(float));
    ref->mixed = malloc(3 * (size_t)V * sizeof(float));
    ref->pair = malloc((size_t)PAIR_ROWS * V * sizeof(float));
    ref->sel = malloc((size_t)(GEN + 1) * V * sizeof(float));
    if (!ref->seq || !ref->mixed || !ref->pair || !ref->sel) {
        CHECK_MSG(false, "out of memory for the CPU reference");
        return false;
    }
    pt_engine *ec = open_engine(mf, PT_DEVICE_CPU, 1, false, 0, &err);
    CHECK_MSG(ec != NULL, "%s", err.msg);
    if (!ec) return false;
    run_sequence(ec, ref->seq, ref->fed, true);
    run_mixed(ec, ref->mixed);
    run_decode_pair(ec, ref->pair);
    pt_engine_free(ec);
    ec = open_engine(mf, PT_DEVICE_CPU, 1, false, 128, &err);
    CHECK_MSG(ec != NULL, "%s", err.msg);
    if (!ec) return false;
    run_selected(ec, ref->sel, ref->fed_sel, true);
    pt_engine_free(ec);
    return true;
}

static void reference_free(reference *ref) {
    free(ref->seq);
    free(ref->mixed);
    free(ref->pair);
    free(ref->sel);
}

/* Sparse GPU logits (decode rows) against the CPU's sparse ones, and proof
 * that selection ran: they are closer to the CPU's sparse logits than to
 * the GPU's own dense logits on the same inputs. */
static void check_selected(const char *what, const float *gpu, const float *gpu_dense, const reference *ref) {
    cmp_stats st = {0, 0, 1.0, 0.0};
    compare_rows(gpu + V, ref->sel + V, GEN, &st); /* the decode rows; row 0 is the dense prefill */
    check_stats(what, &st, 0.998, 0.08);
    double to_cpu = rms_diff(gpu + V, ref->sel + V, GEN), to_dense = rms_diff(gpu + V, gpu_dense + V, GEN);
    printf("  sparse GPU vs sparse CPU rms %.5f, vs dense GPU rms %.5f\n", to_cpu, to_dense);
    CHECK_MSG(to_cpu < 0.5 * to_dense, "%s: selection on the GPU is not the CPU's: rms %.5f vs %.5f from dense", what,
              to_cpu, to_dense);
}

/* TP 1: every case, and CUDA graphs on vs off. Returns the shard bytes of
 * the one rank (the whole model's chunks), for the TP > 1 accounting. */
static uint64_t check_tp1(pt_model_file *mf, const reference *ref, float *gpu, float *gpu2, float *gpu_dense) {
    pt_err err = {{0}};
    cmp_stats st;
    uint64_t shard = 0, replicated = 0;
    printf(" TP 1\n");
    pt_engine *eg = open_engine(mf, PT_DEVICE_CUDA, 1, true, 0, &err);
    CHECK_MSG(eg != NULL, "%s", err.msg);
    pt_engine *eg_nograph = open_engine(mf, PT_DEVICE_CUDA, 1, false, 0, &err);
    CHECK_MSG(eg_nograph != NULL, "%s", err.msg);
    if (eg && eg_nograph) {
        pt_engine_weight_bytes(eg, 0, &shard, &replicated);
        int32_t fed[GEN];
        memcpy(fed, ref->fed, sizeof(fed));
        st = (cmp_stats){0, 0, 1.0, 0.0};
        run_sequence(eg, gpu, fed, false);
        compare_rows(gpu, ref->seq, PROMPT + GEN, &st);
        check_stats("chunked prefill + greedy decode", &st, 0.9995, 0.02);

        /* Graphs: the second run of a shape is captured, later ones replay;
         * three runs exercise eager, capture and replay. */
        run_sequence(eg, gpu, fed, false);
        run_sequence(eg, gpu, fed, false);
        run_sequence(eg_nograph, gpu2, fed, false);
        CHECK_MSG(memcmp(gpu, gpu2, (PROMPT + GEN) * V * sizeof(float)) == 0,
                  "CUDA graph replay differs from eager steps");

        st = (cmp_stats){0, 0, 1.0, 0.0};
        run_mixed(eg, gpu);
        compare_rows(gpu, ref->mixed, 3, &st);
        check_stats("mixed prefill + decode batch", &st, 0.9995, 0.02);

        st = (cmp_stats){0, 0, 1.0, 0.0};
        run_decode_pair(eg, gpu);
        run_decode_pair(eg_nograph, gpu2);
        compare_rows(gpu, ref->pair, PAIR_ROWS, &st);
        check_stats("two sequences decoding across a bucket", &st, 0.9995, 0.02);
        CHECK_MSG(memcmp(gpu, gpu2, PAIR_ROWS * V * sizeof(float)) == 0,
                  "CUDA graph replay differs from eager steps (batch of 2)");
        uint64_t captured = 0, replayed = 0;
        pt_engine_graph_stats(eg, &captured, &replayed);
        printf("  CUDA graphs: %llu captured, %llu steps replayed\n", (unsigned long long)captured,
               (unsigned long long)replayed);
        CHECK_MSG(captured >= 2 && replayed >= PAIR_STEPS, "graphs captured %llu, replayed %llu",
                  (unsigned long long)captured, (unsigned long long)replayed);
        pt_engine_graph_stats(eg_nograph, &captured, &replayed);
        CHECK(captured == 0 && replayed == 0);
    }
    pt_engine_free(eg_nograph);

    /* Selection: GPU dense logits (eg) on the same inputs show that the
     * sparse ones differ from dense, and are the CPU's sparse ones. */
    pt_engine *es = open_engine(mf, PT_DEVICE_CUDA, 1, true, 128, &err);
    CHECK_MSG(es != NULL, "%s", err.msg);
    if (es && eg) {
        int32_t fed[GEN];
        memcpy(fed, ref->fed_sel, sizeof(fed));
        run_selected(es, gpu, fed, false);
        run_selected(eg, gpu_dense, fed, false);
        check_selected("query-aware selection, budget 128", gpu, gpu_dense, ref);
    }
    pt_engine_free(es);
    pt_engine_free(eg);
    return shard;
}

/* TP > 1 over NCCL: every case against the same reference and tolerances,
 * eager steps, and each rank's accounting. */
static void check_tp(pt_model_file *mf, int tp, const reference *ref, uint64_t tp1_shard, float *gpu,
                     float *gpu_dense) {
    pt_err err = {{0}};
    cmp_stats st;
    char what[96];
    printf(" TP %d\n", tp);
    pt_engine *et = open_engine(mf, PT_DEVICE_CUDA, tp, true, 0, &err);
    CHECK_MSG(et != NULL, "TP %d: %s", tp, err.msg);
    if (!et) return;
    CHECK_EQ_INT(pt_engine_tp(et), tp);

    /* Accounting: each rank's device holds its shard, the replicated
     * tensors, its KV pages and its buffers; the shards partition the
     * model's chunks; only rank 0 holds the LM head and the final norm. */
    uint64_t shard_sum = 0, rep0 = 0;
    for (int i = 0; i < tp; i++) {
        pt_device *d = pt_engine_device(et, i);
        uint64_t shard = 0, rep = 0, total = 0, free_pages = 0;
        pt_engine_weight_bytes(et, i, &shard, &rep);
        pt_engine_kv_pages(et, i, &total, &free_pages);
        char name[16];
        pt_engine_device_name(et, i, name, sizeof(name));
        printf("  rank %d on %s: weights %llu (shard %llu, replicated %llu), kv %llu, scratch %llu; %llu KV pages\n",
               i, name, (unsigned long long)pt_device_used(d, PT_MEM_WEIGHTS), (unsigned long long)shard,
               (unsigned long long)rep, (unsigned long long)pt_device_used(d, PT_MEM_KV),
               (unsigned long long)pt_device_used(d, PT_MEM_SCRATCH), (unsigned long long)total);
        CHECK_MSG(pt_device_used(d, PT_MEM_WEIGHTS) == shard + rep, "rank %d: %llu bytes of weights, shard %llu + %llu",
                  i, (unsigned long long)pt_device_used(d, PT_MEM_WEIGHTS), (unsigned long long)shard,
                  (unsigned long long)rep);
        CHECK_MSG(shard > 0 && pt_device_used(d, PT_MEM_KV) > 0 && pt_device_used(d, PT_MEM_SCRATCH) > 0,
                  "rank %d: nothing accounted", i);
        CHECK_EQ_INT(total, KV_PAGES(mf));
        CHECK_EQ_INT(free_pages, total);
        if (i == 0) rep0 = rep;
        else CHECK_MSG(rep < rep0, "rank %d replicates %llu bytes, rank 0 %llu", i, (unsigned long long)rep,
                       (unsigned long long)rep0);
        shard_sum += shard;
    }
    CHECK_MSG(shard_sum == tp1_shard, "TP %d shards add up to %llu bytes, TP 1's is %llu", tp,
              (unsigned long long)shard_sum, (unsigned long long)tp1_shard);

    int32_t fed[GEN];
    memcpy(fed, ref->fed, sizeof(fed));
    st = (cmp_stats){0, 0, 1.0, 0.0};
    run_sequence(et, gpu, fed, false);
    compare_rows(gpu, ref->seq, PROMPT + GEN, &st);
    snprintf(what, sizeof(what), "TP %d chunked prefill + greedy decode", tp);
    check_stats(what, &st, 0.9995, 0.02);

    st = (cmp_stats){0, 0, 1.0, 0.0};
    run_mixed(et, gpu);
    compare_rows(gpu, ref->mixed, 3, &st);
    snprintf(what, sizeof(what), "TP %d mixed prefill + decode batch", tp);
    check_stats(what, &st, 0.9995, 0.02);

    st = (cmp_stats){0, 0, 1.0, 0.0};
    run_decode_pair(et, gpu);
    compare_rows(gpu, ref->pair, PAIR_ROWS, &st);
    snprintf(what, sizeof(what), "TP %d two sequences across a bucket", tp);
    check_stats(what, &st, 0.9995, 0.02);

    /* CUDA graphs are TP 1 only: asked for, but every step ran eagerly. */
    uint64_t captured = 1, replayed = 1;
    pt_engine_graph_stats(et, &captured, &replayed);
    CHECK_MSG(captured == 0 && replayed == 0, "TP %d: graphs captured %llu, replayed %llu", tp,
              (unsigned long long)captured, (unsigned long long)replayed);

    pt_engine *es = open_engine(mf, PT_DEVICE_CUDA, tp, true, 128, &err);
    CHECK_MSG(es != NULL, "TP %d: %s", tp, err.msg);
    if (es) {
        memcpy(fed, ref->fed_sel, sizeof(fed));
        run_selected(es, gpu, fed, false);
        run_selected(et, gpu_dense, fed, false);
        snprintf(what, sizeof(what), "TP %d query-aware selection, budget 128", tp);
        check_selected(what, gpu, gpu_dense, ref);
    }
    pt_engine_free(es);
    pt_engine_free(et);
}

static void check_model(const char *path, int gpus) {
    printf("%s\n", path);
    pt_model_file mf;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, path, &err) != 0) {
        CHECK_MSG(false, "%s", err.msg);
        return;
    }
    V = mf.config.vocab_size;
    pooled = (cmp_stats){0, 0, 1.0, 0.0};
    size_t rows = PROMPT + GEN > PAIR_ROWS ? PROMPT + GEN : PAIR_ROWS;
    float *gpu = malloc(rows * V * sizeof(float)), *gpu2 = malloc(rows * V * sizeof(float));
    float *gpu_dense = malloc((GEN + 1) * (size_t)V * sizeof(float));
    reference ref = {0};
    if (gpu && gpu2 && gpu_dense && reference_run(&mf, &ref)) {
        uint64_t tp1_shard = check_tp1(&mf, &ref, gpu, gpu2, gpu_dense);
        static const int degrees[] = {2, 4};
        for (size_t k = 0; k < sizeof(degrees) / sizeof(degrees[0]); k++) {
            int tp = degrees[k];
            if (tp > gpus)
                printf(" TP %d skipped: %d CUDA device%s\n", tp, gpus, gpus == 1 ? "" : "s");
            else if ((uint32_t)tp > mf.config.n_kv_heads)
                printf(" TP %d skipped: the model has %u KV heads\n", tp, mf.config.n_kv_heads);
            else
                check_tp(&mf, tp, &ref, tp1_shard, gpu, gpu_dense);
        }
    }
    printf("  top-1 agreement over the model's rows: %zu of %zu\n", pooled.top1_same, pooled.rows);
    CHECK_MSG(pooled.top1_same * 10 >= pooled.rows * 9, "top-1 agrees on %zu of %zu rows", pooled.top1_same,
              pooled.rows);
    reference_free(&ref);
    free(gpu_dense);
    free(gpu);
    free(gpu2);
    pt_model_file_close(&mf);
}

/* CUDA devices present, as the engine sees them (0 without CUDA). */
static int count_gpus(void) {
    pt_err err;
    int n = 0;
    while (n < 64 && pt_backend_cuda_probe(0, n + 1, &err) == PT_OK) n++;
    return n;
}

int main(void) {
    /* Without a GPU (or without CUDA in the build) devices: cuda must fail
     * with a message that says so, not crash or fall back silently. */
    pt_model_file mf;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, "synthetic:tiny-llama:bf16", &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int gpus = count_gpus();
    /* TP 2 on CUDA: accepted with two GPUs; without them refused before
     * anything is built, naming the GPU that is missing. */
    pt_engine *e = NULL;
    int rc = pt_engine_create(&e, &mf, &(pt_engine_opts){.device = PT_DEVICE_CUDA, .tp = 2}, &err);
    if (gpus >= 2) {
        CHECK_MSG(rc == 0 && e != NULL && pt_engine_tp(e) == 2, "TP 2 on %d GPUs: %s", gpus, err.msg);
        char name[16] = "";
        if (e) pt_engine_device_name(e, 1, name, sizeof(name));
        CHECK_MSG(strcmp(name, "cuda1") == 0, "rank 1 runs on %s", name);
        pt_engine_free(e);
    } else {
        CHECK(rc != 0 && e == NULL);
        CHECK_MSG(strstr(err.msg, "CUDA") != NULL && strstr(err.msg, "cuda1") != NULL, "%s", err.msg);
    }
    /* TP 2 from device 1 needs cuda1 and cuda2: the message names the first missing one. */
    e = NULL;
    rc = pt_engine_create(&e, &mf, &(pt_engine_opts){.device = PT_DEVICE_CUDA, .device_index = 1, .tp = 2}, &err);
    if (gpus >= 3) {
        CHECK_MSG(rc == 0 && e != NULL, "TP 2 on cuda1..cuda2: %s", err.msg);
        pt_engine_free(e);
    } else {
        char missing[48];
        snprintf(missing, sizeof(missing), "cuda%d does not exist", gpus > 1 ? gpus : 1);
        CHECK(rc != 0 && e == NULL);
        CHECK_MSG(strstr(err.msg, "CUDA") != NULL && (strstr(err.msg, missing) != NULL || gpus == 0), "%s", err.msg);
    }
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.device = PT_DEVICE_CUDA;
    rc = pt_engine_create(&e, &mf, &o, &err);
    pt_model_file_close(&mf);
    if (rc == PT_ERR_UNSUPPORTED) {
        CHECK_MSG(strstr(err.msg, "CUDA") != NULL, "%s", err.msg);
        if (test_failures_) return 1;
        TEST_SKIP("%s", err.msg);
    }
    CHECK_MSG(rc == 0, "%s", err.msg);
    pt_engine_free(e);

    const char *env = getenv("PROTEUS_CUDA_ENGINE_MODELS");
    char *list = strdup(env ? env : "synthetic:smollm2-135m:bf16,synthetic:llama3-8b:bf16");
    for (char *save = NULL, *m = strtok_r(list, ",", &save); m; m = strtok_r(NULL, ",", &save)) check_model(m, gpus);
    free(list);
    printf("%d checks, %d failed\n", test_checks_, test_failures_);
    if (test_failures_) return 1;
    if (gpus < 2) TEST_SKIP("TP 2 on CUDA needs 2 GPUs, %d present (the TP 1 checks above passed)", gpus);
    return 0;
}
