/* OpenAI request bodies -> pt_oai_request, with a 400 naming the field for
 * anything this server cannot honour exactly.
 *
 * Three passes over a body:
 *   1. cJSON parses it. On failure a lexer (below) re-reads the text up to the
 *      failure point to say which field it was in.
 *   2. The lexer reads the whole (now known well-formed) text for what cJSON
 *      lets through: invalid UTF-8, raw control characters, "\u0000" (which
 *      cJSON would silently cut the string at), nesting depth, numbers outside
 *      RFC 8259's grammar. It also keeps the raw text of the top-level "seed",
 *      since a double cannot hold every int64.
 *   3. A walk over the tree rejects duplicate keys, then the fields are read
 *      one by one from a table.
 *
 * Paths in errors: "messages[2].content[0].text"; object keys as written.
 *
 * Threads: everything here is reentrant except one thing in cJSON 1.7: a
 * failed parse also stores its position in a global (cJSON_GetErrorPtr),
 * which two threads parsing bad bodies at once both write. Nothing here
 * reads it (the position comes from return_parse_end), so the race only
 * matters to a thread sanitizer.
 *
 * cJSON says "no" the same way for malformed text and for an allocation
 * that failed, so its allocations go through json_malloc (installed once as
 * cJSON's hooks, process-wide), which notes a failure for the thread: the
 * request then gets the 500 it deserves rather than a 400 for a body that
 * was fine. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/openai_api.h"

#define INVALID_REQUEST "invalid_request_error"
#define PATH_MAX_LEN sizeof(((pt_oai_error *)0)->param)

int pt_oai_error_set(pt_oai_error *e, int status, const char *type, const char *code, const char *param,
                     const char *fmt, ...) {
    if (!e) return PT_ERR_INVALID;
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return PT_ERR_INVALID;
}

#define BAD(e, param, ...) pt_oai_error_set((e), 400, INVALID_REQUEST, NULL, (param), __VA_ARGS__)

/* A field path into out[PATH_MAX_LEN]; a path too long is cut (it only names
 * the field in a message). */
static void pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pathf(char *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, PATH_MAX_LEN, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------
 * Lexer. It assumes nothing about the text (it also reads the prefix of a
 * malformed body) and never reads past `end`. */

typedef struct {
    bool is_obj;
    const char *key; /* object: the current member's key, raw; NULL between members */
    size_t key_len;
    size_t index;    /* array: the current element */
} lex_frame;

typedef struct {
    const char *s;
    size_t end, pos;
    lex_frame stack[PT_OAI_MAX_DEPTH];
    size_t depth;           /* may exceed PT_OAI_MAX_DEPTH; frames beyond are not kept */
    size_t max_depth_seen;
    const char *seed_text;  /* raw number text of the top-level "seed" */
    size_t seed_len;
} lexer;

static void lex_path(const lexer *L, char *out, size_t cap) {
    size_t n = 0, d = L->depth < PT_OAI_MAX_DEPTH ? L->depth : PT_OAI_MAX_DEPTH;
    out[0] = '\0';
    for (size_t i = 0; i < d && n < cap; i++) {
        const lex_frame *f = &L->stack[i];
        int w;
        if (f->is_obj) {
            if (!f->key) break;
            w = snprintf(out + n, cap - n, "%s%.*s", n ? "." : "", (int)f->key_len, f->key);
        } else {
            w = snprintf(out + n, cap - n, "[%zu]", f->index);
        }
        if (w < 0) break;
        n += (size_t)w;
    }
    if (n >= cap) out[cap - 1] = '\0';
}

static bool is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool number_ok(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return false;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    } else {
        return false;
    }
    if (i < n && s[i] == '.') {
        size_t d = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == d) return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == d) return false;
    }
    return i == n;
}

/* Reads s[0, end). strict: report the problems cJSON lets through (the text
 * is known to be well-formed JSON); otherwise only the nesting depth. */
