// RMSNorm and rotary embedding for CPUs, float32: what backend="cpu" runs in place of the
// PyTorch ops, whose per-op overhead dominates at decode sizes (a 16 x 576 RMSNorm is ~25 us of
// PyTorch calls, a few microseconds here). Each computes what its PyTorch twin does, in the same
// order per element (no fused multiply-adds: ISO C++ mode contracts nothing), so results differ
// from the twins' only by the summation order of RMSNorm's mean of squares.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastllm::cpu {

// out = x * rsqrt(mean(x^2) + eps) * weight for `rows` rows of `dim` floats. With `residual`,
// x + residual is normalized and written to `summed` first. x, residual: row strides as given,
// contiguous rows; summed, out: contiguous [rows, dim].
void rms_norm(const float* x, int64_t x_stride, const float* residual, int64_t residual_stride, int64_t rows,
              int64_t dim, const float* weight, float eps, float* summed, float* out, size_t num_threads);

// Rotate-half RoPE of x [tokens, heads, dim] (token and head strides as given, contiguous last
// dim) at `positions` ([tokens], each in 0..max_position - 1, else std::invalid_argument before
// anything is written), with cos/sin tables [max_position, dim / 2]; out contiguous.
void rotary_embedding(const float* x, int64_t tokens, int64_t heads, int64_t dim, int64_t token_stride,
                      int64_t head_stride, const int64_t* positions, const float* cos_cache, const float* sin_cache,
                      int64_t max_position, float* out, size_t num_threads);

}  // namespace fastllm::cpu
