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
#include "sweep.h"

// GPT-2 (residual-writing weights centred, SPEC §2), printed
inline void load_model(GPT2* model, const TrainConfig& cfg) {
    gpt2_load(model, cfg.model);
    const GPT2Config& mc = model->config;
    printf("GPT-2 from %s: L %d, NH %d, C %d, V %d, maxT %d (%zu parameters, residual-writing weights centred, W_U less its mean row)\n",
           model->source.c_str(), mc.num_layers, mc.num_heads, mc.channels, mc.vocab_size, mc.max_seq_len, model->num_parameters);
}

// d_sae of an SAE before it is loaded: --init-sae's W_enc (its header only), or the flags; with
// the flags checked against the model, so a bad sweep line is named before anything is allocated
inline int planned_d_sae(const TrainConfig& cfg, const GPT2Config& mc) {
    die_context() = sweep_context(cfg);
    check_config_against_model(cfg, mc.num_layers, mc.max_seq_len);
    int D = 0;
    if (cfg.init_sae.empty()) {
        D = config_d_sae(cfg, mc.channels);
    } else {
        std::string path = cfg.init_sae + "/sae_weights.safetensors";
        SafeTensors st;
        safetensors_open(&st, path);
        const StTensorInfo* we = safetensors_find(&st, "W_enc");
        if (!we || we->shape.size() != 2 || we->shape[1] < 1 || we->shape[1] > (1LL << 30))
            die("'%s': W_enc is missing or not [d_in, d_sae] with 1 <= d_sae <= 2^30", path.c_str());
        D = (int)we->shape[1];
        // the SAE's shape is --init-sae's: a --dict-size or --dict-ratio that asks for another is refused, not ignored
        bool size_given = std::find(cfg.given.begin(), cfg.given.end(), "--dict-size") != cfg.given.end() ||
                          std::find(cfg.given.begin(), cfg.given.end(), "--dict-ratio") != cfg.given.end();
        if (size_given && config_d_sae(cfg, mc.channels) != D)
            die("%s asks for d_sae %d, but --init-sae %s holds an SAE of d_sae %d: leave %s out with --init-sae",
                cfg.dict_size > 0 ? "--dict-size" : "--dict-ratio", config_d_sae(cfg, mc.channels), cfg.init_sae.c_str(), D,
                cfg.dict_size > 0 ? "--dict-size" : "--dict-ratio");
    }
    die_context().clear();
    return D;
}

// the SAE: --init-sae, or the library's init from --init-seed
inline void load_sae(SAE* sae, const TrainConfig& cfg, int C) {
    die_context() = sweep_context(cfg);
    if (!cfg.init_sae.empty()) {
        sae_load(sae, cfg.init_sae, C);
        printf("SAE%s%s from %s: d_in %d, d_sae %d\n", cfg.name.empty() ? "" : " ", cfg.name.c_str(), cfg.init_sae.c_str(), sae->C, sae->D);
    } else {
        sae_allocate(sae, C, config_d_sae(cfg, C));
        sae_init_random(sae, (unsigned long long)cfg.init_seed);
    }
    die_context().clear();
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
    std::string name;              // the SAE's name in a sweep (its step-line label)
    long long start_step = 0;      // the step this process started at (--resume's)
};

// A save is a set: the training state, the SAELens export, cfg.json and sparsity. It is written
// into OUT/.save.tmp, which is renamed to OUT/.save.ready in one step (the commit), and then its
// files are moved into OUT. A kill before the commit leaves the previous save whole; after it,
// save_set_recover (run at every start) finishes the moves. So the files of OUT always come from
// one save, or OUT/.save.ready says a finished save is still being moved into place.
// A sweep's save is one set for all its SAEs: each is staged in OUT/.save.tmp/NAME, and moved into OUT/NAME.
inline void move_files_into(const std::string& from, const std::string& to) {
    make_dir(to);
    for (const std::string& f : list_files(from)) rename_check(from + "/" + f, to + "/" + f);
    for (const std::string& sub : list_dirs(from)) move_files_into(from + "/" + sub, to + "/" + sub);
    if (rmdir(from.c_str()) != 0) die("could not remove '%s': %s", from.c_str(), strerror(errno));
}

