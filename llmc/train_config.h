/*
The command line shared by both trainers: every flag, its default (the reference library's
values per mode, SPEC §1 and §5), range checks that name the flag, and the config printout.
A coefficient the mode does not use is accepted and ignored.
*/
#pragma once
#include <ctype.h>
#include <math.h>
#include <string>
#include <vector>
#include "utils.h"

enum SaeMode { MODE_LOCAL = 0, MODE_E2E = 1, MODE_E2E_DS = 2 };
inline const char* mode_name(int m) { return m == MODE_LOCAL ? "local" : m == MODE_E2E ? "e2e" : "e2e+ds"; }

struct TrainConfig {
    std::string model = "data/gpt2-small/model.safetensors";
    std::string train = "data/openwebtext/owt_train_*.bin";
    std::string val = "data/openwebtext/owt_val_*.bin";
    bool val_given = false;
    int layer = 6;
    int mode = MODE_E2E;
    double dict_ratio = 60.0;
    int dict_size = 0;            // overrides dict_ratio when > 0
    double sparsity_coeff = NAN;  // NAN = the mode's default
    double kl_coeff = NAN;
    double mse_coeff = NAN;
    double ds_coeff = NAN;
    int batch = 8;
    int seq_len = 1024;
    int grad_accum = 2;
    double lr = 5e-4;
    long long warmup_samples = 20000;
    double min_lr_factor = 0.1;
    double max_grad_norm = 10.0;
    double weight_decay = 0.0;
    long long samples = 400000;
    long long max_steps = -1;     // stop after this many updates without changing the schedule
    unsigned long long seed = 0;  // row shuffling, and the SAE init unless --init-seed
    long long init_seed = -1;     // the SAE init; -1 = --seed
    int shuffle = 1;
    std::string init_sae;
    std::string out = "out";
    long long save_every = 0;     // updates; 0 = only at the end
    std::string resume;
    std::string log;              // default OUT/log.jsonl
    long long eval_every = 40000; // samples; 0 = only at the start and the end
    int eval_samples = 500;
    long long alive_window = 500000;  // tokens
    std::string precision = "fp32";
    std::string attention = "materialized";  // GPU: or flash (llmc/attention.cuh)
    std::string fused_backward = "off";      // GPU: or on (one-pass KL and SAE backward, bf16's DGELU epilogue)
    std::string cuda_graph = "off";          // GPU: or on (each micro-batch one CUDA graph; the same bits)
    std::string sae_kernels = "dense";       // GPU: sparse (llmc/sae_sparse.cuh: the SAE's matmuls but the encoder's, over c > 0) or auto
    int device = 0;
    bool eval_only = false;
    bool overwrite = false;       // a fresh run may replace a run already in --out
    std::string dump_features;    // folder for the per-feature frequency and top activations
    long long dump_tokens = 100000;
    int dump_topk = 10;
    std::string sweep;            // --sweep FILE: one SAE per JSON line (llmc/sweep.h)
    std::string name;             // this SAE's name in a sweep; empty for a single run
    int sweep_line = 0;           // its line in the sweep file
    std::vector<std::string> given;  // flags named on the command line: presets never override them
};

