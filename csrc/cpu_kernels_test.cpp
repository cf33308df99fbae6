// C++ test driver for the CPU kernels (ctest; `make test` runs it under ASan + UBSan). Python
// tests hold the kernels to their PyTorch twins; this driver runs them on buffers allocated to the
// exact float, so a read past a block, a sequence or a row is caught by the sanitizer, and checks
// them against plain double-precision loops and their argument checks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu_attention.h"
#include "cpu_decoder.h"
#include "cpu_elementwise.h"
#include "test_checks.h"

using namespace fastllm::cpu;
using fastllm::testing::throws_invalid_argument;

namespace {

struct Case {
    int64_t num_q_heads, num_kv_heads, head_dim, block_size;
    std::vector<int32_t> lengths;
    std::vector<float> q, keys, values;
    std::vector<int32_t> table;
    int64_t table_width = 0, num_blocks = 0;

    Case(int64_t q_heads, int64_t kv_heads, int64_t dim, int64_t block, std::vector<int32_t> lens, std::mt19937& rng)
        : num_q_heads(q_heads), num_kv_heads(kv_heads), head_dim(dim), block_size(block), lengths(std::move(lens)) {
        std::normal_distribution<float> normal;
        for (const int32_t length : lengths) {
            table_width = std::max<int64_t>(table_width, (length + block_size - 1) / block_size);
            num_blocks += (length + block_size - 1) / block_size;
        }
        std::vector<int32_t> order(static_cast<size_t>(num_blocks));
        for (int64_t i = 0; i < num_blocks; ++i) order[i] = static_cast<int32_t>(i);
        std::shuffle(order.begin(), order.end(), rng);
        table.assign(lengths.size() * table_width, 0);
        size_t next = 0;
        for (size_t b = 0; b < lengths.size(); ++b) {
            for (int64_t j = 0; j < (lengths[b] + block_size - 1) / block_size; ++j) table[b * table_width + j] = order[next++];
        }
        const auto fill = [&](std::vector<float>& v, size_t n) {
            v.resize(n);
            for (float& x : v) x = normal(rng);
        };
        fill(q, lengths.size() * num_q_heads * head_dim);
        fill(keys, num_blocks * block_size * num_kv_heads * head_dim);
        fill(values, keys.size());
    }

    PagedCache cache() const {
        return PagedCache{keys.data(), values.data(), num_blocks, block_size, num_kv_heads, head_dim};
    }

    std::vector<float> run(size_t num_threads, int64_t window = 0) const {
        std::vector<float> out(q.size());
        paged_decode_attention(q.data(), static_cast<int64_t>(lengths.size()), num_q_heads, cache(), lengths.data(),
                               table.data(), table_width, scale(), window, num_threads, out.data());
        return out;
    }

    float scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }

    // Plain softmax(q k^T * scale) v per (sequence, query head) over its last `window` tokens
    // (0: all), in double.
    std::vector<double> reference(int64_t window = 0) const {
        std::vector<double> out(q.size());
        const int64_t group = num_q_heads / num_kv_heads;
        for (size_t b = 0; b < lengths.size(); ++b) {
            for (int64_t h = 0; h < num_q_heads; ++h) {
                const float* query = &q[(b * num_q_heads + h) * head_dim];
                std::vector<double> scores(lengths[b]);
                const auto row = [&](int64_t t) {
                    const int64_t block = table[b * table_width + t / block_size];
                    return ((block * block_size + t % block_size) * num_kv_heads + h / group) * head_dim;
                };
                const int64_t first = window > 0 ? std::max<int64_t>(0, lengths[b] - window) : 0;
                double max = -INFINITY, sum = 0;
                for (int64_t t = first; t < lengths[b]; ++t) {
                    double dot = 0;
                    for (int64_t d = 0; d < head_dim; ++d) dot += double(query[d]) * keys[row(t) + d];
                    scores[t] = dot * scale();
                    max = std::max(max, scores[t]);
                }
                for (int64_t t = first; t < lengths[b]; ++t) sum += (scores[t] = std::exp(scores[t] - max));
                for (int64_t t = first; t < lengths[b]; ++t) {
                    for (int64_t d = 0; d < head_dim; ++d) {
                        out[(b * num_q_heads + h) * head_dim + d] += scores[t] / sum * values[row(t) + d];
                    }
                }
            }
        }
        return out;
    }
};

