#include "tokenizer.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "byte_level.h"

namespace fastllm {
namespace {

std::string describe_id(uint64_t id, size_t vocab_size) {
    return "token id " + std::to_string(id) + " is not in the vocabulary (valid ids: 0.." +
           std::to_string(vocab_size - 1) + ")";
}

// The byte of a "<0xNN>" token (HF ByteFallback reads either case of hex digit), or -1.
int fallback_byte(std::string_view token) {
    if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
    const auto digit = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    const int high = digit(token[3]), low = digit(token[4]);
    return high < 0 || low < 0 ? -1 : high * 16 + low;
}

// Calls leaf(text) for each stretch of text between the added tokens that `matcher` finds, and
// appends those tokens' ids in between. A special token that is not allowed stays text (as HF
// with encode_special_tokens).
template <class Leaf>
void split_added(const AddedTokenMatcher& matcher, std::string_view text, bool allow_special,
                 std::vector<uint32_t>& out, Leaf leaf) {
    size_t text_begin = 0;  // start of the text not yet encoded
    AddedTokenMatcher::Match match;
    for (size_t from = 0; matcher.find(text, from, match); from = match.end) {
        if (match.token->special && !allow_special) continue;
        if (match.begin > text_begin) leaf(text.substr(text_begin, match.begin - text_begin));
        out.push_back(match.token->id);
        text_begin = match.end;
    }
    if (text_begin < text.size()) leaf(text.substr(text_begin));
}

}  // namespace

Tokenizer::Tokenizer(const TokenizerSpec& spec)
    : model_(spec.model), pre_tokenizer_(spec.pre_tokenizer), space_prefix_(spec.space_prefix) {
    size_t size = spec.tokens.size();
    for (const AddedToken& token : spec.added_tokens) size = std::max<size_t>(size, size_t(token.id) + 1);
    if (size == 0) throw std::invalid_argument("the vocabulary is empty");
    if (size >= UINT32_MAX / 2) throw std::invalid_argument("the vocabulary has too many tokens");

    // Token strings: the vocabulary's, then the added tokens' contents for their ids.
    std::vector<const std::string*> strings(size, nullptr);
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
        if (spec.tokens[id]) strings[id] = &*spec.tokens[id];
    }
    present_.assign(size, false);
    special_.assign(size, false);
    for (const AddedToken& token : spec.added_tokens) {
        if (!strings[token.id]) strings[token.id] = &token.content;
        special_[token.id] = token.special;
    }
    for (size_t id = 0; id < size; ++id) present_[id] = strings[id] != nullptr;
    if (spec.unknown_id && !has_token(*spec.unknown_id)) {
        throw std::invalid_argument("unknown token: " + describe_id(*spec.unknown_id, size));
    }

    if (model_ == TokenizerModel::kByteLevelBpe) {
        build_byte_level(spec, strings);
    } else {
        build_sentencepiece(spec, strings);
    }
    if (token_bytes_.size() >= UINT32_MAX) throw std::invalid_argument("the vocabulary's tokens are too long");

    std::vector<AddedToken> raw, normalized;
    for (const AddedToken& token : spec.added_tokens) (token.normalized ? normalized : raw).push_back(token);
    raw_added_ = AddedTokenMatcher(std::move(raw));
    normalized_added_ = AddedTokenMatcher(std::move(normalized));
}

template <class IdOf>
std::vector<std::array<uint32_t, 3>> Tokenizer::resolve_merges(const TokenizerSpec& spec, IdOf id_of) {
    std::vector<std::array<uint32_t, 3>> merges;
    merges.reserve(spec.merges.size());
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
        const auto& [left, right] = spec.merges[rank];
        const auto lookup = [&](const std::string& token) {
            const std::optional<uint32_t> id = id_of(token);
            if (!id) {
                throw std::invalid_argument("merge " + std::to_string(rank) + " ('" + left + " " + right +
                                            "') uses '" + token + "', which is not in the vocabulary");
            }
            return *id;
        };
        merges.push_back({lookup(left), lookup(right), lookup(left + right)});
    }
    return merges;
}