inline void print_usage(const char* prog, bool gpu) {
    printf("usage: %s [flags]   (trains an SAE on a frozen GPT-2; see README.md)\n", prog);
    printf("  --model PATH            GPT-2 weights: HF model.safetensors, a folder holding it, or llm.c .bin [data/gpt2-small/model.safetensors]\n");
    printf("  --train GLOB            training token shards [data/openwebtext/owt_train_*.bin]\n");
    printf("  --val GLOB              eval token shards [data/openwebtext/owt_val_*.bin]\n");
    printf("  --layer L               SAE at blocks.L.hook_resid_pre [6]\n");
    printf("  --mode M                local | e2e | e2e+ds [e2e]\n");
    printf("  --dict-ratio R          d_sae = R * d_model [60]\n");
    printf("  --dict-size N           d_sae = N (overrides --dict-ratio)\n");
    printf("  --sparsity-coeff X      lambda on the L1 term [local 6, e2e 1.5, e2e+ds 1.5]\n");
    printf("  --kl-coeff X            KL weight, e2e and e2e+ds [e2e 1, e2e+ds 0.5]\n");
    printf("  --mse-coeff X           MSE weight, local only [1]\n");
    printf("  --ds-coeff X            downstream MSE weight, e2e+ds only [2.5]\n");
    printf("  --batch B               micro-batch rows [8]\n");
    printf("  --seq-len T             tokens per row [1024]\n");
    printf("  --grad-accum A          micro-batches per update [2]\n");
    printf("  --lr X                  peak learning rate [5e-4]\n");
    printf("  --warmup-samples N      linear warmup length in rows [20000]\n");
    printf("  --min-lr-factor X       cosine floor as a fraction of lr [0.1]\n");
    printf("  --max-grad-norm X       global gradient-norm clip [10]\n");
    printf("  --weight-decay X        decoupled (AdamW) weight decay [0]\n");
    printf("  --samples N             schedule length in rows [400000]\n");
    printf("  --max-steps N           stop after N updates, schedule unchanged [no limit]\n");
    printf("  --seed N                shuffling seed, and SAE init seed unless --init-seed [0]\n");
    printf("  --init-seed N           SAE init seed [--seed]\n");
    printf("  --shuffle 0|1           shuffle training rows per epoch [1]\n");
    printf("  --init-sae DIR          start from a SAELens-layout SAE folder\n");
    printf("  --out DIR               SAE export and training state [out]\n");
    printf("  --save-every N          also save every N updates [0 = at the end only]\n");
    printf("  --resume DIR            continue bit-exactly from DIR/train_state.safetensors\n");
    printf("  --overwrite             start over in an --out that already holds a run (its files are replaced)\n");
    printf("  --log FILE              JSON-lines log [OUT/log.jsonl]\n");
    printf("  --eval-every N          eval every N training rows [40000; 0 = start and end only]\n");
    printf("  --eval-samples N        eval rows from --val [500]\n");
    printf("  --alive-window N        tokens per training alive window [500000]\n");
    printf("  --eval-only             with --init-sae: evaluate and exit\n");
    printf("  --dump-features DIR     after training (or --eval-only): per feature frequency, top and band examples, histogram, logit effects, ablation\n");
    printf("  --dump-tokens N         val tokens streamed for --dump-features [100000]\n");
    printf("  --dump-topk K           top activations kept per feature [10]\n");
    printf("  --sweep FILE            many SAEs in one run: one JSON object per line (README, Sweeps); each writes OUT/NAME\n");
    if (gpu) {
        printf("  --precision P           bf16 | fp32 [bf16]\n");
        printf("  --attention A           materialized | flash [materialized until flash has passed on a GPU]; flash: bf16, head size 64\n");
        printf("  --fused-backward F      off | on [off until it has passed on a GPU]; on: the KL in one read of the logits (sm_90),\n");
        printf("                          the SAE's backward in one pass over its activations, and in bf16 the MLP's GELU backward\n");
        printf("                          in cuBLASLt's DGELU epilogue\n");
        printf("  --cuda-graph G          off | on [off until measured faster on a GPU]; on: each micro-batch's kernels are\n");
        printf("                          captured once as a CUDA graph and replayed (the same bits; no phase table)\n");
        printf("  --sae-kernels K         dense | sparse | auto [dense until sparse has passed on a GPU]; sparse: the decoder and\n");
        printf("                          the backward run over the entries with c > 0 only (fast at low L0, slow at high L0);\n");
        printf("                          auto: dense until an update's L0 is at most d_sae/128, sparse from the next one on\n");
        printf("  --device N              CUDA device [0]\n");
    } else {
        printf("  --precision fp32        accepted so command lines carry over to the GPU trainer\n");
        printf("  --attention materialized  accepted so command lines carry over to the GPU trainer\n");
        printf("  --fused-backward off    accepted so command lines carry over to the GPU trainer\n");
        printf("  --cuda-graph off        accepted so command lines carry over to the GPU trainer\n");
        printf("  --sae-kernels dense     accepted so command lines carry over to the GPU trainer\n");
    }
}

inline long long parse_int_flag(const char* flag, const char* s, long long lo, long long hi) {
    char* end = nullptr;
    errno = 0;
    long long v = strtoll(s, &end, 10);  // it skips leading spaces: those are refused as trailing ones are
    if (errno || end == s || *end != '\0' || isspace((unsigned char)s[0])) die("%s expects an integer, got '%s'", flag, s);
    if (v < lo || v > hi) die("%s %lld is out of range [%lld, %lld]", flag, v, lo, hi);
    return v;
}

inline double parse_float_flag(const char* flag, const char* s, double lo, double hi) {
    char* end = nullptr;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || isspace((unsigned char)s[0]) || !isfinite(v)) die("%s expects a finite number, got '%s'", flag, s);
    if (v < lo || v > hi) die("%s %g is out of range [%g, %g]", flag, v, lo, hi);
    return v;
}

