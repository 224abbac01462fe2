//! Image preprocessing that matches the Hugging Face image processors (CLIPImageProcessor,
//! ViTImageProcessor, BlipImageProcessor): decode (EXIF orientation applied), RGB conversion
//! (transparency composited onto white, grayscale replicated), resize with Pillow's filters,
//! center crop, rescale, normalize. Output: f32 `[3, H, W]`.

pub mod resample;
pub mod tiles;

use std::io::Cursor;

use image::ImageDecoder;
use serde::Deserialize;

use crate::error::{Error, Result};
use resample::Filter;

/// `size` / `crop_size` in preprocessor_config.json: either a fixed height × width or a
/// shortest edge (the other side keeps the aspect ratio).
#[derive(Debug, Clone, Deserialize)]
pub struct SizeSpec {
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub shortest_edge: Option<usize>,
    /// Idefics3's `size` and `max_image_size`
    pub longest_edge: Option<usize>,
}

/// The fields of preprocessor_config.json that decide the pixels (Hugging Face names).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageProcessorConfig {
    #[serde(default)]
    pub image_processor_type: Option<String>,
    #[serde(default = "yes")]
    pub do_resize: bool,
    pub size: Option<SizeSpec>,
    /// Pillow filter number: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic
    #[serde(default = "bicubic")]
    pub resample: u32,
    #[serde(default)]
    pub do_center_crop: bool,
    pub crop_size: Option<SizeSpec>,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "one_over_255")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default)]
    pub image_mean: Vec<f32>,
    #[serde(default)]
    pub image_std: Vec<f32>,
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
    /// Idefics3: cut the image into `max_image_size` tiles plus a global view ([`tiles`])
    #[serde(default)]
    pub do_image_splitting: bool,
    /// Idefics3: the side of one tile (`{"longest_edge": 512}`)
    #[serde(default)]
    pub max_image_size: Option<SizeSpec>,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn one_over_255() -> f64 {
    1.0 / 255.0
}

/// An 8-bit RGB image, interleaved.
#[derive(Debug, Clone)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Preprocessed pixels `[3, height, width]`.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// The largest width or height [`decode`] accepts.
pub const MAX_SIDE: u32 = 16384;
/// The most memory [`decode`] lets a decoder allocate.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// The most pixels a preprocessing step may produce (the resize, the center crop, the final
/// `[3, H, W]` tensor): 16.8 M, 48 MiB as RGB8 and 192 MiB as f32. The processors glimpse runs
/// make 224² to 384² pixels; only an implausible preprocessor_config.json size or a strip-shaped
/// image under a shortest-edge resize comes near (transformers would allocate a 1×16384 image
/// resized to shortest edge 224, 224×3.67 M pixels or 2.4 GB, then crop it).
pub const MAX_OUTPUT_PIXELS: usize = 1 << 24;
/// The longest side a preprocessing step may produce (the resampling coefficient tables grow with it).
pub const MAX_OUTPUT_SIDE: usize = 1 << 16;
/// The most one side of an image may exceed the other for a shortest-edge resize, where the long
/// side grows with the ratio (a 1×200 strip at shortest edge 224 is 224×44800 before its crop).
/// 200:1 is the ratio Qwen2-VL's image processor also refuses past; fixed-size resizes
/// (`height` and `width`) take any ratio, as transformers does.
pub const MAX_ASPECT_RATIO: usize = 200;

/// Checks the size a preprocessing step would produce against [`MAX_OUTPUT_SIDE`] and
/// [`MAX_OUTPUT_PIXELS`] before it is allocated.
pub(crate) fn check_output(step: &str, w: usize, h: usize, ow: usize, oh: usize) -> Result<()> {
    let pixels = ow.checked_mul(oh).filter(|&n| n <= MAX_OUTPUT_PIXELS);
    if pixels.is_none() || ow > MAX_OUTPUT_SIDE || oh > MAX_OUTPUT_SIDE {
        return Err(Error::Image(format!(
            "{step} a {w}×{h} image to {ow}×{oh} pixels is past glimpse's caps of {MAX_OUTPUT_SIDE} pixels a side and {MAX_OUTPUT_PIXELS} pixels in all: the image or preprocessor_config.json's size is implausible"
        )));
    }
    Ok(())
}

