/* UTF-8 helpers and GPT-2's byte-to-character table. */
#include "tokenizer/tok_internal.h"

size_t tok_utf8_valid_len(const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t min;
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    uint32_t cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

size_t tok_utf8_char_len(const uint8_t *s, size_t n) {
    size_t l = tok_utf8_valid_len(s, n);
    return l ? l : 1;
}

uint32_t tok_utf8_decode(const uint8_t *s, size_t n, size_t *adv) {
    size_t l = tok_utf8_valid_len(s, n);
    if (l == 0) { *adv = 1; return 0xFFFD; }
    *adv = l;
    if (l == 1) return s[0];
    uint32_t cp = s[0] & (0x7F >> l);
    for (size_t i = 1; i < l; i++) cp = (cp << 6) | (s[i] & 0x3F);
    return cp;
}

size_t tok_utf8_put(uint32_t cp, char *out) {
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F);
    o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

/* GPT-2 keeps printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') as
 * themselves and maps the other 68 bytes, in order, to U+0100 onwards. */
static bool byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t tok_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t k = 0;
    for (int i = 0; i < b; i++) k += !byte_is_printable(i);
    return 0x100 + k;
}

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t k = 0;
    for (int i = 0; i < 256; i++) {
        if (!byte_is_printable(i)) {
            if (k == cp - 0x100) return i;
            k++;
        }
    }
    return -1;
}