static int lex_run(lexer *L, bool strict, pt_oai_error *e) {
    char path[PATH_MAX_LEN];
    const char *s = L->s;
    while (L->pos < L->end) {
        char c = s[L->pos];
        lex_frame *top = L->depth && L->depth <= PT_OAI_MAX_DEPTH ? &L->stack[L->depth - 1] : NULL;
        if (c == '{' || c == '[') {
            if (L->depth >= PT_OAI_MAX_DEPTH) {
                lex_path(L, path, sizeof(path));
                return BAD(e, path, "JSON nested deeper than %d levels%s%s", PT_OAI_MAX_DEPTH,
                           path[0] ? " in " : "", path);
            }
            lex_frame *f = &L->stack[L->depth++];
            f->is_obj = c == '{';
            f->key = NULL;
            f->key_len = 0;
            f->index = 0;
            L->pos++;
        } else if (c == '}' || c == ']') {
            if (L->depth) L->depth--;
            L->pos++;
        } else if (c == ',') {
            if (top && top->is_obj) top->key = NULL;
            else if (top) top->index++;
            L->pos++;
        } else if (c == '"') {
            size_t start = ++L->pos;
            bool is_key = top && top->is_obj && !top->key;
            /* For a bad key, name the object; for a bad value, the member. */
            while (L->pos < L->end && s[L->pos] != '"') {
                unsigned char b = (unsigned char)s[L->pos];
                if (b == '\\') {
                    if (L->pos + 1 < L->end && s[L->pos + 1] == 'u') {
                        if (L->pos + 5 < L->end && is_hex(s[L->pos + 2]) && is_hex(s[L->pos + 3]) &&
                            is_hex(s[L->pos + 4]) && is_hex(s[L->pos + 5]) &&
                            !strncmp(s + L->pos + 2, "0000", 4) && strict) {
                            lex_path(L, path, sizeof(path));
                            return BAD(e, path, "%s%s contains \\u0000, which is not allowed",
                                       is_key ? "a key in " : "", path[0] ? path : "the body");
                        }
                        L->pos += 2;
                    } else {
                        L->pos += 2;
                    }
                } else if (b < 0x20 && strict) {
                    lex_path(L, path, sizeof(path));
                    return BAD(e, path, "%s%s contains a raw control character (0x%02x); escape it",
                               is_key ? "a key in " : "", path[0] ? path : "the body", b);
                } else if (b >= 0x80) {
                    size_t need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
                    size_t have = L->end - L->pos < need ? L->end - L->pos : need;
                    if (pt_oai_utf8_valid_prefix(s + L->pos, have) != need) {
                        if (strict) {
                            lex_path(L, path, sizeof(path));
                            return BAD(e, path, "%s%s is not valid UTF-8 (byte %zu)", is_key ? "a key in " : "",
                                       path[0] ? path : "the body", L->pos);
                        }
                        need = 1;
                    }
                    L->pos += need;
                } else {
                    L->pos++;
                }
            }
            if (is_key) {
                top->key = s + start;
                top->key_len = (L->pos < L->end ? L->pos : L->end) - start;
            }
            L->pos++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t start = L->pos;
            while (L->pos < L->end && strchr("0123456789+-.eE", s[L->pos]) && s[L->pos]) L->pos++;
            if (strict && !number_ok(s + start, L->pos - start)) {
                lex_path(L, path, sizeof(path));
                return BAD(e, path, "%s: '%.*s' is not a valid JSON number", path[0] ? path : "body",
                           (int)(L->pos - start > 40 ? 40 : L->pos - start), s + start);
            }
            if (L->depth == 1 && top && top->key && top->key_len == 4 && !memcmp(top->key, "seed", 4)) {
                L->seed_text = s + start;
                L->seed_len = L->pos - start;
            }
        } else {
            L->pos++; /* whitespace, ':', the letters of true/false/null, a byte-order mark */
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Body -> tree. */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rejects a key that occurs twice in one object, at any depth. */
static int check_duplicates(const cJSON *v, char *path, size_t path_len, pt_oai_error *e) {
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return 0;
    size_t n = 0, i = 0;
    for (const cJSON *c = v->child; c; c = c->next) n++;
    if (cJSON_IsObject(v) && n > 1) {
        const char **keys = malloc(n * sizeof(*keys));
        if (!keys) return pt_oai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        for (const cJSON *c = v->child; c; c = c->next) keys[i++] = c->string;
        qsort(keys, n, sizeof(*keys), cmp_str);
        for (i = 1; i < n; i++) {
            if (!strcmp(keys[i - 1], keys[i])) {
                char p[PATH_MAX_LEN];
                pathf(p, "%s%s%s", path, path_len ? "." : "", keys[i]);
                int rc = BAD(e, p, "duplicate key '%s'", p);
                free(keys);
                return rc;
            }
        }
        free(keys);
    }
    i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        int w = cJSON_IsObject(v) ? snprintf(path + path_len, PATH_MAX_LEN - path_len, "%s%s",
                                             path_len ? "." : "", c->string)
                                  : snprintf(path + path_len, PATH_MAX_LEN - path_len, "[%zu]", i);
        size_t nl = w < 0 ? path_len : path_len + (size_t)w;
        if (nl >= PATH_MAX_LEN) nl = PATH_MAX_LEN - 1;
        int rc = check_duplicates(c, path, nl, e);
        path[path_len] = '\0';
        if (rc) return rc;
    }
    return 0;
}

static const char *type_name(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* Set by json_malloc when an allocation of cJSON's fails on this thread. */
static _Thread_local bool json_nomem;

static void *json_malloc(size_t n) {
    void *p = malloc(n);
    if (!p) json_nomem = true;
    return p;
}

static void json_hooks_install(void) {
    cJSON_Hooks h = {.malloc_fn = json_malloc, .free_fn = free};
    cJSON_InitHooks(&h);
}

void pt_json_nomem_begin(void) {
    static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
    pthread_once(&hooks_once, json_hooks_install);
    json_nomem = false;
}

bool pt_json_nomem(void) { return json_nomem; }

/* Parses body into *root, an object. *seed (may be NULL) gets the raw text of
 * the top-level "seed" number. */
static int parse_body(const char *body, size_t len, cJSON **root, const char **seed, size_t *seed_len,
                      pt_oai_error *e) {
    pt_json_nomem_begin();
    *root = NULL;
    if (!body || len == 0) return BAD(e, NULL, "request body is empty; expected a JSON object");
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!v && json_nomem) return pt_oai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
    if (v) {
        while (at < len && strchr(" \t\r\n", body[at])) at++;
        if (at < len) {
            cJSON_Delete(v);
            return BAD(e, NULL, "malformed JSON: unexpected text after the value at byte %zu", at);
        }
    } else {
        lexer L = {.s = body, .end = at};
        char path[PATH_MAX_LEN];
        if (lex_run(&L, false, e)) return PT_ERR_INVALID; /* too deep: the real reason */
        lex_path(&L, path, sizeof(path));
        return BAD(e, path, "malformed JSON at byte %zu%s%s", at, path[0] ? " in " : "", path);
    }
    if (!cJSON_IsObject(v)) {
        int rc = BAD(e, NULL, "request body must be a JSON object; got %s", type_name(v));
        cJSON_Delete(v);
        return rc;
    }
    lexer L = {.s = body, .end = len};
    if (lex_run(&L, true, e)) {
        cJSON_Delete(v);
        return PT_ERR_INVALID;
    }
    char path[PATH_MAX_LEN] = "";
    if (check_duplicates(v, path, 0, e)) {
        cJSON_Delete(v);
        return PT_ERR_INVALID;
    }
    if (seed) {
        *seed = L.seed_text;
        *seed_len = L.seed_len;
    }
    *root = v;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Typed field readers. Each names the field and says what it expected. */

static int get_number(const cJSON *v, const char *param, double lo, bool lo_open, double hi, bool hi_open,
                      double *out, pt_oai_error *e) {
    char range[64];
    snprintf(range, sizeof(range), "%c%g, %g%c", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
    if (!cJSON_IsNumber(v)) return BAD(e, param, "'%s' must be a number in %s; got %s", param, range, type_name(v));
    double x = v->valuedouble;
    if (!isfinite(x)) return BAD(e, param, "'%s' must be a finite number in %s", param, range);
    if (x < lo || (lo_open && x == lo) || x > hi || (hi_open && x == hi))
        return BAD(e, param, "'%s' must be in %s; got %g", param, range, x);
    *out = x;
    return 0;
}

static int get_int(const cJSON *v, const char *param, int64_t lo, int64_t hi, int64_t *out, pt_oai_error *e) {
    if (!cJSON_IsNumber(v))
        return BAD(e, param, "'%s' must be an integer in [%" PRId64 ", %" PRId64 "]; got %s", param, lo, hi,
                   type_name(v));
    double x = v->valuedouble;
    if (!isfinite(x) || x != floor(x))
        return BAD(e, param, "'%s' must be an integer in [%" PRId64 ", %" PRId64 "]; got %g", param, lo, hi, x);
    if (x < (double)lo || x > (double)hi)
        return BAD(e, param, "'%s' must be in [%" PRId64 ", %" PRId64 "]; got %.17g", param, lo, hi, x);
    *out = (int64_t)x;
    return 0;
}

static int get_bool(const cJSON *v, const char *param, bool *out, pt_oai_error *e) {
    if (!cJSON_IsBool(v)) return BAD(e, param, "'%s' must be a boolean; got %s", param, type_name(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A copy of a string value (the lexer has made sure it is UTF-8 without NUL). */
static int get_string(const cJSON *v, const char *param, char **out, pt_oai_error *e) {
    if (!cJSON_IsString(v)) return BAD(e, param, "'%s' must be a string; got %s", param, type_name(v));
    *out = strdup(v->valuestring);
    if (!*out) return pt_oai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    return 0;
}

static int oom(pt_oai_error *e) {
    return pt_oai_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
}

static int unsupported(pt_oai_error *e, const char *param) {
    return BAD(e, param, "unsupported field '%s': this server does not implement it", param);
}

static int check_model(const char *name, const pt_oai_limits *lim, pt_oai_error *e) {
    if (!lim || lim->n_served_models == 0) return 0;
    for (size_t i = 0; i < lim->n_served_models; i++)
        if (!strcmp(name, lim->served_models[i])) return 0;
    return pt_oai_error_set(e, 404, "not_found_error", "model_not_found", "model",
                            "The model '%.200s' does not exist; this server serves '%.200s'", name,
                            lim->served_models[0]);
}

static int parse_model(const cJSON *v, const pt_oai_limits *lim, char **out, pt_oai_error *e) {
    if (get_string(v, "model", out, e)) return PT_ERR_INVALID;
    return check_model(*out, lim, e);
}

static int default_model(char **model, const pt_oai_limits *lim, pt_oai_error *e) {
    if (*model || !lim || lim->n_served_models == 0) return 0;
    *model = strdup(lim->served_models[0]);
    return *model ? 0 : oom(e);
}

static int parse_token_id(const cJSON *v, const char *param, const pt_oai_limits *lim, int32_t *out,
                          pt_oai_error *e) {
    int64_t hi = lim && lim->vocab_size ? (int64_t)lim->vocab_size - 1 : INT32_MAX;
    if (hi > INT32_MAX) hi = INT32_MAX;
    int64_t x = 0;
    if (get_int(v, param, 0, hi, &x, e)) {
        if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble))
            BAD(e, param, "'%s' is not a token id: %.17g is outside [0, %" PRId64 "]%s", param, v->valuedouble,
                hi, lim && lim->vocab_size ? " (the vocabulary)" : "");
        return PT_ERR_INVALID;
    }
    *out = (int32_t)x;
    return 0;
}

/* An array of token ids; allow_empty for /detokenize. */
static int parse_token_array(const cJSON *v, const char *param, bool allow_empty, const pt_oai_limits *lim,
                             int32_t **out, size_t *n, pt_oai_error *e) {
    if (!cJSON_IsArray(v)) return BAD(e, param, "'%s' must be an array of token ids; got %s", param, type_name(v));
    size_t count = (size_t)cJSON_GetArraySize(v);
    if (count == 0 && !allow_empty) return BAD(e, param, "'%s' must not be empty", param);
    int32_t *ids = malloc((count ? count : 1) * sizeof(*ids));
    if (!ids) return oom(e);
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        char p[PATH_MAX_LEN];
        pathf(p, "%s[%zu]", param, i);
        if (parse_token_id(c, p, lim, &ids[i], e)) {
            free(ids);
            return PT_ERR_INVALID;
        }
    }
    *out = ids;
    *n = count;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Messages. */

static void messages_free(pt_oai_message *m, size_t n) {
    for (size_t i = 0; m && i < n; i++) {
        free(m[i].role);
        free(m[i].content);
        free(m[i].name);
    }
    free(m);
}

/* Message keys a client may send back as null after receiving them. */
static bool null_ok_message_key(const char *k) {
    static const char *const keys[] = {"tool_calls", "tool_call_id", "function_call", "refusal", "audio"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!strcmp(k, keys[i])) return true;
    return false;
}

/* content: a string, or an array of text parts joined by "\n". */
static int parse_content(const cJSON *v, const char *param, bool null_ok, char **out, pt_oai_error *e) {
    if (cJSON_IsString(v)) return get_string(v, param, out, e);
    if (cJSON_IsNull(v) && null_ok) {
        *out = strdup("");
        return *out ? 0 : oom(e);
    }
    if (!cJSON_IsArray(v))
        return BAD(e, param, "'%s' must be a string or an array of text parts; got %s", param, type_name(v));
    size_t total = 1, i = 0;
    for (const cJSON *part = v->child; part; part = part->next, i++) {
        char p[PATH_MAX_LEN], q[PATH_MAX_LEN];
        pathf(p, "%s[%zu]", param, i);
        if (!cJSON_IsObject(part)) return BAD(e, p, "'%s' must be an object; got %s", p, type_name(part));
        /* The type first: for {"type":"image_url","image_url":...} that is the real news. */
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        pathf(q, "%s.type", p);
        if (!type) return BAD(e, q, "'%s' is required", q);
        if (!cJSON_IsString(type)) return BAD(e, q, "'%s' must be a string; got %s", q, type_name(type));
        if (strcmp(type->valuestring, "text"))
            return BAD(e, q, "'%s': unsupported content part type '%.64s' (only 'text')", q, type->valuestring);
        for (const cJSON *f = part->child; f; f = f->next) {
            pathf(q, "%s.%s", p, f->string);
            if (f != type && f != text) return BAD(e, q, "unsupported field '%s' in a content part", q);
        }
        pathf(q, "%s.text", p);
        if (!text) return BAD(e, q, "'%s' is required", q);
        if (!cJSON_IsString(text)) return BAD(e, q, "'%s' must be a string; got %s", q, type_name(text));
        total += strlen(text->valuestring) + 1;
    }
    char *s = malloc(total), *w = s;
    if (!s) return oom(e);
    for (const cJSON *part = v->child; part; part = part->next) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t l = strlen(t);
        if (w != s) *w++ = '\n';
        memcpy(w, t, l);
        w += l;
    }
    *w = '\0';
    *out = s;
    return 0;
}

static int parse_message(const cJSON *v, size_t idx, pt_oai_message *m, pt_oai_error *e) {
    char p[PATH_MAX_LEN], q[PATH_MAX_LEN];
    pathf(p, "messages[%zu]", idx);
    if (!cJSON_IsObject(v)) return BAD(e, p, "'%s' must be an object; got %s", p, type_name(v));
    const cJSON *role = NULL, *content = NULL, *name = NULL;
    for (const cJSON *f = v->child; f; f = f->next) {
        pathf(q, "%s.%s", p, f->string);
        if (!strcmp(f->string, "role")) role = f;
        else if (!strcmp(f->string, "content")) content = f;
        else if (!strcmp(f->string, "name")) name = f;
        else if (!(cJSON_IsNull(f) && null_ok_message_key(f->string))) return unsupported(e, q);
    }
    pathf(q, "%s.role", p);
    if (!role) return BAD(e, q, "'%s' is required", q);
    if (!cJSON_IsString(role)) return BAD(e, q, "'%s' must be a string; got %s", q, type_name(role));
    const char *r = role->valuestring;
    if (!strcmp(r, "developer")) r = "system";
    if (!strcmp(r, "tool") || !strcmp(r, "function"))
        return BAD(e, q, "'%s': role '%s' is not supported (this server has no tool calling)", q, r);
    if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
        return BAD(e, q, "'%s' must be one of system, user, assistant, developer; got '%.64s'", q, r);
    if (!(m->role = strdup(r))) return oom(e);
    pathf(q, "%s.content", p);
    if (!content) return BAD(e, q, "'%s' is required", q);
    if (parse_content(content, q, !strcmp(r, "assistant"), &m->content, e)) return PT_ERR_INVALID;
    pathf(q, "%s.name", p);
    if (name && !cJSON_IsNull(name) && get_string(name, q, &m->name, e)) return PT_ERR_INVALID;
    return 0;
}

static int parse_messages(const cJSON *v, pt_oai_message **out, size_t *n, pt_oai_error *e) {
    if (!cJSON_IsArray(v)) return BAD(e, "messages", "'messages' must be an array; got %s", type_name(v));
    size_t count = (size_t)cJSON_GetArraySize(v);
    if (count == 0) return BAD(e, "messages", "'messages' must not be empty");
    if (count > PT_OAI_MAX_MESSAGES)
        return BAD(e, "messages", "'messages' has %zu messages; at most %d", count, PT_OAI_MAX_MESSAGES);
    pt_oai_message *m = calloc(count, sizeof(*m));
    if (!m) return oom(e);
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        if (parse_message(c, i, &m[i], e)) {
            messages_free(m, count);
            return PT_ERR_INVALID;
        }
    }
    *out = m;
    *n = count;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Completions prompt: string | [string] | [int] | [[int]]. */

static void prompts_free(pt_oai_prompt *p, size_t n) {
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].text);
        free(p[i].tokens);
    }
    free(p);
}

static int parse_prompt_text(const cJSON *v, const char *param, pt_oai_prompt *p, pt_oai_error *e) {
    if (!cJSON_IsString(v)) return BAD(e, param, "'%s' must be a string; got %s", param, type_name(v));
    if (!v->valuestring[0]) return BAD(e, param, "'%s' must not be empty", param);
    return get_string(v, param, &p->text, e);
}

static int parse_prompt(const cJSON *v, const pt_oai_limits *lim, pt_oai_prompt **out, size_t *n,
                        pt_oai_error *e) {
    if (cJSON_IsString(v)) {
        pt_oai_prompt *p = calloc(1, sizeof(*p));
        if (!p) return oom(e);
        if (parse_prompt_text(v, "prompt", p, e)) {
            prompts_free(p, 1);
            return PT_ERR_INVALID;
        }
        *out = p;
        *n = 1;
        return 0;
    }
    if (!cJSON_IsArray(v))
        return BAD(e, "prompt", "'prompt' must be a string, an array of strings, an array of token ids or an "
                   "array of token-id arrays; got %s", type_name(v));
    size_t count = (size_t)cJSON_GetArraySize(v);
    if (count == 0) return BAD(e, "prompt", "'prompt' must not be empty");
    const cJSON *first = v->child;
    if (cJSON_IsNumber(first)) { /* one prompt of token ids */
        pt_oai_prompt *p = calloc(1, sizeof(*p));
        if (!p) return oom(e);
        if (parse_token_array(v, "prompt", false, lim, &p->tokens, &p->n_tokens, e)) {
            prompts_free(p, 1);
            return PT_ERR_INVALID;
        }
        *out = p;
        *n = 1;
        return 0;
    }
    if (!cJSON_IsString(first) && !cJSON_IsArray(first))
        return BAD(e, "prompt[0]", "'prompt[0]' must be a string, a token id or an array of token ids; got %s",
                   type_name(first));
    if (count > PT_OAI_MAX_PROMPTS)
        return BAD(e, "prompt", "'prompt' has %zu prompts; at most %d", count, PT_OAI_MAX_PROMPTS);
    pt_oai_prompt *p = calloc(count, sizeof(*p));
    if (!p) return oom(e);
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        char q[PATH_MAX_LEN];
        pathf(q, "prompt[%zu]", i);
        int rc;
        if (cJSON_IsString(first)) rc = parse_prompt_text(c, q, &p[i], e);
        else if (!cJSON_IsArray(c)) rc = BAD(e, q, "'%s' must be an array of token ids, like prompt[0]; got %s", q,
                                             type_name(c));
        else rc = parse_token_array(c, q, false, lim, &p[i].tokens, &p[i].n_tokens, e);
        if (rc) {
            prompts_free(p, count);
            return PT_ERR_INVALID;
        }
    }
    *out = p;
    *n = count;
    return 0;
}

