"""Writes the bad-input corpus: tests/bad-inputs/ (images, model folders) and its cases.json.

Every file is small (a lying header needs no body), so the corpus is committed; this script
says how each case was made and remakes it:

    .venv/bin/python tools/make_bad_inputs.py

cases.json lists, per input kind, each case with what glimpse must do: "ok" (it works: an
unusual but valid input) or an error `code` (src/error.rs `Error::code`, the browser API's
`error.code`) and a regex its message must match. tests/bad_inputs.rs runs every case through
the CLI, tests/browser/bad-corpus.test.mjs through the page's worker; both run a good request
after each case.
"""

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/bad-inputs"
GIT = ROOT / "tests/fixtures/git"


def scene(w, h):
    """A small picture with structure (so a resize or crop has something to show)."""
    img = Image.new("RGB", (w, h), (40, 90, 160))
    px = img.load()
    for y in range(h):
        for x in range(w):
            if (x // 4 + y // 4) % 2 == 0:
                px[x, y] = (220, 60 + (x * 3) % 150, 30 + (y * 5) % 200)
    return img


def save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(w, h):
    """A PNG whose header declares w×h pixels, with one tiny (valid-CRC) IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b""))


def huge_jpeg(w, h):
    """A baseline JPEG whose frame header declares w×h pixels (quantization and Huffman tables
    from a real one, no scan data)."""
    real = save(scene(16, 16), "JPEG")
    i = real.index(b"\xff\xc0")
    sof_len = struct.unpack(">H", real[i + 2:i + 4])[0]
    sof = bytearray(real[i:i + 2 + sof_len])
    sof[5:7] = struct.pack(">H", h)
    sof[7:9] = struct.pack(">H", w)
    return real[:i] + bytes(sof) + real[i + 2 + sof_len:]


def corrupt(b, start_frac=0.4, n=64):
    b = bytearray(b)
    s = int(len(b) * start_frac)
    for k in range(s, min(len(b) - 2, s + n)):
        b[k] ^= 0x5A
    return bytes(b)


def exif_rotated():
    """A 48×24 JPEG with EXIF orientation 6 (shown rotated 90° clockwise: 24×48)."""
    img = scene(48, 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(img, "JPEG", exif=exif.tobytes())


def images():
    good_png = save(scene(40, 30), "PNG")
    good_jpg = save(scene(40, 30), "JPEG", quality=90)
    good_webp = save(scene(40, 30), "WEBP", lossless=True)
    good_gif = save(scene(40, 30).convert("P"), "GIF")
    frames = [scene(40, 30), scene(30, 40).resize((40, 30))]
    anim = io.BytesIO()
    frames[0].convert("P").save(anim, "GIF", save_all=True, append_images=[frames[1].convert("P")], duration=100, loop=0)
    rgba = scene(40, 30).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((40, 30)))
    gray16 = Image.linear_gradient("L").resize((40, 30)).convert("I;16")
    cmyk = scene(40, 30).convert("CMYK")
    damaged = r"damaged|truncated|decode|invalid|corrupt|format error|unexpected|not enough|EOF|end of|CRC"
    cases = [
        # broken files: an image error that says so
        ("truncated.png", good_png[: len(good_png) // 2], "image", damaged),
        ("corrupt.png", corrupt(good_png), "image", damaged),
        ("truncated.jpg", good_jpg[:200], "image", damaged),
        ("corrupt.jpg", good_jpg[:30] + b"\xff\xd9" * 40, "image", damaged),
        ("truncated.webp", good_webp[: len(good_webp) // 2], "image", damaged),
        ("corrupt.webp", corrupt(good_webp, 0.3, 200), "image", damaged),
        ("truncated.gif", good_gif[:40], "image", damaged),
        ("corrupt.gif", good_gif[:13] + b"\x00" * 20, "image", damaged),
        ("empty.png", b"", "image", r"empty \(0 bytes\)"),
        ("notes.txt", b"this is a text file, not a picture\n", "image", r"not an image glimpse can read"),
        ("zeros.bin", b"\0" * 4096, "image", r"not an image glimpse can read"),
        ("huge-declared.png", huge_png(100_000, 100_000), "image", r"too large"),
        ("huge-declared.jpg", huge_jpeg(60_000, 60_000), "image", r"too large"),
        ("strip-1x5000.png", save(scene(1, 5000), "PNG"), "image", r"aspect ratio of 5000:1"),
        ("strip-5000x1.png", save(scene(5000, 1), "PNG"), "image", r"aspect ratio of 5000:1"),
        # unusual but valid: they caption
        ("strip-1x150.png", save(scene(1, 150), "PNG"), None, None),
        ("strip-150x2.png", save(scene(150, 2), "PNG"), None, None),
        ("gray16.png", save(gray16, "PNG"), None, None),
        ("rgb16.png", None, None, None),  # written below (Pillow cannot write 16-bit RGB)
        ("cmyk.jpg", save(cmyk, "JPEG"), None, None),
        ("palette.png", save(scene(40, 30).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"), None, None),
        ("alpha.png", save(rgba, "PNG"), None, None),
        ("gray.jpg", save(scene(40, 30).convert("L"), "JPEG"), None, None),
        ("exif-rotated.jpg", exif_rotated(), None, None),
        ("animated.gif", anim.getvalue(), None, None),
        ("lossy.webp", save(scene(40, 30), "WEBP", quality=50), None, None),
    ]
    out = []
    for name, data, code, pattern in cases:
        if name == "rgb16.png":
            data = rgb16_png(40, 30)
        (OUT / "images" / name).write_bytes(data)
        out.append({"file": f"images/{name}", "expect": "ok"} if code is None
                   else {"file": f"images/{name}", "code": code, "error": pattern})
    return out


def rgb16_png(w, h):
    raw = b""
    for y in range(h):
        raw += b"\0" + b"".join(struct.pack(">HHH", x * 1600, y * 2000, 30000) for x in range(w))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def prompts():
    # `question`: what is asked of the default model (GIT answers after the question), `repeat`
    # times when given;
    # the browser test sends `js` (a JS expression) where the text cannot be JSON (lone surrogates)
    return [
        {"name": "empty", "question": "", "code": "invalid", "error": r"the question is empty"},
        {"name": "whitespace", "question": " \t\n  ", "code": "invalid", "error": r"the question is empty"},
        {"name": "100k characters", "question": "x", "repeat": 100_000, "code": "invalid", "error": r"at most 65536 bytes"},
        {"name": "600 words", "question": "what ", "repeat": 600, "code": "invalid", "error": r"text positions"},
        {"name": "control characters", "question": "what\u0000 color\u0007 is\u001b the\u0008 ring?", "expect": "ok"},
        {"name": "emoji and RTL", "question": "what color 🟥 is \u202eit?", "expect": "ok"},
        {"name": "lone surrogates (JS)", "js": "'what \\uD800 color \\uDFFF is it?'", "expect": "ok"},
    ]


def safetensors_parts(path):
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def safetensors_bytes(header, data, pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def gguf_header(n_tensors, kvs):
    """A GGUF v3 header: `kvs` are (key, type, packed value)."""
    b = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs))
    for key, ty, val in kvs:
        k = key.encode()
        b += struct.pack("<Q", len(k)) + k + struct.pack("<I", ty) + val
    return b


def model_dir(name, replace):
    """tests/bad-inputs/models/NAME: the git fixture's files with `replace` {file: bytes or None}."""
    d = OUT / "models" / name
    d.mkdir(parents=True)
    for f in ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(GIT / f, d / f)
    if not any(k.endswith((".gguf", ".safetensors")) for k in replace):
        # the weights are the fixture's own: a link, not a copy (git keeps symlinks)
        (d / "model.safetensors").symlink_to(Path("../../../fixtures/git/model.safetensors"))
    for f, data in replace.items():
        if data is None:
            if (d / f).exists() or (d / f).is_symlink():
                (d / f).unlink()
        else:
            (d / f).write_bytes(data)
    return f"models/{name}"


def models():
    header, data = safetensors_parts(GIT / "model.safetensors")
    first = sorted(k for k in header if k != "__metadata__")[0]

    def edit(f):
        h = json.loads(json.dumps(header))
        f(h)
        return safetensors_bytes(h, data)

    def lie_offsets(h):
        s, e = h[first]["data_offsets"]
        h[first]["data_offsets"] = [s, e + (1 << 40)]

    def lie_dtype(h):
        h[first]["dtype"] = "F16"

    def lie_shape(h):
        h[first]["shape"] = [7, 1000]

    def lie_count(h):
        for i in range(3):
            h[f"phantom.{i}.weight"] = {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}

    huge_header = struct.pack("<Q", 8 << 30) + b'{"a":' + b" " * 64
    cfg = json.loads((GIT / "config.json").read_text())
    heads0 = dict(cfg, num_attention_heads=0)
    clip_cfg = (ROOT / "tests/fixtures/clip/config.json").read_bytes()
    gpt2_tok = tokenizer_with_vocab(5000)
    cases = [
        (model_dir("lying-offsets", {"model.safetensors": edit(lie_offsets)}), "weights", r"."),
        (model_dir("lying-dtype", {"model.safetensors": edit(lie_dtype)}), "weights", r"."),
        (model_dir("lying-shape", {"model.safetensors": edit(lie_shape)}), "weights", r"."),
        (model_dir("lying-count", {"model.safetensors": edit(lie_count)}), "weights", r"."),
        (model_dir("huge-header", {"model.safetensors": huge_header}), "weights", r"header"),
        (model_dir("truncated-weights", {"model.safetensors": (GIT / "model.safetensors").read_bytes()[:50_000]}), "weights", r"truncated"),
        (model_dir("gguf-lying-count", {"model.safetensors": None, "model.gguf": gguf_header(1 << 40, [])}), "weights", r"tensors"),
        (model_dir("gguf-alignment-zero", {"model.safetensors": None, "model.gguf": gguf_header(0, [("general.alignment", 4, struct.pack("<I", 0))])}), "weights", r"alignment"),
        (model_dir("gguf-8gb-string", {"model.safetensors": None, "model.gguf": gguf_header(0, [("general.name", 8, struct.pack("<Q", 8 << 30) + b"abc")])}), "weights", r"."),
        (model_dir("tokenizer-mismatch", {"tokenizer.json": gpt2_tok}), "config", r"tokenizer"),
        (model_dir("other-architecture-config", {"config.json": clip_cfg}), "weights", r"no tensor"),
        (model_dir("heads-zero", {"config.json": json.dumps(heads0, indent=2).encode()}), "config", r"num_attention_heads = 0"),
        (model_dir("config-not-json", {"config.json": b"{ this is not json"}), "config", r"config\.json"),
        (model_dir("no-config", {"config.json": None}), "invalid", r"config\.json"),
    ]
    return [{"dir": d, "code": c, "error": p} for d, c, p in cases]


def tokenizer_with_vocab(n):
    """The fixture's WordLevel/WordPiece tokenizer with its vocabulary padded to `n` tokens: a
    tokenizer of another model (the fixture's vocab_size is 120)."""
    t = json.loads((GIT / "tokenizer.json").read_text())
    vocab = t["model"]["vocab"]
    for i in range(len(vocab), n):
        vocab[f"extra{i}"] = i
    return json.dumps(t).encode()


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    (OUT / "models").mkdir(parents=True)
    cases = {
        "about": "made by tools/make_bad_inputs.py; run by tests/bad_inputs.rs (CLI) and tests/browser/bad-corpus.test.mjs (page)",
        "good_image": "images/good.png",
        "images": images(),
        "prompts": prompts(),
        "models": models(),
    }
    (OUT / "images" / "good.png").write_bytes(save(scene(64, 64), "PNG"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=True) + "\n")
    n = sum(len(cases[k]) for k in ("images", "prompts", "models"))
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{n} cases, {size / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
