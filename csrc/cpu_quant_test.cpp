// C++ test driver for the GGUF-encoded matmuls (ctest; `make native-test` runs it under ASan +
// UBSan). Every buffer is allocated to the exact byte, so a kernel that reads past a row, a block
// or a slice of x is caught by the sanitizer. The kernels are held, on every ISA this CPU runs,
// to the scalar decoder of quant_blocks.h (bit for bit) and to plain double-precision dot
// products; the scalar decoder itself to values worked out by hand from ggml's layouts (the
// Python tests hold the kernels to gguf.quants).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu_quant_matmul.h"
#include "test_checks.h"

using namespace fastllm::cpu;
using fastllm::testing::throws_invalid_argument;

namespace {

uint32_t bits_of(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

void put_u16(uint8_t* p, uint16_t value) { std::memcpy(p, &value, sizeof value); }

// A random half in [2^-8, 2^4) of either sign, as bits.
uint16_t moderate_half(std::mt19937& rng) {
    const uint32_t exponent = 15 - 8 + rng() % 12, mantissa = rng() % 1024, sign = rng() % 2;
    return static_cast<uint16_t>((sign << 15) | (exponent << 10) | mantissa);
}

// Byte offsets of a block's half scales.
std::vector<int> scale_offsets(int type) {
    switch (type) {
        case quant::kQ4_0: case quant::kQ5_0: case quant::kQ8_0: return {0};
        case quant::kQ4_1: case quant::kQ5_1: case quant::kQ4_K: case quant::kQ5_K: return {0, 2};
        case quant::kQ6_K: return {quant::layout::kQ6_KScale};
        default: return {};
    }
}

// Rows of random blocks of `type` with moderate scales; float types get moderate values.
std::vector<uint8_t> random_matrix(int type, int64_t rows, int64_t cols, std::mt19937& rng) {
    std::vector<uint8_t> data(static_cast<size_t>(rows * quant_row_bytes(type, cols)));
    std::normal_distribution<float> normal;
    const auto bytes = static_cast<size_t>(quant::block_format(type).bytes);
    for (size_t at = 0; at < data.size(); at += bytes) {
        uint8_t* block = &data[at];
        if (type == quant::kF32) {
            const float value = normal(rng);
            std::memcpy(block, &value, sizeof value);
        } else if (type == quant::kF16) {
            put_u16(block, moderate_half(rng));
        } else if (type == quant::kBF16) {
            put_u16(block, static_cast<uint16_t>(bits_of(normal(rng)) >> 16));
        } else {
            for (size_t i = 0; i < bytes; ++i) block[i] = static_cast<uint8_t>(rng());
            for (const int offset : scale_offsets(type)) put_u16(block + offset, moderate_half(rng));
        }
    }
    return data;
}

// The matrix decoded by the scalar decoder, row after row.
std::vector<float> scalar_decode(int type, const std::vector<uint8_t>& data, int64_t rows, int64_t cols) {
    const quant::BlockFormat format = quant::block_format(type);
    std::vector<float> out(static_cast<size_t>(rows * cols));
    for (int64_t b = 0; b < rows * cols / format.values; ++b) {
        quant::decode_block(type, &data[static_cast<size_t>(b * format.bytes)], &out[static_cast<size_t>(b * format.values)]);
    }
    return out;
}

std::vector<float> random_floats(size_t count, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    std::vector<float> values(count);
    for (float& v : values) v = normal(rng);
    return values;
}

// max |out - x W^T| / max (|x| |W|^T), in double (the scale of float32 rounding errors).
double matmul_error(const std::vector<float>& out, const std::vector<float>& x, const std::vector<float>& w, int64_t m,
                    int64_t n, int64_t k) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            double dot = 0, magnitude = 0;
            for (int64_t c = 0; c < k; ++c) {
                dot += double(x[i * k + c]) * w[j * k + c];
                magnitude += std::abs(double(x[i * k + c]) * w[j * k + c]);
            }
            worst = std::max(worst, std::abs(out[i * n + j] - dot));
            scale = std::max(scale, magnitude);
        }
    }
    return worst / std::max(scale, 1e-300);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<int64_t> columns_for(int type) {
    switch (quant::block_format(type).values) {
        case 256: return {256, 768};
        case 32: return {32, 96, 160};
        default: return {1, 45, 100};  // float types: any width, with a tail after whole vectors
    }
}

