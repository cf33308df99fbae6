// The merge loop both BPE models share: byte-level BPE starts it from one symbol per byte,
// SentencePiece BPE from one per character; both then repeatedly apply the lowest-ranked
// merge among adjacent pairs, the leftmost on ties, until no adjacent pair has one.
#pragma once

#include <cstddef>
#include <cstdint>

#include "hash_maps.h"

namespace fastllm {

// Merges the symbols ids[0, n) in place; returns how many are left. Pairs absent from `merges`
// (and symbols such as kNoSymbolMerges that no pair holds) never merge.
size_t apply_merges(const PairMap& merges, uint32_t* ids, size_t n);

// Up to this many symbols merge by a linear scan over arrays on the stack; longer runs through a heap.
inline constexpr size_t kLinearMergeLimit = 128;

}  // namespace fastllm