inline void save_set_recover(const std::string& dir) {
    if (dir_exists(dir + "/.save.ready")) move_files_into(dir + "/.save.ready", dir);
    remove_file_dir(dir + "/.save.tmp");
}

// The log's lines up to a saved step (an eval at a step comes before that step's save), which the
// resumed run's log starts from. Only a last line a kill left half-written (no newline) is
// dropped; any other line that is not a log line means the file is not this run's log, or is
// damaged, and the run is refused before the file is changed.
inline std::string log_lines_to_step(const std::string& path, long long step) {
    std::string text = read_text_file(path), kept;
    bool past = false;
    size_t pos = 0;
    for (long long line_no = 1; pos < text.size(); line_no++) {
        size_t nl = text.find('\n', pos);
        std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        JsonValue v;
        long long s = 0;
        if (nl == std::string::npos && line[0] == '{') break;  // no newline: a half-written last line
        if (!json_parse(line, v) || !json_integer(v.get("step"), 0, 1LL << 50, &s))
            die("the log '%s' line %lld is not a line of a training log (a JSON object with a \"step\"): resume with the run's own "
                "log, or a --log that does not exist yet (the file is left as it is)", path.c_str(), line_no);
        past = past || s > step;
        if (!past) kept += line + "\n";
        pos = nl == std::string::npos ? text.size() : nl + 1;
    }
    return kept;
}

// the log, written whole (history: its lines so far) through a .tmp; the run then appends
inline void log_write(const std::string& path, const std::string& history) {
    std::string tmp = path + ".tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "w");
    fwriteCheck(history.data(), 1, history.size(), fp, tmp.c_str());
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, path);
}

static const char* const RUN_FILES[] = {"train_state.safetensors", "sae_weights.safetensors", "cfg.json", "sparsity.safetensors"};

inline bool folder_holds_run(const TrainConfig& cfg) {
    bool has_run = file_exists(cfg.log) || dir_exists(cfg.out + "/.save.ready") || file_exists(cfg.out + "/sweep.json");
    for (const char* f : RUN_FILES) has_run = has_run || file_exists(cfg.out + "/" + f);
    return has_run;
}

// a run already in --out is continued only with --resume, replaced only with --overwrite
inline void refuse_run(const TrainConfig& cfg, const std::string& top) {
    if (!cfg.resume.empty() || cfg.overwrite || !folder_holds_run(cfg)) return;
    std::string own_log = cfg.log.empty() || cfg.log == cfg.out + "/log.jsonl" ? "" : " (or --log " + cfg.log + " exists)";
    die("--out %s already holds a run%s: --resume %s continues it, --overwrite starts over there, or choose another --out",
        top.c_str(), own_log.c_str(), top.c_str());
}

// --overwrite: the run in --out goes (after refuse_run and every other check has passed)
inline void clear_run(const TrainConfig& cfg) {
    if (!cfg.overwrite || !cfg.resume.empty() || !folder_holds_run(cfg)) return;
    for (const char* f : RUN_FILES) unlink((cfg.out + "/" + f).c_str());
    unlink((cfg.out + "/sweep.json").c_str());
    remove_file_dir(cfg.out + "/.save.ready");
}

// The paths a run writes, checked before anything is: --out and --dump-features can be made as
// folders, and --log is not a folder and lies in a folder that exists (or in --out, made with it)
inline void check_output_paths(const TrainConfig& cfg) {
    check_dir_creatable("--out", cfg.out);
    if (!cfg.dump_features.empty()) check_dir_creatable("--dump-features", cfg.dump_features);
    if (dir_exists(cfg.log)) die("--log %s is a folder, not a file", cfg.log.c_str());
    std::string folder = parent_dir(cfg.log);
    if (folder != cfg.out && !dir_exists(folder)) die("--log %s: the folder '%s' does not exist", cfg.log.c_str(), folder.c_str());
}

