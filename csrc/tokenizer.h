// The tokenizer: added-token matching, then one of two models, and decoding.
//   byte-level BPE      pre-tokenization (pretokenizer.h), then BPE over bytes (bpe.h)
//   SentencePiece BPE   spaces written as '▁' (and a dummy prefix), then BPE over characters
//                       with byte fallback (sentencepiece.h)
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
#include "sentencepiece.h"

namespace fastllm {

enum class TokenizerModel : uint8_t { kByteLevelBpe, kSentencePieceBpe };

// Where SentencePiece BPE writes its dummy prefix '▁': nowhere; before the text when it begins
// with ordinary text (SentencePiece's add_dummy_prefix, HF Metaspace prepend_scheme "first");
// before every stretch of text between added tokens (HF's Prepend normalizer, Metaspace "always").
enum class SpacePrefix : uint8_t { kNone, kFirst, kEverySegment };

// What a token is to SentencePiece BPE.
enum class PieceKind : uint8_t {
    kNormal,  // merging starts from it and produces it
    kByte,    // "<0xNN>": byte fallback, and decodes to that byte
    kOther,   // control, user-defined (matched as added tokens), unknown, unused: never merged
};

struct TokenizerSpec {
    TokenizerModel model = TokenizerModel::kByteLevelBpe;
    // Token strings by id, as vocabularies store them (byte-level: in the byte-level alphabet;
    // SentencePiece: UTF-8 with '▁' for spaces); nullopt for ids without a token.
    std::vector<std::optional<std::string>> tokens;
    // Merges in rank order, as pairs of token strings (SentencePiece BPE: empty when ranked by scores).
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<AddedToken> added_tokens;
    // For tokens without a token of their own (a byte, or a character without byte fallback):
    // HF's unk_token and fuse_unk (none: such input is dropped).
    std::optional<uint32_t> unknown_id;
    bool fuse_unknown = false;

    // Byte-level BPE only.
    PreTokenizer pre_tokenizer = PreTokenizer::kGpt2;
    bool ignore_merges = false;

    // SentencePiece BPE only.
    std::vector<PieceKind> piece_kinds;  // by id (missing ids: kOther)
    std::vector<float> scores;           // by id; empty: `merges` rank the pairs
    SpacePrefix space_prefix = SpacePrefix::kNone;
    bool split_at_every_space = false;  // HF Metaspace(split=true)
};

class Tokenizer {
   public:
    // Throws std::invalid_argument naming the problem (unknown merge token, id out of range, ...).
    explicit Tokenizer(const TokenizerSpec& spec);

    // Appends the ids of UTF-8 `text` to out. With allow_special, special added tokens in the
    // text map to their ids; without it they are ordinary text.
    void encode(std::string_view text, bool allow_special, std::vector<uint32_t>& out) const;

    // The pieces the model encodes one by one (added tokens not matched): the pre-tokenizer's
    // (byte-level BPE), or the independent chunks of the text with spaces escaped (SentencePiece).
    std::vector<std::string> pre_tokenize(std::string_view text) const;

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
    void build_byte_level(const TokenizerSpec& spec, const std::vector<const std::string*>& strings);
    void build_sentencepiece(const TokenizerSpec& spec, const std::vector<const std::string*>& strings);
    // The merges as (left, right, merged) ids; `id_of` maps token strings to ids.
    template <class IdOf>
    static std::vector<std::array<uint32_t, 3>> resolve_merges(const TokenizerSpec& spec, IdOf id_of);

    // Text between the non-normalized added tokens; at_start: it begins the whole text.
    void encode_segment(std::string_view segment, bool at_start, bool allow_special, PieceCache& cache,
                        std::vector<uint32_t>& out) const;

    TokenizerModel model_;
    PreTokenizer pre_tokenizer_;
    SpacePrefix space_prefix_;
    std::unique_ptr<BytePairEncoder> bpe_;
    std::unique_ptr<SentencePieceEncoder> sentencepiece_;
    // HF matches non-normalized added tokens in the raw text, then normalized ones in the
    // (normalized) text between them.
    AddedTokenMatcher raw_added_;
    AddedTokenMatcher normalized_added_;
    std::string token_bytes_;             // the bytes of every token, back to back
    std::vector<uint32_t> token_offsets_;  // token i is token_bytes_[offsets[i], offsets[i + 1])
    std::vector<bool> present_;
    std::vector<bool> special_;
};

}  // namespace fastllm