// sets one flag from its command-line value; a flag is range-checked wherever it comes from
inline void set_flag(TrainConfig& c, const std::string& f, const char* v, bool gpu) {
    const char* fl = f.c_str();
    const long long BIG = 1LL << 50;
    const char* path_flags[] = {"--model", "--train", "--val", "--init-sae", "--out", "--resume", "--log", "--dump-features", "--sweep"};
    for (const char* pf : path_flags)  // an empty --out would put the run in the root folder
        if (f == pf && !*v) die("%s needs a path, got an empty string", fl);
    if (f == "--model") c.model = v;
    else if (f == "--train") c.train = v;
    else if (f == "--val") { c.val = v; c.val_given = true; }
    else if (f == "--layer") c.layer = (int)parse_int_flag(fl, v, 0, 1000);
    else if (f == "--mode") {
        std::string m = v;
        if (m == "local") c.mode = MODE_LOCAL;
        else if (m == "e2e") c.mode = MODE_E2E;
        else if (m == "e2e+ds" || m == "e2e_ds") c.mode = MODE_E2E_DS;
        else die("--mode must be local, e2e or e2e+ds, got '%s'", v);
    }
    else if (f == "--dict-ratio") c.dict_ratio = parse_float_flag(fl, v, 1e-6, 1e6);
    else if (f == "--dict-size") c.dict_size = (int)parse_int_flag(fl, v, 1, 1 << 30);
    else if (f == "--sparsity-coeff") c.sparsity_coeff = parse_float_flag(fl, v, 0, 1e9);
    else if (f == "--kl-coeff") c.kl_coeff = parse_float_flag(fl, v, 0, 1e9);
    else if (f == "--mse-coeff") c.mse_coeff = parse_float_flag(fl, v, 0, 1e9);
    else if (f == "--ds-coeff") c.ds_coeff = parse_float_flag(fl, v, 0, 1e9);
    else if (f == "--batch") c.batch = (int)parse_int_flag(fl, v, 1, 1 << 20);
    else if (f == "--seq-len") {  // the eval's CE predicts each row's next token: a row of 1 has none
        c.seq_len = (int)parse_int_flag(fl, v, 1, 1 << 20);
        if (c.seq_len < 2) die("--seq-len %d: rows need at least 2 tokens (the eval's CE predicts each next token)", c.seq_len);
    }
    else if (f == "--grad-accum") c.grad_accum = (int)parse_int_flag(fl, v, 1, 1 << 20);
    else if (f == "--lr") {  // 0 would train nothing
        c.lr = parse_float_flag(fl, v, 0, 10);
        if (c.lr == 0) die("--lr must be greater than 0, got '%s'", v);
    }
    else if (f == "--warmup-samples") c.warmup_samples = parse_int_flag(fl, v, 0, BIG);
    else if (f == "--min-lr-factor") c.min_lr_factor = parse_float_flag(fl, v, 0, 1);
    else if (f == "--max-grad-norm") c.max_grad_norm = parse_float_flag(fl, v, 1e-12, 1e12);
    else if (f == "--weight-decay") c.weight_decay = parse_float_flag(fl, v, 0, 1e3);
    else if (f == "--samples") c.samples = parse_int_flag(fl, v, 1, BIG);
    else if (f == "--max-steps") c.max_steps = parse_int_flag(fl, v, 0, BIG);
    else if (f == "--seed") c.seed = (unsigned long long)parse_int_flag(fl, v, 0, BIG);
    else if (f == "--init-seed") c.init_seed = parse_int_flag(fl, v, 0, BIG);
    else if (f == "--shuffle") c.shuffle = (int)parse_int_flag(fl, v, 0, 1);
    else if (f == "--init-sae") c.init_sae = v;
    else if (f == "--out") c.out = v;
    else if (f == "--save-every") c.save_every = parse_int_flag(fl, v, 0, BIG);
    else if (f == "--resume") c.resume = v;
    else if (f == "--log") c.log = v;
    else if (f == "--eval-every") c.eval_every = parse_int_flag(fl, v, 0, BIG);
    else if (f == "--eval-samples") c.eval_samples = (int)parse_int_flag(fl, v, 0, 1 << 24);
    else if (f == "--alive-window") c.alive_window = parse_int_flag(fl, v, 1, BIG);
    else if (f == "--dump-features") c.dump_features = v;
    else if (f == "--dump-tokens") c.dump_tokens = parse_int_flag(fl, v, 1, BIG);
    else if (f == "--dump-topk") c.dump_topk = (int)parse_int_flag(fl, v, 1, 32);
    else if (f == "--sweep") c.sweep = v;
    else if (f == "--precision") {
        c.precision = v;
        if (gpu ? (c.precision != "fp32" && c.precision != "bf16") : c.precision != "fp32")
            die("--precision must be %s, got '%s'", gpu ? "bf16 or fp32" : "fp32 (the CPU trainer is fp32 only)", v);
    }
    else if (f == "--attention") {
        c.attention = v;
        if (gpu ? (c.attention != "materialized" && c.attention != "flash") : c.attention != "materialized")
            die("--attention must be %s, got '%s'", gpu ? "materialized or flash" : "materialized (the CPU trainer has no flash attention)", v);
    }
    else if (f == "--fused-backward") {
        c.fused_backward = v;
        if (gpu ? (c.fused_backward != "off" && c.fused_backward != "on") : c.fused_backward != "off")
            die("--fused-backward must be %s, got '%s'", gpu ? "off or on" : "off (the CPU trainer is the unfused reference)", v);
    }
    else if (f == "--cuda-graph") {
        c.cuda_graph = v;
        if (gpu ? (c.cuda_graph != "off" && c.cuda_graph != "on") : c.cuda_graph != "off")
            die("--cuda-graph must be %s, got '%s'", gpu ? "off or on" : "off (the CPU trainer launches no kernels)", v);
    }
    else if (f == "--sae-kernels") {
        c.sae_kernels = v;
        if (gpu ? (c.sae_kernels != "dense" && c.sae_kernels != "sparse" && c.sae_kernels != "auto") : c.sae_kernels != "dense")
            die("--sae-kernels must be %s, got '%s'", gpu ? "dense, sparse or auto" : "dense (the CPU trainer is the dense reference)", v);
    }
    else if (f == "--device") {
        if (!gpu) die("--device is for the GPU trainer");
        c.device = (int)parse_int_flag(fl, v, 0, 64);
    }
    else die("unknown flag '%s' (see --help)", fl);
}

