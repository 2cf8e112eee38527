/*
GPT-2 byte-level BPE tokenizer: encode and decode, header-only C++17 (with utils.h and json.h).

Loads the two files OpenAI published with GPT-2 (`encoder.json`: token string -> id,
`vocab.bpe`: the merge list in rank order); the repo tracks them in `data/gpt2/`. Link with
-lpcre2-8: the pre-tokenisation regex needs Unicode classes (\p{L}, \p{N}, \s), and PCRE2 in
UTF+UCP mode matches them the way Python's `regex` module does for GPT-2's pattern
(test/test_tokenizer.cpp checks token-for-token agreement with a Python BPE).

    Tokenizer tok;
    tokenizer_load(&tok, "data/gpt2/encoder.json", "data/gpt2/vocab.bpe");
    std::vector<int> ids = tokenizer_encode(&tok, "Hello world");   // {15496, 995}
    std::string text = tokenizer_decode(&tok, ids.data(), ids.size());

Design: token strings are converted once, at load, from GPT-2's printable "byte-encoder"
alphabet back to raw bytes, so encode/decode work on raw bytes and BPE merges are looked up by
(left id, right id) pairs. Each pre-tokenised word's BPE result is cached.

Left out: other special tokens than <|endoftext|>; thread safety (the word cache and the PCRE2
match block live in the Tokenizer, so use one Tokenizer per thread); non-UTF-8 input (encode
ends the program with a one-line error, as Python's str would refuse it too).
*/
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <queue>
#include <unordered_map>
#include <utility>
#include <vector>

#include "utils.h"  // die, read_text_file
#include "json.h"   // json_parse, JsonParser::append_utf8

// GPT-2's pre-tokenisation pattern, from openai/gpt-2 src/encoder.py:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with each class spelled out so that PCRE2 agrees with Python's `regex` module on every
// code point (test/test_tokenizer.cpp checks every code point of planes 0-3 and 14):
// - \s: `regex` uses Unicode's White_Space property; PCRE2's \s also takes U+180E.
// - \p{L}, \p{N}: PCRE2 10.42 has Unicode 14 tables, `regex` 2022.10 has Unicode 15; the
//   ranges below are the letters and numbers Unicode 15 added (harmless with newer PCRE2).
#define GPT2_WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define GPT2_L "\\p{L}\\x{1123F}-\\x{11240}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}" \
               "\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{2B739}\\x{31350}-\\x{323AF}"
#define GPT2_N "\\p{N}\\x{11F50}-\\x{11F59}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"
static const char* const GPT2_SPLIT_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?[" GPT2_L "]+| ?[" GPT2_N "]+| ?[^" GPT2_WS GPT2_L GPT2_N "]+"
    "|[" GPT2_WS "]+(?![^" GPT2_WS "])|[" GPT2_WS "]+";
#undef GPT2_WS
#undef GPT2_L
#undef GPT2_N
static const char* const GPT2_EOT_STRING = "<|endoftext|>";

struct Tokenizer {
    int vocab_size = 0;
    int eot_token = -1;                              // id of <|endoftext|> (50256 for GPT-2)
    std::vector<std::string> token_bytes;            // id -> raw bytes of the token
    int byte_token[256];                             // raw byte -> id of its one-byte token
    // (left id << 32 | right id) -> (merge rank, merged id); lower rank merges first
    std::unordered_map<uint64_t, std::pair<int, int>> merges;
    pcre2_code* re = nullptr;
    pcre2_match_data* match = nullptr;
    // word bytes -> BPE ids; mutable because encode is logically const (it only memoises)
    mutable std::unordered_map<std::string, std::vector<int>> cache;

    Tokenizer() = default;
    Tokenizer(const Tokenizer&) = delete;            // owns PCRE2 handles
    Tokenizer& operator=(const Tokenizer&) = delete;
    ~Tokenizer() {
        if (match) pcre2_match_data_free(match);
        if (re) pcre2_code_free(re);
    }
};

// Errors (bad files, bad text, bad ids) are one line naming the problem, then exit(1): utils.h's die.

// a whole file as bytes: utils.h's read_text_file, under the name test/test_tokenizer.cpp uses
static inline std::string tokenizer_read_file(const std::string& path) { return read_text_file(path); }

// ----------------------------------------------------------------------------
// UTF-8

// one code point as UTF-8 (the tests build text from code points with it)
static inline void tokenizer_utf8_append(std::string& out, uint32_t cp) { JsonParser::append_utf8(out, cp); }

