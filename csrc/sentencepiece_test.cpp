// C++ test driver for SentencePiece BPE (ctest; `make test` runs it under ASan + UBSan). Python
// tests hold the ids equal to HF tokenizers and the sentencepiece package on real vocabularies;
// this driver checks the core against a plain reference written from the definition, on random
// vocabularies built to hit the corners: scores that tie (the leftmost pair must win), characters
// that are no piece but sit inside pieces, pieces holding "c▁" (the chunking must not cut them),
// missing byte tokens, runs long enough for the heap path, and invalid UTF-8.
#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "test_checks.h"
#include "tokenizer.h"
#include "unicode.h"

using namespace fastllm;
using testing::throws_invalid_argument;

namespace {

const std::string kMark(kSpaceMark);

// The characters of s; a malformed byte is one of its own, as the encoder reads it.
std::vector<std::string> characters(const std::string& s) {
    std::vector<std::string> out;
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    for (size_t i = 0; i < s.size();) {
        const size_t size = unicode::decode(p + i, p + s.size()).size;
        out.push_back(s.substr(i, size));
        i += size;
    }
    return out;
}

std::string escaped(const std::string& text, bool prefix) {
    std::string out = prefix ? kMark : "";
    for (const char c : text) out += c == ' ' ? kMark : std::string(1, c);
    return out;
}

struct Vocabulary {
    TokenizerSpec spec;
    bool by_score = true;
    std::map<std::string, std::pair<uint32_t, float>> pieces;          // NORMAL pieces: id, score
    std::map<std::pair<std::string, std::string>, size_t> merge_rank;  // by_score false: HF's list
    std::array<int64_t, 256> byte_ids{};                               // -1: none
};

uint32_t add_token(Vocabulary& v, const std::string& text, PieceKind kind, float score) {
    const auto id = static_cast<uint32_t>(v.spec.tokens.size());
    v.spec.tokens.push_back(text);
    v.spec.piece_kinds.push_back(kind);
    v.spec.scores.push_back(score);
    if (kind == PieceKind::kNormal) v.pieces[text] = {id, score};
    return id;
}

// Pieces over a small alphabet (a 2-, a 3- and a 4-byte character and '▁' among it); "ü" and "x"
// are no pieces themselves, only parts of longer ones. Scores come from a small set, so they tie.
Vocabulary random_vocabulary(std::mt19937& rng, bool by_score, bool all_bytes) {
    Vocabulary v;
    v.by_score = by_score;
    v.spec.model = TokenizerModel::kSentencePieceBpe;
    v.spec.unknown_id = add_token(v, "<unk>", PieceKind::kOther, 0);
    add_token(v, "<s>", PieceKind::kOther, 0);
    v.byte_ids.fill(-1);
    for (int b = 0; b < 256; ++b) {
        if (!all_bytes && b % 5 == 0) continue;
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        v.byte_ids[b] = add_token(v, name, PieceKind::kByte, 0);
    }
    const std::vector<std::string> singles = {"a", "b", "c", "d", kMark, "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\x99\x82"};
    const std::vector<std::string> orphans = {"\xC3\xBC", "x"};
    std::vector<std::string> parts;  // what pieces are made of
    for (const auto& c : singles) {
        add_token(v, c, PieceKind::kNormal, -100);
        parts.push_back(c);
    }
    std::vector<std::pair<std::string, std::string>> merges;
    for (int m = 0; m < 250; ++m) {
        const bool orphan = by_score && rng() % 6 == 0;  // an HF merge list holds only vocabulary tokens
        const std::string left = orphan ? orphans[rng() % orphans.size()] : parts[rng() % parts.size()];
        const std::string right = parts[rng() % parts.size()];
        const std::string merged = rng() % 2 ? left + right : right + left;
        if (v.pieces.count(merged) || characters(merged).size() > 7) continue;
        add_token(v, merged, PieceKind::kNormal, -static_cast<float>(rng() % 3));
        parts.push_back(merged);
        if (!by_score && merged == left + right) merges.emplace_back(left, right);
    }
    if (!by_score) {
        std::shuffle(merges.begin(), merges.end(), rng);
        for (size_t rank = 0; rank < merges.size(); ++rank) v.merge_rank.emplace(merges[rank], rank);
        v.spec.scores.clear();
        v.spec.merges = merges;
    }
    return v;
}

// SentencePiece BPE straight from the definition, on text already escaped.
std::vector<uint32_t> reference_encode(const Vocabulary& v, const std::string& text) {
    std::vector<std::string> symbols = characters(text);
    while (symbols.size() > 1) {
        size_t best = symbols.size();
        double best_priority = 0;
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
            double priority;
            if (v.by_score) {
                const auto found = v.pieces.find(symbols[i] + symbols[i + 1]);
                if (found == v.pieces.end()) continue;
                priority = found->second.second;
            } else {
                const auto found = v.merge_rank.find({symbols[i], symbols[i + 1]});
                if (found == v.merge_rank.end()) continue;
                priority = -static_cast<double>(found->second);
            }
            if (best == symbols.size() || priority > best_priority) {  // strict: the leftmost wins ties
                best = i;
                best_priority = priority;
            }
        }
        if (best == symbols.size()) break;
        symbols[best] += symbols[best + 1];
        symbols.erase(symbols.begin() + static_cast<long>(best) + 1);
    }
    std::vector<uint32_t> ids;
    for (const auto& symbol : symbols) {
        const auto found = v.pieces.find(symbol);
        if (found != v.pieces.end()) {
            ids.push_back(found->second.first);
            continue;
        }
        bool all = true;
        for (const char c : symbol) all = all && v.byte_ids[static_cast<uint8_t>(c)] >= 0;
        if (all) {
            for (const char c : symbol) ids.push_back(static_cast<uint32_t>(v.byte_ids[static_cast<uint8_t>(c)]));
        } else {
            ids.push_back(*v.spec.unknown_id);
        }
    }
    return ids;
}

