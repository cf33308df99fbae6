// Matmuls against GGUF-encoded weights for CPUs: the weights stay in their blocks and are decoded
// inside the kernel, in float32 registers, to the exact numbers `gguf.quants.dequantize` gives
// (quant_blocks.h); each x * w is then a float32 fused multiply-add of those numbers. x is never
// quantized, so the result differs from a float32 matmul against the decoded matrix only in the
// order of the sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quant_blocks.h"

namespace fastllm::cpu {

// A weight matrix of `rows` rows, each `row_bytes` bytes of ggml blocks of `type`, rows contiguous.
struct QuantMatrix {
    const uint8_t* data;
    int type;
    int64_t rows;
    int64_t row_bytes;
};

// Bytes of a row of `cols` values of `type`. Throws std::invalid_argument for a type outside
// quant::kTypes or `cols` not a whole number of blocks (`what` names the argument in the message).
int64_t quant_row_bytes(int type, int64_t cols, const std::string& what = "cols");

// out [m, sum of parts' rows] = x [m, k] @ W^T, W the parts stacked by rows (part i fills columns
// sum_{j<i} rows_j onward), all contiguous. Parts may each have their own type. Every argument
// (types, k against each part's row_bytes) is checked before any memory is read: std::invalid_argument.
// One OpenMP parallel region of up to `num_threads` threads.
void quantized_matmul(const float* x, int64_t m, int64_t k, const QuantMatrix* parts, size_t num_parts, float* out,
                      size_t num_threads);

// out [count, cols] = the decoded rows `rows[0..count)` of w (each checked in 0..w.rows - 1 first).
void dequantize_rows(const QuantMatrix& w, int64_t cols, const int64_t* rows, int64_t count, float* out,
                     size_t num_threads);

// out [count, cols] = the decoded rows first_row .. first_row + count - 1 of w (checked to lie in w).
void dequantize_row_range(const QuantMatrix& w, int64_t cols, int64_t first_row, int64_t count, float* out,
                          size_t num_threads);

// The instruction sets the kernels are built for, picked at run time: "avx512" (AVX-512 F, BW, DQ,
// VL with FMA and F16C), "avx2" (AVX2, FMA, F16C) and "generic" (portable C++; its products and
// sums are rounded separately: no FMA). The default is the widest this CPU runs.
std::string quant_isa();
std::vector<std::string> quant_isas();  // those this CPU runs, widest first
// Forces one of quant_isas() for every later call (tests, benchmarks); anything else is
// std::invalid_argument.
void set_quant_isa(const std::string& name);

}  // namespace fastllm::cpu
