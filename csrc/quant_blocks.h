// GGUF weight encodings: ggml's block layouts, and a scalar decoder per type that computes every
// value with the float32 operations `gguf.quants.dequantize` does, in its order (a * b + c is two
// roundings: this header must be compiled without floating-point contraction, which ISO C++ mode
// and -ffp-contract=off give). The vector kernels (cpu_quant_kernels.inc) decode the same way; the
// C++ tests hold them to this decoder bit for bit, the Python tests hold both to gguf.
#pragma once

#include <cstdint>
#include <cstring>

namespace fastllm::cpu::quant {

// ggml type ids (gguf.GGMLQuantizationType).
enum Type : int {
    kF32 = 0,
    kF16 = 1,
    kQ4_0 = 2,
    kQ4_1 = 3,
    kQ5_0 = 6,
    kQ5_1 = 7,
    kQ8_0 = 8,
    kQ4_K = 12,
    kQ5_K = 13,
    kQ6_K = 14,
    kBF16 = 30,
};

inline constexpr int kTypes[] = {kF32, kF16, kBF16, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kQ4_K, kQ5_K, kQ6_K};

// A block: `values` consecutive weights of a row stored in `bytes` bytes (gguf's GGML_QUANT_SIZES).
struct BlockFormat {
    int64_t values;
    int64_t bytes;
    const char* name;
};

// {0, 0, nullptr} for a type this header does not decode.
constexpr BlockFormat block_format(int type) {
    switch (type) {
        case kF32: return {1, 4, "F32"};
        case kF16: return {1, 2, "F16"};
        case kBF16: return {1, 2, "BF16"};
        case kQ4_0: return {32, 18, "Q4_0"};
        case kQ4_1: return {32, 20, "Q4_1"};
        case kQ5_0: return {32, 22, "Q5_0"};
        case kQ5_1: return {32, 24, "Q5_1"};
        case kQ8_0: return {32, 34, "Q8_0"};
        case kQ4_K: return {256, 144, "Q4_K"};
        case kQ5_K: return {256, 176, "Q5_K"};
        case kQ6_K: return {256, 210, "Q6_K"};
        default: return {0, 0, nullptr};
    }
}

constexpr bool is_supported(int type) { return block_format(type).values != 0; }

// Byte offsets inside a block (ggml's block_q4_0, block_q4_1, block_q5_0, block_q5_1, block_q8_0,
// block_q4_K, block_q5_K, block_q6_K; "f16" fields are IEEE half floats, little-endian like
// everything here).
namespace layout {
inline constexpr int kQ4_0Scale = 0, kQ4_0Quants = 2;                     // d; 16 bytes, two 4-bit values each
inline constexpr int kQ4_1Scale = 0, kQ4_1Min = 2, kQ4_1Quants = 4;       // d, m; 16 bytes of nibbles
// d; 32 fifth bits (bit j of a little-endian uint32 for value j); 16 bytes of nibbles as Q4_0's
inline constexpr int kQ5_0Scale = 0, kQ5_0HighBits = 2, kQ5_0Quants = 6;
inline constexpr int kQ5_1Scale = 0, kQ5_1Min = 2, kQ5_1HighBits = 4, kQ5_1Quants = 8;  // d, m; as Q5_0
inline constexpr int kQ8_0Scale = 0, kQ8_0Quants = 2;                     // d; 32 int8
inline constexpr int kKScale = 0, kKMin = 2, kKScales = 4;                // Q4_K, Q5_K: d, dmin; 12 bytes of 6-bit pairs
inline constexpr int kQ4_KQuants = 16;                                    // 128 bytes of nibbles
inline constexpr int kQ5_KHighBits = 16, kQ5_KQuants = 48;                // 32 bytes of fifth bits; 128 of nibbles
inline constexpr int kQ6_KLow = 0, kQ6_KHigh = 128, kQ6_KScales = 192, kQ6_KScale = 208;  // 128 + 64 + 16 int8 + d
}  // namespace layout

inline uint16_t read_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline float bits_to_float(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// IEEE half -> float, exactly as numpy's astype(float32): subnormals exact, NaN payloads kept
// (a signaling NaN stays signaling).
inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
    // Zero or subnormal: mantissa * 2^-24, exact (a 10-bit integer times a power of two).
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    uint32_t bits;
    std::memcpy(&bits, &magnitude, sizeof bits);
    return bits_to_float(sign | bits);
}

inline float half_at(const uint8_t* p) { return half_to_float(read_u16(p)); }

inline uint32_t read_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Q5_0 / Q5_1 code j (0..31) of a block: its nibble, and bit j of the high bits as bit 4.
inline int q5_code(const uint8_t* quants, uint32_t high_bits, int j) {
    const int nibble = j < 16 ? quants[j] & 0x0f : quants[j - 16] >> 4;
    return nibble | static_cast<int>(((high_bits >> j) & 1u) << 4);
}

// The 6-bit scales and mins of a Q4_K / Q5_K block's 8 sub-blocks (ggml's get_scale_min_k4):
// sub-block j < 4 has them in the low six bits of bytes j and j + 4; above, four bits in byte
// j + 4 and two in bytes j - 4 / j. Unpacked four at a time in 32-bit words, as llama.cpp does.
inline void k_scales_and_mins(const uint8_t* packed, uint8_t* scales, uint8_t* mins) {
    uint32_t words[3];
    std::memcpy(words, packed, sizeof words);
    const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, low2 = 0x03030303u;
    const uint32_t unpacked[4] = {
        words[0] & low6,
        (words[2] & low4) | (((words[0] >> 6) & low2) << 4),
        words[1] & low6,
        ((words[2] >> 4) & low4) | (((words[1] >> 6) & low2) << 4),
    };
    std::memcpy(scales, unpacked, 8);
    std::memcpy(mins, unpacked + 2, 8);
}

// The `block_format(type).values` floats of the block at `block`; a type outside kTypes writes nothing.
inline void decode_block(int type, const uint8_t* block, float* out) {
    switch (type) {
        case kF32: std::memcpy(out, block, sizeof(float)); return;
        case kF16: out[0] = half_at(block); return;
        case kBF16: out[0] = bits_to_float(static_cast<uint32_t>(read_u16(block)) << 16); return;
        case kQ4_0: {  // d * (q - 8); value j in the low nibble of byte j, value j + 16 in its high one
            const float d = half_at(block + layout::kQ4_0Scale);
            const uint8_t* q = block + layout::kQ4_0Quants;
            for (int j = 0; j < 16; ++j) {
                out[j] = d * static_cast<float>((q[j] & 0x0f) - 8);
                out[j + 16] = d * static_cast<float>((q[j] >> 4) - 8);
            }
            return;
        }
        case kQ4_1: {  // (d * q) + m
            const float d = half_at(block + layout::kQ4_1Scale), m = half_at(block + layout::kQ4_1Min);
            const uint8_t* q = block + layout::kQ4_1Quants;
            for (int j = 0; j < 16; ++j) {
                out[j] = d * static_cast<float>(q[j] & 0x0f) + m;
                out[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
            }
            return;
        }
        case kQ5_0: {  // d * (q - 16)
            const float d = half_at(block + layout::kQ5_0Scale);
            const uint32_t high = read_u32(block + layout::kQ5_0HighBits);
            for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(q5_code(block + layout::kQ5_0Quants, high, j) - 16);
            return;
        }
        case kQ5_1: {  // (d * q) + m
            const float d = half_at(block + layout::kQ5_1Scale), m = half_at(block + layout::kQ5_1Min);
            const uint32_t high = read_u32(block + layout::kQ5_1HighBits);
            for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(q5_code(block + layout::kQ5_1Quants, high, j)) + m;
            return;
        }
        case kQ8_0: {  // q * d
            const float d = half_at(block + layout::kQ8_0Scale);
            for (int j = 0; j < 32; ++j) {
                out[j] = static_cast<float>(static_cast<int8_t>(block[layout::kQ8_0Quants + j])) * d;
            }
            return;
        }
        case kQ4_K:
        case kQ5_K: {  // (d * scale_j) * q - (dmin * min_j), both products rounded, over 8 sub-blocks of 32
            const float d = half_at(block + layout::kKScale), dmin = half_at(block + layout::kKMin);
            const uint8_t* q = block + (type == kQ4_K ? layout::kQ4_KQuants : layout::kQ5_KQuants);
            uint8_t scales[8], mins[8];
            k_scales_and_mins(block + layout::kKScales, scales, mins);
            for (int j = 0; j < 8; ++j) {
                const float dj = d * static_cast<float>(scales[j]), mj = dmin * static_cast<float>(mins[j]);
                for (int l = 0; l < 32; ++l) {  // sub-blocks 2i and 2i + 1: low and high nibbles of bytes 32i..32i + 31
                    int value = (q[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
                    if (type == kQ5_K) value |= ((block[layout::kQ5_KHighBits + l] >> j) & 1) << 4;
                    out[j * 32 + l] = dj * static_cast<float>(value) - mj;
                }
            }
            return;
        }
        case kQ6_K: {  // (d * scale) * (q - 32) over 16 sub-blocks of 16; q's 4 low and 2 high bits apart
            const float d = half_at(block + layout::kQ6_KScale);
            const uint8_t* low = block + layout::kQ6_KLow;
            const uint8_t* high = block + layout::kQ6_KHigh;
            for (int half = 0; half < 2; ++half) {      // 128 values each
                for (int group = 0; group < 4; ++group) {  // 32 values each
                    for (int l = 0; l < 32; ++l) {
                        const int low_bits = (low[half * 64 + (group % 2) * 32 + l] >> (4 * (group / 2))) & 0x0f;
                        const int high_bits = (high[half * 32 + l] >> (2 * group)) & 3;
                        const int index = half * 128 + group * 32 + l;
                        const auto scale = static_cast<int8_t>(block[layout::kQ6_KScales + index / 16]);
                        out[index] = (d * static_cast<float>(scale)) * static_cast<float>((low_bits | (high_bits << 4)) - 32);
                    }
                }
            }
            return;
        }
        default: return;
    }
}

}  // namespace fastllm::cpu::quant