double max_error(const std::vector<float>& got, const std::vector<double>& expected) {
    double error = 0;
    for (size_t i = 0; i < got.size(); ++i) error = std::max(error, std::abs(got[i] - expected[i]));
    return error;
}

void test_against_reference() {
    std::mt19937 rng(1);
    for (const int64_t dim : kHeadDims) {
        for (const int64_t block : {1, 16, 24}) {
            for (const auto& heads : {std::pair<int64_t, int64_t>{2, 2}, {9, 3}}) {
                const int32_t b = static_cast<int32_t>(block);
                const Case c(heads.first, heads.second, dim, block, {1, std::max(b - 1, 1), b, b + 1, 4 * b + 3}, rng);
                const std::vector<double> expected = c.reference();
                for (const size_t threads : {1, 3}) CHECK(max_error(c.run(threads), expected) < 1e-5);
                // Sliding windows of one token, inside a block, across blocks, and longer than every sequence.
                for (const int64_t window : {int64_t{1}, std::max<int64_t>(block / 2, 1), 2 * block + 1, 8 * block}) {
                    CHECK(max_error(c.run(2, window), c.reference(window)) < 1e-5);
                }
            }
        }
    }
}

// Sequences of more than 16 blocks are split into spans whose softmaxes are merged: long ones,
// with and without windows, against the reference (ASan checks the spans' buffers).
void test_long_sequences() {
    std::mt19937 rng(3);
    for (const int64_t dim : {int64_t{64}, int64_t{128}}) {
        const Case c(8, 2, dim, 16, {1000, 3, 257, 513}, rng);
        for (const size_t threads : {1, 2, 3}) CHECK(max_error(c.run(threads), c.reference()) < 1e-5);
        for (const int64_t window : {int64_t{40}, int64_t{300}, int64_t{700}}) {
            CHECK(max_error(c.run(2, window), c.reference(window)) < 1e-5);
        }
    }
}

void test_invalid_arguments() {
    std::mt19937 rng(2);
    Case c(4, 2, 64, 16, {7, 30}, rng);
    std::vector<float> out(c.q.size());
    const auto call = [&](const PagedCache& cache, const int32_t* lengths, int64_t q_heads) {
        return [&, lengths, q_heads] {
            paged_decode_attention(c.q.data(), 2, q_heads, cache, lengths, c.table.data(), c.table_width, 1.0f, 0, 2,
                                   out.data());
        };
    };
    const std::vector<int32_t> too_long{7, static_cast<int32_t>(c.table_width * 16 + 1)}, empty{0, 30};
    CHECK(throws_invalid_argument(call(c.cache(), too_long.data(), 4)));
    CHECK(throws_invalid_argument(call(c.cache(), empty.data(), 4)));
    CHECK(throws_invalid_argument(call(c.cache(), c.lengths.data(), 3)));  // 3 query heads over 2 KV heads
    PagedCache odd_dim = c.cache();
    odd_dim.head_dim = 48;
    CHECK(throws_invalid_argument(call(odd_dim, c.lengths.data(), 4)));
    for (const int32_t bad : {-1, static_cast<int32_t>(c.num_blocks)}) {
        c.table[1] = bad;  // the second block of the first sequence... which only has one: unread, accepted
        CHECK(!throws_invalid_argument(call(c.cache(), c.lengths.data(), 4)));
        c.table[c.table_width + 1] = bad;  // the second block of the second sequence (30 tokens: read)
        CHECK(throws_invalid_argument(call(c.cache(), c.lengths.data(), 4)));
        c.table[1] = c.table[c.table_width + 1] = 0;
    }
}