/// Decodes PNG, JPEG, WebP or GIF (its first frame) bytes to RGB: EXIF orientation applied, any transparency
/// composited onto white (as `transformers.image_transforms.convert_to_rgb`), gray replicated.
pub fn decode(bytes: &[u8]) -> Result<Rgb8> {
    if bytes.is_empty() {
        return Err(Error::Image("the image file is empty (0 bytes)".into()));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot read the image: {e}")))?;
    // a huge image is refused before its pixels are allocated (a wasm heap has 4 GiB at most)
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(Error::Image(
            "not an image glimpse can read (PNG, JPEG, WebP or GIF expected)".into(),
        ));
    }
    let too_big = |e: image::ImageError| {
        match e {
        image::ImageError::Limits(_) => Error::Image(format!(
            "the image is too large: glimpse reads images up to {MAX_SIDE}×{MAX_SIDE} pixels and {} MiB decoded",
            MAX_DECODED_BYTES >> 20
        )),
        e => Error::Image(format!("cannot decode the image: {e}")),
    }
    };
    let mut decoder = reader.into_decoder().map_err(too_big)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => too_big(e),
        e => Error::Image(format!("the image is damaged or truncated: {e}")),
    })?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::Image("the image has no pixels".into()));
    }
    // 16-bit images keep their high byte, as Pillow unpacks 16-bit RGB PNGs (transformers sees
    // those 8-bit values). For 16-bit grayscale Pillow's I;16 -> RGB conversion would clip every
    // value above 255 to white; glimpse keeps the high byte there too, deliberately.
    if img.color().bytes_per_pixel() == 2 * img.color().channel_count() {
        let had_alpha = img.color().has_alpha();
        let rgba16 = img.to_rgba16();
        let (w, h) = rgba16.dimensions();
        let high: Vec<u8> = rgba16
            .into_raw()
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect();
        let rgba8 = image::RgbaImage::from_raw(w, h, high)
            .ok_or_else(|| Error::Image("16-bit image conversion".into()))?;
        img = if had_alpha {
            image::DynamicImage::ImageRgba8(rgba8)
        } else {
            image::DynamicImage::ImageRgb8(image::DynamicImage::ImageRgba8(rgba8).to_rgb8())
        };
    }
    let data = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        rgba.pixels()
            .flat_map(|p| composite_on_white(p.0))
            .collect()
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(Rgb8 {
        width,
        height,
        data,
    })
}

/// Pillow's `alpha_composite` of a pixel over opaque white (AlphaComposite.c, 7-bit precision).
fn composite_on_white([r, g, b, a]: [u8; 4]) -> [u8; 3] {
    if a == 0 {
        return [255, 255, 255];
    }
    const PREC: u32 = 7;
    let a = a as u32;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PREC) / outa255;
    let coef2 = 255 * (1 << PREC) - coef1;
    let div255 = |v: u32| ((v >> 8) + v) >> 8;
    let mix = |c: u8| (div255(c as u32 * coef1 + 255 * coef2 + (0x80 << PREC)) >> PREC) as u8;
    [mix(r), mix(g), mix(b)]
}

/// Defaults of the image processor classes glimpse implements (transformers' `__init__`
/// defaults), and whether an integer `size` means a square (`default_to_square`).
fn class_defaults(class: &str) -> Option<(&'static str, bool)> {
    Some(match class {
        "CLIPImageProcessor" => (
            r#"{"do_resize": true, "size": {"shortest_edge": 224}, "resample": 3,
                "do_center_crop": true, "crop_size": {"height": 224, "width": 224},
                "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": true}"#,
            false,
        ),
        "ViTImageProcessor" => (
            r#"{"do_resize": true, "size": {"height": 224, "width": 224}, "resample": 2,
                "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#,
            true,
        ),
        "BlipImageProcessor" => (
            r#"{"do_resize": true, "size": {"height": 384, "width": 384}, "resample": 3,
                "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": true}"#,
            true,
        ),
        // the same defaults for SmolVLM's class (SmolVLMImageProcessor)
        "Idefics3ImageProcessor" | "SmolVLMImageProcessor" => (
            r#"{"do_resize": true, "size": {"longest_edge": 1456}, "resample": 1,
                "do_image_splitting": true, "max_image_size": {"longest_edge": 364},
                "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "do_convert_rgb": true}"#,
            false,
        ),
        _ => return None,
    })
}

