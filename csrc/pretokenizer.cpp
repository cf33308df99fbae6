#include "pretokenizer.h"

#include <stdexcept>
#include <string>

namespace fastllm {

PreTokenizer parse_pre_tokenizer(std::string_view name) {
    if (name == "gpt2") return PreTokenizer::kGpt2;
    if (name == "smollm") return PreTokenizer::kSmollm;
    if (name == "llama-bpe") return PreTokenizer::kLlama3;
    if (name == "qwen2") return PreTokenizer::kQwen2;
    throw std::invalid_argument("unsupported pre_tokenizer '" + std::string(name) +
                                "': expected one of 'gpt2', 'smollm', 'llama-bpe', 'qwen2'");
}

namespace pretokenizer_detail {
namespace {

// Lower-cased ASCII letter that `c` matches case-insensitively, or 0.
char folded_letter(const Char& c) {
    if (c.code_point < 128) {
        const char ch = static_cast<char>(c.code_point);
        return (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch;
    }
    for (const auto& fold : unicode::kContractionFolds) {
        if (fold.code_point == c.code_point) return fold.letter;
    }
    return 0;
}

char letter_of(const Char& c, bool ignore_case) {
    if (ignore_case) return folded_letter(c);
    return c.code_point < 128 ? static_cast<char>(c.code_point) : 0;
}

}  // namespace

size_t contraction_size(const Text& text, size_t i, bool ignore_case) {
    size_t j = i + 1;
    if (j >= text.size) return 0;
    const Char first = text.at(j);
    const char a = letter_of(first, ignore_case);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 1 + first.size;
    if (a != 'r' && a != 'v' && a != 'l') return 0;
    j += first.size;
    if (j >= text.size) return 0;
    const Char second = text.at(j);
    const char want = (a == 'l') ? 'l' : 'e';
    return letter_of(second, ignore_case) == want ? 1 + first.size + second.size : 0;
}

}  // namespace pretokenizer_detail
}  // namespace fastllm
