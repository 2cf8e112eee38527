/*
A minimal JSON reader for the small files the engine reads: safetensors headers,
config.json, cfg.json. Parses into a tree of JsonValue; on malformed input it returns
false and the caller names the file in its error. Writing JSON is done with fprintf.
*/
#pragma once
#include <string>
#include <vector>
#include <utility>
#include <stdlib.h>

struct JsonValue {
    enum Kind { NUL, BOOL, NUMBER, STRING, ARRAY, OBJECT } kind = NUL;
    bool b = false;
    double num = 0.0;
    std::string str;
    std::vector<JsonValue> items;                          // ARRAY
    std::vector<std::pair<std::string, JsonValue>> members; // OBJECT, in file order

    const JsonValue* get(const std::string& key) const {
        for (const auto& m : members) if (m.first == key) return &m.second;
        return nullptr;
    }
};

// A number read from a file as a whole integer in [lo, hi] (|lo|, |hi| <= 2^53, where doubles are
// exact): false for non-numbers, fractions and out-of-range values, so no cast is ever undefined.
inline bool json_integer(const JsonValue* v, long long lo, long long hi, long long* out) {
    if (!v || v->kind != JsonValue::NUMBER || !(v->num >= (double)lo && v->num <= (double)hi)) return false;
    if (v->num != (double)(long long)v->num) return false;
    *out = (long long)v->num;
    return true;
}

struct JsonParser {
    const char* p;
    const char* end;
    int depth = 0;

    void skip_ws() { while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++; }

    bool parse_string(std::string& out) {
        if (p >= end || *p != '"') return false;
        p++;
        while (p < end && *p != '"') {
            unsigned char ch = (unsigned char)*p;
            if (ch < 0x20) return false;
            if (ch != '\\') { out += *p++; continue; }
            if (++p >= end) return false;
            char e = *p++;
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = 0;
                    if (!parse_hex4(cp)) return false;
                    if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair
                        unsigned lo = 0;
                        if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return false;
                        p += 2;
                        if (!parse_hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: return false;
            }
        }
        if (p >= end) return false;
        p++;
        return true;
    }

    bool parse_hex4(unsigned& cp) {
        if (end - p < 4) return false;
        for (int i = 0; i < 4; i++) {
            char c = *p++;
            cp <<= 4;
            if (c >= '0' && c <= '9') cp |= c - '0';
            else if (c >= 'a' && c <= 'f') cp |= c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') cp |= c - 'A' + 10;
            else return false;
        }
        return true;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) out += (char)cp;
        else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) { out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F)); }
        else { out += (char)(0xF0 | (cp >> 18)); out += (char)(0x80 | ((cp >> 12) & 0x3F)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F)); }
    }

    bool parse_value(JsonValue& v) {
        if (++depth > 64) return false;
        skip_ws();
        if (p >= end) return false;
        bool ok = true;
        if (*p == '{') {
            v.kind = JsonValue::OBJECT;
            p++; skip_ws();
            if (p < end && *p == '}') { p++; }
            else {
                while (ok) {
                    skip_ws();
                    std::string key;
                    JsonValue child;
                    if (!parse_string(key)) { ok = false; break; }
                    skip_ws();
                    if (p >= end || *p != ':') { ok = false; break; }
                    p++;
                    if (!parse_value(child)) { ok = false; break; }
                    v.members.emplace_back(std::move(key), std::move(child));
                    skip_ws();
                    if (p < end && *p == ',') { p++; continue; }
                    if (p < end && *p == '}') { p++; break; }
                    ok = false;
                }
            }
        } else if (*p == '[') {
            v.kind = JsonValue::ARRAY;
            p++; skip_ws();
            if (p < end && *p == ']') { p++; }
            else {
                while (ok) {
                    JsonValue child;
                    if (!parse_value(child)) { ok = false; break; }
                    v.items.push_back(std::move(child));
                    skip_ws();
                    if (p < end && *p == ',') { p++; continue; }
                    if (p < end && *p == ']') { p++; break; }
                    ok = false;
                }
            }
        } else if (*p == '"') {
            v.kind = JsonValue::STRING;
            ok = parse_string(v.str);
        } else if (end - p >= 4 && std::string(p, 4) == "true") { v.kind = JsonValue::BOOL; v.b = true; p += 4; }
        else if (end - p >= 5 && std::string(p, 5) == "false") { v.kind = JsonValue::BOOL; v.b = false; p += 5; }
        else if (end - p >= 4 && std::string(p, 4) == "null") { v.kind = JsonValue::NUL; p += 4; }
        else {
            std::string num;
            while (p < end && (isdigit((unsigned char)*p) || *p == '-' || *p == '+' || *p == '.' || *p == 'e' || *p == 'E')) num += *p++;
            char* numend = nullptr;
            v.kind = JsonValue::NUMBER;
            v.num = strtod(num.c_str(), &numend);
            ok = !num.empty() && numend == num.c_str() + num.size();
        }
        depth--;
        return ok;
    }
};

// parses text into out; false if it is not exactly one JSON value (trailing spaces allowed)
inline bool json_parse(const std::string& text, JsonValue& out) {
    JsonParser ps{text.data(), text.data() + text.size()};
    if (!ps.parse_value(out)) return false;
    ps.skip_ws();
    return ps.p == ps.end;
}

// for writing JSON strings safely (names, paths)
inline std::string json_escape(const std::string& s) {
    std::string out;
    for (char ch : s) {
        unsigned char c = (unsigned char)ch;
        if (c == '"') out += "\\\"";
        else if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else if (c < 0x20) { char buf[8]; snprintf(buf, sizeof(buf), "\\u%04x", c); out += buf; }
        else out += ch;
    }
    return out;
}
