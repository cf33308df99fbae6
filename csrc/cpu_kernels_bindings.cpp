// Python bindings: fastllm._cpu_kernels. fastllm/kernels/cpu.py checks the arguments and is the
// layer the engine calls; tensors cross as NumPy views of the torch tensors' memory (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu_attention.h"
#include "cpu_decoder.h"
#include "cpu_elementwise.h"
#include "cpu_quant_matmul.h"

namespace py = pybind11;

namespace {

template <class T>
using Array = py::array_t<T, 0>;  // no forcecast: a wrong dtype is an error, never a silent copy

template <class T>
const T* c_contiguous_data(const Array<T>& array, const char* name, py::ssize_t ndim) {
    if (array.ndim() != ndim || !(array.flags() & py::array::c_style)) {
        throw std::invalid_argument(std::string(name) + " must be a C-contiguous " + std::to_string(ndim) +
                                    "-D array");
    }
    return array.data();
}

// Float rows with a contiguous last axis (the row stride is returned, in floats).
int64_t row_stride(const Array<float>& array, const char* name, py::ssize_t ndim) {
    if (array.ndim() != ndim || array.strides(ndim - 1) != static_cast<py::ssize_t>(sizeof(float))) {
        throw std::invalid_argument(std::string(name) + " must be a " + std::to_string(ndim) +
                                    "-D array with a contiguous last axis");
    }
    return array.strides(0) / static_cast<py::ssize_t>(sizeof(float));
}

float* writeable_output(Array<float>& out, const char* name, py::ssize_t ndim) {
    c_contiguous_data(out, name, ndim);
    if (!out.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
    return out.mutable_data();
}

void paged_decode_attention(const Array<float>& q, const Array<float>& k_cache, const Array<float>& v_cache,
                            const Array<int32_t>& cache_seqlens, const Array<int32_t>& block_table, float scale,
                            int64_t window, Array<float>& out, size_t num_threads) {
    const float* q_data = c_contiguous_data(q, "q", 3);
    const float* keys = c_contiguous_data(k_cache, "k_cache", 4);
    const float* values = c_contiguous_data(v_cache, "v_cache", 4);
    const int32_t* seqlens = c_contiguous_data(cache_seqlens, "cache_seqlens", 1);
    const int32_t* table = c_contiguous_data(block_table, "block_table", 2);
    float* out_data = writeable_output(out, "out", 3);
    for (py::ssize_t axis = 0; axis < 4; ++axis) {
        if (k_cache.shape(axis) != v_cache.shape(axis)) throw std::invalid_argument("k_cache and v_cache shapes differ");
    }
    const py::ssize_t batch = q.shape(0);
    if (k_cache.shape(3) != q.shape(2) || cache_seqlens.shape(0) != batch || block_table.shape(0) != batch ||
        out.shape(0) != batch || out.shape(1) != q.shape(1) || out.shape(2) != q.shape(2)) {
        throw std::invalid_argument("q, k_cache, cache_seqlens, block_table and out disagree on batch or head_dim");
    }
    const fastllm::cpu::PagedCache cache{keys, values, k_cache.shape(0), k_cache.shape(1), k_cache.shape(2),
                                         k_cache.shape(3)};
    py::gil_scoped_release release;
    fastllm::cpu::paged_decode_attention(q_data, batch, q.shape(1), cache, seqlens, table, block_table.shape(1), scale,
                                         window, num_threads, out_data);
}

// out = rms_norm(x + residual) (summed = x + residual) or, residual None, rms_norm(x).
void rms_norm(const Array<float>& x, std::optional<Array<float>> residual, const Array<float>& weight, float eps,
              std::optional<Array<float>> summed, Array<float>& out, size_t num_threads) {
    const int64_t x_stride = row_stride(x, "x", 2);
    const int64_t rows = x.shape(0), dim = x.shape(1);
    const float* weights = c_contiguous_data(weight, "weight", 1);
    float* out_data = writeable_output(out, "out", 2);
    if (weight.shape(0) != dim || out.shape(0) != rows || out.shape(1) != dim) {
        throw std::invalid_argument("x, weight and out disagree on the hidden size or the row count");
    }
    if (residual.has_value() != summed.has_value()) throw std::invalid_argument("residual and summed go together");
    const float* residual_data = nullptr;
    float* summed_data = nullptr;
    int64_t residual_stride = 0;
    if (residual) {
        residual_stride = row_stride(*residual, "residual", 2);
        summed_data = writeable_output(*summed, "summed", 2);
        if (residual->shape(0) != rows || residual->shape(1) != dim || summed->shape(0) != rows ||
            summed->shape(1) != dim) {
            throw std::invalid_argument("residual and summed must have the shape of x");
        }
        residual_data = residual->data();
    }
    py::gil_scoped_release release;
    fastllm::cpu::rms_norm(x.data(), x_stride, residual_data, residual_stride, rows, dim, weights, eps, summed_data,
                           out_data, num_threads);
}

// Rotates q and k (each [tokens, heads, dim], contiguous last axis) into out_q and out_k.
void rotary_embedding(const Array<float>& q, const Array<float>& k, const Array<int64_t>& positions,
                      const Array<float>& cos_cache, const Array<float>& sin_cache, Array<float>& out_q,
                      Array<float>& out_k, size_t num_threads) {
    const int64_t* position_data = c_contiguous_data(positions, "positions", 1);
    const float* cos = c_contiguous_data(cos_cache, "cos_cache", 2);
    const float* sin = c_contiguous_data(sin_cache, "sin_cache", 2);
    const int64_t floats = static_cast<int64_t>(sizeof(float));
    struct Job {
        const float* x;
        int64_t heads, token_stride, head_stride;
        float* out;
    };
    Job jobs[2];
    const Array<float>* inputs[2] = {&q, &k};
    Array<float>* outputs[2] = {&out_q, &out_k};
    const int64_t tokens = positions.shape(0), dim = q.ndim() == 3 ? q.shape(2) : 0;
    for (int i = 0; i < 2; ++i) {
        const Array<float>& x = *inputs[i];
        Array<float>& out = *outputs[i];
        const char* name = i == 0 ? "q" : "k";
        if (x.ndim() != 3 || x.strides(2) != floats) {
            throw std::invalid_argument(std::string(name) + " must be a 3-D array with a contiguous last axis");
        }
        float* out_data = writeable_output(out, i == 0 ? "out_q" : "out_k", 3);
        if (x.shape(0) != tokens || x.shape(2) != dim || out.shape(0) != tokens || out.shape(1) != x.shape(1) ||
            out.shape(2) != dim) {
            throw std::invalid_argument("q, k, positions and the outputs disagree on tokens or head_dim");
        }
        jobs[i] = Job{x.data(), x.shape(1), x.strides(0) / floats, x.strides(1) / floats, out_data};
    }
    if (dim % 2 || cos_cache.shape(1) * 2 != dim || sin_cache.shape(0) != cos_cache.shape(0) ||
        sin_cache.shape(1) != cos_cache.shape(1)) {
        throw std::invalid_argument("cos_cache and sin_cache must both be [max_position, head_dim / 2]");
    }
    py::gil_scoped_release release;
    for (const Job& job : jobs) {
        fastllm::cpu::rotary_embedding(job.x, tokens, job.heads, dim, job.token_stride, job.head_stride,
                                       position_data, cos, sin, cos_cache.shape(0), job.out, num_threads);
    }
}

// GGUF-encoded weights cross as uint8 [rows, bytes per row] C-contiguous arrays with their ggml
// type id; the C++ core checks the types and sizes (fastllm/kernels/cpu_quant.py is the layer above).
fastllm::cpu::QuantMatrix quant_matrix(const Array<uint8_t>& w, int qtype, const std::string& name) {
    const uint8_t* data = c_contiguous_data(w, name.c_str(), 2);
    return fastllm::cpu::QuantMatrix{data, qtype, w.shape(0), w.shape(1)};
}

// out [M, sum N_i] = x [M, K] @ (the parts stacked by rows)^T.
void quantized_matmul(const Array<float>& x, const std::vector<std::pair<Array<uint8_t>, int>>& parts,
                      Array<float>& out, size_t num_threads) {
    const float* x_data = c_contiguous_data(x, "x", 2);
    float* out_data = writeable_output(out, "out", 2);
    std::vector<fastllm::cpu::QuantMatrix> matrices;
    py::ssize_t width = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
        matrices.push_back(quant_matrix(parts[i].first, parts[i].second, "parts[" + std::to_string(i) + "]"));
        width += parts[i].first.shape(0);
    }
    if (out.shape(0) != x.shape(0) || out.shape(1) != width) {
        throw std::invalid_argument("out must have shape [" + std::to_string(x.shape(0)) + ", " + std::to_string(width) +
                                    "] (x's rows, the parts' rows), got [" + std::to_string(out.shape(0)) + ", " +
                                    std::to_string(out.shape(1)) + "]");
    }
    py::gil_scoped_release release;
    fastllm::cpu::quantized_matmul(x_data, x.shape(0), x.shape(1), matrices.data(), matrices.size(), out_data,
                                   num_threads);
}

// out [R, K] = the rows `rows` of w decoded; K is out's width.
void dequantize_rows(const Array<uint8_t>& w, int qtype, const Array<int64_t>& rows, Array<float>& out,
                     size_t num_threads) {
    const fastllm::cpu::QuantMatrix matrix = quant_matrix(w, qtype, "w");
    const int64_t* row_data = c_contiguous_data(rows, "rows", 1);
    float* out_data = writeable_output(out, "out", 2);
    if (out.shape(0) != rows.shape(0)) {
        throw std::invalid_argument("out must have one row per index (" + std::to_string(rows.shape(0)) + "), got " +
                                    std::to_string(out.shape(0)));
    }
    py::gil_scoped_release release;
    fastllm::cpu::dequantize_rows(matrix, out.shape(1), row_data, rows.shape(0), out_data, num_threads);
}

// out [count, K] = rows first_row .. first_row + count - 1 of w decoded.
void dequantize_row_range(const Array<uint8_t>& w, int qtype, int64_t first_row, Array<float>& out,
                          size_t num_threads) {
    const fastllm::cpu::QuantMatrix matrix = quant_matrix(w, qtype, "w");
    float* out_data = writeable_output(out, "out", 2);
    py::gil_scoped_release release;
    fastllm::cpu::dequantize_row_range(matrix, out.shape(1), first_row, out.shape(0), out_data, num_threads);
}

// A gated activation (SwiGLU or GeGLU) over x [rows, 2 * inter] into out [rows, inter] (rows of each
// strided, with a contiguous last axis: out may be a slice of a wider tensor's columns).
template <void (*kGated)(const float*, int64_t, int64_t, int64_t, float*, int64_t, size_t)>
void gated_activation(const Array<float>& x, Array<float>& out, size_t num_threads) {
    const int64_t x_stride = row_stride(x, "x", 2);
    const int64_t out_stride = row_stride(out, "out", 2);
    if (!out.writeable()) throw std::invalid_argument("out must be writeable");
    if (x.shape(1) % 2 || out.shape(0) != x.shape(0) || out.shape(1) * 2 != x.shape(1)) {
        throw std::invalid_argument("x must be [rows, 2 * inter] and out [rows, inter]");
    }
    float* out_data = out.mutable_data();
    py::gil_scoped_release release;
    kGated(x.data(), x_stride, x.shape(0), out.shape(1), out_data, out_stride, num_threads);
}

// New keys and values [tokens, heads, dim] (contiguous rows of heads * dim) into the caches' slots.
void store_kv_cache(const Array<float>& k, const Array<float>& v, Array<float>& k_cache, Array<float>& v_cache,
                    const Array<int64_t>& slot_mapping) {
    for (const auto* t : {&k, &v}) {
        if (t->ndim() != 3 || t->strides(2) != static_cast<py::ssize_t>(sizeof(float)) ||
            t->strides(1) != t->shape(2) * static_cast<py::ssize_t>(sizeof(float))) {
            throw std::invalid_argument("k and v must be [tokens, heads, dim] with contiguous rows of heads x dim");
        }
    }
    float* keys = writeable_output(k_cache, "k_cache", 4);
    float* values = writeable_output(v_cache, "v_cache", 4);
    const int64_t* slots = c_contiguous_data(slot_mapping, "slot_mapping", 1);
    const py::ssize_t tokens = k.shape(0), row = k.shape(1) * k.shape(2);
    if (v.shape(0) != tokens || v.shape(1) * v.shape(2) != row || slot_mapping.shape(0) != tokens ||
        k_cache.shape(2) * k_cache.shape(3) != row) {
        throw std::invalid_argument("k, v, the caches and slot_mapping disagree on tokens, heads or head_dim");
    }
    for (py::ssize_t axis = 0; axis < 4; ++axis) {
        if (k_cache.shape(axis) != v_cache.shape(axis)) throw std::invalid_argument("k_cache and v_cache shapes differ");
    }
    const int64_t floats = static_cast<int64_t>(sizeof(float));
    py::gil_scoped_release release;
    fastllm::cpu::store_kv_cache(k.data(), k.strides(0) / floats, v.data(), v.strides(0) / floats, tokens, row, slots,
                                 k_cache.shape(0) * k_cache.shape(1), keys, values);
}

fastllm::cpu::Activation activation_named(const std::string& name) {
    if (name == "silu") return fastllm::cpu::Activation::kSilu;
    if (name == "gelu_pytorch_tanh") return fastllm::cpu::Activation::kGeluTanh;
    throw std::invalid_argument("activation must be 'silu' or 'gelu_pytorch_tanh', got '" + name + "'");
}

// Every decoder layer's weights, kept alive (the arrays may be views of a memory-mapped file).
// A layer is a dict: "input_norm", "post_attention_norm" (float32 [hidden]), "qkv", "o", "gate_up",
// "down" (lists of (uint8 rows, ggml type)), and optionally "qkv_bias", "q_norm", "k_norm",
// "attention_output_norm", "mlp_output_norm" (float32 arrays), "window" (int), "local_rope" (bool),
// "qkv_order" (int64 [q_size + 2 * kv_size]: the qkv stack column each output column takes).
class DecoderStack {
  public:
    using Parts = std::vector<std::pair<Array<uint8_t>, int>>;

