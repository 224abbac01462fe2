//! Issue 11 (hardening), fuzzing: every input a fuzz target (fuzz/, docs/hardening.md) crashed,
//! ran out of memory or hung on stays fixed. `tests/fuzz/<target>/*` go through the same
//! `glimpse::fuzzing::<target>` function the fuzzer calls, and each must give the error written
//! next to it in [`KNOWN`]; the committed seed corpora (`fuzz/seeds/<target>/*`) must load and
//! run without error, so the targets keep reaching the real load path.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]) -> glimpse::Result<()>;

const TARGETS: &[(&str, Target)] = &[
    ("safetensors", glimpse::fuzzing::safetensors),
    ("gguf", glimpse::fuzzing::gguf),
    ("torch", glimpse::fuzzing::torch),
    ("pickle", glimpse::fuzzing::pickle),
    ("config", glimpse::fuzzing::config),
    ("tokenizer", glimpse::fuzzing::tokenizer),
    ("image", glimpse::fuzzing::image),
];

/// (target, file in tests/fuzz/<target>/, a part of the error it must give, or "" where the
/// input is fine and must now load). Every file there is listed; what each was is in
/// docs/hardening.md.
const KNOWN: &[(&str, &str, &str)] = &[
    // a 16384×1 (and 1×16384) PNG under CLIP's shortest-edge 224: 224×3.67 M pixels (2.4 GB)
    ("image", "strip_16384x1.png", "an aspect ratio of 16384:1"),
    ("image", "strip_1x16384.png", "an aspect ratio of 16384:1"),
    // a 323-byte JPEG that decodes to 3072×4096 (the decoder pads the missing data): the five
    // resizes took over 10 s under the fuzzer (a timeout); the resampler now sums the three
    // channels together and runs the vertical pass along rows (bit-identical, 1.7× faster)
    ("image", "jpeg_3072x4096_from_323_bytes.jpg", ""),
    // CLIP's slow tokenizer (vocab.json + merges.txt) decoding no ids: tokenizers' BPE decoder
    // computed `tokens.len() - 1` (overflow)
    ("tokenizer", "clip_bpe_decode_nothing", ""),
    // a syntax error inside tokenizer.json's decoder field (tokenizers deserializes it with an
    // `expect`): by hand, and as the GGUF metadata the fuzzer changed
    (
        "tokenizer",
        "decoder_json_syntax_error",
        "tokenizer.json is not valid JSON",
    ),
    // the same `expect` on a string escape that is no character (serde_json's IgnoredAny, the
    // first check, let it through): by hand (a lone surrogate) and the fuzzer's
    (
        "tokenizer",
        "decoder_lone_surrogate",
        "tokenizer.json is not valid JSON",
    ),
    (
        "tokenizer",
        "decoder_invalid_code_point",
        "tokenizer.json is not valid JSON",
    ),
    // a Precompiled (SentencePiece) normalizer, by hand after reading tokenizers' code: an
    // `expect` on its charsmap, and a charsmap whose first bytes reserve 8 GB
    (
        "tokenizer",
        "precompiled_charsmap_not_base64",
        "the Precompiled normalizer",
    ),
    (
        "tokenizer",
        "precompiled_charsmap_claims_8gb",
        "the Precompiled normalizer",
    ),
    (
        "gguf",
        "tokenizer_decoder_syntax_error.gguf",
        "tokenizer.json is not valid JSON",
    ),
    // a GGUF tensor of 2^62 f32 values: its byte count overflowed (by hand, and the fuzzer's)
    (
        "gguf",
        "tensor_bytes_overflow_min.gguf",
        "is larger than any file",
    ),
    (
        "gguf",
        "tensor_bytes_overflow.gguf",
        "is larger than any file",
    ),
    // data.pkl read by candle's pickle VM: a BINUNICODE claiming 4 GB was allocated before it
    // was read (the fuzzer's pytorch_model.bin, and the pickle alone); glimpse reads pickles
    // with its own bounded reader (io::pickle) since
    ("torch", "pickle_string_claims_4gb.bin", "runs past its end"),
    ("pickle", "string_claims_4gb.pkl", "runs past its end"),
    // the same VM's other unchecked paths, by hand: LONG1 shifted past 64 bits, a tensor's
    // arguments indexed without a length check, memo fetches deep-copied (2^40 values from
    // 200 bytes), and a tensor whose strides overflow its byte range
    ("pickle", "long1_200_bytes.pkl", "an integer of 200 bytes"),
    ("pickle", "rebuild_tensor_short_args.pkl", ""),
    ("pickle", "memo_doubling.pkl", "holds no state dict"),
    ("pickle", "stride_overflow.pkl", "reach past any file"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn crashes_found_by_fuzzing_are_clear_errors() {
    let mut seen = 0;
    for (target, run) in TARGETS {
        for path in files(&root().join("tests/fuzz").join(target)) {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let want = KNOWN
                .iter()
                .find(|(t, f, _)| t == target && *f == name)
                .map(|(_, _, m)| *m)
                .unwrap_or_else(|| panic!("tests/fuzz/{target}/{name} is not listed in KNOWN"));
            let bytes = std::fs::read(&path).unwrap();
            let err = match (run(&bytes), want) {
                (Ok(()), "") => {
                    seen += 1;
                    continue;
                }
                (Ok(()), _) => panic!("{target}/{name}: loaded without error"),
                (Err(e), _) => e.to_string(),
            };
            assert!(
                !want.is_empty(),
                "{target}/{name} should load, it gives {err:?}"
            );
            assert!(
                err.contains(want),
                "{target}/{name}: the error should say {want:?}, it is {err:?}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, KNOWN.len(), "a file listed in KNOWN is missing");
}

#[test]
fn seed_corpora_load_and_run() {
    for (target, run) in TARGETS {
        let seeds = files(&root().join("fuzz/seeds").join(target));
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for path in seeds {
            let bytes = std::fs::read(&path).unwrap();
            if let Err(e) = run(&bytes) {
                panic!("seed {}: {e}", path.display());
            }
        }
    }
}
