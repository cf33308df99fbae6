#include "cpu_attention.h"

#include "cpu_vector.h"

#include <algorithm>
#include <cmath>
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

// One work item: blocks [block_begin, block_end) of a sequence, for the query heads of KV heads
// [kv_begin, kv_end). A long sequence is split into several spans, so that it keeps every thread
// busy on its own; the spans' partial softmaxes are then merged (merge_spans). Too few spans for
// the threads are split by KV heads too (which changes no sum: each head is computed alone).
// Arrays are the sequence's, indexed by query head; an item touches its own heads only.
struct SpanTask {
    const float* q;          // [heads, head_dim]
    int64_t group;           // query heads per KV head
    int64_t kv_begin, kv_end;
    const int32_t* blocks;   // the sequence's row of the block table
    int64_t block_begin, block_end;
    int64_t first;           // the first token attended to (a sliding window's start, else 0)
    int64_t length;          // tokens in the sequence: tokens first..length - 1 are attended to
    float scale;
    float* scores;           // per query head, block_size scores rounded up to whole vectors
    float* out;              // [heads, head_dim]: the output, or the span's unnormalized sums
    float* max_score;        // [heads]: the running maximum
    float* denominator;      // [heads]: the running sum of exp(score - maximum)
    bool normalize;          // the whole sequence: out is divided by the denominator at the end
};

// What of each of the next block's token rows is prefetched while a block is read: a row of up to
// kWholeRowFloats whole, a longer one its first kRowStartFloats, from where the hardware prefetcher
// follows it (more of a 4 KB row, 8 KV heads of 128 dims, measured slower: a fifth for its first
// 1 KB; whole 768 B rows, SmolLM2's, a little faster than their first 256 B: benchmarks/README.md).
constexpr int64_t kWholeRowFloats = 256, kRowStartFloats = 64;

