// Open-addressing hash maps for the two lookups on the encode path: byte strings -> token id
// (whole pieces, and the vocabulary) and token-id pairs -> merge (rank and result).
// Both are built once and then only read, so they need no deletion and no resizing.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace fastllm {

inline uint64_t mix64(uint64_t x) {
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ULL;
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ULL;
    x ^= x >> 32;
    return x;
}

inline uint32_t load32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

inline uint64_t load64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// Up to 8 bytes packed into one word without reading past them. Together with the length
// the word determines the bytes exactly: 4..8 bytes are covered by two overlapping 4-byte
// loads, 1..3 bytes by their first, middle and last byte.
inline uint64_t pack_short(const uint8_t* p, size_t n) {
    if (n >= 4) return (uint64_t(load32(p)) << 32) | load32(p + n - 4);
    if (n == 0) return 0;
    return uint64_t(p[0]) | (uint64_t(p[n / 2]) << 8) | (uint64_t(p[n - 1]) << 16);
}

// Hash of a byte string; short strings (the common case) hash their packed word.
inline uint64_t hash_bytes(const uint8_t* p, size_t n) {
    if (n <= 8) return mix64(pack_short(p, n) ^ (uint64_t(n) << 59));
    uint64_t h = uint64_t(n) * 0x9E3779B97F4A7C15ULL;
    size_t i = 0;
    for (; i + 8 < n; i += 8) h = (h ^ load64(p + i)) * 0xD6E8FEB86659FD93ULL + (h >> 29);
    return mix64(h ^ load64(p + n - 8));
}

// The smallest power of two (at least 16) that holds `entries` at a load of at most max_load_percent.
inline size_t table_capacity(size_t entries, size_t max_load_percent) {
    size_t capacity = 16;
    while (capacity * max_load_percent < entries * 100) capacity <<= 1;
    return capacity;
}

class BytesMap {
   public:
    static constexpr uint32_t kMissing = UINT32_MAX;

    explicit BytesMap(size_t expected = 0) { reset(expected); }

    void reset(size_t expected) {
        slots_.assign(table_capacity(expected, 50), Slot{});  // a load of at most 1/2 keeps probes short
        mask_ = slots_.size() - 1;
        keys_.clear();
        keys_.reserve(expected);
        arena_.clear();
    }