/* ---------------------------------------------------------------------------
 * The request's fields. */

typedef struct {
    pt_oai_request *r;
    const pt_oai_limits *lim;
    pt_oai_error *e;
    const char *seed_text; /* raw text of "seed" */
    size_t seed_len;
    int64_t max_tokens, max_completion_tokens; /* -1 = not given */
    int64_t best_of;                           /* 0 = not given */
    bool stream_options_given, top_logprobs_given;
} parse_ctx;

typedef int (*field_fn)(parse_ctx *c, const cJSON *v);

static int f_model(parse_ctx *c, const cJSON *v) {
    return parse_model(v, c->lim, &c->r->model, c->e);
}

static int f_messages(parse_ctx *c, const cJSON *v) {
    return parse_messages(v, &c->r->messages, &c->r->n_messages, c->e);
}

static int f_prompt(parse_ctx *c, const cJSON *v) {
    return parse_prompt(v, c->lim, &c->r->prompts, &c->r->n_prompts, c->e);
}

static int max_tokens_common(parse_ctx *c, const cJSON *v, const char *name, int64_t *out) {
    int64_t hi = c->lim && c->lim->max_model_len ? (int64_t)c->lim->max_model_len : INT32_MAX;
    if (get_int(v, name, 1, hi, out, c->e)) {
        if (cJSON_IsNumber(v) && v->valuedouble > (double)hi && c->lim && c->lim->max_model_len)
            BAD(c->e, name, "'%s' is %.17g; the model's context is %zu tokens", name, v->valuedouble,
                c->lim->max_model_len);
        return PT_ERR_INVALID;
    }
    return 0;
}

