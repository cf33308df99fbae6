#include "cpu_quant_matmul.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// The AVX2 and AVX-512 kernels are GCC's (`#pragma GCC target` regions) on x86-64; elsewhere, and
// with other compilers, the generic kernels are the only ones.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTLLM_QUANT_X86 1
#include <immintrin.h>
#else
#define FASTLLM_QUANT_X86 0
#endif

// The kernels' accumulators stay in registers only if their loops over tile rows and vectors are
// unrolled, a K-quant block's 16 (AVX-512) or 32 (AVX2) vectors included (unrolled 16 at a time,
// AVX2's Q5_K and Q6_K measured a third slower). The generic kernels unroll 16 at a time: all 64
// vectors would triple this file's compile time. Nothing is unrolled under AddressSanitizer:
// unrolled and instrumented, the file took GCC 12 over nine minutes to compile (35 s rolled), and
// every access is checked either way.
#define FASTLLM_PRAGMA(text) _Pragma(#text)
#if defined(__SANITIZE_ADDRESS__)
#define FASTLLM_UNROLL(n)
#else
#define FASTLLM_UNROLL(n) FASTLLM_PRAGMA(GCC unroll n)
#endif

namespace fastllm::cpu {
namespace {

// Rows of one part against x: out points at the part's first column of the output.
struct MatmulJob {
    const float* x;  // [m, k]
    int64_t m, k;
    const uint8_t* weights;
    int64_t row_bytes;
    float* out;  // rows of out_stride floats
    int64_t out_stride;
};

// One ISA's kernels for one type: weight rows [row_begin, row_end) of a job, and one decoded row.
struct TypeKernels {
    void (*matmul)(const MatmulJob& job, int64_t row_begin, int64_t row_end);
    void (*dequantize)(const uint8_t* row, int64_t cols, float* out);
};

// Every half as a float (256 KB, built at load time): the kernels' block scales.
struct HalfTable {
    float values[1 << 16];
    HalfTable() {
        for (uint32_t bits = 0; bits < (1u << 16); ++bits) values[bits] = quant::half_to_float(static_cast<uint16_t>(bits));
    }
};
const HalfTable kHalves;

namespace generic_isa {
struct Isa {
    static constexpr int kLanes = 4, kAccumulators = 8;  // 16 SSE / NEON registers
    static constexpr bool kLookup16 = false, kXInRegister = false;
    typedef float F __attribute__((vector_size(kLanes * sizeof(float))));
    typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
    static F fma(F a, F b, F c) { return a * b + c; }
    static F broadcast(float x) { return F{x, x, x, x}; }
    static F to_float(I v) { return __builtin_convertvector(v, F); }
    static I widen_u8(const uint8_t* p) { return I{p[0], p[1], p[2], p[3]}; }
    static I widen_s8(const uint8_t* p) {
        const auto* s = reinterpret_cast<const int8_t*>(p);
        return I{s[0], s[1], s[2], s[3]};
    }
    static I widen_u16(const uint8_t* p) {
        return I{quant::read_u16(p), quant::read_u16(p + 2), quant::read_u16(p + 4), quant::read_u16(p + 6)};
    }
    template <bool Signed>
    static void scale8(const uint8_t* p, float d, float* out) {
        for (int i = 0; i < 8; ++i) out[i] = d * static_cast<float>(Signed ? static_cast<int8_t>(p[i]) : p[i]);
    }
    static F halves(const uint8_t* p) {
        F v;
        for (int i = 0; i < kLanes; ++i) v[i] = quant::half_at(p + 2 * i);
        return v;
    }
};
#define FASTLLM_UNROLL_VECTORS FASTLLM_UNROLL(16)
#include "cpu_quant_kernels.inc"
#undef FASTLLM_UNROLL_VECTORS
}  // namespace generic_isa

#if FASTLLM_QUANT_X86
// Unaligned loads take __m128i pointers.
inline const __m128i* xmm(const uint8_t* p) { return reinterpret_cast<const __m128i*>(p); }

#define FASTLLM_SCALE8                                                                              \
    template <bool Signed>                                                                          \
    static void scale8(const uint8_t* p, float d, float* out) {                                     \
        const __m128i bytes = _mm_loadl_epi64(xmm(p));                                              \
        const __m256i ints = Signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);    \
        _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(ints)));          \
    }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2_isa {
struct Isa {
    static constexpr int kLanes = 8, kAccumulators = 8;  // 16 ymm registers
    static constexpr bool kLookup16 = false;  // a 16-entry table takes two ymm registers
    static constexpr bool kXInRegister = false;
    typedef float F __attribute__((vector_size(kLanes * sizeof(float))));
    typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
    static F fma(F a, F b, F c) { return (F)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
    static F broadcast(float x) { return (F)_mm256_set1_ps(x); }
    static F to_float(I v) { return (F)_mm256_cvtepi32_ps((__m256i)v); }
    static I widen_u8(const uint8_t* p) { return (I)_mm256_cvtepu8_epi32(_mm_loadl_epi64(xmm(p))); }
    static I widen_s8(const uint8_t* p) { return (I)_mm256_cvtepi8_epi32(_mm_loadl_epi64(xmm(p))); }
    static I widen_u16(const uint8_t* p) { return (I)_mm256_cvtepu16_epi32(_mm_loadu_si128(xmm(p))); }
    FASTLLM_SCALE8
    static F halves(const uint8_t* p) {
        return (F)_mm256_cvtph_ps(_mm_loadu_si128(xmm(p)));
    }
};
#define FASTLLM_UNROLL_VECTORS FASTLLM_UNROLL(32)
#include "cpu_quant_kernels.inc"
#undef FASTLLM_UNROLL_VECTORS
}  // namespace avx2_isa
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
// GCC 12 reports the undefined source operand _mm512_cvtph_ps passes internally as maybe-uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512_isa {
struct Isa {
    static constexpr int kLanes = 16, kAccumulators = 24;  // 32 zmm registers
    static constexpr bool kLookup16 = true, kXInRegister = true;
    typedef float F __attribute__((vector_size(kLanes * sizeof(float))));
    typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
    static F fma(F a, F b, F c) { return (F)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
    static F broadcast(float x) { return (F)_mm512_set1_ps(x); }
    static F to_float(I v) { return (F)_mm512_cvtepi32_ps((__m512i)v); }
    static I widen_u8(const uint8_t* p) { return (I)_mm512_cvtepu8_epi32(_mm_loadu_si128(xmm(p))); }
    static I widen_s8(const uint8_t* p) { return (I)_mm512_cvtepi8_epi32(_mm_loadu_si128(xmm(p))); }
    static I widen_u16(const uint8_t* p) {
        return (I)_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    FASTLLM_SCALE8
    static F halves(const uint8_t* p) {
        return (F)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static F lookup16(F table, I codes) { return (F)_mm512_permutexvar_ps((__m512i)codes, (__m512)table); }
    static F lookup32(F low, F high, I codes) {
        return (F)_mm512_permutex2var_ps((__m512)low, (__m512i)codes, (__m512)high);
    }
};
#define FASTLLM_UNROLL_VECTORS FASTLLM_UNROLL(16)
#include "cpu_quant_kernels.inc"
#undef FASTLLM_UNROLL_VECTORS
}  // namespace avx512_isa
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

struct IsaEntry {
    const char* name;
    bool (*runs)();
    TypeKernels (*kernels)(int type);
};

bool always() { return true; }

#if FASTLLM_QUANT_X86
bool runs_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool runs_avx512() {
    return runs_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

// Widest first: the default is the first this CPU runs.
constexpr IsaEntry kIsas[] = {
#if FASTLLM_QUANT_X86
    {"avx512", runs_avx512, avx512_isa::type_kernels},
    {"avx2", runs_avx2, avx2_isa::type_kernels},
#endif
    {"generic", always, generic_isa::type_kernels},
};

const IsaEntry* widest_isa() {
    for (const IsaEntry& isa : kIsas) {
        if (isa.runs()) return &isa;
    }
    return &kIsas[std::size(kIsas) - 1];
}

std::atomic<const IsaEntry*> selected_isa{nullptr};

const IsaEntry& current_isa() {
    const IsaEntry* isa = selected_isa.load(std::memory_order_relaxed);
    if (isa == nullptr) {
        isa = widest_isa();
        selected_isa.store(isa, std::memory_order_relaxed);
    }
    return *isa;
}

std::string supported_types() {
    std::string names;
    for (const int type : quant::kTypes) {
        names += (names.empty() ? "" : ", ") + std::string(quant::block_format(type).name) + " = " + std::to_string(type);
    }
    return names;
}

// `cols_name`: where the row length comes from, for the messages.
void check_matrix(const QuantMatrix& w, int64_t cols, const std::string& name, const std::string& cols_name) {
    const int64_t bytes = quant_row_bytes(w.type, cols, cols_name);
    if (w.rows < 0) throw std::invalid_argument(name + " has " + std::to_string(w.rows) + " rows");
    if (w.row_bytes != bytes) {
        throw std::invalid_argument(name + " has rows of " + std::to_string(w.row_bytes) + " bytes, but " +
                                    std::to_string(cols) + " values of " + quant::block_format(w.type).name +
                                    " take " + std::to_string(bytes));
    }
    if (w.rows > 0 && bytes > 0 && w.data == nullptr) throw std::invalid_argument(name + " has no data");
}

int team_size(size_t num_threads, int64_t items) {
    return static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(num_threads), 1, std::max<int64_t>(items, 1)));
}

// Work items of about this many weight bytes: enough to stream (and to amortize handing them
// out), small enough that every thread gets several and a late one does not hold up the rest.
constexpr int64_t kMinItemBytes = 32 << 10, kMaxItemBytes = 512 << 10, kItemsPerThread = 8;

struct Item {
    size_t part;
    int64_t row_begin, row_end;
};

std::vector<Item> split_rows(const QuantMatrix* parts, size_t num_parts, size_t num_threads) {
    int64_t total_bytes = 0;
    for (size_t i = 0; i < num_parts; ++i) total_bytes += parts[i].rows * parts[i].row_bytes;
    const int64_t target = std::clamp<int64_t>(
        total_bytes / (static_cast<int64_t>(std::max<size_t>(num_threads, 1)) * kItemsPerThread), kMinItemBytes,
        kMaxItemBytes);
    std::vector<Item> items;
    for (size_t i = 0; i < num_parts; ++i) {
        // Whole tiles of 4 rows (the widest tile), at least one.
        const int64_t rows = std::max<int64_t>(4, target / std::max<int64_t>(parts[i].row_bytes, 1) / 4 * 4);
        for (int64_t r = 0; r < parts[i].rows; r += rows) items.push_back({i, r, std::min(r + rows, parts[i].rows)});
    }
    return items;
}

// Rows [0, count) of out from rows row_of(i) of w, in parallel when there are enough values.
template <class RowOf>
void dequantize_each(const QuantMatrix& w, int64_t cols, int64_t count, float* out, size_t num_threads,
                     RowOf row_of) {
    const auto decode = current_isa().kernels(w.type).dequantize;
    const int64_t rows_per_item = std::max<int64_t>(1, (kMinItemBytes / 4) / std::max<int64_t>(cols, 1));
    const int64_t items = (count + rows_per_item - 1) / rows_per_item;
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_size(num_threads, items)) if (items > 1)
    for (int64_t item = 0; item < items; ++item) {
        const int64_t end = std::min(count, (item + 1) * rows_per_item);
        for (int64_t i = item * rows_per_item; i < end; ++i) decode(w.data + row_of(i) * w.row_bytes, cols, out + i * cols);
    }
}

}  // namespace

