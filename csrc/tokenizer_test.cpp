// C++ test driver for the tokenizer core (ctest; `make test` runs it under ASan + UBSan).
// Python tests hold the ids equal to HF tokenizers; this driver checks the core on its own:
// the hash tables against std::map, the splitters on hand-worked cases, fast BPE against a plain
// reference BPE on random vocabularies (both merge paths), and that arbitrary bytes (invalid UTF-8 included) round-trip without crashing.
// SentencePiece BPE: see sentencepiece_test.cpp.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <map>

#include "byte_level.h"
#include "hash_maps.h"
#include "pretokenizer.h"
#include "test_checks.h"
#include "tokenizer.h"

using namespace fastllm;
using testing::failures;
using testing::throws_invalid_argument;

namespace {

std::vector<std::string> split(PreTokenizer mode, const std::string& text) {
    std::vector<std::string> pieces;
    size_t expected_begin = 0;
    for_each_piece(mode, reinterpret_cast<const uint8_t*>(text.data()), text.size(), [&](size_t begin, size_t end) {
        if (begin != expected_begin || end <= begin || end > text.size()) throw std::logic_error("bad piece bounds");
        pieces.push_back(text.substr(begin, end - begin));
        expected_begin = end;
    });
    if (expected_begin != text.size()) throw std::logic_error("pieces do not cover the text");
    return pieces;
}

void check_split(PreTokenizer mode, const std::string& text, const std::vector<std::string>& expected) {
    const auto pieces = split(mode, text);
    if (pieces != expected) {
        std::fprintf(stderr, "split mismatch for \"%s\" (mode %d):", text.c_str(), int(mode));
        for (const auto& p : pieces) std::fprintf(stderr, " [%s]", p.c_str());
        std::fprintf(stderr, "\n");
        ++failures;
    }
}

void test_splitters() {
    const auto gpt2 = PreTokenizer::kGpt2, smollm = PreTokenizer::kSmollm, llama = PreTokenizer::kLlama3;
    check_split(gpt2, "Hello world", {"Hello", " world"});
    check_split(gpt2, "x\n\n7", {"x", "\n", "\n", "7"});
    check_split(smollm, "x\n\n7", {"x", "\n\n", "7"});
    check_split(llama, "x\n\n7", {"x", "\n\n", "7"});
    check_split(gpt2, "a  b", {"a", " ", " b"});
    check_split(gpt2, "a \t\nb ", {"a", " \t", "\n", "b", " "});
    check_split(gpt2, "HE'S it's", {"HE", "'", "S", " it", "'s"});
    check_split(llama, "HE'S it's", {"HE", "'S", " it", "'s"});
    check_split(llama, "'\xC5\xBF", {"'\xC5\xBF"});  // U+017F folds to s: a contraction
    check_split(llama, "I'\xC5\xBFx", {"I", "'\xC5\xBF", "x"});
    check_split(gpt2, "12345 67", {"12345", " 67"});
    check_split(smollm, "12345 67", {"1", "2", "3", "4", "5", " ", "6", "7"});
    check_split(llama, "12345 67", {"123", "45", " ", "67"});
    check_split(gpt2, "(hello) ...", {"(", "hello", ")", " ..."});
    check_split(llama, "(hello) ...\n\nx", {"(hello", ")", " ...\n\n", "x"});
    check_split(llama, "  \n  x\r\n", {"  \n", " ", " x", "\r\n"});
    check_split(gpt2, "\xC2\xA0word", {"\xC2\xA0", "word"});     // NBSP is \s but not ' '
    check_split(llama, "\xC2\xA0word", {"\xC2\xA0word"});        // [^\r\n\p{L}\p{N}]?\p{L}+
    check_split(gpt2, "\xE3\x80\x80\xE3\x80\x80x", {"\xE3\x80\x80", "\xE3\x80\x80", "x"});  // U+3000
    check_split(gpt2, "\xFF\xFEz", {"\xFF\xFE", "z"});  // invalid bytes are "other" characters
    check_split(smollm, "\xD9\xA1\xD9\xA2", {"\xD9\xA1", "\xD9\xA2"});  // Arabic-Indic digits
    const auto qwen2 = PreTokenizer::kQwen2;
    check_split(qwen2, "12345 67", {"1", "2", "3", "4", "5", " ", "6", "7"});
    check_split(qwen2, "HE'S x1y (hello)\n\n", {"HE", "'S", " x", "1", "y", " (", "hello", ")\n\n"});
}

// A random byte-level vocabulary: every byte (or all but a few), then merges of random pairs
// of existing tokens, biased towards a small alphabet so that they apply often.
TokenizerSpec random_spec(std::mt19937& rng, PreTokenizer mode, bool drop_bytes) {
    TokenizerSpec spec;
    std::vector<std::string> bytes_of;  // raw bytes of each token
    for (int b = 0; b < 256; ++b) {
        const bool dropped = drop_bytes && (b == 'q' || b == 0x04 || b == 0xFF);
        bytes_of.push_back(std::string(1, char(b)));
        spec.tokens.push_back(dropped ? std::nullopt : std::optional<std::string>(byte_level::encode(bytes_of.back())));
    }
    const std::string alphabet = "abcde ";
    std::uniform_int_distribution<size_t> coin(0, 3);
    for (int m = 0; m < 400; ++m) {
        const auto pick = [&]() -> size_t {
            if (coin(rng) == 0 || bytes_of.size() == 256) return static_cast<uint8_t>(alphabet[rng() % alphabet.size()]);
            return 256 + rng() % (bytes_of.size() - 256);
        };
        const size_t left = pick(), right = pick();
        const std::string merged = bytes_of[left] + bytes_of[right];
        bool known = false;
        for (const auto& b : bytes_of) known = known || b == merged;
        if (known || merged.size() > 12) continue;
        bytes_of.push_back(merged);
        spec.tokens.push_back(byte_level::encode(merged));
        spec.merges.emplace_back(*spec.tokens[left], *spec.tokens[right]);
    }
    spec.pre_tokenizer = mode;
    spec.added_tokens = {AddedToken{uint32_t(bytes_of.size()), "<s>", true, false},
                         AddedToken{uint32_t(bytes_of.size() + 1), "<sep>", false, false}};
    return spec;
}

// Plain BPE, straight from the definition: the reference for the fast path.
std::vector<uint32_t> reference_bpe(const TokenizerSpec& spec, const std::string& piece) {
    std::vector<std::string> symbols;  // token strings
    for (const char c : piece) {
        const std::string token = byte_level::encode(std::string(1, c));
        for (const auto& t : spec.tokens) {
            if (t && *t == token) {
                symbols.push_back(token);
                break;
            }
        }
    }
    while (symbols.size() > 1) {
        size_t best = symbols.size(), best_rank = spec.merges.size();
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
            for (size_t r = 0; r < best_rank; ++r) {
                if (spec.merges[r].first == symbols[i] && spec.merges[r].second == symbols[i + 1]) {
                    best = i;
                    best_rank = r;
                    break;
                }
            }
        }
        if (best == symbols.size()) break;
        symbols[best] += symbols[best + 1];
        symbols.erase(symbols.begin() + best + 1);
    }
    std::vector<uint32_t> ids;
    for (const auto& s : symbols) {
        for (size_t id = 0; id < spec.tokens.size(); ++id) {
            if (spec.tokens[id] && *spec.tokens[id] == s) {
                ids.push_back(uint32_t(id));
                break;
            }
        }
    }
    return ids;
}

