#!/usr/bin/env python3
"""A mid-size GIT parity fixture (issue 10) that reaches the kernel paths the tiny fixtures never
do: head_dim 64, 101 image tokens (> 64: several key chunks in the fused attention), the real
30522-token BERT vocabulary (an LM head of 30522 rows), 2 layers per tower.

The weights are not committed: `glimpse checkpoint` makes them from a seed (the Rust tests make
the same bytes at test time), and this script records what transformers computes with them:

    cargo build && .venv/bin/python tools/make_mid_fixture.py

writes tests/fixtures/git-mid/{config.json, preprocessor_config.json, generation_config.json,
reference.json}; the tokenizer is tests/hub/tokenizers/bert-base-uncased/vocab.txt with
git-base-coco's real tokenizer_config.json and special_tokens_map.json.
"""
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import transformers
from transformers import AutoTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "git-mid")
SEED, SCALE = 11, 0.08


def tolist(t):
    return t.detach().cpu().numpy().astype(np.float64).round(7).tolist()


def main():
    os.makedirs(OUT, exist_ok=True)
    cfg = GitConfig(
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                           image_size=160, patch_size=16),
        vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
        max_position_embeddings=128)
    d = cfg.to_dict()
    d["architectures"] = ["GitForCausalLM"]
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
    proc = CLIPImageProcessor(size={"shortest_edge": 160}, crop_size={"height": 160, "width": 160})
    proc.save_pretrained(OUT)
    with open(os.path.join(OUT, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0, "max_new_tokens": 12}, f, indent=2)
    hub = os.path.join(ROOT, "tests", "hub")
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "preprocessor_config.json", "generation_config.json"):
            shutil.copy(os.path.join(OUT, f), tmp)
        shutil.copy(os.path.join(hub, "tokenizers", "bert-base-uncased", "vocab.txt"), tmp)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(hub, "configs", "microsoft__git-base-coco", "_reconstructed", f), tmp)
        subprocess.run([os.path.join(ROOT, "target", "debug", "glimpse"), "checkpoint", "--config",
                        os.path.join(tmp, "config.json"), "--out", tmp, "--seed", str(SEED), "--scale", str(SCALE),
                        "--format", "safetensors"], check=True)
        model = GitForCausalLM(GitConfig.from_pretrained(tmp)).eval()
        missing, unexpected = model.load_state_dict(load_file(os.path.join(tmp, "model.safetensors")), strict=False)
        # GIT's buffers (position_ids) are not weights; every parameter must come from the file
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
        tok = AutoTokenizer.from_pretrained(tmp)
        imgs = {n[:-4]: Image.open(os.path.join(ROOT, "tests", "fixtures", "images", n))
                for n in sorted(os.listdir(os.path.join(ROOT, "tests", "fixtures", "images"))) if n.endswith(".png")}
        ref = {"seed": SEED, "scale": SCALE, "questions": ["what is in the picture?", "how many shapes are there?"],
               "images": {}}
        n_img = (160 // 16) ** 2 + 1
        for name in ("wide_40x64", "big_100x75", "rgba_40x64"):
            px = proc(images=imgs[name], return_tensors="pt").pixel_values
            with torch.no_grad():
                start = torch.tensor([[101]])
                greedy = model.generate(pixel_values=px, input_ids=start, max_new_tokens=12, do_sample=False)
                logits = model(pixel_values=px, input_ids=greedy).logits[0, n_img:]
                top2 = torch.topk(logits, 2, dim=-1).values
                beam = model.generate(pixel_values=px, input_ids=start, max_new_tokens=8, num_beams=3,
                                      do_sample=False, early_stopping=True)
                answers = []
                for q in ref["questions"]:
                    ids = [101] + tok(q, add_special_tokens=False).input_ids
                    a = model.generate(pixel_values=px, input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False)
                    answers.append({"question": q, "prompt_ids": ids, "ids": a[0].tolist()})
            # a sample of the pixels and of the logits keeps the file small: every 97th pixel value;
            # the logits of the first 4 text positions at every 37th vocabulary id and at each
            # position's top 5
            flat = px[0].flatten()
            cols = sorted(set(range(0, 30522, 37)) | set(torch.topk(logits[:4], 5, dim=-1).indices.flatten().tolist()))
            ref["images"][name] = {"pixel_sample": tolist(flat[::97]), "greedy_ids": greedy[0].tolist(),
                                   "beam_ids": beam[0].tolist(), "logit_ids": cols,
                                   "text_logits": tolist(logits[:4, cols]),
                                   "min_top2_margin": float((top2[:, 0] - top2[:, 1]).min()), "vqa": answers}
        ref["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        with open(os.path.join(OUT, "reference.json"), "w") as f:
            json.dump(ref, f)
        print({k: (v["greedy_ids"], v["min_top2_margin"]) for k, v in ref["images"].items()})


if __name__ == "__main__":
    main()
