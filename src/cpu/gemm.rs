//! The f32 Linear of the wasm CPU path: `y [M, N] = x [M, K] · w [N, K]ᵀ` read straight from the
//! weight's own layout — no packing, no copy of the weight.
//!
//! Each tile holds R rows of x against C rows of w (R, C ≤ 3) and walks K four values at a time:
//! R + C vector loads feed R·C multiply-adds into R·C accumulators of four lanes, summed across
//! lanes once at the end. 3 × 3 keeps 9 accumulators and 4 operands in registers (V8 gives wasm
//! 16 SIMD registers on x64; gemm's 12 × 4 microkernel needs all 16 and spills). In Chromium on
//! this project's 2-core machine this ran CLIP's and ViT's Linears at ~1.3× the speed of gemm's
//! simd128 microkernel with its packing (bench/README.md); natively the CPU path keeps candle's
//! GEMM, which has FMA and wider vectors.
//!
//! The tile is written once over [`Lanes`]: wasm's simd128 in the browser, four plain f32 lanes
//! elsewhere. Both do the same operations in the same order (a multiply, then an add, per lane;
//! the lanes summed as `(l0 + l2) + (l1 + l3)`; a K not divisible by 4 finished one product at a
//! time), so the unit tests of the portable lanes check the tiling the browser runs.

/// Four f32 lanes and the four operations the tile needs.
pub(crate) trait Lanes {
    type V: Copy;
    fn zero() -> Self::V;
    /// # Safety
    /// `p..p + 4` is readable.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `acc + a · b`, lane by lane, rounded after the multiply and after the add.
    fn mul_add(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    fn lanes(v: Self::V) -> [f32; 4];
}

/// Plain f32 lanes (native builds and tests).
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128"),
    allow(dead_code)
)]
pub(crate) struct Portable;

impl Lanes for Portable {
    type V = [f32; 4];
    #[inline(always)]
    fn zero() -> [f32; 4] {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 4] {
        // SAFETY: the caller guarantees four readable f32s
        unsafe { [*p, *p.add(1), *p.add(2), *p.add(3)] }
    }
    #[inline(always)]
    fn mul_add(acc: [f32; 4], a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|l| acc[l] + a[l] * b[l])
    }
    #[inline(always)]
    fn lanes(v: [f32; 4]) -> [f32; 4] {
        v
    }
}

/// wasm's 128-bit SIMD (no fused multiply-add in simd128: a multiply, then an add).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) struct Simd128;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Lanes for Simd128 {
    type V = core::arch::wasm32::v128;
    #[inline(always)]
    fn zero() -> Self::V {
        core::arch::wasm32::f32x4_splat(0.0)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees four readable f32s; v128_load needs no alignment
        unsafe { core::arch::wasm32::v128_load(p as *const Self::V) }
    }
    #[inline(always)]
    fn mul_add(acc: Self::V, a: Self::V, b: Self::V) -> Self::V {
        use core::arch::wasm32::*;
        f32x4_add(acc, f32x4_mul(a, b))
    }
    #[inline(always)]
    fn lanes(v: Self::V) -> [f32; 4] {
        use core::arch::wasm32::*;
        [
            f32x4_extract_lane::<0>(v),
            f32x4_extract_lane::<1>(v),
            f32x4_extract_lane::<2>(v),
            f32x4_extract_lane::<3>(v),
        ]
    }
}

/// The lanes this build computes with.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) type Native = Simd128;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
pub(crate) type Native = Portable;

/// Rows of x and of w per tile.
const TILE: usize = 3;

/// `y[r·ldy + c] = x row r · w row c` for the R × C tile at x, w.
///
/// # Safety
/// x holds R rows and w C rows of k f32s each (row stride k); y's R rows of stride `ldy` have C
/// writable values each.
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize, const C: usize>(
    x: *const f32,
    w: *const f32,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    let mut acc = [[L::zero(); C]; R];
    let k4 = k / 4 * 4;
    let mut i = 0;
    while i < k4 {
        // SAFETY: i + 4 ≤ k within every row
        let wv: [L::V; C] = std::array::from_fn(|c| unsafe { L::load(w.add(c * k + i)) });
        for (r, ar) in acc.iter_mut().enumerate() {
            let xv = unsafe { L::load(x.add(r * k + i)) };
            for (a, &wc) in ar.iter_mut().zip(&wv) {
                *a = L::mul_add(*a, xv, wc);
            }
        }
        i += 4;
    }
    for (r, ar) in acc.iter().enumerate() {
        for (c, &a) in ar.iter().enumerate() {
            let l = L::lanes(a);
            let mut s = (l[0] + l[2]) + (l[1] + l[3]);
            for j in k4..k {
                // SAFETY: j < k
                s += unsafe { *x.add(r * k + j) * *w.add(c * k + j) };
            }
            // SAFETY: r < R, c < C
            unsafe { *y.add(r * ldy + c) = s };
        }
    }
}

