#include "bpe.h"

#include <algorithm>
#include <atomic>

#include "merge_loop.h"

namespace fastllm {

uint32_t next_encoder_serial() {
    static std::atomic<uint32_t> next{1};
    return next++;
}

BytePairEncoder::BytePairEncoder(const std::vector<std::pair<uint32_t, std::string>>& encodable_tokens,
                                 const std::vector<std::array<uint32_t, 3>>& merges, bool ignore_merges,
                                 std::optional<uint32_t> unknown_id, bool fuse_unknown)
    : serial_(next_encoder_serial()), unknown_id_(unknown_id), fuse_unknown_(fuse_unknown) {
    BytesMap vocab(encodable_tokens.size());
    for (const auto& [id, bytes] : encodable_tokens) vocab.set(bytes, id);
    for (size_t b = 0; b < 256; ++b) {
        const uint8_t byte = static_cast<uint8_t>(b);
        byte_tokens_[b] = vocab.get(&byte, 1);
    }
    merges_.reset(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const auto& [left, right, merged] = merges[rank];
        merges_.set(left, right, PairMap::Merge{static_cast<uint32_t>(rank), merged});
    }
    // A whole piece found in the vocabulary is taken as is only where the merges would produce
    // that same single token (always, with ignore_merges): then the shortcut cannot change ids.
    single_tokens_.reset(vocab.size());
    std::vector<uint32_t> ids;
    vocab.for_each([&](std::string_view bytes, uint32_t id) {
        if (!ignore_merges) {
            ids.clear();
            merge(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), ids);
            if (ids.size() != 1 || ids[0] != id) return;
        }
        single_tokens_.set(bytes, id);
    });
}

size_t BytePairEncoder::initial_symbols(const uint8_t* piece, size_t size, uint32_t* ids) const {
    size_t n = 0;
    bool after_unknown = false;
    for (size_t i = 0; i < size; ++i) {
        const uint32_t id = byte_tokens_[piece[i]];
        if (id != BytesMap::kMissing) {
            ids[n++] = id;
            after_unknown = false;
        } else if (unknown_id_ && !(fuse_unknown_ && after_unknown)) {
            ids[n++] = *unknown_id_;
            after_unknown = true;
        }
    }
    return n;
}

void BytePairEncoder::encode(const uint8_t* piece, size_t size, PieceCache& cache, std::vector<uint32_t>& out) const {
    if (size == 1 && byte_tokens_[piece[0]] != BytesMap::kMissing) {
        out.push_back(byte_tokens_[piece[0]]);
        return;
    }
    encode_piece(single_tokens_, serial_, piece, size, cache, out,
                 [this](const uint8_t* p, size_t n, std::vector<uint32_t>& ids) { merge(p, n, ids); });
}

void BytePairEncoder::merge(const uint8_t* piece, size_t size, std::vector<uint32_t>& out) const {
    const size_t begin = out.size();
    out.resize(begin + size);  // at most one symbol per byte
    const size_t n = initial_symbols(piece, size, out.data() + begin);
    out.resize(begin + apply_merges(merges_, out.data() + begin, n));
}

}  // namespace fastllm
