#!/usr/bin/env python3
"""config.json of the catalog repos whose real file could not be recovered (see
tests/hub/configs/SOURCES.md: git-base-coco, git-base-vqav2, vit-gpt2-image-captioning and
blip-vqa-base are "NOT FOUND"). Each is built from transformers' config classes with the values
the repo is known to use, and saved as a full dump with `null` fields, as configs of that time
were. They are stand-ins for shapes and fields, clearly not the hub's bytes:
tests/hub/constructed/<repo>/config.json.

    .venv/bin/python tools/hub_constructed.py
"""
import json
import os

from transformers import (BlipConfig, GitConfig, GPT2Config, ViTConfig, VisionEncoderDecoderConfig)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hub", "constructed")


def save(repo, cfg, arch, extra=None):
    d = cfg.to_dict()
    d["architectures"] = [arch]
    d["_commit_hash"] = None
    d["transformers_version"] = None
    d.update(extra or {})
    path = os.path.join(OUT, repo)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")


# GitConfig() is git-base: 6 text layers of 768, a ViT-B/16 vision tower at 224 px; the VQAv2
# checkpoint sees 480 px images (its preprocessor_config.json says so)
save("microsoft__git-base-coco", GitConfig(), "GitForCausalLM", {"num_image_with_embedding": None})
save("microsoft__git-base-vqav2", GitConfig(vision_config={"image_size": 480}), "GitForCausalLM",
     {"num_image_with_embedding": None})
# ViT-base/16 at 224 px encoding for GPT-2 (124 M) with cross-attention; tokens are GPT-2's
enc = ViTConfig()
dec = GPT2Config(add_cross_attention=True, is_decoder=True, bos_token_id=50256, eos_token_id=50256)
ved = VisionEncoderDecoderConfig(encoder=enc.to_dict(), decoder=dec.to_dict())
ved.decoder_start_token_id = 50256
ved.pad_token_id = 50256
ved.eos_token_id = 50256
save("nlpconnect__vit-gpt2-image-captioning", ved, "VisionEncoderDecoderModel", {"tie_word_embeddings": False})
# blip-vqa-base has blip-image-captioning-base's towers (that repo's config is verbatim here)
blip = json.load(open(os.path.join(OUT, "..", "configs", "Salesforce__blip-image-captioning-base", "config.json")))
blip["architectures"] = ["BlipForQuestionAnswering"]
os.makedirs(os.path.join(OUT, "Salesforce__blip-vqa-base"), exist_ok=True)
with open(os.path.join(OUT, "Salesforce__blip-vqa-base", "config.json"), "w") as f:
    json.dump(blip, f, indent=2, sort_keys=True)
    f.write("\n")
print("written")
