#!/usr/bin/env python3
"""SmolVLM-256M-Instruct at its real shape, with seeded random weights, for glimpse *and* transformers.js:
one folder that both load (bench/compare.mjs --models smolvlm).

    .venv/bin/python bench/compare/smolvlm.py OUT_DIR      # e.g. out/bench-onnx/smolvlm-256m-instruct

OUT_DIR gets what the hub repo holds (glimpse reads these):
  config.json, generation_config.json (the repo's, verbatim), model.safetensors (bf16, as on the hub: 513 MB),
  tokenizer.json + tokenizer_config.json, chat_template.json (the repo's template), preprocessor_config.json,
  processor_config.json
and, in transformers.js' layout for Idefics3ForConditionalGeneration (its ImageTextToText sessions):
  onnx/vision_encoder.onnx        pixel_values [batch, images, 3, 512, 512] -> image_features [tiles, 64, 576]
  onnx/embed_tokens.onnx          input_ids -> inputs_embeds
  onnx/decoder_model_merged.onnx  inputs_embeds, attention_mask, position_ids, num_logits_to_keep,
                                  past_key_values.{i}.key/value -> logits, present.{i}.key/value
  onnx/*_quantized.onnx           dynamic int8 weights (onnxruntime.quantization), what transformers.js loads for
                                  dtype 'q8' (as bench/compare/export.py makes them for the other models)

optimum-onnx has no Idefics3 exporter, so the graphs are traced here (torch.onnx, TorchScript exporter) from
modules that hold the transformers model's own weights; before writing, each graph is run in onnxruntime and
checked against transformers (image features, prefill logits, and 16 greedy tokens through the cache).

The weights: transformers' own initialisation (initializer_range 0.02, as the real config) under a fixed seed,
rounded to bf16 once; the ONNX graphs are made from the rounded weights, so both runtimes hold the same numbers.
The tokenizer: the real SmolVLM one is not reachable here, so it is GPT-2's byte-level BPE (tests/hub/tokenizers/
gpt2) cut to 49,152 tokens, SmolLM2's three specials first, then SmolVLM's image tokens at their real ids
(<image> = 49190, <end_of_utterance> = 49279): the vocabulary, prompt lengths and ids the real model sees.
Skips the work when OUT_DIR/.source.json says it was made by the same version of this script.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from transformers import (GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                          Idefics3Processor, PreTrainedTokenizerFast)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
HUB = os.path.join(ROOT, "tests", "hub")
VERSION = 3
NEW_TOKENS = 16
SEED = 7

# SmolVLM-256M-Instruct's chat template and special tokens: the fixture's (same repo, same strings)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_smolvlm_fixture import EOU, FAKE, GLOBAL, IMAGE, ROW_COL, SPECIAL, TEMPLATE  # noqa: E402

BASE_VOCAB, VOCAB, IMAGE_ID, EOU_ID = 49152, 49280, 49190, 49279
IMAGE_SEQ_LEN = 64


def tokenizer():
    vocab = json.load(open(os.path.join(HUB, "tokenizers", "gpt2", "vocab.json")))
    merges = [m for m in open(os.path.join(HUB, "tokenizers", "gpt2", "merges.txt"), encoding="utf-8").read().split("\n")
              if m and not m.startswith("#version")]
    by_id = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    keep = BASE_VOCAB - len(SPECIAL)
    # GPT-2's ids: the 256 byte symbols, then one token per merge, in merge order
    for k in range(keep - 256):
        assert "".join(merges[k].split(" ")) == by_id[256 + k], (k, merges[k], by_id[256 + k])
    new_vocab = {t: i for i, t in enumerate(SPECIAL)}
    for t in by_id[:keep]:
        new_vocab[t] = len(new_vocab)
    tok = Tokenizer(models.BPE(vocab=new_vocab, merges=[tuple(m.split(" ")) for m in merges[: keep - 256]]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    added = [GLOBAL, *ROW_COL, FAKE, IMAGE]
    added += [f"<reserved_{i}>" for i in range(EOU_ID - BASE_VOCAB - len(added))] + [EOU]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    assert tok.token_to_id(IMAGE) == IMAGE_ID and tok.token_to_id(EOU) == EOU_ID, (tok.token_to_id(IMAGE), tok.token_to_id(EOU))
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB
    return tok


def build(out):
    tok = tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token=EOU, pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>", additional_special_tokens=[FAKE, IMAGE, EOU])
    fast.save_pretrained(out)
    cfg_path = os.path.join(out, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 writes "TokenizersBackend"
    # the template here too, as the hub's tokenizer_config.json holds it (transformers.js 4.3 reads it only here)
    cfg["chat_template"] = TEMPLATE
    json.dump(cfg, open(cfg_path, "w"), indent=2)

    torch.manual_seed(SEED)
    config = Idefics3Config(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        text_config=dict(model_type="llama", vocab_size=VOCAB, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOU_ID, pad_token_id=2),
        scale_factor=4, image_token_id=IMAGE_ID, tie_word_embeddings=False, pad_token_id=2)
    model = Idefics3ForConditionalGeneration(config).eval()
    # as the hub stores it: bf16; both runtimes then read the same (rounded) numbers
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    model = model.to(torch.float32)
    shutil.copy(os.path.join(HUB, "configs", "HuggingFaceTB__SmolVLM-256M-Instruct", "_reconstructed",
                             "generation_config.json"), os.path.join(out, "generation_config.json"))
    model.generation_config = GenerationConfig.from_pretrained(out)

    image_processor = Idefics3ImageProcessor(size={"longest_edge": 4 * 512}, max_image_size={"longest_edge": 512},
                                             resample=1, do_image_splitting=True, image_mean=[0.5] * 3,
                                             image_std=[0.5] * 3, do_convert_rgb=True)
    image_processor.save_pretrained(out)
    pp_path = os.path.join(out, "preprocessor_config.json")
    pp = json.load(open(pp_path))
    pp["processor_class"] = "Idefics3Processor"
    json.dump(pp, open(pp_path, "w"), indent=2)
    json.dump({"image_seq_len": IMAGE_SEQ_LEN, "processor_class": "Idefics3Processor"},
              open(os.path.join(out, "processor_config.json"), "w"), indent=2)
    json.dump({"chat_template": TEMPLATE}, open(os.path.join(out, "chat_template.json"), "w"), indent=2)
    for f in ("chat_template.jinja", "special_tokens_map.json"):
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=fast, image_seq_len=IMAGE_SEQ_LEN,
                                  chat_template=TEMPLATE)
    return model, processor


def bench_image():
    """A wide picture (1024 x 256): Idefics3's processor makes 1 x 4 tiles and the global view of it (5 x 64 image
    tokens), as `glimpse bench model --arch smolvlm` encodes."""
    img = Image.new("RGB", (1024, 256), (40, 90, 160))
    d = ImageDraw.Draw(img)
    for i in range(8):
        d.ellipse((20 + 125 * i, 40 + 12 * (i % 3), 130 + 125 * i, 150 + 12 * (i % 3)), fill=(200 - 20 * i, 60 + 18 * i, 40))
    d.rectangle((0, 200, 1024, 256), fill=(70, 140, 60))
    return img


class Vision(torch.nn.Module):
    """pixel_values [batch, images, 3, 512, 512] -> image_features [batch * images, 64, 576]. Every Idefics3 tile is a
    full 512 x 512 crop (the processor resizes to tile multiples), so no patch mask and positions 0..1023."""

    def __init__(self, model):
        super().__init__()
        self.vm = model.model.vision_model
        self.connector = model.model.connector

    def forward(self, pixel_values):
        x = pixel_values.flatten(0, 1)
        e = self.vm.embeddings
        x = e.patch_embedding(x).flatten(2).transpose(1, 2)
        x = x + e.position_embedding.weight[None]
        x = self.vm.encoder(inputs_embeds=x, attention_mask=None)
        x = x.last_hidden_state if hasattr(x, "last_hidden_state") else x[0]
        return self.connector(self.vm.post_layernorm(x))


class Embed(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.model.text_model.embed_tokens

    def forward(self, input_ids):
        return self.embed(input_ids)


class Decoder(torch.nn.Module):
    """The Llama decoder and head with its cache as plain tensors in and out (transformers.js' merged-decoder
    interface). The math is transformers' (its RMSNorm, rotary embedding, MLP modules), written out so the cache
    concat and the causal mask trace with dynamic lengths."""

    def __init__(self, model):
        super().__init__()
        self.lm = model.model.text_model
        self.head = model.lm_head
        c = self.lm.config
        self.h, self.kvh, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim

    def forward(self, inputs_embeds, attention_mask, position_ids, num_logits_to_keep, *past):
        x = inputs_embeds
        b, t, _ = x.shape
        past_len = past[0].shape[2]
        total = past_len + t
        cos, sin = self.lm.rotary_emb(x, position_ids)
        rows = torch.arange(t, device=x.device) + past_len
        cols = torch.arange(total, device=x.device)
        allowed = (cols[None, :] <= rows[:, None])[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.zeros(allowed.shape, dtype=x.dtype).masked_fill(~allowed, torch.finfo(x.dtype).min)
        presents = []
        groups = self.h // self.kvh
        for i, layer in enumerate(self.lm.layers):
            a = layer.self_attn
            y = layer.input_layernorm(x)
            q = a.q_proj(y).view(b, t, self.h, self.hd).transpose(1, 2)
            k = a.k_proj(y).view(b, t, self.kvh, self.hd).transpose(1, 2)
            v = a.v_proj(y).view(b, t, self.kvh, self.hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            kk = k[:, :, None].expand(b, self.kvh, groups, total, self.hd).reshape(b, self.h, total, self.hd)
            vv = v[:, :, None].expand(b, self.kvh, groups, total, self.hd).reshape(b, self.h, total, self.hd)
            s = torch.matmul(q, kk.transpose(2, 3)) * (self.hd ** -0.5) + bias
            o = torch.matmul(torch.softmax(s, dim=-1), vv).transpose(1, 2).reshape(b, t, self.h * self.hd)
            x = x + a.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.lm.norm(x)
        # num_logits_to_keep: 0 keeps every position, n > 0 the last n (transformers.js sends 1 while generating)
        start = (t - num_logits_to_keep) * (num_logits_to_keep > 0).to(num_logits_to_keep.dtype)
        keep = torch.arange(t, device=x.device) >= start
        return (self.head(x[:, keep]), *presents)


def export(model, out):
    onnx_dir = os.path.join(out, "onnx")
    os.makedirs(onnx_dir, exist_ok=True)
    layers = model.config.text_config.num_hidden_layers
    kvh, hd = model.config.text_config.num_key_value_heads, model.config.text_config.head_dim
    common = dict(opset_version=17, dynamo=False, do_constant_folding=True)
    with torch.no_grad():
        torch.onnx.export(Vision(model), (torch.zeros(1, 2, 3, 512, 512),), os.path.join(onnx_dir, "vision_encoder.onnx"),
                          input_names=["pixel_values"], output_names=["image_features"],
                          dynamic_axes={"pixel_values": {0: "batch_size", 1: "num_images"},
                                        "image_features": {0: "num_tiles"}}, **common)
        torch.onnx.export(Embed(model), (torch.zeros(1, 3, dtype=torch.long),), os.path.join(onnx_dir, "embed_tokens.onnx"),
                          input_names=["input_ids"], output_names=["inputs_embeds"],
                          dynamic_axes={"input_ids": {0: "batch_size", 1: "sequence_length"},
                                        "inputs_embeds": {0: "batch_size", 1: "sequence_length"}}, **common)
        past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        t, p = 3, 2
        args = (torch.randn(1, t, 576), torch.ones(1, p + t, dtype=torch.long), torch.arange(p, p + t)[None],
                torch.tensor(0), *[torch.randn(1, kvh, p, hd) for _ in past_names])
        dyn = {"inputs_embeds": {0: "batch_size", 1: "sequence_length"},
               "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
               "position_ids": {0: "batch_size", 1: "sequence_length"},
               "logits": {0: "batch_size", 1: "logits_length"}}
        dyn.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names})
        dyn.update({n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names})
        torch.onnx.export(Decoder(model), args, os.path.join(onnx_dir, "decoder_model_merged.onnx"),
                          input_names=["inputs_embeds", "attention_mask", "position_ids", "num_logits_to_keep", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=dyn, **common)
    return onnx_dir


def check(model, processor, onnx_dir, img, out):
    """Runs the graphs as transformers.js does (onnxruntime, greedy, cache) against transformers' generate, and
    writes transformers' answer (ids, prompt length) to OUT_DIR/reference.json for bench/compare.mjs."""
    import onnxruntime as ort

    so = lambda n: ort.InferenceSession(os.path.join(onnx_dir, n), providers=["CPUExecutionProvider"])  # noqa: E731
    vision, embed, dec = so("vision_encoder.onnx"), so("embed_tokens.onnx"), so("decoder_model_merged.onnx")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Can you describe this image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[[img]], return_tensors="pt")
    ids = inputs.input_ids
    n_tiles = inputs.pixel_values.shape[1]
    with torch.no_grad():
        ref_feat = model.model.get_image_features(inputs.pixel_values, inputs.pixel_attention_mask)
        ref_feat = ref_feat.pooler_output if hasattr(ref_feat, "pooler_output") else ref_feat
        if isinstance(ref_feat, (list, tuple)):  # transformers 5: one tensor per image
            ref_feat = torch.cat([f.reshape(-1, f.shape[-1]) for f in ref_feat])
        ref = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             output_logits=True, return_dict_in_generate=True)
    feat = vision.run(None, {"pixel_values": inputs.pixel_values.numpy()})[0]
    d_feat = float(np.abs(feat.reshape(-1) - ref_feat.reshape(-1).numpy()).max())
    emb = embed.run(None, {"input_ids": ids.numpy()})[0]
    emb[ids.numpy() == IMAGE_ID] = feat.reshape(-1, feat.shape[-1])
    layers = model.config.text_config.num_hidden_layers
    kvh, hd = model.config.text_config.num_key_value_heads, model.config.text_config.head_dim
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, kvh, 0, hd), np.float32) for i in range(layers) for kv in ("key", "value")}
    mask = np.ones((1, ids.shape[1]), np.int64)
    pos = np.arange(ids.shape[1], dtype=np.int64)[None]
    got, d_logits = [], 0.0
    x = emb
    for step in range(NEW_TOKENS):
        outs = dec.run(None, {"inputs_embeds": x, "attention_mask": mask, "position_ids": pos,
                              "num_logits_to_keep": np.array(1, np.int64), **past})
        logits = outs[0][0, -1]
        d_logits = max(d_logits, float(np.abs(logits - ref.logits[step][0].numpy()).max()))
        nxt = int(logits.argmax())
        got.append(nxt)
        past = {k: v for k, v in zip(past.keys(), outs[1:])}
        x = embed.run(None, {"input_ids": np.array([[nxt]], np.int64)})[0]
        pos = np.array([[mask.shape[1]]], np.int64)
        mask = np.ones((1, mask.shape[1] + 1), np.int64)
    want = ref.sequences[0, ids.shape[1]:].tolist()
    print(f"check: {n_tiles} tiles, {ids.shape[1]} prompt tokens; image features max |d| {d_feat:.1e}, "
          f"logits max |d| {d_logits:.1e} ({NEW_TOKENS} steps); greedy ids onnx {got} transformers {want}")
    # f32 through two runtimes: ~1e-5 relative; a wrong graph (mask, rope, cache) is off by O(1)
    assert d_feat < 1e-3 and d_logits < 1e-3, (d_feat, d_logits)
    assert got == want, (got, want)
    json.dump({"question": "Can you describe this image?", "prompt_tokens": ids.shape[1], "tiles": n_tiles,
               "new_ids": want, "image_features_max_diff": d_feat, "logits_max_diff": d_logits},
              open(os.path.join(out, "reference.json"), "w"), indent=2)


def main(out):
    stamp_path = os.path.join(out, ".source.json")
    stamp = json.dumps({"script": "bench/compare/smolvlm.py", "version": VERSION, "seed": SEED})
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        print(f"{out}: up to date")
        return
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model, processor = build(out)
    img = bench_image()
    img.save(os.path.join(out, "bench-image.png"))
    onnx_dir = export(model, out)
    check(model, processor, onnx_dir, img, out)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for f in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        quantize_dynamic(os.path.join(onnx_dir, f + ".onnx"), os.path.join(onnx_dir, f + "_quantized.onnx"),
                         weight_type=QuantType.QInt8, extra_options=dict(EnableSubgraph=True, MatMulConstBOnly=True))
    open(stamp_path, "w").write(stamp)
    print(f"{out}: written")


if __name__ == "__main__":
    main(sys.argv[1])
