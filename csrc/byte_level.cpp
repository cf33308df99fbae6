#include "byte_level.h"

#include <array>
#include <cstdint>

#include "unicode.h"

namespace fastllm::byte_level {
namespace {

constexpr bool stands_for_itself(uint32_t byte) {
    return (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
}

struct Alphabet {
    std::array<uint16_t, 256> code_point_of_byte{};
    std::array<int16_t, 0x144> byte_of_code_point{};  // -1: not in the alphabet

    constexpr Alphabet() {
        for (auto& b : byte_of_code_point) b = -1;
        uint32_t shifted = 0x100;
        for (uint32_t b = 0; b < 256; ++b) {
            const uint32_t cp = stands_for_itself(b) ? b : shifted++;
            code_point_of_byte[b] = static_cast<uint16_t>(cp);
            byte_of_code_point[cp] = static_cast<int16_t>(b);
        }
    }
};

constexpr Alphabet kAlphabet{};

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

}  // namespace

std::optional<std::string> decode(std::string_view token) {
    std::string bytes;
    bytes.reserve(token.size());
    const auto* p = reinterpret_cast<const uint8_t*>(token.data());
    const auto* end = p + token.size();
    while (p < end) {
        const unicode::Char c = unicode::decode(p, end);
        if (c.code_point >= kAlphabet.byte_of_code_point.size()) {
            return std::nullopt;
        }
        const int16_t byte = kAlphabet.byte_of_code_point[c.code_point];
        if (byte < 0) return std::nullopt;
        bytes.push_back(static_cast<char>(byte));
        p += c.size;
    }
    return bytes;
}

std::string encode(std::string_view bytes) {
    std::string token;
    token.reserve(bytes.size() * 2);
    for (const char b : bytes) append_utf8(token, kAlphabet.code_point_of_byte[static_cast<uint8_t>(b)]);
    return token;
}

}  // namespace fastllm::byte_level
