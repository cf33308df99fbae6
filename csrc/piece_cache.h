// A per-thread cache of recently merged pieces: words recur, and a cache hit replaces a dozen
// merge-table probes with one compare. Direct-mapped by the piece's hash, 16384 entries (1.3 MB,
// sized on mixed text: 4096 missed noticeably more); entries belong to one BytePairEncoder (its
// serial), so tokenizers sharing a thread never see each other's results.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "hash_maps.h"

namespace fastllm {

class PieceCache {
   public:
    static constexpr size_t kMaxBytes = 30;  // longer pieces are rare and not cached
    static constexpr size_t kMaxIds = 8;

    // Appends the cached ids of the piece to out; false on a miss.
    bool find(uint32_t owner, const uint8_t* piece, size_t size, uint64_t hash, std::vector<uint32_t>& out) const {
        const Entry& entry = entries_[hash & kMask];
        if (entry.hash != hash || entry.owner != owner || entry.size != size ||
            std::memcmp(entry.bytes, piece, size) != 0) {
            return false;
        }
        for (size_t i = 0; i < entry.count; ++i) out.push_back(entry.ids[i]);
        return true;
    }

    void store(uint32_t owner, const uint8_t* piece, size_t size, uint64_t hash, const uint32_t* ids, size_t count) {
        if (size > kMaxBytes || count > kMaxIds) return;
        Entry& entry = entries_[hash & kMask];
        entry.hash = hash;
        entry.owner = owner;
        entry.size = static_cast<uint8_t>(size);
        entry.count = static_cast<uint8_t>(count);
        std::memcpy(entry.bytes, piece, size);
        if (count > 0) std::memcpy(entry.ids, ids, count * sizeof(uint32_t));  // ids may be null when empty
    }

    // This thread's cache.
    static PieceCache& local() {
        thread_local std::unique_ptr<PieceCache> cache = std::make_unique<PieceCache>();
        return *cache;
    }

   private:
    static constexpr size_t kEntries = 16384;
    static constexpr size_t kMask = kEntries - 1;

    struct Entry {
        uint64_t hash = 0;
        uint32_t owner = 0;  // 0: empty (encoder serials start at 1)
        uint8_t size = 0;
        uint8_t count = 0;
        uint8_t bytes[kMaxBytes];
        uint32_t ids[kMaxIds];
    };
    std::vector<Entry> entries_ = std::vector<Entry>(kEntries);
};

// The encode path of both BPE models: a piece that is one token is looked up whole, a recent
// piece comes from the thread's cache, the rest are merged (merge(piece, size, out) appends the
// ids) and cached under `owner`, the encoder's serial.
template <class Merge>
inline void encode_piece(const BytesMap& single_tokens, uint32_t owner, const uint8_t* piece, size_t size,
                         PieceCache& cache, std::vector<uint32_t>& out, Merge merge) {
    const uint64_t hash = hash_bytes(piece, size);
    const uint32_t whole = single_tokens.get(piece, size, hash);
    if (whole != BytesMap::kMissing) {
        out.push_back(whole);
        return;
    }
    if (cache.find(owner, piece, size, hash, out)) return;
    const size_t begin = out.size();
    merge(piece, size, out);
    cache.store(owner, piece, size, hash, out.data() + begin, out.size() - begin);
}

// Serials for encoders, so that entries of one never answer for another (0 marks an empty entry).
uint32_t next_encoder_serial();

}  // namespace fastllm