std::string random_text(std::mt19937& rng, size_t size) {
    static const std::vector<std::string> atoms = {"a", "b", "c", "d", "e", " ", "  ", "\n", "7", "'s", "'S",
                                                   "\xC3\xA9", "\xE2\x80\xAF", "\xF0\x9F\x99\x82", "\xFF", "\x80",
                                                   "<s>", "<se", "<sep>", "q", "\x04", "\r\n", "\xC2\xA0", "!?"};
    std::string text;
    while (text.size() < size) text += atoms[rng() % atoms.size()];
    return text;
}

std::string decoded(const Tokenizer& tokenizer, const std::vector<uint32_t>& ids) {
    std::string out;
    tokenizer.decode(ids.data(), ids.size(), false, out);
    return out;
}

void test_bpe_against_reference() {
    std::mt19937 rng(1234);
    for (int round = 0; round < 8; ++round) {
        const auto mode = static_cast<PreTokenizer>(round % 4);
        TokenizerSpec spec = random_spec(rng, mode, round >= 4);
        spec.added_tokens.clear();  // the reference knows only BPE
        const Tokenizer tokenizer(spec);
        for (int t = 0; t < 30; ++t) {
            // Long single pieces exercise the heap path, short texts the linear one.
            const std::string text = t % 5 == 0 ? std::string(150 + rng() % 300, "abcde"[rng() % 5])
                                                : random_text(rng, 1 + rng() % 80);
            std::vector<uint32_t> ids;
            tokenizer.encode(text, false, ids);
            std::vector<uint32_t> expected;
            for (const auto& piece : split(mode, text)) {
                const auto piece_ids = reference_bpe(spec, piece);
                expected.insert(expected.end(), piece_ids.begin(), piece_ids.end());
            }
            CHECK(ids == expected);
            if (round < 4) CHECK(decoded(tokenizer, ids) == text);  // every byte has a token
        }
    }
}

