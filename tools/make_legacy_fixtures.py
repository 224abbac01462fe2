#!/usr/bin/env python3
"""Fixtures in the form of the hub's older repos, and what transformers makes of them.

1. tests/fixtures/legacy/<model>/: each tiny parity fixture (tools/make_fixtures.py) written the
   way 2021-22 repos were: `pytorch_model.bin` (torch.save of the state dict, with the buffers old
   checkpoints carried: GPT-2's attn.bias/masked_bias, position_ids), a full config dump with
   `null` fields (BLIP's text_config without encoder_hidden_size), a legacy processor config
   (feature_extractor_type, integer size / crop_size, missing fields), a slow tokenizer's files
   only (vocab.txt, or vocab.json + merges.txt) with its tokenizer_config.json and a one-line
   special_tokens_map.json, and no generation_config.json. `reference.json` records what
   transformers computes loading that folder: tokenizer ids, pixels, greedy ids / embeddings.
   The script checks that these equal the original fixture's (same weights, tokenizer and
   preprocessing, in the old form) and writes `twin/tokenizer.json`, transformers' conversion of
   the slow files.
2. tests/hub/tokenizers/reference.json: ids of the real vocabularies (tools/hub_tokenizers.py) as
   transformers' BertTokenizer, GPT2Tokenizer and CLIPTokenizer give them.

    .venv/bin/python tools/make_legacy_fixtures.py
"""
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import transformers
from transformers import (AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration, BlipForQuestionAnswering,
                          CLIPModel, GitForCausalLM, VisionEncoderDecoderModel)

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
HUB = os.path.join(HERE, "..", "tests", "hub")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TEXTS = ["a red circle", "A Large BLUE star to the left of a small square!", "what color is the ring?",
         "  two   spaces\tand a tab\nand a newline", "café naïve résumé", "is there a 3rd purple triangle?",
         "unknownwordzzz xyzzy", "don't we'll they're", "", "emoji 🙂 and 中文"]


def tolist(t):
    return t.detach().cpu().numpy().astype(np.float64).round(7).tolist()


def images():
    d = os.path.join(FIX, "images")
    return {n[:-4]: Image.open(os.path.join(d, n)) for n in sorted(os.listdir(d)) if n.endswith(".png")}


def write_json(path, obj, one_line=False):
    with open(path, "w") as f:
        if one_line:
            f.write(json.dumps(obj))  # as 2021 tokenizer files: one line, no newline
        else:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def legacy_config(model, drop=()):
    """A full config dump with null fields, as configs of 2021-22 were saved."""
    cfg = model.config.to_dict()
    cfg["_commit_hash"] = None
    cfg["transformers_version"] = None
    for path in drop:
        d = cfg
        for k in path[:-1]:
            d = d[k]
        d.pop(path[-1], None)
    return cfg


def save_bin(src, path, extra=None, tied=None):
    """torch.save of the state dict under the checkpoint names the hub files use (those of the
    fixture's model.safetensors; transformers 5 renames some modules internally), with extra
    buffers and tied copies that share their storage, as torch.save of a 2021 model wrote them."""
    sd = load_file(os.path.join(src, "model.safetensors"))
    for copy, of in (tied or {}).items():
        sd[copy] = sd[of]
    sd.update(extra or {})
    torch.save(sd, path)


def tokenizer_ids(tok):
    return [tok(t).input_ids for t in TEXTS]


def twin(d, tok):
    t = os.path.join(d, "twin")
    os.makedirs(t, exist_ok=True)
    tok.backend_tokenizer.save(os.path.join(t, "tokenizer.json"))


def wordpiece_files(src_tok, d, cfg_extra):
    vocab = src_tok.get_vocab()
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        for tok_, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
            f.write(tok_ + "\n")
    specials = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                "unk_token": "[UNK]"}
    write_json(os.path.join(d, "special_tokens_map.json"), specials)
    write_json(os.path.join(d, "tokenizer_config.json"),
               {**specials, "do_lower_case": True, "model_max_length": 512, "name_or_path": "bert-base-uncased",
                "special_tokens_map_file": None, "strip_accents": None, "tokenize_chinese_chars": True,
                "tokenizer_class": "BertTokenizer", **cfg_extra})


