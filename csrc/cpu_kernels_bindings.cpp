// Python bindings: fastllm._cpu_kernels. fastllm/kernels/cpu.py checks the arguments and is the
// layer the engine calls; tensors cross as NumPy views of the torch tensors' memory (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <iterator>
#include <stdexcept>
#include <string>

#include "cpu_attention.h"

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

void paged_decode_attention(const Array<float>& q, const Array<float>& k_cache, const Array<float>& v_cache,
                            const Array<int32_t>& cache_seqlens, const Array<int32_t>& block_table, float scale,
                            Array<float>& out, size_t num_threads) {
    const float* q_data = c_contiguous_data(q, "q", 3);
    const float* keys = c_contiguous_data(k_cache, "k_cache", 4);
    const float* values = c_contiguous_data(v_cache, "v_cache", 4);
    const int32_t* seqlens = c_contiguous_data(cache_seqlens, "cache_seqlens", 1);
    const int32_t* table = c_contiguous_data(block_table, "block_table", 2);
    c_contiguous_data(out, "out", 3);
    if (!out.writeable()) throw std::invalid_argument("out must be writeable");
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
    float* out_data = out.mutable_data();
    py::gil_scoped_release release;
    fastllm::cpu::paged_decode_attention(q_data, batch, q.shape(1), cache, seqlens, table, block_table.shape(1), scale,
                                         num_threads, out_data);
}

}  // namespace

PYBIND11_MODULE(_cpu_kernels, m) {
    m.doc() = "float32 attention kernels for CPUs (fastllm/kernels/cpu.py is the checked Python layer)";
    m.def("paged_decode_attention", &paged_decode_attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("cache_seqlens"), py::arg("block_table"), py::arg("scale"), py::arg("out"),
          py::arg("num_threads"));
    py::tuple head_dims(std::size(fastllm::cpu::kHeadDims));
    for (size_t i = 0; i < head_dims.size(); ++i) head_dims[i] = fastllm::cpu::kHeadDims[i];
    m.attr("head_dims") = head_dims;
}