    DecoderStack(const std::vector<py::dict>& layers, int64_t hidden, int64_t intermediate, int64_t num_heads,
                 int64_t num_kv_heads, int64_t head_dim, float eps, float scale, const std::string& activation)
        : arrays_(py::list()),
          shape_{hidden, intermediate, num_heads, num_kv_heads, head_dim, eps, scale, activation_named(activation)} {
        static const char* const kKeys[] = {"input_norm", "post_attention_norm", "qkv", "o", "gate_up", "down",
                                            "qkv_bias", "q_norm", "k_norm", "attention_output_norm",
                                            "mlp_output_norm", "window", "local_rope", "qkv_order"};
        const int64_t q_size = num_heads * head_dim, qkv_width = q_size + 2 * num_kv_heads * head_dim;
        for (size_t i = 0; i < layers.size(); ++i) {
            const py::dict& layer = layers[i];
            const std::string name = "layers[" + std::to_string(i) + "]";
            for (const auto& item : layer) {
                const std::string key = py::str(item.first);
                if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys)) {
                    throw std::invalid_argument(name + " has an unknown key '" + key + "'");
                }
            }
            fastllm::cpu::DecoderLayerWeights weights{
                vector(layer, "input_norm", hidden, name), vector(layer, "post_attention_norm", hidden, name),
                matrices(layer, "qkv", name), matrices(layer, "o", name), matrices(layer, "gate_up", name),
                matrices(layer, "down", name)};
            weights.qkv_bias = optional_vector(layer, "qkv_bias", qkv_width, name);
            weights.q_norm = optional_vector(layer, "q_norm", head_dim, name);
            weights.k_norm = optional_vector(layer, "k_norm", head_dim, name);
            weights.attention_output_norm = optional_vector(layer, "attention_output_norm", hidden, name);
            weights.mlp_output_norm = optional_vector(layer, "mlp_output_norm", hidden, name);
            weights.window = layer.contains("window") ? layer["window"].cast<int64_t>() : 0;
            weights.local_rope = layer.contains("local_rope") && layer["local_rope"].cast<bool>();
            weights.qkv_order = optional_order(layer, "qkv_order", qkv_width, name);
            layers_.push_back(std::move(weights));
        }
    }

    void decode(const Array<float>& hidden, const Array<int64_t>& positions, const Array<float>& cos_cache,
                const Array<float>& sin_cache, std::optional<Array<float>> local_cos_cache,
                std::optional<Array<float>> local_sin_cache, Array<float>& kv_cache, const Array<int64_t>& slot_mapping,
                const Array<int32_t>& context_lens, const Array<int32_t>& block_tables, Array<float>& hidden_out,
                Array<float>& residual_out, size_t num_threads) const {
        const float* in = c_contiguous_data(hidden, "hidden", 2);
        float* cache = writeable_output(kv_cache, "kv_cache", 6);
        float* out = writeable_output(hidden_out, "hidden_out", 2);
        float* residual = writeable_output(residual_out, "residual_out", 2);
        const py::ssize_t tokens = hidden.shape(0);
        const int64_t* position_data = c_contiguous_data(positions, "positions", 1);
        const int64_t* slots = c_contiguous_data(slot_mapping, "slot_mapping", 1);
        const int32_t* seqlens = c_contiguous_data(context_lens, "context_lens", 1);
        const int32_t* table = c_contiguous_data(block_tables, "block_tables", 2);
        const float* cos = c_contiguous_data(cos_cache, "cos_cache", 2);
        const float* sin = c_contiguous_data(sin_cache, "sin_cache", 2);
        const bool shapes_agree =
            hidden.shape(1) == shape_.hidden && positions.shape(0) == tokens && slot_mapping.shape(0) == tokens &&
            context_lens.shape(0) == tokens && block_tables.shape(0) == tokens && hidden_out.shape(0) == tokens &&
            hidden_out.shape(1) == shape_.hidden && residual_out.shape(0) == tokens &&
            residual_out.shape(1) == shape_.hidden && cos_cache.shape(1) * 2 == shape_.head_dim &&
            sin_cache.shape(0) == cos_cache.shape(0) && sin_cache.shape(1) == cos_cache.shape(1) &&
            kv_cache.shape(0) == static_cast<py::ssize_t>(layers_.size()) && kv_cache.shape(1) == 2 &&
            kv_cache.shape(4) == shape_.num_kv_heads && kv_cache.shape(5) == shape_.head_dim;
        if (!shapes_agree) {
            throw std::invalid_argument("hidden, positions, the rotary tables, kv_cache, slot_mapping, context_lens, "
                                        "block_tables and the outputs disagree with the model or each other");
        }
        const float* local_cos = nullptr;
        const float* local_sin = nullptr;
        if (local_cos_cache.has_value() != local_sin_cache.has_value()) {
            throw std::invalid_argument("local_cos_cache and local_sin_cache go together");
        }
        if (local_cos_cache) {
            local_cos = c_contiguous_data(*local_cos_cache, "local_cos_cache", 2);
            local_sin = c_contiguous_data(*local_sin_cache, "local_sin_cache", 2);
            for (const auto* local : {&*local_cos_cache, &*local_sin_cache}) {
                if (local->shape(0) != cos_cache.shape(0) || local->shape(1) != cos_cache.shape(1)) {
                    throw std::invalid_argument("the local rotary tables must have the shape of cos_cache");
                }
            }
        }
        const fastllm::cpu::DecodeBatch batch{tokens, position_data, cos, sin, cos_cache.shape(0), local_cos, local_sin,
                                              slots, seqlens, table, block_tables.shape(1)};
        const fastllm::cpu::LayeredCache layered{cache, kv_cache.shape(2), kv_cache.shape(3)};
        py::gil_scoped_release release;
        fastllm::cpu::decode_layers(layers_, shape_, batch, in, layered, out, residual, num_threads);
    }

  private:
    const float* vector(const py::dict& layer, const char* key, int64_t size, const std::string& layer_name) {
        const std::string name = layer_name + "[" + key + "]";
        if (!layer.contains(key)) throw std::invalid_argument(layer_name + " lacks '" + key + "'");
        const Array<float> weight = layer[key].cast<Array<float>>();
        const float* data = c_contiguous_data(weight, name.c_str(), 1);
        if (weight.shape(0) != size) {
            throw std::invalid_argument(name + " must have " + std::to_string(size) + " values");
        }
        arrays_.append(weight);
        return data;
    }

    const float* optional_vector(const py::dict& layer, const char* key, int64_t size, const std::string& layer_name) {
        return layer.contains(key) && !layer[key].is_none() ? vector(layer, key, size, layer_name) : nullptr;
    }

    // An optional column order: `size` indices, each in 0..size - 1.
    const int64_t* optional_order(const py::dict& layer, const char* key, int64_t size, const std::string& layer_name) {
        if (!layer.contains(key) || layer[key].is_none()) return nullptr;
        const std::string name = layer_name + "[" + key + "]";
        const Array<int64_t> order = layer[key].cast<Array<int64_t>>();
        const int64_t* data = c_contiguous_data(order, name.c_str(), 1);
        if (order.shape(0) != size) {
            throw std::invalid_argument(name + " must have " + std::to_string(size) + " values");
        }
        for (int64_t i = 0; i < size; ++i) {
            if (data[i] < 0 || data[i] >= size) {
                throw std::invalid_argument(name + " holds " + std::to_string(data[i]) + ", outside 0.." +
                                            std::to_string(size - 1));
            }
        }
        arrays_.append(order);
        return data;
    }

    std::vector<fastllm::cpu::QuantMatrix> matrices(const py::dict& layer, const char* key,
                                                    const std::string& layer_name) {
        if (!layer.contains(key)) throw std::invalid_argument(layer_name + " lacks '" + key + "'");
        const Parts parts = layer[key].cast<Parts>();
        std::vector<fastllm::cpu::QuantMatrix> out;
        for (size_t i = 0; i < parts.size(); ++i) {
            out.push_back(quant_matrix(parts[i].first, parts[i].second,
                                       layer_name + "[" + key + "][" + std::to_string(i) + "]"));
            arrays_.append(parts[i].first);
        }
        return out;
    }

    py::list arrays_;  // references that keep every weight array alive
    fastllm::cpu::DecoderShape shape_;
    std::vector<fastllm::cpu::DecoderLayerWeights> layers_;
};

}  // namespace

