#!/usr/bin/env python3
"""The same weights for transformers.js: exports a local mirror (out/hub-mirror/<id>, written by
`glimpse checkpoint` with seeded random weights at the repo's real shape) to ONNX with optimum-onnx,
as transformers.js expects a model folder:

  OUT/config.json, generation_config.json, preprocessor_config.json,
  OUT/tokenizer.json + tokenizer_config.json   (built from the mirror's real vocab.json/merges.txt)
  OUT/onnx/encoder_model.onnx, decoder_model_merged.onnx   (ViT-GPT2; task image-to-text-with-past)
  OUT/onnx/model.onnx                                      (CLIP; task zero-shot-image-classification)
  OUT/onnx/*_quantized.onnx   dynamic int8 weights (onnxruntime.quantization), what transformers.js
                              loads for dtype 'q8'

    .venv-onnx/bin/python bench/compare/export.py MIRROR_DIR OUT_DIR

Needs the second venv of ../shared/ENVIRONMENT.md (optimum-onnx 0.1.0, transformers 4.57); bench/compare.mjs
sets it up and calls this. Skips the work when OUT/.source.json says it was made from the same weights.
"""
import json
import os
import shutil
import subprocess
import sys

from onnxruntime.quantization import QuantType, quantize_dynamic


def main(src, out):
    stamp_path = os.path.join(out, ".source.json")
    weights = [f for f in os.listdir(src) if f.endswith((".bin", ".safetensors"))][0]
    st = os.stat(os.path.join(src, weights))
    stamp = json.dumps({"weights": weights, "bytes": st.st_size, "mtime": int(st.st_mtime)})
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        print(f"{out}: up to date")
        return
    cfg = json.load(open(os.path.join(src, "config.json")))
    clip = cfg["model_type"] == "clip"
    task = "zero-shot-image-classification" if clip else "image-to-text-with-past"
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    onnx_dir = os.path.join(out, "onnx")
    # optimum reads the model folder; the tokenizer is written below from the real vocabulary
    subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "optimum-cli"), "export", "onnx", "--model", src, "--task", task, onnx_dir],
        check=True,
    )
    for f in os.listdir(onnx_dir):
        if not f.endswith(".onnx") and not f.endswith(".onnx_data"):
            shutil.move(os.path.join(onnx_dir, f), os.path.join(out, f))
    # transformers.js reads tokenizer.json only
    if clip:
        from transformers import CLIPTokenizerFast as Tok
    else:
        from transformers import GPT2TokenizerFast as Tok
    tok = Tok(vocab_file=os.path.join(src, "vocab.json"), merges_file=os.path.join(src, "merges.txt"))
    tok.save_pretrained(out)
    for f in ("preprocessor_config.json",):
        shutil.copy(os.path.join(src, f), os.path.join(out, f))
    # unused variants of the merged decoder
    for f in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        p = os.path.join(onnx_dir, f)
        if os.path.exists(p):
            os.remove(p)
    for f in sorted(os.listdir(onnx_dir)):
        if f.endswith(".onnx") and not f.endswith("_quantized.onnx"):
            q = os.path.join(onnx_dir, f[: -len(".onnx")] + "_quantized.onnx")
            # as transformers.js's scripts/quantize.py makes its q8 files: int8 weights, the merged
            # decoder's If branches included
            quantize_dynamic(
                os.path.join(onnx_dir, f),
                q,
                weight_type=QuantType.QInt8,
                extra_options=dict(EnableSubgraph=True, MatMulConstBOnly=True),
            )
    open(stamp_path, "w").write(stamp)
    print(f"{out}: exported ({task})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
