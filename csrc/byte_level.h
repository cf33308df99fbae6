// GPT-2's byte-level alphabet: every byte is written as one printable code point, so that token
// strings in vocabularies (tokenizer.json, GGUF) never hold spaces or control characters.
// Bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF stand for themselves; the other 68 bytes map, in
// order, to U+0100..U+0143 (space -> U+0120 'Ġ', newline -> U+010A 'Ċ').
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace fastllm::byte_level {

// The bytes a token string stands for, or nullopt when it has a character outside the
// alphabet (added tokens such as "<｜begin▁of▁sentence｜>" are plain UTF-8).
std::optional<std::string> decode(std::string_view token);

// The token string of raw bytes (inverse of decode).
std::string encode(std::string_view bytes);

}  // namespace fastllm::byte_level
