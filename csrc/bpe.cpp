#include "bpe.h"

#include <algorithm>
#include <atomic>
#include <queue>
#include <stdexcept>

namespace fastllm {
namespace {
std::atomic<uint32_t> next_serial{1};
}  // namespace

BytePairEncoder::BytePairEncoder(const std::vector<std::pair<uint32_t, std::string>>& encodable_tokens,
                                 const std::vector<std::array<uint32_t, 3>>& merges, bool ignore_merges,
                                 std::optional<uint32_t> unknown_id, bool fuse_unknown)
    : serial_(next_serial++), unknown_id_(unknown_id), fuse_unknown_(fuse_unknown) {
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
    const uint64_t hash = hash_bytes(piece, size);
    const uint32_t whole = single_tokens_.get(piece, size, hash);
    if (whole != BytesMap::kMissing) {
        out.push_back(whole);
        return;
    }
    if (cache.find(serial_, piece, size, hash, out)) return;
    const size_t begin = out.size();
    merge(piece, size, out);
    cache.store(serial_, piece, size, hash, out.data() + begin, out.size() - begin);
}

void BytePairEncoder::merge(const uint8_t* piece, size_t size, std::vector<uint32_t>& out) const {
    if (size <= kLinearLimit) {
        merge_linear(piece, size, out);
    } else {
        merge_heap(piece, size, out);
    }
}

// Short pieces: arrays of symbols and of the merge of each adjacent pair; each step finds the
// lowest rank by a scan and closes the gap. Quadratic, but the arrays stay in L1.
void BytePairEncoder::merge_linear(const uint8_t* piece, size_t size, std::vector<uint32_t>& out) const {
    uint32_t ids[kLinearLimit];
    PairMap::Merge pairs[kLinearLimit];  // pairs[i]: merge of (ids[i], ids[i + 1])
    size_t n = initial_symbols(piece, size, ids);
    for (size_t i = 0; i + 1 < n; ++i) pairs[i] = merges_.get(ids[i], ids[i + 1]);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; ++i) {
            if (pairs[i].rank < pairs[best].rank) best = i;
        }
        if (pairs[best].rank == PairMap::kNoRank) break;
        // ids[best + 1] merged into ids[best]: close the gap, and drop the pair it began.
        ids[best] = pairs[best].merged;
        --n;
        for (size_t i = best + 1; i < n; ++i) ids[i] = ids[i + 1];
        for (size_t i = best + 1; i + 1 < n; ++i) pairs[i] = pairs[i + 1];
        if (best > 0) pairs[best - 1] = merges_.get(ids[best - 1], ids[best]);
        if (best + 1 < n) pairs[best] = merges_.get(ids[best], ids[best + 1]);
    }
    for (size_t i = 0; i < n; ++i) out.push_back(ids[i]);
}

// Long pieces: a doubly linked list of symbols and a min-heap of candidate merges keyed by
// (rank, position); entries made stale by earlier merges are skipped when popped.
void BytePairEncoder::merge_heap(const uint8_t* piece, size_t size, std::vector<uint32_t>& out) const {
    constexpr uint32_t kNone = UINT32_MAX;
    struct Symbol {
        uint32_t id;
        uint32_t prev;
        uint32_t next;
    };
    struct Candidate {
        uint32_t rank;
        uint32_t position;
        bool operator>(const Candidate& other) const {
            return rank != other.rank ? rank > other.rank : position > other.position;
        }
    };
    if (size >= kNone) throw std::length_error("a pre-tokenized piece of 4 GiB or more cannot be encoded");
    std::vector<uint32_t> ids(size);
    const size_t n = initial_symbols(piece, size, ids.data());
    if (n == 0) return;
    std::vector<Symbol> symbols(n);
    for (size_t i = 0; i < n; ++i) {
        symbols[i] = Symbol{ids[i], i == 0 ? kNone : uint32_t(i - 1), i + 1 == n ? kNone : uint32_t(i + 1)};
    }
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    const auto push = [&](uint32_t position) {
        const uint32_t next = symbols[position].next;
        if (next == kNone) return;
        const PairMap::Merge merge = merges_.get(symbols[position].id, symbols[next].id);
        if (merge.rank != PairMap::kNoRank) heap.push(Candidate{merge.rank, position});
    };
    for (uint32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
        const Candidate top = heap.top();
        heap.pop();
        Symbol& left = symbols[top.position];
        if (left.id == kNone || left.next == kNone) continue;  // merged away, or now the last
        const PairMap::Merge merge = merges_.get(left.id, symbols[left.next].id);
        if (merge.rank != top.rank) continue;  // the pair changed since this entry was pushed
        Symbol& right = symbols[left.next];
        left.id = merge.merged;
        left.next = right.next;
        if (right.next != kNone) symbols[right.next].prev = top.position;
        right.id = kNone;
        if (left.prev != kNone) push(left.prev);
        push(top.position);
    }
    for (uint32_t i = 0; i != kNone; i = symbols[i].next) out.push_back(symbols[i].id);
}

}  // namespace fastllm
