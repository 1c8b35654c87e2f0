/* Stop strings over streamed text: an Aho-Corasick automaton over the stop
 * strings, fed byte by byte, whose state doubles as the hold-back length. See
 * include/proteus/stop_matcher.h for the semantics.
 *
 * Invariant between calls: the held bytes are the last n_held bytes of the text
 * fed so far, and n_held >= depth[state]. The automaton's state is the longest
 * suffix of the text that is a prefix of some stop string, so a stop string
 * that completes later can only start inside the held bytes or after them:
 * nothing already sent can turn out to be part of one. */
#include "proteus/stop_matcher.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

static int32_t ac_child(const pt_stop_matcher *m, int32_t s, uint8_t c) {
    for (int32_t t = m->first_child[s]; t >= 0; t = m->next_sibling[t])
        if (m->byte[t] == c) return t;
    return -1;
}

/* Goto with failure links; amortized O(1) per byte over a stream. */
static int32_t ac_step(const pt_stop_matcher *m, int32_t s, uint8_t c) {
    for (;;) {
        int32_t t = ac_child(m, s, c);
        if (t >= 0) return t;
        if (s == 0) return 0;
        s = m->fail[s];
    }
}

/* Length of an incomplete UTF-8 sequence at the end of b[0..n): a lead byte
 * followed by fewer continuation bytes than it announces. 0 when the text ends
 * on a character boundary or the tail is not valid UTF-8 (then waiting would
 * not help). */
static size_t utf8_incomplete_tail(const char *b, size_t n) {
    size_t cont = 0;
    while (cont < 3 && cont < n && ((uint8_t)b[n - 1 - cont] & 0xC0) == 0x80) cont++;
    if (cont == n) return 0;
    uint8_t lead = (uint8_t)b[n - 1 - cont];
    size_t need;
    if (lead >= 0xC2 && lead <= 0xDF) need = 2;
    else if (lead >= 0xE0 && lead <= 0xEF) need = 3;
    else if (lead >= 0xF0 && lead <= 0xF4) need = 4;
    else return 0;
    return cont + 1 < need ? cont + 1 : 0;
}

int pt_stop_matcher_init(pt_stop_matcher *m, const char *const *stops, size_t n_stops, bool include_stop,
                         pt_err *err) {
    memset(m, 0, sizeof *m);
    m->stop = -1;
    if (n_stops > PT_STOP_MAX_STRINGS)
        return pt_err_set(err, PT_ERR_INVALID, "stop: %zu stop strings, at most %d allowed", n_stops, PT_STOP_MAX_STRINGS);
    if (n_stops > 0 && !stops) return pt_err_set(err, PT_ERR_INVALID, "stop: stop list is NULL");
    size_t n_states = 1;
    for (size_t i = 0; i < n_stops; i++) {
        size_t len = stops[i] ? strlen(stops[i]) : 0;
        if (len == 0) return pt_err_set(err, PT_ERR_INVALID, "stop: stop string %zu is empty", i);
        if (len > PT_STOP_MAX_BYTES)
            return pt_err_set(err, PT_ERR_INVALID, "stop: stop string %zu is %zu bytes, at most %d allowed", i, len,
                              PT_STOP_MAX_BYTES);
        n_states += len;
    }

    /* One block: six 4-byte arrays, then the edge bytes. */
    char *block = malloc(n_states * (6 * sizeof(int32_t) + 1));
    int32_t *queue = malloc(n_states * sizeof *queue);
    if (!block || !queue) {
        free(block);
        free(queue);
        return pt_err_set(err, PT_ERR_NOMEM, "stop: no memory for %zu automaton states", n_states);
    }
    int32_t *arr = (int32_t *)block;
    m->first_child = arr;
    m->next_sibling = arr + n_states;
    m->fail = arr + 2 * n_states;
    m->dict = arr + 3 * n_states;
    m->term = arr + 4 * n_states;
    m->depth = (uint32_t *)(arr + 5 * n_states);
    m->byte = (uint8_t *)(arr + 6 * n_states);
    m->include_stop = include_stop;

    m->n_states = 1;
    m->first_child[0] = m->next_sibling[0] = m->dict[0] = m->term[0] = -1;
    m->fail[0] = 0;
    m->depth[0] = 0;
    m->byte[0] = 0;
    for (size_t i = 0; i < n_stops; i++) {
        int32_t s = 0;
        for (const uint8_t *p = (const uint8_t *)stops[i]; *p; p++) {
            int32_t t = ac_child(m, s, *p);
            if (t < 0) {
                t = (int32_t)m->n_states++;
                m->byte[t] = *p;
                m->depth[t] = m->depth[s] + 1;
                m->first_child[t] = m->dict[t] = m->term[t] = -1;
                m->fail[t] = 0;
                m->next_sibling[t] = m->first_child[s];
                m->first_child[s] = t;
            }
            s = t;
        }
        if (m->term[s] < 0) m->term[s] = (int32_t)i; /* a duplicate keeps the lower index */
    }

    /* Breadth-first, so every state's fail target (shallower) is final before
     * it is used. Children of the root fail to the root. */
    size_t qh = 0, qt = 0;
    for (int32_t c = m->first_child[0]; c >= 0; c = m->next_sibling[c]) queue[qt++] = c;
    while (qh < qt) {
        int32_t u = queue[qh++];
        for (int32_t v = m->first_child[u]; v >= 0; v = m->next_sibling[v]) {
            int32_t f = ac_step(m, m->fail[u], m->byte[v]);
            m->fail[v] = f;
            m->dict[v] = m->term[f] >= 0 ? f : m->dict[f];
            queue[qt++] = v;
        }
    }
    free(queue);
    return PT_OK;
}

