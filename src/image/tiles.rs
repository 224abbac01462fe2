//! Idefics3's image processor (SmolVLM): the image is resized so its longest edge is
//! `size.longest_edge`, then up to the next multiples of the tile side (`max_image_size`), cut
//! into tiles row by row, and followed by the whole image squashed to one tile (the "global"
//! view). Each step is Pillow's LANCZOS on 8-bit RGB, as transformers' processor does without
//! torchvision, so the pixels equal the reference's.

use super::resample::{resize_rgb8, Filter};
use super::{check_output, ImageProcessorConfig, Pixels, Rgb8};
use crate::error::{Error, Result};

/// transformers' MAX_IMAGE_SIZE for Idefics3: no side grows past it.
const MAX_SIDE: usize = 4096;

/// The tiles of one image: `rows × cols` tiles in row-major order, then the global view
/// (`rows = cols = 0`: only the global view).
#[derive(Debug, Clone)]
pub struct Tiles {
    pub rows: usize,
    pub cols: usize,
    /// `[3, T, T]` each
    pub frames: Vec<Pixels>,
}

/// `_resize_output_size_rescale_to_max_len` then `_resize_output_size_scale_below_upper_bound`:
/// the longest edge to `longest`, the other side truncated and rounded up to even.
fn longest_edge_size(h: usize, w: usize, longest: usize) -> (usize, usize) {
    let (mut h, mut w) = (h, w);
    let ar = w as f64 / h as f64;
    if w >= h {
        w = longest;
        h = (w as f64 / ar) as usize;
        h += h % 2;
    } else {
        h = longest;
        w = (h as f64 * ar) as usize;
        w += w % 2;
    }
    (h, w) = (h.max(1), w.max(1));
    let ar = w as f64 / h as f64;
    if w >= h && w > MAX_SIDE {
        w = MAX_SIDE;
        h = (w as f64 / ar) as usize;
    } else if h > w && h > MAX_SIDE {
        h = MAX_SIDE;
        w = (h as f64 * ar) as usize;
    }
    (h.max(1), w.max(1))
}

/// `resize_for_vision_encoder`: both sides up to multiples of the tile side `t`, the aspect
/// ratio kept through the longer side.
fn tile_multiple_size(h: usize, w: usize, t: usize) -> (usize, usize) {
    let ar = w as f64 / h as f64;
    let up = |v: usize| v.div_ceil(t) * t;
    if w >= h {
        let w = up(w);
        let h = (w as f64 / ar) as usize;
        (up(h), w)
    } else {
        let h = up(h);
        let w = (h as f64 * ar) as usize;
        (h, up(w))
    }
}

fn resize(img: &[u8], w: usize, h: usize, ow: usize, oh: usize, f: Filter) -> Result<Vec<u8>> {
    if ow == 0 || oh == 0 {
        return Err(Error::Image(format!(
            "a {w}×{h} image is too thin to resize"
        )));
    }
    check_output("resizing", w, h, ow, oh)?;
    Ok(resize_rgb8(img, w, h, ow, oh, f))
}

/// Rows `y0..y0+t`, columns `x0..x0+t` of an RGB image `w` wide.
fn crop(img: &[u8], w: usize, x0: usize, y0: usize, t: usize) -> Vec<u8> {
    (y0..y0 + t)
        .flat_map(|y| &img[(y * w + x0) * 3..(y * w + x0 + t) * 3])
        .copied()
        .collect()
}

impl ImageProcessorConfig {
    /// The tile side (`max_image_size.longest_edge`), when this is a tiling processor.
    pub fn tile_size(&self) -> Option<usize> {
        self.max_image_size.as_ref().and_then(|s| s.longest_edge)
    }

