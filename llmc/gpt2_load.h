/*
GPT-2 weights on the host, shared by both trainers: the config, one fp32 block holding
every parameter in llm.c's layout ([out, in] matrices, each kind for all layers before the
next), loading from Hugging Face safetensors (F32/F16/BF16, with or without the
`transformer.` prefix) or llm.c's .bin checkpoint (v3 fp32, v5 bf16), and the residual
centring TransformerLens applies (SPEC §2). No weight gradients: GPT-2 is frozen.
*/
#pragma once
#include <stdint.h>
#include <string>
#include <vector>
#include "utils.h"
#include "json.h"
#include "safetensors.h"

struct GPT2Config {
    int max_seq_len = 0;  // maxT
    int vocab_size = 0;   // V
    int num_layers = 0;   // L
    int num_heads = 0;    // NH
    int channels = 0;     // C
};

// in this order in the block; wte is the centred copy for the embedding lookup,
// wte_unembed the LM head's copy: as loaded (TransformerLens builds W_U unprocessed) less its
// mean row, which moves every logit of a position by one constant (gpt2_shift_unembed)
#define NUM_PARAMETER_TENSORS 17
struct GPT2Weights {
    float* wte;         // (V, C) centred
    float* wte_unembed; // (V, C) as loaded, less the mean row over the vocabulary
    float* wpe;         // (maxT, C) centred
    float* ln1w;        // (L, C)
    float* ln1b;        // (L, C)
    float* qkvw;        // (L, 3C, C)
    float* qkvb;        // (L, 3C)
    float* attprojw;    // (L, C, C) centred over the output axis
    float* attprojb;    // (L, C) centred
    float* ln2w;        // (L, C)
    float* ln2b;        // (L, C)
    float* fcw;         // (L, 4C, C)
    float* fcb;         // (L, 4C)
    float* fcprojw;     // (L, C, 4C) centred over the output axis
    float* fcprojb;     // (L, C) centred
    float* lnfw;        // (C)
    float* lnfb;        // (C)
};

struct GPT2 {
    GPT2Config config;
    GPT2Weights params;
    size_t param_sizes[NUM_PARAMETER_TENSORS];
    size_t num_parameters = 0;
    std::vector<float> memory;     // every parameter, one block: freed with the model, so no exit path leaks it
    float* params_memory = nullptr;  // memory.data()
    std::string source;  // the file it came from
    std::vector<float> unembed_mean;  // (C) the mean row gpt2_shift_unembed took from wte_unembed; empty if not shifted
    GPT2() = default;
    GPT2(const GPT2&) = delete;  // params point into memory: a copy would point into the original's
    GPT2& operator=(const GPT2&) = delete;
};

inline void gpt2_param_sizes(const GPT2Config& c, size_t* s) {
    size_t V = c.vocab_size, C = c.channels, maxT = c.max_seq_len, L = c.num_layers;
    s[0] = V * C; s[1] = V * C; s[2] = maxT * C;
    s[3] = L * C; s[4] = L * C;
    s[5] = L * 3 * C * C; s[6] = L * 3 * C;
    s[7] = L * C * C; s[8] = L * C;
    s[9] = L * C; s[10] = L * C;
    s[11] = L * 4 * C * C; s[12] = L * 4 * C;
    s[13] = L * C * 4 * C; s[14] = L * C;
    s[15] = C; s[16] = C;
}

// The sizes a file claims, checked before anything is allocated: positive, n_head divides d_model,
// and small enough that every product below fits (GPT-2 XL has d_model 1600, 48 layers).
inline void gpt2_check_config(const GPT2Config& c, const std::string& path) {
    if (c.vocab_size < 1 || c.channels < 1 || c.max_seq_len < 1 || c.num_layers < 1 || c.num_heads < 1 ||
        c.channels % c.num_heads != 0 || c.channels > 65536 || c.num_layers > 4096 || c.vocab_size > (1 << 24) ||
        c.max_seq_len > (1 << 24))
        die("'%s': not a GPT-2 this engine can load (V %d, C %d, maxT %d, L %d, NH %d: each must be positive, NH must divide C, "
            "C <= 65536, L <= 4096, V and maxT <= 2^24)", path.c_str(), c.vocab_size, c.channels, c.max_seq_len, c.num_layers, c.num_heads);
}

