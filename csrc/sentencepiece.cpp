#include "sentencepiece.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>

#include "merge_loop.h"
#include "unicode.h"

namespace fastllm {

namespace sentencepiece_detail {

uint32_t code_point_before(const uint8_t* data, size_t end) {
    size_t start = end - 1;
    while (start > 0 && end - start < 4 && unicode::is_continuation(data[start])) --start;
    const unicode::Char c = unicode::decode(data + start, data + end);
    return c.size == end - start ? c.code_point : 0xFFFD;
}

}  // namespace sentencepiece_detail

namespace {

size_t char_size(std::string_view text, size_t i) {
    const auto* p = reinterpret_cast<const uint8_t*>(text.data());
    return unicode::decode(p + i, p + text.size()).size;
}

}  // namespace

void escape_spaces(std::string_view text, bool prefix, std::string& out) {
    out.clear();
    out.reserve(text.size() + text.size() / 3 + kSpaceMark.size());
    if (prefix) out += kSpaceMark;
    size_t begin = 0;
    while (begin < text.size()) {
        const void* hit = std::memchr(text.data() + begin, ' ', text.size() - begin);
        if (!hit) break;
        const size_t space = static_cast<size_t>(static_cast<const char*>(hit) - text.data());
        out.append(text.data() + begin, space - begin);
        out += kSpaceMark;
        begin = space + 1;
    }
    out.append(text.data() + begin, text.size() - begin);
}

SentencePieceEncoder::SentencePieceEncoder(const SentencePieceModel& model)
    : serial_(next_encoder_serial()),
      first_orphan_(static_cast<uint32_t>(model.vocab_size)),
      joins_before_space_((unicode::kMaxCodePoint >> 6) + 1, 0),
      split_at_every_space_(model.split_at_every_space),
      byte_ids_(model.byte_ids),
      unknown_id_(model.unknown_id),
      fuse_unknown_(model.fuse_unknown) {
    if (model.vocab_size >= kUnknownSymbol / 2) throw std::invalid_argument("the vocabulary has too many tokens");
    if (!model.scores.empty() && model.scores.size() != model.pieces.size()) {
        throw std::invalid_argument("the vocabulary has " + std::to_string(model.pieces.size()) + " pieces but " +
                                    std::to_string(model.scores.size()) + " scores");
    }
    symbol_length_.assign(model.vocab_size, 0);
    ascii_symbols_.fill(kUnknownSymbol);
    BytesMap piece_ids(model.pieces.size());
    for (const auto& [id, text] : model.pieces) {
        if (id >= model.vocab_size) throw std::invalid_argument("piece id " + std::to_string(id) + " is out of range");
        if (text.empty()) continue;  // matches nothing
        piece_ids.set(text, id);
        symbol_length_[id] = static_cast<uint32_t>(text.size());
        if (text.size() == 1 && static_cast<uint8_t>(text[0]) < 0x80) {
            ascii_symbols_[static_cast<uint8_t>(text[0])] = id;
        } else if (char_size(text, 0) == text.size()) {
            char_symbols_.set(text, id);
        }
        const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
        for (size_t at = text.find(kSpaceMark, 1); at != std::string::npos; at = text.find(kSpaceMark, at + 1)) {
            const uint32_t c = sentencepiece_detail::code_point_before(bytes, at);
            joins_before_space_[c >> 6] |= uint64_t(1) << (c & 63);
        }
    }
    if (!model.scores.empty()) {
        add_merges_by_score(model, piece_ids);
    } else {
        merges_.reset(model.merges.size());
        for (size_t rank = 0; rank < model.merges.size(); ++rank) {
            const auto& [left, right, merged] = model.merges[rank];
            for (const uint32_t id : {left, right, merged}) {
                if (id >= model.vocab_size || symbol_length_[id] == 0) {
                    throw std::invalid_argument("merge " + std::to_string(rank) + " uses token " + std::to_string(id) +
                                                ", which is not a piece of the vocabulary");
                }
            }
            merges_.set(left, right, PairMap::Merge{static_cast<uint32_t>(rank), merged});
        }
    }
    // A chunk that is itself a piece is taken whole only where merging produces that piece.
    single_tokens_.reset(model.pieces.size());
    std::vector<uint32_t> ids;
    for (const auto& [id, text] : model.pieces) {
        if (text.empty() || piece_ids.get(text) != id) continue;
        ids.clear();
        merge(reinterpret_cast<const uint8_t*>(text.data()), text.size(), ids);
        if (ids.size() == 1 && ids[0] == id) single_tokens_.set(text, id);
    }
}

// SentencePiece's rule as ranked pairs: every split of a piece into two symbols is a pair that
// merges into it, ranked by the piece's score (highest first; equal scores share a rank, so the
// merge loop takes the leftmost). A half may be a single character that is no piece itself: it
// still starts as a symbol of its own, so it gets a symbol id past the vocabulary.
void SentencePieceEncoder::add_merges_by_score(const SentencePieceModel& model, const BytesMap& piece_ids) {
    const auto key = [](float score) { return std::isnan(score) ? -std::numeric_limits<float>::infinity() : score; };
    std::vector<float> distinct;
    distinct.reserve(model.scores.size());
    for (const float score : model.scores) distinct.push_back(key(score));
    std::sort(distinct.begin(), distinct.end(), std::greater<float>());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());

