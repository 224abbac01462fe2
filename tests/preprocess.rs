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

/// Pillow unpacks a 16-bit RGB PNG to its high bytes; so does glimpse, so the pixels equal those
/// of the 8-bit image made of the high bytes.
#[test]
fn sixteen_bit_png_uses_the_high_byte() {
    let (w, h) = (29u32, 17u32);
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 2000 + 77) as u16,
            (y * 3000 + 300) as u16,
            ((x + y) * 1500) as u16,
        ])
    });
    let rgb8 = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb(rgb16.get_pixel(x, y).0.map(|v| (v >> 8) as u8))
    });
    let png = |img: image::DynamicImage| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let a = decode(&png(image::DynamicImage::ImageRgb16(rgb16))).unwrap();
    let b = decode(&png(image::DynamicImage::ImageRgb8(rgb8))).unwrap();
    assert_eq!(a.data, b.data);
}

/// An EXIF Orientation of 6 (rotate 90° clockwise) in a PNG's eXIf chunk is applied on decode.
#[test]
fn exif_orientation_is_applied() {
    let (w, h) = (5u32, 3u32);
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 40) as u8, (y * 80) as u8, 7]));
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let png = png.into_inner();
    // TIFF header (big-endian), one IFD entry: Orientation (0x0112), SHORT, 1 value, 6
    let exif: Vec<u8> = [
        &b"MM\0*\0\0\0\x08\0\x01"[..],
        &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0],
        &[0, 0, 0, 0],
    ]
    .concat();
    let mut chunk = b"eXIf".to_vec();
    chunk.extend(&exif);
    let crc = crc32(&chunk);
    let after_ihdr = 8 + 25; // signature, then IHDR (length, type, 13 bytes, CRC); eXIf precedes IDAT
    let mut out = png[..after_ihdr].to_vec();
    out.extend((exif.len() as u32).to_be_bytes());
    out.extend(&chunk);
    out.extend(crc.to_be_bytes());
    out.extend(&png[after_ihdr..]);
    let decoded = decode(&out).unwrap();
    let rotated = image::imageops::rotate90(&img);
    assert_eq!((decoded.width, decoded.height), (h as usize, w as usize));
    assert_eq!(decoded.data, rotated.into_raw());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