inline void gpt2_allocate(GPT2* model) {
    gpt2_param_sizes(model->config, model->param_sizes);
    model->num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) model->num_parameters += model->param_sizes[i];
    model->memory.assign(model->num_parameters, 0.0f);
    model->params_memory = model->memory.data();
    float** ptrs[NUM_PARAMETER_TENSORS] = {
        &model->params.wte, &model->params.wte_unembed, &model->params.wpe, &model->params.ln1w, &model->params.ln1b,
        &model->params.qkvw, &model->params.qkvb, &model->params.attprojw, &model->params.attprojb, &model->params.ln2w,
        &model->params.ln2b, &model->params.fcw, &model->params.fcb, &model->params.fcprojw, &model->params.fcprojb,
        &model->params.lnfw, &model->params.lnfb};
    float* p = model->params_memory;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) { *ptrs[i] = p; p += model->param_sizes[i]; }
}

inline void gpt2_free(GPT2* model) {
    std::vector<float>().swap(model->memory);
    model->params_memory = nullptr;
}

// subtract the mean over the d_model axis from every weight that writes to the residual
// stream (SPEC §2); LayerNorm removes that mean anyway, so the clean logits are unchanged
inline void gpt2_centre_weights(GPT2* model) {
    const GPT2Config& cfg = model->config;
    int C = cfg.channels, L = cfg.num_layers;
    auto centre_rows = [](float* w, size_t rows, int C) {  // each row of length C
        for (size_t r = 0; r < rows; r++) {
            float* row = w + r * C;
            float mean = 0.0f;
            for (int i = 0; i < C; i++) mean += row[i];
            mean /= C;
            for (int i = 0; i < C; i++) row[i] -= mean;
        }
    };
    // [out=C, in=IC] matrix: centre each input column over the output axis
    auto centre_out_axis = [](float* w, int C, int IC) {
        for (int j = 0; j < IC; j++) {
            float mean = 0.0f;
            for (int i = 0; i < C; i++) mean += w[(size_t)i * IC + j];
            mean /= C;
            for (int i = 0; i < C; i++) w[(size_t)i * IC + j] -= mean;
        }
    };
    GPT2Weights& w = model->params;
    centre_rows(w.wte, cfg.vocab_size, C);
    centre_rows(w.wpe, cfg.max_seq_len, C);
    for (int l = 0; l < L; l++) {
        centre_out_axis(w.attprojw + (size_t)l * C * C, C, C);
        centre_rows(w.attprojb + (size_t)l * C, 1, C);
        centre_out_axis(w.fcprojw + (size_t)l * C * 4 * C, C, 4 * C);
        centre_rows(w.fcprojb + (size_t)l * C, 1, C);
    }
}

// Subtract the mean row over the vocabulary from the LM head's copy of wte. Each logit of a position
// then moves by the same constant (lnf . mean row), so softmax, KL, CE, argmax and the gradients
// are unchanged in exact arithmetic; but real GPT-2 small's logits sit around -60..-100, where
// bf16's spacing (0.25-0.5) would bias the KL upwards, and after the shift they sit near 0.
// The mean is taken in double, in row order: the same bits in both trainers.
inline void gpt2_shift_unembed(GPT2* model) {
    int V = model->config.vocab_size, C = model->config.channels;
    float* w = model->params.wte_unembed;
    std::vector<double> mean(C, 0.0);
    for (int v = 0; v < V; v++)
        for (int i = 0; i < C; i++) mean[i] += w[(size_t)v * C + i];
    for (int i = 0; i < C; i++) mean[i] /= V;
    for (int v = 0; v < V; v++)
        for (int i = 0; i < C; i++) w[(size_t)v * C + i] = (float)((double)w[(size_t)v * C + i] - mean[i]);
    model->unembed_mean.assign(mean.begin(), mean.end());  // the feature dump adds its effect back (logit effects)
}