/// Every row of x against the C rows of w at `w`: full tiles of 3 rows, then the last 1 or 2.
///
/// # Safety
/// As [`tile`], for m rows of x and of y.
#[inline(always)]
unsafe fn column_group<L: Lanes, const C: usize>(
    x: *const f32,
    m: usize,
    w: *const f32,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    let mut r = 0;
    // SAFETY (all three): rows r..r + R < m of x and y, as the caller guarantees
    unsafe {
        while r + TILE <= m {
            tile::<L, TILE, C>(x.add(r * k), w, k, y.add(r * ldy), ldy);
            r += TILE;
        }
        match m - r {
            2 => tile::<L, 2, C>(x.add(r * k), w, k, y.add(r * ldy), ldy),
            1 => tile::<L, 1, C>(x.add(r * k), w, k, y.add(r * ldy), ldy),
            _ => {}
        }
    }
}

/// Columns `cols` of `y [m, n] = x [m, k] · w [n, k]ᵀ` (all row-major), written through `y`.
///
/// # Safety
/// `y` points to m · n writable f32s that no one else reads or writes in columns `cols` while
/// this runs; `cols.end ≤ n`.
pub(crate) unsafe fn matmul_nt_cols<L: Lanes>(
    x: &[f32],
    w: &[f32],
    (m, n, k): (usize, usize, usize),
    cols: std::ops::Range<usize>,
    y: *mut f32,
) {
    assert!(x.len() >= m * k && w.len() >= n * k && cols.end <= n);
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // a block of x's rows (ROW_BLOCK_BYTES, in the core's cache) against every column group, then
    // the next block: without it an image's thousands of rows (SmolVLM: 5120 × 768 f32 = 15 MiB)
    // were read again for every 3 columns of w. Each value is computed as before.
    let block = (ROW_BLOCK_BYTES / (4 * k).max(1) / TILE * TILE).max(TILE);
    let mut r0 = 0;
    while r0 < m {
        let rows = block.min(m - r0);
        let mut c = cols.start;
        // SAFETY: rows r0..r0 + rows ≤ m of x and y; rows c..c + C ≤ cols.end ≤ n of w (checked
        // above); y's columns as the caller says
        unsafe {
            let (xb, yb) = (xp.add(r0 * k), y.add(r0 * n));
            while c + TILE <= cols.end {
                column_group::<L, TILE>(xb, rows, wp.add(c * k), k, yb.add(c), n);
                c += TILE;
            }
            match cols.end - c {
                2 => column_group::<L, 2>(xb, rows, wp.add(c * k), k, yb.add(c), n),
                1 => column_group::<L, 1>(xb, rows, wp.add(c * k), k, yb.add(c), n),
                _ => {}
            }
        }
        r0 += rows;
    }
}

/// The f32 rows of x [`matmul_nt_cols`] keeps in cache while the columns pass (384 KiB: 126
/// rows at K = 768, a third of this machine's 1 MiB L2 per core).
const ROW_BLOCK_BYTES: usize = 384 << 10;

/// `x [m, k] · w [n, k]ᵀ` on the calling thread.
pub(crate) fn matmul_nt<L: Lanes>(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    // SAFETY: y is m · n and only this call writes it
    unsafe { matmul_nt_cols::<L>(x, w, (m, n, k), 0..n, y.as_mut_ptr()) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same products summed in f64: the reference every tiling must agree with.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                y[r * n + c] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn every_tile_shape_and_remainder_is_the_product() {
        // rows and columns 1–7 (full 3-tiles and remainders of 1 and 2), K with and without a
        // remainder of 4, and a column range that starts and ends inside a 3-group
        for (m, n, k) in [
            (1, 1, 1),
            (2, 5, 4),
            (3, 3, 8),
            (4, 7, 13),
            (5, 2, 64),
            (7, 6, 67),
            (50, 40, 768),
            // 300 rows of K = 768: 126-row blocks of x, the last one short
            (300, 7, 768),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) / 50.0)
                .collect();
            let want = reference(&x, &w, m, n, k);
            let got = matmul_nt::<Portable>(&x, &w, m, n, k);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // f32 rounding of a k-term sum of terms |·| ≤ 1.1: ≤ k · 2⁻²⁴ · Σ|terms| ≈ 1e-4 at
                // k = 768
                assert!(
                    (*g as f64 - w).abs() <= 2e-4,
                    "{m}×{n}×{k} at {i}: {g} vs {w}"
                );
            }
            // a column range computed alone writes exactly those columns, the same values
            if n > 2 {
                let mut y = vec![f32::NAN; m * n];
                unsafe { matmul_nt_cols::<Portable>(&x, &w, (m, n, k), 1..n - 1, y.as_mut_ptr()) };
                for r in 0..m {
                    for c in 0..n {
                        let v = y[r * n + c];
                        if c == 0 || c == n - 1 {
                            assert!(v.is_nan(), "{m}×{n}×{k}: column {c} written");
                        } else {
                            assert_eq!(v.to_bits(), got[r * n + c].to_bits());
                        }
                    }
                }
            }
        }
    }
}