std::vector<float> random_floats(size_t count, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    std::vector<float> values(count);
    for (float& x : values) x = normal(rng);
    return values;
}

void test_rms_norm() {
    std::mt19937 rng(3);
    for (const int64_t rows : {1, 5, 200}) {  // 200 x 577 floats: the threaded path
        const int64_t dim = 577, stride = dim + 3;
        const std::vector<float> x = random_floats(static_cast<size_t>((rows - 1) * stride + dim), rng);
        const std::vector<float> residual = random_floats(static_cast<size_t>(rows * dim), rng);
        const std::vector<float> weight = random_floats(static_cast<size_t>(dim), rng);
        std::vector<float> summed(residual.size()), out(residual.size());
        rms_norm(x.data(), stride, residual.data(), dim, rows, dim, weight.data(), 1e-5f, summed.data(), out.data(), 2);
        double worst = 0;
        for (int64_t r = 0; r < rows; ++r) {
            double squares = 0;
            for (int64_t i = 0; i < dim; ++i) {
                const double value = double(x[r * stride + i]) + residual[r * dim + i];
                CHECK(summed[r * dim + i] == x[r * stride + i] + residual[r * dim + i]);
                squares += value * value;
            }
            const double inverse = 1.0 / std::sqrt(squares / dim + 1e-5);
            for (int64_t i = 0; i < dim; ++i) {
                const double expected = (double(x[r * stride + i]) + residual[r * dim + i]) * inverse * weight[i];
                worst = std::max(worst, std::abs(out[r * dim + i] - expected));
            }
        }
        CHECK(worst < 1e-4);
    }
}

void test_rotary_embedding() {
    std::mt19937 rng(4);
    const int64_t tokens = 300, heads = 5, dim = 64, max_position = 50, token_stride = heads * dim + 7;
    const std::vector<float> x = random_floats(static_cast<size_t>((tokens - 1) * token_stride + heads * dim), rng);
    const std::vector<float> cos = random_floats(static_cast<size_t>(max_position * dim / 2), rng);
    const std::vector<float> sin = random_floats(cos.size(), rng);
    std::vector<int64_t> positions(tokens);
    for (int64_t t = 0; t < tokens; ++t) positions[t] = static_cast<int64_t>(rng() % max_position);
    std::vector<float> out(static_cast<size_t>(tokens * heads * dim));
    rotary_embedding(x.data(), tokens, heads, dim, token_stride, dim, positions.data(), cos.data(), sin.data(),
                     max_position, out.data(), 2);
    double worst = 0;
    for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
            for (int64_t i = 0; i < dim / 2; ++i) {
                const double x1 = x[t * token_stride + h * dim + i], x2 = x[t * token_stride + h * dim + i + dim / 2];
                const double c = cos[positions[t] * dim / 2 + i], s = sin[positions[t] * dim / 2 + i];
                worst = std::max(worst, std::abs(out[(t * heads + h) * dim + i] - (x1 * c - x2 * s)));
                worst = std::max(worst, std::abs(out[(t * heads + h) * dim + i + dim / 2] - (x2 * c + x1 * s)));
            }
        }
    }
    CHECK(worst < 1e-5);
    positions[7] = max_position;
    CHECK(throws_invalid_argument([&] {
        rotary_embedding(x.data(), tokens, heads, dim, token_stride, dim, positions.data(), cos.data(), sin.data(),
                         max_position, out.data(), 2);
    }));
}

