//! Pillow's resampling, reproduced exactly. Hugging Face image processors resize with
//! `PIL.Image.resize` on 8-bit images: separable convolution, horizontal pass first, coefficients
//! in 22-bit fixed point, and the intermediate image rounded to 8 bits. Matching that bit for bit
//! is what makes our pixel values equal to the reference (within float rounding), not merely
//! close; the `image` crate's filters differ in support, normalization and rounding.
//! (Pillow: src/libImaging/Resample.c, `precompute_coeffs` and `normalize_coeffs_8bpc`.)

/// Pillow's filters by their `resample` number in preprocessor_config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
}

impl Filter {
    /// 0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC (Pillow's numbering); others are not
    /// supported.
    pub fn from_pil(code: u32) -> Option<Filter> {
        match code {
            0 => Some(Filter::Nearest),
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Lanczos => 3.0,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        // Pillow's filters (Resample.c); all but lanczos are symmetric
        let ax = x.abs();
        match self {
            // sinc(x)·sinc(x/3) on [-3, 3), as lanczos_filter (not symmetric at ±3)
            Filter::Lanczos => {
                let sinc = |x: f64| {
                    if x == 0.0 {
                        1.0
                    } else {
                        let x = x * std::f64::consts::PI;
                        x.sin() / x
                    }
                };
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Nearest => 0.0,
            Filter::Bilinear => {
                if ax < 1.0 {
                    1.0 - ax
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if ax < 1.0 {
                    ((A + 2.0) * ax - (A + 3.0)) * ax * ax + 1.0
                } else if ax < 2.0 {
                    (((ax - 5.0) * ax + 8.0) * ax - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: the first input index and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| filter.eval((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let one = (1i64 << PRECISION_BITS) as f64;
            let fixed = k
                .iter()
                .map(|&w| {
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass along x (`horizontal`) or y, rounding to 8 bits as Pillow does. The
/// three channels of a pixel are summed together, and the vertical pass runs along whole rows
/// (the sums are exact integers, so the order does not change a bit of the result): a 12 MP
/// photo's downscale reads every input byte once per pass, in memory order.
fn pass(
    src: &[u8],
    w: usize,
    h: usize,
    out_len: usize,
    filter: Filter,
    horizontal: bool,
) -> Vec<u8> {
    const HALF: i64 = 1 << (PRECISION_BITS - 1);
    let in_len = if horizontal { w } else { h };
    let coeffs = coefficients(in_len, out_len, filter);
    if horizontal {
        let mut out = vec![0u8; out_len * h * 3];
        for (row, out_row) in src
            .chunks_exact(w * 3)
            .zip(out.chunks_exact_mut(out_len * 3))
        {
            for ((start, k), o) in coeffs.iter().zip(out_row.chunks_exact_mut(3)) {
                let mut ss = [HALF; 3];
                let taps = &row[start * 3..(start + k.len()) * 3];
                for (px, &kw) in taps.chunks_exact(3).zip(k) {
                    for (s, &v) in ss.iter_mut().zip(px) {
                        *s += v as i64 * kw as i64;
                    }
                }
                for (d, s) in o.iter_mut().zip(ss) {
                    *d = clip8(s);
                }
            }
        }
        out
    } else {
        let mut out = vec![0u8; w * out_len * 3];
        let mut acc = vec![0i64; w * 3];
        for ((start, k), out_row) in coeffs.iter().zip(out.chunks_exact_mut(w * 3)) {
            acc.fill(HALF);
            for (i, &kw) in k.iter().enumerate() {
                let row = &src[(start + i) * w * 3..(start + i + 1) * w * 3];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v as i64 * kw as i64;
                }
            }
            for (d, &a) in out_row.iter_mut().zip(&acc) {
                *d = clip8(a);
            }
        }
        out
    }
}

/// Resizes an interleaved RGB8 image (`w`×`h`) to `ow`×`oh` as Pillow does.
pub fn resize_rgb8(
    src: &[u8],
    w: usize,
    h: usize,
    ow: usize,
    oh: usize,
    filter: Filter,
) -> Vec<u8> {
    if filter == Filter::Nearest {
        return nearest(src, w, h, ow, oh);
    }
    // Pillow (13) runs the horizontal pass first, except when the width grows while the height
    // shrinks: then the vertical pass goes first (measured against Pillow on several shapes;
    // the order changes the 8-bit rounding of the intermediate image).
    let vertical_first = ow > w && oh < h;
    match (ow != w, oh != h) {
        (false, false) => src.to_vec(),
        (true, false) => pass(src, w, h, ow, filter, true),
        (false, true) => pass(src, w, h, oh, filter, false),
        (true, true) if vertical_first => {
            pass(&pass(src, w, h, oh, filter, false), w, oh, ow, filter, true)
        }
        (true, true) => pass(&pass(src, w, h, ow, filter, true), ow, h, oh, filter, false),
    }
}

/// Pillow's NEAREST: the source pixel under each output pixel's center.
fn nearest(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        let sy = (((y as f64 + 0.5) * h as f64 / oh as f64) as usize).min(h - 1);
        for x in 0..ow {
            let sx = (((x as f64 + 0.5) * w as f64 / ow as f64) as usize).min(w - 1);
            out[(y * ow + x) * 3..(y * ow + x) * 3 + 3]
                .copy_from_slice(&src[(sy * w + sx) * 3..(sy * w + sx) * 3 + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_weights_sum_to_one() {
        let img: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&img, 5, 4, 5, 4, Filter::Bicubic), img);
        for (_, k) in coefficients(100, 37, Filter::Bicubic) {
            let s: i64 = k.iter().map(|&v| v as i64).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{s}");
        }
    }
}