    /// Runs Idefics3's processor on a decoded image.
    pub fn preprocess_tiles(&self, img: &Rgb8) -> Result<Tiles> {
        let t = self.tile_size().ok_or_else(|| {
            Error::Config("preprocessor_config.json: max_image_size.longest_edge is missing".into())
        })?;
        if !(1..=MAX_SIDE).contains(&t) {
            return Err(Error::Config(format!(
                "preprocessor_config.json: max_image_size.longest_edge = {t} must be between 1 and {MAX_SIDE}"
            )));
        }
        let (mut w, mut h) = (img.width, img.height);
        if w.checked_mul(h).and_then(|n| n.checked_mul(3)) != Some(img.data.len()) || w * h == 0 {
            return Err(Error::Image(format!(
                "a {w}×{h} RGB image needs {w}·{h}·3 bytes, it has {}",
                img.data.len()
            )));
        }
        let filter = Filter::from_pil(self.resample).unwrap_or(Filter::Lanczos);
        let mut data = img.data.clone();
        if self.do_resize {
            let longest = self
                .size
                .as_ref()
                .and_then(|s| s.longest_edge)
                .ok_or_else(|| {
                    Error::Config("preprocessor_config.json: size.longest_edge is missing".into())
                })?;
            let (oh, ow) = longest_edge_size(h, w, longest);
            data = resize(&data, w, h, ow, oh, filter)?;
            (w, h) = (ow, oh);
        }
        let mut frames = Vec::new();
        let (mut rows, mut cols) = (0, 0);
        if self.do_image_splitting {
            let (oh, ow) = tile_multiple_size(h, w, t);
            data = resize(&data, w, h, ow, oh, filter)?;
            (w, h) = (ow, oh);
            if h > t || w > t {
                (rows, cols) = (h / t, w / t);
                for r in 0..rows {
                    for c in 0..cols {
                        frames.push(self.normalize(&crop(&data, w, c * t, r * t, t), t, t));
                    }
                }
            }
        }
        // the global view: the whole image squashed to one tile (the same image when it
        // already is one tile: Pillow copies a same-size resize)
        let global = resize(&data, w, h, t, t, filter)?;
        frames.push(self.normalize(&global, t, t));
        Ok(Tiles { rows, cols, frames })
    }
}

/// Idefics3Processor's text for one image of `rows × cols` tiles (`rows = cols = 0`: the
/// global view only), `seq` image tokens per tile.
pub fn image_prompt(rows: usize, cols: usize, seq: usize) -> String {
    const FAKE: &str = "<fake_token_around_image>";
    let run = "<image>".repeat(seq);
    let global = format!("{FAKE}<global-img>{run}{FAKE}");
    if rows == 0 && cols == 0 {
        return global;
    }
    let mut s = String::new();
    for r in 1..=rows {
        for c in 1..=cols {
            s += &format!("{FAKE}<row_{r}_col_{c}>{run}");
        }
        s.push('\n');
    }
    s + "\n" + &global
}

/// The processor's prompt: each `<image>` of the rendered conversation replaced by its image's
/// tiles (`grids[i]` = (rows, cols) of image i).
pub fn expand_images(text: &str, grids: &[(usize, usize)], seq: usize) -> Result<String> {
    let pieces: Vec<&str> = text.split("<image>").collect();
    if pieces.len() - 1 != grids.len() {
        return Err(Error::Invalid(format!(
            "the conversation shows {} image(s) but {} were given: one image per conversation, in its first user turn",
            pieces.len() - 1,
            grids.len()
        )));
    }
    let mut out = pieces[0].to_string();
    for (&(rows, cols), rest) in grids.iter().zip(&pieces[1..]) {
        out += &image_prompt(rows, cols, seq);
        out += rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_transformers_arithmetic() {
        // 40×64 (h×w) to longest edge 64: h = int(64 / 1.6) = 40
        assert_eq!(longest_edge_size(40, 64, 64), (40, 64));
        // 57×23: w = int(64 · 23/57) = 25, rounded up to even
        assert_eq!(longest_edge_size(57, 23, 64), (64, 26));
        // then to multiples of 32: the long side first, the short from the aspect ratio
        assert_eq!(tile_multiple_size(40, 64, 32), (64, 64));
        assert_eq!(tile_multiple_size(64, 26, 32), (64, 32));
        // a strip stays at least one pixel thin
        assert_eq!(longest_edge_size(1, 5000, 2048), (1, 2048));
    }

    #[test]
    fn prompt_lays_out_rows_then_the_global_view() {
        let p = image_prompt(1, 2, 1);
        assert_eq!(
            p,
            "<fake_token_around_image><row_1_col_1><image><fake_token_around_image><row_1_col_2><image>\n\n<fake_token_around_image><global-img><image><fake_token_around_image>"
        );
        assert_eq!(
            image_prompt(0, 0, 2),
            "<fake_token_around_image><global-img><image><image><fake_token_around_image>"
        );
    }
}
