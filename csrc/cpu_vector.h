// 16-float vectors for the CPU kernels (GCC vector extensions: one AVX-512 register, two AVX2
// ones, four SSE ones), and an exp good to float32 rounding.
#pragma once

#include <cstdint>
#include <cstring>

// On x86-64, GCC builds AVX-512, AVX2 and baseline clones of a routine marked with this and picks
// one at load time, so a portable build still uses the machine's widest vectors (GCC 11+ with
// glibc: the clones need ifunc). Elsewhere it is built once for the compile target.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FASTLLM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTLLM_VECTOR_CLONES
#endif
#define FASTLLM_INLINE inline __attribute__((always_inline))

namespace fastllm::cpu::vec {

constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

FASTLLM_INLINE Vec load(const float* p) {
    Vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

FASTLLM_INLINE void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

FASTLLM_INLINE Vec broadcast(float x) { return Vec{} + x; }

FASTLLM_INLINE float sum_lanes(Vec v) {
    typedef float Half __attribute__((vector_size(kLanes / 2 * sizeof(float))));
    typedef float Quarter __attribute__((vector_size(kLanes / 4 * sizeof(float))));
    Half low, high;
    std::memcpy(&low, &v, sizeof low);
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof low, sizeof high);
    const Half halves = low + high;
    Quarter q_low, q_high;
    std::memcpy(&q_low, &halves, sizeof q_low);
    std::memcpy(&q_high, reinterpret_cast<const char*>(&halves) + sizeof q_low, sizeof q_high);
    const Quarter quarters = q_low + q_high;
    return (quarters[0] + quarters[2]) + (quarters[1] + quarters[3]);
}

FASTLLM_INLINE float max_lanes(Vec v) {
    float max = v[0];
    for (int64_t i = 1; i < kLanes; ++i) max = v[i] > max ? v[i] : max;
    return max;
}

// exp(x) for x <= 0, to float32 rounding: Cephes' expf, i.e. x = n ln2 + r with |r| <= ln2 / 2, a
// degree-6 polynomial for e^r, 2^n from the exponent bits. Below -87 (e^-87 ~ 1.6e-38, nothing
// against a term of 1) it gives 0; NaN stays NaN.
FASTLLM_INLINE Vec exp_nonpositive(Vec x) {
    typedef int32_t Ints __attribute__((vector_size(sizeof(Vec))));
    const Vec floor_x = broadcast(-87.0f);
    const Vec clamped = x > floor_x ? x : floor_x;
    const Ints n_int = __builtin_convertvector(clamped * 1.44269504f - 0.5f, Ints);  // round(x / ln2)
    const Vec n = __builtin_convertvector(n_int, Vec);
    const Vec r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
    Vec p = broadcast(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const Ints exponent = (n_int + 127) << 23;
    Vec two_n;
    std::memcpy(&two_n, &exponent, sizeof two_n);
    const Vec result = (p * r * r + r + 1.0f) * two_n;
    const Vec zero_below = x < floor_x ? Vec{} : result;
    return x == x ? zero_below : x;
}

}  // namespace fastllm::cpu::vec
