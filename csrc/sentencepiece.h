// SentencePiece BPE (Llama 2, Mistral, TinyLlama, Gemma): merges over characters of text whose
// spaces are written as U+2581 '▁', as SentencePiece's bpe_model.cc does it: start from one
// symbol per character and repeatedly merge the adjacent pair whose merged piece ranks best, the
// leftmost on ties, until no adjacent pair forms a piece. The rank is the piece's score
// (highest first; equal scores tie) for a SentencePiece vocabulary, or the merge's place in the
// list of an HF tokenizer.json. A character left that is no piece becomes its bytes' <0xNN>
// tokens (byte fallback), else the unknown token, else nothing (as HF without an unk token).
//
// Speed: SentencePiece merges a whole text as one run. A point before a '▁' whose preceding
// character c is such that no piece contains "c▁" can never be inside a merged piece, so the
// text is cut there into chunks (words, mostly) that merge independently to the same ids; a
// chunk is then looked up whole, found in the per-thread cache, or merged, as in byte-level BPE.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hash_maps.h"
#include "piece_cache.h"

namespace fastllm {

inline constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

struct SentencePieceModel {
    // (id, text) of the pieces merging starts from and produces (SentencePiece's NORMAL pieces).
    std::vector<std::pair<uint32_t, std::string>> pieces;
    // One score per piece: SentencePiece's rule. Empty: `merges` rank the pairs instead.
    std::vector<float> scores;
    // HF tokenizer.json merges, (left id, right id, merged id) in rank order.
    std::vector<std::array<uint32_t, 3>> merges;
    // The <0xNN> token of each byte (BytesMap::kMissing where there is none).
    std::array<uint32_t, 256> byte_ids;
    std::optional<uint32_t> unknown_id;
    bool fuse_unknown = false;
    // HF Metaspace(split=true): cut before every '▁', pieces holding "c▁" notwithstanding.
    bool split_at_every_space = false;
    size_t vocab_size = 0;
};

// `text` with every ' ' written as '▁', after a '▁' when `prefix` (SentencePiece's dummy prefix).
void escape_spaces(std::string_view text, bool prefix, std::string& out);

class SentencePieceEncoder {
   public:
    // Throws std::invalid_argument for an inconsistent model (a score count that is not the piece count, ...).
    explicit SentencePieceEncoder(const SentencePieceModel& model);

    // Appends the ids of `text` (spaces already escaped) to out; `cache` is the calling thread's.
    void encode(std::string_view text, PieceCache& cache, std::vector<uint32_t>& out) const;

    // Calls on_chunk(begin, end) with the byte offsets of each independent chunk of `text`.
    template <class OnChunk>
    void for_each_chunk(std::string_view text, OnChunk&& on_chunk) const;

   private:
    static constexpr uint32_t kUnknownSymbol = UINT32_MAX - 1;  // a character no merge involves

    void add_merges_by_score(const SentencePieceModel& model, const BytesMap& piece_ids);
    uint32_t orphan_symbol(std::string_view character);  // a character that is no piece, as a symbol
    void merge(const uint8_t* chunk, size_t size, std::vector<uint32_t>& out) const;
    size_t initial_symbols(const uint8_t* chunk, size_t size, uint32_t* ids) const;
    // The symbols of chunk after merging, written out as ids (byte fallback for non-pieces).
    void write_symbols(const uint8_t* chunk, size_t size, const uint32_t* symbols, size_t count,
                       std::vector<uint32_t>& out) const;
    bool may_join_before_space(uint32_t code_point) const {
        return (joins_before_space_[code_point >> 6] >> (code_point & 63)) & 1;
    }

    uint32_t serial_;
    std::array<uint32_t, 128> ascii_symbols_{};
    BytesMap char_symbols_;  // characters of two or more bytes
    PairMap merges_;
    BytesMap single_tokens_;  // whole chunks that merge to exactly one piece
    // Byte length of each symbol: pieces by id, then characters that are no pieces from first_orphan_.
    std::vector<uint32_t> symbol_length_;
    uint32_t first_orphan_;
    std::vector<uint64_t> joins_before_space_;  // bit c: some piece holds "c▁" (c = code point)
    bool split_at_every_space_;
    std::array<uint32_t, 256> byte_ids_;
    std::optional<uint32_t> unknown_id_;
    bool fuse_unknown_;
};

namespace sentencepiece_detail {
// The code point of the character that ends at data[end - 1], end > 0 (U+FFFD for a malformed one).
uint32_t code_point_before(const uint8_t* data, size_t end);
}  // namespace sentencepiece_detail

template <class OnChunk>
void SentencePieceEncoder::for_each_chunk(std::string_view text, OnChunk&& on_chunk) const {
    const auto* data = reinterpret_cast<const uint8_t*>(text.data());
    const size_t size = text.size();
    size_t begin = 0;
    for (size_t i = 1; i < size; ++i) {
        const void* hit = std::memchr(data + i, 0xE2, size - i);  // the first byte of '▁'
        if (!hit) break;
        i = static_cast<size_t>(static_cast<const uint8_t*>(hit) - data);
        if (i + 3 > size || data[i + 1] != 0x96 || data[i + 2] != 0x81) continue;
        if (split_at_every_space_ || !may_join_before_space(sentencepiece_detail::code_point_before(data, i))) {
            on_chunk(begin, i);
            begin = i;
        }
        i += 2;
    }
    if (begin < size) on_chunk(begin, size);
}

}  // namespace fastllm