/// The image processor class a model type uses when preprocessor_config.json names none
/// (transformers' AutoImageProcessor mapping).
fn class_of_model(model_type: &str) -> &'static str {
    match model_type {
        "git" | "clip" => "CLIPImageProcessor",
        "blip" => "BlipImageProcessor",
        "vit" | "vision-encoder-decoder" => "ViTImageProcessor",
        "idefics3" => "Idefics3ImageProcessor",
        "smolvlm" => "SmolVLMImageProcessor",
        _ => "",
    }
}

/// transformers' `get_size_dict`: an integer is a square (`default_to_square`) or the shortest
/// edge; a pair is (height, width).
fn size_dict(v: &serde_json::Value, square: bool) -> serde_json::Value {
    use serde_json::{json, Value};
    match v {
        Value::Number(n) if square => json!({"height": n, "width": n}),
        Value::Number(n) => json!({"shortest_edge": n}),
        Value::Array(a) if a.len() == 2 => json!({"height": a[0], "width": a[1]}),
        other => other.clone(),
    }
}

impl ImageProcessorConfig {
    /// preprocessor_config.json as the hub holds it (no model type to go by).
    pub fn from_json(text: &str) -> Result<ImageProcessorConfig> {
        Self::from_json_for(text, "")
    }

    /// preprocessor_config.json of a model of `model_type` (config.json's): current files and
    /// the legacy `feature_extractor_type` form with integer `size` / `crop_size` and missing
    /// fields, which take the processor class's defaults as transformers gives them.
    pub fn from_json_for(text: &str, model_type: &str) -> Result<ImageProcessorConfig> {
        let file = "preprocessor_config.json";
        let mut given = crate::io::config::value(file, text)?;
        crate::io::config::strip_nulls(&mut given);
        let named = given
            .get("image_processor_type")
            .or_else(|| given.get("feature_extractor_type"))
            .and_then(|v| v.as_str())
            .map(|s| {
                s.replace("FeatureExtractor", "ImageProcessor")
                    .replace("Fast", "")
            });
        let class = named.unwrap_or_else(|| class_of_model(model_type).to_string());
        let (mut merged, square) = match class_defaults(&class) {
            Some((d, square)) => (crate::io::config::value("defaults", d)?, square),
            None => (serde_json::json!({}), true),
        };
        if let Some(obj) = given.as_object_mut() {
            if let Some(s) = obj.get("size") {
                let s = size_dict(s, square);
                obj.insert("size".into(), s);
            }
            if let Some(s) = obj.get("crop_size") {
                let s = size_dict(s, true);
                obj.insert("crop_size".into(), s);
            }
        }
        // a given size dict replaces the default one whole (not merged key by key)
        if let (Some(m), Some(g)) = (merged.as_object_mut(), given.as_object()) {
            for k in ["size", "crop_size"] {
                if g.contains_key(k) {
                    m.remove(k);
                }
            }
        }
        crate::io::config::merge(&mut merged, given);
        let mut cfg: ImageProcessorConfig = crate::io::config::from_value(file, merged)?;
        cfg.image_processor_type = Some(class).filter(|c| !c.is_empty());
        if cfg.do_normalize && (cfg.image_mean.len() != 3 || cfg.image_std.len() != 3) {
            return Err(Error::Config(
                "preprocessor_config.json: image_mean and image_std need 3 values each".into(),
            ));
        }
        if Filter::from_pil(cfg.resample).is_none() {
            return Err(Error::Config(format!(
                "preprocessor_config.json: resample = {} is not supported (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic)",
                cfg.resample
            )));
        }
        if cfg.do_resize && cfg.size.is_none() {
            return Err(Error::Config(
                "preprocessor_config.json: do_resize without size".into(),
            ));
        }
        Ok(cfg)
    }