// Decodes one code point at s[*i], advancing *i; returns -1 on an invalid sequence (overlong,
// surrogate, > U+10FFFF, truncated), the same strictness as Python's and PCRE2's UTF-8 checks.
static inline int32_t tok_utf8_next(const std::string& s, size_t* i) {
    const unsigned char* p = (const unsigned char*)s.data() + *i;
    size_t left = s.size() - *i;
    uint32_t c = p[0];
    int len;
    uint32_t cp, min;
    if (c < 0x80) { *i += 1; return (int32_t)c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return -1;
    if (left < (size_t)len) return -1;
    for (int k = 1; k < len; k++) {
        if ((p[k] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (p[k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *i += len;
    return (int32_t)cp;
}

// Byte offset of the first invalid UTF-8 sequence in s, or s.size() if s is valid.
static inline size_t tokenizer_utf8_invalid_offset(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        size_t at = i;
        if (tok_utf8_next(s, &i) < 0) return at;
    }
    return s.size();
}

// ----------------------------------------------------------------------------
// GPT-2's bytes_to_unicode(): every byte gets a printable code point so that token strings in
// encoder.json / vocab.bpe contain no whitespace or control characters. Printable Latin-1 bytes
// map to themselves, the other 68 bytes to 256, 257, ... in byte order. We invert it: code
// point -> byte, -1 for code points that are not in the alphabet.

static inline void tok_gpt2_unicode_to_byte(int* cp_to_byte /* [324] */) {
    for (int cp = 0; cp < 324; cp++) cp_to_byte[cp] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp_to_byte[printable ? b : 256 + n++] = b;
    }
}

// A token string in the byte-encoder alphabet (UTF-8) -> raw bytes; false if it is not one.
static inline bool tok_gpt2_token_to_bytes(const std::string& s, const int* cp_to_byte, std::string* out) {
    out->clear();
    size_t i = 0;
    while (i < s.size()) {
        int32_t cp = tok_utf8_next(s, &i);
        if (cp < 0 || cp >= 324 || cp_to_byte[cp] < 0) return false;
        *out += (char)cp_to_byte[cp];
    }
    return true;
}

// ----------------------------------------------------------------------------
// load

static inline void tokenizer_load(Tokenizer* tok, const char* encoder_json_path, const char* vocab_bpe_path) {
    int cp_to_byte[324];
    tok_gpt2_unicode_to_byte(cp_to_byte);

    // encoder.json: one flat JSON object {"token": id, ...}, read with json.h's parser
    JsonValue root;
    if (!json_parse(read_text_file(encoder_json_path), root))
        die("%s: not a GPT-2 encoder.json (not valid JSON)", encoder_json_path);
    if (root.kind != JsonValue::OBJECT || root.members.empty())
        die("%s: not a GPT-2 encoder.json (expected a non-empty object of token -> id)", encoder_json_path);

    // ids must be exactly 0..n-1, each once, so token_bytes is a dense table
    int n = (int)root.members.size();
    tok->vocab_size = n;
    tok->token_bytes.assign(n, std::string());
    std::vector<char> seen(n, 0);
    std::unordered_map<std::string, int> bytes_to_id;
    tok->eot_token = -1;
    for (const auto& e : root.members) {
        const double v = e.second.num;
        if (e.second.kind != JsonValue::NUMBER || !(v >= 0 && v < n) || v != (double)(int)v || seen[(int)v])
            die("%s: not a GPT-2 encoder.json (ids are not 0..%d, each once; bad id for token \"%s\")", encoder_json_path,
                n - 1, json_escape(e.first).c_str());
        int id = (int)v;
        seen[id] = 1;
        if (e.first == GPT2_EOT_STRING) {
            tok->eot_token = id;
            tok->token_bytes[id] = e.first;  // decodes to the literal string, as in Python
            continue;
        }
        std::string raw;
        if (!tok_gpt2_token_to_bytes(e.first, cp_to_byte, &raw) || raw.empty())
            die("%s: not a GPT-2 encoder.json (token for id %d is not in GPT-2's byte alphabet)", encoder_json_path, id);
        tok->token_bytes[id] = raw;
        bytes_to_id[raw] = id;
    }
    if (tok->eot_token < 0) die("%s: not a GPT-2 encoder.json (no <|endoftext|> token)", encoder_json_path);
    for (int b = 0; b < 256; b++) {
        auto it = bytes_to_id.find(std::string(1, (char)b));
        if (it == bytes_to_id.end()) die("%s: not a GPT-2 encoder.json (no token for byte %d)", encoder_json_path, b);
        tok->byte_token[b] = it->second;
    }

    // vocab.bpe: "#version: 0.2" then one "left right" merge per line, in rank order
    std::string bpe = read_text_file(vocab_bpe_path);
    tok->merges.clear();
    size_t pos = 0;
    int line_no = 0, rank = 0;
    while (pos < bpe.size()) {
        size_t end = bpe.find('\n', pos);
        if (end == std::string::npos) end = bpe.size();
        std::string line = bpe.substr(pos, end - pos);
        pos = end + 1;
        line_no++;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
        size_t sp = line.find(' ');
        std::string left_raw, right_raw;
        if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos ||
            !tok_gpt2_token_to_bytes(line.substr(0, sp), cp_to_byte, &left_raw) ||
            !tok_gpt2_token_to_bytes(line.substr(sp + 1), cp_to_byte, &right_raw))
            die("%s: not a GPT-2 vocab.bpe (line %d is not a merge \"left right\")", vocab_bpe_path, line_no);
        auto l = bytes_to_id.find(left_raw), r = bytes_to_id.find(right_raw), m = bytes_to_id.find(left_raw + right_raw);
        if (l == bytes_to_id.end() || r == bytes_to_id.end() || m == bytes_to_id.end())
            die("%s: merge on line %d uses a token missing from %s", vocab_bpe_path, line_no, encoder_json_path);
        uint64_t key = ((uint64_t)(uint32_t)l->second << 32) | (uint32_t)r->second;
        tok->merges.emplace(key, std::make_pair(rank++, m->second));  // first occurrence wins
    }
    if (rank == 0) die("%s: not a GPT-2 vocab.bpe (no merges)", vocab_bpe_path);

    // the regex, once; JIT makes matching several times faster but is optional
    if (tok->match) pcre2_match_data_free(tok->match);
    if (tok->re) pcre2_code_free(tok->re);
    int err;
    PCRE2_SIZE erroff;
    tok->re = pcre2_compile((PCRE2_SPTR)GPT2_SPLIT_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &erroff, nullptr);
    if (!tok->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        die("tokenizer: PCRE2 cannot compile the GPT-2 pattern: %s (is libpcre2 built with Unicode support?)", (char*)msg);
    }
    pcre2_jit_compile(tok->re, PCRE2_JIT_COMPLETE);
    tok->match = pcre2_match_data_create_from_pattern(tok->re, nullptr);
    tok->cache.clear();
}

// ----------------------------------------------------------------------------
// encode

// BPE on one pre-tokenised word (raw bytes): start from one token per byte, repeatedly merge
// every occurrence (left to right, non-overlapping) of the adjacent pair with the lowest rank,
// exactly as GPT-2's encoder.py does. Done with a heap of candidate pairs ordered by (rank,
// position) over a linked list of parts, so a word of n bytes costs O(n log n), not O(n^2): the
// heap takes a pair's occurrences left to right, and a pair a merge creates always ranks after the
// merge that made its new token (BPE learns merges in that order), so no new pair jumps ahead of
// the current rank's remaining occurrences. Entries whose parts have changed since are skipped.
static inline void tokenizer_bpe_word(const Tokenizer* tok, const char* s, size_t len, std::vector<int>* out) {
    std::string key(s, len);
    auto hit = tok->cache.find(key);
    if (hit != tok->cache.end()) {
        out->insert(out->end(), hit->second.begin(), hit->second.end());
        return;
    }
    struct Part { int id; long long prev, next; };  // a token of the word; prev/next -1 at the ends
    struct Cand { int rank; long long left; int left_id, right_id, merged_id; };
    auto later = [](const Cand& a, const Cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.left > b.left; };
    std::vector<Part> parts(len);
    for (size_t i = 0; i < len; i++) parts[i] = {tok->byte_token[(unsigned char)s[i]], (long long)i - 1, i + 1 < len ? (long long)i + 1 : -1};
    std::priority_queue<Cand, std::vector<Cand>, decltype(later)> heap(later);
    auto push_pair = [&](long long left) {  // the pair starting at part `left`, if it is a merge
        if (left < 0 || parts[left].next < 0) return;
        int a = parts[left].id, b = parts[parts[left].next].id;
        auto it = tok->merges.find(((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
        if (it != tok->merges.end()) heap.push({it->second.first, left, a, b, it->second.second});
    };
    for (size_t i = 0; i + 1 < len; i++) push_pair((long long)i);
    while (!heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        Part& l = parts[c.left];
        if (l.id != c.left_id || l.next < 0 || parts[l.next].id != c.right_id) continue;  // stale
        long long right = l.next;
        l.id = c.merged_id;
        l.next = parts[right].next;
        if (l.next >= 0) parts[l.next].prev = c.left;
        parts[right].id = -1;  // gone: any entry that starts or ends here is stale
        push_pair(l.prev);
        push_pair(c.left);
    }
    std::vector<int> word;
    for (long long i = len ? 0 : -1; i >= 0; i = parts[i].next) word.push_back(parts[i].id);
    out->insert(out->end(), word.begin(), word.end());
    // bound memory on huge corpora: a full cache is simply dropped
    if (tok->cache.size() >= (1u << 20)) tok->cache.clear();
    tok->cache.emplace(std::move(key), std::move(word));
}

// Pre-tokenisation: calls fn(offset, length) for each piece of text that GPT-2's regex cuts
// out (the pieces tile the text). Text must be valid UTF-8.
template <typename Fn>
static inline void tokenizer_split_each(const Tokenizer* tok, const std::string& text, Fn fn) {
    if (!tok->re) die("tokenizer: encode called before tokenizer_load");
    size_t bad = tokenizer_utf8_invalid_offset(text);
    if (bad != text.size()) die("tokenizer: text is not valid UTF-8 (byte offset %zu)", bad);
    // Every character is in \s, \p{L}, \p{N} or their complement, so the pattern matches at
    // every position: anchored matching from the end of the previous match gives the same
    // pieces as Python's regex.findall. The UTF-8 check is done once above, not per match
    // (PCRE2 would otherwise re-check the whole subject on every call: quadratic).
    PCRE2_SPTR subject = (PCRE2_SPTR)text.data();
    size_t off = 0;
    while (off < text.size()) {
        int rc = pcre2_match(tok->re, subject, text.size(), off, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, tok->match, nullptr);
        if (rc < 0) die("tokenizer: pre-tokenisation regex failed at byte %zu (PCRE2 error %d)", off, rc);
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tok->match);
        if (ov[1] <= off) die("tokenizer: empty regex match at byte %zu", off);
        fn(off, (size_t)ov[1] - off);
        off = ov[1];
    }
}

// The pieces themselves, for tests and debugging.
static inline std::vector<std::string> tokenizer_split(const Tokenizer* tok, const std::string& text) {
    std::vector<std::string> pieces;
    tokenizer_split_each(tok, text, [&](size_t off, size_t len) { pieces.push_back(text.substr(off, len)); });
    return pieces;
}

// Plain-text encoding of a valid UTF-8 string (no special tokens) appended to *out.
static inline void tokenizer_encode_plain(const Tokenizer* tok, const std::string& text, std::vector<int>* out) {
    tokenizer_split_each(tok, text, [&](size_t off, size_t len) { tokenizer_bpe_word(tok, text.data() + off, len, out); });
}

// Encodes text. With allow_eot, each literal "<|endoftext|>" becomes token eot_token (50256);
// without it (the default) that string is ordinary text, as in tiktoken's encode_ordinary.
static inline std::vector<int> tokenizer_encode(const Tokenizer* tok, const std::string& text, bool allow_eot = false) {
    std::vector<int> out;
    out.reserve(text.size() / 3);
    if (!allow_eot) {
        tokenizer_encode_plain(tok, text, &out);
        return out;
    }
    const std::string eot(GPT2_EOT_STRING);
    size_t pos = 0;
    while (true) {
        size_t hit = text.find(eot, pos);
        tokenizer_encode_plain(tok, text.substr(pos, hit == std::string::npos ? std::string::npos : hit - pos), &out);
        if (hit == std::string::npos) break;
        out.push_back(tok->eot_token);
        pos = hit + eot.size();
    }
    return out;
}

// ----------------------------------------------------------------------------
// decode

// Raw bytes of one token. A token can end inside a multi-byte UTF-8 character, so print the
// concatenation of several tokens, not each one, if the text must be valid UTF-8.
static inline const std::string& tokenizer_decode_token(const Tokenizer* tok, int id) {
    if (id < 0 || id >= tok->vocab_size) die("tokenizer: token id %d out of range [0, %d)", id, tok->vocab_size);
    return tok->token_bytes[id];
}

static inline std::string tokenizer_decode(const Tokenizer* tok, const int* ids, size_t n) {
    std::string out;
    for (size_t i = 0; i < n; i++) out += tokenizer_decode_token(tok, ids[i]);
    return out;
}
