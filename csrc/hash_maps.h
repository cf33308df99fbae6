// Open-addressing hash maps for the two lookups on the encode path: byte strings -> token id
// (whole pieces, and the vocabulary) and token-id pairs -> merge (rank and result).
// Both are built once and then only read, so they need no deletion and no resizing.
#pragma once

#include <cstdint>
#include <cstring>
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

inline size_t table_capacity(size_t entries) {
    size_t capacity = 16;
    while (capacity < entries * 2) capacity <<= 1;  // load factor <= 1/2 keeps probes short
    return capacity;
}

class BytesMap {
   public:
    static constexpr uint32_t kMissing = UINT32_MAX;

    explicit BytesMap(size_t expected = 0) { reset(expected); }

    void reset(size_t expected) {
        slots_.assign(table_capacity(expected), Slot{});
        mask_ = slots_.size() - 1;
        arena_.clear();
        size_ = 0;
    }

    // Inserts or overwrites (the last value for a key wins).
    void set(std::string_view key, uint32_t value) {
        const auto* p = reinterpret_cast<const uint8_t*>(key.data());
        Slot& slot = probe(p, key.size(), hash_bytes(p, key.size()));
        if (slot.value == kMissing) {
            if ((size_ + 1) * 2 > slots_.size()) {
                grow();
                set(key, value);
                return;
            }
            slot.hash = hash_bytes(p, key.size());
            slot.length = static_cast<uint32_t>(key.size());
            slot.packed = key.size() <= 8 ? pack_short(p, key.size()) : 0;
            slot.offset = static_cast<uint32_t>(arena_.size());
            arena_.append(key);
            ++size_;
        }
        slot.value = value;
    }

    uint32_t get(const uint8_t* p, size_t n) const { return get(p, n, hash_bytes(p, n)); }
    // With the key's hash_bytes already at hand.
    uint32_t get(const uint8_t* p, size_t n, uint64_t hash) const { return probe_const(p, n, hash).value; }
    uint32_t get(std::string_view key) const {
        return get(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    }

    size_t size() const { return size_; }

    template <class Visit>
    void for_each(Visit visit) const {
        for (const Slot& slot : slots_) {
            if (slot.value != kMissing) visit(std::string_view(arena_.data() + slot.offset, slot.length), slot.value);
        }
    }

   private:
    struct Slot {
        uint64_t hash = 0;
        uint64_t packed = 0;
        uint32_t offset = 0;
        uint32_t length = 0;
        uint32_t value = kMissing;
    };

    bool matches(const Slot& slot, const uint8_t* p, size_t n, uint64_t hash) const {
        if (slot.hash != hash || slot.length != n) return false;
        if (n <= 8) return slot.packed == pack_short(p, n);
        return std::memcmp(arena_.data() + slot.offset, p, n) == 0;
    }

    const Slot& probe_const(const uint8_t* p, size_t n, uint64_t hash) const {
        for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
            const Slot& slot = slots_[i];
            if (slot.value == kMissing || matches(slot, p, n, hash)) return slot;
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
    size_t size_ = 0;
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
        slots_.assign(table_capacity(expected), Slot{});
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
