// Pre-tokenizers: split text into the pieces that BPE encodes one by one.
//
// Each mode reproduces one regex exactly (leftmost alternative wins, greedy, with the
// backtracking of `\s+(?!\S)` written out), on the classes of unicode_tables.h:
//   gpt2       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm     every numeric character split off first (HF `Digits(individual_digits=True)`),
//              then gpt2 on the text between them
//   llama-bpe  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//              ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2      the llama-bpe regex with \p{N} for \p{N}{1,3}: one digit per piece (Qwen2, Qwen2.5, Qwen3)
// The scanners are inline templates: the encoder's loop calls them once per piece.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "unicode.h"

namespace fastllm {

enum class PreTokenizer : uint8_t { kGpt2, kSmollm, kLlama3, kQwen2 };

// Parses "gpt2", "smollm", "llama-bpe" or "qwen2"; throws std::invalid_argument naming the allowed values.
PreTokenizer parse_pre_tokenizer(std::string_view name);

namespace pretokenizer_detail {

using unicode::Char;
using unicode::kDigitSplit;
using unicode::kLetter;
using unicode::kNumber;
using unicode::kSpace;

inline constexpr uint8_t kWordClasses = kLetter | kNumber | kSpace;

// One segment of text: decoding stops at its end.
struct Text {
    const uint8_t* data;
    size_t size;

