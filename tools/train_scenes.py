#!/usr/bin/env python3
"""Trains the embedded default model (issue 4): a small GitForCausalLM that captions the
synthetic scenes of `glimpse scenes` and answers questions about them (GIT's VQA format: the
question is the text prefix, the answer follows; the loss covers caption and answer tokens only).

    cargo build --release && target/release/glimpse scenes --seed 1000000 --count 20000 --size 64 --out out/scenes-train
    target/release/glimpse scenes --seed 9000000 --count 1000 --size 64 --out out/scenes-eval
    .venv/bin/python tools/train_scenes.py --train out/scenes-train --eval out/scenes-eval --out models/scenes-git

Everything is seeded (--seed). Writes a Hugging Face folder (config.json, generation_config.json,
preprocessor_config.json, tokenizer.json, model.safetensors), the loss curve (train_log.jsonl)
and the PyTorch evaluation (eval.json) on the held-out scenes.
"""
import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPImageProcessor, GenerationConfig, GitConfig, GitForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def read_split(folder):
    with open(os.path.join(folder, "scenes.jsonl")) as f:
        return [json.loads(line) for line in f]


def word_tokenizer(texts):
    """The scene language is closed: one token per word (WordPiece over a whole-word vocabulary)."""
    words = sorted({w for t in texts for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t.lower())
                    for w in [w[0]]})
    vocab = {t: i for i, t in enumerate(SPECIAL + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    # registers the specials as special tokens, so decode(skip_special_tokens=True) drops [SEP]
    tok.add_special_tokens(SPECIAL)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


def pixels(proc, folder, items):
    imgs = [Image.open(os.path.join(folder, it["image"])).convert("RGB") for it in items]
    return proc(images=imgs, return_tensors="pt").pixel_values


def examples(items, tok, cls, sep):
    """(scene index, input ids, labels): one caption and every question per scene."""
    out = []
    for i, it in enumerate(items):
        cap = tok.encode(it["caption"], add_special_tokens=False).ids
        out.append((i, [cls] + cap + [sep], [cls] + cap + [sep]))
        for qa in it["qa"]:
            q = tok.encode(qa["question"], add_special_tokens=False).ids
            a = tok.encode(qa["answer"], add_special_tokens=False).ids
            ids = [cls] + q + a + [sep]
            out.append((i, ids, [-100] * (1 + len(q)) + a + [sep]))
    return out


def batches(exs, size, rng):
    order = list(range(len(exs)))
    rng.shuffle(order)
    for s in range(0, len(order) - size + 1, size):
        yield [exs[j] for j in order[s:s + size]]


def collate(batch, px, pad):
    n = max(len(e[1]) for e in batch)
    ids = torch.full((len(batch), n), pad)
    labels = torch.full((len(batch), n), -100)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for r, (_, i, l) in enumerate(batch):
        ids[r, :len(i)] = torch.tensor(i)
        labels[r, :len(l)] = torch.tensor(l)
        mask[r, :len(i)] = 1
    return px[[e[0] for e in batch]], ids, mask, labels


@torch.no_grad()
def evaluate(model, tok, items, px, cls, sep, limit=None):
    model.eval()
    items = items[:limit] if limit else items
    exact, f1s, per_kind = 0, [], {}
    for i, it in enumerate(items):
        out = model.generate(pixel_values=px[i:i + 1], input_ids=torch.tensor([[cls]]), max_new_tokens=30, do_sample=False)
        pred = tok.decode(out[0, 1:].tolist(), skip_special_tokens=True).strip()
        exact += pred == it["caption"]
        p, g = pred.split(), it["caption"].split()
        common = sum(min(p.count(w), g.count(w)) for w in set(g))
        f1s.append(0.0 if not common else 2 * common / (len(p) + len(g)))
        for qa in it["qa"]:
            q = tok.encode(qa["question"], add_special_tokens=False).ids
            prompt = torch.tensor([[cls] + q])
            out = model.generate(pixel_values=px[i:i + 1], input_ids=prompt, max_new_tokens=3, do_sample=False)
            ans = tok.decode(out[0, prompt.shape[1]:].tolist(), skip_special_tokens=True).strip()
            k = per_kind.setdefault(qa["kind"], [0, 0])
            k[0] += ans == qa["answer"]
            k[1] += 1
    model.train()
    right = sum(v[0] for v in per_kind.values())
    total = sum(v[1] for v in per_kind.values())
    return {"caption_exact": exact / len(items), "caption_f1": float(np.mean(f1s)),
            "vqa_accuracy": right / max(total, 1), "vqa_per_type": {k: v[0] / v[1] for k, v in per_kind.items()},
            "scenes": len(items)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    torch.set_num_threads(os.cpu_count() or 2)

    train, held_out = read_split(args.train), read_split(args.eval)
    texts = [it["caption"] for it in train] + [q[k] for it in train for q in it["qa"] for k in ("question", "answer")]
    tok = word_tokenizer(texts)
    cls, sep, pad = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    size = Image.open(os.path.join(args.train, train[0]["image"])).size[0]
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    px_train, px_eval = pixels(proc, args.train, train), pixels(proc, args.eval, held_out)

    config = GitConfig(
        vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                           image_size=size, patch_size=8),
        vocab_size=tok.get_vocab_size(), hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=64, bos_token_id=cls, eos_token_id=sep, pad_token_id=pad)
    model = GitForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f} M parameters, vocabulary {tok.get_vocab_size()}, {len(train)} training scenes")

    exs = examples(train, tok, cls, sep)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "train_log.jsonl"), "w")
    step, t0 = 0, time.time()
    model.train()
    while step < args.steps:
        for batch in batches(exs, args.batch, rng):
            pv, ids, mask, labels = collate(batch, px_train, pad)
            loss = model(pixel_values=pv, input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0 or step == 1:
                rec = {"step": step, "loss": round(loss.item(), 4), "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
                print(json.dumps(rec), flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if step >= args.steps:
                break

    model.eval()
    model.save_pretrained(args.out)
    GenerationConfig(bos_token_id=cls, eos_token_id=sep, pad_token_id=pad, max_new_tokens=30).save_pretrained(args.out)
    proc.save_pretrained(args.out)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(args.out)
    result = evaluate(model, tok, held_out, px_eval, cls, sep, args.eval_limit)
    result.update(train_seconds=round(time.time() - t0, 1), parameters=params, steps=args.steps)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