static int f_max_tokens(parse_ctx *c, const cJSON *v) {
    return max_tokens_common(c, v, "max_tokens", &c->max_tokens);
}

static int f_max_completion_tokens(parse_ctx *c, const cJSON *v) {
    return max_tokens_common(c, v, "max_completion_tokens", &c->max_completion_tokens);
}

#define FLOAT_FIELD(fn, name, lo, lo_open, hi, hi_open, dst)                   \
    static int fn(parse_ctx *c, const cJSON *v) {                              \
        double x = 0;                                                            \
        if (get_number(v, name, lo, lo_open, hi, hi_open, &x, c->e)) return PT_ERR_INVALID; \
        float f = (float)x; /* 1e-50 passes (0, 1] as a double but is 0 as a float */ \
        if (lo_open && f <= (float)(lo))                                       \
            return BAD(c->e, name, "'%s' must be in (%g, %g]; got %g, too close to %g", name, \
                       (double)(lo), (double)(hi), x, (double)(lo));           \
        c->r->sampling.dst = f;                                                \
        return 0;                                                              \
    }
FLOAT_FIELD(f_temperature, "temperature", 0, false, 2, false, temperature)
FLOAT_FIELD(f_top_p, "top_p", 0, true, 1, false, top_p)
FLOAT_FIELD(f_min_p, "min_p", 0, false, 1, false, min_p)
FLOAT_FIELD(f_presence_penalty, "presence_penalty", -2, false, 2, false, presence_penalty)
FLOAT_FIELD(f_frequency_penalty, "frequency_penalty", -2, false, 2, false, frequency_penalty)
FLOAT_FIELD(f_repetition_penalty, "repetition_penalty", 0, true, 2, false, repetition_penalty)

