#include "cpu_elementwise.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

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

}  // namespace fastllm::cpu