// Before a sweep's SAEs are checked (run_check), nothing written: OUT as a whole, and with
// --resume its OUT/sweep.json against the sweep file (a save a kill interrupted finished first)
inline void sweep_check(const TrainConfig& raw, const std::vector<TrainConfig>& runs) {
    TrainConfig top = raw;
    top.log.clear();  // a sweep's logs are its SAEs' (OUT/NAME/log.jsonl)
    refuse_run(top, raw.out);
    for (const TrainConfig& c : runs) refuse_run(c, raw.out);
    if (!raw.resume.empty()) {
        save_set_recover(raw.resume);
        sweep_check_resume(raw.resume, runs);
    }
}

// After every check (sweep_check, then run_check for each SAE; run_begin then follows for each):
// a run replaced by --overwrite cleared, a save interrupted by a kill finished, and OUT/sweep.json written.
inline void sweep_begin(const TrainConfig& raw, const std::vector<TrainConfig>& runs, const std::vector<int>& d_sae) {
    TrainConfig top = raw;
    top.log.clear();
    clear_run(top);
    for (const TrainConfig& c : runs) clear_run(c);
    make_dir(raw.out);
    save_set_recover(raw.out);
    sweep_json_write(raw.out, runs, d_sae);
}

// Before anything is written, for one SAE: its output paths, its folder (refuse_run), and with
// --resume the saved state (SAE parameters and Adam moments into sae, m, v on the host; the data
// position into the training loader) and the log's lines up to the saved step (into *history).
inline void run_check(RunState* run, const TrainConfig& cfg, SAE* sae, float* m, float* v, RunData* d, const std::string& model_source,
                      std::string* history) {
    check_output_paths(cfg);
    refuse_run(cfg, cfg.out);
    if (cfg.name.empty() && !cfg.resume.empty() && file_exists(cfg.resume + "/sweep.json"))
        die("--resume %s holds a sweep: give its --sweep FILE too", cfg.resume.c_str());
    run->ts.alive_fired.assign(sae->D, 0.0f);
    if (!cfg.eval_only) {
        std::vector<std::string> inputs = {model_source};
        for (const Shard& sh : d->train.shards) inputs.push_back(sh.path);
        run->ts.inputs = inputs_fingerprint(inputs);
    }
    if (cfg.resume.empty()) return;
    save_set_recover(cfg.resume);  // a save a kill interrupted: finished, so the newest state is read
    train_state_load(cfg.resume, sae, m, v, &run->ts, cfg);
    d->train.rows_consumed = run->ts.rows_consumed;
    // an existing --log is this run's log (--log may change between resumes), so it must read as one
    std::string from = file_exists(cfg.log) ? cfg.log : cfg.resume + "/log.jsonl";
    if (file_exists(from)) *history = log_lines_to_step(from, cfg.eval_only ? (1LL << 50) : run->ts.step);
}

// After every check: the output folder (a run --overwrite replaces cleared), the log (with
// --resume, cut back to the saved step: history) opened, the schedule.
inline void run_begin(RunState* run, const TrainConfig& cfg, const std::string& history, const std::string& model_source) {
    clear_run(cfg);
    make_dir(cfg.out);
    save_set_recover(cfg.out);
    if (!cfg.resume.empty()) {
        if (!cfg.eval_only) log_write(cfg.log, history);
        printf("resumed from %s at step %lld\n", cfg.resume.c_str(), run->ts.step);
    }
    run->start_step = run->ts.step;
    run->name = cfg.name;
    logger_open(&run->logger, cfg.log, !cfg.resume.empty());
    run->sched = schedule_from_config(cfg);
    if (!cfg.eval_only) run->model_name = model_name_for_export(model_source);  // once per run: it may checksum 548 MB
}

