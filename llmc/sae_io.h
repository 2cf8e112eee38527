/*
The SAE's files, shared by both trainers: the SAELens export (weights, cfg.json, sparsity) and
the --init-sae import (SPEC §8), and the training state that makes --resume bit-exact (raw
params, Adam m and v, step, data position, alive window). The SAE itself is in sae.h.
*/
#pragma once
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>
#include <string>
#include <vector>
#include "utils.h"
#include "json.h"
#include "safetensors.h"
#include "sae.h"
#include "sha256.h"
#include "train_config.h"

// ----------------------------------------------------------------------------
// SAELens export (SPEC §8): W_dec written normalised, so a plain forward reproduces ours

inline void sae_normalized_decoder(const SAE* sae, std::vector<float>& out) {
    int C = sae->C;
    out.resize((size_t)sae->D * C);
    for (int r = 0; r < sae->D; r++) {
        const float* row = sae->W_dec + (size_t)r * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += row[i] * row[i];
        float nrm = fmaxf(sqrtf(ss), 1e-12f);
        for (int i = 0; i < C; i++) out[(size_t)r * C + i] = row[i] / nrm;
    }
}

// metadata.model_name, decided once per run: "gpt2" if the weights are the starter pack's GPT-2
// small (openai-community/gpt2, so HookedTransformer.from_pretrained(model_name) gets the same
// model), else the file's stem, or its folder's name when the stem is "model" (model.safetensors
// says nothing). Only a file of exactly that size is hashed, so other models cost nothing.
#define GPT2_SMALL_BYTES 548105171LL
#define GPT2_SMALL_SHA256 "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"
inline std::string model_name_for_export(const std::string& path) {
    if (file_size(path.c_str()) == GPT2_SMALL_BYTES && sha256_file(path) == GPT2_SMALL_SHA256) return "gpt2";
    // the last two components, lexically (no symlinks followed: a Hugging Face cache links
    // model.safetensors to a blob named by its hash); a relative path is taken from the cwd
    char cwd[4096];
    std::string abs = path[0] == '/' ? path : std::string(getcwd(cwd, sizeof(cwd)) ? cwd : "") + "/" + path;
    std::vector<std::string> parts;
    for (size_t a = 0, b; a < abs.size(); a = b + 1) {
        b = abs.find('/', a);
        if (b == std::string::npos) b = abs.size();
        std::string part = abs.substr(a, b - a);
        if (part == ".." && !parts.empty()) parts.pop_back();
        else if (!part.empty() && part != "." && part != "..") parts.push_back(part);
    }
    std::string file = parts.empty() ? path : parts.back();
    std::string stem = file.substr(0, file.rfind('.'));
    if (stem == "model" && parts.size() >= 2) return parts[parts.size() - 2];
    return stem.empty() ? file : stem;
}

// SAELens's sparsity.safetensors: log10(firing frequency + 1e-10) per feature, as its trainer
// (and feature_dump_write) computes it; fire_count (D) over `tokens` eval tokens
inline std::vector<float> sae_log10_sparsity(const std::vector<long long>& fire_count, long long tokens) {
    std::vector<float> out(fire_count.size());
    for (size_t d = 0; d < fire_count.size(); d++)
        out[d] = (float)log10((tokens > 0 ? (double)fire_count[d] / (double)tokens : 0.0) + 1e-10);
    return out;
}

