#include "added_tokens.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace fastllm {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
    for (const AddedToken& token : tokens_) {
        if (token.content.empty()) {
            throw std::invalid_argument("added token " + std::to_string(token.id) + " has empty content");
        }
    }
    std::stable_sort(tokens_.begin(), tokens_.end(), [](const AddedToken& a, const AddedToken& b) {
        const auto fa = static_cast<uint8_t>(a.content[0]), fb = static_cast<uint8_t>(b.content[0]);
        return fa != fb ? fa < fb : a.content.size() > b.content.size();
    });
    size_t t = 0;
    for (size_t b = 0; b <= 256; ++b) {
        while (t < tokens_.size() && static_cast<uint8_t>(tokens_[t].content[0]) < b) ++t;
        first_byte_start_[b] = static_cast<uint32_t>(t);
    }
    if (!tokens_.empty() && static_cast<uint8_t>(tokens_.front().content[0]) ==
                                static_cast<uint8_t>(tokens_.back().content[0])) {
        single_first_byte_ = static_cast<uint8_t>(tokens_.front().content[0]);
    }
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
        const uint8_t b = data[i];
        for (uint32_t t = first_byte_start_[b]; t < first_byte_start_[b + 1]; ++t) {
            const std::string& content = tokens_[t].content;
            if (content.size() <= text.size() - i && std::memcmp(content.data(), data + i, content.size()) == 0) {
                match = Match{i, i + content.size(), &tokens_[t]};
                return true;
            }
        }
    }
    return false;
}

}  // namespace fastllm