void test_scalar_decoder_by_hand() {
    CHECK(bits_of(quant::half_to_float(0x0001)) == 0x33800000u);  // 2^-24, the smallest subnormal
    CHECK(bits_of(quant::half_to_float(0x83ff)) == bits_of(-1023.0f * 0x1p-24f));
    CHECK(bits_of(quant::half_to_float(0x7c01)) == 0x7f802000u);  // a signaling NaN stays signaling
    CHECK(bits_of(quant::half_to_float(0xfc00)) == 0xff800000u && quant::half_to_float(0x3c00) == 1.0f);

    uint8_t q4_0[18] = {};
    put_u16(q4_0, 0x4000);  // d = 2
    q4_0[2] = 0x21;          // value 0: 1, value 16: 2 (minus 8 each)
    float out[256];
    quant::decode_block(quant::kQ4_0, q4_0, out);
    CHECK(out[0] == -14.0f && out[16] == -12.0f && out[1] == -16.0f);

    uint8_t q4_1[20] = {};
    put_u16(q4_1, 0x3800);      // d = 0.5
    put_u16(q4_1 + 2, 0xbc00);  // m = -1
    q4_1[4 + 15] = 0xf3;
    quant::decode_block(quant::kQ4_1, q4_1, out);
    CHECK(out[15] == 0.5f && out[31] == 6.5f && out[0] == -1.0f);

    uint8_t q8_0[34] = {};
    put_u16(q8_0, 0x3400);  // d = 0.25
    q8_0[2 + 31] = 0x80;    // -128
    quant::decode_block(quant::kQ8_0, q8_0, out);
    CHECK(out[31] == -32.0f && out[0] == 0.0f);

    // Q4_K: sub-block 5's scale is (byte 9 & 15) | (byte 1 >> 6) << 4, its min (byte 9 >> 4) | (byte 5 >> 6) << 4.
    uint8_t q4_k[144] = {};
    put_u16(q4_k, 0x3c00);      // d = 1
    put_u16(q4_k + 2, 0x4000);  // dmin = 2
    q4_k[4 + 1] = 0xc0;         // sub-block 1: scale 0; sub-block 5: scale bits 4-5 = 3
    q4_k[4 + 5] = 0x41;         // sub-block 1: min 1;   sub-block 5: min bits 4-5 = 1
    q4_k[4 + 9] = 0x72;         // sub-block 5: scale 2 | 48 = 50, min 7 | 16 = 23
    q4_k[16 + 2 * 32 + 3] = 0x9f;  // sub-block 4 value 3: 15; sub-block 5 value 3: 9
    quant::decode_block(quant::kQ4_K, q4_k, out);
    CHECK(out[5 * 32 + 3] == 50.0f * 9 - 46.0f && out[4 * 32 + 3] == 0.0f);
    CHECK(out[32] == -2.0f);  // sub-block 1: 0 * q - 2 * 1

    uint8_t q5_k[176] = {};
    std::memcpy(q5_k, q4_k, 16);
    q5_k[16 + 3] = 1 << 5;        // fifth bit of sub-block 5, value 3
    q5_k[48 + 2 * 32 + 3] = 0x90;  // low bits 0 (sub-block 4) and 9 (sub-block 5)
    quant::decode_block(quant::kQ5_K, q5_k, out);
    CHECK(out[5 * 32 + 3] == 50.0f * 25 - 46.0f);

    // Q6_K value 128 + 96 + 7 (half 1, group 3): low bits = high nibble of byte 64 + 32 + 7,
    // high bits = bits 6-7 of byte 128 + 32 + 7, scale 14.
    uint8_t q6_k[210] = {};
    q6_k[64 + 32 + 7] = 0x50;
    q6_k[128 + 32 + 7] = 0x80;  // high bits 2: q = 5 | 32 = 37
    q6_k[192 + 14] = static_cast<uint8_t>(-3);
    put_u16(q6_k + 208, 0x3800);  // d = 0.5
    quant::decode_block(quant::kQ6_K, q6_k, out);
    CHECK(out[128 + 96 + 7] == -1.5f * 5.0f && out[0] == 0.0f);
}

void test_every_isa_against_the_scalar_decoder_and_double() {
    std::mt19937 rng(11);
    for (const std::string& isa : quant_isas()) {
        set_quant_isa(isa);
        for (const int type : quant::kTypes) {
            for (const int64_t k : columns_for(type)) {
                const int64_t n = 37;
                const std::vector<uint8_t> data = random_matrix(type, n, k, rng);
                const std::vector<float> w = scalar_decode(type, data, n, k);
                const QuantMatrix matrix{data.data(), type, n, quant_row_bytes(type, k)};
                std::vector<float> decoded(w.size());
                dequantize_row_range(matrix, k, 0, n, decoded.data(), 2);
                CHECK(same_bits(decoded, w));
                const std::vector<int64_t> rows{36, 0, 7, 7};
                std::vector<float> picked(rows.size() * static_cast<size_t>(k));
                dequantize_rows(matrix, k, rows.data(), static_cast<int64_t>(rows.size()), picked.data(), 3);
                for (size_t i = 0; i < rows.size(); ++i) {
                    CHECK(std::memcmp(&picked[i * k], &w[rows[i] * k], static_cast<size_t>(k) * sizeof(float)) == 0);
                }
                for (const int64_t m : {1, 2, 5, 17, 33}) {
                    for (const size_t threads : {1, 3}) {
                        const std::vector<float> x = random_floats(static_cast<size_t>(m * k), rng);
                        std::vector<float> out(static_cast<size_t>(m * n));
                        quantized_matmul(x.data(), m, k, &matrix, 1, out.data(), threads);
                        const double error = matmul_error(out, x, w, m, n, k);
                        if (!(error < 2e-6)) {
                            std::fprintf(stderr, "%s type %d K %ld M %ld threads %zu: error %g\n", isa.c_str(), type,
                                         static_cast<long>(k), static_cast<long>(m), threads, error);
                        }
                        CHECK(error < 2e-6);
                    }
                }
            }
        }
    }
    set_quant_isa(quant_isas().front());
}

