// Attention kernels for CPUs, float32: what backend="cpu" runs in place of the PyTorch ops.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastllm::cpu {

// A paged KV cache: keys and values [num_blocks, block_size, num_kv_heads, head_dim], contiguous.
struct PagedCache {
    const float* keys;
    const float* values;
    int64_t num_blocks;
    int64_t block_size;
    int64_t num_kv_heads;
    int64_t head_dim;
};

// The head dims the kernels are built for: those of Llama-family models.
inline constexpr int64_t kHeadDims[] = {32, 64, 80, 96, 128, 256};

constexpr bool supports_head_dim(int64_t head_dim) {
    for (const int64_t supported : kHeadDims) {
        if (head_dim == supported) return true;
    }
    return false;
}

// One new query token per sequence attends over its cached tokens (itself included).
//   q, out: [batch, num_q_heads, head_dim], contiguous; num_q_heads a multiple of num_kv_heads;
//           head_dim one of kHeadDims
//   seqlens: [batch], tokens in each sequence's cache, 1..table_width * block_size
//   block_table: [batch, table_width], the cache blocks of each sequence in order
//   window: > 0, a sliding window: each query sees only its sequence's last `window` tokens (the
//           blocks before them are not read); 0, every token
// Runs on up to `num_threads` OpenMP threads; a sequence's output does not depend on the other
// sequences of the batch nor on the thread count (bit for bit). Throws std::invalid_argument
// (naming the argument) for an unsupported shape, a length outside its range or a block id
// outside the cache, before anything is read.
// The checks paged_decode_attention makes of seqlens and block_table (std::invalid_argument).
void check_paged_decode_inputs(const PagedCache& cache, int64_t batch, const int32_t* seqlens,
                               const int32_t* block_table, int64_t table_width);

void paged_decode_attention(const float* q, int64_t batch, int64_t num_q_heads, const PagedCache& cache,
                            const int32_t* seqlens, const int32_t* block_table, int64_t table_width, float scale,
                            int64_t window, size_t num_threads, float* out);

}  // namespace fastllm::cpu