static int f_top_k(parse_ctx *c, const cJSON *v) {
    int64_t k = 0;
    if (get_int(v, "top_k", -1, INT32_MAX, &k, c->e)) return PT_ERR_INVALID;
    c->r->sampling.top_k = k < 0 ? 0 : (int32_t)k;
    return 0;
}

/* Any int64, exactly: from the raw text when it is a plain integer (a double
 * would round seeds above 2^53), else from the double. */
static int f_seed(parse_ctx *c, const cJSON *v) {
    const char *msg = "'seed' must be an integer in [-9223372036854775808, 9223372036854775807]";
    if (!cJSON_IsNumber(v)) return BAD(c->e, "seed", "%s; got %s", msg, type_name(v));
    int64_t s;
    if (c->seed_text && c->seed_len < 32 && !memchr(c->seed_text, '.', c->seed_len) &&
        !memchr(c->seed_text, 'e', c->seed_len) && !memchr(c->seed_text, 'E', c->seed_len)) {
        char buf[32];
        memcpy(buf, c->seed_text, c->seed_len);
        buf[c->seed_len] = '\0';
        errno = 0;
        char *end;
        long long x = strtoll(buf, &end, 10);
        if (errno == ERANGE || *end) return BAD(c->e, "seed", "%s; got %s", msg, buf);
        s = x;
    } else {
        double x = v->valuedouble;
        if (!isfinite(x) || x != floor(x) || x < -9223372036854775808.0 || x >= 9223372036854775808.0)
            return BAD(c->e, "seed", "%s; got %g", msg, x);
        s = (int64_t)x;
    }
    c->r->sampling.seed = (uint64_t)s;
    c->r->has_seed = true;
    return 0;
}