void test_silu_and_mul() {
    std::mt19937 rng(5);
    for (const int64_t inter : {1, 17, 1537}) {  // vector tails of every kind
        // Rows of x and of out strided, out's exactly as long as its last row ends (ASan checks).
        const int64_t rows = 3, stride = 2 * inter + 5, out_stride = inter + 3;
        std::vector<float> x = random_floats(static_cast<size_t>((rows - 1) * stride + 2 * inter), rng);
        for (float& value : x) value *= 8.0f;
        std::vector<float> out(static_cast<size_t>((rows - 1) * out_stride + inter));
        silu_and_mul(x.data(), stride, rows, inter, out.data(), out_stride, 2);
        double worst = 0, largest = 0;
        for (int64_t r = 0; r < rows; ++r) {
            for (int64_t i = 0; i < inter; ++i) {
                const double gate = x[r * stride + i], up = x[r * stride + inter + i];
                const double expected = gate / (1.0 + std::exp(-gate)) * up;
                worst = std::max(worst, std::abs(out[r * out_stride + i] - expected));
                largest = std::max(largest, std::abs(expected));
            }
        }
        CHECK(worst <= 1e-6 * largest);
    }
}

void test_store_kv_cache() {
    std::mt19937 rng(6);
    const int64_t tokens = 5, row = 24, slots_in_cache = 9;
    const std::vector<float> k = random_floats(static_cast<size_t>(tokens * row), rng);
    const std::vector<float> v = random_floats(k.size(), rng);
    const std::vector<int64_t> slots = {8, 0, -1, 3, 4};
    std::vector<float> k_cache(static_cast<size_t>(slots_in_cache * row)), v_cache(k_cache.size());
    store_kv_cache(k.data(), row, v.data(), row, tokens, row, slots.data(), slots_in_cache, k_cache.data(),
                   v_cache.data());
    for (int64_t t = 0; t < tokens; ++t) {
        if (slots[t] < 0) continue;
        CHECK(std::equal(k.begin() + t * row, k.begin() + (t + 1) * row, k_cache.begin() + slots[t] * row));
        CHECK(std::equal(v.begin() + t * row, v.begin() + (t + 1) * row, v_cache.begin() + slots[t] * row));
    }
    const std::vector<int64_t> past_the_end = {0, 9};
    CHECK(throws_invalid_argument([&] {
        store_kv_cache(k.data(), row, v.data(), row, 2, row, past_the_end.data(), slots_in_cache, k_cache.data(),
                       v_cache.data());
    }));
}

