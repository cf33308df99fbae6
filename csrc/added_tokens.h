// Added tokens (e.g. <|im_start|>) are found in the raw text before pre-tokenization, as HF
// tokenizers does: scanning left to right, the earliest match wins, the longest among those.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastllm {

struct AddedToken {
    uint32_t id;
    std::string content;
    bool special;     // skipped by decode(skip_special_tokens), matched only with allow_special
    bool normalized;  // HF matches these in a second pass, after the non-normalized ones
};

class AddedTokenMatcher {
   public:
    struct Match {
        size_t begin;
        size_t end;
        const AddedToken* token;
    };

    AddedTokenMatcher() = default;  // matches nothing
    explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

    bool empty() const { return tokens_.empty(); }

    // The leftmost-longest match in text[from, size), if any.
    bool find(std::string_view text, size_t from, Match& match) const;

   private:
    std::vector<AddedToken> tokens_;                // sorted by first byte, longest first
    std::array<uint32_t, 257> first_byte_start_{};  // tokens_[start[b], start[b+1]) begin with b
    int single_first_byte_ = -1;                    // the first byte of every token, if they share one
};

}  // namespace fastllm