std::string random_text(std::mt19937& rng) {
    static const std::vector<std::string> atoms = {"a", "b", "c", "d", "ab", "ba", " ", "  ", "\xC3\xA9", "\xE6\x97\xA5",
                                                   "\xF0\x9F\x99\x82", "\xC3\xBC", "x", "q", "\n", "\xFF", "\x80"};
    std::string text;
    if (rng() % 6 == 0) {  // a run longer than the linear merge takes
        const std::string unit = rng() % 2 ? "a" : "ab ";
        while (text.size() < 300) text += unit;
        return text;
    }
    for (size_t n = rng() % 40; n > 0; --n) text += atoms[rng() % atoms.size()];
    return text;
}

std::vector<uint32_t> encode(const Tokenizer& tokenizer, const std::string& text, bool allow_special = true) {
    std::vector<uint32_t> ids;
    tokenizer.encode(text, allow_special, ids);
    return ids;
}

std::string decode(const Tokenizer& tokenizer, const std::vector<uint32_t>& ids) {
    std::string out;
    tokenizer.decode(ids.data(), ids.size(), false, out);
    return out;
}

void test_against_reference() {
    std::mt19937 rng(2024);
    for (int round = 0; round < 12; ++round) {
        const bool by_score = round % 3 != 2, all_bytes = round % 2 == 0;
        Vocabulary v = random_vocabulary(rng, by_score, all_bytes);
        const bool prefix = round % 4 == 1;
        v.spec.space_prefix = prefix ? SpacePrefix::kFirst : SpacePrefix::kNone;
        const Tokenizer tokenizer(v.spec);
        for (int t = 0; t < 100; ++t) {
            const std::string text = random_text(rng);
            const std::vector<uint32_t> ids = encode(tokenizer, text);
            CHECK(ids == reference_encode(v, escaped(text, prefix && !text.empty())));
            if (all_bytes) CHECK(decode(tokenizer, ids) == (prefix && !text.empty() ? " " : "") + text);
        }
    }
}

