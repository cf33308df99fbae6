// Python bindings: fastllm._cpu_kernels. fastllm/kernels/cpu.py checks the arguments and is the
// layer the engine calls; tensors cross as NumPy views of the torch tensors' memory (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>

#include "cpu_attention.h"
#include "cpu_elementwise.h"

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
                            Array<float>& out, size_t num_threads) {
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
                                         num_threads, out_data);
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

}  // namespace

PYBIND11_MODULE(_cpu_kernels, m) {
    m.doc() = "float32 kernels for CPUs (fastllm/kernels/cpu.py is the checked Python layer)";
    m.def("paged_decode_attention", &paged_decode_attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("cache_seqlens"), py::arg("block_table"), py::arg("scale"), py::arg("out"),
          py::arg("num_threads"));
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"),
          py::arg("summed"), py::arg("out"), py::arg("num_threads"));
    m.def("rotary_embedding", &rotary_embedding, py::arg("q"), py::arg("k"), py::arg("positions"),
          py::arg("cos_cache"), py::arg("sin_cache"), py::arg("out_q"), py::arg("out_k"), py::arg("num_threads"));
    py::tuple head_dims(std::size(fastllm::cpu::kHeadDims));
    for (size_t i = 0; i < head_dims.size(); ++i) head_dims[i] = fastllm::cpu::kHeadDims[i];
    m.attr("head_dims") = head_dims;
}