inline void sae_export(const SAE* sae, const std::string& dir, const TrainConfig& cfg, const std::string& model_name,
                       long long step, const std::vector<float>* sparsity = nullptr) {
    make_dir(dir);
    std::vector<float> W_dec_norm;
    sae_normalized_decoder(sae, W_dec_norm);
    std::vector<StWriteEntry> t = {
        {"W_enc", sae_tensor_shape(sae, 0), sae->W_enc}, {"b_enc", sae_tensor_shape(sae, 1), sae->b_enc},
        {"W_dec", sae_tensor_shape(sae, 2), W_dec_norm.data()}, {"b_dec", sae_tensor_shape(sae, 3), sae->b_dec}};
    safetensors_write(dir + "/sae_weights.safetensors", t, {{"format", "pt"}});
    if (sparsity) safetensors_write(dir + "/sparsity.safetensors", {{"sparsity", {sae->D}, sparsity->data()}}, {{"format", "pt"}});
    std::string tmp = dir + "/cfg.json.tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "w");
    fprintf(fp, "{\n");
    fprintf(fp, "  \"d_in\": %d,\n  \"d_sae\": %d,\n  \"dtype\": \"float32\",\n  \"device\": \"cpu\",\n", sae->C, sae->D);
    fprintf(fp, "  \"architecture\": \"standard\",\n  \"apply_b_dec_to_input\": false,\n  \"normalize_activations\": \"none\",\n");
    fprintf(fp, "  \"metadata\": {\n");
    fprintf(fp, "    \"sae_lens_version\": \"6.0.0\",\n    \"sae_lens_training_version\": \"6.0.0\",\n");
    fprintf(fp, "    \"model_name\": \"%s\",\n", json_escape(model_name).c_str());
    fprintf(fp, "    \"hook_name\": \"blocks.%d.hook_resid_pre\",\n    \"hook_layer\": %d,\n", cfg.layer, cfg.layer);
    fprintf(fp, "    \"context_size\": %d,\n    \"prepend_bos\": false,\n", cfg.seq_len);
    // what the engine does to GPT-2 (SPEC §2): writing weights centred, W_U as loaded, LayerNorm
    // and value biases not folded (folding them would change hook_resid_pre only by rounding)
    fprintf(fp, "    \"model_from_pretrained_kwargs\": {\"center_writing_weights\": true, \"center_unembed\": false, "
                "\"fold_ln\": false, \"fold_value_biases\": false}\n");
    fprintf(fp, "  },\n");
    fprintf(fp, "  \"training\": {\"engine\": \"sae.c\", \"mode\": \"%s\", \"sparsity_coeff\": %.9g, \"kl_coeff\": %.9g, "
                "\"mse_coeff\": %.9g, \"ds_coeff\": %.9g, \"lr\": %.9g, \"batch\": %d, \"seq_len\": %d, \"grad_accum\": %d, "
                "\"samples\": %lld, \"steps_done\": %lld, \"seed\": %llu, \"init_seed\": %lld}\n",
            mode_name(cfg.mode), cfg.sparsity_coeff, cfg.kl_coeff, cfg.mse_coeff, cfg.ds_coeff, cfg.lr, cfg.batch, cfg.seq_len,
            cfg.grad_accum, cfg.samples, step, cfg.seed, cfg.init_seed);
    fprintf(fp, "}\n");
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, dir + "/cfg.json");
}

// --init-sae DIR: shapes come from the tensors; cfg.json, if there, must agree
inline void sae_load(SAE* sae, const std::string& dir, int expect_C) {
    std::string path = dir + "/sae_weights.safetensors";
    SafeTensors st;
    safetensors_open(&st, path);
    const StTensorInfo* we = safetensors_find(&st, "W_enc");
    if (!we) die("'%s': missing tensor 'W_enc'", path.c_str());
    if (we->shape.size() != 2) die("'%s': W_enc has shape %s, expected [d_in, d_sae]", path.c_str(), shape_str(we->shape).c_str());
    if (we->shape[0] > 65536 || we->shape[1] > (1LL << 30))
        die("'%s': W_enc is %s, larger than any SAE this engine trains", path.c_str(), shape_str(we->shape).c_str());
    int C = (int)we->shape[0], D = (int)we->shape[1];
    if (D < 1) die("'%s': W_enc is %s: d_sae is 0", path.c_str(), shape_str(we->shape).c_str());
    if (C != expect_C) die("'%s': W_enc is [%d, %d] but the model's d_model is %d", path.c_str(), C, D, expect_C);
    sae_allocate(sae, C, D);
    float* dst[NUM_SAE_TENSORS] = {sae->W_enc, sae->b_enc, sae->W_dec, sae->b_dec};
    for (int i = 0; i < NUM_SAE_TENSORS; i++) {
        safetensors_read(&st, SAE_TENSOR_NAMES[i], sae_tensor_shape(sae, i), dst[i]);
        long long bad = first_non_finite(dst[i], sae->sizes[i]);
        if (bad >= 0) die("'%s': %s holds a non-finite value (NaN or Inf) at index %lld", path.c_str(), SAE_TENSOR_NAMES[i], bad);
    }
    std::string cfg_path = dir + "/cfg.json";
    if (file_exists(cfg_path)) {
        JsonValue root;
        if (!json_parse(read_text_file(cfg_path), root) || root.kind != JsonValue::OBJECT) die("'%s' is not valid JSON", cfg_path.c_str());
        long long d_in = C, d_sae = D;  // absent: nothing to compare
        if ((root.get("d_in") && !json_integer(root.get("d_in"), 1, 1LL << 30, &d_in)) ||
            (root.get("d_sae") && !json_integer(root.get("d_sae"), 1, 1LL << 30, &d_sae)))
            die("'%s': d_in and d_sae must be integers in [1, 2^30]", cfg_path.c_str());
        if (d_in != C || d_sae != D) die("'%s' says d_in/d_sae differ from the tensors' [%d, %d]", cfg_path.c_str(), C, D);
    }
}

