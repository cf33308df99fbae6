// Python bindings: fastllm._tokenizer. fastllm/tokenizer.py is the public, documented layer.
//
// Text crosses as UTF-8 without copying where CPython already holds it; the GIL is released
// while encoding long texts and batches; ids come back as Python lists built directly.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer.h"

namespace py = pybind11;
using fastllm::Tokenizer;

namespace {

// Below this many bytes, releasing and re-taking the GIL costs more than it frees.
constexpr size_t kReleaseGilBytes = 4096;

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

// UTF-8 of a str that holds surrogates: a high surrogate followed by a low one is the code
// point they encode, any other surrogate becomes U+FFFD (what tiktoken does, through UTF-16).
std::string utf8_replacing_surrogates(PyObject* text) {
    const Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    const int kind = PyUnicode_KIND(text);
    const void* data = PyUnicode_DATA(text);
    std::string out;
    out.reserve(static_cast<size_t>(length) * 2);
    for (Py_ssize_t i = 0; i < length; ++i) {
        uint32_t cp = PyUnicode_READ(kind, data, i);
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            const uint32_t low = i + 1 < length ? PyUnicode_READ(kind, data, i + 1) : 0;
            if (cp <= 0xDBFF && low >= 0xDC00 && low <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                ++i;
            } else {
                cp = 0xFFFD;
            }
        }
        append_utf8(out, cp);
    }
    return out;
}

// The UTF-8 of a Python str: a view of CPython's own copy when it can make one, else owned.
struct Utf8Text {
    std::string_view view;
    std::string owned;
};

void read_text(py::handle text, const char* name, Utf8Text& out) {
    if (!PyUnicode_Check(text.ptr())) {
        throw py::type_error(std::string(name) + " must be str, not " + Py_TYPE(text.ptr())->tp_name);
    }
    Py_ssize_t size = 0;
    if (const char* utf8 = PyUnicode_AsUTF8AndSize(text.ptr(), &size)) {
        out.view = std::string_view(utf8, static_cast<size_t>(size));
        return;
    }
    PyErr_Clear();  // lone surrogates have no UTF-8
    out.owned = utf8_replacing_surrogates(text.ptr());
    out.view = out.owned;
}

py::list to_list(const std::vector<uint32_t>& ids) {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(ids.size()));
    if (!list) throw py::error_already_set();
    for (size_t i = 0; i < ids.size(); ++i) {
        PyObject* value = PyLong_FromUnsignedLong(ids[i]);
        if (!value) {
            Py_DECREF(list);
            throw py::error_already_set();
        }
        PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), value);
    }
    return py::reinterpret_steal<py::list>(list);
}

// Ids from any iterable of integers (list, tuple, range, numpy array, torch tensor), checked.
std::vector<uint32_t> read_ids(const Tokenizer& tokenizer, py::handle ids) {
    std::vector<uint32_t> out;
    if (PyUnicode_Check(ids.ptr()) || PyBytes_Check(ids.ptr())) {
        throw py::type_error("ids must be a sequence of ints, not " + std::string(Py_TYPE(ids.ptr())->tp_name));
    }
    const Py_ssize_t hint = PyObject_LengthHint(ids.ptr(), 0);
    if (hint > 0) out.reserve(static_cast<size_t>(hint));
    PyErr_Clear();
    size_t position = 0;
    for (py::handle item : ids) {
        PyObject* index = PyNumber_Index(item.ptr());
        if (!index) {
            PyErr_Clear();
            throw py::type_error("ids[" + std::to_string(position) + "] must be an int, not " +
                                 Py_TYPE(item.ptr())->tp_name);
        }
        int overflow = 0;
        const long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
        Py_DECREF(index);
        if (overflow || value < 0 || static_cast<unsigned long long>(value) >= tokenizer.vocab_size() ||
            !tokenizer.has_token(static_cast<uint32_t>(value))) {
            throw py::value_error("ids[" + std::to_string(position) + "] = " + py::str(item).cast<std::string>() +
                                  " is not a token id: valid ids are 0.." +
                                  std::to_string(tokenizer.vocab_size() - 1));
        }
        out.push_back(static_cast<uint32_t>(value));
        ++position;
    }
    return out;
}

