#!/usr/bin/python3
"""
Independent GPT-2 byte-level BPE in plain Python: the reference test/test_tokenizer.cpp compares
llmc/tokenizer.h against, token for token. Needs only the `regex` module (Debian python3-regex),
for the Unicode classes in GPT-2's pattern; no tiktoken/transformers.

    /usr/bin/python3 test/bpe_reference.py ENCODER_JSON VOCAB_BPE [--split] IN OUT [IN OUT ...]

Each IN is read as UTF-8 text and encoded as plain text (<|endoftext|> is not special); OUT gets
the token ids, one per line. With --split, OUT gets the UTF-8 byte length of each piece of the
pre-tokenisation regex instead, so the regex can be compared on its own.
"""
import json
import sys

import regex

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_alphabet():
    # GPT-2's byte -> printable character table: printable Latin-1 bytes stand for themselves,
    # the remaining 68 bytes get code points 256, 257, ... in byte order
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class BPE:
    def __init__(self, encoder_path, vocab_path):
        with open(encoder_path, encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(vocab_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        self.rank = {pair: i for i, pair in reversed(list(enumerate(merges)))}  # first wins
        self.alphabet = byte_alphabet()
        self.pattern = regex.compile(PATTERN)
        self.cache = {}

    def bpe(self, word):
        # word: string in the byte alphabet; returns its list of token strings
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.rank.get((a, b), None), a, b) for a, b in zip(parts, parts[1:])]
            ranked = [p for p in pairs if p[0] is not None]
            if not ranked:
                break
            _, a, b = min(ranked)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def split(self, text):
        return self.pattern.findall(text)

    def encode(self, text):
        ids = []
        for piece in self.split(text):
            word = "".join(self.alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(word))
        return ids


def main():
    args = sys.argv[1:]
    split_mode = "--split" in args
    args = [a for a in args if a != "--split"]
    if len(args) < 4 or len(args) % 2:
        sys.exit(__doc__)
    bpe = BPE(args[0], args[1])
    for inp, out in zip(args[2::2], args[3::2]):
        with open(inp, "rb") as f:
            text = f.read().decode("utf-8")
        if split_mode:
            values = [len(p.encode("utf-8")) for p in bpe.split(text)]
        else:
            values = bpe.encode(text)
        with open(out, "w") as f:
            f.write("".join(f"{v}\n" for v in values))


if __name__ == "__main__":
    main()
