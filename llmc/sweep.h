/*
--sweep FILE: many SAEs in one run. FILE holds one JSON object per line, one SAE each:

    {"name": "e2e_l1.5", "mode": "e2e", "sparsity_coeff": 1.5}
    {"name": "local_l6", "mode": "local", "layer": 3, "dict_size": 2048, "init_seed": 7}

Keys: name (required, [A-Za-z0-9_.-]+, at most 255 long, unique, not starting with '.'), layer, mode,
sparsity_coeff, kl_coeff, mse_coeff, ds_coeff, dict_size or dict_ratio (not both), init_seed,
init_sae. A key a line leaves out takes the run's flag, or the line's mode's default, exactly as a
single run with those flags would; a line's value goes through the same range check as its flag.
Everything else (model, data, batch, schedule, eval, precision, shuffling by --seed) is shared.
SAE NAME writes OUT/NAME/ as a single run writes OUT/; OUT/sweep.json records what ran.
Every bad line ends the run before anything is written, with one line naming the file and line.
*/
#pragma once
#include <string>
#include <vector>
#include "utils.h"
#include "json.h"
#include "train_config.h"

// a sweep line's key and the flag whose value it sets
static const char* const SWEEP_KEYS[][2] = {
    {"layer", "--layer"}, {"mode", "--mode"}, {"sparsity_coeff", "--sparsity-coeff"}, {"kl_coeff", "--kl-coeff"},
    {"mse_coeff", "--mse-coeff"}, {"ds_coeff", "--ds-coeff"}, {"dict_size", "--dict-size"}, {"dict_ratio", "--dict-ratio"},
    {"init_seed", "--init-seed"}, {"init_sae", "--init-sae"},
};

inline bool sweep_name_ok(const std::string& name) {
    if (name.empty() || name[0] == '.') return false;  // no "..", and no clash with OUT/.save.tmp
    for (char ch : name)
        if (!isalnum((unsigned char)ch) && ch != '_' && ch != '.' && ch != '-') return false;
    return true;
}

// the flag value a sweep line's JSON value stands for: strings for mode and init_sae, numbers
// (whole ones for layer, dict_size and init_seed) for the rest
inline std::string sweep_value_text(const std::string& key, const JsonValue& v) {
    if (key == "mode" || key == "init_sae") {
        if (v.kind != JsonValue::STRING) die("\"%s\" must be a string", key.c_str());
        return v.str;
    }
    if (v.kind != JsonValue::NUMBER) die("\"%s\" must be a number", key.c_str());
    if (key == "layer" || key == "dict_size" || key == "init_seed") {
        long long x = 0;
        if (!json_integer(&v, -(1LL << 53), 1LL << 53, &x)) die("\"%s\" must be a whole number, got %.17g", key.c_str(), v.num);
        return std::to_string(x);
    }
    char buf[64];
    snprintf(buf, sizeof(buf), "%.17g", v.num);  // round-trips exactly through set_flag's strtod
    return buf;
}

// the config's error context: its sweep line, or nothing for a single run
inline std::string sweep_context(const TrainConfig& c) {
    return c.sweep_line > 0 ? "--sweep " + c.sweep + " line " + std::to_string(c.sweep_line) + ": " : "";
}

// One finished config per SAE: the run's flags (raw: before finish_config) with each line's keys
// set as their flags would be. Output paths move into OUT/NAME.
inline std::vector<TrainConfig> sweep_configs(const TrainConfig& raw, bool gpu) {
    const std::string& path = raw.sweep;
    if (!file_exists(path)) die("--sweep '%s' is not a file", path.c_str());
    if (std::find(raw.given.begin(), raw.given.end(), std::string("--log")) != raw.given.end())
        die("--log names one file, but each SAE of a --sweep writes its own OUT/NAME/log.jsonl: leave --log out");
    std::string text = read_text_file(path);
    std::vector<TrainConfig> out;
    size_t pos = 0;
    for (int line_no = 1; pos < text.size(); line_no++) {
        size_t nl = text.find('\n', pos);
        std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        pos = nl == std::string::npos ? text.size() : nl + 1;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are allowed
        TrainConfig c = raw;
        c.sweep_line = line_no;
        die_context() = sweep_context(c);
        JsonValue v;
        if (!json_parse(line, v) || v.kind != JsonValue::OBJECT) die("not a JSON object: %s", line.c_str());
        bool has_size = false, has_ratio = false;
        for (const auto& kv : v.members) {
            const std::string& key = kv.first;
            if (key == "name") {
                if (kv.second.kind != JsonValue::STRING || !sweep_name_ok(kv.second.str))
                    die("\"name\" must be a string of letters, digits, '_', '.' and '-', not starting with '.'");
                if (kv.second.str.size() > 255)  // OUT/NAME is a folder: one path part, at most 255 bytes
                    die("\"name\" is %zu characters long: it names a folder, at most 255", kv.second.str.size());
                c.name = kv.second.str;
                continue;
            }
            const char* flag = nullptr;
            for (auto& k : SWEEP_KEYS)
                if (key == k[0]) flag = k[1];
            if (!flag)
                die("unknown key \"%s\" (keys: name, layer, mode, sparsity_coeff, kl_coeff, mse_coeff, ds_coeff, dict_size, "
                    "dict_ratio, init_seed, init_sae)", key.c_str());
            for (const auto& other : v.members)
                if (&other != &kv && other.first == key) die("key \"%s\" appears twice", key.c_str());
            set_flag(c, flag, sweep_value_text(key, kv.second).c_str(), gpu);
            c.given.push_back(flag);  // as if on the command line (planned_d_sae refuses a size --init-sae does not have)
            has_size = has_size || key == "dict_size";
            has_ratio = has_ratio || key == "dict_ratio";
        }
        if (c.name.empty()) die("every line needs a \"name\"");
        if (has_size && has_ratio) die("give \"dict_size\" or \"dict_ratio\", not both");
        if (has_ratio) c.dict_size = 0;  // the line's ratio, not the flag's --dict-size
        for (const TrainConfig& prev : out)
            if (prev.name == c.name) die("the name \"%s\" is already used on line %d", c.name.c_str(), prev.sweep_line);
        c.out = raw.out + "/" + c.name;
        c.log = "";  // finish_config: OUT/NAME/log.jsonl
        if (!raw.resume.empty()) c.resume = raw.resume + "/" + c.name;
        if (!raw.dump_features.empty()) c.dump_features = raw.dump_features + "/" + c.name;
        out.push_back(finish_config(c));
        die_context().clear();
    }
    if (out.empty()) die("--sweep '%s' holds no SAE: one JSON object per line", path.c_str());
    return out;
}