void test_stacked_parts() {
    std::mt19937 rng(12);
    const int64_t k = 512, m = 19;
    const int types[] = {quant::kQ4_K, quant::kQ6_K, quant::kF16, quant::kQ8_0, quant::kBF16};
    const int64_t rows[] = {33, 7, 1, 40, 3};
    std::vector<std::vector<uint8_t>> data;
    std::vector<QuantMatrix> parts;
    std::vector<float> w;
    for (size_t i = 0; i < std::size(types); ++i) {
        data.push_back(random_matrix(types[i], rows[i], k, rng));
        const std::vector<float> decoded = scalar_decode(types[i], data.back(), rows[i], k);
        w.insert(w.end(), decoded.begin(), decoded.end());
    }
    for (size_t i = 0; i < std::size(types); ++i) {
        parts.push_back({data[i].data(), types[i], rows[i], quant_row_bytes(types[i], k)});
    }
    const int64_t n = static_cast<int64_t>(w.size()) / k;
    const std::vector<float> x = random_floats(static_cast<size_t>(m * k), rng);
    for (const std::string& isa : quant_isas()) {
        set_quant_isa(isa);
        std::vector<float> out(static_cast<size_t>(m * n));
        quantized_matmul(x.data(), m, k, parts.data(), parts.size(), out.data(), 2);
        CHECK(matmul_error(out, x, w, m, n, k) < 2e-6);
    }
    set_quant_isa(quant_isas().front());
}

void test_invalid_arguments() {
    std::mt19937 rng(13);
    const std::vector<uint8_t> data = random_matrix(quant::kQ4_K, 4, 256, rng);
    std::vector<float> x(2 * 256), out(2 * 4);
    const QuantMatrix good{data.data(), quant::kQ4_K, 4, 144};
    const auto matmul = [&](QuantMatrix part, int64_t k) {
        return [&, part, k] { quantized_matmul(x.data(), 2, k, &part, 1, out.data(), 1); };
    };
    CHECK(!throws_invalid_argument(matmul(good, 256)));
    CHECK(throws_invalid_argument(matmul({data.data(), quant::kQ4_K, 4, 143}, 256)));   // row bytes
    CHECK(throws_invalid_argument(matmul({data.data(), 10, 4, 144}, 256)));             // Q2_K: not supported
    CHECK(throws_invalid_argument(matmul({data.data(), quant::kQ4_K, -1, 144}, 256)));  // negative rows
    CHECK(throws_invalid_argument(matmul(good, 128)));                                  // K not whole blocks
    CHECK(throws_invalid_argument(matmul({nullptr, quant::kQ4_K, 4, 144}, 256)));
    CHECK(throws_invalid_argument([&] { quantized_matmul(x.data(), -2, 256, &good, 1, out.data(), 1); }));
    const int64_t outside[] = {0, 4};
    CHECK(throws_invalid_argument([&] { dequantize_rows(good, 256, outside, 2, x.data(), 1); }));
    CHECK(throws_invalid_argument([&] { dequantize_row_range(good, 256, 3, 2, x.data(), 1); }));
    CHECK(throws_invalid_argument([&] { dequantize_row_range(good, 256, -1, 1, x.data(), 1); }));
    CHECK(throws_invalid_argument([&] { dequantize_row_range(good, 512, 0, 1, x.data(), 1); }));  // 288-byte rows
    CHECK(throws_invalid_argument([] { quant_row_bytes(quant::kQ8_0, 33); }));
    CHECK(quant_row_bytes(quant::kF16, 33) == 66 && quant_row_bytes(quant::kQ6_K, 512) == 420);
    CHECK(throws_invalid_argument([] { set_quant_isa("altivec"); }));
    CHECK(quant_isa() == quant_isas().front() && quant_isas().back() == "generic");
}

}  // namespace

int main() {
    test_scalar_decoder_by_hand();
    test_every_isa_against_the_scalar_decoder_and_double();
    test_stacked_parts();
    test_invalid_arguments();
    return fastllm::testing::report("cpu_quant_test");
}