// the flags as given: a coefficient not given stays NAN (finish_config fills the mode's default)
inline TrainConfig parse_flags(int argc, char** argv, bool gpu) {
    TrainConfig c;
    if (gpu) c.precision = "bf16";
    for (int i = 1; i < argc; i++) {
        std::string f = argv[i];
        if (f == "--help" || f == "-h") { print_usage(argv[0], gpu); exit(0); }
        if (f == "--eval-only") { c.eval_only = true; continue; }
        if (f == "--overwrite") { c.overwrite = true; continue; }
        if (f.rfind("--", 0) != 0) die("unexpected argument '%s' (see --help)", f.c_str());
        if (i + 1 >= argc) die("%s needs a value (see --help)", f.c_str());
        set_flag(c, f, argv[++i], gpu);
        c.given.push_back(f);
    }
    return c;
}

// what the flags leave to the mode and to --out; one SAE's config is complete after this
inline TrainConfig finish_config(TrainConfig c) {
    // the library's defaults per mode (SPEC §1)
    if (isnan(c.sparsity_coeff)) c.sparsity_coeff = c.mode == MODE_LOCAL ? 6.0 : 1.5;
    if (isnan(c.kl_coeff)) c.kl_coeff = c.mode == MODE_E2E_DS ? 0.5 : 1.0;
    if (isnan(c.mse_coeff)) c.mse_coeff = 1.0;
    if (isnan(c.ds_coeff)) c.ds_coeff = 2.5;
    if (c.log.empty()) c.log = c.out + "/log.jsonl";
    if (c.init_seed < 0) c.init_seed = (long long)c.seed;
    if (c.eval_only && c.init_sae.empty() && c.resume.empty()) die("--eval-only needs --init-sae DIR (the SAE to evaluate)");
    return c;
}

inline TrainConfig parse_args(int argc, char** argv, bool gpu) { return finish_config(parse_flags(argc, argv, gpu)); }