void Tokenizer::build_byte_level(const TokenizerSpec& spec, const std::vector<const std::string*>& strings) {
    // Bytes of each token. Like HF's ByteLevel decoder, a token outside the byte-level alphabet
    // decodes to its own UTF-8; only tokens inside it can come out of BPE.
    std::vector<std::pair<uint32_t, std::string>> encodable;
    std::unordered_map<std::string_view, uint32_t> id_of_string;
    token_offsets_.reserve(strings.size() + 1);
    token_offsets_.push_back(0);
    for (size_t id = 0; id < strings.size(); ++id) {
        if (strings[id]) {
            id_of_string[*strings[id]] = static_cast<uint32_t>(id);
            if (auto bytes = byte_level::decode(*strings[id])) {
                token_bytes_ += *bytes;
                encodable.emplace_back(static_cast<uint32_t>(id), std::move(*bytes));
            } else {
                token_bytes_ += *strings[id];
            }
        }
        token_offsets_.push_back(static_cast<uint32_t>(token_bytes_.size()));
    }
    const auto merges = resolve_merges(spec, [&](const std::string& token) -> std::optional<uint32_t> {
        const auto found = id_of_string.find(token);
        if (found == id_of_string.end()) return std::nullopt;
        return found->second;
    });
    bpe_ = std::make_unique<BytePairEncoder>(encodable, merges, spec.ignore_merges, spec.unknown_id,
                                             spec.fuse_unknown);
}

void Tokenizer::build_sentencepiece(const TokenizerSpec& spec, const std::vector<const std::string*>& strings) {
    if (!spec.scores.empty() && spec.scores.size() != spec.tokens.size()) {
        throw std::invalid_argument("there are " + std::to_string(spec.scores.size()) + " scores for " +
                                    std::to_string(spec.tokens.size()) + " tokens");
    }
    if (!spec.scores.empty() && !spec.merges.empty()) {
        throw std::invalid_argument("a SentencePiece vocabulary is ranked by scores or by merges, not both");
    }
    SentencePieceModel model;
    model.vocab_size = strings.size();
    model.byte_ids.fill(BytesMap::kMissing);
    model.unknown_id = spec.unknown_id;
    model.fuse_unknown = spec.fuse_unknown;
    model.split_at_every_space = spec.split_at_every_space;
    // Decoding: a <0xNN> token is its byte, any other token its text with '▁' read as a space
    // (HF's decoders Replace("▁", " "), ByteFallback, Fuse).
    std::unordered_map<std::string_view, uint32_t> id_of_piece;
    token_offsets_.reserve(strings.size() + 1);
    token_offsets_.push_back(0);
    for (size_t id = 0; id < strings.size(); ++id) {
        const PieceKind kind = id < spec.piece_kinds.size() ? spec.piece_kinds[id] : PieceKind::kOther;
        if (strings[id]) {
            const std::string& text = *strings[id];
            const int byte = kind == PieceKind::kByte ? fallback_byte(text) : -1;
            if (kind == PieceKind::kByte && byte < 0) {
                throw std::invalid_argument("byte token " + std::to_string(id) + " is '" + text + "', not <0xNN>");
            }
            if (byte >= 0) {
                token_bytes_.push_back(static_cast<char>(byte));
                model.byte_ids[byte] = static_cast<uint32_t>(id);
            } else {
                for (size_t at = 0; at < text.size();) {
                    const size_t mark = text.find(kSpaceMark, at);
                    token_bytes_.append(text, at, (mark == std::string::npos ? text.size() : mark) - at);
                    if (mark == std::string::npos) break;
                    token_bytes_.push_back(' ');
                    at = mark + kSpaceMark.size();
                }
            }
            if (kind == PieceKind::kNormal) {
                model.pieces.emplace_back(static_cast<uint32_t>(id), text);
                if (!spec.scores.empty()) model.scores.push_back(spec.scores[id]);
                id_of_piece[text] = static_cast<uint32_t>(id);
            }
        } else if (kind != PieceKind::kOther) {
            throw std::invalid_argument("token " + std::to_string(id) + " has a kind but no text");
        }
        token_offsets_.push_back(static_cast<uint32_t>(token_bytes_.size()));
    }
    model.merges = resolve_merges(spec, [&](const std::string& token) -> std::optional<uint32_t> {
        const auto found = id_of_piece.find(token);
        if (found == id_of_piece.end()) return std::nullopt;
        return found->second;
    });
    sentencepiece_ = std::make_unique<SentencePieceEncoder>(model);
}