// The span's query heads attend over its blocks with an online softmax, one block at a time:
// each block's rows (every KV head of a token, contiguous) are read front to back while the next
// block is prefetched. Per query head and block: scores, the running maximum and denominator,
// then the weighted values added to the output, all with head_dim / 16 vectors. Blocks before
// the one holding token `first` are never read; in that block the tokens before it score -inf
// (weight 0) and add no value.
template <int64_t kChunks>
FASTLLM_INLINE void attend_span_fixed(const PagedCache& cache, const SpanTask& task) {
    constexpr int64_t dim = kChunks * kLanes;
    const int64_t block_size = cache.block_size;
    const int64_t token_stride = cache.num_kv_heads * dim, block_stride = block_size * token_stride;
    const int64_t num_blocks = (task.length + block_size - 1) / block_size;
    const int64_t first_block = task.first / block_size;
    const int64_t padded_block = (block_size + kLanes - 1) / kLanes * kLanes;
    // The part of each token row the item reads: its KV heads.
    const int64_t row_begin = task.kv_begin * dim, row_floats = (task.kv_end - task.kv_begin) * dim;
    const int64_t prefetch_floats = row_floats <= kWholeRowFloats ? row_floats : kRowStartFloats;
    const int64_t head_begin = task.kv_begin * task.group, head_end = task.kv_end * task.group;
    std::fill(task.max_score + head_begin, task.max_score + head_end, -std::numeric_limits<float>::infinity());
    std::fill(task.denominator + head_begin, task.denominator + head_end, 0.0f);
    std::fill(task.out + head_begin * dim, task.out + head_end * dim, 0.0f);

    for (int64_t j = task.block_begin; j < task.block_end; ++j) {
        const int64_t offset = static_cast<int64_t>(task.blocks[j]) * block_stride;
        const int64_t tokens = std::min(block_size, task.length - j * block_size);
        const int64_t skipped = j == first_block ? task.first - j * block_size : 0;  // before the window
        if (j + 1 < num_blocks) {
            // Written out here, not in a lambda: GCC deems a function that only prefetches pure
            // and deletes the calls.
            const int64_t next = static_cast<int64_t>(task.blocks[j + 1]) * block_stride + row_begin;
            const int64_t next_tokens = std::min(block_size, task.length - (j + 1) * block_size);
            for (int64_t t = 0; t < next_tokens; ++t) {
                for (int64_t d = 0; d < prefetch_floats; d += kLanes) {
                    __builtin_prefetch(cache.keys + next + t * token_stride + d);
                    __builtin_prefetch(cache.values + next + t * token_stride + d);
                }
            }
        }
        for (int64_t head = head_begin; head < head_end; ++head) {
            const float* keys = cache.keys + offset + head / task.group * dim;
            const float* values = cache.values + offset + head / task.group * dim;
            // A row of scores per query head: the heads' passes over a block do not wait on each other.
            float* const scores = task.scores + head * padded_block;
            Vec query[kChunks];
            for (int64_t c = 0; c < kChunks; ++c) query[c] = load(task.q + head * dim + c * kLanes);
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
            const float old_max = task.max_score[head];
            const float new_max = std::max(max_lanes(block_max), old_max);
            const float rescale = j == task.block_begin ? 0.0f : exp_nonpositive(broadcast(old_max - new_max))[0];
            task.max_score[head] = new_max;
            Vec sums{};
            for (int64_t t = 0; t < padded_block; t += kLanes) {
                const Vec weights = exp_nonpositive(load(scores + t) - new_max);
                store(scores + t, weights);
                sums += weights;
            }
            task.denominator[head] = task.denominator[head] * rescale + sum_lanes(sums);
            float* out = task.out + head * dim;
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
    if (task.normalize) {
        for (int64_t head = head_begin; head < head_end; ++head) {
            const float inverse = 1.0f / task.denominator[head];
            float* out = task.out + head * dim;
            for (int64_t c = 0; c < kChunks; ++c) store(out + c * kLanes, load(out + c * kLanes) * inverse);
        }
    }
}

// One instance per head dim in kHeadDims (checked before any work starts).
FASTLLM_VECTOR_CLONES
void attend_span(const PagedCache& cache, const SpanTask& task) {
    static_assert(sizeof kHeadDims / sizeof kHeadDims[0] == 6, "a head dim without a case below");
    switch (cache.head_dim) {
        case 32: return attend_span_fixed<2>(cache, task);
        case 64: return attend_span_fixed<4>(cache, task);
        case 80: return attend_span_fixed<5>(cache, task);
        case 96: return attend_span_fixed<6>(cache, task);
        case 128: return attend_span_fixed<8>(cache, task);
        case 256: return attend_span_fixed<16>(cache, task);
        default: return;
    }
}

// Query head `head`'s output [dim] from a sequence's `count` spans, whose slots are consecutive:
// sums [count][heads][dim], unnormalized; stats [count][2][heads], maxima then denominators.
void merge_spans(const float* sums, const float* stats, int64_t count, int64_t heads, int64_t dim, int64_t head,
                 float* out) {
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < count; ++s) max = std::max(max, stats[s * 2 * heads + head]);
    float denominator = 0.0f;
    std::fill(out, out + dim, 0.0f);
    for (int64_t s = 0; s < count; ++s) {
        const float weight = std::exp(stats[s * 2 * heads + head] - max);
        denominator += weight * stats[s * 2 * heads + heads + head];
        const float* partial = sums + (s * heads + head) * dim;
        for (int64_t d = 0; d < dim; ++d) out[d] += weight * partial[d];
    }
    const float inverse = 1.0f / denominator;
    for (int64_t d = 0; d < dim; ++d) out[d] *= inverse;
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
    const int64_t threads = static_cast<int64_t>(std::max<size_t>(num_threads, 1));
    // A sequence's blocks are split into spans of about kSpanBlocks (a sequence's own length
    // decides, not the batch nor the thread count: its output does not depend on them).
    constexpr int64_t kSpanBlocks = 16;
    struct Span {
        int64_t sequence, first, block_begin, block_end;
        int64_t partial;  // its slot of partial sums, -1 for a whole sequence
    };
    struct Split {
        int64_t sequence, first_slot, spans;
    };
    // Per-call bookkeeping in buffers the calling thread keeps (a decode step calls this once a
    // layer), named by references: inside the parallel region a thread_local name would be each
    // thread's own.
    thread_local std::vector<Span> kept_spans;
    thread_local std::vector<Split> kept_splits;
    std::vector<Span>& spans = kept_spans;
    std::vector<Split>& splits = kept_splits;  // the sequences split into several spans
    spans.clear();
    splits.clear();
    int64_t partials = 0;
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t length = seqlens[b];
        const int64_t first = window > 0 && length > window ? length - window : 0;
        const int64_t first_block = first / cache.block_size;
        const int64_t blocks = (length + cache.block_size - 1) / cache.block_size - first_block;
        const int64_t count = (blocks + kSpanBlocks - 1) / kSpanBlocks;
        if (count > 1) splits.push_back({b, partials, count});
        for (int64_t s = 0; s < count; ++s) {
            const int64_t begin = first_block + s * blocks / count, end = first_block + (s + 1) * blocks / count;
            spans.push_back({b, first, begin, end, count > 1 ? partials++ : -1});
        }
    }
    // Partial sums, maxima and denominators per split span; kept between calls (no allocation per step).
    thread_local std::vector<float> partial_sums, partial_stats;
    partial_sums.resize(static_cast<size_t>(std::max<int64_t>(partials, 1) * num_q_heads * dim));
    partial_stats.resize(static_cast<size_t>(std::max<int64_t>(partials, 1) * num_q_heads * 2));
    float* const sums = partial_sums.data();
    float* const stats = partial_stats.data();  // [partials][2][heads]: maxima, then denominators
    const size_t scores_size = static_cast<size_t>(num_q_heads * ((cache.block_size + kLanes - 1) / kLanes * kLanes));
    // Longest first, so that no long span is left to run alone at the end.
    std::stable_sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
        return a.block_end - a.block_begin > b.block_end - b.block_begin;
    });
    const int64_t num_spans = static_cast<int64_t>(spans.size());
    // Two items per thread at least: a short sequence alone splits by KV heads.
    const int64_t head_parts = std::clamp<int64_t>((2 * threads + num_spans - 1) / std::max<int64_t>(num_spans, 1), 1,
                                                   cache.num_kv_heads);
    const int64_t items = num_spans * head_parts;
    // The threads are OpenMP's: this module links libgomp.so.1, the loader gives it the copy torch
    // loaded, so the kernel runs on torch's own intra-op threads instead of competing with them
    // for the cores.