// Two layers over float32 weights (ggml type 0), one decode step of 3 sequences, every buffer
// allocated to the exact float: the one-call step against the same kernels called one by one.
void test_decode_layers() {
    std::mt19937 rng(7);
    const DecoderShape shape{32, 48, 4, 2, 32, 1e-5f, 0.17f};
    const int64_t q_size = 128, kv_size = 64, tokens = 3, block_size = 4, num_blocks = 7, layers_count = 2;
    std::vector<std::vector<float>> storage;
    auto matrix = [&](int64_t rows, int64_t cols) {
        storage.push_back(random_floats(static_cast<size_t>(rows * cols), rng));
        for (float& w : storage.back()) w *= 0.2f;
        return QuantMatrix{reinterpret_cast<const uint8_t*>(storage.back().data()), 0, rows, cols * 4};
    };
    std::vector<DecoderLayerWeights> layers;
    for (int64_t i = 0; i < layers_count; ++i) {
        storage.push_back(random_floats(32, rng));
        const float* input_norm = storage.back().data();
        storage.push_back(random_floats(32, rng));
        const float* post_norm = storage.back().data();
        layers.push_back({input_norm, post_norm, {matrix(q_size, 32), matrix(2 * kv_size, 32)}, {matrix(32, q_size)},
                          {matrix(96, 32)}, {matrix(32, 48)}});
    }
    const std::vector<float> hidden = random_floats(static_cast<size_t>(tokens * 32), rng);
    const std::vector<float> cos = random_floats(20 * 16, rng), sin = random_floats(20 * 16, rng);
    const std::vector<int64_t> positions = {0, 5, 9}, slots = {0, 13, 21};  // each at its position's block
    const std::vector<int32_t> seqlens = {1, 6, 10}, table = {0, 5, 5, 2, 3, 5, 4, 6, 5};  // width 3
    const DecodeBatch batch{tokens,        positions.data(), cos.data(), sin.data(), 20, nullptr, nullptr,
                            slots.data(), seqlens.data(),    table.data(), 3};
    const size_t cache_floats = static_cast<size_t>(layers_count * 2 * num_blocks * block_size * kv_size);
    std::vector<float> cache = random_floats(cache_floats, rng), cache_by_steps = cache;
    std::vector<float> out(hidden.size()), residual(hidden.size());
    decode_layers(layers, shape, batch, hidden.data(), {cache.data(), num_blocks, block_size}, out.data(),
                  residual.data(), 2);

    std::vector<float> x = hidden, res(hidden.size()), normed(hidden.size()), qkv(tokens * (q_size + 2 * kv_size));
    std::vector<float> q(tokens * q_size), k(tokens * kv_size), attended(q.size()), projected(hidden.size());
    std::vector<float> gate_up(tokens * 96), activated(tokens * 48);
    const int64_t layer_floats = num_blocks * block_size * kv_size;
    for (int64_t i = 0; i < layers_count; ++i) {
        const DecoderLayerWeights& w = layers[i];
        float* keys = cache_by_steps.data() + 2 * i * layer_floats;
        if (i == 0) {
            rms_norm(x.data(), 32, nullptr, 0, tokens, 32, w.input_norm, 1e-5f, nullptr, normed.data(), 1);
            res = x;
        } else {
            rms_norm(x.data(), 32, res.data(), 32, tokens, 32, w.input_norm, 1e-5f, res.data(), normed.data(), 1);
        }
        quantized_matmul(normed.data(), tokens, 32, w.qkv.data(), w.qkv.size(), qkv.data(), 1);
        rotary_embedding(qkv.data(), tokens, 4, 32, 256, 32, positions.data(), cos.data(), sin.data(), 20, q.data(), 1);
        rotary_embedding(qkv.data() + q_size, tokens, 2, 32, 256, 32, positions.data(), cos.data(), sin.data(), 20,
                         k.data(), 1);
        store_kv_cache(k.data(), kv_size, qkv.data() + q_size + kv_size, 256, tokens, kv_size, slots.data(),
                       num_blocks * block_size, keys, keys + layer_floats);
        paged_decode_attention(q.data(), tokens, 4, PagedCache{keys, keys + layer_floats, num_blocks, block_size, 2, 32},
                               seqlens.data(), table.data(), 3, 0.17f, 0, 1, attended.data());
        quantized_matmul(attended.data(), tokens, q_size, w.o.data(), 1, projected.data(), 1);
        rms_norm(projected.data(), 32, res.data(), 32, tokens, 32, w.post_attention_norm, 1e-5f, res.data(),
                 normed.data(), 1);
        quantized_matmul(normed.data(), tokens, 32, w.gate_up.data(), 1, gate_up.data(), 1);
        silu_and_mul(gate_up.data(), 96, tokens, 48, activated.data(), 48, 1);
        quantized_matmul(activated.data(), tokens, 48, w.down.data(), 1, x.data(), 1);
    }
    CHECK(out == x && residual == res && cache == cache_by_steps);

    const std::vector<int64_t> bad_slots = {0, 13, 28};
    const DecodeBatch bad{tokens,           positions.data(), cos.data(), sin.data(), 20, nullptr, nullptr,
                          bad_slots.data(), seqlens.data(),    table.data(), 3};
    const std::vector<float> before = cache;
    CHECK(throws_invalid_argument([&] {
        decode_layers(layers, shape, bad, hidden.data(), {cache.data(), num_blocks, block_size}, out.data(),
                      residual.data(), 2);
    }));
    CHECK(cache == before);
}

