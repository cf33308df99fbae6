// 16-float vectors for the CPU kernels (GCC vector extensions: one AVX-512 register, two AVX2
// ones, four SSE ones), and an exp good to float32 rounding.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

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

// v's lanes folded pairwise with `combine`: its halves, their halves, then the last four lanes
// (the order sum_lanes and max_lanes share).
template <class Combine>
FASTLLM_INLINE float fold_lanes(Vec v, Combine combine) {
    typedef float Half __attribute__((vector_size(kLanes / 2 * sizeof(float))));
    typedef float Quarter __attribute__((vector_size(kLanes / 4 * sizeof(float))));
    Half low, high;
    std::memcpy(&low, &v, sizeof low);
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof low, sizeof high);
    const Half halves = combine(low, high);
    Quarter q_low, q_high;
    std::memcpy(&q_low, &halves, sizeof q_low);
    std::memcpy(&q_high, reinterpret_cast<const char*>(&halves) + sizeof q_low, sizeof q_high);
    const Quarter quarters = combine(q_low, q_high);
    return combine(combine(quarters[0], quarters[2]), combine(quarters[1], quarters[3]));
}

FASTLLM_INLINE float sum_lanes(Vec v) {
    return fold_lanes(v, [](auto a, auto b) { return a + b; });
}

namespace detail {
// Lane `lane` of one pairwise step of sum_each: the operands each hold kLanes / width sums as
// `width` partial sums; the result holds both operands' sums (the first operand's first) as
// width / 2 partial sums, lanes i and i + width / 2 of each added (the two masks' halves).
constexpr int lane_source(int width, bool high, int lane) {
    const int half = width / 2, sum = lane / half, per_vector = static_cast<int>(kLanes) / width;
    return (sum / per_vector) * static_cast<int>(kLanes) + (sum % per_vector) * width + lane % half +
           (high ? half : 0);
}

typedef int32_t Mask __attribute__((vector_size(kLanes * sizeof(int32_t))));

template <int Width, bool High, int... Lanes>
constexpr Mask lane_mask(std::integer_sequence<int, Lanes...>) {
    return Mask{lane_source(Width, High, Lanes)...};
}

template <int Width>
FASTLLM_INLINE Vec pair_step(Vec a, Vec b) {
    constexpr Mask low = lane_mask<Width, false>(std::make_integer_sequence<int, kLanes>{});
    constexpr Mask high = lane_mask<Width, true>(std::make_integer_sequence<int, kLanes>{});
    return __builtin_shuffle(a, b, low) + __builtin_shuffle(a, b, high);
}
}  // namespace detail

// The lanes of each of kLanes vectors added up: result[i] = the sum of v[i]'s lanes, pairwise
// (15 steps of two shuffles and an add, where kLanes sum_lanes calls take four times the work).
FASTLLM_INLINE Vec sum_each(const Vec* v) {
    Vec eights[8], fours[4], twos[2];
    for (int i = 0; i < 8; ++i) eights[i] = detail::pair_step<16>(v[2 * i], v[2 * i + 1]);
    for (int i = 0; i < 4; ++i) fours[i] = detail::pair_step<8>(eights[2 * i], eights[2 * i + 1]);
    for (int i = 0; i < 2; ++i) twos[i] = detail::pair_step<4>(fours[2 * i], fours[2 * i + 1]);
    return detail::pair_step<2>(twos[0], twos[1]);
}

// The largest lane (a NaN lane is passed over unless every compare meets one).
FASTLLM_INLINE float max_lanes(Vec v) {
    return fold_lanes(v, [](auto a, auto b) { return b > a ? b : a; });
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