static int f_stop(parse_ctx *c, const cJSON *v) {
    pt_oai_request *r = c->r;
    const cJSON *one = cJSON_IsString(v) ? v : NULL;
    if (!one && !cJSON_IsArray(v))
        return BAD(c->e, "stop", "'stop' must be a string or an array of strings; got %s", type_name(v));
    size_t count = one ? 1 : (size_t)cJSON_GetArraySize(v);
    if (count > PT_STOP_MAX_STRINGS)
        return BAD(c->e, "stop", "'stop' has %zu strings; at most %d", count, PT_STOP_MAX_STRINGS);
    size_t i = 0;
    for (const cJSON *s = one ? one : v->child; s && i < count; s = s->next, i++) {
        char q[PATH_MAX_LEN];
        pathf(q, one ? "stop" : "stop[%zu]", i);
        if (!cJSON_IsString(s)) return BAD(c->e, q, "'%s' must be a string; got %s", q, type_name(s));
        size_t l = strlen(s->valuestring);
        if (l == 0) return BAD(c->e, q, "'%s' must not be empty", q);
        if (l > PT_STOP_MAX_BYTES)
            return BAD(c->e, q, "'%s' is %zu bytes long; at most %d", q, l, PT_STOP_MAX_BYTES);
        if (get_string(s, q, &r->stop[i], c->e)) return PT_ERR_INVALID;
        r->n_stop = i + 1;
    }
    return 0;
}

static int f_n(parse_ctx *c, const cJSON *v) {
    int64_t n = 0;
    if (get_int(v, "n", 1, PT_OAI_MAX_N, &n, c->e)) return PT_ERR_INVALID;
    c->r->n = (int32_t)n;
    return 0;
}

static int f_stream(parse_ctx *c, const cJSON *v) {
    return get_bool(v, "stream", &c->r->stream, c->e);
}

static int f_stream_options(parse_ctx *c, const cJSON *v) {
    if (!cJSON_IsObject(v))
        return BAD(c->e, "stream_options", "'stream_options' must be an object; got %s", type_name(v));
    c->stream_options_given = true;
    for (const cJSON *f = v->child; f; f = f->next) {
        char q[PATH_MAX_LEN];
        pathf(q, "stream_options.%s", f->string);
        if (!strcmp(f->string, "include_usage")) {
            if (!cJSON_IsNull(f) && get_bool(f, q, &c->r->include_usage, c->e)) return PT_ERR_INVALID;
        } else {
            return unsupported(c->e, q);
        }
    }
    return 0;
}

static int f_logprobs(parse_ctx *c, const cJSON *v) {
    if (c->r->kind == PT_OAI_CHAT) return get_bool(v, "logprobs", &c->r->logprobs, c->e);
    int64_t k = 0;
    if (get_int(v, "logprobs", 0, PT_OAI_MAX_LOGPROBS, &k, c->e)) return PT_ERR_INVALID;
    c->r->logprobs = true;
    c->r->top_logprobs = (int32_t)k;
    return 0;
}

static int f_top_logprobs(parse_ctx *c, const cJSON *v) {
    int64_t k = 0;
    if (get_int(v, "top_logprobs", 0, PT_OAI_MAX_LOGPROBS, &k, c->e)) return PT_ERR_INVALID;
    c->r->top_logprobs = (int32_t)k;
    c->top_logprobs_given = true;
    return 0;
}

static int f_logit_bias(parse_ctx *c, const cJSON *v) {
    pt_oai_request *r = c->r;
    if (!cJSON_IsObject(v))
        return BAD(c->e, "logit_bias", "'logit_bias' must be an object of token id -> bias; got %s", type_name(v));
    size_t count = (size_t)cJSON_GetArraySize(v);
    if (count > PT_OAI_MAX_LOGIT_BIAS)
        return BAD(c->e, "logit_bias", "'logit_bias' has %zu entries; at most %d", count, PT_OAI_MAX_LOGIT_BIAS);
    if (count == 0) return 0;
    r->logit_bias = calloc(count, sizeof(*r->logit_bias));
    if (!r->logit_bias) return oom(c->e);
    int64_t hi = c->lim && c->lim->vocab_size ? (int64_t)c->lim->vocab_size - 1 : INT32_MAX;
    if (hi > INT32_MAX) hi = INT32_MAX;
    for (const cJSON *f = v->child; f; f = f->next) {
        char q[PATH_MAX_LEN];
        pathf(q, "logit_bias.%s", f->string);
        const char *k = f->string;
        size_t kl = strlen(k);
        bool digits = kl > 0 && kl <= 10;
        for (size_t i = 0; digits && i < kl; i++) digits = k[i] >= '0' && k[i] <= '9';
        long long id = digits ? strtoll(k, NULL, 10) : -1;
        if (!digits || id > hi)
            return BAD(c->e, q, "'%s': the key is not a token id in [0, %" PRId64 "]", q, hi);
        double b = 0;
        if (get_number(f, q, -100, false, 100, false, &b, c->e)) return PT_ERR_INVALID;
        r->logit_bias[r->n_logit_bias].token = (int32_t)id;
        r->logit_bias[r->n_logit_bias].bias = (float)b;
        r->n_logit_bias++;
    }
    r->sampling.logit_bias = r->logit_bias;
    r->sampling.n_logit_bias = r->n_logit_bias;
    return 0;
}

static int f_ignore_eos(parse_ctx *c, const cJSON *v) {
    return get_bool(v, "ignore_eos", &c->r->ignore_eos, c->e);
}

static int f_include_stop(parse_ctx *c, const cJSON *v) {
    return get_bool(v, "include_stop_str_in_output", &c->r->include_stop, c->e);
}

static int f_cache_prompt(parse_ctx *c, const cJSON *v) {
    bool on = true;
    if (get_bool(v, "cache_prompt", &on, c->e)) return PT_ERR_INVALID;
    c->r->no_cache_prompt = !on;
    return 0;
}