    /// The (height, width) the resize step produces for an image of `h`×`w`.
    fn resize_target(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let size = self.size.as_ref().ok_or_else(|| {
            Error::Config("preprocessor_config.json: do_resize without size".into())
        })?;
        match (size.shortest_edge, size.height, size.width) {
            (Some(s), _, _) => {
                // transformers' get_resize_output_image_size(default_to_square=False): int() truncates
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                if long > short.saturating_mul(MAX_ASPECT_RATIO) {
                    return Err(Error::Image(format!(
                        "the image is {w}×{h} pixels, an aspect ratio of {:.0}:1; resizing its shortest edge to {s} needs at most {MAX_ASPECT_RATIO}:1 (crop the image first)",
                        long as f64 / short.max(1) as f64
                    )));
                }
                let new_long = (s as f64 * long as f64 / short as f64) as usize;
                Ok(if w <= h { (new_long, s) } else { (s, new_long) })
            }
            (None, Some(hh), Some(ww)) => Ok((hh, ww)),
            _ => Err(Error::Config(
                "preprocessor_config.json: size needs shortest_edge or height and width".into(),
            )),
        }
    }

    /// Runs the processor on a decoded image.
    pub fn preprocess(&self, img: &Rgb8) -> Result<Pixels> {
        let (mut w, mut h) = (img.width, img.height);
        if w.checked_mul(h).and_then(|n| n.checked_mul(3)) != Some(img.data.len()) || w * h == 0 {
            return Err(Error::Image(format!(
                "a {w}×{h} RGB image needs {w}·{h}·3 bytes, it has {}",
                img.data.len()
            )));
        }
        let mut data = img.data.clone();
        if self.do_resize {
            let (oh, ow) = self.resize_target(h, w)?;
            if oh == 0 || ow == 0 {
                return Err(Error::Image(format!(
                    "a {w}×{h} image is too thin to resize"
                )));
            }
            // the pass between the two (see resample::resize_rgb8) is never larger than the
            // input or the output
            check_output("resizing", w, h, ow, oh)?;
            let filter = Filter::from_pil(self.resample).unwrap_or(Filter::Bicubic);
            data = resample::resize_rgb8(&data, w, h, ow, oh, filter);
            (w, h) = (ow, oh);
        }
        if self.do_center_crop {
            let crop = self.crop_size.as_ref().ok_or_else(|| {
                Error::Config("preprocessor_config.json: do_center_crop without crop_size".into())
            })?;
            let (ch, cw) = match (crop.height, crop.width, crop.shortest_edge) {
                (Some(ch), Some(cw), _) => (ch, cw),
                (_, _, Some(s)) => (s, s),
                _ => {
                    return Err(Error::Config(
                        "preprocessor_config.json: crop_size needs height and width".into(),
                    ))
                }
            };
            check_output("cropping", w, h, cw, ch)?;
            data = center_crop(&data, w, h, cw, ch);
            (w, h) = (cw, ch);
        }
        // without a resize or a crop the tensor has the decoded image's size
        check_output("preprocessing", w, h, w, h)?;
        Ok(self.normalize(&data, w, h))
    }

    /// Rescale and normalize an 8-bit RGB image into `[3, h, w]` pixels.
    pub(crate) fn normalize(&self, data: &[u8], w: usize, h: usize) -> Pixels {
        let scale = if self.do_rescale {
            self.rescale_factor
        } else {
            1.0
        };
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            let (mean, std) = if self.do_normalize {
                (self.image_mean[c], self.image_std[c])
            } else {
                (0.0, 1.0)
            };
            for i in 0..h * w {
                // as numpy: rescale in f64, cast to f32, then normalize in f32
                let x = (data[i * 3 + c] as f64 * scale) as f32;
                out[c * h * w + i] = (x - mean) / std;
            }
        }
        Pixels {
            height: h,
            width: w,
            data: out,
        }
    }
}

/// transformers' center_crop: top = (H - ch) // 2, left = (W - cw) // 2; zero padding where the
/// crop is larger than the image.
fn center_crop(src: &[u8], w: usize, h: usize, cw: usize, ch: usize) -> Vec<u8> {
    let top = (h as i64 - ch as i64).div_euclid(2);
    let left = (w as i64 - cw as i64).div_euclid(2);
    let mut out = vec![0u8; cw * ch * 3];
    for y in 0..ch {
        let sy = top + y as i64;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        for x in 0..cw {
            let sx = left + x as i64;
            if sx < 0 || sx >= w as i64 {
                continue;
            }
            let s = (sy as usize * w + sx as usize) * 3;
            out[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}