#pragma omp parallel num_threads(static_cast<int>(threads))
    {
        thread_local std::vector<float> scores, whole_stats;  // each OpenMP thread's, kept between calls
        scores.resize(scores_size);
        whole_stats.resize(static_cast<size_t>(2 * num_q_heads));
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            const Span& span = spans[static_cast<size_t>(item / head_parts)];
            const int64_t part = item % head_parts;
            const int64_t b = span.sequence;
            const bool whole = span.partial < 0;
            float* const stat = whole ? whole_stats.data() : stats + span.partial * 2 * num_q_heads;
            attend_span(cache, SpanTask{q + b * num_q_heads * dim, group,
                                        part * cache.num_kv_heads / head_parts, (part + 1) * cache.num_kv_heads / head_parts,
                                        block_table + b * table_width,
                                        span.block_begin, span.block_end, span.first, seqlens[b], scale, scores.data(),
                                        whole ? out + b * num_q_heads * dim : sums + span.partial * num_q_heads * dim,
                                        stat, stat + num_q_heads, whole});
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < static_cast<int64_t>(splits.size()) * num_q_heads; ++i) {
            const Split& split = splits[static_cast<size_t>(i / num_q_heads)];
            const int64_t head = i % num_q_heads;
            merge_spans(sums + split.first_slot * num_q_heads * dim, stats + split.first_slot * 2 * num_q_heads,
                        split.spans, num_q_heads, dim, head, out + (split.sequence * num_q_heads + head) * dim);
        }
    }
}

}  // namespace fastllm::cpu