// Every piece a family switches on at once (q/k/v biases, q/k norms, sandwich norms, GeGLU, a
// sliding window, local rotary tables), on exact-size buffers: the sanitizers watch the scratch
// layout; the thread count must not change a bit (the Python tests hold it to the layer path).
void test_decode_layers_with_every_family_piece() {
    std::mt19937 rng(8);
    DecoderShape shape{32, 48, 4, 2, 32, 1e-6f, 0.2f};
    shape.activation = Activation::kGeluTanh;
    const int64_t tokens = 3, block_size = 4, num_blocks = 7, kv_size = 64, qkv_width = 256;
    std::vector<std::vector<float>> storage;
    auto floats = [&](int64_t count) {
        storage.push_back(random_floats(static_cast<size_t>(count), rng));
        return storage.back().data();
    };
    auto matrix = [&](int64_t rows, int64_t cols) {
        const float* data = floats(rows * cols);
        return QuantMatrix{reinterpret_cast<const uint8_t*>(data), 0, rows, cols * 4};
    };
    std::vector<int64_t> reversed(qkv_width);  // layer 1 reads its qkv columns through an order
    for (int64_t j = 0; j < qkv_width; ++j) reversed[j] = qkv_width - 1 - j;
    std::vector<DecoderLayerWeights> layers;
    for (int64_t i = 0; i < 2; ++i) {
        DecoderLayerWeights layer{floats(32), floats(32), {matrix(qkv_width, 32)}, {matrix(32, 128)},
                                  {matrix(96, 32)}, {matrix(32, 48)}};
        if (i == 1) layer.qkv_order = reversed.data();
        layer.qkv_bias = floats(qkv_width);
        layer.q_norm = floats(32);
        layer.k_norm = floats(32);
        layer.attention_output_norm = floats(32);
        layer.mlp_output_norm = floats(32);
        layer.window = i == 0 ? 3 : 0;
        layer.local_rope = i == 0;
        layers.push_back(layer);
    }
    const std::vector<float> hidden = random_floats(static_cast<size_t>(tokens * 32), rng);
    const std::vector<float> cos = random_floats(20 * 16, rng), sin = random_floats(20 * 16, rng);
    const std::vector<float> local_cos = random_floats(20 * 16, rng), local_sin = random_floats(20 * 16, rng);
    const std::vector<int64_t> positions = {0, 5, 9}, slots = {0, 13, 21};
    const std::vector<int32_t> seqlens = {1, 6, 10}, table = {0, 5, 5, 2, 3, 5, 4, 6, 5};
    const DecodeBatch batch{tokens,       positions.data(), cos.data(),   sin.data(), 20, local_cos.data(),
                            local_sin.data(), slots.data(), seqlens.data(), table.data(), 3};
    const std::vector<float> start = random_floats(static_cast<size_t>(2 * 2 * num_blocks * block_size * kv_size), rng);
    std::vector<std::vector<float>> outs;
    for (const size_t threads : {1, 3}) {
        std::vector<float> cache = start, out(hidden.size()), residual(hidden.size());
        decode_layers(layers, shape, batch, hidden.data(), {cache.data(), num_blocks, block_size}, out.data(),
                      residual.data(), threads);
        for (const float x : out) CHECK(std::isfinite(x));
        out.insert(out.end(), residual.begin(), residual.end());
        out.insert(out.end(), cache.begin(), cache.end());
        outs.push_back(out);
    }
    CHECK(outs[0] == outs[1]);
    layers[1].local_rope = true;
    const DecodeBatch no_local{tokens,       positions.data(), cos.data(),   sin.data(), 20, nullptr,
                               nullptr,      slots.data(),     seqlens.data(), table.data(), 3};
    std::vector<float> cache = start, out(hidden.size()), residual(hidden.size());
    CHECK(throws_invalid_argument([&] {
        decode_layers(layers, shape, no_local, hidden.data(), {cache.data(), num_blocks, block_size}, out.data(),
                      residual.data(), 1);
    }));
}

}  // namespace

int main() {
    test_against_reference();
    test_long_sequences();
    test_invalid_arguments();
    test_rms_norm();
    test_rotary_embedding();
    test_silu_and_mul();
    test_store_kv_cache();
    test_decode_layers();
    test_decode_layers_with_every_family_piece();
    return fastllm::testing::report("cpu_kernels_test");
}