static int f_cache_salt(parse_ctx *c, const cJSON *v) {
    if (get_string(v, "cache_salt", &c->r->cache_salt, c->e)) return PT_ERR_INVALID;
    size_t n = strlen(c->r->cache_salt);
    if (n == 0 || n > 256) return BAD(c->e, "cache_salt", "'cache_salt' must be 1 to 256 bytes long; got %zu", n);
    return 0;
}

static int f_user(parse_ctx *c, const cJSON *v) {
    if (!cJSON_IsString(v)) return BAD(c->e, "user", "'user' must be a string; got %s", type_name(v));
    return 0;
}

static int f_echo(parse_ctx *c, const cJSON *v) {
    bool echo = false;
    if (get_bool(v, "echo", &echo, c->e)) return PT_ERR_INVALID;
    if (echo) return BAD(c->e, "echo", "'echo': true is not supported by this server");
    return 0;
}

static int f_suffix(parse_ctx *c, const cJSON *v) {
    if (!cJSON_IsString(v)) return BAD(c->e, "suffix", "'suffix' must be a string; got %s", type_name(v));
    if (v->valuestring[0]) return BAD(c->e, "suffix", "'suffix' is not supported by this server (only \"\")");
    return 0;
}

static int f_best_of(parse_ctx *c, const cJSON *v) {
    return get_int(v, "best_of", 1, PT_OAI_MAX_N, &c->best_of, c->e);
}

enum { K_CHAT = 1, K_COMP = 2, K_BOTH = 3 };

static const struct {
    const char *name;
    unsigned kinds;
    field_fn fn; /* NULL: a known OpenAI field this server does not implement (only null accepted) */
} FIELDS[] = {
    {"model", K_BOTH, f_model},
    {"messages", K_CHAT, f_messages},
    {"prompt", K_COMP, f_prompt},
    {"max_tokens", K_BOTH, f_max_tokens},
    {"max_completion_tokens", K_CHAT, f_max_completion_tokens},
    {"temperature", K_BOTH, f_temperature},
    {"top_p", K_BOTH, f_top_p},
    {"top_k", K_BOTH, f_top_k},
    {"min_p", K_BOTH, f_min_p},
    {"presence_penalty", K_BOTH, f_presence_penalty},
    {"frequency_penalty", K_BOTH, f_frequency_penalty},
    {"repetition_penalty", K_BOTH, f_repetition_penalty},
    {"seed", K_BOTH, f_seed},
    {"stop", K_BOTH, f_stop},
    {"n", K_BOTH, f_n},
    {"stream", K_BOTH, f_stream},
    {"stream_options", K_BOTH, f_stream_options},
    {"logprobs", K_BOTH, f_logprobs},
    {"top_logprobs", K_CHAT, f_top_logprobs},
    {"logit_bias", K_BOTH, f_logit_bias},
    {"ignore_eos", K_BOTH, f_ignore_eos},
    {"include_stop_str_in_output", K_BOTH, f_include_stop},
    {"cache_prompt", K_BOTH, f_cache_prompt},
    {"cache_salt", K_BOTH, f_cache_salt},
    {"user", K_BOTH, f_user},
    {"echo", K_COMP, f_echo},
    {"suffix", K_COMP, f_suffix},
    {"best_of", K_COMP, f_best_of},
    {"tools", K_BOTH, NULL},
    {"tool_choice", K_BOTH, NULL},
    {"parallel_tool_calls", K_BOTH, NULL},
    {"functions", K_BOTH, NULL},
    {"function_call", K_BOTH, NULL},
    {"response_format", K_BOTH, NULL},
    {"audio", K_BOTH, NULL},
    {"modalities", K_BOTH, NULL},
    {"prediction", K_BOTH, NULL},
    {"store", K_BOTH, NULL},
    {"metadata", K_BOTH, NULL},
    {"service_tier", K_BOTH, NULL},
    {"reasoning_effort", K_BOTH, NULL},
    {"web_search_options", K_BOTH, NULL},
};

void pt_oai_request_free(pt_oai_request *r) {
    if (!r) return;
    free(r->model);
    messages_free(r->messages, r->n_messages);
    prompts_free(r->prompts, r->n_prompts);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->logit_bias);
    free(r->cache_salt);
    memset(r, 0, sizeof(*r));
}