def same(a, b, what):
    assert a == b, f"{what}: legacy {a} != original {b}"


def git(imgs):
    src, d = os.path.join(FIX, "git"), os.path.join(FIX, "legacy", "git")
    os.makedirs(d, exist_ok=True)
    model = GitForCausalLM.from_pretrained(src).eval()
    save_bin(src, os.path.join(d, "pytorch_model.bin"),
             {"git.embeddings.position_ids": torch.arange(model.config.max_position_embeddings)[None]})
    cfg = legacy_config(model)
    cfg["num_image_with_embedding"] = None
    write_json(os.path.join(d, "config.json"), cfg)
    write_json(os.path.join(d, "preprocessor_config.json"),
               {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                "resample": 3, "size": 32})
    orig_tok = AutoTokenizer.from_pretrained(src)
    wordpiece_files(orig_tok, d, {"processor_class": "GitProcessor"})
    return d, model, orig_tok


def finish_tokenizer(d, orig_tok):
    tok = AutoTokenizer.from_pretrained(d)
    ids = tokenizer_ids(tok)
    same(ids, tokenizer_ids(orig_tok), "tokenizer ids")
    twin(d, tok)
    return tok, ids


def finish_pixels(d, src, imgs, names):
    proc = AutoImageProcessor.from_pretrained(d)
    orig = AutoImageProcessor.from_pretrained(src)
    out = {}
    for n in names:
        a = proc(images=imgs[n], return_tensors="pt").pixel_values
        b = orig(images=imgs[n], return_tensors="pt").pixel_values
        assert torch.equal(a, b), f"{d}: pixels of {n} differ from the original processor's"
        out[n] = a
    return out


def make_git(imgs):
    d, model, orig_tok = git(imgs)
    tok, ids = finish_tokenizer(d, orig_tok)
    ref = json.load(open(os.path.join(FIX, "git", "reference.json")))
    pixels = finish_pixels(d, os.path.join(FIX, "git"), imgs, list(imgs))
    legacy = GitForCausalLM.from_pretrained(d).eval()
    out = {"texts": TEXTS, "ids": ids, "images": {}}
    for n, px in pixels.items():
        with torch.no_grad():
            start = torch.tensor([[model.config.bos_token_id]])
            greedy = legacy.generate(pixel_values=px, input_ids=start, max_new_tokens=10, do_sample=False)
        same(greedy[0].tolist(), ref["images"][n]["greedy_ids"], f"git greedy {n}")
        out["images"][n] = {"pixel_values": tolist(px[0]), "greedy_ids": greedy[0].tolist()}
    write_json(os.path.join(d, "reference.json"), out)


def make_vit_gpt2(imgs):
    src, d = os.path.join(FIX, "vit-gpt2"), os.path.join(FIX, "legacy", "vit-gpt2")
    os.makedirs(d, exist_ok=True)
    model = VisionEncoderDecoderModel.from_pretrained(src).eval()
    n_pos = model.config.decoder.n_positions
    extra = {}
    for i in range(model.config.decoder.n_layer):
        # the causal-mask buffers GPT-2 checkpoints of 2021 carried (uint8 and a float scalar)
        extra[f"decoder.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.uint8))[None, None]
        extra[f"decoder.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        extra[f"decoder.transformer.h.{i}.crossattention.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.uint8))[None, None]
        extra[f"decoder.transformer.h.{i}.crossattention.masked_bias"] = torch.tensor(-1e4)
    save_bin(src, os.path.join(d, "pytorch_model.bin"), extra,
             tied={"decoder.lm_head.weight": "decoder.transformer.wte.weight"})
    write_json(os.path.join(d, "config.json"), legacy_config(model))
    write_json(os.path.join(d, "preprocessor_config.json"),
               {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 32})
    orig_tok = AutoTokenizer.from_pretrained(src)
    vocab = orig_tok.backend_tokenizer.model
    tmp = os.path.join(d, "_tmp")
    os.makedirs(tmp, exist_ok=True)
    vocab.save(tmp)  # vocab.json + merges.txt
    for f in ("vocab.json", "merges.txt"):
        shutil.move(os.path.join(tmp, f), os.path.join(d, f))
    os.rmdir(tmp)
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    write_json(os.path.join(d, "special_tokens_map.json"), special, one_line=True)
    write_json(os.path.join(d, "tokenizer_config.json"),
               {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                "add_prefix_space": False, "model_max_length": 1024, "special_tokens_map_file": None,
                "name_or_path": "gpt2", "tokenizer_class": "GPT2Tokenizer"}, one_line=True)
    tok, ids = finish_tokenizer(d, orig_tok)
    ref = json.load(open(os.path.join(FIX, "vit-gpt2", "reference.json")))
    # ViTFeatureExtractor does not convert to RGB: only the RGB images are compared
    rgb = [n for n, im in imgs.items() if im.mode == "RGB"]
    pixels = finish_pixels(d, src, imgs, rgb)
    legacy = VisionEncoderDecoderModel.from_pretrained(d).eval()
    out = {"texts": TEXTS, "ids": ids, "images": {}}
    for n, px in pixels.items():
        with torch.no_grad():
            greedy = legacy.generate(pixel_values=px, max_new_tokens=10, do_sample=False)
        same(greedy[0].tolist(), ref["images"][n]["greedy_ids"], f"vit-gpt2 greedy {n}")
        out["images"][n] = {"pixel_values": tolist(px[0]), "greedy_ids": greedy[0].tolist()}
    write_json(os.path.join(d, "reference.json"), out)


