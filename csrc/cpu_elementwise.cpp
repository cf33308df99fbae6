#include "cpu_elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_vector.h"

namespace fastllm::cpu {
namespace {

// Below this many floats a call runs on the calling thread: waking the pool costs more.
constexpr int64_t kParallelFloats = 1 << 16;

int team_size(int64_t floats, size_t num_threads) {
    return floats < kParallelFloats ? 1 : static_cast<int>(std::max<size_t>(num_threads, 1));
}

}  // namespace

void rms_norm(const float* x, int64_t x_stride, const float* residual, int64_t residual_stride, int64_t rows,
              int64_t dim, const float* weight, float eps, float* summed, float* out, size_t num_threads) {
#pragma omp parallel for num_threads(team_size(rows * dim, num_threads))
    for (int64_t row = 0; row < rows; ++row) {
        const float* in = x + row * x_stride;
        if (residual) {
            const float* add = residual + row * residual_stride;
            float* sum = summed + row * dim;
            for (int64_t i = 0; i < dim; ++i) sum[i] = in[i] + add[i];
            in = sum;
        }
        // Vector partial sums, as torch's own reduction keeps (not its exact order).
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < dim; ++i) squares += in[i] * in[i];
        const float inverse_rms = 1.0f / std::sqrt(squares / static_cast<float>(dim) + eps);
        float* o = out + row * dim;
        for (int64_t i = 0; i < dim; ++i) o[i] = in[i] * inverse_rms * weight[i];
    }
}

void rotary_embedding(const float* x, int64_t tokens, int64_t heads, int64_t dim, int64_t token_stride,
                      int64_t head_stride, const int64_t* positions, const float* cos_cache, const float* sin_cache,
                      int64_t max_position, float* out, size_t num_threads) {
    for (int64_t t = 0; t < tokens; ++t) {
        if (positions[t] < 0 || positions[t] >= max_position) {
            throw std::invalid_argument("positions[" + std::to_string(t) + "] = " + std::to_string(positions[t]) +
                                        " is outside the rotary tables' 0.." + std::to_string(max_position - 1));
        }
    }
    const int64_t half = dim / 2;
#pragma omp parallel for num_threads(team_size(tokens * heads * dim, num_threads))
    for (int64_t t = 0; t < tokens; ++t) {
        const float* cos = cos_cache + positions[t] * half;
        const float* sin = sin_cache + positions[t] * half;
        for (int64_t h = 0; h < heads; ++h) {
            const float* x1 = x + t * token_stride + h * head_stride;
            const float* x2 = x1 + half;
            float* out1 = out + (t * heads + h) * dim;
            float* out2 = out1 + half;
            for (int64_t i = 0; i < half; ++i) {
                out1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                out2[i] = x2[i] * cos[i] + x1[i] * sin[i];
            }
        }
    }
}

namespace {

// sigmoid(z) of 16 values, from an exp of -|z| (never overflows; NaN stays NaN).
FASTLLM_INLINE vec::Vec sigmoid(vec::Vec z) {
    const vec::Vec magnitude = z < 0.0f ? -z : z;
    const vec::Vec e = vec::exp_nonpositive(-magnitude);  // e^-|z| in (0, 1]
    return (z < 0.0f ? e : vec::broadcast(1.0f)) / (1.0f + e);
}

// silu of 16 gates times 16 ups.
struct Swiglu {
    FASTLLM_INLINE vec::Vec operator()(vec::Vec gate, vec::Vec up) const { return gate * sigmoid(gate) * up; }
};

// tanh-approximated gelu of 16 gates times 16 ups: 0.5 g (1 + tanh(u)) = g sigmoid(2u), with
// u = sqrt(2 / pi) (g + 0.044715 g^3); the sigmoid form has no cancellation where tanh(u) ~ -1.
struct Geglu {
    FASTLLM_INLINE vec::Vec operator()(vec::Vec gate, vec::Vec up) const {
        constexpr float kTwoSqrtTwoOverPi = 1.5957691216057308f;  // 2 sqrt(2 / pi)
        const vec::Vec inner = gate + 0.044715f * gate * gate * gate;
        return gate * sigmoid(kTwoSqrtTwoOverPi * inner) * up;
    }
};

template <class Gated>
FASTLLM_INLINE void gated_row(const float* gate, const float* up, int64_t inter, float* out) {
    const Gated gated;
    int64_t i = 0;
    for (; i + vec::kLanes <= inter; i += vec::kLanes) {
        vec::store(out + i, gated(vec::load(gate + i), vec::load(up + i)));
    }
    if (i < inter) {  // the tail through a zero-padded vector: same arithmetic as the body
        float g[vec::kLanes] = {}, u[vec::kLanes] = {}, o[vec::kLanes];
        std::memcpy(g, gate + i, (inter - i) * sizeof(float));
        std::memcpy(u, up + i, (inter - i) * sizeof(float));
        vec::store(o, gated(vec::load(g), vec::load(u)));
        std::memcpy(out + i, o, (inter - i) * sizeof(float));
    }
}

FASTLLM_VECTOR_CLONES
void swiglu_row(const float* gate, const float* up, int64_t inter, float* out) {
    gated_row<Swiglu>(gate, up, inter, out);
}

FASTLLM_VECTOR_CLONES
void geglu_row(const float* gate, const float* up, int64_t inter, float* out) {
    gated_row<Geglu>(gate, up, inter, out);
}

}  // namespace

void silu_and_mul(const float* x, int64_t x_stride, int64_t rows, int64_t inter, float* out, int64_t out_stride,
                  size_t num_threads) {
#pragma omp parallel for num_threads(team_size(rows * inter, num_threads))
    for (int64_t row = 0; row < rows; ++row) {
        const float* gate = x + row * x_stride;
        swiglu_row(gate, gate + inter, inter, out + row * out_stride);
    }
}

void gelu_tanh_and_mul(const float* x, int64_t x_stride, int64_t rows, int64_t inter, float* out,
                       int64_t out_stride, size_t num_threads) {
#pragma omp parallel for num_threads(team_size(rows * inter, num_threads))
    for (int64_t row = 0; row < rows; ++row) {
        const float* gate = x + row * x_stride;
        geglu_row(gate, gate + inter, inter, out + row * out_stride);
    }
}

void store_kv_cache(const float* k, int64_t k_stride, const float* v, int64_t v_stride, int64_t tokens,
                    int64_t row_floats, const int64_t* slots, int64_t num_slots, float* k_cache, float* v_cache) {
    for (int64_t t = 0; t < tokens; ++t) {
        if (slots[t] >= num_slots) {
            throw std::invalid_argument("slot_mapping[" + std::to_string(t) + "] = " + std::to_string(slots[t]) +
                                        " is past the cache's " + std::to_string(num_slots) + " slots");
        }
    }
    const size_t row_bytes = static_cast<size_t>(row_floats) * sizeof(float);
    for (int64_t t = 0; t < tokens; ++t) {
        if (slots[t] < 0) continue;
        std::memcpy(k_cache + slots[t] * row_floats, k + t * k_stride, row_bytes);
        std::memcpy(v_cache + slots[t] * row_floats, v + t * v_stride, row_bytes);
    }
}

}  // namespace fastllm::cpu
