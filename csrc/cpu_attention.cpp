#include "cpu_attention.h"

#include "cpu_vector.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastllm::cpu {
namespace {

using vec::broadcast;
using vec::exp_nonpositive;
using vec::kLanes;
using vec::load;
using vec::max_lanes;
using vec::store;
using vec::sum_lanes;
using vec::Vec;

// One (sequence, KV head) work item: its `group` query heads and where its keys and values are.
struct GroupTask {
    const float* q;          // [group, head_dim]
    int64_t group;
    const int32_t* blocks;   // the sequence's row of the block table
    int64_t first;           // the first token attended to (a sliding window's start, else 0)
    int64_t length;          // tokens in the sequence: tokens first..length - 1 are attended to
    int64_t head_offset;     // kv_head * head_dim: the head's place in a token's row
    float scale;
    float* scratch;          // per query head, block_size scores rounded up to whole vectors; 2 * group statistics
    float* out;              // [group, head_dim]
};

// The task's query heads attend over its tokens in one pass over the blocks with an online
// softmax: a block's keys and values are read together and the next block is prefetched (decode
// attention is bound by memory otherwise). Per query head and block: scores, the running maximum
// and denominator, then the weighted values added to the output, all with head_dim / 16 vectors.
// Blocks before the one holding token `first` are never read; in that block the tokens before it
// score -inf (weight 0) and add no value.
template <int64_t kChunks>
FASTLLM_INLINE void attend_group_fixed(const PagedCache& cache, const GroupTask& task) {
    constexpr int64_t dim = kChunks * kLanes;
    const int64_t block_size = cache.block_size;
    const int64_t token_stride = cache.num_kv_heads * dim, block_stride = block_size * token_stride;
    const int64_t num_blocks = (task.length + block_size - 1) / block_size;
    const int64_t first_block = task.first / block_size;
    const int64_t padded_block = (block_size + kLanes - 1) / kLanes * kLanes;
    // A row of scores per query head: the heads' passes over a block do not wait on each other.
    float* const score_rows = task.scratch;
    float* max_score = score_rows + task.group * padded_block;
    float* denominator = max_score + task.group;
    std::fill(max_score, max_score + task.group, -std::numeric_limits<float>::infinity());
    std::fill(denominator, denominator + task.group, 0.0f);
    std::fill(task.out, task.out + task.group * dim, 0.0f);

    for (int64_t j = first_block; j < num_blocks; ++j) {
        const int64_t offset = static_cast<int64_t>(task.blocks[j]) * block_stride + task.head_offset;
        const float* keys = cache.keys + offset;
        const float* values = cache.values + offset;
        const int64_t tokens = std::min(block_size, task.length - j * block_size);
        const int64_t skipped = j == first_block ? task.first - j * block_size : 0;  // before the window
        if (j + 1 < num_blocks) {
            // Written out here, not in a lambda: GCC deems a function that only prefetches pure
            // and deletes the calls.
            const int64_t next = static_cast<int64_t>(task.blocks[j + 1]) * block_stride + task.head_offset;
            const int64_t next_tokens = std::min(block_size, task.length - (j + 1) * block_size);
            for (int64_t t = 0; t < next_tokens; ++t) {
                for (int64_t d = 0; d < dim; d += kLanes) {
                    __builtin_prefetch(cache.keys + next + t * token_stride + d);
                    __builtin_prefetch(cache.values + next + t * token_stride + d);
                }
            }
        }
        for (int64_t g = 0; g < task.group; ++g) {
            float* const scores = score_rows + g * padded_block;
            Vec query[kChunks];
            for (int64_t c = 0; c < kChunks; ++c) query[c] = load(task.q + g * dim + c * kLanes);
            // kLanes tokens' dot products at a time, their lanes summed together (sum_each); a
            // token before the window is scored too (its key is in the block) and then masked.
            for (int64_t t0 = 0; t0 < tokens; t0 += kLanes) {
                Vec dots[kLanes];
                for (int64_t i = 0; i < kLanes; ++i) {
                    if (t0 + i < tokens) {
                        const float* key = keys + (t0 + i) * token_stride;
                        Vec dot = query[0] * load(key);
                        for (int64_t c = 1; c < kChunks; ++c) dot += query[c] * load(key + c * kLanes);
                        dots[i] = dot;
                    } else {
                        dots[i] = Vec{};
                    }
                }
                store(scores + t0, vec::sum_each(dots) * task.scale);
            }
            std::fill(scores, scores + skipped, -std::numeric_limits<float>::infinity());
            // Whole vectors of scores: the tail past `tokens` is -inf, whose exp is 0.
            std::fill(scores + tokens, scores + padded_block, -std::numeric_limits<float>::infinity());
            Vec block_max = load(scores);
            for (int64_t t = kLanes; t < padded_block; t += kLanes) {
                const Vec more = load(scores + t);
                block_max = more > block_max ? more : block_max;
            }
            // What was summed under the old maximum shrinks by exp(old - new); nothing on the first block.
            const float new_max = std::max(max_lanes(block_max), max_score[g]);
            const float rescale = j == first_block ? 0.0f : exp_nonpositive(broadcast(max_score[g] - new_max))[0];
            max_score[g] = new_max;
            Vec sums{};
            for (int64_t t = 0; t < padded_block; t += kLanes) {
                const Vec weights = exp_nonpositive(load(scores + t) - new_max);
                store(scores + t, weights);
                sums += weights;
            }
            const float sum = sum_lanes(sums);
            denominator[g] = denominator[g] * rescale + sum;
            float* out = task.out + g * dim;
            // Even and odd tokens into two sets of accumulators: two chains of additions per vector.
            Vec acc[kChunks], odd[kChunks];
            for (int64_t c = 0; c < kChunks; ++c) {
                acc[c] = load(out + c * kLanes) * rescale;
                odd[c] = Vec{};
            }
            int64_t t = skipped;
            for (; t + 1 < tokens; t += 2) {
                const float* value = values + t * token_stride;
                for (int64_t c = 0; c < kChunks; ++c) {
                    acc[c] += scores[t] * load(value + c * kLanes);
                    odd[c] += scores[t + 1] * load(value + token_stride + c * kLanes);
                }
            }
            if (t < tokens) {
                for (int64_t c = 0; c < kChunks; ++c) acc[c] += scores[t] * load(values + t * token_stride + c * kLanes);
            }
            for (int64_t c = 0; c < kChunks; ++c) store(out + c * kLanes, acc[c] + odd[c]);
        }
    }
    for (int64_t g = 0; g < task.group; ++g) {
        const float inverse = 1.0f / denominator[g];
        float* out = task.out + g * dim;
        for (int64_t c = 0; c < kChunks; ++c) store(out + c * kLanes, load(out + c * kLanes) * inverse);
    }
}

// One instance per head dim in kHeadDims (checked before any work starts).
FASTLLM_VECTOR_CLONES
void attend_group(const PagedCache& cache, const GroupTask& task) {
    static_assert(sizeof kHeadDims / sizeof kHeadDims[0] == 6, "a head dim without a case below");
    switch (cache.head_dim) {
        case 32: return attend_group_fixed<2>(cache, task);
        case 64: return attend_group_fixed<4>(cache, task);
        case 80: return attend_group_fixed<5>(cache, task);
        case 96: return attend_group_fixed<6>(cache, task);
        case 128: return attend_group_fixed<8>(cache, task);
        case 256: return attend_group_fixed<16>(cache, task);
        default: return;
    }
}

}  // namespace