// A NaN or Inf in the weights would only show as a NaN loss at the first step, after the run has
// started writing: each tensor is checked as it is read (one pass, ~0.1 s for GPT-2 small)
inline void gpt2_check_finite(const std::string& path, const std::string& name, const float* x, size_t n) {
    long long bad = first_non_finite(x, n);
    if (bad >= 0) die("'%s': tensor '%s' holds a non-finite value (NaN or Inf) at index %lld", path.c_str(), name.c_str(), bad);
}

// n_head from a config.json beside the weights, if there is one
inline int read_n_head_from_config(const std::string& weights_path, int C) {
    std::string dir = weights_path.substr(0, weights_path.find_last_of('/') == std::string::npos ? 0 : weights_path.find_last_of('/') + 1);
    std::string cfg_path = dir + "config.json";
    if (!file_exists(cfg_path)) return C % 64 == 0 ? C / 64 : 0;
    JsonValue root;
    if (!json_parse(read_text_file(cfg_path), root) || root.kind != JsonValue::OBJECT) die("'%s' is not valid JSON", cfg_path.c_str());
    const JsonValue* nh = root.get("n_head");
    if (!nh) nh = root.get("num_attention_heads");
    long long n = 0;
    if (!json_integer(nh, 1, 65536, &n)) die("'%s': n_head must be an integer in [1, 65536]", cfg_path.c_str());
    return (int)n;
}