void pt_stop_matcher_free(pt_stop_matcher *m) {
    free(m->first_child); /* the block */
    free(m->buf);
    memset(m, 0, sizeof *m);
    m->stop = -1;
}

int pt_stop_matcher_feed(pt_stop_matcher *m, const char *bytes, size_t n, pt_stop_result *res, pt_err *err) {
    res->text = m->buf ? m->buf : "";
    res->len = 0;
    res->stop = m->stop;
    if (m->stop >= 0) return PT_OK;

    /* The previous result pointed at buf; it may be overwritten only now. */
    if (m->held_off > 0) {
        memmove(m->buf, m->buf + m->held_off, m->n_held);
        m->held_off = 0;
    }
    if (n > SIZE_MAX - m->n_held) return pt_err_set(err, PT_ERR_INVALID, "stop: chunk of %zu bytes too large", n);
    const size_t need = m->n_held + n;
    if (need > m->cap) {
        size_t cap = m->cap ? m->cap : 64;
        while (cap < need) cap = cap > SIZE_MAX / 2 ? need : 2 * cap;
        char *b = realloc(m->buf, cap);
        if (!b) return pt_err_set(err, PT_ERR_NOMEM, "stop: no memory for %zu buffered bytes", cap);
        m->buf = b;
        m->cap = cap;
    }
    if (n > 0) memcpy(m->buf + m->n_held, bytes, n);
    res->text = m->buf ? m->buf : "";

    const size_t total = need;
    int32_t s = m->state;
    for (size_t i = m->n_held; i < total; i++) {
        s = ac_step(m, s, (uint8_t)m->buf[i]);
        /* The state itself, if terminal, is the longest stop ending here. */
        int32_t t = m->term[s] >= 0 ? s : m->dict[s];
        if (t >= 0) {
            size_t end = i + 1;
            assert(m->depth[t] <= end);
            m->stop = m->term[t];
            m->state = s;
            m->n_held = 0;
            res->len = m->include_stop ? end : end - m->depth[t];
            res->stop = m->stop;
            return PT_OK;
        }
    }
    m->state = s;
    size_t hold = m->depth[s];
    size_t u = utf8_incomplete_tail(m->buf, total);
    if (u > hold) hold = u;
    res->len = total - hold;
    m->held_off = total - hold;
    m->n_held = hold;
    return PT_OK;
}

void pt_stop_matcher_flush(pt_stop_matcher *m, pt_stop_result *res) {
    res->text = m->buf ? m->buf + m->held_off : "";
    res->len = m->stop >= 0 ? 0 : m->n_held;
    res->stop = m->stop;
    m->held_off += m->n_held;
    m->n_held = 0;
    m->state = 0;
}