static int parse_fields(parse_ctx *c, const cJSON *root) {
    pt_oai_request *r = c->r;
    unsigned kind_bit = r->kind == PT_OAI_CHAT ? K_CHAT : K_COMP;
    for (const cJSON *f = root->child; f; f = f->next) {
        size_t i = 0, nf = sizeof(FIELDS) / sizeof(FIELDS[0]);
        while (i < nf && !(strcmp(FIELDS[i].name, f->string) == 0 && (FIELDS[i].kinds & kind_bit))) i++;
        if (i == nf) return BAD(c->e, f->string, "unsupported field '%.64s'", f->string);
        if (cJSON_IsNull(f)) continue;
        if (!FIELDS[i].fn) return unsupported(c->e, f->string);
        if (FIELDS[i].fn(c, f)) return PT_ERR_INVALID;
    }

    if (r->kind == PT_OAI_CHAT && !r->messages) return BAD(c->e, "messages", "'messages' is required");
    if (r->kind == PT_OAI_COMPLETION && !r->prompts) return BAD(c->e, "prompt", "'prompt' is required");
    if (default_model(&r->model, c->lim, c->e)) return PT_ERR_INVALID;
    /* vLLM: max_completion_tokens, the newer name, wins. */
    r->max_tokens = c->max_completion_tokens > 0 ? c->max_completion_tokens : c->max_tokens;
    if (c->stream_options_given && !r->stream)
        return BAD(c->e, "stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (c->top_logprobs_given && !r->logprobs)
        return BAD(c->e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (c->best_of && c->best_of != r->n)
        return BAD(c->e, "best_of", "'best_of' other than 'n' is not supported by this server");
    return 0;
}

int pt_oai_parse(pt_oai_request *r, pt_oai_kind kind, const char *body, size_t len, const pt_oai_limits *lim,
                 pt_oai_error *e) {
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->max_tokens = -1;
    r->n = 1;
    pt_sampler_params_default(&r->sampling);
    r->sampling.temperature = 1.0f; /* OpenAI's default; the sampler's own default is greedy */

    parse_ctx c = {.r = r, .lim = lim, .e = e, .max_tokens = -1, .max_completion_tokens = -1};
    cJSON *root;
    if (parse_body(body, len, &root, &c.seed_text, &c.seed_len, e)) return PT_ERR_INVALID;
    int rc = parse_fields(&c, root);
    cJSON_Delete(root);
    if (rc) {
        pt_oai_request_free(r);
        return PT_ERR_INVALID;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Rendering. */

int pt_oai_render_messages(const pt_oai_message *msgs, size_t n, bool add_generation_prompt,
                           const pt_chat_template *ct, char **out, pt_oai_error *e) {
    *out = NULL;
    pt_chat_msg *cm = malloc((n ? n : 1) * sizeof(*cm));
    if (!cm) return oom(e);
    for (size_t i = 0; i < n; i++) {
        cm[i].role = msgs[i].role;
        cm[i].content = msgs[i].content;
    }
    pt_err err = {{0}};
    int rc = pt_chat_render(ct, cm, n, add_generation_prompt, out, &err);
    free(cm);
    if (rc == PT_ERR_NOMEM) return oom(e);
    if (rc) return BAD(e, "messages", "'messages' cannot be rendered with this model's chat template: %s", err.msg);
    return 0;
}

int pt_oai_render_chat(const pt_oai_request *r, const pt_chat_template *ct, char **out, pt_oai_error *e) {
    if (r->kind != PT_OAI_CHAT) {
        *out = NULL;
        return BAD(e, "messages", "not a chat request");
    }
    return pt_oai_render_messages(r->messages, r->n_messages, true, ct, out, e);
}

/* ---------------------------------------------------------------------------
 * /tokenize and /detokenize. */

void pt_oai_tokenize_request_free(pt_oai_tokenize_request *r) {
    if (!r) return;
    free(r->model);
    free(r->prompt);
    messages_free(r->messages, r->n_messages);
    memset(r, 0, sizeof(*r));
}

static int parse_tokenize_fields(pt_oai_tokenize_request *r, const cJSON *root, const pt_oai_limits *lim,
                                 pt_oai_error *e) {
    const cJSON *special = NULL;
    for (const cJSON *f = root->child; f; f = f->next) {
        const char *k = f->string;
        bool known = !strcmp(k, "model") || !strcmp(k, "prompt") || !strcmp(k, "messages") ||
                     !strcmp(k, "add_special_tokens") || !strcmp(k, "add_generation_prompt");
        if (!known) return BAD(e, k, "unsupported field '%.64s'", k);
        if (cJSON_IsNull(f)) continue;
        int rc = 0;
        if (!strcmp(k, "model")) rc = parse_model(f, lim, &r->model, e);
        else if (!strcmp(k, "prompt")) rc = get_string(f, "prompt", &r->prompt, e);
        else if (!strcmp(k, "messages")) rc = parse_messages(f, &r->messages, &r->n_messages, e);
        else if (!strcmp(k, "add_generation_prompt")) rc = get_bool(f, k, &r->add_generation_prompt, e);
        else special = f;
        if (rc) return PT_ERR_INVALID;
    }
    if (!r->prompt && !r->messages) return BAD(e, "prompt", "one of 'prompt' and 'messages' is required");
    if (r->prompt && r->messages) return BAD(e, "messages", "give 'prompt' or 'messages', not both");
    r->add_special_tokens = r->prompt != NULL;
    if (special && get_bool(special, "add_special_tokens", &r->add_special_tokens, e)) return PT_ERR_INVALID;
    return default_model(&r->model, lim, e);
}

int pt_oai_parse_tokenize(pt_oai_tokenize_request *r, const char *body, size_t len, const pt_oai_limits *lim,
                          pt_oai_error *e) {
    memset(r, 0, sizeof(*r));
    r->add_generation_prompt = true;
    cJSON *root;
    if (parse_body(body, len, &root, NULL, NULL, e)) return PT_ERR_INVALID;
    int rc = parse_tokenize_fields(r, root, lim, e);
    cJSON_Delete(root);
    if (rc) pt_oai_tokenize_request_free(r);
    return rc ? PT_ERR_INVALID : 0;
}

void pt_oai_detokenize_request_free(pt_oai_detokenize_request *r) {
    if (!r) return;
    free(r->model);
    free(r->tokens);
    memset(r, 0, sizeof(*r));
}

static int parse_detokenize_fields(pt_oai_detokenize_request *r, const cJSON *root, const pt_oai_limits *lim,
                                   pt_oai_error *e) {
    bool have_tokens = false;
    for (const cJSON *f = root->child; f; f = f->next) {
        const char *k = f->string;
        int rc;
        if (!strcmp(k, "model")) {
            rc = cJSON_IsNull(f) ? 0 : parse_model(f, lim, &r->model, e);
        } else if (!strcmp(k, "tokens")) {
            rc = parse_token_array(f, "tokens", true, lim, &r->tokens, &r->n_tokens, e);
            have_tokens = true;
        } else {
            rc = BAD(e, k, "unsupported field '%.64s'", k);
        }
        if (rc) return PT_ERR_INVALID;
    }
    if (!have_tokens) return BAD(e, "tokens", "'tokens' is required");
    return default_model(&r->model, lim, e);
}

int pt_oai_parse_detokenize(pt_oai_detokenize_request *r, const char *body, size_t len,
                            const pt_oai_limits *lim, pt_oai_error *e) {
    memset(r, 0, sizeof(*r));
    cJSON *root;
    if (parse_body(body, len, &root, NULL, NULL, e)) return PT_ERR_INVALID;
    int rc = parse_detokenize_fields(r, root, lim, e);
    cJSON_Delete(root);
    if (rc) pt_oai_detokenize_request_free(r);
    return rc ? PT_ERR_INVALID : 0;
}
