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
    // The longest token that starts text at i, if any: the range of tokens sharing a prefix with
    // the text is narrowed byte by byte (a trie walk over the sorted list, a few steps per position).
    const AddedToken* longest_at(const uint8_t* text, size_t size, size_t i) const;

    // Whether a token may start at data[i]: most positions are turned away here, by the first
    // byte alone or by the first four (a token shorter than four bytes always gets the walk).
    bool may_start_at(const uint8_t* data, size_t size, size_t i) const;
    size_t slot_of(uint32_t prefix) const;

    std::vector<AddedToken> tokens_;                // sorted by content (bytewise)
    std::array<uint32_t, 257> first_byte_start_{};  // tokens_[start[b], start[b+1]) begin with b
    std::array<bool, 256> short_first_byte_{};      // some token of under four bytes begins with b
    std::vector<uint32_t> prefixes_;                // open addressing: the first four bytes of the rest
    uint32_t prefix_mask_ = 0;
    int single_first_byte_ = -1;                    // the first byte of every token, if they share one
};

}  // namespace fastllm
