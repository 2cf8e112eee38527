/*
Text file(s) -> llm.c token shards (SPEC §7), tokenised with GPT-2's BPE (llmc/tokenizer.h).

    make prepare_text
    ./prepare_text -o data/tinyshakespeare/tinyshakespeare data/tinyshakespeare.txt
      -> data/tinyshakespeare/tinyshakespeare_val.bin, ..._train.bin

Recipe (the one behind the tinyshakespeare shards shipped with tinyshakespeare-gpt2-4L256, which
this reproduces byte for byte; see dev/data/tinyshakespeare.sh): each file is cut into documents
at blank lines, i.e. at every "\n\n" (Python's text.split("\n\n")); each document is encoded
as <|endoftext|> (50256) followed by the BPE of the document with its "\n\n" put back. Every
document gets that "\n\n", the last one of a file too. Empty documents (from "\n\n\n\n") are
dropped. The documents of all files, in order, form one token stream whose first
floor(val_fraction * n) tokens go to PREFIX_val.bin and the rest to PREFIX_train.bin; the cut
is at a token, not at a document boundary.

Both shards are written to PATH.tmp and renamed only once both are written; a run that fails
removes what it wrote, so it leaves neither a .tmp nor one shard of the pair. Each shard it
writes holds at least 2 tokens (a token and the next): a --val-fraction that leaves fewer is
refused.
Left out: sharding big corpora into many files (see dev/data/openwebtext.py for that).
*/
#include "../../llmc/tokenizer.h"
#include "../../llmc/utils.h"

#include <cmath>
#include <cstring>

static void usage() {
    printf("usage: ./prepare_text -o PREFIX [options] FILE [FILE ...]\n");
    printf("  -o, --out PREFIX        writes PREFIX_train.bin and PREFIX_val.bin (required)\n");
    printf("  --val-fraction F        first fraction of the tokens that goes to val, 0 <= F < 1 [0.1]\n");
    printf("  --encoder PATH          GPT-2 encoder.json [data/gpt2/encoder.json]\n");
    printf("  --vocab PATH            GPT-2 vocab.bpe [data/gpt2/vocab.bpe]\n");
}

// what this run has written and not yet finished: removed when it dies (die() exits, which runs
// atexit's handlers), so a failed run leaves nothing behind
static std::vector<std::string> partial;
static void remove_partial() {
    for (const std::string& p : partial) remove(p.c_str());
}

// One llm.c shard: header [20240520, 1, n, 0 ...] (256 int32) then n uint16 tokens, at PATH.tmp
// (main renames it once both shards are written).
static void write_shard(const std::string& path, const int* tokens, size_t n) {
    if (n > 0x7FFFFFFF) die("'%s': %zu tokens do not fit one shard's int32 count; split the input", path.c_str(), n);
    int32_t header[256] = {0};
    header[0] = 20240520;
    header[1] = 1;
    header[2] = (int32_t)n;
    std::vector<uint16_t> buf(n);
    for (size_t i = 0; i < n; i++) buf[i] = (uint16_t)tokens[i];  // < 50257 < 65536, checked by the tokenizer
    std::string tmp = path + ".tmp";
    partial.push_back(tmp);
    FILE* fp = fopenCheck(tmp.c_str(), "wb");
    fwriteCheck(header, sizeof(int32_t), 256, fp, tmp.c_str());
    fwriteCheck(buf.data(), sizeof(uint16_t), n, fp, tmp.c_str());
    fclose_check(fp, tmp.c_str());
}

