//! The wasm CPU path's attention: one (batch, head) at a time with [`gemm`]'s tiles, on the pool
//! when there is one.
//!
//! candle's attention (`super::attention` natively) materializes the scores of every head at
//! once — `[batch, heads, Tq, Tk]` three times over (the product, the scaled and masked copy, the
//! softmax) — and runs its two batched matmuls on the calling thread. For SmolVLM's vision tower
//! that is `[5 tiles, 12 heads, 1024, 1024]`: 240 MB a copy, most of the 1.4 GiB wasm peak of a
//! real-shape request (bench/README.md, fifth session), while the pool's other threads wait. Here
//! each (batch, head) job holds only its own `Tq × Tk` scores: `q · kᵀ` and `p · v` (as
//! `p · (vᵀ)ᵀ`) go through the same tiles as the f32 Linears, and the jobs split over the pool.

use candle_core::Tensor as CT;

use super::gemm::{self, Lanes};
use super::pool_threads;
use crate::error::Result;
use crate::tensor::AttentionOpts;

/// Contiguous f32 values of a CPU tensor.
fn values(c: &CT) -> Result<Vec<f32>> {
    Ok(c.flatten_all()?.to_vec1::<f32>()?)
}

/// `softmax(q · kᵀ · scale + mask) · v` for q `[B, H, Tq, D]`, k and v `[B or 1, Hkv, ≥ kv_len, D]`
/// (the first `kv_len` keys), the mask `[B or 1, Tq, ≥ kv_len]` — as [`super::attention`].
pub(crate) fn attention<L: Lanes>(
    cq: &CT,
    ck: &CT,
    cv: &CT,
    mask: Option<&CT>,
    opts: &AttentionOpts,
    kv_len: usize,
) -> Result<CT> {
    let (b, h, tq, d) = cq.dims4()?;
    let (bk, hkv) = (ck.dim(0)?, ck.dim(1)?);
    let rep = h / hkv;
    let q = values(cq)?;
    let k = values(&ck.narrow(2, 0, kv_len)?)?;
    // vᵀ per (batch, kv head): [D, kv_len], so that p · v is an x · wᵀ product for the tiles
    let vt = values(&cv.narrow(2, 0, kv_len)?.transpose(2, 3)?)?;
    let (mask, bm) = match mask {
        Some(m) => (Some(values(&m.narrow(2, 0, kv_len)?)?), m.dim(0)?),
        None => (None, 1),
    };
    let past = kv_len - tq;
    // plain values for the jobs (the options hold a Tensor, which may hold GPU handles: not Sync)
    let (scale, causal) = (opts.scale, opts.causal);
    let head = |job: usize| -> Vec<f32> {
        let (bi, hi) = (job / h, job % h);
        let kv = (if bk == 1 { 0 } else { bi }) * hkv + hi / rep;
        let qs = &q[job * tq * d..(job + 1) * tq * d];
        let ks = &k[kv * kv_len * d..(kv + 1) * kv_len * d];
        let mut s = gemm::matmul_nt::<L>(qs, ks, tq, kv_len, d);
        for (i, row) in s.chunks_mut(kv_len).enumerate() {
            for x in row.iter_mut() {
                *x *= scale;
            }
            if let Some(m) = &mask {
                let at = ((if bm == 1 { 0 } else { bi }) * tq + i) * kv_len;
                for (x, m) in row.iter_mut().zip(&m[at..at + kv_len]) {
                    *x += m;
                }
            }
            if causal {
                for x in &mut row[(i + past + 1).min(kv_len)..] {
                    *x = f32::NEG_INFINITY;
                }
            }
            // as candle's softmax: the row's max subtracted, exp, divided by the sum
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            for x in row.iter_mut() {
                *x /= sum;
            }
        }
        let vs = &vt[kv * d * kv_len..(kv + 1) * d * kv_len];
        gemm::matmul_nt::<L>(&s, vs, tq, d, kv_len)
    };
    let jobs = b * h;
    let outs: Vec<Vec<f32>> = if pool_threads() > 1 && jobs > 1 {
        use rayon::prelude::*;
        (0..jobs).into_par_iter().map(head).collect()
    } else {
        (0..jobs).map(head).collect()
    };
    Ok(CT::from_vec(
        outs.concat(),
        (b, h, tq, d),
        &candle_core::Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn t(dims: &[usize], seed: usize) -> CT {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        CT::from_vec(v, dims, &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn per_head_tiles_are_candles_attention() {
        // (B, H, Hkv, Tq, kv capacity, kv_len, D, k batch, causal, mask batch): a vision tower's
        // full attention, grouped-query decoding from a cache with spare room, a causal prompt
        // after a cached prefix, keys shared by beams, a padding mask per batch and one shared
        for (b, h, hkv, tq, cap, kv_len, d, bk, causal, mask) in [
            (2, 3, 3, 17, 17, 17, 8, 2, false, None),
            (1, 4, 2, 1, 12, 9, 8, 1, true, None),
            (1, 6, 2, 5, 16, 11, 4, 1, true, Some(1)),
            (3, 2, 2, 4, 7, 7, 6, 1, false, Some(3)),
            (2, 2, 1, 3, 9, 6, 5, 2, true, Some(2)),
        ] {
            let (q, k, v) = (
                t(&[b, h, tq, d], 1),
                t(&[bk, hkv, cap, d], 2),
                t(&[bk, hkv, cap, d], 3),
            );
            let m = mask.map(|bm| {
                // 0 keeps a key, -1e4 drops it (every query keeps key 0)
                let v: Vec<f32> = (0..bm * tq * cap)
                    .map(|i| {
                        if i % cap != 0 && i % 5 == 3 {
                            -1e4
                        } else {
                            0.0
                        }
                    })
                    .collect();
                CT::from_vec(v, (bm, tq, cap), &candle_core::Device::Cpu).unwrap()
            });
            let mt = m.clone().map(|m| Tensor::from_candle(m).unwrap());
            let opts = AttentionOpts {
                scale: 1.0 / (d as f32).sqrt(),
                causal,
                mask: mt.as_ref(),
                kv_len: Some(kv_len),
            };
            let got = attention::<gemm::Portable>(&q, &k, &v, m.as_ref(), &opts, kv_len).unwrap();
            // natively super::attention is candle's batched path
            let want = super::super::attention(
                &Tensor::from_candle(q).unwrap(),
                &Tensor::from_candle(k).unwrap(),
                &Tensor::from_candle(v).unwrap(),
                &opts,
                kv_len,
            )
            .unwrap();
            let want = want.candle("test").unwrap();
            assert_eq!(got.dims(), want.dims());
            let (g, w) = (values(&got).unwrap(), values(want).unwrap());
            let diff = g
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // the same f32 math in another summation order: values ≤ 1.3, sums of ≤ 17 terms
            assert!(diff <= 2e-6, "{b}×{h}×{tq}×{kv_len}: max |Δ| {diff}");
        }
    }
}
