/*
The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
then the raw C-order little-endian data. We read F32, F16 and BF16 (converted to fp32) and
I64 / I32 (as int64), and write F32 (the default), I64 or I32. The reader validates the whole
header up front: offsets must tile the data exactly (no holes, overlaps or trailing bytes) and
match each tensor's shape and dtype, so a corrupt or truncated file is rejected with a message
naming it before anything is used.
*/
#pragma once
#include <stdint.h>
#include <string>
#include <vector>
#include <algorithm>
#include "utils.h"
#include "json.h"

struct StTensorInfo {
    std::string name;
    std::string dtype;           // "F32", "F16", "BF16", ...
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0; // byte offsets relative to the start of the data
};

struct SafeTensors {
    std::string path;
    uint64_t data_start = 0;     // 8 + header length
    std::vector<StTensorInfo> tensors;
    std::vector<std::pair<std::string, std::string>> metadata;
};

inline int safetensors_dtype_size(const std::string& dtype) {
    if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
    if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
    if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
    if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
    return 0;
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

inline void safetensors_open(SafeTensors* st, const std::string& path) {
    st->path = path;
    st->tensors.clear();
    st->metadata.clear();
    if (!file_exists(path)) die("safetensors file '%s' not found", path.c_str());
    long long fsize = file_size(path.c_str());
    if (fsize < 8) die("'%s' is not a safetensors file: only %lld bytes", path.c_str(), fsize);
    FILE* fp = fopenCheck(path.c_str(), "rb");
    uint8_t lenbytes[8];
    freadCheck(lenbytes, 1, 8, fp, path.c_str());
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbytes[i];
    if (hlen == 0 || hlen > (uint64_t)(fsize - 8) || hlen > (100u << 20))
        die("'%s' is not a valid safetensors file: header length %llu does not fit the file (%lld bytes)",
            path.c_str(), (unsigned long long)hlen, fsize);
    std::string header(hlen, '\0');
    freadCheck(&header[0], 1, hlen, fp, path.c_str());
    fclose(fp);
    st->data_start = 8 + hlen;
    uint64_t data_size = (uint64_t)fsize - st->data_start;

    JsonValue root;
    if (!json_parse(header, root) || root.kind != JsonValue::OBJECT)
        die("'%s' is not a valid safetensors file: its header is not a JSON object", path.c_str());
    std::vector<std::string> names;
    for (const auto& m : root.members) names.push_back(m.first);
    std::sort(names.begin(), names.end());
    for (size_t i = 1; i < names.size(); i++)  // JSON allows it, but which one would be meant?
        if (names[i] == names[i - 1]) die("'%s': the header names '%s' twice: the file is corrupt", path.c_str(), names[i].c_str());
    for (const auto& m : root.members) {
        const JsonValue& v = m.second;
        if (m.first == "__metadata__") {
            if (v.kind != JsonValue::OBJECT) die("'%s': __metadata__ is not an object", path.c_str());
            for (const auto& kv : v.members) {
                if (kv.second.kind != JsonValue::STRING) die("'%s': __metadata__ value for '%s' is not a string", path.c_str(), kv.first.c_str());
                st->metadata.emplace_back(kv.first, kv.second.str);
            }
            continue;
        }
        const JsonValue* dtype = v.get("dtype");
        const JsonValue* shape = v.get("shape");
        const JsonValue* offs = v.get("data_offsets");
        if (v.kind != JsonValue::OBJECT || !dtype || dtype->kind != JsonValue::STRING || !shape || shape->kind != JsonValue::ARRAY ||
            !offs || offs->kind != JsonValue::ARRAY || offs->items.size() != 2)
            die("'%s': header entry '%s' lacks dtype/shape/data_offsets", path.c_str(), m.first.c_str());
        StTensorInfo t;
        t.name = m.first;
        t.dtype = dtype->str;
        int esize = safetensors_dtype_size(t.dtype);
        if (esize == 0) die("'%s': tensor '%s' has unknown dtype '%s'", path.c_str(), t.name.c_str(), t.dtype.c_str());
        // every size is a whole number small enough to count bytes (2^53, where doubles are exact),
        // and so is every running product; whether they fit this file is checked below
        const long long MAXN = 1LL << 53;
        uint64_t numel = 1;
        bool empty = false;
        for (const auto& d : shape->items) {
            long long dim = 0;
            if (!json_integer(&d, 0, MAXN, &dim))
                die("'%s': tensor '%s' has an invalid shape (a dimension that is not an integer in [0, 2^53])", path.c_str(), t.name.c_str());
            t.shape.push_back(dim);
            if (dim == 0) empty = true;
            if (dim > 0 && numel > (uint64_t)MAXN / (uint64_t)dim)  // checked before it could wrap
                die("'%s': tensor '%s' has shape %s: too many elements for any file", path.c_str(), t.name.c_str(), shape_str(t.shape).c_str());
            if (dim > 0) numel *= (uint64_t)dim;
        }
        if (empty) numel = 0;
        long long begin = 0, end = 0;
        if (!json_integer(&offs->items[0], 0, MAXN, &begin) || !json_integer(&offs->items[1], 0, MAXN, &end))
            die("'%s': tensor '%s' has invalid data_offsets (not integers in [0, 2^53])", path.c_str(), t.name.c_str());
        t.begin = (uint64_t)begin;
        t.end = (uint64_t)end;
        if (t.end < t.begin || t.end - t.begin != numel * (uint64_t)esize)
            die("'%s': tensor '%s' data_offsets [%llu, %llu) do not match its shape %s and dtype %s", path.c_str(), t.name.c_str(),
                (unsigned long long)t.begin, (unsigned long long)t.end, shape_str(t.shape).c_str(), t.dtype.c_str());
        st->tensors.push_back(t);
    }
    // the byte ranges must tile [0, data_size) exactly
    std::vector<const StTensorInfo*> order;
    for (const auto& t : st->tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const StTensorInfo* a, const StTensorInfo* b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
    uint64_t pos = 0;
    for (const auto* t : order) {
        if (t->begin != pos) die("'%s': tensor data is not contiguous at byte %llu (tensor '%s'): the file is corrupt", path.c_str(),
                                 (unsigned long long)pos, t->name.c_str());
        pos = t->end;
    }
    if (pos != data_size)
        die("'%s': tensors cover %llu data bytes but the file has %llu: the file is %s", path.c_str(), (unsigned long long)pos,
            (unsigned long long)data_size, pos > data_size ? "truncated" : "corrupt (trailing bytes)");
}

inline const StTensorInfo* safetensors_find(const SafeTensors* st, const std::string& name) {
    for (const auto& t : st->tensors) if (t.name == name) return &t;
    return nullptr;
}

inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400) == 0) { mant <<= 1; exp--; }
            mant &= 0x3FF;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) bits = sign | 0x7F800000 | (mant << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// reads tensor `name` as fp32 into out (numel floats); the shape must equal `shape`
inline void safetensors_read(const SafeTensors* st, const std::string& name, const std::vector<int64_t>& shape, float* out) {
    const StTensorInfo* t = safetensors_find(st, name);
    if (!t) die("'%s': missing tensor '%s'", st->path.c_str(), name.c_str());
    if (t->shape != shape)
        die("'%s': tensor '%s' has shape %s, expected %s", st->path.c_str(), name.c_str(), shape_str(t->shape).c_str(), shape_str(shape).c_str());
    if (t->dtype != "F32" && t->dtype != "F16" && t->dtype != "BF16")
        die("'%s': tensor '%s' has dtype %s; only F32, F16 and BF16 are supported", st->path.c_str(), name.c_str(), t->dtype.c_str());
    size_t bytes = t->end - t->begin;
    FILE* fp = fopenCheck(st->path.c_str(), "rb");
    if (fseeko(fp, (off_t)(st->data_start + t->begin), SEEK_SET) != 0) die("'%s': seek failed", st->path.c_str());
    if (t->dtype == "F32") {
        freadCheck(out, 1, bytes, fp, st->path.c_str());
    } else {
        size_t n = bytes / 2;
        std::vector<uint16_t> buf(n);
        freadCheck(buf.data(), 2, n, fp, st->path.c_str());
        bool is_bf16 = t->dtype == "BF16";
        for (size_t i = 0; i < n; i++) out[i] = is_bf16 ? bf16_to_float(buf[i]) : half_to_float(buf[i]);
    }
    fclose(fp);
}

inline std::vector<float> safetensors_read_vec(const SafeTensors* st, const std::string& name, const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (auto d : shape) n *= (size_t)d;
    std::vector<float> v(n);
    safetensors_read(st, name, shape, v.data());
    return v;
}

// reads integer tensor `name` (I64, or I32 widened) into out (numel int64s); the shape must equal `shape`
inline void safetensors_read_i64(const SafeTensors* st, const std::string& name, const std::vector<int64_t>& shape, int64_t* out) {
    const StTensorInfo* t = safetensors_find(st, name);
    if (!t) die("'%s': missing tensor '%s'", st->path.c_str(), name.c_str());
    if (t->shape != shape)
        die("'%s': tensor '%s' has shape %s, expected %s", st->path.c_str(), name.c_str(), shape_str(t->shape).c_str(), shape_str(shape).c_str());
    if (t->dtype != "I64" && t->dtype != "I32")
        die("'%s': tensor '%s' has dtype %s; expected I64 or I32", st->path.c_str(), name.c_str(), t->dtype.c_str());
    size_t n = (t->end - t->begin) / safetensors_dtype_size(t->dtype);
    FILE* fp = fopenCheck(st->path.c_str(), "rb");
    if (fseeko(fp, (off_t)(st->data_start + t->begin), SEEK_SET) != 0) die("'%s': seek failed", st->path.c_str());
    if (t->dtype == "I64") {
        freadCheck(out, 8, n, fp, st->path.c_str());
    } else {
        std::vector<int32_t> buf(n);
        freadCheck(buf.data(), 4, n, fp, st->path.c_str());
        for (size_t i = 0; i < n; i++) out[i] = buf[i];
    }
    fclose(fp);
}

struct StWriteEntry {
    std::string name;
    std::vector<int64_t> shape;
    const void* data;            // numel elements of dtype, host memory
    std::string dtype = "F32";   // "F32", "F16" (raw half bits), "I64" or "I32"; {name, shape, data} stays an F32 entry
};

// writes the tensors (in the given order) to path.tmp, then renames it over path
inline void safetensors_write(const std::string& path, const std::vector<StWriteEntry>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\":{";
        for (size_t i = 0; i < metadata.size(); i++)
            header += (i ? "," : "") + std::string("\"") + json_escape(metadata[i].first) + "\":\"" + json_escape(metadata[i].second) + "\"";
        header += "}";
    }
    uint64_t off = 0;
    for (size_t i = 0; i < tensors.size(); i++) {
        const std::string& dtype = tensors[i].dtype;
        if (dtype != "F32" && dtype != "F16" && dtype != "I64" && dtype != "I32")
            die("safetensors_write '%s': tensor '%s' has dtype '%s'; only F32, F16, I64 and I32 are written", path.c_str(),
                tensors[i].name.c_str(), dtype.c_str());
        uint64_t n = 1;
        for (auto d : tensors[i].shape) n *= (uint64_t)d;
        uint64_t bytes = n * (uint64_t)safetensors_dtype_size(dtype);
        std::string shp;
        for (size_t j = 0; j < tensors[i].shape.size(); j++) shp += (j ? "," : "") + std::to_string(tensors[i].shape[j]);
        if (header.size() > 1) header += ",";
        header += "\"" + json_escape(tensors[i].name) + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shp + "],\"data_offsets\":[" +
                  std::to_string(off) + "," + std::to_string(off + bytes) + "]}";
        off += bytes;
    }
    header += "}";
    while (header.size() % 8) header += ' ';  // keeps the data 8-byte aligned, as the reference writer does
    std::string tmp = path + ".tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "wb");
    uint64_t hlen = header.size();
    uint8_t lenbytes[8];
    for (int i = 0; i < 8; i++) lenbytes[i] = (uint8_t)(hlen >> (8 * i));
    fwriteCheck(lenbytes, 1, 8, fp, tmp.c_str());
    fwriteCheck(header.data(), 1, header.size(), fp, tmp.c_str());
    file_op_point();  // a kill here leaves a half-written .tmp, as a real crash could
    for (const auto& t : tensors) {
        size_t n = 1;
        for (auto d : t.shape) n *= (size_t)d;
        fwriteCheck(t.data, safetensors_dtype_size(t.dtype), n, fp, tmp.c_str());
    }
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, path);
}
