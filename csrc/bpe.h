// Byte-pair encoding of one pre-tokenized piece, exactly as HF tokenizers' BPE model does it:
// start from one token per byte and repeatedly apply the lowest-ranked merge among adjacent
// pairs (the leftmost on ties) until no adjacent pair has a merge.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hash_maps.h"
#include "piece_cache.h"

namespace fastllm {

class BytePairEncoder {
   public:
    // encodable_tokens: (id, bytes) of every token written in the byte-level alphabet (the
    // last id wins for repeated bytes). merges: (left id, right id, merged id) in rank order.
    // ignore_merges: a piece that is itself a token is that token (Llama-3), even where the
    // merges would split it. A byte without a token of its own becomes unknown_id (runs of
    // them one, with fuse_unknown) or, with no unknown token, is dropped, as HF does.
    BytePairEncoder(const std::vector<std::pair<uint32_t, std::string>>& encodable_tokens,
                    const std::vector<std::array<uint32_t, 3>>& merges, bool ignore_merges,
                    std::optional<uint32_t> unknown_id, bool fuse_unknown);

    // Appends the ids of `piece` (non-empty) to out; `cache` is the calling thread's.
    void encode(const uint8_t* piece, size_t size, PieceCache& cache, std::vector<uint32_t>& out) const;

   private:
    void merge(const uint8_t* piece, size_t size, std::vector<uint32_t>& out) const;
    // Writes the one-byte tokens of piece to ids (room for size); returns how many.
    size_t initial_symbols(const uint8_t* piece, size_t size, uint32_t* ids) const;

    std::array<uint32_t, 256> byte_tokens_{};  // BytesMap::kMissing for bytes without a token
    uint32_t serial_;  // identifies this encoder's entries in piece caches
    std::optional<uint32_t> unknown_id_;
    bool fuse_unknown_;
    // Whole pieces that encode to exactly one token, mapped to it.
    BytesMap single_tokens_;
    PairMap merges_;
};

}  // namespace fastllm