// Added tokens: special ones in the raw text (and only with allow_special), normalized ones in the
// escaped text (Gemma's space runs, which a GGUF stores as spaces); the prefix goes before the text only.
void test_added_tokens_and_prefix() {
    std::mt19937 rng(3);
    Vocabulary v = random_vocabulary(rng, true, true);
    const uint32_t bos = add_token(v, "<bos>", PieceKind::kOther, 0);
    const uint32_t run = add_token(v, "  ", PieceKind::kOther, 0);  // as a GGUF stores Gemma's space runs
    v.spec.added_tokens = {AddedToken{bos, "<bos>", true, false}, AddedToken{run, kMark + kMark, false, true}};
    v.spec.space_prefix = SpacePrefix::kFirst;
    const Tokenizer first(v.spec);
    const auto a = encode(first, "a");
    CHECK(encode(first, "<bos>a") == std::vector<uint32_t>({bos, v.pieces.at("a").first}));
    CHECK(a == reference_encode(v, kMark + "a"));
    const auto spaced = encode(first, "a  b");  // "▁a" "▁▁" "b"
    CHECK(spaced.size() >= 3 && std::count(spaced.begin(), spaced.end(), run) == 1);
    CHECK(decode(first, spaced) == " a  b");
    CHECK(encode(first, "<bos>", false) == reference_encode(v, kMark + "<bos>"));
    v.spec.space_prefix = SpacePrefix::kEverySegment;
    const Tokenizer every(v.spec);
    std::vector<uint32_t> expected = {bos};
    for (const uint32_t id : reference_encode(v, kMark + "a")) expected.push_back(id);
    CHECK(encode(every, "<bos>a") == expected);
}

void test_batch_and_cache() {
    std::mt19937 rng(9);
    const Vocabulary v = random_vocabulary(rng, true, false);
    const Tokenizer tokenizer(v.spec);
    std::vector<std::string> texts;
    for (int i = 0; i < 40; ++i) texts.push_back(random_text(rng));
    const std::vector<std::string_view> views(texts.begin(), texts.end());
    for (int repeat = 0; repeat < 2; ++repeat) {  // the second time from the piece cache
        const auto batch = tokenizer.encode_batch(views, true, 3);
        for (size_t i = 0; i < texts.size(); ++i) CHECK(batch[i] == reference_encode(v, escaped(texts[i], false)));
    }
}

void test_invalid_specs() {
    std::mt19937 rng(1);
    Vocabulary v = random_vocabulary(rng, true, true);
    TokenizerSpec spec = v.spec;
    spec.scores.pop_back();
    CHECK(throws_invalid_argument([&] { Tokenizer{spec}; }));
    spec = v.spec;
    spec.tokens.push_back("<0xZZ>");
    spec.piece_kinds.push_back(PieceKind::kByte);
    spec.scores.push_back(0);
    CHECK(throws_invalid_argument([&] { Tokenizer{spec}; }));
    spec = random_vocabulary(rng, false, true).spec;
    spec.merges.emplace_back("<unk>", "a");  // not a piece
    CHECK(throws_invalid_argument([&] { Tokenizer{spec}; }));
}

void test_arbitrary_bytes_round_trip() {
    std::mt19937 rng(77);
    const Vocabulary v = random_vocabulary(rng, true, true);
    const Tokenizer tokenizer(v.spec);
    for (int t = 0; t < 300; ++t) {
        std::string text(rng() % 64, '\0');
        for (auto& c : text) c = static_cast<char>(rng());
        if (text.find(kMark) != std::string::npos) continue;  // a literal '▁' decodes as a space
        CHECK(decode(tokenizer, encode(tokenizer, text)) == text);
    }
}

}  // namespace

int main() {
    test_against_reference();
    test_added_tokens_and_prefix();
    test_batch_and_cache();
    test_invalid_specs();
    test_arbitrary_bytes_round_trip();
    return testing::report("sentencepiece_test");
}
