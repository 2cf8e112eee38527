/*
The host side of a run, shared by both trainers (llm.c shares plumbing, not loops): loading the
model and the SAE, the data loaders, resuming, saving, the eval report and the feature dump's
outer loop. Each trainer keeps its own engine and its own loop; the policy around them (when to
save or eval, what is printed and logged, when to stop) is written once, here and in
schedule.h, logger.h and utils.h.
*/
#pragma once
#include <algorithm>
#include <exception>
#include <new>
#include <string>
#include <vector>
#include "utils.h"
#include "gpt2_load.h"
#include "dataloader.h"
#include "train_config.h"
#include "sae.h"
#include "sae_io.h"
#include "logger.h"
#include "feature_dump.h"
#include "schedule.h"

// GPT-2 (residual-writing weights centred, SPEC §2) and the SAE (--init-sae, or the library's
// init), with the flags checked against the model; prints both and the config
inline void load_model_and_sae(GPT2* model, SAE* sae, const TrainConfig& cfg) {
    gpt2_load(model, cfg.model);
    const GPT2Config& mc = model->config;
    printf("GPT-2 from %s: L %d, NH %d, C %d, V %d, maxT %d (%zu parameters, residual-writing weights centred, W_U less its mean row)\n",
           model->source.c_str(), mc.num_layers, mc.num_heads, mc.channels, mc.vocab_size, mc.max_seq_len, model->num_parameters);
    check_config_against_model(cfg, mc.num_layers, mc.max_seq_len);
    if (!cfg.init_sae.empty()) {
        sae_load(sae, cfg.init_sae, mc.channels);
        printf("SAE from %s: d_in %d, d_sae %d\n", cfg.init_sae.c_str(), sae->C, sae->D);
    } else {
        double P = (double)sae_num_parameters(mc.channels, config_d_sae(cfg, mc.channels));
        check_host_memory(4.0 * P * sizeof(float), "the SAE with its gradients and Adam moments");  // either trainer holds 4 copies at most
        sae_allocate(sae, mc.channels, config_d_sae(cfg, mc.channels));
        sae_init_random(sae, cfg.seed);
    }
    print_config(cfg, sae->C, sae->D);
}

// the training rows and the eval rows (the first eval_rows rows of --val)
struct RunData {
    DataLoader train, val;
    bool have_val = false;
    int eval_rows = 0;
};

inline void open_loaders(RunData* d, const TrainConfig& cfg, int vocab_size) {
    // eval needs --val data; without it (and no default shards) training runs without eval
    d->have_val = (cfg.eval_samples > 0 || !cfg.dump_features.empty()) && (cfg.val_given || glob_matches(cfg.val));
    if (cfg.eval_samples > 0 && !d->have_val)
        printf("note: no eval data at the default --val '%s' (scripts/download_starter_pack.sh gets it): eval skipped\n", cfg.val.c_str());
    if (!cfg.eval_only) dataloader_init(&d->train, cfg.train, "--train", cfg.batch, cfg.seq_len, vocab_size, cfg.shuffle, cfg.seed);
    if (d->have_val) dataloader_init(&d->val, cfg.val, "--val", 1, cfg.seq_len, vocab_size, false, 0);
    d->eval_rows = d->have_val ? (int)std::min<long long>(cfg.eval_samples, d->val.num_rows) : 0;
    if (!cfg.dump_features.empty() && !d->have_val) die("--dump-features needs --val data to stream through the SAE");
    if (cfg.eval_only && !d->eval_rows && cfg.dump_features.empty())
        die("--eval-only needs eval data: --val '%s' has no rows", cfg.val.c_str());
}

inline void close_loaders(RunData* d, const TrainConfig& cfg) {
    if (!cfg.eval_only) dataloader_free(&d->train);
    if (d->have_val) dataloader_free(&d->val);
}

// what a run keeps on the host between its steps
struct RunState {
    TrainState ts;                 // step, data position, alive window, eval cadence: what --resume restores
    Schedule sched;
    Logger logger;
    std::vector<float> sparsity;   // (D) from the latest eval, for the export; empty before the first
    std::string model_name;        // the export's metadata.model_name
    long long start_step = 0;      // the step this process started at (--resume's)
};

