#include "tokenizer.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "byte_level.h"

namespace fastllm {
namespace {

std::string describe_id(uint64_t id, size_t vocab_size) {
    return "token id " + std::to_string(id) + " is not in the vocabulary (valid ids: 0.." +
           std::to_string(vocab_size - 1) + ")";
}

}  // namespace

Tokenizer::Tokenizer(const TokenizerSpec& spec) : pre_tokenizer_(spec.pre_tokenizer) {
    size_t size = spec.tokens.size();
    for (const AddedToken& token : spec.added_tokens) size = std::max<size_t>(size, size_t(token.id) + 1);
    if (size == 0) throw std::invalid_argument("the vocabulary is empty");
    if (size >= UINT32_MAX) throw std::invalid_argument("the vocabulary has too many tokens");

    // Token strings: the vocabulary's, then the added tokens' contents for their ids.
    std::vector<const std::string*> strings(size, nullptr);
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
        if (spec.tokens[id]) strings[id] = &*spec.tokens[id];
    }
    present_.assign(size, false);
    special_.assign(size, false);
    for (const AddedToken& token : spec.added_tokens) {
        if (!strings[token.id]) strings[token.id] = &token.content;
        special_[token.id] = token.special;
    }

    // Bytes of each token. Like HF's ByteLevel decoder, a token outside the byte-level alphabet
    // decodes to its own UTF-8; only tokens inside it can come out of BPE.
    std::vector<std::pair<uint32_t, std::string>> encodable;
    std::unordered_map<std::string_view, uint32_t> id_of_string;
    token_offsets_.reserve(size + 1);
    token_offsets_.push_back(0);
    for (size_t id = 0; id < size; ++id) {
        if (strings[id]) {
            present_[id] = true;
            id_of_string[*strings[id]] = static_cast<uint32_t>(id);
            if (auto bytes = byte_level::decode(*strings[id])) {
                token_bytes_ += *bytes;
                encodable.emplace_back(static_cast<uint32_t>(id), std::move(*bytes));
            } else {
                token_bytes_ += *strings[id];
            }
        }
        token_offsets_.push_back(static_cast<uint32_t>(token_bytes_.size()));
    }
    if (token_bytes_.size() >= UINT32_MAX) throw std::invalid_argument("the vocabulary's tokens are too long");

    std::vector<std::array<uint32_t, 3>> merges;
    merges.reserve(spec.merges.size());
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
        const auto& [left, right] = spec.merges[rank];
        const auto lookup = [&](const std::string& token) {
            const auto found = id_of_string.find(token);
            if (found == id_of_string.end()) {
                throw std::invalid_argument("merge " + std::to_string(rank) + " ('" + left + " " + right +
                                            "') uses '" + token + "', which is not in the vocabulary");
            }
            return found->second;
        };
        merges.push_back({lookup(left), lookup(right), lookup(left + right)});
    }
    if (spec.unknown_id && !has_token(*spec.unknown_id)) {
        throw std::invalid_argument("unknown token: " + describe_id(*spec.unknown_id, size));
    }
    bpe_ = std::make_unique<BytePairEncoder>(encodable, merges, spec.ignore_merges, spec.unknown_id,
                                             spec.fuse_unknown);

    std::vector<AddedToken> passes[2];
    for (const AddedToken& token : spec.added_tokens) passes[token.normalized ? 1 : 0].push_back(token);
    for (auto& pass : passes) {
        if (!pass.empty()) added_passes_.emplace_back(std::move(pass));
    }
}

void Tokenizer::encode(std::string_view text, bool allow_special, std::vector<uint32_t>& out) const {
    encode_added(text, 0, allow_special, PieceCache::local(), out);
}

void Tokenizer::encode_added(std::string_view text, size_t level, bool allow_special, PieceCache& cache,
                             std::vector<uint32_t>& out) const {
    if (text.empty()) return;
    if (level == added_passes_.size()) {
        encode_ordinary(text, cache, out);
        return;
    }
    const AddedTokenMatcher& matcher = added_passes_[level];
    size_t text_begin = 0;  // start of the text not yet encoded
    AddedTokenMatcher::Match match;
    for (size_t from = 0; matcher.find(text, from, match); from = match.end) {
        // As HF with encode_special_tokens: a special token that is not allowed stays text.
        if (match.token->special && !allow_special) continue;
        encode_added(text.substr(text_begin, match.begin - text_begin), level + 1, allow_special, cache, out);
        out.push_back(match.token->id);
        text_begin = match.end;
    }
    encode_added(text.substr(text_begin), level + 1, allow_special, cache, out);
}

void Tokenizer::encode_ordinary(std::string_view text, PieceCache& cache, std::vector<uint32_t>& out) const {
    const auto* data = reinterpret_cast<const uint8_t*>(text.data());
    for_each_piece(pre_tokenizer_, data, text.size(),
                   [&](size_t begin, size_t end) { bpe_->encode(data + begin, end - begin, cache, out); });
}

std::vector<std::pair<size_t, size_t>> Tokenizer::pre_tokenize(std::string_view text) const {
    std::vector<std::pair<size_t, size_t>> pieces;
    for_each_piece(pre_tokenizer_, reinterpret_cast<const uint8_t*>(text.data()), text.size(),
                   [&](size_t begin, size_t end) { pieces.emplace_back(begin, end); });
    return pieces;
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                           bool allow_special, size_t num_threads) const {
    std::vector<std::vector<uint32_t>> results(texts.size());
    if (num_threads == 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
    num_threads = std::min(num_threads, texts.size());
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    const auto work = [&] {
        try {
            for (size_t i = next++; i < texts.size() && !failed; i = next++) encode(texts[i], allow_special, results[i]);
        } catch (...) {
            if (!failed.exchange(true)) error = std::current_exception();
        }
    };
    std::vector<std::thread> threads;
    for (size_t t = 1; t < num_threads; ++t) {
        try {
            threads.emplace_back(work);
        } catch (const std::exception&) {
            // Out of threads or memory: those running, this one included, share all the work. (Letting
            // the exception out would destroy joinable threads, which aborts the process.)
            break;
        }
    }
    work();
    for (auto& thread : threads) thread.join();
    if (error) std::rethrow_exception(error);
    return results;
}

void Tokenizer::decode(const uint32_t* ids, size_t count, bool skip_special_tokens, std::string& out) const {
    for (size_t i = 0; i < count; ++i) {
        const uint32_t id = ids[i];
        if (!has_token(id)) throw std::invalid_argument(describe_id(id, vocab_size()));
        if (skip_special_tokens && special_[id]) continue;
        out.append(token_bytes_, token_offsets_[id], token_offsets_[id + 1] - token_offsets_[id]);
    }
}

}  // namespace fastllm
