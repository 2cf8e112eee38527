/*
Tests for llmc/tokenizer.h (GPT-2 byte-level BPE).

Build and run from the repo root (the data is tracked in data/ and models/):
    g++ -std=c++17 -O2 -Wall -Wextra -Werror test/test_tokenizer.cpp -o test_tokenizer -lpcre2-8
    ./test_tokenizer

What is compared against what:
- known ids ("Hello world" -> 15496 995) and the known GPT-2 token count of tinyshakespeare;
- exact decode(encode(x)) == x on all of tinyshakespeare;
- token-for-token agreement with test/bpe_reference.py, an independent Python BPE built on the
  `regex` module (the module GPT-2's own encoder.py uses), on tinyshakespeare and tricky strings;
- the pre-tokenisation regex alone, piece for piece, against Python's on every code point;
- bad files and bad text end the program with exit code 1 and one line naming the problem.
Exact equality everywhere: tokenisation has no tolerance.
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "../llmc/tokenizer.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

static const char* ENCODER = "data/gpt2/encoder.json";
static const char* VOCAB = "data/gpt2/vocab.bpe";
static const char* SHAKESPEARE = "data/tinyshakespeare.txt";
static const char* PYTHON = "/usr/bin/python3";  // Debian's, which has python3-regex
static const char* REFERENCE = "test/bpe_reference.py";

// ----------------------------------------------------------------------------
// helpers

static const Tokenizer& gpt2() {
    static Tokenizer tok;
    static bool loaded = false;
    if (!loaded) {
        tokenizer_load(&tok, ENCODER, VOCAB);
        loaded = true;
    }
    return tok;
}

// A scratch directory removed at exit, by the process that made it only: children that
// exit() through a tokenizer error run static destructors too.
struct TempDir {
    std::string path;
    pid_t owner;
    TempDir() {
        char tmpl[] = "/tmp/test_tokenizer.XXXXXX";
        if (!mkdtemp(tmpl)) { perror("mkdtemp"); exit(1); }
        path = tmpl;
        owner = getpid();
    }
    ~TempDir() {
        if (getpid() == owner) std::filesystem::remove_all(path);
    }
    std::string file(const std::string& name) const { return path + "/" + name; }
};
static TempDir& tmp() {
    static TempDir d;
    return d;
}

static void write_file(const std::string& path, const std::string& data) {
    std::ofstream f(path, std::ios::binary);
    f << data;
    REQUIRE(f.good());
}

static std::vector<long> read_numbers(const std::string& path) {
    std::ifstream f(path);
    REQUIRE(f.good());
    std::vector<long> v;
    long x;
    while (f >> x) v.push_back(x);
    return v;
}

// Runs bpe_reference.py on each text; returns its output (ids, or piece lengths with --split).
static std::vector<std::vector<long>> python_reference(const std::vector<std::string>& texts, bool split) {
    std::string cmd = std::string(PYTHON) + " " + REFERENCE + " " + ENCODER + " " + VOCAB + (split ? " --split" : "");
    for (size_t i = 0; i < texts.size(); i++) {
        std::string in = tmp().file("in" + std::to_string(i)), out = tmp().file("out" + std::to_string(i));
        write_file(in, texts[i]);
        cmd += " " + in + " " + out;
    }
    INFO(cmd);
    REQUIRE(std::system(cmd.c_str()) == 0);
    std::vector<std::vector<long>> results;
    for (size_t i = 0; i < texts.size(); i++) results.push_back(read_numbers(tmp().file("out" + std::to_string(i))));
    return results;
}

// Runs fn in a child process (tokenizer errors call exit); returns its exit code and stderr.
static std::pair<int, std::string> run_child(const std::function<void()>& fn) {
    std::string err_path = tmp().file("stderr.txt");
    std::cout.flush();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (!freopen(err_path.c_str(), "w", stderr)) _exit(99);
        fn();
        fflush(stderr);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    std::ifstream f(err_path);
    std::string msg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, msg};
}

static std::vector<long> as_long(const std::vector<int>& v) { return std::vector<long>(v.begin(), v.end()); }

// ----------------------------------------------------------------------------
// known answers

TEST_CASE("Hello world is 15496 995") {
    std::vector<int> ids = tokenizer_encode(&gpt2(), "Hello world");
    REQUIRE(ids == std::vector<int>{15496, 995});
    REQUIRE(tokenizer_decode(&gpt2(), ids.data(), ids.size()) == "Hello world");
    REQUIRE(tokenizer_decode_token(&gpt2(), 995) == " world");
    REQUIRE(gpt2().vocab_size == 50257);
    REQUIRE(gpt2().eot_token == 50256);
    REQUIRE(tokenizer_encode(&gpt2(), "").empty());
}

TEST_CASE("tinyshakespeare: 338,025 tokens, exact round trip, fast") {
    std::string text = tokenizer_read_file(SHAKESPEARE);
    REQUIRE(text.size() == 1115394);
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int> ids = tokenizer_encode(&gpt2(), text);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("tinyshakespeare: %zu bytes -> %zu tokens in %.3f s\n", text.size(), ids.size(), secs);
    REQUIRE(ids.size() == 338025);
    REQUIRE(tokenizer_decode(&gpt2(), ids.data(), ids.size()) == text);
    // generous bound (a cold cache takes ~0.2 s): only catches an accidental quadratic path
    REQUIRE(secs < 5.0);
}

// ----------------------------------------------------------------------------
// agreement with the independent Python BPE

TEST_CASE("tinyshakespeare: token for token equal to the Python reference") {
    std::string text = tokenizer_read_file(SHAKESPEARE);
    std::vector<long> ours = as_long(tokenizer_encode(&gpt2(), text));
    std::vector<long> theirs = python_reference({text}, false)[0];
    REQUIRE(theirs.size() == 338025);
    size_t first_diff = 0;
    while (first_diff < ours.size() && first_diff < theirs.size() && ours[first_diff] == theirs[first_diff]) first_diff++;
    INFO("first difference at token " << first_diff);
    // compare through a bool: Catch would print all 338k ids on failure
    bool equal = ours == theirs;
    REQUIRE(equal);
}

TEST_CASE("tricky strings: equal to the Python reference, and round trip") {
    std::vector<std::string> texts = {
        "I'm sure you're right, they've said we'll see; he'd know it's fine. DON'T SHOUT, I'M 'S'",
        "curly \xE2\x80\x99s apostrophe, ''quoted'', 'll've 'd'",
        "12345 3.14159 1,000,000 2024-05-20 0x1F 1e-9 \xD9\xA3\xD9\xA4 \xE2\x85\xA7",  // Arabic-Indic digits, Roman numeral
        "na\xC3\xAFve caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC \xCE\x95\xCE\xBB\xCE\xBB\xCE\xB7\xCE\xBD\xCE\xB9\xCE\xBA\xCE\xAC "
        "\xD1\x80\xD1\x83\xD1\x81\xD1\x81\xD0\xBA\xD0\xB8\xD0\xB9",                      // naïve café 東京 Ελληνικά русский
        "e\xCC\x81 combining acute, \xE0\xA4\xB9\xE0\xA4\xBF\xE0\xA4\xA8\xE0\xA5\x8D\xE0\xA4\xA6\xE0\xA5\x80",  // é (e + U+0301), हिन्दी
        "emoji \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D \xF0\x9F\xA4\x96 \xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB "
        "\xF0\x9F\x87\xA9\xF0\x9F\x87\xAA!",                                             // 👋🌍 🤖 👩‍💻 🇩🇪
        "a  b   c    d\n\n\nx\t\ty \r\n end",
        "trailing spaces   ",
        "line\n   \n",
        "   leading and \xC2\xA0nbsp\xE3\x80\x80ideographic space",
        " ",
        "\n\n",
        "<|endoftext|> is plain text by default",
        "int main() { return 0; }\n// comment\t\n",
        "supercalifragilisticexpialidocioussupercalifragilisticexpialidocious",
        std::string("nul\0byte and \x7F del", 18),
    };
    std::vector<std::vector<long>> theirs = python_reference(texts, false);
    for (size_t i = 0; i < texts.size(); i++) {
        INFO("text " << i << ": " << texts[i]);
        std::vector<int> ids = tokenizer_encode(&gpt2(), texts[i]);
        REQUIRE(as_long(ids) == theirs[i]);
        REQUIRE(tokenizer_decode(&gpt2(), ids.data(), ids.size()) == texts[i]);
    }
}

TEST_CASE("pre-tokenisation regex equals Python's on every code point") {
    // Each code point X appears in three contexts, "aXa" "1X1" "-X-": a letter joins the
    // first, a number the second, other symbols the third, whitespace none of them, so any
    // class disagreement changes the pieces. Planes 4-13 (unassigned) and 15-16 (private use)
    // are sampled every 257th code point to keep the Python side to a few seconds.
    std::string text;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        bool sparse = (cp >= 0x40000 && cp < 0xE0000) || cp >= 0xF0000;
        if (sparse && cp % 257 != 0) continue;
        std::string x;
        tokenizer_utf8_append(x, cp);
        text += "a" + x + "a1" + x + "1-" + x + "-";
    }
    std::vector<long> ours;
    tokenizer_split_each(&gpt2(), text, [&](size_t, size_t len) { ours.push_back((long)len); });
    std::vector<long> theirs = python_reference({text}, true)[0];
    size_t i = 0, off = 0;
    while (i < ours.size() && i < theirs.size() && ours[i] == theirs[i]) off += ours[i++];
    INFO("first differing piece " << i << " at byte " << off << ": " << text.substr(off, 24));
    bool equal = ours == theirs;  // through a bool: Catch would print millions of lengths
    REQUIRE(equal);
}

// ----------------------------------------------------------------------------
// options and helpers

TEST_CASE("<|endoftext|> is 50256 only when asked") {
    const std::string text = "a<|endoftext|>b<|endoftext|>";
    std::vector<int> plain = tokenizer_encode(&gpt2(), text);
    std::vector<int> special = tokenizer_encode(&gpt2(), text, true);
    REQUIRE(std::count(plain.begin(), plain.end(), 50256) == 0);
    std::vector<int> a = tokenizer_encode(&gpt2(), "a"), b = tokenizer_encode(&gpt2(), "b");
    std::vector<int> expect = a;
    expect.push_back(50256);
    expect.insert(expect.end(), b.begin(), b.end());
    expect.push_back(50256);
    REQUIRE(special == expect);
    // decode turns the token back into the literal string either way
    REQUIRE(tokenizer_decode(&gpt2(), special.data(), special.size()) == text);
    REQUIRE(tokenizer_decode(&gpt2(), plain.data(), plain.size()) == text);
}

TEST_CASE("split pieces tile the text") {
    std::string text = "Hello,   world!! 2024's\n\n  x";
    std::vector<std::string> pieces = tokenizer_split(&gpt2(), text);
    REQUIRE(pieces == std::vector<std::string>{"Hello", ",", "  ", " world", "!!", " 2024", "'s", "\n\n ", " x"});
}

// ----------------------------------------------------------------------------
// errors: exit code 1 and a one-line message naming the file

static void expect_load_error(const std::string& enc, const std::string& vocab, const std::string& must_mention) {
    auto [code, msg] = run_child([&] {
        Tokenizer t;
        tokenizer_load(&t, enc.c_str(), vocab.c_str());
    });
    INFO("stderr: " << msg);
    REQUIRE(code == 1);
    REQUIRE(msg.find(must_mention) != std::string::npos);
    REQUIRE(std::count(msg.begin(), msg.end(), '\n') == 1);
}

TEST_CASE("bad tokenizer files: one line naming the file, exit 1") {
    std::string missing = tmp().file("no_such_encoder.json");
    expect_load_error(missing, VOCAB, missing);
    std::string missing_vocab = tmp().file("no_such_vocab.bpe");
    expect_load_error(ENCODER, missing_vocab, missing_vocab);

    std::string not_json = tmp().file("not_json.json");
    write_file(not_json, "this is not json\n");
    expect_load_error(not_json, VOCAB, not_json);

    std::string array = tmp().file("array.json");
    write_file(array, "[1, 2, 3]");
    expect_load_error(array, VOCAB, array);

    std::string tiny = tmp().file("tiny.json");  // valid JSON, but no byte tokens
    write_file(tiny, "{\"a\": 0, \"<|endoftext|>\": 1}");
    expect_load_error(tiny, VOCAB, tiny);

    std::string truncated = tmp().file("truncated.json");
    write_file(truncated, tokenizer_read_file(ENCODER).substr(0, 5000));
    expect_load_error(truncated, VOCAB, truncated);

    std::string bad_vocab = tmp().file("bad_vocab.bpe");
    write_file(bad_vocab, "#version: 0.2\nthis line has three\n");
    expect_load_error(ENCODER, bad_vocab, bad_vocab);

    // encoder.json where vocab.bpe belongs: the merge lines do not parse

    expect_load_error(ENCODER, ENCODER, ENCODER);
}

TEST_CASE("bad text and bad ids: one line, exit 1") {
    auto [code, msg] = run_child([] { tokenizer_encode(&gpt2(), std::string("ok \xFF\xFE bad")); });
    INFO(msg);
    REQUIRE(code == 1);
    REQUIRE(msg.find("not valid UTF-8 (byte offset 3)") != std::string::npos);

    auto [code2, msg2] = run_child([] { tokenizer_decode_token(&gpt2(), 50257); });
    INFO(msg2);
    REQUIRE(code2 == 1);
    REQUIRE(msg2.find("50257") != std::string::npos);
}

// ----------------------------------------------------------------------------
// dev/data/prepare_text (built by `make prepare_text`): the shipped tinyshakespeare shards

static const char* EXPECT_DIR = "models/tinyshakespeare-gpt2-4L128";

TEST_CASE("prepare_text reproduces the bundled demo model's tinyshakespeare shards byte for byte") {
    INFO("needs ./prepare_text: run make prepare_text");
    REQUIRE(access("./prepare_text", X_OK) == 0);
    std::string prefix = tmp().file("shards/tinyshakespeare");
    std::string cmd = std::string("./prepare_text -o ") + prefix + " --encoder " + ENCODER + " --vocab " + VOCAB + " " +
                      SHAKESPEARE + " > " + tmp().file("prepare.log");
    REQUIRE(std::system(cmd.c_str()) == 0);
    for (const char* split : {"train", "val"}) {
        INFO(split);
        std::string ours = tokenizer_read_file((prefix + "_" + split + ".bin").c_str());
        std::string theirs = tokenizer_read_file((std::string(EXPECT_DIR) + "/tinyshakespeare_" + split + ".bin").c_str());
        bool identical = ours == theirs;
        REQUIRE(identical);
        REQUIRE(!std::filesystem::exists(prefix + "_" + split + ".bin.tmp"));
    }
    // 7,222 documents, 338,029 tokens in all (not 338,025 + 7,222: a "\n\n" that ends a
    // document is one token, where inside running text it was "\n" "\n")
    std::string val = tokenizer_read_file((prefix + "_val.bin").c_str());
    const int32_t* header = (const int32_t*)val.data();
    REQUIRE(header[0] == 20240520);
    REQUIRE(header[1] == 1);
    REQUIRE(header[2] == 33802);  // floor(0.1 * 338029)
}

// ./prepare_text -o PREFIX ARGS -> (exit code, what it printed on stderr)
static std::pair<int, std::string> run_prepare_text(const std::string& prefix, const std::string& args) {
    std::string err = tmp().file("prepare_err.txt");
    int rc = std::system(("./prepare_text -o " + prefix + " --encoder " + ENCODER + " --vocab " + VOCAB + " " + args +
                          " > /dev/null 2> " + err).c_str());
    std::ifstream f(err);
    std::string msg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return std::make_pair(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, msg);
}

TEST_CASE("prepare_text: bad input gives one line and exit 1, and writes nothing") {
    REQUIRE(access("./prepare_text", X_OK) == 0);
    std::string prefix = tmp().file("bad/out");
    auto run = [&](const std::string& args) { return run_prepare_text(prefix, args); };
    std::string missing = tmp().file("no_such_text.txt");
    auto [rc1, msg1] = run(missing);
    INFO(msg1);
    REQUIRE(rc1 == 1);
    REQUIRE(msg1.find(missing) != std::string::npos);

    std::string latin1 = tmp().file("latin1.txt");
    write_file(latin1, "caf\xE9\n");
    auto [rc2, msg2] = run(latin1);
    INFO(msg2);
    REQUIRE(rc2 == 1);
    REQUIRE(msg2.find(latin1) != std::string::npos);

    auto [rc3, msg3] = run(std::string("--val-fraction 1.5 ") + SHAKESPEARE);
    INFO(msg3);
    REQUIRE(rc3 == 1);
    REQUIRE(msg3.find("--val-fraction") != std::string::npos);

    auto [rc4, msg4] = run(std::string("--val-fraction '' ") + SHAKESPEARE);  // empty is not 0
    INFO(msg4);
    REQUIRE(rc4 == 1);
    REQUIRE(msg4.find("--val-fraction") != std::string::npos);

    std::string folder = tmp().file("a_folder");  // a directory is not an empty text
    std::filesystem::create_directories(folder);
    auto [rc5, msg5] = run(folder);
    INFO(msg5);
    REQUIRE(rc5 == 1);
    REQUIRE(msg5.find("could not read '" + folder + "'") != std::string::npos);

    REQUIRE(!std::filesystem::exists(tmp().file("bad")));
}

TEST_CASE("prepare_text: a shard path taken by a folder, or a split leaving a shard of under 2 tokens, leaves nothing") {
    REQUIRE(access("./prepare_text", X_OK) == 0);
    std::string in = tmp().file("split_in.txt");
    write_file(in, "one\n\ntwo\n\n\n\nthree\n");  // 10 tokens
    // PREFIX_train.bin is a folder: it used to write PREFIX_val.bin and leave PREFIX_train.bin.tmp
    std::string taken = tmp().file("taken");
    std::filesystem::create_directories(taken + "/out_train.bin");
    auto [rc1, msg1] = run_prepare_text(taken + "/out", "--val-fraction 0.5 " + in);
    INFO(msg1);
    REQUIRE(rc1 == 1);
    REQUIRE(msg1.find("'" + taken + "/out_train.bin' is a folder") != std::string::npos);
    std::vector<std::string> left;
    for (const auto& e : std::filesystem::directory_iterator(taken)) left.push_back(e.path().filename().string());
    REQUIRE(left == std::vector<std::string>{"out_train.bin"});
    // 0.95 of 10 tokens leaves 1 for train; 0.1 gives a val shard of 1; 0.8 gives 8 and 2: fine
    for (const char* f : {"0.95", "0.1"}) {
        auto [rc, msg] = run_prepare_text(tmp().file("split/out"), std::string("--val-fraction ") + f + " " + in);
        INFO(msg);
        REQUIRE(rc == 1);
        REQUIRE(msg.find("--val-fraction " + std::string(f) + " of 10 tokens") != std::string::npos);
        REQUIRE(!std::filesystem::exists(tmp().file("split")));
    }
    REQUIRE(run_prepare_text(tmp().file("split/out"), "--val-fraction 0.8 " + in).first == 0);
}

TEST_CASE("long words: equal to the Python reference, and near-linear time") {
    // one pre-tokenised word of random letters: 2,000 bytes against the (quadratic) Python BPE
    uint64_t st = 7;
    std::string word;
    for (int i = 0; i < 2000; i++) word += (char)('a' + splitmix64(&st) % 26);
    std::vector<std::vector<long>> theirs = python_reference({word}, false);
    REQUIRE(as_long(tokenizer_encode(&gpt2(), word)) == theirs[0]);
    // a 1 MB word: the merge-every-round BPE took ~4 s for 100 KB and grew with the square
    std::string big;
    for (int i = 0; i < (1 << 20); i++) big += (char)('a' + splitmix64(&st) % 26);
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int> ids = tokenizer_encode(&gpt2(), big);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO("1 MB word: " << secs << " s, " << ids.size() << " tokens");
    REQUIRE(tokenizer_decode(&gpt2(), ids.data(), ids.size()) == big);
    REQUIRE(secs < 10.0);
}

TEST_CASE("prepare_text: documents, separators and the val cut on a small file") {
    REQUIRE(access("./prepare_text", X_OK) == 0);
    std::string in = tmp().file("small.txt"), prefix = tmp().file("small/out");
    write_file(in, "one\n\ntwo\n\n\n\nthree\n");  // "\n\n\n\n" leaves an empty document: dropped
    std::string cmd = "./prepare_text -o " + prefix + " --val-fraction 0.25 --encoder " + ENCODER + " --vocab " + VOCAB + " " +
                      in + " > /dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    std::vector<int> expect;
    for (const char* doc : {"one\n\n", "two\n\n", "three\n\n\n"}) {
        expect.push_back(50256);
        std::vector<int> ids = tokenizer_encode(&gpt2(), doc);
        expect.insert(expect.end(), ids.begin(), ids.end());
    }
    std::vector<int> got;
    size_t n_val = 0;
    for (const char* split : {"val", "train"}) {
        std::string b = tokenizer_read_file((prefix + "_" + split + ".bin").c_str());
        REQUIRE(b.size() >= 1024);
        int32_t n = ((const int32_t*)b.data())[2];
        REQUIRE(b.size() == 1024 + 2 * (size_t)n);
        if (std::string(split) == "val") n_val = n;
        for (int32_t i = 0; i < n; i++) got.push_back(((const uint16_t*)(b.data() + 1024))[i]);
    }
    REQUIRE(got == expect);
    REQUIRE(n_val == expect.size() / 4);
}