// the configs of the run: one per SAE, from --sweep's lines or the flags alone
inline std::vector<TrainConfig> run_configs(const TrainConfig& raw, bool gpu) {
    if (raw.sweep.empty()) return {finish_config(raw)};
    return sweep_configs(raw, gpu);
}


// OUT/sweep.json: what ran, one object per SAE (scripts/pareto.py reads the names)
inline void sweep_json_write(const std::string& dir, const std::vector<TrainConfig>& runs, const std::vector<int>& d_sae) {
    std::string tmp = dir + "/sweep.json.tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "w");
    fprintf(fp, "{\"sweep\": \"%s\", \"saes\": [\n", json_escape(runs[0].sweep).c_str());
    for (size_t i = 0; i < runs.size(); i++) {
        const TrainConfig& c = runs[i];
        fprintf(fp, "  {\"name\": \"%s\", \"layer\": %d, \"mode\": \"%s\", \"d_sae\": %d, \"sparsity_coeff\": %.17g, \"kl_coeff\": %.17g, "
                    "\"mse_coeff\": %.17g, \"ds_coeff\": %.17g, \"init_seed\": %lld, \"init_sae\": %s}%s\n",
                json_escape(c.name).c_str(), c.layer, mode_name(c.mode), d_sae[i], c.sparsity_coeff, c.kl_coeff, c.mse_coeff,
                c.ds_coeff, c.init_seed, c.init_sae.empty() ? "null" : ("\"" + json_escape(c.init_sae) + "\"").c_str(),
                i + 1 < runs.size() ? "," : "");
    }
    fprintf(fp, "]}\n");
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, dir + "/sweep.json");
}

// --resume OUT of a sweep: OUT/sweep.json must list the same SAEs, in the same order
inline void sweep_check_resume(const std::string& dir, const std::vector<TrainConfig>& runs) {
    std::string path = dir + "/sweep.json";
    if (!file_exists(path)) die("--resume %s: no sweep.json there, so it holds no sweep to continue", dir.c_str());
    JsonValue root;
    if (!json_parse(read_text_file(path), root) || root.kind != JsonValue::OBJECT || !root.get("saes") ||
        root.get("saes")->kind != JsonValue::ARRAY)
        die("'%s' is not a sweep record (an object with a \"saes\" array)", path.c_str());
    std::string saved, now;
    for (const JsonValue& s : root.get("saes")->items) saved += (s.get("name") ? s.get("name")->str : "?") + " ";
    for (const TrainConfig& c : runs) now += c.name + " ";
    if (saved != now) die("'%s' lists the SAEs %s; --sweep %s lists %s: resume with the sweep file that started it", path.c_str(),
                          saved.c_str(), runs[0].sweep.c_str(), now.c_str());
}

// the SAEs of a sweep, a line each (the shared flags follow in print_config's table)
inline void print_sweep(const std::vector<TrainConfig>& runs, const std::vector<int>& d_sae) {
    printf("sweep %s: %zu SAEs\n", runs[0].sweep.c_str(), runs.size());
    printf("  %-16s %-7s %5s %8s %10s %8s %8s %8s %10s\n", "name", "mode", "layer", "d_sae", "sparsity", "kl", "mse", "ds", "init_seed");
    for (size_t i = 0; i < runs.size(); i++) {
        const TrainConfig& c = runs[i];
        printf("  %-16s %-7s %5d %8d %10g %8g %8g %8g %10lld%s%s\n", c.name.c_str(), mode_name(c.mode), c.layer, d_sae[i], c.sparsity_coeff,
               c.kl_coeff, c.mse_coeff, c.ds_coeff, c.init_seed, c.init_sae.empty() ? "" : "  from ", c.init_sae.c_str());
    }
}

