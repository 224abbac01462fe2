//! The op set. Each op validates shapes and dtypes once, here, then runs on the tensor's device.

use super::{same_device, DType, Storage, Tensor};
use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::kernels as gk;
use crate::io::config::Activation;

/// Options of [`Tensor::attention`].
#[derive(Debug, Clone, Default)]
pub struct AttentionOpts<'a> {
    /// Multiplies q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Query i (of Tq) sees keys 0 ..= i + (kv_len - Tq): the usual decoder mask, which also
    /// holds when the queries are the newest entries of a KV cache.
    pub causal: bool,
    /// Additive f32 mask `[B or 1, Tq, Tk_mask]` (Tk_mask ≥ kv_len), broadcast over heads:
    /// 0 keeps a key, a large negative value removes it (padding, GIT's image/text mask).
    pub mask: Option<&'a Tensor>,
    /// Number of valid keys in k/v when they are a KV cache with spare capacity
    /// (`[B, Hkv, capacity, D]`); `None`: all of them.
    pub kv_len: Option<usize>,
}

/// Splits `[..., M, K]` into (batch, M, K).
fn batch_dims(t: &Tensor, op: &'static str) -> Result<(usize, usize, usize)> {
    if t.rank() < 2 {
        return Err(Error::shape(
            op,
            format!("expected at least 2 dims, got {:?}", t.shape()),
        ));
    }
    let r = t.rank();
    let (m, k) = (t.shape()[r - 2], t.shape()[r - 1]);
    Ok((t.numel() / (m * k).max(1), m, k))
}

