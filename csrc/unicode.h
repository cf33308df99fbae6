// UTF-8 decoding and the character classes of the pre-tokenizer regexes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "unicode_tables.h"

namespace fastllm::unicode {

// One decoded character: its code point, its length in bytes and its class flags.
struct Char {
    uint32_t code_point;
    uint32_t size;
    uint8_t flags;
};

inline uint8_t class_of(uint32_t code_point) {
    if (code_point > kMaxCodePoint) return 0;
    return kClassBlocks[kClassBlockIndex[code_point >> 8]][code_point & 0xFF];
}

namespace detail {
// ASCII classes, computed once from the generated tables so that the hot path is one load.
struct AsciiClasses {
    uint8_t flags[128];
    constexpr AsciiClasses() : flags() {
        for (uint32_t c = 0; c < 128; ++c) flags[c] = kClassBlocks[kClassBlockIndex[0]][c];
    }
};
inline constexpr AsciiClasses kAscii{};
}  // namespace detail

inline uint8_t ascii_flags(uint8_t byte) { return detail::kAscii.flags[byte]; }

inline bool is_continuation(uint8_t byte) { return (byte & 0xC0) == 0x80; }

// Decode the character at p (p < end). Malformed UTF-8 never reaches here from Python, but the
// core must not trust its input: a byte that does not start a well-formed sequence decodes as
// a one-byte character with no class (like U+FFFD, which is neither letter, number nor space).
inline Char decode(const uint8_t* p, const uint8_t* end) {
    const uint8_t b0 = p[0];
    if (b0 < 0x80) return {b0, 1, detail::kAscii.flags[b0]};
    const size_t left = static_cast<size_t>(end - p);
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        if (left >= 2 && is_continuation(p[1])) {
            const uint32_t cp = (uint32_t(b0 & 0x1F) << 6) | (p[1] & 0x3F);
            return {cp, 2, class_of(cp)};
        }
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        if (left >= 3 && is_continuation(p[1]) && is_continuation(p[2])) {
            const uint32_t cp = (uint32_t(b0 & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
            // Reject overlong forms and UTF-16 surrogates.
            if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3, class_of(cp)};
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        if (left >= 4 && is_continuation(p[1]) && is_continuation(p[2]) && is_continuation(p[3])) {
            const uint32_t cp = (uint32_t(b0 & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) |
                                (uint32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
            if (cp >= 0x10000 && cp <= kMaxCodePoint) return {cp, 4, class_of(cp)};
        }
    }
    return {0xFFFD, 1, 0};
}

}  // namespace fastllm::unicode