void test_added_tokens() {
    std::mt19937 rng(7);
    const TokenizerSpec spec = random_spec(rng, PreTokenizer::kGpt2, false);
    const Tokenizer tokenizer(spec);
    const uint32_t s = spec.added_tokens[0].id, sep = spec.added_tokens[1].id;
    std::vector<uint32_t> ids;
    tokenizer.encode("a<sep>b<s>", true, ids);
    CHECK(ids.size() >= 4 && ids[1] == sep && ids.back() == s);
    ids.clear();
    tokenizer.encode("<s><sep>", false, ids);  // special "<s>" stays text, "<sep>" is not special
    CHECK(!ids.empty() && ids.back() == sep && ids.front() != s);
    std::string text;
    tokenizer.decode(ids.data(), ids.size(), false, text);
    CHECK(text == "<s><sep>");
    const uint32_t both[] = {s, sep};
    text.clear();
    tokenizer.decode(both, 2, true, text);
    CHECK(text == "<sep>");
}

// The matcher's trie walk and prefix filter against a scan of every token at every position, on
// tokens that share prefixes, are shorter and longer than four bytes, repeat, and start alike.
void test_added_token_matcher() {
    std::mt19937 rng(21);
    const std::string alphabet = "<>ab\xE2\x96\x81";
    for (int round = 0; round < 20; ++round) {
        std::vector<AddedToken> tokens;
        for (uint32_t id = 0; id < 1 + rng() % 30; ++id) {
            std::string content;
            for (size_t n = 1 + rng() % 7; n > 0; --n) content += alphabet[rng() % alphabet.size()];
            tokens.push_back(AddedToken{id, content, false, false});
        }
        const AddedTokenMatcher matcher(tokens);
        std::string text;
        for (size_t n = rng() % 60; n > 0; --n) text += alphabet[rng() % alphabet.size()];
        AddedTokenMatcher::Match match{};
        for (size_t from = 0; from <= text.size(); from = match.end) {
            size_t begin = std::string::npos, length = 0;
            uint32_t id = 0;
            for (size_t i = from; i < text.size() && begin == std::string::npos; ++i) {
                for (const AddedToken& token : tokens) {  // leftmost, then longest, then listed first
                    if (text.compare(i, token.content.size(), token.content) == 0 &&
                        (begin == std::string::npos || token.content.size() > length)) {
                        begin = i;
                        length = token.content.size();
                        id = token.id;
                    }
                }
            }
            const bool found = matcher.find(text, from, match);
            CHECK(found == (begin != std::string::npos));
            if (!found) break;
            CHECK(match.begin == begin && match.end == begin + length && match.token->id == id);
        }
    }
}

void test_invalid_input() {
    std::mt19937 rng(99);
    const TokenizerSpec spec = random_spec(rng, PreTokenizer::kLlama3, false);
    const Tokenizer tokenizer(spec);
    const uint32_t bad[] = {0, uint32_t(tokenizer.vocab_size())};
    std::string out;
    CHECK(throws_invalid_argument([&] { tokenizer.decode(bad, 2, false, out); }));
    for (int t = 0; t < 300; ++t) {  // arbitrary bytes, every mode
        std::string text(rng() % 64, '\0');
        for (auto& c : text) c = static_cast<char>(rng());
        for (int mode = 0; mode < 4; ++mode) {
            TokenizerSpec copy = spec;
            copy.pre_tokenizer = static_cast<PreTokenizer>(mode);
            std::vector<uint32_t> ids;
            Tokenizer(copy).encode(text, true, ids);
            CHECK(decoded(tokenizer, ids) == text);
        }
    }
    TokenizerSpec broken = spec;
    broken.merges.emplace_back("no such", "token");
    CHECK(throws_invalid_argument([&] { Tokenizer{broken}; }));
}