// Before the first step, for every SAE of the run (either trainer's SaeRun, its adam_m and adam_v
// sized): first every check, with nothing written (sweep_check, run_check: the output paths, the
// folders, each SAE's saved state and log; a sweep's SAEs resume from one step), then the writes
// (sweep_begin, run_begin), each SAE's alive flags from the state. Returns their RunStates, for
// step_end and run_end.
template <typename Saes>
inline std::vector<RunState*> runs_begin(Saes& saes, const TrainConfig& raw, const std::vector<int>& d_sae, RunData* d,
                                         const std::string& model_source) {
    std::vector<TrainConfig> cfgs;
    for (auto& s : saes) cfgs.push_back(s.cfg);
    if (!raw.sweep.empty()) sweep_check(raw, cfgs);
    std::vector<std::string> histories(saes.size());
    for (size_t i = 0; i < saes.size(); i++) {
        auto& s = saes[i];
        die_context() = sweep_context(s.cfg);
        run_check(&s.run, s.cfg, &s.sae, s.adam_m.data(), s.adam_v.data(), d, model_source, &histories[i]);
        die_context().clear();
        if (s.run.ts.step != saes[0].run.ts.step)
            die("--resume %s: SAE %s was saved at step %lld and %s at step %lld: a sweep's SAEs are saved together", raw.resume.c_str(),
                s.cfg.name.c_str(), s.run.ts.step, saes[0].cfg.name.c_str(), saes[0].run.ts.step);
    }
    if (!raw.sweep.empty()) sweep_begin(raw, cfgs, d_sae);
    std::vector<RunState*> runs;
    for (size_t i = 0; i < saes.size(); i++) {
        auto& s = saes[i];
        die_context() = sweep_context(s.cfg);
        run_begin(&s.run, s.cfg, histories[i], model_source);
        die_context().clear();
        s.fired = s.run.ts.alive_fired;
        runs.push_back(&s.run);
    }
    return runs;
}

// the training state (for --resume) and the SAELens export, from host copies of the SAE, its Adam
// moments and the alive flags (run->ts.alive_fired), written into the folder `stage`
inline void save_stage(RunState* run, const TrainConfig& cfg, const SAE* sae, const float* m, const float* v, long long step,
                       const RunData& d, const std::string& stage) {
    const float* blocks[3] = {sae->memory.data(), m, v};
    const char* names[3] = {"parameters", "Adam m", "Adam v"};
    for (int i = 0; i < 3; i++)  // a NaN never reaches an export or a state
        if (first_non_finite(blocks[i], sae->num_parameters) >= 0)
            die("%sthe SAE's %s hold a non-finite value at step %lld (training diverged? try a lower --lr): nothing was saved",
                cfg.name.empty() ? "" : ("SAE " + cfg.name + ": ").c_str(), names[i], step);
    run->ts.step = step;
    run->ts.rows_consumed = d.train.rows_consumed;
    train_state_save(stage, sae, m, v, run->ts, cfg);
    sae_export(sae, stage, cfg, run->model_name, step, run->sparsity.empty() ? nullptr : &run->sparsity);
}

// what was staged in OUT/.save.tmp becomes the save in one rename (the commit), then moves into place
inline void save_commit(const std::string& out) {
    rename_check(out + "/.save.tmp", out + "/.save.ready");
    save_set_recover(out);
}

// every SAE of the run (either trainer's SaeRun: cfg, sae, adam_m, adam_v, fired, run; host copies)
// saved as one set: each staged in OUT/.save.tmp (a sweep's SAE in OUT/.save.tmp/NAME), then one commit
template <typename Saes>
inline void save_runs(Saes& saes, const std::string& out, long long step, const RunData& d) {
    remove_file_dir(out + "/.save.tmp");
    for (auto& s : saes) {
        s.run.ts.alive_fired = s.fired;
        save_stage(&s.run, s.cfg, &s.sae, s.adam_m.data(), s.adam_v.data(), step, d,
                   out + "/.save.tmp" + (s.cfg.name.empty() ? "" : "/" + s.cfg.name));
    }
    save_commit(out);
    printf("saved %s and training state to %s at step %lld\n", saes.size() > 1 ? (std::to_string(saes.size()) + " SAEs").c_str() : "SAE",
           out.c_str(), step);
}