int64_t quant_row_bytes(int type, int64_t cols, const std::string& what) {
    const quant::BlockFormat format = quant::block_format(type);
    if (format.values == 0) {
        throw std::invalid_argument("ggml type id " + std::to_string(type) + " is not supported (" + supported_types() +
                                    ")");
    }
    if (cols < 0 || cols % format.values != 0) {
        throw std::invalid_argument(what + " = " + std::to_string(cols) + " is not a whole number of " + format.name +
                                    " blocks (" + std::to_string(format.values) + " values)");
    }
    return cols / format.values * format.bytes;
}

void quantized_matmul(const float* x, int64_t m, int64_t k, const QuantMatrix* parts, size_t num_parts, float* out,
                      size_t num_threads) {
    if (m < 0 || k < 0) {
        throw std::invalid_argument("x must have a non-negative shape, got [" + std::to_string(m) + ", " +
                                    std::to_string(k) + "]");
    }
    int64_t width = 0;
    for (size_t i = 0; i < num_parts; ++i) {
        check_matrix(parts[i], k, "parts[" + std::to_string(i) + "]", "K (x's columns)");
        width += parts[i].rows;
    }
    if (m == 0 || width == 0) return;
    const IsaEntry& isa = current_isa();
    std::vector<TypeKernels> kernels(num_parts);
    std::vector<int64_t> first_column(num_parts);
    for (size_t i = 0, column = 0; i < num_parts; column += static_cast<size_t>(parts[i].rows), ++i) {
        kernels[i] = isa.kernels(parts[i].type);
        first_column[i] = static_cast<int64_t>(column);
    }
    const std::vector<Item> items = split_rows(parts, num_parts, num_threads);
    const int64_t count = static_cast<int64_t>(items.size());
    // The threads are OpenMP's: this module links the libgomp torch loaded, so the kernel runs on
    // torch's own intra-op threads (see cpu_attention.cpp).
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_size(num_threads, count))
    for (int64_t i = 0; i < count; ++i) {
        const Item& item = items[static_cast<size_t>(i)];
        const QuantMatrix& part = parts[item.part];
        const MatmulJob job{x, m, k, part.data, part.row_bytes, out + first_column[item.part], width};
        kernels[item.part].matmul(job, item.row_begin, item.row_end);
    }
}