def make_blip(imgs):
    for kind, cls in (("blip-caption", BlipForConditionalGeneration), ("blip-vqa", BlipForQuestionAnswering)):
        src, d = os.path.join(FIX, kind), os.path.join(FIX, "legacy", kind)
        os.makedirs(d, exist_ok=True)
        model = cls.from_pretrained(src).eval()
        pos = model.config.text_config.max_position_embeddings
        extra = {"text_decoder.bert.embeddings.position_ids": torch.arange(pos)[None]}
        if kind == "blip-vqa":
            extra["text_encoder.embeddings.position_ids"] = torch.arange(pos)[None]
        save_bin(src, os.path.join(d, "pytorch_model.bin"), extra,
                 tied={"text_decoder.cls.predictions.decoder.weight":
                       "text_decoder.bert.embeddings.word_embeddings.weight"})
        write_json(os.path.join(d, "config.json"),
                   legacy_config(model, drop=[("text_config", "encoder_hidden_size")]))
        # the hub's BLIP file: integer size, no resample / rescale fields
        write_json(os.path.join(d, "preprocessor_config.json"),
                   {"do_normalize": True, "do_resize": True, "image_mean": CLIP_MEAN,
                    "image_processor_type": "BlipImageProcessor", "image_std": CLIP_STD,
                    "processor_class": "BlipProcessor", "size": 32})
        orig_tok = AutoTokenizer.from_pretrained(src)
        wordpiece_files(orig_tok, d, {"processor_class": "BlipProcessor"})
        if kind == "blip-vqa":
            # blip-vqa-base's tokenizer_config.json repeats a key (the last one counts)
            path = os.path.join(d, "tokenizer_config.json")
            text = open(path).read().rstrip().rstrip("}")
            open(path, "w").write(text + ',\n  "model_max_length": 512\n}\n')
        tok, ids = finish_tokenizer(d, orig_tok)
        ref = json.load(open(os.path.join(FIX, kind, "reference.json")))
        pixels = finish_pixels(d, src, imgs, list(imgs))
        legacy = cls.from_pretrained(d).eval()
        out = {"texts": TEXTS, "ids": ids, "images": {}}
        for n, px in pixels.items():
            with torch.no_grad():
                if kind == "blip-caption":
                    greedy = legacy.generate(pixel_values=px, max_new_tokens=10, do_sample=False)
                    same(greedy[0].tolist(), ref["images"][n]["greedy_ids"], f"{kind} greedy {n}")
                    entry = {"greedy_ids": greedy[0].tolist()}
                else:
                    answers = []
                    for q, want in zip(ref["questions"], ref["images"][n]["vqa"]):
                        qids = tok(q, return_tensors="pt").input_ids
                        a = legacy.generate(input_ids=qids, pixel_values=px, max_new_tokens=6, do_sample=False)
                        same(a[0].tolist(), want["ids"], f"{kind} answer {n}")
                        answers.append({"question": q, "ids": a[0].tolist()})
                    entry = {"vqa": answers}
            out["images"][n] = {"pixel_values": tolist(px[0]), **entry}
        write_json(os.path.join(d, "reference.json"), out)