// an eval's metrics on stdout (a block for a single run, a line per SAE of a sweep) and in the
// log; its firing counts become the export's sparsity
inline void report_eval(RunState* run, const TrainConfig& cfg, long long step, const EvalMetrics& m) {
    run->sparsity = sae_log10_sparsity(m.fire_count, m.tokens);
    if (cfg.name.empty()) print_eval(step, m, cfg.layer + 1);
    else print_eval_line(cfg.name, step, m);
    logger_log_eval(&run->logger, step, m);
}

// The end of update `step` for every SAE of the run: their lines, then a periodic eval and save of
// all of them (the last update's come after the loop); the eval first, so a save holds everything
// the log says up to its step. A sweep prints one line for all its SAEs; tokens/s counts tokens
// through GPT-2, SAE-tokens/s tokens through an SAE.
template <typename Save, typename Eval>
inline void step_end(const std::vector<RunState*>& runs, const TrainConfig& cfg, const std::vector<StepLog>& sls, Save save, Eval eval) {
    long long step = sls[0].step;
    if (runs.size() == 1 && cfg.name.empty()) {
        print_step(&runs[0]->logger, sls[0], runs[0]->sched.S);
    } else {
        std::string line = "step " + std::to_string(step) + "/" + std::to_string(runs[0]->sched.S);
        char buf[160];
        for (size_t i = 0; i < runs.size(); i++) {
            logger_log_step(&runs[i]->logger, sls[i]);
            snprintf(buf, sizeof(buf), " | %s %.4f kl %s L0 %.1f", runs[i]->name.c_str(), sls[i].loss, json_num(sls[i].kl).c_str(), sls[i].l0);
            line += buf;
        }
        snprintf(buf, sizeof(buf), " | lr %.2e | %.0f tok/s, %.0f SAE-tok/s", sls[0].lr, sls[0].tokens_per_s, sls[0].tokens_per_s * runs.size());
        printf("%s%s\n", line.c_str(), buf);
    }
    bool last = is_last(runs[0]->sched, cfg, step);
    if (should_eval(runs[0]->sched, cfg, step, runs[0]->ts.last_eval_samples, last)) {
        eval(step);
        for (RunState* r : runs) r->ts.last_eval_samples = step * r->sched.eff_batch;
    }
    if (should_save(cfg, step, last)) save(step);
}

// --dump-features: the dump's host state for an SAE of D features, its size printed (and checked
// against the free memory) before it is allocated: it does not grow with --dump-tokens
inline void feature_dump_begin(FeatureDump* fd, const TrainConfig& cfg, int D) {
    double bytes = feature_dump_host_bytes(D, cfg.dump_topk);
    printf("feature dump memory plan%s%s: host %.1f MiB (top-%d, histogram, bands, contexts, logit effects of %d features)\n",
           cfg.name.empty() ? "" : " of SAE ", cfg.name.c_str(), bytes / 1048576.0, cfg.dump_topk, D);
    check_host_memory(bytes, "the feature dump");
    feature_dump_init(fd, D, cfg.dump_topk);
}

// streams the first --dump-tokens val tokens (whole rows), B rows at a time, through
// add(tokens, rows, first_pos), which runs the SAE and adds the batch to the dump; each pass of
// the dump calls it once, and every pass sees the same rows
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

// after both passes and the logit effects, on either trainer's state: the bands in hash order,
// the files, one line
inline void feature_dump_finish(FeatureDump* fd, const DataLoader* val, const TrainConfig& cfg, const std::string& model_source,
                                double seconds) {
    feature_dump_order_bands(fd);
    std::vector<std::string> shards;
    for (const Shard& sh : val->shards) shards.push_back(sh.path);
    feature_dump_write(fd, cfg.dump_features, feature_dump_meta(cfg.val, shards, cfg.seq_len, fd->tokens, fd->D, fd->K, cfg.layer,
                                                                model_source, mode_name(cfg.mode)));
    long long alive = 0;
    for (long long n : fd->fire_count) alive += n > 0;
    printf("dumped %lld features' frequencies, top-%d and band examples with contexts, histograms and logit effects over %lld val tokens "
           "to %s (%lld fired) in %.1f s\n", (long long)fd->D, fd->K, fd->tokens, cfg.dump_features.c_str(), alive, seconds);
}