using AddedTokens = std::vector<std::tuple<uint32_t, std::string, bool, bool>>;
using Merges = std::vector<std::pair<std::string, std::string>>;

void set_added_tokens(fastllm::TokenizerSpec& spec, const AddedTokens& added_tokens) {
    for (const auto& [id, content, special, normalized] : added_tokens) {
        spec.added_tokens.push_back(fastllm::AddedToken{id, content, special, normalized});
    }
}

fastllm::SpacePrefix parse_space_prefix(const std::string& name) {
    if (name == "none") return fastllm::SpacePrefix::kNone;
    if (name == "first") return fastllm::SpacePrefix::kFirst;
    if (name == "every_segment") return fastllm::SpacePrefix::kEverySegment;
    throw std::invalid_argument("space_prefix must be 'none', 'first' or 'every_segment', got '" + name + "'");
}

fastllm::PieceKind parse_piece_kind(uint8_t kind) {
    if (kind > static_cast<uint8_t>(fastllm::PieceKind::kOther)) {
        throw std::invalid_argument("piece kind " + std::to_string(kind) + " is not 0 (normal), 1 (byte) or 2 (other)");
    }
    return static_cast<fastllm::PieceKind>(kind);
}

// Builds the tokenizer without the GIL (a 262k-token vocabulary takes a while).
Tokenizer* build(const fastllm::TokenizerSpec& spec) {
    py::gil_scoped_release release;
    return new Tokenizer(spec);
}

}  // namespace