void test_unknown_bytes() {
    std::mt19937 rng(11);
    TokenizerSpec spec = random_spec(rng, PreTokenizer::kGpt2, true);  // no tokens for 'q', 0x04, 0xFF
    const auto encode = [](const TokenizerSpec& s, const std::string& text) {
        std::vector<uint32_t> ids;
        Tokenizer(s).encode(text, false, ids);
        return ids;
    };
    CHECK(encode(spec, "qq").empty());  // dropped, as HF does without an unk token
    spec.unknown_id = 7;
    CHECK(encode(spec, "qq") == std::vector<uint32_t>({7, 7}));
    spec.fuse_unknown = true;
    CHECK(encode(spec, "qq") == std::vector<uint32_t>({7}));
    CHECK(encode(spec, "\x04\xFF") == std::vector<uint32_t>({7}));  // one piece of "others"
}

void test_batch() {
    std::mt19937 rng(5);
    const TokenizerSpec spec = random_spec(rng, PreTokenizer::kSmollm, true);
    const Tokenizer tokenizer(spec);
    std::vector<std::string> texts;
    for (int i = 0; i < 50; ++i) texts.push_back(random_text(rng, rng() % 200));
    const std::vector<std::string_view> views(texts.begin(), texts.end());
    const auto batch = tokenizer.encode_batch(views, true, 4);
    CHECK(batch.size() == texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
        std::vector<uint32_t> ids;
        tokenizer.encode(texts[i], true, ids);
        CHECK(batch[i] == ids);
    }
}

void test_byte_level_alphabet() {
    for (int b = 0; b < 256; ++b) {
        const std::string byte(1, char(b));
        const auto back = byte_level::decode(byte_level::encode(byte));
        CHECK(back && *back == byte);
    }
    CHECK(byte_level::encode(" ") == "\xC4\xA0");     // 'Ġ'
    CHECK(!byte_level::decode("\xEF\xBD\x9C"));        // '｜' is outside the alphabet
}

// The tables of the encode path against std::map on random keys: lengths 0-70 over few letters,
// so that short keys share packed bytes and long ones share prefixes; growth past the size given.
void test_hash_maps() {
    std::mt19937 rng(7);
    std::map<std::string, uint32_t> expected;
    BytesMap bytes(8);
    for (uint32_t i = 0; i < 4000; ++i) {
        std::string key(rng() % 71, 'a');
        for (char& c : key) c = "ab\xff"[rng() % 3];
        bytes.set(key, i);
        expected[key] = i;
    }
    CHECK(bytes.size() == expected.size());
    size_t visited = 0;
    bytes.for_each([&](std::string_view key, uint32_t value) {
        ++visited;
        const auto it = expected.find(std::string(key));
        CHECK(it != expected.end() && it->second == value);
    });
    CHECK(visited == expected.size());
    for (const auto& [key, value] : expected) CHECK(bytes.get(key) == value);
    for (int i = 0; i < 2000; ++i) {
        std::string key(rng() % 71, 'a');
        for (char& c : key) c = "abc"[rng() % 3];
        const auto it = expected.find(key);
        CHECK(bytes.get(key) == (it == expected.end() ? BytesMap::kMissing : it->second));
    }

    PairMap pairs;
    pairs.reset(3000);  // 3/4 full at most: 4096 slots
    std::map<std::pair<uint32_t, uint32_t>, uint32_t> ranks;
    for (uint32_t rank = 0; rank < 3000; ++rank) {
        const uint32_t left = rng() % 200, right = rng() % 200;
        pairs.set(left, right, PairMap::Merge{rank, rank + 7});
        ranks[{left, right}] = rank;
    }
    for (uint32_t left = 0; left < 210; ++left) {
        for (uint32_t right = 0; right < 210; ++right) {
            const auto it = ranks.find({left, right});
            const PairMap::Merge merge = pairs.get(left, right);
            if (it == ranks.end()) {
                CHECK(merge.rank == PairMap::kNoRank);
            } else {
                CHECK(merge.rank == it->second && merge.merged == it->second + 7);
            }
        }
    }
}

}  // namespace

int main() {
    test_hash_maps();
    test_byte_level_alphabet();
    test_splitters();
    test_bpe_against_reference();
    test_added_tokens();
    test_added_token_matcher();
    test_invalid_input();
    test_unknown_bytes();
    test_batch();
    return testing::report("tokenizer_test");
}