// ----------------------------------------------------------------------------
// training state: everything --resume needs to continue bit-exactly

struct TrainState {
    long long step = 0;            // updates done
    long long rows_consumed = 0;   // training data position
    long long alive_tokens = 0;    // tokens in the current alive window
    long long last_alive = -1;     // features alive in the last completed window (the eval lines log it)
    long long last_eval_samples = 0;  // training rows at the last periodic eval: the eval cadence
    long long sparse_from = -1;    // --sae-kernels auto (GPU): the first update (0-based) run sparse, -1 while dense
    std::vector<float> alive_fired;  // (D) 1 if the feature fired in the current window
    std::string inputs;            // fingerprint of the model and training data (run_begin sets it)
};

// What a resumed run must share with the saved one, as text compared exactly: everything that
// changes the updates or the log. --samples, --max-steps, --save-every, the eval and dump flags,
// --out, --log and --device may change (README says why).
inline std::vector<std::pair<std::string, std::string>> resume_settings(const TrainConfig& cfg) {
    auto num = [](double x) { char b[64]; snprintf(b, sizeof(b), "%.17g", x); return std::string(b); };
    return {{"layer", std::to_string(cfg.layer)}, {"mode", mode_name(cfg.mode)}, {"batch", std::to_string(cfg.batch)},
            {"seq_len", std::to_string(cfg.seq_len)}, {"grad_accum", std::to_string(cfg.grad_accum)},
            {"seed", std::to_string(cfg.seed)}, {"shuffle", std::to_string(cfg.shuffle)}, {"lr", num(cfg.lr)},
            {"warmup_samples", std::to_string(cfg.warmup_samples)}, {"min_lr_factor", num(cfg.min_lr_factor)},
            {"max_grad_norm", num(cfg.max_grad_norm)}, {"weight_decay", num(cfg.weight_decay)},
            {"sparsity_coeff", num(cfg.sparsity_coeff)}, {"kl_coeff", num(cfg.kl_coeff)}, {"mse_coeff", num(cfg.mse_coeff)},
            {"ds_coeff", num(cfg.ds_coeff)}, {"alive_window", std::to_string(cfg.alive_window)}, {"precision", cfg.precision}};
}

// The model and the training data as a short fingerprint: each file's size and the SHA-256 of
// its first MiB, hashed together. Cheap on a 548 MB model, and a different file shows.
inline std::string inputs_fingerprint(const std::vector<std::string>& paths) {
    std::string all;
    for (const std::string& p : paths) {
        FILE* fp = fopenCheck(p.c_str(), "rb");
        std::string head(1 << 20, '\0');
        head.resize(fread(&head[0], 1, head.size(), fp));
        fclose(fp);
        all += std::to_string(file_size(p.c_str())) + ":" + sha256_hex(head) + "\n";
    }
    return sha256_hex(all).substr(0, 16);
}