// after the last update (at once with --eval-only): the final eval and save, the feature dump,
// then the log and the loaders closed. A run resumed from its final save has both already.
template <typename Save, typename Eval, typename Dump>
inline void run_end(const std::vector<RunState*>& runs, const TrainConfig& cfg, RunData* d, long long step, Save save, Eval eval, Dump dump) {
    if (!cfg.eval_only && (step > runs[0]->start_step || cfg.resume.empty())) {
        eval(step);
        save(step);
    }
    if (!cfg.dump_features.empty()) dump();
    for (RunState* r : runs) logger_close(&r->logger);
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

// --dump-features' ablation effects (the trainers' ablation_effects): features (F), ordered by
// eval firing frequency, and the mean change in KL and CE when each alone is zeroed; written to
// DIR/ablation.safetensors beside the dump, with the unablated KL and CE as metadata
#define ABLATION_FEATURES 50
struct AblationEffects {
    std::vector<long long> features;
    std::vector<float> d_kl, d_ce;
    double kl = 0.0, ce = 0.0;  // the SAE spliced in as it is
    long long tokens = 0;
};

// the (up to) n features that fired on most eval tokens, by the last eval's log10 frequency
// (ties: lower id first); features that never fired are left out (zeroing them changes nothing)
inline std::vector<long long> most_frequent_features(const std::vector<float>& log10_freq, int n) {
    std::vector<long long> ids;
    for (size_t d = 0; d < log10_freq.size(); d++)
        if (log10_freq[d] > -10.0f) ids.push_back((long long)d);  // log10(0 + 1e-10) = -10: never fired
    std::stable_sort(ids.begin(), ids.end(), [&](long long a, long long b) { return log10_freq[a] > log10_freq[b]; });
    if ((int)ids.size() > n) ids.resize(n);
    return ids;
}

// from the sums over the eval rows (ab->kl, ab->ce unablated; kl[j], ce[j] with feature j zeroed)
// to the means and the effects: KL per token, CE per predicted position
inline void ablation_finish(AblationEffects* ab, const std::vector<double>& kl, const std::vector<double>& ce, int eval_rows, int T) {
    double ce_positions = (double)eval_rows * (T - 1);
    for (size_t j = 0; j < ab->features.size(); j++) {
        ab->d_kl.push_back((float)((kl[j] - ab->kl) / ab->tokens));
        ab->d_ce.push_back((float)((ce[j] - ab->ce) / ce_positions));
    }
    ab->kl /= ab->tokens;
    ab->ce /= ce_positions;
}

inline void ablation_write(const AblationEffects& ab, const std::string& dir) {
    int64_t F = (int64_t)ab.features.size();
    safetensors_write(dir + "/ablation.safetensors",
                      {{"features", {F}, ab.features.data(), "I64"}, {"d_kl", {F}, ab.d_kl.data()}, {"d_ce", {F}, ab.d_ce.data()}},
                      {{"tokens", std::to_string(ab.tokens)}, {"kl", json_num(ab.kl)}, {"ce_spliced", json_num(ab.ce)}});
    int worst = 0;
    for (int64_t j = 1; j < F; j++) if (ab.d_ce[j] > ab.d_ce[worst]) worst = (int)j;
    if (F > 0)
        printf("ablation of the %lld most frequent features over %lld eval tokens to %s: largest CE increase %.4f nats (feature %lld)\n",
               (long long)F, ab.tokens, dir.c_str(), ab.d_ce[worst], ab.features[worst]);
}

