// A Llama-family decoder's decode step on the CPU in one call: every layer's RMSNorms, projections
// over GGUF-encoded weights, rotary, KV-cache store, paged attention and gated MLP, back to back,
// with the pieces where families differ (fastllm/model/config.py): q/k/v biases (Qwen2), q/k norms
// (Qwen3, Gemma 3), sandwich norms, GeGLU and sliding-window layers with their own rotary tables
// (Gemma 3).
//
// It runs exactly the kernels the model's layer-by-layer path runs on backend "cpu" (rms_norm,
// quantized_matmul, rotary_embedding, store_kv_cache, paged_decode_attention, silu_and_mul,
// gelu_tanh_and_mul), in the same order on the same data, so its output equals that path's bit for
// bit; what it saves is the Python and framework overhead between ~10-15 ops x layers, which
// dominates a batch-1 decode step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu_quant_matmul.h"

namespace fastllm::cpu {

struct DecoderLayerWeights {
    const float* input_norm;  // [hidden]
    const float* post_attention_norm;  // [hidden], before the MLP
    std::vector<QuantMatrix> qkv;  // stacked by rows: [q_size + 2 * kv_size, hidden]
    std::vector<QuantMatrix> o;  // [hidden, q_size]
    std::vector<QuantMatrix> gate_up;  // [2 * intermediate, hidden]
    std::vector<QuantMatrix> down;  // [hidden, intermediate]
    // Optional pieces (nullptr: absent).
    const float* qkv_bias = nullptr;  // [q_size + 2 * kv_size], added to the qkv projection
    const float* q_norm = nullptr;  // [head_dim], with k_norm: RMSNorm of each head of q and k before the rotary
    const float* k_norm = nullptr;
    const float* attention_output_norm = nullptr;  // [hidden], with mlp_output_norm: the sandwich norms
    const float* mlp_output_norm = nullptr;
    int64_t window = 0;  // > 0: a sliding window over the last `window` tokens
    bool local_rope = false;  // rotate with the batch's local tables
    // [q_size + 2 * kv_size]: output column j of the qkv projection is column qkv_order[j] of the
    // stacked parts' product (llama.cpp's permuted Q/K rows, read where they are stored).
    const int64_t* qkv_order = nullptr;
};

enum class Activation { kSilu, kGeluTanh };  // the gated MLP's: SwiGLU or GeGLU

struct DecoderShape {
    int64_t hidden, intermediate, num_heads, num_kv_heads, head_dim;
    float rms_norm_eps, softmax_scale;
    Activation activation = Activation::kSilu;
};

// What one decode step feeds every layer: one new token per sequence.
struct DecodeBatch {
    int64_t tokens;  // sequences in the step
    const int64_t* positions;  // [tokens]
    const float* cos_cache;  // [max_position, head_dim / 2]
    const float* sin_cache;
    int64_t max_position;
    const float* local_cos_cache;  // the tables of layers with local_rope (same shape), or nullptr
    const float* local_sin_cache;
    const int64_t* slots;  // [tokens]: cache slot of each new token
    const int32_t* seqlens;  // [tokens]: tokens in each sequence's cache, the new one included
    const int32_t* block_table;  // [tokens, table_width]
    int64_t table_width;
};

// The KV pool of all layers: [layers, 2 (keys, values), num_blocks, block_size, num_kv_heads, head_dim].
struct LayeredCache {
    float* data;
    int64_t num_blocks, block_size;
};

// Runs every layer on hidden [tokens, hidden_size] (the embeddings), writing the last layer's output
// to `hidden_out` and the residual stream beside it to `residual_out` (both [tokens, hidden]): the
// model's final norm is then fused_add_rms_norm(hidden_out, residual_out). Shapes and indices are
// checked before anything is written (std::invalid_argument).
void decode_layers(const std::vector<DecoderLayerWeights>& layers, const DecoderShape& shape, const DecodeBatch& batch,
                   const float* hidden, const LayeredCache& cache, float* hidden_out, float* residual_out,
                   size_t num_threads);

}  // namespace fastllm::cpu
