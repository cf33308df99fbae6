#include "added_tokens.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace fastllm {
namespace {

// A prefix no token has: four bytes 0xFF, which no UTF-8 text holds.
constexpr uint32_t kNoPrefix = UINT32_MAX;

uint32_t load_prefix(const uint8_t* p) {
    uint32_t value;
    std::memcpy(&value, p, 4);
    return value;
}

}  // namespace

size_t AddedTokenMatcher::slot_of(uint32_t prefix) const {
    return static_cast<size_t>((prefix * 0x9E3779B1u) >> 7) & prefix_mask_;
}

bool AddedTokenMatcher::may_start_at(const uint8_t* data, size_t size, size_t i) const {
    const uint8_t first = data[i];
    if (first_byte_start_[first] == first_byte_start_[first + 1]) return false;
    if (short_first_byte_[first]) return true;
    if (i + 4 > size) return false;
    const uint32_t prefix = load_prefix(data + i);
    for (size_t slot = slot_of(prefix);; slot = (slot + 1) & prefix_mask_) {
        if (prefixes_[slot] == prefix) return true;
        if (prefixes_[slot] == kNoPrefix) return false;
    }
}

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
    for (const AddedToken& token : tokens_) {
        if (token.content.empty()) {
            throw std::invalid_argument("added token " + std::to_string(token.id) + " has empty content");
        }
    }
    // Bytewise order (as unsigned bytes): a token sorts before every token it is a prefix of;
    // of equal contents the first listed stays first, and matches.
    std::stable_sort(tokens_.begin(), tokens_.end(), [](const AddedToken& a, const AddedToken& b) {
        return std::lexicographical_compare(a.content.begin(), a.content.end(), b.content.begin(), b.content.end(),
                                            [](char x, char y) { return uint8_t(x) < uint8_t(y); });
    });
    size_t t = 0;
    for (size_t b = 0; b <= 256; ++b) {
        while (t < tokens_.size() && static_cast<uint8_t>(tokens_[t].content[0]) < b) ++t;
        first_byte_start_[b] = static_cast<uint32_t>(t);
    }
    size_t capacity = 16;
    while (capacity < 2 * tokens_.size()) capacity <<= 1;
    prefixes_.assign(capacity, kNoPrefix);
    prefix_mask_ = static_cast<uint32_t>(capacity - 1);
    for (const AddedToken& token : tokens_) {
        const auto* bytes = reinterpret_cast<const uint8_t*>(token.content.data());
        if (token.content.size() < 4) {
            short_first_byte_[bytes[0]] = true;
            continue;
        }
        const uint32_t prefix = load_prefix(bytes);
        size_t slot = slot_of(prefix);
        while (prefixes_[slot] != kNoPrefix && prefixes_[slot] != prefix) slot = (slot + 1) & prefix_mask_;
        prefixes_[slot] = prefix;
    }
    if (!tokens_.empty() && static_cast<uint8_t>(tokens_.front().content[0]) ==
                                static_cast<uint8_t>(tokens_.back().content[0])) {
        single_first_byte_ = static_cast<uint8_t>(tokens_.front().content[0]);
    }
}

const AddedToken* AddedTokenMatcher::longest_at(const uint8_t* text, size_t size, size_t i) const {
    const uint8_t first = text[i];
    size_t lo = first_byte_start_[first], hi = first_byte_start_[first + 1];
    const AddedToken* longest = nullptr;
    for (size_t depth = 1; lo < hi; ++depth) {
        // Every token in [lo, hi) starts with text[i, i + depth); one that ends there sorts first.
        if (tokens_[lo].content.size() == depth) {
            longest = &tokens_[lo];
            while (lo < hi && tokens_[lo].content.size() == depth) ++lo;  // repeated contents
        }
        if (i + depth >= size || lo == hi) break;
        const uint8_t next = text[i + depth];
        const auto byte_at = [depth](const AddedToken& token) { return uint8_t(token.content[depth]); };
        const auto begin = tokens_.begin() + static_cast<std::ptrdiff_t>(lo);
        const auto end = tokens_.begin() + static_cast<std::ptrdiff_t>(hi);
        const auto from = std::partition_point(begin, end, [&](const AddedToken& t) { return byte_at(t) < next; });
        const auto to = std::partition_point(from, end, [&](const AddedToken& t) { return byte_at(t) == next; });
        lo = static_cast<size_t>(from - tokens_.begin());
        hi = static_cast<size_t>(to - tokens_.begin());
    }
    return longest;
}

bool AddedTokenMatcher::find(std::string_view text, size_t from, Match& match) const {
    if (tokens_.empty()) return false;
    const auto* data = reinterpret_cast<const uint8_t*>(text.data());
    for (size_t i = from; i < text.size(); ++i) {
        if (single_first_byte_ >= 0) {  // the usual case ('<'): let memchr find candidates
            const void* next = std::memchr(data + i, single_first_byte_, text.size() - i);
            if (!next) return false;
            i = static_cast<size_t>(static_cast<const uint8_t*>(next) - data);
        }
        if (!may_start_at(data, text.size(), i)) continue;
        if (const AddedToken* token = longest_at(data, text.size(), i)) {
            match = Match{i, i + token->content.size(), token};
            return true;
        }
    }
    return false;
}

}  // namespace fastllm