// Hugging Face GPT2LMHeadModel / GPT2Model safetensors; Conv1D weights are [in, out]
inline void gpt2_load_hf_safetensors(GPT2* model, const std::string& path) {
    SafeTensors st;
    safetensors_open(&st, path);
    std::string prefix;
    if (safetensors_find(&st, "wte.weight")) prefix = "";
    else if (safetensors_find(&st, "transformer.wte.weight")) prefix = "transformer.";
    else die("'%s': missing tensor 'wte.weight' (nor 'transformer.wte.weight'): is this a GPT-2 checkpoint?", path.c_str());
    const StTensorInfo* wte = safetensors_find(&st, prefix + "wte.weight");
    const StTensorInfo* wpe = safetensors_find(&st, prefix + "wpe.weight");
    if (!wpe) die("'%s': missing tensor '%swpe.weight'", path.c_str(), prefix.c_str());
    if (wte->shape.size() != 2 || wpe->shape.size() != 2 || wte->shape[1] != wpe->shape[1])
        die("'%s': wte %s and wpe %s are not [V, C] and [maxT, C]", path.c_str(), shape_str(wte->shape).c_str(), shape_str(wpe->shape).c_str());
    if (wte->shape[0] > (1 << 24) || wte->shape[1] > 65536 || wpe->shape[0] > (1 << 24))
        die("'%s': wte %s and wpe %s are larger than any GPT-2", path.c_str(), shape_str(wte->shape).c_str(), shape_str(wpe->shape).c_str());
    GPT2Config& c = model->config;
    c.vocab_size = (int)wte->shape[0];
    c.channels = (int)wte->shape[1];
    c.max_seq_len = (int)wpe->shape[0];
    c.num_layers = 0;
    while (safetensors_find(&st, prefix + "h." + std::to_string(c.num_layers) + ".ln_1.weight")) c.num_layers++;
    if (c.num_layers == 0) die("'%s': no transformer blocks found (missing '%sh.0.ln_1.weight')", path.c_str(), prefix.c_str());
    if (c.channels < 1) die("'%s': d_model is 0 (wte is %s)", path.c_str(), shape_str(wte->shape).c_str());
    c.num_heads = read_n_head_from_config(path, c.channels);
    if (c.num_heads <= 0 || c.channels % c.num_heads != 0)
        die("'%s': cannot infer n_head for C=%d (put a config.json with n_head beside it)", path.c_str(), c.channels);
    gpt2_check_config(c, path);
    gpt2_allocate(model);
    model->source = path;
    int64_t V = c.vocab_size, C = c.channels, L = c.num_layers;
    GPT2Weights& w = model->params;
    auto read = [&](const std::string& name, const std::vector<int64_t>& shape, float* dst) {
        safetensors_read(&st, name, shape, dst);
        size_t n = 1;
        for (int64_t d : shape) n *= (size_t)d;
        gpt2_check_finite(path, name, dst, n);
    };
    read(prefix + "wte.weight", {V, C}, w.wte);
    read(prefix + "wpe.weight", {(int64_t)c.max_seq_len, C}, w.wpe);
    // Conv1D [in, out] -> our [out, in]
    auto read_transposed = [&](const std::string& name, int64_t in, int64_t out, float* dst) {
        std::vector<float> tmp = safetensors_read_vec(&st, name, {in, out});
        gpt2_check_finite(path, name, tmp.data(), tmp.size());
        for (int64_t i = 0; i < in; i++)
            for (int64_t o = 0; o < out; o++) dst[o * in + i] = tmp[i * out + o];
    };
    for (int64_t l = 0; l < L; l++) {
        std::string h = prefix + "h." + std::to_string(l) + ".";
        read(h + "ln_1.weight", {C}, w.ln1w + l * C);
        read(h + "ln_1.bias", {C}, w.ln1b + l * C);
        read_transposed(h + "attn.c_attn.weight", C, 3 * C, w.qkvw + l * 3 * C * C);
        read(h + "attn.c_attn.bias", {3 * C}, w.qkvb + l * 3 * C);
        read_transposed(h + "attn.c_proj.weight", C, C, w.attprojw + l * C * C);
        read(h + "attn.c_proj.bias", {C}, w.attprojb + l * C);
        read(h + "ln_2.weight", {C}, w.ln2w + l * C);
        read(h + "ln_2.bias", {C}, w.ln2b + l * C);
        read_transposed(h + "mlp.c_fc.weight", C, 4 * C, w.fcw + l * 4 * C * C);
        read(h + "mlp.c_fc.bias", {4 * C}, w.fcb + l * 4 * C);
        read_transposed(h + "mlp.c_proj.weight", 4 * C, C, w.fcprojw + l * C * 4 * C);
        read(h + "mlp.c_proj.bias", {C}, w.fcprojb + l * C);
    }
    read(prefix + "ln_f.weight", {C}, w.lnfw);
    read(prefix + "ln_f.bias", {C}, w.lnfb);
    memcpy(w.wte_unembed, w.wte, (size_t)V * C * sizeof(float));
}