int main(int argc, char** argv) {
    std::string prefix, encoder = "data/gpt2/encoder.json", vocab = "data/gpt2/vocab.bpe";
    double val_fraction = 0.1;
    std::vector<std::string> inputs;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        bool has_value = i + 1 < argc;
        if (a == "-h" || a == "--help") { usage(); return 0; }
        else if ((a == "-o" || a == "--out") && has_value) prefix = argv[++i];
        else if (a == "--encoder" && has_value) encoder = argv[++i];
        else if (a == "--vocab" && has_value) vocab = argv[++i];
        else if (a == "--val-fraction" && has_value) {
            char* end;
            val_fraction = strtod(argv[++i], &end);
            if (end == argv[i] || *end != '\0' || !(val_fraction >= 0.0 && val_fraction < 1.0))
                die("--val-fraction '%s': expected a number with 0 <= F < 1", argv[i]);
        }
        else if (a.size() > 1 && a[0] == '-') die("unknown or incomplete option '%s' (see ./prepare_text --help)", a.c_str());
        else inputs.push_back(a);
    }
    if (prefix.empty()) die("-o PREFIX is required (see ./prepare_text --help)");
    if (inputs.empty()) die("no input text files given (see ./prepare_text --help)");
    // before the tokenising, which takes a while on a big corpus
    std::string val_path = prefix + "_val.bin", train_path = prefix + "_train.bin";
    for (const std::string& p : {val_path, train_path, val_path + ".tmp", train_path + ".tmp"})
        if (dir_exists(p)) die("'%s' is a folder, where -o %s puts a shard: pick another PREFIX", p.c_str(), prefix.c_str());

    Tokenizer tok;
    tokenizer_load(&tok, encoder.c_str(), vocab.c_str());
    if (tok.vocab_size > 65536) die("'%s': %d tokens do not fit uint16 shards", encoder.c_str(), tok.vocab_size);

    std::vector<int> tokens;
    for (const std::string& path : inputs) {
        std::string text = read_text_file(path);
        size_t bad = tokenizer_utf8_invalid_offset(text);
        if (bad != text.size()) die("'%s' is not UTF-8 text (invalid byte at offset %zu)", path.c_str(), bad);
        size_t before = tokens.size(), docs = 0, pos = 0;
        while (pos <= text.size()) {
            size_t cut = text.find("\n\n", pos);
            if (cut == std::string::npos) cut = text.size();
            if (cut > pos) {
                tokens.push_back(tok.eot_token);
                tokenizer_encode_plain(&tok, text.substr(pos, cut - pos) + "\n\n", &tokens);
                docs++;
            }
            pos = cut + 2;
        }
        printf("%s: %zu bytes, %zu documents, %zu tokens\n", path.c_str(), text.size(), docs, tokens.size() - before);
    }

    size_t n_val = (size_t)std::floor(val_fraction * (double)tokens.size());
    size_t n_train = tokens.size() - n_val;
    if (tokens.empty()) die("no tokens: the inputs are empty");
    // a shard of one token has no next token to predict; the trainer needs B*T of them (and +1 for the targets)
    if (n_train < 2 || n_val == 1)
        die("--val-fraction %g of %zu tokens leaves %zu for val and %zu for train: a shard needs at least 2 tokens", val_fraction,
            tokens.size(), n_val, n_train);
    size_t slash = prefix.rfind('/');
    if (slash != std::string::npos && slash > 0) make_dir(prefix.substr(0, slash));
    atexit(remove_partial);
    if (n_val > 0) write_shard(val_path, tokens.data(), n_val);
    write_shard(train_path, tokens.data() + n_val, n_train);
    // both written: rename them; a renamed one is this run's too until the other is in place
    partial = {train_path + ".tmp"};
    if (n_val > 0) {
        partial.push_back(val_path + ".tmp");
        rename_check(val_path + ".tmp", val_path);
        partial.back() = val_path;
    }
    rename_check(train_path + ".tmp", train_path);
    partial.clear();
    if (n_val > 0) printf("wrote %s (%zu tokens)\n", val_path.c_str(), n_val);
    else printf("no val shard: --val-fraction %g of %zu tokens is 0 tokens\n", val_fraction, tokens.size());
    printf("wrote %s (%zu tokens)\n", train_path.c_str(), n_train);
    return 0;
}