// A fresh clone has no GPT-2 small (scripts/download_starter_pack.sh fetches it). Then, when --model
// is not given, both trainers train the bundled demo model instead, so the first run works offline;
// these presets fill only the flags the user did not give. Sized so the CPU trainer finishes in
// under 5 minutes on 2 cores (README has the measured time and numbers).
#define DEMO_MODEL_DIR "models/tinyshakespeare-gpt2-4L128"
inline bool apply_demo_presets(TrainConfig& c, bool gpu) {
    auto given = [&](const char* f) { for (auto& g : c.given) if (g == f) return true; return false; };
    if (given("--model") || file_exists(c.model) || !file_exists(DEMO_MODEL_DIR "/model.safetensors")) return false;
    const char* presets[][2] = {
        {"--model", DEMO_MODEL_DIR "/model.safetensors"},
        {"--train", DEMO_MODEL_DIR "/tinyshakespeare_train.bin"},
        {"--val", DEMO_MODEL_DIR "/tinyshakespeare_val.bin"},
        {"--layer", "2"}, {"--dict-size", "1024"},
        {"--batch", "4"}, {"--seq-len", "64"}, {"--grad-accum", "2"},
        {"--samples", "2400"}, {"--warmup-samples", "80"},
        {"--eval-every", "800"}, {"--eval-samples", "16"}, {"--alive-window", "50000"},
    };
    for (auto& p : presets)  // --dict-ratio given: the preset --dict-size would override it
        if (!given(p[0]) && !(std::string(p[0]) == "--dict-size" && given("--dict-ratio"))) set_flag(c, p[0], p[1], gpu);
    printf("no --model and no %s: training the bundled demo model %s (GPT-2 vocabulary, 4 layers, d 128) at layer %d; "
           "for the paper's run on GPT-2 small, fetch it with: bash scripts/download_starter_pack.sh\n",
           TrainConfig().model.c_str(), DEMO_MODEL_DIR, c.layer);
    return true;
}

// checks that need the model: layer range, sequence length
inline void check_config_against_model(const TrainConfig& c, int n_layer, int max_seq_len) {
    if (c.layer >= n_layer) die("--layer %d is out of range: the model has %d layers (0..%d)", c.layer, n_layer, n_layer - 1);
    if (c.mode == MODE_E2E_DS && c.layer > n_layer - 2)
        die("--layer %d: e2e+ds needs a downstream layer, so L <= %d for this %d-layer model", c.layer, n_layer - 2, n_layer);
    if (c.seq_len > max_seq_len) die("--seq-len %d exceeds the model's context of %d", c.seq_len, max_seq_len);
}

// d_sae from --dict-size, or --dict-ratio x d_model rounded; 1 <= d_sae <= 2^30 (the bound --dict-size
// and --init-sae have), checked where C is known: check_config_against_model
inline int config_d_sae(const TrainConfig& c, int C) {
    if (c.dict_size > 0) return c.dict_size;
    double d = round(c.dict_ratio * C);  // halves away from zero, as lround
    if (d < 1 || d > (double)(1 << 30))
        die("--dict-ratio %g x d_model %d rounds to d_sae %.0f: it must be in [1, 2^30]", c.dict_ratio, C, d);
    return (int)d;
}

inline void print_config(const TrainConfig& c, int d_in, int d_sae) {
    printf("+-----------------------+----------------------------------------------------+\n");
    printf("| %-21s | %-50s |\n", "model", c.model.c_str());
    printf("| %-21s | %-50s |\n", "train", c.train.c_str());
    printf("| %-21s | %-50s |\n", "val", c.val.c_str());
    if (c.name.empty()) {  // a sweep's SAEs each have their own (print_sweep)
        printf("| %-21s | %-50s |\n", "mode", mode_name(c.mode));
        printf("| %-21s | %-50d |\n", "layer", c.layer);
        printf("| %-21s | %-50s |\n", "d_in x d_sae", (std::to_string(d_in) + " x " + std::to_string(d_sae)).c_str());
        printf("| %-21s | %-50g |\n", "sparsity_coeff", c.sparsity_coeff);
        if (c.mode != MODE_LOCAL) printf("| %-21s | %-50g |\n", "kl_coeff", c.kl_coeff);
        if (c.mode == MODE_LOCAL) printf("| %-21s | %-50g |\n", "mse_coeff", c.mse_coeff);
        if (c.mode == MODE_E2E_DS) printf("| %-21s | %-50g |\n", "ds_coeff", c.ds_coeff);
    }
    printf("| %-21s | %-50s |\n", "B x T x accum", (std::to_string(c.batch) + " x " + std::to_string(c.seq_len) + " x " + std::to_string(c.grad_accum)).c_str());
    printf("| %-21s | %-50g |\n", "lr", c.lr);
    printf("| %-21s | %-50lld |\n", "warmup_samples", c.warmup_samples);
    printf("| %-21s | %-50lld |\n", "samples", c.samples);
    printf("| %-21s | %-50g |\n", "max_grad_norm", c.max_grad_norm);
    printf("| %-21s | %-50s |\n", "precision", c.precision.c_str());
    printf("+-----------------------+----------------------------------------------------+\n");
}