def make_clip(imgs):
    """CLIP's legacy twin needs a CLIP-style tokenizer (transformers converts vocab.json +
    merges.txt with CLIP's own pre-tokenizer): one is trained on the fixture corpus with that
    pipeline, its specials at the fixture's ids, within the model's vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    src, d = os.path.join(FIX, "clip"), os.path.join(FIX, "legacy", "clip")
    os.makedirs(d, exist_ok=True)
    model = CLIPModel.from_pretrained(src).eval()
    corpus = json.load(open(os.path.join(FIX, "git", "reference.json")))["questions"] + TEXTS
    import make_fixtures  # the same scene corpus
    corpus += make_fixtures.CORPUS
    t = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=model.config.text_config.vocab_size,
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(corpus, trainer)
    assert t.get_vocab_size() <= model.config.text_config.vocab_size
    tmp = os.path.join(d, "_tmp")
    os.makedirs(tmp, exist_ok=True)
    t.model.save(tmp)
    for f in ("vocab.json", "merges.txt"):
        shutil.move(os.path.join(tmp, f), os.path.join(d, f))
    os.rmdir(tmp)
    special = {"bos_token": {"content": "<|startoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": True},
               "eos_token": {"content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": True},
               "unk_token": {"content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": True},
               "pad_token": "<|endoftext|>"}
    write_json(os.path.join(d, "special_tokens_map.json"), special, one_line=True)
    write_json(os.path.join(d, "tokenizer_config.json"),
               {**special, "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
                "name_or_path": "./clip_tiny/", "model_max_length": 64, "tokenizer_class": "CLIPTokenizer"},
               one_line=True)
    save_bin(src, os.path.join(d, "pytorch_model.bin"),
             {"text_model.embeddings.position_ids": torch.arange(64)[None],
              "vision_model.embeddings.position_ids": torch.arange(17)[None]})
    write_json(os.path.join(d, "config.json"), legacy_config(model))
    write_json(os.path.join(d, "preprocessor_config.json"),
               {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                "resample": 3, "size": 32})
    tok = AutoTokenizer.from_pretrained(d)
    ids = tokenizer_ids(tok)
    twin(d, tok)
    pixels = finish_pixels(d, src, imgs, list(imgs))
    legacy = CLIPModel.from_pretrained(d).eval()
    labels = ["a red circle", "a blue square to the left of a small star", "how many rings are there?"]
    enc = tok(labels, padding=True, return_tensors="pt")
    out = {"texts": TEXTS, "ids": ids, "labels": labels, "images": {}}
    with torch.no_grad():
        for n, px in pixels.items():
            o = legacy(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=px)
            out["images"][n] = {"pixel_values": tolist(px[0]), "logits_per_image": tolist(o.logits_per_image[0])}
    write_json(os.path.join(d, "reference.json"), out)


def real_tokenizers():
    out = {"texts": TEXTS, "transformers": transformers.__version__}
    root = os.path.join(HUB, "tokenizers")
    for name, cls, files in (("bert-base-uncased", "BertTokenizer", ["vocab.txt"]),
                             ("gpt2", "GPT2Tokenizer", ["vocab.json", "merges.txt"]),
                             ("clip", "CLIPTokenizer", ["vocab.json", "merges.txt"])):
        d = os.path.join("/tmp", "glimpse-real-tok", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for f in files:
            shutil.copy(os.path.join(root, name, f), d)
        tok = getattr(transformers, cls).from_pretrained(d)
        out[name] = tokenizer_ids(tok)
    write_json(os.path.join(root, "reference.json"), out)


def main():
    imgs = images()
    torch.manual_seed(0)
    make_git(imgs)
    make_vit_gpt2(imgs)
    make_blip(imgs)
    make_clip(imgs)
    real_tokenizers()
    print("legacy fixtures and real-tokenizer ids written")


if __name__ == "__main__":
    main()