void dequantize_rows(const QuantMatrix& w, int64_t cols, const int64_t* rows, int64_t count, float* out,
                     size_t num_threads) {
    check_matrix(w, cols, "w", "out's columns");
    if (count < 0) throw std::invalid_argument("rows must not have a negative length");
    for (int64_t i = 0; i < count; ++i) {
        if (rows[i] < 0 || rows[i] >= w.rows) {
            throw std::invalid_argument("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                        " is not a row of w (0.." + std::to_string(w.rows - 1) + ")");
        }
    }
    dequantize_each(w, cols, count, out, num_threads, [rows](int64_t i) { return rows[i]; });
}

void dequantize_row_range(const QuantMatrix& w, int64_t cols, int64_t first_row, int64_t count, float* out,
                          size_t num_threads) {
    check_matrix(w, cols, "w", "out's columns");
    if (first_row < 0 || count < 0 || first_row > w.rows - count) {
        throw std::invalid_argument("rows " + std::to_string(first_row) + ".." + std::to_string(first_row + count - 1) +
                                    " are not rows of w (0.." + std::to_string(w.rows - 1) + ")");
    }
    dequantize_each(w, cols, count, out, num_threads, [first_row](int64_t i) { return first_row + i; });
}

std::string quant_isa() { return current_isa().name; }

std::vector<std::string> quant_isas() {
    std::vector<std::string> names;
    for (const IsaEntry& isa : kIsas) {
        if (isa.runs()) names.emplace_back(isa.name);
    }
    return names;
}

void set_quant_isa(const std::string& name) {
    for (const IsaEntry& isa : kIsas) {
        if (name == isa.name && isa.runs()) {
            selected_isa.store(&isa, std::memory_order_relaxed);
            return;
        }
    }
    std::string names;
    for (const std::string& runs : quant_isas()) names += (names.empty() ? "" : ", ") + runs;
    throw std::invalid_argument("quant ISA '" + name + "' is not one this CPU runs (" + names + ")");
}

}  // namespace fastllm::cpu