    const auto symbol_of = [&](std::string_view text) -> uint32_t {
        const uint32_t id = piece_ids.get(text);
        if (id != BytesMap::kMissing) return id;
        return char_size(text, 0) == text.size() ? orphan_symbol(text) : BytesMap::kMissing;
    };
    struct Pair {
        uint32_t left, right, rank, merged;
    };
    std::vector<Pair> pairs;
    for (size_t p = 0; p < model.pieces.size(); ++p) {
        const auto& [id, text] = model.pieces[p];
        if (text.empty() || piece_ids.get(text) != id) continue;  // of repeated texts, the last id is the piece
        const auto rank = static_cast<uint32_t>(
            std::lower_bound(distinct.begin(), distinct.end(), key(model.scores[p]), std::greater<float>()) -
            distinct.begin());
        const std::string_view whole = text;
        for (size_t cut = char_size(whole, 0); cut < whole.size(); cut += char_size(whole, cut)) {
            const uint32_t left = symbol_of(whole.substr(0, cut));
            if (left == BytesMap::kMissing) continue;
            const uint32_t right = symbol_of(whole.substr(cut));
            if (right != BytesMap::kMissing) pairs.push_back(Pair{left, right, rank, id});
        }
    }
    merges_.reset(pairs.size());
    for (const Pair& pair : pairs) merges_.set(pair.left, pair.right, PairMap::Merge{pair.rank, pair.merged});
}

uint32_t SentencePieceEncoder::orphan_symbol(std::string_view character) {
    const auto first = static_cast<uint8_t>(character[0]);
    const bool ascii = character.size() == 1 && first < 0x80;
    const uint32_t known = ascii ? ascii_symbols_[first] : char_symbols_.get(character);
    if (known != kUnknownSymbol && known != BytesMap::kMissing) return known;
    const auto symbol = static_cast<uint32_t>(symbol_length_.size());
    symbol_length_.push_back(static_cast<uint32_t>(character.size()));
    if (ascii) {
        ascii_symbols_[first] = symbol;
    } else {
        char_symbols_.set(character, symbol);
    }
    return symbol;
}

void SentencePieceEncoder::encode(std::string_view text, PieceCache& cache, std::vector<uint32_t>& out) const {
    const auto* data = reinterpret_cast<const uint8_t*>(text.data());
    for_each_chunk(text, [&](size_t begin, size_t end) {
        encode_piece(single_tokens_, serial_, data + begin, end - begin, cache, out,
                     [this](const uint8_t* chunk, size_t size, std::vector<uint32_t>& ids) { merge(chunk, size, ids); });
    });
}

size_t SentencePieceEncoder::initial_symbols(const uint8_t* chunk, size_t size, uint32_t* ids) const {
    size_t n = 0;
    for (size_t i = 0; i < size;) {
        if (chunk[i] < 0x80) {
            ids[n++] = ascii_symbols_[chunk[i]];
            ++i;
            continue;
        }
        const unicode::Char c = unicode::decode(chunk + i, chunk + size);
        const uint32_t id = char_symbols_.get(chunk + i, c.size);
        ids[n++] = id == BytesMap::kMissing ? kUnknownSymbol : id;
        i += c.size;
    }
    return n;
}

void SentencePieceEncoder::merge(const uint8_t* chunk, size_t size, std::vector<uint32_t>& out) const {
    const size_t begin = out.size();
    out.resize(begin + size);  // at most one symbol per byte
    uint32_t* symbols = out.data() + begin;
    const size_t count = apply_merges(merges_, symbols, initial_symbols(chunk, size, symbols));
    if (std::all_of(symbols, symbols + count, [this](uint32_t s) { return s < first_orphan_; })) {
        out.resize(begin + count);
        return;
    }
    const std::vector<uint32_t> merged(symbols, symbols + count);
    out.resize(begin);
    write_symbols(chunk, size, merged.data(), count, out);
}

void SentencePieceEncoder::write_symbols(const uint8_t* chunk, size_t size, const uint32_t* symbols, size_t count,
                                         std::vector<uint32_t>& out) const {
    size_t cursor = 0;
    bool after_unknown = false;
    for (size_t k = 0; k < count; ++k) {
        const uint32_t symbol = symbols[k];
        if (symbol < first_orphan_) {
            out.push_back(symbol);
            cursor += symbol_length_[symbol];
            after_unknown = false;
            continue;
        }
        const size_t length =
            symbol == kUnknownSymbol ? unicode::decode(chunk + cursor, chunk + size).size : symbol_length_[symbol];
        const bool has_bytes =
            std::all_of(chunk + cursor, chunk + cursor + length, [this](uint8_t b) { return byte_ids_[b] != BytesMap::kMissing; });
        if (has_bytes) {
            for (size_t j = 0; j < length; ++j) out.push_back(byte_ids_[chunk[cursor + j]]);
            after_unknown = false;
        } else if (unknown_id_) {
            if (!(fuse_unknown_ && after_unknown)) out.push_back(*unknown_id_);
            after_unknown = true;
        }
        cursor += length;
    }
}

}  // namespace fastllm