inline void train_state_save(const std::string& dir, const SAE* sae, const float* m, const float* v, const TrainState& ts,
                             const TrainConfig& cfg) {
    make_dir(dir);
    std::vector<StWriteEntry> t;
    const float* p = sae->memory.data();
    size_t off = 0;
    for (int i = 0; i < NUM_SAE_TENSORS; i++) {
        t.push_back({SAE_TENSOR_NAMES[i], sae_tensor_shape(sae, i), p + off});
        t.push_back({std::string("adam_m.") + SAE_TENSOR_NAMES[i], sae_tensor_shape(sae, i), m + off});
        t.push_back({std::string("adam_v.") + SAE_TENSOR_NAMES[i], sae_tensor_shape(sae, i), v + off});
        off += sae->sizes[i];
    }
    t.push_back({"alive_fired", {sae->D}, ts.alive_fired.data()});
    std::vector<std::pair<std::string, std::string>> meta;
    for (const StWriteEntry& e : t) {  // one checksum per tensor, verified by train_state_load
        size_t n = 1;
        for (int64_t d : e.shape) n *= (size_t)d;
        meta.push_back({"checksum." + e.name, std::to_string(checksum64(e.data, n * sizeof(float)))});
    }
    std::vector<std::pair<std::string, std::string>> fields = {
        {"step", std::to_string(ts.step)}, {"rows_consumed", std::to_string(ts.rows_consumed)},
        {"alive_tokens", std::to_string(ts.alive_tokens)}, {"last_alive", std::to_string(ts.last_alive)},
        {"last_eval_samples", std::to_string(ts.last_eval_samples)}, {"inputs", ts.inputs}};
    for (const auto& kv : fields) meta.push_back(kv);
    for (const auto& kv : resume_settings(cfg)) meta.push_back(kv);
    meta.push_back({"attention", cfg.attention});  // not in resume_settings: states saved before it have none
    meta.push_back({"fused_backward", cfg.fused_backward});  // the same
    meta.push_back({"sae_kernels", cfg.sae_kernels});  // the same
    meta.push_back({"sparse_from", std::to_string(ts.sparse_from)});  // the same
    safetensors_write(dir + "/train_state.safetensors", t, meta);
}

