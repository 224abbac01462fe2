//! Pixels: our decode + resize + crop + normalize against the Hugging Face image processors
//! (Pillow underneath) on images of several sizes, aspect ratios and modes.

mod common;

use common::*;
use glimpse::image::{decode, ImageProcessorConfig};

fn check_model(model: &str) {
    let dir = fixture(model);
    let cfg = ImageProcessorConfig::from_json(
        &std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let reference = read_json(&dir.join("reference.json"));
    let images = reference["images"].as_object().unwrap();
    assert!(images.len() >= 5);
    for (name, entry) in images {
        let bytes = std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap();
        let pixels = cfg.preprocess(&decode(&bytes).unwrap()).unwrap();
        let want = f32s(&entry["pixel_values"]);
        assert_eq!(pixels.data.len(), want.len(), "{model}/{name}");
        // Pillow's integer resampling is reproduced exactly, so the only differences are the
        // reference's 7-decimal rounding in JSON and float rounding: 1e-5 is far below one 8-bit
        // step (1/255/std ≈ 0.014).
        assert_close(
            &format!("{model}/{name} pixels"),
            &pixels.data,
            &want,
            1e-5,
            0.0,
        );
    }
}

#[test]
fn git_pixels_match_transformers() {
    check_model("git");
}

#[test]
fn clip_pixels_match_transformers() {
    check_model("clip");
}

#[test]
fn vit_gpt2_pixels_match_transformers() {
    // bilinear to a fixed size: also the case where Pillow runs its vertical pass first
    check_model("vit-gpt2");
}

#[test]
fn broken_images_are_clear_errors() {
    let err = decode(&[]).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let err = decode(b"this is not an image at all")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an image"), "{err}");
    let png = std::fs::read(fixture("images").join("square_32.png")).unwrap();
    let err = decode(&png[..png.len() / 2]).unwrap_err().to_string();
    assert!(
        err.contains("damaged or truncated") || err.contains("cannot decode"),
        "{err}"
    );
}
