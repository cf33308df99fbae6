#include "merge_loop.h"

#include <functional>
#include <queue>
#include <stdexcept>
#include <vector>

namespace fastllm {
namespace {

// Short runs: arrays of symbols and of the merge of each adjacent pair; each step finds the
// lowest rank by a scan and closes the gap. Quadratic, but the arrays stay in L1.
size_t merge_linear(const PairMap& merges, uint32_t* ids, size_t n) {
    PairMap::Merge pairs[kLinearMergeLimit];  // pairs[i]: merge of (ids[i], ids[i + 1])
    for (size_t i = 0; i + 1 < n; ++i) pairs[i] = merges.get(ids[i], ids[i + 1]);
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
        if (best > 0) pairs[best - 1] = merges.get(ids[best - 1], ids[best]);
        if (best + 1 < n) pairs[best] = merges.get(ids[best], ids[best + 1]);
    }
    return n;
}

// Long runs: a doubly linked list of symbols and a min-heap of candidate merges keyed by
// (rank, position); entries made stale by earlier merges are skipped when popped.
size_t merge_heap(const PairMap& merges, uint32_t* ids, size_t n) {
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
    if (n >= kNone) throw std::length_error("a pre-tokenized piece of 4 GiB or more cannot be encoded");
    std::vector<Symbol> symbols(n);
    for (size_t i = 0; i < n; ++i) {
        symbols[i] = Symbol{ids[i], i == 0 ? kNone : uint32_t(i - 1), i + 1 == n ? kNone : uint32_t(i + 1)};
    }
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    const auto push = [&](uint32_t position) {
        const uint32_t next = symbols[position].next;
        if (next == kNone) return;
        const PairMap::Merge merge = merges.get(symbols[position].id, symbols[next].id);
        if (merge.rank != PairMap::kNoRank) heap.push(Candidate{merge.rank, position});
    };
    for (uint32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
        const Candidate top = heap.top();
        heap.pop();
        Symbol& left = symbols[top.position];
        if (left.id == kNone || left.next == kNone) continue;  // merged away, or now the last
        const PairMap::Merge merge = merges.get(left.id, symbols[left.next].id);
        if (merge.rank != top.rank) continue;  // the pair changed since this entry was pushed
        Symbol& right = symbols[left.next];
        left.id = merge.merged;
        left.next = right.next;
        if (right.next != kNone) symbols[right.next].prev = top.position;
        right.id = kNone;
        if (left.prev != kNone) push(left.prev);
        push(top.position);
    }
    size_t count = 0;
    for (uint32_t i = 0; i != kNone; i = symbols[i].next) ids[count++] = symbols[i].id;
    return count;
}

}  // namespace

size_t apply_merges(const PairMap& merges, uint32_t* ids, size_t n) {
    if (n < 2) return n;
    return n <= kLinearMergeLimit ? merge_linear(merges, ids, n) : merge_heap(merges, ids, n);
}

}  // namespace fastllm