void Tokenizer::encode(std::string_view text, bool allow_special, std::vector<uint32_t>& out) const {
    PieceCache& cache = PieceCache::local();
    split_added(raw_added_, text, allow_special, out, [&](std::string_view segment) {
        encode_segment(segment, segment.data() == text.data(), allow_special, cache, out);
    });
}

void Tokenizer::encode_segment(std::string_view segment, bool at_start, bool allow_special, PieceCache& cache,
                               std::vector<uint32_t>& out) const {
    if (model_ == TokenizerModel::kByteLevelBpe) {
        split_added(normalized_added_, segment, allow_special, out, [&](std::string_view piece_text) {
            const auto* data = reinterpret_cast<const uint8_t*>(piece_text.data());
            for_each_piece(pre_tokenizer_, data, piece_text.size(),
                           [&](size_t begin, size_t end) { bpe_->encode(data + begin, end - begin, cache, out); });
        });
        return;
    }
    // One buffer per thread: this is not re-entered on a thread (leaves do not come back here).
    thread_local std::string escaped;
    const bool prefix = space_prefix_ == SpacePrefix::kEverySegment || (space_prefix_ == SpacePrefix::kFirst && at_start);
    escape_spaces(segment, prefix, escaped);
    split_added(normalized_added_, escaped, allow_special, out,
                [&](std::string_view leaf) { sentencepiece_->encode(leaf, cache, out); });
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
    std::vector<std::string> pieces;
    if (model_ == TokenizerModel::kByteLevelBpe) {
        for_each_piece(pre_tokenizer_, reinterpret_cast<const uint8_t*>(text.data()), text.size(),
                       [&](size_t begin, size_t end) { pieces.emplace_back(text.substr(begin, end - begin)); });
        return pieces;
    }
    std::string escaped;
    escape_spaces(text, space_prefix_ != SpacePrefix::kNone && !text.empty(), escaped);
    sentencepiece_->for_each_chunk(escaped, [&](size_t begin, size_t end) { pieces.push_back(escaped.substr(begin, end - begin)); });
    return pieces;
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                           bool allow_special, size_t num_threads) const {
    std::vector<std::vector<uint32_t>> results(texts.size());
    if (num_threads == 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
    num_threads = std::min(num_threads, texts.size());
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    const auto work = [&] {
        try {
            for (size_t i = next++; i < texts.size() && !failed; i = next++) encode(texts[i], allow_special, results[i]);
        } catch (...) {
            if (!failed.exchange(true)) error = std::current_exception();
        }
    };
    std::vector<std::thread> threads;
    for (size_t t = 1; t < num_threads; ++t) {
        try {
            threads.emplace_back(work);
        } catch (const std::exception&) {
            // Out of threads or memory: those running, this one included, share all the work. (Letting
            // the exception out would destroy joinable threads, which aborts the process.)
            break;
        }
    }
    work();
    for (auto& thread : threads) thread.join();
    if (error) std::rethrow_exception(error);
    return results;
}

void Tokenizer::decode(const uint32_t* ids, size_t count, bool skip_special_tokens, std::string& out) const {
    for (size_t i = 0; i < count; ++i) {
        const uint32_t id = ids[i];
        if (!has_token(id)) throw std::invalid_argument(describe_id(id, vocab_size()));
        if (skip_special_tokens && special_[id]) continue;
        out.append(token_bytes_, token_offsets_[id], token_offsets_[id + 1] - token_offsets_[id]);
    }
}

}  // namespace fastllm
