// The tokenizer: added-token matching, pre-tokenization, byte-level BPE, and decoding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "added_tokens.h"
#include "bpe.h"
#include "pretokenizer.h"

namespace fastllm {

struct TokenizerSpec {
    // Token strings by id, as vocabularies store them (byte-level alphabet); nullopt for ids
    // without a token.
    std::vector<std::optional<std::string>> tokens;
    // Merges in rank order, as pairs of token strings.
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<AddedToken> added_tokens;
    PreTokenizer pre_tokenizer = PreTokenizer::kGpt2;
    bool ignore_merges = false;
    // For bytes without a token: HF's unk_token and fuse_unk (none: such bytes are dropped).
    std::optional<uint32_t> unknown_id;
    bool fuse_unknown = false;
};

class Tokenizer {
   public:
    // Throws std::invalid_argument naming the problem (unknown merge token, id out of range, ...).
    explicit Tokenizer(const TokenizerSpec& spec);

    // Appends the ids of UTF-8 `text` to out. With allow_special, special added tokens in the
    // text map to their ids; without it they are ordinary text.
    void encode(std::string_view text, bool allow_special, std::vector<uint32_t>& out) const;

    // The pre-tokenizer's pieces of `text` as (begin, end) byte offsets (added tokens not matched).
    std::vector<std::pair<size_t, size_t>> pre_tokenize(std::string_view text) const;

    // Encodes each text on up to num_threads threads (0: one per hardware thread), the calling
    // thread included; fewer where the system cannot start more.
    std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string_view>& texts, bool allow_special,
                                                    size_t num_threads) const;

    // Appends the bytes of each id to out; throws std::invalid_argument for an id with no token.
    void decode(const uint32_t* ids, size_t count, bool skip_special_tokens, std::string& out) const;

    size_t vocab_size() const { return token_offsets_.size() - 1; }
    bool has_token(uint32_t id) const { return id < vocab_size() && present_[id]; }
    bool is_special(uint32_t id) const { return id < vocab_size() && special_[id]; }

   private:
    void encode_added(std::string_view text, size_t level, bool allow_special, PieceCache& cache,
                      std::vector<uint32_t>& out) const;
    void encode_ordinary(std::string_view text, PieceCache& cache, std::vector<uint32_t>& out) const;

    PreTokenizer pre_tokenizer_;
    std::unique_ptr<BytePairEncoder> bpe_;
    // Pass 0: non-normalized added tokens; pass 1: normalized ones, in the text between.
    std::vector<AddedTokenMatcher> added_passes_;
    std::string token_bytes_;             // the bytes of every token, back to back
    std::vector<uint32_t> token_offsets_;  // token i is token_bytes_[offsets[i], offsets[i + 1])
    std::vector<bool> present_;
    std::vector<bool> special_;
};

}  // namespace fastllm