    Char at(size_t i) const { return unicode::decode(data + i, data + size); }
};

inline bool is_other(uint8_t flags) { return (flags & kWordClasses) == 0; }

// Advance from i over characters for which keep(flags) holds; ASCII takes the short path.
template <class Keep>
inline size_t skip_while(const Text& text, size_t i, Keep keep) {
    while (i < text.size) {
        const uint8_t byte = text.data[i];
        if (byte < 0x80) {
            if (!keep(unicode::ascii_flags(byte))) break;
            ++i;
        } else {
            const Char c = text.at(i);
            if (!keep(c.flags)) break;
            i += c.size;
        }
    }
    return i;
}

// Size of the contraction ('s 't 're 've 'm 'll 'd) at i, which holds an apostrophe; 0 if none.
size_t contraction_size(const Text& text, size_t i, bool ignore_case);

// A whitespace run: its end, the start of its last character, its length in characters, and
// the end of its last \r or \n (0 when it has none).
struct SpaceRun {
    size_t end;
    size_t last_start;
    size_t count;
    size_t after_last_newline;
};

inline SpaceRun scan_spaces(const Text& text, size_t i) {
    SpaceRun run{i, i, 0, 0};
    while (run.end < text.size) {
        const Char c = text.at(run.end);
        if (!(c.flags & kSpace)) break;
        run.last_start = run.end;
        run.end += c.size;
        ++run.count;
        if (c.code_point == '\r' || c.code_point == '\n') run.after_last_newline = run.end;
    }
    return run;
}

// \s+(?!\S)|\s+ on a run: all of it at the end of the text (or before a digit that ends the
// segment), else all but its last character, which then starts the next piece, else its one character.
inline size_t space_piece_end(const SpaceRun& run, bool at_segment_end) {
    return (at_segment_end || run.count < 2) ? run.end : run.last_start;
}

template <bool kSplitDigits>
inline bool splits(uint8_t flags) {
    return kSplitDigits && (flags & kDigitSplit);
}

template <bool kSplitDigits>
inline size_t gpt2_piece_end(const Text& text, size_t begin) {
    const Char c = text.at(begin);
    if (splits<kSplitDigits>(c.flags)) return begin + c.size;
    if (c.code_point == '\'') {
        if (const size_t n = contraction_size(text, begin, false)) return begin + n;
    }
    // ` ?X+`: one ASCII space joins the run of letters, numbers or others after it.
    size_t start = begin;
    uint8_t head = c.flags;
    if (c.code_point == ' ' && begin + 1 < text.size) {
        const Char next = text.at(begin + 1);
        if (!(next.flags & kSpace) && !splits<kSplitDigits>(next.flags)) {
            start = begin + 1;
            head = next.flags;
        }
    }
    if (head & kLetter) {
        return skip_while(text, start, [](uint8_t f) { return (f & kLetter) && !splits<kSplitDigits>(f); });
    }
    if (head & kNumber) {
        return skip_while(text, start, [](uint8_t f) { return (f & kNumber) && !splits<kSplitDigits>(f); });
    }
    if (!(head & kSpace)) {
        return skip_while(text, start, [](uint8_t f) { return is_other(f) && !splits<kSplitDigits>(f); });
    }
    const SpaceRun run = scan_spaces(text, begin);
    const bool at_end = run.end == text.size || splits<kSplitDigits>(text.at(run.end).flags);
    return space_piece_end(run, at_end);
}

// The llama-bpe regex; kMaxDigits 3 (\p{N}{1,3}) or 1 (qwen2's \p{N}).
template <int kMaxDigits>
inline size_t llama3_piece_end(const Text& text, size_t begin) {
    const auto is_letter = [](uint8_t flags) { return (flags & kLetter) != 0; };
    const auto is_newline = [](uint32_t cp) { return cp == '\r' || cp == '\n'; };
    const Char c = text.at(begin);
    if (c.code_point == '\'') {
        if (const size_t n = contraction_size(text, begin, true)) return begin + n;
    }
    if (c.flags & kLetter) return skip_while(text, begin, is_letter);
    const size_t after = begin + c.size;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!(c.flags & kNumber) && !is_newline(c.code_point) && after < text.size && (text.at(after).flags & kLetter)) {
        return skip_while(text, after, is_letter);
    }
    // \p{N}{1,kMaxDigits}
    if (c.flags & kNumber) {
        size_t end = after;
        for (int taken = 1; taken < kMaxDigits && end < text.size; ++taken) {
            const Char next = text.at(end);
            if (!(next.flags & kNumber)) break;
            end += next.size;
        }
        return end;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    size_t others = text.size;  // start of the run of others, if this alternative applies
    if (is_other(c.flags)) {
        others = begin;
    } else if (c.code_point == ' ' && after < text.size && is_other(text.at(after).flags)) {
        others = after;
    }
    if (others != text.size) {
        size_t end = skip_while(text, others, is_other);
        while (end < text.size && is_newline(text.data[end])) ++end;
        return end;
    }
    // \s*[\r\n]+ (up to the last newline of the run), then \s+(?!\S), then \s+
    const SpaceRun run = scan_spaces(text, begin);
    if (run.after_last_newline) return run.after_last_newline;
    return space_piece_end(run, run.end == text.size);
}

template <class PieceEnd, class OnPiece>
inline void split_with(const Text& text, PieceEnd piece_end, OnPiece& on_piece) {
    for (size_t begin = 0; begin < text.size;) {
        const size_t end = piece_end(text, begin);
        on_piece(begin, end);
        begin = end;
    }
}

}  // namespace pretokenizer_detail

// Calls on_piece(begin, end) with the byte offsets of each piece of data[0, size), in order.
template <class OnPiece>
inline void for_each_piece(PreTokenizer mode, const uint8_t* data, size_t size, OnPiece&& on_piece) {
    namespace d = pretokenizer_detail;
    const d::Text text{data, size};
    switch (mode) {
        case PreTokenizer::kGpt2:
            return d::split_with(text, d::gpt2_piece_end<false>, on_piece);
        case PreTokenizer::kSmollm:
            return d::split_with(text, d::gpt2_piece_end<true>, on_piece);
        case PreTokenizer::kLlama3:
            return d::split_with(text, d::llama3_piece_end<3>, on_piece);
        case PreTokenizer::kQwen2:
            return d::split_with(text, d::llama3_piece_end<1>, on_piece);
    }
}

}  // namespace fastllm
