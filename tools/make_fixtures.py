#!/usr/bin/env python3
"""Builds tiny random checkpoints of each supported architecture and records what Hugging Face
transformers computes with them: preprocessed pixels, logits, greedy and beam ids, embeddings.

The Rust parity tests (tests/models_*.rs) compare glimpse against these files. Python is only
needed to regenerate them, never to run the tests:

    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors pillow
    .venv/bin/python tools/make_fixtures.py            # writes tests/fixtures/

Model weights are seeded, but the tokenizers library's trainers may order equal-frequency merges
differently from run to run, so a re-run can renumber tokens. Each model's folder is written as a
consistent set (tokenizer, weights and reference from one run): regenerate a whole folder, never
one file. Library versions are recorded in tests/fixtures/versions.json.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

import transformers
from transformers import (BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering, BlipImageProcessor,
                          CLIPConfig, CLIPImageProcessor, CLIPModel, GitConfig, GitForCausalLM,
                          GenerationConfig, GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessor,
                          VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

# A small vocabulary of scene words: enough for tokenizers to train on and for captions to read.
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "ring"]
CORPUS = []
for c in COLORS:
    for s in SHAPES:
        CORPUS += [f"a {c} {s}", f"a large {c} {s} to the left of a small {s}",
                   f"what color is the {s}?", f"is there a {c} {s}?", f"how many {s}s are there?",
                   f"the {s} is above the {c} one", "yes", "no", "two", "three"]


def rng_images():
    """Images of different sizes and aspect ratios, as PIL images: RGB, RGBA and grayscale."""
    r = np.random.RandomState(0)
    out = {}
    for name, (h, w) in {"wide_40x64": (40, 64), "tall_57x23": (57, 23), "square_32": (32, 32),
                         "big_100x75": (100, 75)}.items():
        # smooth gradients plus noise, so resampling filters matter
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / (h + w)], -1)
        img = np.clip(base + r.randint(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        out[name] = Image.fromarray(img, "RGB")
    rgba = np.concatenate([np.asarray(out["wide_40x64"]), np.full((40, 64, 1), 128, np.uint8)], -1)
    out["rgba_40x64"] = Image.fromarray(rgba, "RGBA")
    out["gray_48x48"] = Image.fromarray(r.randint(0, 255, (48, 48), dtype=np.uint8), "L")
    return out


def save_images(images):
    d = os.path.join(ROOT, "images")
    os.makedirs(d, exist_ok=True)
    for name, img in images.items():
        img.save(os.path.join(d, name + ".png"))


def wordpiece_tokenizer(extra=()):
    """BERT-style WordPiece with [PAD]=0, [UNK], [CLS], [SEP], [MASK] (GIT and BLIP use these)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra])
    tok.train_from_iterator(CORPUS, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def clip_tokenizer():
    """CLIP-style byte-level BPE with <|startoftext|> ... <|endoftext|>, lowercased."""
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    return tok


def gpt2_tokenizer():
    """GPT-2-style byte-level BPE with <|endoftext|> as BOS, EOS and padding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def save_tokenizer(tok, d, **special):
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.save_pretrained(d)
    # transformers 5 writes "TokenizersBackend" as the class; name the generic fast tokenizer instead
    cfg_path = os.path.join(d, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return fast


def tolist(t):
    return t.detach().cpu().numpy().astype(np.float64).round(7).tolist() if torch.is_tensor(t) else t


def make_git(images):
    d = os.path.join(ROOT, "git")
    os.makedirs(d, exist_ok=True)
    tok = wordpiece_tokenizer()
    fast = save_tokenizer(tok, d, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                          mask_token="[MASK]")
    cls, sep, pad = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[PAD]")
    torch.manual_seed(0)
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.2),
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
        bos_token_id=cls, eos_token_id=sep, pad_token_id=pad)
    model = GitForCausalLM(config).eval()
    model.save_pretrained(d)
    gen = GenerationConfig(bos_token_id=cls, eos_token_id=sep, pad_token_id=pad, max_new_tokens=10)
    gen.save_pretrained(d)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(d)

    ref = {"images": {}, "questions": ["what color is the star?", "how many circles are there?"]}
    n_img = model.git.encoder.layer[0].attention.self.image_patch_tokens
    for name, img in images.items():
        pixels = proc(images=img, return_tensors="pt").pixel_values
        entry = {"pixel_values": tolist(pixels[0])}
        with torch.no_grad():
            # captioning: start from [CLS]
            start = torch.tensor([[cls]])
            greedy = model.generate(pixel_values=pixels, input_ids=start, max_new_tokens=10, do_sample=False)
            beam = model.generate(pixel_values=pixels, input_ids=start, max_new_tokens=10, num_beams=3,
                                  do_sample=False, length_penalty=1.0, early_stopping=True)
            # teacher-forced logits of the text positions along the greedy caption
            logits = model(pixel_values=pixels, input_ids=greedy).logits[0, n_img:]
            # the logits processors: repetition penalty, no repeated bigrams, a minimum length
            processed = model.generate(pixel_values=pixels, input_ids=start, max_new_tokens=10, do_sample=False,
                                       repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=8)
            beam_lp = model.generate(pixel_values=pixels, input_ids=start, max_new_tokens=10, num_beams=4,
                                     do_sample=False, length_penalty=0.5, early_stopping=False)
            entry.update(greedy_ids=greedy[0].tolist(), beam_ids=beam[0].tolist(),
                         processed_ids=processed[0].tolist(), beam4_lp05_ids=beam_lp[0].tolist(),
                         text_logits=tolist(logits[:3]))
            answers = []
            for q in ref["questions"]:
                ids = [cls] + fast(q, add_special_tokens=False).input_ids
                out = model.generate(pixel_values=pixels, input_ids=torch.tensor([ids]), max_new_tokens=6,
                                     do_sample=False)
                answers.append({"prompt_ids": ids, "ids": out[0].tolist()})
            entry["vqa"] = answers
        ref["images"][name] = entry
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)


def make_clip(images):
    d = os.path.join(ROOT, "clip")
    os.makedirs(d, exist_ok=True)
    tok = clip_tokenizer()
    fast = save_tokenizer(tok, d, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                          pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    torch.manual_seed(1)
    config = CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, initializer_range=0.2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.2),
        projection_dim=16, initializer_range=0.2)
    model = CLIPModel(config).eval()
    model.save_pretrained(d)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(d)
    texts = ["a red circle", "a blue square to the left of a small star", "how many rings are there?"]
    enc = fast(texts, padding=True, return_tensors="pt")
    ref = {"texts": texts, "input_ids": enc.input_ids.tolist(), "attention_mask": enc.attention_mask.tolist(),
           "images": {}}
    with torch.no_grad():
        text_embeds = model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        text_embeds = getattr(text_embeds, "pooler_output", text_embeds)
        ref["text_embeds"] = tolist(text_embeds)
        for name, img in images.items():
            pixels = proc(images=img, return_tensors="pt").pixel_values
            out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pixels)
            ref["images"][name] = {"pixel_values": tolist(pixels[0]), "image_embeds": tolist(out.image_embeds[0]),
                                   "logits_per_image": tolist(out.logits_per_image[0])}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)


def make_vit_gpt2(images):
    d = os.path.join(ROOT, "vit-gpt2")
    os.makedirs(d, exist_ok=True)
    tok = gpt2_tokenizer()
    save_tokenizer(tok, d, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                   unk_token="<|endoftext|>")
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(2)
    enc = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                    patch_size=8, initializer_range=0.2)
    dec = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                     initializer_range=0.2, bos_token_id=eos, eos_token_id=eos, add_cross_attention=True,
                     is_decoder=True)
    config = VisionEncoderDecoderConfig(encoder=enc.to_dict(), decoder=dec.to_dict())
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config).eval()
    model.save_pretrained(d)
    GenerationConfig(decoder_start_token_id=eos, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                     max_new_tokens=10).save_pretrained(d)
    proc = ViTImageProcessor(size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                             do_convert_rgb=True)
    proc.save_pretrained(d)
    ref = {"images": {}}
    for name, img in images.items():
        pixels = proc(images=img, return_tensors="pt").pixel_values
        with torch.no_grad():
            greedy = model.generate(pixel_values=pixels, max_new_tokens=10, do_sample=False)
            beam = model.generate(pixel_values=pixels, max_new_tokens=10, num_beams=3, do_sample=False,
                                  early_stopping=True)
            logits = model(pixel_values=pixels, decoder_input_ids=greedy).logits[0]
        ref["images"][name] = {"pixel_values": tolist(pixels[0]), "greedy_ids": greedy[0].tolist(),
                               "beam_ids": beam[0].tolist(), "text_logits": tolist(logits[:3])}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)


def make_blip(images):
    """BlipForConditionalGeneration and BlipForQuestionAnswering sharing one config and tokenizer."""
    tok = wordpiece_tokenizer(extra=("[DEC]",))
    cls, sep, pad, dec = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[DEC]"))
    config = BlipConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         initializer_range=0.2, bos_token_id=dec, sep_token_id=sep, pad_token_id=pad, eos_token_id=sep),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.2),
        projection_dim=16, initializer_range=0.2)
    proc = BlipImageProcessor(size={"height": 32, "width": 32})
    questions = ["what color is the star?", "how many circles are there?"]
    for kind, cls_ in (("blip-caption", BlipForConditionalGeneration), ("blip-vqa", BlipForQuestionAnswering)):
        d = os.path.join(ROOT, kind)
        os.makedirs(d, exist_ok=True)
        fast = save_tokenizer(tok, d, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                              mask_token="[MASK]", bos_token="[DEC]")
        torch.manual_seed(3)
        model = cls_(config).eval()
        # BLIP's random init keeps LayerNorms at identity and small weights; spread them so logits separate
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2 and "embedding" not in name:
                    p.normal_(0.0, 0.2)
        model.save_pretrained(d)
        GenerationConfig(bos_token_id=dec, eos_token_id=sep, pad_token_id=pad, max_new_tokens=10).save_pretrained(d)
        proc.save_pretrained(d)
        ref = {"images": {}, "questions": questions}
        for name, img in images.items():
            pixels = proc(images=img, return_tensors="pt").pixel_values
            entry = {"pixel_values": tolist(pixels[0])}
            with torch.no_grad():
                if kind == "blip-caption":
                    greedy = model.generate(pixel_values=pixels, max_new_tokens=10, do_sample=False)
                    beam = model.generate(pixel_values=pixels, max_new_tokens=10, num_beams=3, do_sample=False,
                                          early_stopping=True)
                    prompt = fast("a large", return_tensors="pt").input_ids
                    prompted = model.generate(pixel_values=pixels, input_ids=prompt.clone(), max_new_tokens=6,
                                              do_sample=False)
                    image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
                    logits = model.text_decoder(input_ids=greedy, encoder_hidden_states=image_embeds).logits[0]
                    entry.update(greedy_ids=greedy[0].tolist(), beam_ids=beam[0].tolist(),
                                 prompt="a large", prompted_ids=prompted[0].tolist(), text_logits=tolist(logits[:3]))
                else:
                    answers = []
                    for q in questions:
                        ids = fast(q, return_tensors="pt").input_ids
                        out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
                        answers.append({"question_ids": ids[0].tolist(), "ids": out[0].tolist()})
                    entry["vqa"] = answers
            ref["images"][name] = entry
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f)


def main():
    os.makedirs(ROOT, exist_ok=True)
    images = rng_images()
    save_images(images)
    which = sys.argv[1:] or ["git", "clip", "vit-gpt2", "blip"]
    if "git" in which:
        make_git(images)
    if "clip" in which:
        make_clip(images)
    if "vit-gpt2" in which:
        make_vit_gpt2(images)
    if "blip" in which:
        make_blip(images)
    with open(os.path.join(ROOT, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