// restores into an SAE already allocated at the right shape; checks the run is the same kind
inline void train_state_load(const std::string& dir, SAE* sae, float* m, float* v, TrainState* ts, const TrainConfig& cfg) {
    std::string path = dir + "/train_state.safetensors";
    if (!file_exists(path)) die("--resume %s: no training state there (%s is written by --save-every and at the end of a run)", dir.c_str(), path.c_str());
    SafeTensors st;
    safetensors_open(&st, path);
    auto meta = [&](const char* key) -> std::string {
        for (const auto& kv : st.metadata) if (kv.first == key) return kv.second;
        die("'%s': missing metadata '%s'", path.c_str(), key);
    };
    // a whole decimal integer in [lo, hi], or one line naming the field: no "4junk", no overflow
    auto meta_int = [&](const char* key, long long lo, long long hi) {
        std::string text = meta(key);
        char* end = nullptr;
        errno = 0;
        long long x = strtoll(text.c_str(), &end, 10);
        if (text.empty() || errno || *end != '\0' || x < lo || x > hi)
            die("'%s': metadata '%s' is '%s', not an integer in [%lld, %lld]", path.c_str(), key, text.c_str(), lo, hi);
        return x;
    };
    const StTensorInfo* we = safetensors_find(&st, "W_enc");
    if (!we || we->shape.size() != 2 || we->shape[0] != sae->C || we->shape[1] != sae->D)
        die("'%s': the saved SAE is not [%d, %d] (check --dict-size / --dict-ratio and --model)", path.c_str(), sae->C, sae->D);
    for (const auto& kv : resume_settings(cfg))
        if (meta(kv.first.c_str()) != kv.second)
            die("'%s' was saved with %s %s, this run has %s: a resumed run keeps the saved settings (README, --resume)", path.c_str(),
                kv.first.c_str(), meta(kv.first.c_str()).c_str(), kv.second.c_str());
    std::string attention = "materialized", fused_backward = "off", sae_kernels = "dense";  // a state saved before the flags existed
    bool has_sparse_from = false;  // the same: it ran dense
    for (const auto& kv : st.metadata) {
        if (kv.first == "attention") attention = kv.second;
        if (kv.first == "fused_backward") fused_backward = kv.second;
        if (kv.first == "sae_kernels") sae_kernels = kv.second;
        if (kv.first == "sparse_from") has_sparse_from = true;
    }
    if (sae_kernels != cfg.sae_kernels)  // the sparse kernels sum in another order
        die("'%s' was saved with --sae-kernels %s, this run has %s: a resumed run keeps the saved settings (README, --resume)", path.c_str(),
            sae_kernels.c_str(), cfg.sae_kernels.c_str());
    if (fused_backward != cfg.fused_backward)  // the DGELU epilogue rounds once where the kernel rounds twice
        die("'%s' was saved with --fused-backward %s, this run has %s: a resumed run keeps the saved settings (README, --resume)", path.c_str(),
            fused_backward.c_str(), cfg.fused_backward.c_str());
    if (attention != cfg.attention)  // flash and materialized attention round differently in bf16
        die("'%s' was saved with --attention %s, this run has %s: a resumed run keeps the saved settings (README, --resume)", path.c_str(),
            attention.c_str(), cfg.attention.c_str());
    if (!cfg.eval_only && meta("inputs") != ts->inputs)
        die("'%s' was saved from another model or training data (fingerprint %s, now %s): resume with the same --model and --train",
            path.c_str(), meta("inputs").c_str(), ts->inputs.c_str());
    size_t off = 0;
    for (int i = 0; i < NUM_SAE_TENSORS; i++) {
        auto shape = sae_tensor_shape(sae, i);
        safetensors_read(&st, SAE_TENSOR_NAMES[i], shape, sae->memory.data() + off);
        safetensors_read(&st, std::string("adam_m.") + SAE_TENSOR_NAMES[i], shape, m + off);
        safetensors_read(&st, std::string("adam_v.") + SAE_TENSOR_NAMES[i], shape, v + off);
        off += sae->sizes[i];
    }
    ts->alive_fired.assign(sae->D, 0.0f);
    safetensors_read(&st, "alive_fired", {sae->D}, ts->alive_fired.data());
    auto verify = [&](const std::string& name, const float* data, size_t n) {
        std::string want = meta(("checksum." + name).c_str());
        if (want != std::to_string(checksum64(data, n * sizeof(float))))
            die("'%s': tensor '%s' does not match its checksum: the file is corrupt", path.c_str(), name.c_str());
    };
    off = 0;
    for (int i = 0; i < NUM_SAE_TENSORS; i++) {
        verify(SAE_TENSOR_NAMES[i], sae->memory.data() + off, sae->sizes[i]);
        verify(std::string("adam_m.") + SAE_TENSOR_NAMES[i], m + off, sae->sizes[i]);
        verify(std::string("adam_v.") + SAE_TENSOR_NAMES[i], v + off, sae->sizes[i]);
        off += sae->sizes[i];
    }
    verify("alive_fired", ts->alive_fired.data(), sae->D);
    const float* blocks[4] = {sae->memory.data(), m, v, ts->alive_fired.data()};
    const char* names[4] = {"the SAE parameters", "Adam's m", "Adam's v", "alive_fired"};
    size_t sizes[4] = {sae->num_parameters, sae->num_parameters, sae->num_parameters, (size_t)sae->D};
    for (int i = 0; i < 4; i++)
        if (first_non_finite(blocks[i], sizes[i]) >= 0) die("'%s': %s hold a non-finite value (NaN or Inf)", path.c_str(), names[i]);
    const long long BIG = 1LL << 50;
    ts->step = meta_int("step", 0, BIG);
    ts->rows_consumed = meta_int("rows_consumed", 0, BIG);
    ts->alive_tokens = meta_int("alive_tokens", 0, BIG);
    ts->last_alive = meta_int("last_alive", -1, sae->D);
    ts->last_eval_samples = meta_int("last_eval_samples", 0, BIG);
    ts->sparse_from = has_sparse_from ? meta_int("sparse_from", -1, ts->step) : -1;
    if (ts->sparse_from >= 0 && cfg.sae_kernels != "auto")
        die("'%s': sparse_from %lld is set, but the state was saved with --sae-kernels %s, not auto", path.c_str(), ts->sparse_from,
            cfg.sae_kernels.c_str());
    // the fields must agree: every update consumes batch x grad_accum rows
    if (ts->rows_consumed != ts->step * cfg.batch * cfg.grad_accum)
        die("'%s': rows_consumed %lld does not match step %lld x batch %d x grad_accum %d", path.c_str(), ts->rows_consumed, ts->step,
            cfg.batch, cfg.grad_accum);
    if (ts->last_eval_samples > ts->rows_consumed)
        die("'%s': last_eval_samples %lld is past rows_consumed %lld", path.c_str(), ts->last_eval_samples, ts->rows_consumed);
    if (ts->alive_tokens > ts->step * cfg.batch * cfg.seq_len * cfg.grad_accum)
        die("'%s': alive_tokens %lld is more than the %lld tokens of %lld updates", path.c_str(), ts->alive_tokens,
            ts->step * cfg.batch * cfg.seq_len * cfg.grad_accum, ts->step);
}