// A save is a set: the training state, the SAELens export, cfg.json and sparsity. It is written
// into OUT/.save.tmp, which is renamed to OUT/.save.ready in one step (the commit), and then its
// files are moved into OUT. A kill before the commit leaves the previous save whole; after it,
// save_set_recover (run at every start) finishes the moves. So the files of OUT always come from
// one save, or OUT/.save.ready says a finished save is still being moved into place.
inline void save_set_recover(const std::string& dir) {
    std::string ready = dir + "/.save.ready";
    if (dir_exists(ready)) {
        for (const std::string& f : list_files(ready)) rename_check(ready + "/" + f, dir + "/" + f);
        if (rmdir(ready.c_str()) != 0) die("could not remove '%s': %s", ready.c_str(), strerror(errno));
    }
    remove_file_dir(dir + "/.save.tmp");
}

// The log cut back to a saved step: the lines of updates <= step (an eval at a step comes before
// that step's save), then the resumed run appends. A line a kill left half-written goes too.
inline void log_cut_to_step(const std::string& path, const std::string& from, long long step) {
    if (!file_exists(from)) return;
    std::string text = read_text_file(from), kept;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) break;  // no newline: a half-written last line
        std::string line = text.substr(pos, nl - pos);
        JsonValue v;
        long long s = 0;
        if (!json_parse(line, v) || !json_integer(v.get("step"), 0, 1LL << 50, &s) || s > step) break;
        kept += line + "\n";
        pos = nl + 1;
    }
    std::string tmp = path + ".tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "w");
    fwriteCheck(kept.data(), 1, kept.size(), fp, tmp.c_str());
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, path);
}

// Before the first step: the output folder (a run already there is continued only with --resume,
// replaced only with --overwrite), --resume's state (SAE parameters and Adam moments into sae, m, v
// on the host; the data position into the training loader; the log cut back to the saved step)
// and the log.
inline void run_begin(RunState* run, const TrainConfig& cfg, SAE* sae, float* m, float* v, RunData* d, const std::string& model_source) {
    const char* run_files[] = {"train_state.safetensors", "sae_weights.safetensors", "cfg.json", "sparsity.safetensors"};
    bool has_run = file_exists(cfg.log) || dir_exists(cfg.out + "/.save.ready");
    for (const char* f : run_files) has_run = has_run || file_exists(cfg.out + "/" + f);
    if (has_run && cfg.resume.empty()) {
        if (!cfg.overwrite)
            die("--out %s already holds a run (or --log %s exists): --resume %s continues it, --overwrite starts over there, "
                "or choose another --out", cfg.out.c_str(), cfg.log.c_str(), cfg.out.c_str());
        for (const char* f : run_files) unlink((cfg.out + "/" + f).c_str());
        remove_file_dir(cfg.out + "/.save.ready");
    }
    make_dir(cfg.out);
    save_set_recover(cfg.out);
    run->ts.alive_fired.assign(sae->D, 0.0f);
    if (!cfg.eval_only) {
        std::vector<std::string> inputs = {model_source};
        for (const Shard& sh : d->train.shards) inputs.push_back(sh.path);
        run->ts.inputs = inputs_fingerprint(inputs);
    }
    if (!cfg.resume.empty()) {
        if (cfg.resume != cfg.out) save_set_recover(cfg.resume);
        train_state_load(cfg.resume, sae, m, v, &run->ts, cfg);
        d->train.rows_consumed = run->ts.rows_consumed;
        if (!cfg.eval_only)
            log_cut_to_step(cfg.log, file_exists(cfg.log) ? cfg.log : cfg.resume + "/log.jsonl", run->ts.step);
        printf("resumed from %s at step %lld\n", cfg.resume.c_str(), run->ts.step);
    }
    run->start_step = run->ts.step;
    logger_open(&run->logger, cfg.log, !cfg.resume.empty());
    run->sched = schedule_from_config(cfg);
    if (!cfg.eval_only) run->model_name = model_name_for_export(model_source);  // once per run: it may checksum 548 MB
}