void check_paged_decode_inputs(const PagedCache& cache, int64_t batch, const int32_t* seqlens,
                               const int32_t* block_table, int64_t table_width) {
    const int64_t capacity = table_width * cache.block_size;
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t length = seqlens[b];
        if (length < 1 || length > capacity) {
            throw std::invalid_argument("cache_seqlens[" + std::to_string(b) + "] = " + std::to_string(length) +
                                        " is outside 1.." + std::to_string(capacity) +
                                        " (block_table width x block_size)");
        }
        const int32_t* row = block_table + b * table_width;
        for (int64_t j = 0; j < (length + cache.block_size - 1) / cache.block_size; ++j) {
            if (row[j] < 0 || row[j] >= cache.num_blocks) {
                throw std::invalid_argument("block_table[" + std::to_string(b) + ", " + std::to_string(j) +
                                            "] = " + std::to_string(row[j]) + " is not a block of the cache (0.." +
                                            std::to_string(cache.num_blocks - 1) + ")");
            }
        }
    }
}


void paged_decode_attention(const float* q, int64_t batch, int64_t num_q_heads, const PagedCache& cache,
                            const int32_t* seqlens, const int32_t* block_table, int64_t table_width, float scale,
                            int64_t window, size_t num_threads, float* out) {
    if (window < 0) throw std::invalid_argument("window must be >= 0 (0: no window), got " + std::to_string(window));
    if (cache.num_kv_heads < 1 || num_q_heads % cache.num_kv_heads != 0) {
        throw std::invalid_argument("num_q_heads (" + std::to_string(num_q_heads) +
                                    ") must be a multiple of num_kv_heads (" + std::to_string(cache.num_kv_heads) +
                                    ")");
    }
    if (!supports_head_dim(cache.head_dim)) {
        throw std::invalid_argument("head_dim " + std::to_string(cache.head_dim) +
                                    " is not one of the kernel's (32, 64, 80, 96, 128, 256)");
    }
    check_paged_decode_inputs(cache, batch, seqlens, block_table, table_width);
    const int64_t group = num_q_heads / cache.num_kv_heads, dim = cache.head_dim;
    // Work items are (sequence, KV head) pairs, handed out one at a time. The threads are
    // OpenMP's: this module links libgomp.so.1, the loader gives it the copy torch loaded, so the
    // kernel runs on torch's own intra-op threads instead of competing with them for the cores.
    const int64_t items = batch * cache.num_kv_heads;
    const size_t scratch_size = static_cast<size_t>(group * ((cache.block_size + kLanes - 1) / kLanes * kLanes) + 2 * group);
#pragma omp parallel num_threads(static_cast<int>(std::max<size_t>(num_threads, 1)))
    {
        std::vector<float> scratch(scratch_size);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t b = item / cache.num_kv_heads, kv_head = item % cache.num_kv_heads;
            const int64_t offset = (b * num_q_heads + kv_head * group) * dim;
            const int64_t length = seqlens[b];
            const int64_t first = window > 0 && length > window ? length - window : 0;
            attend_group(cache, GroupTask{q + offset, group, block_table + b * table_width, first, length,
                                          kv_head * dim, scale, scratch.data(), out + offset});
        }
    }
}

}  // namespace fastllm::cpu