PYBIND11_MODULE(_tokenizer, m) {
    m.doc() = "fastllm's C++ tokenizers, byte-level BPE and SentencePiece BPE (use fastllm.Tokenizer)";

    py::class_<Tokenizer>(m, "CoreTokenizer")
        .def(py::init([](std::vector<std::optional<std::string>> tokens, Merges merges, const AddedTokens& added_tokens,
                         const std::string& pre_tokenizer, bool ignore_merges, std::optional<uint32_t> unknown_id,
                         bool fuse_unknown) {
                 fastllm::TokenizerSpec spec;
                 spec.tokens = std::move(tokens);
                 spec.merges = std::move(merges);
                 set_added_tokens(spec, added_tokens);
                 spec.pre_tokenizer = fastllm::parse_pre_tokenizer(pre_tokenizer);
                 spec.ignore_merges = ignore_merges;
                 spec.unknown_id = unknown_id;
                 spec.fuse_unknown = fuse_unknown;
                 return build(spec);
             }),
             py::arg("tokens"), py::arg("merges"), py::arg("added_tokens"), py::arg("pre_tokenizer"),
             py::arg("ignore_merges"), py::arg("unknown_id"), py::arg("fuse_unknown"),
             "Byte-level BPE. tokens: token strings by id (None for gaps); merges: (left, right) in rank order; "
             "added_tokens: (id, content, special, normalized); unknown_id/fuse_unknown: HF unk_token/fuse_unk")
        .def_static(
            "sentencepiece",
            [](std::vector<std::optional<std::string>> tokens, const std::vector<uint8_t>& kinds,
               std::vector<float> scores, Merges merges, const AddedTokens& added_tokens,
               const std::string& space_prefix, bool split_at_every_space, std::optional<uint32_t> unknown_id,
               bool fuse_unknown) {
                fastllm::TokenizerSpec spec;
                spec.model = fastllm::TokenizerModel::kSentencePieceBpe;
                spec.tokens = std::move(tokens);
                for (const uint8_t kind : kinds) spec.piece_kinds.push_back(parse_piece_kind(kind));
                spec.scores = std::move(scores);
                spec.merges = std::move(merges);
                set_added_tokens(spec, added_tokens);
                spec.space_prefix = parse_space_prefix(space_prefix);
                spec.split_at_every_space = split_at_every_space;
                spec.unknown_id = unknown_id;
                spec.fuse_unknown = fuse_unknown;
                return build(spec);
            },
            py::arg("tokens"), py::arg("kinds"), py::arg("scores"), py::arg("merges"), py::arg("added_tokens"),
            py::arg("space_prefix"), py::arg("split_at_every_space"), py::arg("unknown_id"), py::arg("fuse_unknown"),
            py::return_value_policy::take_ownership,
            "SentencePiece BPE. tokens: UTF-8 with '▁' for spaces; kinds: 0 normal, 1 byte (<0xNN>), 2 other; "
            "scores: by id (ranks the merges; empty: `merges` do); space_prefix: 'none', 'first', 'every_segment'")
        .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
        .def("is_special", &Tokenizer::is_special, py::arg("id"))
        .def(
            "encode",
            [](const Tokenizer& self, py::handle text, bool allow_special) {
                Utf8Text utf8;
                read_text(text, "text", utf8);
                std::vector<uint32_t> ids;
                if (utf8.view.size() >= kReleaseGilBytes) {
                    py::gil_scoped_release release;
                    self.encode(utf8.view, allow_special, ids);
                } else {
                    self.encode(utf8.view, allow_special, ids);
                }
                return to_list(ids);
            },
            py::arg("text"), py::arg("allow_special"))
        .def(
            "encode_batch",
            [](const Tokenizer& self, py::handle texts, bool allow_special, size_t num_threads) {
                if (PyUnicode_Check(texts.ptr())) throw py::type_error("texts must be a sequence of str, not str");
                // The strs stay referenced by `holders`, so their UTF-8 stays valid without the GIL.
                std::vector<py::object> holders;
                std::vector<Utf8Text> utf8;
                for (py::handle text : texts) holders.push_back(py::reinterpret_borrow<py::object>(text));
                utf8.resize(holders.size());
                std::vector<std::string_view> views;
                views.reserve(holders.size());
                for (size_t i = 0; i < holders.size(); ++i) {
                    read_text(holders[i], ("texts[" + std::to_string(i) + "]").c_str(), utf8[i]);
                    views.push_back(utf8[i].view);
                }
                std::vector<std::vector<uint32_t>> results;
                {
                    py::gil_scoped_release release;
                    results = self.encode_batch(views, allow_special, num_threads);
                }
                py::list out(results.size());
                for (size_t i = 0; i < results.size(); ++i) out[i] = to_list(results[i]);
                return out;
            },
            py::arg("texts"), py::arg("allow_special"), py::arg("num_threads"))
        .def(
            "pre_tokenize",
            [](const Tokenizer& self, py::handle text) {
                Utf8Text utf8;
                read_text(text, "text", utf8);
                py::list pieces;
                for (const std::string& piece : self.pre_tokenize(utf8.view)) {
                    PyObject* text = PyUnicode_DecodeUTF8(piece.data(), static_cast<Py_ssize_t>(piece.size()), "replace");
                    if (!text) throw py::error_already_set();
                    pieces.append(py::reinterpret_steal<py::str>(text));
                }
                return pieces;
            },
            py::arg("text"))
        .def(
            "decode_bytes",
            [](const Tokenizer& self, py::handle ids, bool skip_special_tokens) {
                const std::vector<uint32_t> checked = read_ids(self, ids);
                std::string bytes;
                self.decode(checked.data(), checked.size(), skip_special_tokens, bytes);
                return py::bytes(bytes);
            },
            py::arg("ids"), py::arg("skip_special_tokens"))
        .def(
            "decode",
            [](const Tokenizer& self, py::handle ids, bool skip_special_tokens) {
                const std::vector<uint32_t> checked = read_ids(self, ids);
                std::string bytes;
                self.decode(checked.data(), checked.size(), skip_special_tokens, bytes);
                PyObject* text = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
                if (!text) throw py::error_already_set();
                return py::reinterpret_steal<py::str>(text);
            },
            py::arg("ids"), py::arg("skip_special_tokens"));
}
