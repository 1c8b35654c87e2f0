/* Stop strings over streamed text, with OpenAI / vLLM semantics.
 *
 * Generated text arrives as bytes in arbitrary chunks (a detokenized token may
 * end in the middle of a UTF-8 character). The matcher returns, per chunk, the
 * bytes that are safe to send now and holds back the rest:
 *   - the longest tail that is a proper prefix of some stop string (it may
 *     still become a stop string, and a stop string is never sent);
 *   - an incomplete UTF-8 sequence at the very end, so that every piece sent is
 *     whole characters (invalid bytes are passed through, never held forever).
 * When a stop string completes, the text before it is released and the
 * request is finished: the stop string itself is not sent (unless
 * include_stop, vLLM's include_stop_str_in_output), nor anything after it.
 *
 * Which stop wins: the one that ends first in the text; among those ending at
 * the same byte, the longest (it starts earliest); among equal strings, the
 * lowest index. That is what one-byte-at-a-time feeding would find, so the
 * outcome never depends on how the text was chunked.
 *
 * Matching is byte-wise with an Aho-Corasick automaton: O(bytes) per chunk
 * whatever the number and length of the stop strings. Since UTF-8 is
 * self-synchronizing, a byte match of a valid UTF-8 stop string always lies on
 * character boundaries of valid text. */
#ifndef PROTEUS_STOP_MATCHER_H
#define PROTEUS_STOP_MATCHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/util.h"

#define PT_STOP_MAX_STRINGS 16
#define PT_STOP_MAX_BYTES 1024 /* per stop string */

typedef struct {
    /* Automaton: state 0 is the root; a state is the stop-string prefix it
     * spells, depth its length. Children are a sibling list (sparse: few
     * states have more than one child). */
    size_t n_states;
    int32_t *first_child;  /* (n_states) */
    int32_t *next_sibling; /* (n_states) */
    uint8_t *byte;         /* (n_states) the byte on the edge into the state */
    int32_t *fail;         /* (n_states) longest proper suffix that is also a state */
    int32_t *dict;         /* (n_states) nearest terminal state on the fail chain, or -1 */
    int32_t *term;         /* (n_states) stop index ending here, or -1 */
    uint32_t *depth;       /* (n_states) */
    bool include_stop;

    int32_t state;         /* after the bytes fed so far */
    char *buf;             /* held bytes, then the current chunk */
    size_t held_off;       /* held bytes start at buf + held_off */
    size_t n_held;
    size_t cap;
    int stop;              /* index of the stop string found, or -1 */
} pt_stop_matcher;

typedef struct {
    const char *text; /* bytes to send now (never NULL); valid until the next call */
    size_t len;
    int stop;         /* index of the stop string found (now or earlier), or -1 */
} pt_stop_result;

/* n_stops <= PT_STOP_MAX_STRINGS, each non-empty and <= PT_STOP_MAX_BYTES
 * (stops[i] is NUL-terminated). n_stops == 0 is allowed: text passes through,
 * held back only for UTF-8. Nothing to free on failure. */
int pt_stop_matcher_init(pt_stop_matcher *m, const char *const *stops, size_t n_stops, bool include_stop,
                         pt_err *err);
void pt_stop_matcher_free(pt_stop_matcher *m);

/* Feeds n bytes. After a stop was found it accepts and ignores further bytes.
 * PT_ERR_NOMEM if the buffer cannot grow (the matcher is then unchanged). */
int pt_stop_matcher_feed(pt_stop_matcher *m, const char *bytes, size_t n, pt_stop_result *res, pt_err *err);

/* End of generation without a stop: releases everything held (even an
 * incomplete UTF-8 tail, which the caller may replace with U+FFFD). */
void pt_stop_matcher_flush(pt_stop_matcher *m, pt_stop_result *res);

#endif