PYBIND11_MODULE(_cpu_kernels, m) {
    m.doc() = "float32 kernels for CPUs (fastllm/kernels/cpu.py is the checked Python layer)";
    m.def("paged_decode_attention", &paged_decode_attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("cache_seqlens"), py::arg("block_table"), py::arg("scale"), py::arg("window"), py::arg("out"),
          py::arg("num_threads"));
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"),
          py::arg("summed"), py::arg("out"), py::arg("num_threads"));
    m.def("rotary_embedding", &rotary_embedding, py::arg("q"), py::arg("k"), py::arg("positions"),
          py::arg("cos_cache"), py::arg("sin_cache"), py::arg("out_q"), py::arg("out_k"), py::arg("num_threads"));
    py::tuple head_dims(std::size(fastllm::cpu::kHeadDims));
    for (size_t i = 0; i < head_dims.size(); ++i) head_dims[i] = fastllm::cpu::kHeadDims[i];
    m.attr("head_dims") = head_dims;

    m.def("quantized_matmul", &quantized_matmul, py::arg("x"), py::arg("parts"), py::arg("out"),
          py::arg("num_threads"));
    m.def("dequantize_rows", &dequantize_rows, py::arg("w"), py::arg("qtype"), py::arg("rows"), py::arg("out"),
          py::arg("num_threads"));
    m.def("dequantize_row_range", &dequantize_row_range, py::arg("w"), py::arg("qtype"), py::arg("first_row"),
          py::arg("out"), py::arg("num_threads"));
    m.def("quant_isa", &fastllm::cpu::quant_isa, "the ISA the quantized kernels run on");
    m.def("quant_isas", [] {
        const std::vector<std::string> names = fastllm::cpu::quant_isas();
        py::tuple isas(names.size());
        for (size_t i = 0; i < names.size(); ++i) isas[i] = names[i];
        return isas;
    }, "the ISAs this CPU runs, widest first");
    m.def("set_quant_isa", &fastllm::cpu::set_quant_isa, py::arg("name"));
    py::tuple quant_types(std::size(fastllm::cpu::quant::kTypes));
    for (size_t i = 0; i < quant_types.size(); ++i) quant_types[i] = fastllm::cpu::quant::kTypes[i];
    m.attr("quant_types") = quant_types;

    m.def("silu_and_mul", &gated_activation<fastllm::cpu::silu_and_mul>, py::arg("x"), py::arg("out"),
          py::arg("num_threads"));
    m.def("gelu_tanh_and_mul", &gated_activation<fastllm::cpu::gelu_tanh_and_mul>, py::arg("x"), py::arg("out"),
          py::arg("num_threads"));
    m.def("store_kv_cache", &store_kv_cache, py::arg("k"), py::arg("v"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("slot_mapping"));
    py::class_<DecoderStack>(m, "DecoderStack")
        .def(py::init<const std::vector<py::dict>&, int64_t, int64_t, int64_t, int64_t, int64_t, float, float,
                      const std::string&>(),
             py::arg("layers"), py::arg("hidden_size"), py::arg("intermediate_size"), py::arg("num_heads"),
             py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("rms_norm_eps"), py::arg("softmax_scale"),
             py::arg("activation") = "silu")
        .def("decode", &DecoderStack::decode, py::arg("hidden"), py::arg("positions"), py::arg("cos_cache"),
             py::arg("sin_cache"), py::arg("local_cos_cache"), py::arg("local_sin_cache"), py::arg("kv_cache"),
             py::arg("slot_mapping"), py::arg("context_lens"), py::arg("block_tables"), py::arg("hidden_out"),
             py::arg("residual_out"), py::arg("num_threads"));
}
