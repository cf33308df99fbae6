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

// SwiGLU: out[r, i] = silu(x[r, i]) * x[r, inter + i] for x [rows, 2 * inter] into out [rows,
// inter] (each with its row stride, contiguous rows); silu(g) = g * sigmoid(g), sigmoid from an
// exp of -|g| (never overflows), to float32 rounding (not bit for bit torch's Sleef exp).
void silu_and_mul(const float* x, int64_t x_stride, int64_t rows, int64_t inter, float* out, int64_t out_stride,
                  size_t num_threads);

// GeGLU (Gemma): out[r, i] = gelu_tanh(x[r, i]) * x[r, inter + i], shapes as silu_and_mul's;
// gelu_tanh(g) = g * sigmoid(2 sqrt(2 / pi) (g + 0.044715 g^3)), to float32 rounding (torch
// computes 0.5 g (1 + tanh(...)) with Sleef's tanh).
void gelu_tanh_and_mul(const float* x, int64_t x_stride, int64_t rows, int64_t inter, float* out,
                       int64_t out_stride, size_t num_threads);

// Writes the new keys and values of `tokens` tokens (rows of `row_floats` floats, row strides as
// given) into cache slots `slots` ([tokens]; slot = block * block_size + offset, < 0 skipped) of
// caches holding `num_slots` rows. A slot >= num_slots is std::invalid_argument before any write.
void store_kv_cache(const float* k, int64_t k_stride, const float* v, int64_t v_stride, int64_t tokens,
                    int64_t row_floats, const int64_t* slots, int64_t num_slots, float* k_cache, float* v_cache);

}  // namespace fastllm::cpu