// llm.c checkpoint: 256 int32 header, then every parameter kind for all layers
inline void gpt2_load_llmc_bin(GPT2* model, const std::string& path) {
    FILE* fp = fopenCheck(path.c_str(), "rb");
    int header[256];
    freadCheck(header, sizeof(int), 256, fp, path.c_str());
    if (header[0] != 20240326) die("'%s': bad magic %d in llm.c checkpoint (expected 20240326)", path.c_str(), header[0]);
    if (header[1] != 3 && header[1] != 5) die("'%s': unsupported llm.c checkpoint version %d (3 = fp32, 5 = bf16)", path.c_str(), header[1]);
    bool bf16 = header[1] == 5;
    GPT2Config& c = model->config;
    c.max_seq_len = header[2]; c.vocab_size = header[3]; c.num_layers = header[4]; c.num_heads = header[5]; c.channels = header[6];
    int Vp = header[7];
    if (Vp < c.vocab_size || Vp > (1 << 24))
        die("'%s': invalid llm.c header (V %d, padded V %d)", path.c_str(), c.vocab_size, Vp);
    gpt2_check_config(c, path);
    // sizes in the file: wte has Vp rows, there is no second copy of wte; checked against the
    // file's size before anything is allocated (the bounds above keep the sums from overflowing)
    size_t V = c.vocab_size, C = c.channels;
    size_t sizes[NUM_PARAMETER_TENSORS], file_sizes[NUM_PARAMETER_TENSORS - 1];
    gpt2_param_sizes(c, sizes);
    file_sizes[0] = (size_t)Vp * C;
    for (int i = 2; i < NUM_PARAMETER_TENSORS; i++) file_sizes[i - 1] = sizes[i];
    size_t total = 0;
    for (size_t s : file_sizes) total += s;
    long long expect = 1024 + (long long)total * (bf16 ? 2 : 4);
    long long have = file_size(path.c_str());
    if (have != expect) die("'%s': llm.c checkpoint is %lld bytes, expected %lld for its header: truncated or corrupt", path.c_str(), have, expect);
    gpt2_allocate(model);
    model->source = path;
    float* dst[NUM_PARAMETER_TENSORS - 1] = {model->params.wte, model->params.wpe, model->params.ln1w, model->params.ln1b,
        model->params.qkvw, model->params.qkvb, model->params.attprojw, model->params.attprojb, model->params.ln2w,
        model->params.ln2b, model->params.fcw, model->params.fcb, model->params.fcprojw, model->params.fcprojb,
        model->params.lnfw, model->params.lnfb};
    const char* names[NUM_PARAMETER_TENSORS - 1] = {"wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w",
                                                    "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"};  // llm.c's names
    std::vector<uint16_t> buf;
    std::vector<float> fbuf;
    for (int i = 0; i < NUM_PARAMETER_TENSORS - 1; i++) {
        size_t n = file_sizes[i];
        size_t keep = i == 0 ? V * C : n;  // the padded rows of wte are dropped: they never enter softmax
        if (bf16) {
            buf.resize(n);
            freadCheck(buf.data(), 2, n, fp, path.c_str());
            for (size_t j = 0; j < keep; j++) dst[i][j] = bf16_to_float(buf[j]);
        } else if (keep == n) {
            freadCheck(dst[i], 4, n, fp, path.c_str());
        } else {
            fbuf.resize(n);
            freadCheck(fbuf.data(), 4, n, fp, path.c_str());
            memcpy(dst[i], fbuf.data(), keep * sizeof(float));
        }
        gpt2_check_finite(path, names[i], dst[i], keep);
    }
    fclose(fp);
    memcpy(model->params.wte_unembed, model->params.wte, V * C * sizeof(float));
}

// PATH is a .bin (llm.c), a .safetensors file, or a directory holding model.safetensors;
// shift_unembed false keeps W_U exactly as loaded (tests measure what the shift changes)
inline void gpt2_load(GPT2* model, const std::string& path_in, bool shift_unembed = true) {
    std::string path = path_in;
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) path += "/model.safetensors";
    if (stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
        die("model file '%s' is not a regular file (pass --model the weights' file or the folder holding model.safetensors)", path.c_str());
    if (!file_exists(path))
        die("model file '%s' not found (run scripts/download_starter_pack.sh for GPT-2 small, or pass --model PATH)", path.c_str());
    FILE* fp = fopenCheck(path.c_str(), "rb");
    int magic = 0;
    size_t got = fread(&magic, 4, 1, fp);
    fclose(fp);
    if (got == 1 && magic == 20240326) gpt2_load_llmc_bin(model, path);
    else gpt2_load_hf_safetensors(model, path);
    gpt2_centre_weights(model);
    model->unembed_mean.clear();
    if (shift_unembed) gpt2_shift_unembed(model);
}