    // Inserts or overwrites (the last value for a key wins).
    void set(std::string_view key, uint32_t value) {
        const auto* p = reinterpret_cast<const uint8_t*>(key.data());
        const uint64_t hash = hash_bytes(p, key.size());
        Slot& slot = probe(p, key.size(), hash);
        if (slot.value == kMissing) {
            if ((keys_.size() + 1) * 2 > slots_.size()) {
                grow();
                set(key, value);
                return;
            }
            if (keys_.size() >> (32 - kLengthBits)) throw std::length_error("BytesMap: too many keys");
            slot.word = word_of(p, key.size(), hash);
            slot.meta = static_cast<uint32_t>(keys_.size() << kLengthBits) | length_bits(key.size());
            keys_.push_back(Key{static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size())});
            arena_.append(key);
        }
        slot.value = value;
    }

    uint32_t get(const uint8_t* p, size_t n) const { return get(p, n, hash_bytes(p, n)); }
    // With the key's hash_bytes already at hand.
    uint32_t get(const uint8_t* p, size_t n, uint64_t hash) const { return probe_const(p, n, hash).value; }
    uint32_t get(std::string_view key) const {
        return get(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    }

    size_t size() const { return keys_.size(); }

    template <class Visit>
    void for_each(Visit visit) const {
        for (const Slot& slot : slots_) {
            if (slot.value != kMissing) visit(bytes_of(slot), slot.value);
        }
    }

   private:
    // 16 bytes, so that the table of a 49k vocabulary is 2 MiB: a key's word (its bytes packed
    // when there are at most 8, which with its length determine them; else its hash), its value,
    // and `meta`: the key's index in keys_ (where its bytes are in arena_) above kLengthBits of
    // its length (kLongKey for longer ones). A short key matches without leaving the slot.
    static constexpr unsigned kLengthBits = 5;
    static constexpr uint32_t kLongKey = (1u << kLengthBits) - 1;
    struct Slot {
        uint64_t word = 0;
        uint32_t value = kMissing;
        uint32_t meta = 0;
    };
    struct Key {
        uint32_t offset;
        uint32_t length;
    };

    static uint64_t word_of(const uint8_t* p, size_t n, uint64_t hash) { return n <= 8 ? pack_short(p, n) : hash; }
    static uint32_t length_bits(size_t n) { return n < kLongKey ? static_cast<uint32_t>(n) : kLongKey; }

    std::string_view bytes_of(const Slot& slot) const {
        const Key& key = keys_[slot.meta >> kLengthBits];
        return std::string_view(arena_.data() + key.offset, key.length);
    }

    bool matches(const Slot& slot, const uint8_t* p, size_t n, uint64_t word) const {
        if (slot.word != word || (slot.meta & kLongKey) != length_bits(n)) return false;
        if (n <= 8) return true;
        const std::string_view bytes = bytes_of(slot);
        return bytes.size() == n && std::memcmp(bytes.data(), p, n) == 0;
    }

    const Slot& probe_const(const uint8_t* p, size_t n, uint64_t hash) const {
        const uint64_t word = word_of(p, n, hash);
        for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
            const Slot& slot = slots_[i];
            if (slot.value == kMissing || matches(slot, p, n, word)) return slot;
        }
    }

    Slot& probe(const uint8_t* p, size_t n, uint64_t hash) { return const_cast<Slot&>(probe_const(p, n, hash)); }

    void grow() {
        std::vector<std::pair<std::string, uint32_t>> entries;
        for_each([&](std::string_view key, uint32_t value) { entries.emplace_back(std::string(key), value); });
        reset(entries.size() * 2);
        for (const auto& [key, value] : entries) set(key, value);
    }

    std::vector<Slot> slots_;
    size_t mask_ = 0;
    std::vector<Key> keys_;
    std::string arena_;
};

// (left id, right id) -> (merge rank, merged id).
class PairMap {
   public:
    struct Merge {
        uint32_t rank;
        uint32_t merged;
    };
    static constexpr uint32_t kNoRank = UINT32_MAX;

    void reset(size_t expected) {
        // Up to 3/4 full, not the BytesMaps' 1/2: half the memory for a 49k-merge vocabulary
        // (1 MiB), at a small cost to text that misses the piece cache (benchmarks/README.md).
        slots_.assign(table_capacity(expected, 75), Slot{});
        shift_ = 64;
        for (size_t c = slots_.size(); c > 1; c >>= 1) --shift_;
        mask_ = slots_.size() - 1;
    }

    // Inserts or overwrites (the last merge listed for a pair wins, as in HF tokenizers).
    void set(uint32_t left, uint32_t right, Merge merge) {
        const uint64_t key = pack(left, right);
        for (size_t i = index(key);; i = (i + 1) & mask_) {
            Slot& slot = slots_[i];
            if (slot.key == key || slot.key == kEmpty) {
                slot.key = key;
                slot.merge = merge;
                return;
            }
        }
    }

    // The merge of the pair, or rank kNoRank.
    Merge get(uint32_t left, uint32_t right) const {
        const uint64_t key = pack(left, right);
        for (size_t i = index(key);; i = (i + 1) & mask_) {
            const Slot& slot = slots_[i];
            if (slot.key == key) return slot.merge;
            if (slot.key == kEmpty) return Merge{kNoRank, 0};
        }
    }

   private:
    static constexpr uint64_t kEmpty = UINT64_MAX;
    struct Slot {
        uint64_t key = kEmpty;
        Merge merge{kNoRank, 0};
    };

    static uint64_t pack(uint32_t left, uint32_t right) { return (uint64_t(left) << 32) | right; }
    size_t index(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ULL) >> shift_; }

    std::vector<Slot> slots_;
    size_t mask_ = 0;
    unsigned shift_ = 64;
};

}  // namespace fastllm