impl Tensor {
    /// `self [..., M, K] @ rhs [..., K, N] -> [..., M, N]`; rhs's batch is self's or 1.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_impl(rhs, false, "matmul")
    }

    /// `self [..., M, K] @ rhs[..., N, K]^T -> [..., M, N]` (e.g. q·kᵀ).
    pub fn matmul_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_impl(rhs, true, "matmul_t")
    }

    fn matmul_impl(&self, rhs: &Tensor, rhs_t: bool, op: &'static str) -> Result<Tensor> {
        same_device(op, &[self, rhs])?;
        self.expect_dtype(op, DType::F32)?;
        rhs.expect_dtype(op, DType::F32)?;
        let (ba, m, k) = batch_dims(self, op)?;
        let (bb, r0, r1) = batch_dims(rhs, op)?;
        let (kb, n) = if rhs_t { (r1, r0) } else { (r0, r1) };
        if k != kb {
            return Err(Error::shape(
                op,
                format!(
                    "{:?} @ {:?}{}: inner dimensions {k} and {kb} differ",
                    self.shape(),
                    rhs.shape(),
                    if rhs_t { "ᵀ" } else { "" }
                ),
            ));
        }
        if bb != ba && bb != 1 {
            return Err(Error::shape(
                op,
                format!(
                    "batch of {:?} and {:?} differ and the right one is not 1",
                    self.shape(),
                    rhs.shape()
                ),
            ));
        }
        let mut out_shape = self.shape()[..self.rank() - 2].to_vec();
        out_shape.extend([m, n]);
        match self.storage() {
            Storage::Gpu { .. } => {
                gk::matmul::matmul(self, rhs, rhs_t, ba, bb, m, n, k, &out_shape)
            }
            _ => cpu::matmul(self, rhs, rhs_t, &out_shape),
        }
    }

    /// A Linear layer: `self [..., K] · w [N, K]ᵀ + bias [N] -> [..., N]`. `w` may be f32, f16,
    /// q8_0 or q4_0 (dequantized inside the kernel). One-row inputs use the GEMV kernel.
    pub fn linear(&self, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_fused(w, bias, None, None)
    }

    /// `act(self · wᵀ + bias) + residual`, as [`Tensor::linear`] then [`Tensor::activation`] then
    /// [`Tensor::add`], with the same values; on the GPU one dispatch (the matmul kernel's
    /// epilogue). `residual` has the output's shape.
    pub fn linear_fused(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let op = "linear";
        let mut all = vec![self, w];
        all.extend(bias);
        all.extend(residual);
        same_device(op, &all)?;
        self.expect_dtype(op, DType::F32)?;
        if w.rank() != 2 || w.dtype() == DType::U32 {
            return Err(Error::shape(
                op,
                format!(
                    "weight must be 2-D [N, K], got {:?} {}",
                    w.shape(),
                    w.dtype().name()
                ),
            ));
        }
        let (n, k) = (w.shape()[0], w.shape()[1]);
        if self.dim(-1) != k || self.rank() == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} has {} features, weight {:?} expects {k}",
                    self.shape(),
                    self.dim(-1),
                    w.shape()
                ),
            ));
        }
        if let Some(b) = bias {
            b.expect_dtype(op, DType::F32)?;
            if b.shape() != [n] {
                return Err(Error::shape(
                    op,
                    format!("bias {:?} should be [{n}]", b.shape()),
                ));
            }
        }
        let rows = self.numel() / k.max(1);
        let mut out_shape = self.shape()[..self.rank() - 1].to_vec();
        out_shape.push(n);
        if let Some(r) = residual {
            r.expect_dtype(op, DType::F32)?;
            if r.shape() != out_shape.as_slice() {
                return Err(Error::shape(
                    op,
                    format!("residual {:?} should be {out_shape:?}", r.shape()),
                ));
            }
        }
        let unfused = |y: Tensor| -> Result<Tensor> {
            let y = match act {
                Some(a) => y.activation(a)?,
                None => y,
            };
            match residual {
                Some(r) => y.add(r),
                None => Ok(y),
            }
        };
        if let Some(chunks) = w.split_chunks() {
            // a weight split by rows: each chunk gives a slice of the outputs, joined on the last dim
            let mut outs = Vec::with_capacity(chunks.len());
            for (start, c) in &chunks {
                let b = bias.map(|b| b.narrow(0, *start, c.dim(0))).transpose()?;
                outs.push(self.linear(c, b.as_ref())?);
            }
            return unfused(Tensor::cat(
                &outs.iter().collect::<Vec<_>>(),
                out_shape.len() - 1,
            )?);
        }
        match self.storage() {
            Storage::Gpu { .. } => gk::matmul::linear(
                self,
                w,
                bias,
                act.map(gk::elementwise::UnaryOp::of),
                residual,
                rows,
                n,
                k,
                &out_shape,
            ),
            _ => unfused(cpu::linear(self, w, bias, &out_shape)?),
        }
    }

    fn binary(&self, rhs: &Tensor, op: gk::elementwise::BinaryOp) -> Result<Tensor> {
        let name = op.name();
        same_device(name, &[self, rhs])?;
        self.expect_dtype(name, DType::F32)?;
        rhs.expect_dtype(name, DType::F32)?;
        let out_shape = broadcast_shape(self.shape(), rhs.shape()).ok_or_else(|| {
            Error::shape(
                name,
                format!("cannot broadcast {:?} with {:?}", self.shape(), rhs.shape()),
            )
        })?;
        match self.storage() {
            Storage::Gpu { .. } => gk::elementwise::binary(self, rhs, op, &out_shape),
            _ => cpu::binary(self, rhs, op),
        }
    }

    /// Elementwise sum with numpy broadcasting (rank ≤ 4).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, gk::elementwise::BinaryOp::Add)
    }
    /// Elementwise product with numpy broadcasting (rank ≤ 4).
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, gk::elementwise::BinaryOp::Mul)
    }

    fn unary(&self, op: gk::elementwise::UnaryOp) -> Result<Tensor> {
        self.expect_dtype(op.name(), DType::F32)?;
        match self.storage() {
            Storage::Gpu { .. } => gk::elementwise::unary(self, op),
            _ => cpu::unary(self, op),
        }
    }
    /// A model's activation function.
    pub fn activation(&self, act: Activation) -> Result<Tensor> {
        self.unary(gk::elementwise::UnaryOp::of(act))
    }
    /// GELU with the exact erf (BERT, ViT, CLIP-ViT in HF as "gelu").
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary(gk::elementwise::UnaryOp::GeluErf)
    }
    /// GELU, tanh approximation (GPT-2's "gelu_new").
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(gk::elementwise::UnaryOp::GeluTanh)
    }
    /// x·sigmoid(1.702x) (OpenAI CLIP).
    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.unary(gk::elementwise::UnaryOp::QuickGelu)
    }
    /// x·sigmoid(x) (Llama's MLP).
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(gk::elementwise::UnaryOp::Silu)
    }

    /// Softmax over the last dimension, max-subtracted (stable for large logits).
    pub fn softmax_last_dim(&self) -> Result<Tensor> {
        self.expect_dtype("softmax", DType::F32)?;
        match self.storage() {
            Storage::Gpu { .. } => gk::norm::softmax(self),
            _ => cpu::softmax_last_dim(self),
        }
    }

    fn check_norm_param(&self, op: &'static str, p: &Tensor) -> Result<()> {
        p.expect_dtype(op, DType::F32)?;
        if p.shape() != [self.dim(-1)] {
            return Err(Error::shape(
                op,
                format!(
                    "parameter {:?} should be [{}] for input {:?}",
                    p.shape(),
                    self.dim(-1),
                    self.shape()
                ),
            ));
        }
        Ok(())
    }

    /// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) · weight + bias.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        let op = "layer_norm";
        same_device(op, &[self, weight, bias])?;
        self.expect_dtype(op, DType::F32)?;
        self.check_norm_param(op, weight)?;
        self.check_norm_param(op, bias)?;
        match self.storage() {
            Storage::Gpu { .. } => gk::norm::layer_norm(self, Some(weight), Some(bias), eps, false),
            _ => cpu::layer_norm(self, weight, bias, eps),
        }
    }

    /// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) · weight.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let op = "rms_norm";
        same_device(op, &[self, weight])?;
        self.expect_dtype(op, DType::F32)?;
        self.check_norm_param(op, weight)?;
        match self.storage() {
            Storage::Gpu { .. } => gk::norm::layer_norm(self, Some(weight), None, eps, true),
            _ => cpu::rms_norm(self, weight, eps),
        }
    }

    /// Rotary position embedding of `self [B, H, T, D]` with `cos`, `sin` `[T, D/2]`.
    /// `interleaved`: rotate pairs (2i, 2i+1) (GPT-J); otherwise halves (HF `rotate_half`).
    pub fn rope(&self, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
        let op = "rope";
        same_device(op, &[self, cos, sin])?;
        for t in [self, cos, sin] {
            t.expect_dtype(op, DType::F32)?;
        }
        let &[_, _, t, d] = self.shape() else {
            return Err(Error::shape(
                op,
                format!("expected [B, H, T, D], got {:?}", self.shape()),
            ));
        };
        if d % 2 != 0 || cos.shape() != [t, d / 2] || sin.shape() != [t, d / 2] {
            return Err(Error::shape(
                op,
                format!(
                    "cos {:?} / sin {:?} should be [{t}, {}] for {:?} (D even)",
                    cos.shape(),
                    sin.shape(),
                    d / 2,
                    self.shape()
                ),
            ));
        }
        match self.storage() {
            Storage::Gpu { .. } => gk::rope::rope(self, cos, sin, interleaved),
            _ => cpu::rope(self, cos, sin, interleaved),
        }
    }

    /// Gathers rows of the table `self [V, D]` (f32 or f16) for `ids` (u32, any shape) -> `[..ids, D]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let op = "embedding";
        same_device(op, &[self, ids])?;
        ids.expect_dtype(op, DType::U32)?;
        if self.rank() != 2 || !matches!(self.dtype(), DType::F32 | DType::F16) {
            return Err(Error::shape(
                op,
                format!(
                    "table must be 2-D f32 or f16, got {:?} {}",
                    self.shape(),
                    self.dtype().name()
                ),
            ));
        }
        let mut out_shape = ids.shape().to_vec();
        out_shape.push(self.shape()[1]);
        match self.storage() {
            Storage::Gpu { .. } => gk::embedding::embedding(self, ids, &out_shape),
            Storage::GpuSplit { .. } => gk::embedding::embedding_split(self, ids, &out_shape),
            _ => cpu::embedding(self, ids, &out_shape),
        }
    }

    /// Rows of the table `self [V, D]` for token ids held on the host: every id is checked
    /// against `V` first, so an id past the vocabulary is the same error on every device (the
    /// GPU kernel itself cannot fail: given such an id it writes a zero row). `shape`: the
    /// ids' shape; the result is `[..shape, D]`.
    pub fn lookup(&self, ids: &[u32], shape: &[usize]) -> Result<Tensor> {
        let rows = self.shape().first().copied().unwrap_or(0);
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {rows}: the tokenizer or the prompt ids do not match this model"
            )));
        }
        self.embedding(&Tensor::from_u32(ids, shape, &self.device())?)
    }

    /// Multi-head attention, one fused kernel: softmax(q·kᵀ·scale + mask) · v.
    /// q `[B, H, Tq, D]`; k, v `[B, Hkv, Tk, D]` with H a multiple of Hkv (grouped-query).
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Tensor> {
        let op = "attention";
        let mut all = vec![q, k, v];
        all.extend(opts.mask);
        same_device(op, &all)?;
        for t in &all {
            t.expect_dtype(op, DType::F32)?;
        }
        let (&[b, h, tq, d], &[bk, hkv, cap, dk]) = (q.shape(), k.shape()) else {
            return Err(Error::shape(
                op,
                format!(
                    "q {:?} and k {:?} should be [B, H, T, D]",
                    q.shape(),
                    k.shape()
                ),
            ));
        };
        // k and v of batch 1 serve every query row (cross-attention shared by beams)
        if v.shape() != k.shape() || (bk != b && bk != 1) || dk != d || hkv == 0 || h % hkv != 0 {
            return Err(Error::shape(
                op,
                format!(
                    "q {:?}, k {:?}, v {:?}: batch and head_dim must agree and heads divide",
                    q.shape(),
                    k.shape(),
                    v.shape()
                ),
            ));
        }
        let kv_len = opts.kv_len.unwrap_or(cap);
        if kv_len > cap || kv_len == 0 {
            return Err(Error::shape(
                op,
                format!("kv_len {kv_len} outside 1..={cap}"),
            ));
        }
        if opts.causal && tq > kv_len {
            return Err(Error::shape(
                op,
                format!(
                    "causal attention with {tq} queries needs at least as many keys, got {kv_len}"
                ),
            ));
        }
        if let Some(m) = opts.mask {
            let ok = m.rank() == 3
                && (m.shape()[0] == b || m.shape()[0] == 1)
                && m.shape()[1] == tq
                && m.shape()[2] >= kv_len;
            if !ok {
                return Err(Error::shape(
                    op,
                    format!("mask {:?} should be [{b} or 1, {tq}, ≥{kv_len}]", m.shape()),
                ));
            }
        }
        match q.storage() {
            Storage::Gpu { .. } => gk::attention::attention(q, k, v, opts, kv_len),
            _ => cpu::attention(q, k, v, opts, kv_len),
        }
    }

    /// Patch embedding (a conv with stride = kernel = `patch`), as im2col + Linear:
    /// `self [B, C, H, W]`, `w [O, C·P·P]` (the conv weight `[O, C, P, P]` flattened; any weight
    /// dtype), bias `[O]` -> `[B, (H/P)·(W/P), O]`, patches in row-major order.
    pub fn patch_embed(&self, w: &Tensor, bias: Option<&Tensor>, patch: usize) -> Result<Tensor> {
        let op = "patch_embed";
        self.expect_dtype(op, DType::F32)?;
        let &[b, c, hh, ww] = self.shape() else {
            return Err(Error::shape(
                op,
                format!("expected [B, C, H, W], got {:?}", self.shape()),
            ));
        };
        if patch == 0 || hh % patch != 0 || ww % patch != 0 {
            return Err(Error::shape(
                op,
                format!("image {hh}×{ww} is not a whole number of {patch}×{patch} patches"),
            ));
        }
        if w.rank() != 2 || w.shape()[1] != c * patch * patch {
            return Err(Error::shape(
                op,
                format!(
                    "weight {:?} should be [O, {}]",
                    w.shape(),
                    c * patch * patch
                ),
            ));
        }
        let (hp, wp) = (hh / patch, ww / patch);
        // (B, C, H, W) -> (B·Np, C·P·P), each row one patch in (c, ky, kx) order
        let cols = match self.storage() {
            Storage::Gpu { .. } => gk::layout::im2col(self, patch)?,
            _ => self
                .reshape(&[b, c, hp, patch, wp, patch])?
                .permute_cpu6(&[0, 2, 4, 1, 3, 5])?
                .reshape(&[b * hp * wp, c * patch * patch])?,
        };
        // (B·Np, C·P·P) · (O, C·P·P)ᵀ -> (B·Np, O) -> (B, Np, O)
        cols.linear(w, bias)?.reshape(&[b, hp * wp, w.shape()[0]])
    }

    fn permute_cpu6(&self, dims: &[usize]) -> Result<Tensor> {
        Tensor::from_candle(self.candle("permute")?.permute(dims)?.contiguous()?)
    }

    /// Reorders dimensions (rank ≤ 4), copying into a new contiguous tensor.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let mut seen = [false; 4];
        let valid = dims.len() == self.rank()
            && dims.len() <= 4
            && dims
                .iter()
                .all(|&d| d < dims.len() && !std::mem::replace(&mut seen[d], true));
        if !valid {
            return Err(Error::shape(
                "permute",
                format!(
                    "{dims:?} is not a permutation of the {} dims of {:?} (rank ≤ 4)",
                    self.rank(),
                    self.shape()
                ),
            ));
        }
        let shape: Vec<usize> = dims.iter().map(|&d| self.shape()[d]).collect();
        // Moving only dims of size 1 keeps every element where it is (split_heads of one
        // decode token: [B, 1, H, D] -> [B, H, 1, D]): a view, no copy and no dispatch.
        let kept: Vec<usize> = dims
            .iter()
            .copied()
            .filter(|&d| self.shape()[d] != 1)
            .collect();
        let in_order = kept.windows(2).all(|w| w[0] < w[1]);
        if in_order && matches!(self.storage(), Storage::Gpu { .. } | Storage::Cpu(_)) {
            return self.reshape(&shape);
        }
        match self.storage() {
            Storage::Gpu { .. } => gk::layout::permute(self, dims, &shape),
            _ => Tensor::from_candle(self.candle("permute")?.permute(dims)?.contiguous()?),
        }
    }

    /// `len` entries of dimension `dim` from `start`, copied into a new tensor.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() || start + len > self.shape()[dim] || self.rank() > 4 {
            return Err(Error::shape(
                "narrow",
                format!(
                    "{start}..{} of dim {dim} of {:?}",
                    start + len,
                    self.shape()
                ),
            ));
        }
        self.expect_f32_or_u32("narrow")?;
        let mut shape = self.shape().to_vec();
        shape[dim] = len;
        match self.storage() {
            Storage::Gpu { .. } => gk::layout::narrow(self, dim, start, &shape),
            _ => Tensor::from_candle(
                self.candle("narrow")?
                    .narrow(dim, start, len)?
                    .contiguous()?,
            ),
        }
    }

    /// Joins tensors along `dim`; all other dimensions must agree.
    pub fn cat(ts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let op = "cat";
        let first = ts
            .first()
            .ok_or_else(|| Error::shape(op, "no tensors to join"))?;
        same_device(op, ts)?;
        for t in ts {
            t.expect_dtype(op, first.dtype())?;
            let agree = t.rank() == first.rank()
                && dim < t.rank()
                && (0..t.rank()).all(|i| i == dim || t.shape()[i] == first.shape()[i]);
            if !agree || t.rank() > 4 {
                return Err(Error::shape(
                    op,
                    format!(
                        "cannot join {:?} and {:?} along dim {dim}",
                        first.shape(),
                        t.shape()
                    ),
                ));
            }
        }
        first.expect_f32_or_u32(op)?;
        let mut shape = first.shape().to_vec();
        shape[dim] = ts.iter().map(|t| t.shape()[dim]).sum();
        match first.storage() {
            Storage::Gpu { .. } => gk::layout::cat(ts, dim, &shape),
            _ => {
                let cs = ts
                    .iter()
                    .map(|t| t.candle(op).cloned())
                    .collect::<Result<Vec<_>>>()?;
                Tensor::from_candle(candle_core::Tensor::cat(&cs, dim)?)
            }
        }
    }

    /// Writes `src` into `self` at `offset` along `dim`, in place: the KV-cache append.
    /// Every other dimension must match.
    pub fn write_slice(&self, src: &Tensor, dim: usize, offset: usize) -> Result<()> {
        let op = "write_slice";
        same_device(op, &[self, src])?;
        src.expect_dtype(op, self.dtype())?;
        self.expect_f32_or_u32(op)?;
        let fits = self.rank() == src.rank()
            && self.rank() <= 4
            && dim < self.rank()
            && offset + src.shape()[dim] <= self.shape()[dim]
            && (0..self.rank()).all(|i| i == dim || self.shape()[i] == src.shape()[i]);
        if !fits {
            return Err(Error::shape(
                op,
                format!(
                    "{:?} does not fit into {:?} at {offset} along dim {dim}",
                    src.shape(),
                    self.shape()
                ),
            ));
        }
        match self.storage() {
            Storage::Gpu { .. } => gk::layout::write_slice(self, src, dim, offset),
            _ => Ok(self.candle(op)?.slice_set(src.candle(op)?, dim, offset)?),
        }
    }

    /// A fused q/k/v projection `self [B, T, 3·H·Dh]` split into heads: returns q `[B, H, T, Dh]`
    /// and writes k and v into `k_cache` / `v_cache` `[B, H, capacity, Dh]` at position `pos`
    /// along dim 2 — on the GPU in one dispatch.
    pub fn split_qkv_into(
        &self,
        heads: usize,
        k_cache: &Tensor,
        v_cache: &Tensor,
        pos: usize,
    ) -> Result<Tensor> {
        let op = "split_qkv";
        same_device(op, &[self, k_cache, v_cache])?;
        self.expect_dtype(op, DType::F32)?;
        k_cache.expect_dtype(op, DType::F32)?;
        v_cache.expect_dtype(op, DType::F32)?;
        let ok = self.rank() == 3 && heads > 0 && self.dim(2).is_multiple_of(3 * heads);
        let (b, t) = (self.dim(0), self.dim(1));
        let dh = if ok { self.dim(2) / 3 / heads } else { 0 };
        let cache_ok = |c: &Tensor| {
            c.rank() == 4
                && c.dim(0) == b
                && c.dim(1) == heads
                && c.dim(3) == dh
                && pos + t <= c.dim(2)
        };
        if !ok || !cache_ok(k_cache) || !cache_ok(v_cache) || k_cache.shape() != v_cache.shape() {
            return Err(Error::shape(
                op,
                format!(
                    "{:?} with {heads} heads does not fit caches {:?} / {:?} at {pos}",
                    self.shape(),
                    k_cache.shape(),
                    v_cache.shape()
                ),
            ));
        }
        match self.storage() {
            Storage::Gpu { .. } => gk::layout::split_qkv(self, heads, k_cache, v_cache, pos),
            _ => {
                let d = heads * dh;
                let part = |i: usize| -> Result<Tensor> {
                    self.narrow(2, i * d, d)?
                        .reshape(&[b, t, heads, dh])?
                        .permute(&[0, 2, 1, 3])
                };
                k_cache.write_slice(&part(1)?, 2, pos)?;
                v_cache.write_slice(&part(2)?, 2, pos)?;
                part(0)
            }
        }
    }

    /// Index of the largest value along the last dimension (the first one on ties) -> u32 `[...]`.
    pub fn argmax_last_dim(&self) -> Result<Tensor> {
        self.expect_dtype("argmax", DType::F32)?;
        if self.rank() == 0 || self.dim(-1) == 0 {
            return Err(Error::shape(
                "argmax",
                format!("nothing to reduce in {:?}", self.shape()),
            ));
        }
        let out_shape = self.shape()[..self.rank() - 1].to_vec();
        match self.storage() {
            Storage::Gpu { .. } => gk::norm::argmax(self, &out_shape),
            _ => cpu::argmax_last_dim(self),
        }
    }

    fn expect_f32_or_u32(&self, op: &'static str) -> Result<()> {
        match self.dtype() {
            DType::F32 | DType::U32 => Ok(()),
            _ => Err(self.dtype_err(op, "layout ops take f32 or u32 tensors")),
        }
    }
}

/// numpy broadcasting of two shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}
