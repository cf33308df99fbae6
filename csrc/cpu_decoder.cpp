#include "cpu_decoder.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu_attention.h"
#include "cpu_elementwise.h"

namespace fastllm::cpu {
namespace {

int64_t stacked_rows(const std::vector<QuantMatrix>& parts) {
    int64_t rows = 0;
    for (const QuantMatrix& part : parts) rows += part.rows;
    return rows;
}

void check_rows(const std::vector<QuantMatrix>& parts, int64_t expected, const std::string& name, size_t layer) {
    if (stacked_rows(parts) != expected) {
        throw std::invalid_argument("layer " + std::to_string(layer) + " " + name + " has " +
                                    std::to_string(stacked_rows(parts)) + " rows, expected " + std::to_string(expected));
    }
}

}  // namespace

void decode_layers(const std::vector<DecoderLayerWeights>& layers, const DecoderShape& shape, const DecodeBatch& batch,
                   const float* hidden, const LayeredCache& cache, float* hidden_out, float* residual_out,
                   size_t num_threads) {
    const int64_t tokens = batch.tokens, width = shape.hidden, dim = shape.head_dim;
    const int64_t q_size = shape.num_heads * dim, kv_size = shape.num_kv_heads * dim;
    const int64_t qkv_width = q_size + 2 * kv_size, inter = shape.intermediate;
    if (shape.num_kv_heads < 1 || shape.num_heads % shape.num_kv_heads != 0) {
        throw std::invalid_argument("num_heads must be a multiple of num_kv_heads");
    }
    for (size_t i = 0; i < layers.size(); ++i) {
        check_rows(layers[i].qkv, qkv_width, "qkv", i);
        check_rows(layers[i].o, width, "o", i);
        check_rows(layers[i].gate_up, 2 * inter, "gate_up", i);
        check_rows(layers[i].down, width, "down", i);
        if ((layers[i].q_norm == nullptr) != (layers[i].k_norm == nullptr) ||
            (layers[i].attention_output_norm == nullptr) != (layers[i].mlp_output_norm == nullptr)) {
            throw std::invalid_argument("layer " + std::to_string(i) +
                                        ": q_norm and k_norm, attention_output_norm and mlp_output_norm go together");
        }
        if (layers[i].window < 0) throw std::invalid_argument("layer " + std::to_string(i) + ": window must be >= 0");
        if (layers[i].local_rope && (batch.local_cos_cache == nullptr || batch.local_sin_cache == nullptr)) {
            throw std::invalid_argument("layer " + std::to_string(i) + " rotates with local tables the batch lacks");
        }
    }
    const int64_t num_slots = cache.num_blocks * cache.block_size;
    for (int64_t t = 0; t < tokens; ++t) {
        if (batch.slots[t] < 0 || batch.slots[t] >= num_slots) {
            throw std::invalid_argument("slot_mapping[" + std::to_string(t) + "] = " + std::to_string(batch.slots[t]) +
                                        " is not a slot of the cache (0.." + std::to_string(num_slots - 1) + ")");
        }
    }
    // Each layer's attention checks these too, but only after its keys were stored: check them once, first.
    const PagedCache shape_only{nullptr, nullptr, cache.num_blocks, cache.block_size, shape.num_kv_heads, dim};
    check_paged_decode_inputs(shape_only, tokens, batch.seqlens, batch.block_table, batch.table_width);
    if (tokens == 0 || layers.empty()) {
        std::copy(hidden, hidden + tokens * width, hidden_out);
        std::fill(residual_out, residual_out + tokens * width, 0.0f);
        return;
    }

    // Scratch, one piece per intermediate: decode batches are small.
    std::vector<float> scratch(static_cast<size_t>(tokens) * (width + 2 * qkv_width + 2 * (q_size + kv_size) +
                                                              q_size + 2 * width + 2 * inter + inter + width));
    float* normed = scratch.data();
    float* qkv = normed + tokens * width;
    float* qkv_stored = qkv + tokens * qkv_width;  // the product in the parts' row order, before qkv_order
    float* q = qkv_stored + tokens * qkv_width;
    float* k = q + tokens * q_size;
    float* qk_normed = k + tokens * kv_size;  // [tokens, q_size | kv_size]: q and k after their norms
    float* attended = qk_normed + tokens * (q_size + kv_size);
    float* projected = attended + tokens * q_size;
    float* projected_normed = projected + tokens * width;
    float* gate_up = projected_normed + tokens * width;
    float* activated = gate_up + tokens * 2 * inter;
    float* mlp_out = activated + tokens * inter;

    const int64_t layer_floats = num_slots * kv_size;
    const float* layer_in = hidden;  // the previous layer's MLP output (the embeddings for layer 0)
    for (size_t i = 0; i < layers.size(); ++i) {
        const DecoderLayerWeights& layer = layers[i];
        float* keys = cache.data + (2 * static_cast<int64_t>(i)) * layer_floats;
        float* values = keys + layer_floats;
        if (i == 0) {  // the residual stream starts as the embeddings
            rms_norm(layer_in, width, nullptr, 0, tokens, width, layer.input_norm, shape.rms_norm_eps, nullptr, normed,
                     num_threads);
            std::copy(layer_in, layer_in + tokens * width, residual_out);
        } else {
            // In place: residual_out is read (as the residual) before it is written (as the sum), row by row.
            rms_norm(layer_in, width, residual_out, width, tokens, width, layer.input_norm, shape.rms_norm_eps,
                     residual_out, normed, num_threads);
        }
        if (layer.qkv_order == nullptr) {
            quantized_matmul(normed, tokens, width, layer.qkv.data(), layer.qkv.size(), qkv, num_threads);
        } else {
            quantized_matmul(normed, tokens, width, layer.qkv.data(), layer.qkv.size(), qkv_stored, num_threads);
            for (int64_t t = 0; t < tokens; ++t) {
                const float* stored = qkv_stored + t * qkv_width;
                float* row = qkv + t * qkv_width;
                for (int64_t j = 0; j < qkv_width; ++j) row[j] = stored[layer.qkv_order[j]];
            }
        }
        if (layer.qkv_bias != nullptr) {
            for (int64_t t = 0; t < tokens; ++t) {
                float* row = qkv + t * qkv_width;
                for (int64_t i = 0; i < qkv_width; ++i) row[i] += layer.qkv_bias[i];
            }
        }
        // Where the rotary reads q and k: the projection's rows, or their per-head norms.
        const float* q_in = qkv;
        const float* k_in = qkv + q_size;
        int64_t qk_stride = qkv_width;
        if (layer.q_norm != nullptr) {
            for (int64_t t = 0; t < tokens; ++t) {
                rms_norm(qkv + t * qkv_width, dim, nullptr, 0, shape.num_heads, dim, layer.q_norm, shape.rms_norm_eps,
                         nullptr, qk_normed + t * (q_size + kv_size), num_threads);
                rms_norm(qkv + t * qkv_width + q_size, dim, nullptr, 0, shape.num_kv_heads, dim, layer.k_norm,
                         shape.rms_norm_eps, nullptr, qk_normed + t * (q_size + kv_size) + q_size, num_threads);
            }
            q_in = qk_normed;
            k_in = qk_normed + q_size;
            qk_stride = q_size + kv_size;
        }
        const float* cos = layer.local_rope ? batch.local_cos_cache : batch.cos_cache;
        const float* sin = layer.local_rope ? batch.local_sin_cache : batch.sin_cache;
        rotary_embedding(q_in, tokens, shape.num_heads, dim, qk_stride, dim, batch.positions, cos, sin,
                         batch.max_position, q, num_threads);
        rotary_embedding(k_in, tokens, shape.num_kv_heads, dim, qk_stride, dim, batch.positions, cos, sin,
                         batch.max_position, k, num_threads);
        store_kv_cache(k, kv_size, qkv + q_size + kv_size, qkv_width, tokens, kv_size, batch.slots, num_slots, keys,
                       values);
        const PagedCache paged{keys, values, cache.num_blocks, cache.block_size, shape.num_kv_heads, dim};
        paged_decode_attention(q, tokens, shape.num_heads, paged, batch.seqlens, batch.block_table, batch.table_width,
                               shape.softmax_scale, layer.window, num_threads, attended);
        quantized_matmul(attended, tokens, q_size, layer.o.data(), layer.o.size(), projected, num_threads);
        const float* attention_out = projected;
        if (layer.attention_output_norm != nullptr) {
            rms_norm(projected, width, nullptr, 0, tokens, width, layer.attention_output_norm, shape.rms_norm_eps,
                     nullptr, projected_normed, num_threads);
            attention_out = projected_normed;
        }
        rms_norm(attention_out, width, residual_out, width, tokens, width, layer.post_attention_norm,
                 shape.rms_norm_eps, residual_out, normed, num_threads);
        quantized_matmul(normed, tokens, width, layer.gate_up.data(), layer.gate_up.size(), gate_up, num_threads);
        if (shape.activation == Activation::kGeluTanh) {
            gelu_tanh_and_mul(gate_up, 2 * inter, tokens, inter, activated, inter, num_threads);
        } else {
            silu_and_mul(gate_up, 2 * inter, tokens, inter, activated, inter, num_threads);
        }
        if (layer.mlp_output_norm != nullptr) {
            quantized_matmul(activated, tokens, inter, layer.down.data(), layer.down.size(), mlp_out, num_threads);
            rms_norm(mlp_out, width, nullptr, 0, tokens, width, layer.mlp_output_norm, shape.rms_norm_eps, nullptr,
                     hidden_out, num_threads);
        } else {
            quantized_matmul(activated, tokens, inter, layer.down.data(), layer.down.size(), hidden_out, num_threads);
        }
        layer_in = hidden_out;
    }
}

}  // namespace fastllm::cpu