// the training state (for --resume) and the SAELens export, from host copies of the SAE, its Adam
// moments and the alive flags (run->ts.alive_fired), as one set (save_set_recover)
inline void save_run(RunState* run, const TrainConfig& cfg, const SAE* sae, const float* m, const float* v, long long step,
                     const RunData& d) {
    const float* blocks[3] = {sae->memory.data(), m, v};
    const char* names[3] = {"parameters", "Adam m", "Adam v"};
    for (int i = 0; i < 3; i++)  // a NaN never reaches an export or a state
        if (first_non_finite(blocks[i], sae->num_parameters) >= 0)
            die("the SAE's %s hold a non-finite value at step %lld (training diverged? try a lower --lr): nothing was saved", names[i], step);
    run->ts.step = step;
    run->ts.rows_consumed = d.train.rows_consumed;
    std::string stage = cfg.out + "/.save.tmp";
    remove_file_dir(stage);
    train_state_save(stage, sae, m, v, run->ts, cfg);
    sae_export(sae, stage, cfg, run->model_name, step, run->sparsity.empty() ? nullptr : &run->sparsity);
    rename_check(stage, cfg.out + "/.save.ready");  // the commit
    save_set_recover(cfg.out);
    printf("saved SAE and training state to %s at step %lld\n", cfg.out.c_str(), step);
}

// an eval's metrics on stdout and in the log; its firing counts become the export's sparsity
inline void report_eval(RunState* run, const TrainConfig& cfg, long long step, const EvalMetrics& m) {
    run->sparsity = sae_log10_sparsity(m.fire_count, m.tokens);
    print_eval(step, m, cfg.layer + 1);
    logger_log_eval(&run->logger, step, m);
}

// the end of update `step`: its line, then a periodic eval and save (the last update's come after
// the loop); the eval first, so a save holds everything the log says up to its step
template <typename Save, typename Eval>
inline void step_end(RunState* run, const TrainConfig& cfg, const StepLog& sl, Save save, Eval eval) {
    print_step(&run->logger, sl, run->sched.S);
    bool last = is_last(run->sched, cfg, sl.step);
    if (should_eval(run->sched, cfg, sl.step, run->ts.last_eval_samples, last)) {
        eval(sl.step);
        run->ts.last_eval_samples = sl.step * run->sched.eff_batch;
    }
    if (should_save(cfg, sl.step, last)) save(sl.step);
}

// --dump-features: streams the first --dump-tokens val tokens (whole rows), B rows at a time,
// through add(tokens, rows, first_pos), which runs the SAE and adds the batch to the dump
template <typename AddBatch>
inline long long feature_dump_stream(const DataLoader* val, const TrainConfig& cfg, int B, AddBatch add) {
    int T = cfg.seq_len;
    long long rows = std::min<long long>(val->num_rows, (cfg.dump_tokens + T - 1) / T);
    std::vector<int> tokens((size_t)B * T);
    for (long long row = 0; row < rows; row += B) {
        int n = (int)std::min<long long>(B, rows - row);
        dataloader_get_rows(val, row, n, tokens.data());
        add(tokens.data(), n, row * T);
    }
    return rows * T;
}

inline void feature_dump_finish(const FeatureDump* fd, const DataLoader* val, const TrainConfig& cfg, const std::string& model_source) {
    std::vector<std::string> shards;
    for (const Shard& sh : val->shards) shards.push_back(sh.path);
    feature_dump_write(fd, cfg.dump_features, feature_dump_meta(cfg.val, shards, cfg.seq_len, fd->tokens, fd->D, fd->K, cfg.layer,
                                                                model_source, mode_name(cfg.mode)));
    long long alive = 0;
    for (long long n : fd->fire_count) alive += n > 0;
    printf("dumped %lld features' frequencies and top-%d activations over %lld val tokens to %s (%lld fired)\n", (long long)fd->D,
           fd->K, fd->tokens, cfg.dump_features.c_str(), alive);
}

// after the last update (at once with --eval-only): the final eval and save, the feature dump,
// then the log and the loaders closed. A run resumed from its final save has both already.
template <typename Save, typename Eval, typename Dump>
inline void run_end(RunState* run, const TrainConfig& cfg, RunData* d, long long step, Save save, Eval eval, Dump dump) {
    if (!cfg.eval_only && (step > run->start_step || cfg.resume.empty())) {
        eval(step);
        save(step);
    }
    if (!cfg.dump_features.empty()) dump();
    logger_close(&run->logger);
    close_loaders(d, cfg);
}

// a trainer's main: no input ends in an abort; an exception (a std::bad_alloc above all) becomes one line and exit 1
inline int run_main(int (*train_main)(int, char**), int argc, char** argv) {
    try {
        return train_main(argc, argv);
    } catch (const std::bad_alloc&) {
        die("out of host memory: lower --batch, --seq-len or --dict-size");
    } catch (const std::exception& ex) {
        die("%s", ex.what());
    }
}
