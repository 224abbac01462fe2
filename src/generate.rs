//! The one generation loop for every decoder: greedy, beam search and sampling, with the
//! Hugging Face logits processors (repetition penalty, no-repeat n-grams, minimum length),
//! stopping at EOS or the length limit, streaming each new token to a callback that can cancel.
//!
//! Beam search follows transformers' vectorized `_beam_search` step for step (top-k over
//! beams × vocabulary, finished hypotheses scored by length-normalized log-probability, the
//! same early-stopping heuristic), so that beam ids match the reference exactly.

use crate::error::{Error, Result};
use crate::io::config::GenerationConfig;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A model that turns the next tokens of each batch row into logits of the last position.
pub trait Decoder {
    /// Feeds `ids [B][T]` (the same T for every row) after what the state has seen;
    /// returns logits `[B, V]` of the last position, on the model's device.
    fn forward(&mut self, ids: &[Vec<u32>]) -> Result<Tensor>;
    /// New row i is old row `rows[i]` (beam search keeps, drops and duplicates beams).
    fn reorder(&mut self, rows: &[usize]) -> Result<()>;
}

/// A decoder whose state is one key/value cache per layer: it gives the logits of every new
/// position, and [`Decoder`] follows (the last position's logits; beams reorder the caches).
pub trait CachedDecoder {
    /// Logits `[B, T, V]` of `ids [B][T]` fed after what the state has seen.
    fn forward_all(&mut self, ids: &[Vec<u32>]) -> Result<Tensor>;
    fn caches(&mut self) -> &mut Vec<crate::nn::KvCache>;
}

impl<T: CachedDecoder> Decoder for T {
    fn forward(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        last_position(&self.forward_all(ids)?)
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        crate::nn::reorder_caches(self.caches(), rows)
    }
}

/// Logits of the last position: `[B, T, V] -> [B, V]`.
pub fn last_position(logits: &Tensor) -> Result<Tensor> {
    let (b, t, v) = (logits.dim(0), logits.dim(1), logits.dim(2));
    logits.narrow(1, t - 1, 1)?.reshape(&[b, v])
}

/// Options of one generation; `from_config` takes the model's generation_config.json defaults.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub length_penalty: f32,
    /// true, false or "never" as in transformers
    pub early_stopping: EarlyStopping,
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub repetition_penalty: f32,
    pub no_repeat_ngram_size: usize,
    pub eos_token_ids: Vec<u32>,
    /// The text stops before the first of these it contains (transformers' `stop_strings`;
    /// applied by the pipeline, which sees the text).
    pub stop_strings: Vec<String>,
    /// In the browser, return to the event loop after each token so that a worker can take a
    /// cancel message in the middle of a generation (on WebGPU the readbacks already do; the
    /// CPU path would otherwise run to the end without yielding). No effect natively.
    pub yield_each_token: bool,
    /// The most key/value cache this request may hold (all layers and beams); a request over it
    /// is refused before anything is allocated. Default [`crate::pipeline::MAX_KV_BYTES`].
    pub max_kv_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

/// The most beams one request may ask for (each beam holds its own KV cache and logits row).
pub const MAX_BEAMS: usize = 16;
/// The most new tokens one request may ask for; the model's text positions bound it too.
pub const MAX_NEW_TOKENS: usize = 4096;

impl GenerateOptions {
    /// Checks the options before anything is allocated from them: counts within their caps,
    /// sampling parameters in their ranges. Errors name the option as transformers does.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(what));
        if self.num_beams == 0 || self.num_beams > MAX_BEAMS {
            return bad(format!(
                "num_beams = {} must be between 1 and {MAX_BEAMS}",
                self.num_beams
            ));
        }
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            return bad(format!(
                "max_new_tokens = {} must be between 1 and {MAX_NEW_TOKENS}",
                self.max_new_tokens
            ));
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "min_new_tokens = {} is more than max_new_tokens = {}",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if self.do_sample && !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "temperature = {} must be a number > 0",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p = {} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty = {} must be a number > 0",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty = {} must be a finite number",
                self.length_penalty
            ));
        }
        if self.num_beams > 1 && self.do_sample {
            return bad("beam sampling is not supported: use num_beams = 1 with sampling".into());
        }
        Ok(())
    }

    pub fn from_config(g: &GenerationConfig) -> GenerateOptions {
        let early_stopping = match &g.early_stopping {
            Some(serde_json::Value::Bool(true)) => EarlyStopping::True,
            Some(serde_json::Value::String(s)) if s == "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        };
        GenerateOptions {
            max_kv_bytes: crate::pipeline::MAX_KV_BYTES,
            max_new_tokens: g.max_new_tokens.unwrap_or(20),
            min_new_tokens: g.min_new_tokens.unwrap_or(0),
            num_beams: g.num_beams.unwrap_or(1),
            length_penalty: g.length_penalty.unwrap_or(1.0),
            early_stopping,
            do_sample: g.do_sample.unwrap_or(false),
            temperature: g.temperature.unwrap_or(1.0),
            top_k: g.top_k.unwrap_or(50),
            top_p: g.top_p.unwrap_or(1.0),
            seed: 0,
            repetition_penalty: g.repetition_penalty.unwrap_or(1.0),
            no_repeat_ngram_size: g.no_repeat_ngram_size.unwrap_or(0),
            eos_token_ids: g.eos_token_id.clone(),
            stop_strings: g.stop_strings.clone(),
            yield_each_token: false,
        }
    }

    fn needs_host_logits(&self) -> bool {
        self.do_sample
            || self.repetition_penalty != 1.0
            || self.no_repeat_ngram_size > 0
            || self.min_new_tokens > 0
    }
}

/// Lets the browser's event loop run (a macrotask: `setTimeout(0)`), so queued messages are
/// handled; nothing natively.
pub(crate) async fn yield_now() {
    #[cfg(target_arch = "wasm32")]
    {
        use wasm_bindgen::JsCast;
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            match set_timeout {
                Some(f) => {
                    let _ = f.call2(&wasm_bindgen::JsValue::NULL, &resolve, &0.into());
                }
                None => {
                    let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
                }
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
}

/// Called after each step with the new tokens so far (after the prompt): greedy and sampling
/// append one token a step; beam search reports its best running beam each step (which may
/// differ from the previous step's) and the chosen sequence at the end. Returning false
/// cancels generation; what was generated so far is returned.
pub type OnToken<'a> = dyn FnMut(&[u32]) -> bool + 'a;

/// Generates after `prompt`, which the decoder has not seen yet. Returns prompt + new tokens
/// (EOS included when reached), as transformers' `generate` does.
pub async fn generate(
    dec: &mut dyn Decoder,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut OnToken<'_>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "generation needs at least one prompt token (BOS)".into(),
        ));
    }
    opts.check()?;
    if opts.num_beams > 1 {
        return beam_search(dec, prompt, opts, on_token).await;
    }
    let mut seq = prompt.to_vec();
    let mut rng = Rng::new(opts.seed);
    let mut logits = dec.forward(&[prompt.to_vec()])?;
    for step in 0..opts.max_new_tokens {
        let next = if opts.needs_host_logits() {
            let mut row = logits.to_vec_f32().await?;
            process(&mut row, &seq, step, opts);
            if opts.do_sample {
                sample(&mut row, opts, &mut rng)
            } else {
                argmax(&row)
            }
        } else {
            // the usual case: argmax on the device, one id read back
            logits.argmax_last_dim()?.to_vec_u32().await?[0]
        };
        seq.push(next);
        if opts.yield_each_token {
            yield_now().await;
        }
        let go_on = on_token(&seq[prompt.len()..]);
        if opts.eos_token_ids.contains(&next) || !go_on || step + 1 == opts.max_new_tokens {
            break;
        }
        logits = dec.forward(&[vec![next]])?;
    }
    Ok(seq)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// transformers' logits processors, in its order: repetition penalty, no-repeat n-gram, min new tokens.
fn process(row: &mut [f32], seq: &[u32], new_tokens: usize, opts: &GenerateOptions) {
    if opts.repetition_penalty != 1.0 {
        let mut seen = seq.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(v) = row.get_mut(t as usize) {
                *v = if *v < 0.0 {
                    *v * opts.repetition_penalty
                } else {
                    *v / opts.repetition_penalty
                };
            }
        }
    }
    let n = opts.no_repeat_ngram_size;
    if n > 0 && seq.len() + 1 >= n {
        let tail = &seq[seq.len() + 1 - n..];
        for w in seq.windows(n) {
            if w[..n - 1] == *tail {
                if let Some(v) = row.get_mut(w[n - 1] as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    if new_tokens < opts.min_new_tokens {
        for &e in &opts.eos_token_ids {
            if let Some(v) = row.get_mut(e as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

/// Temperature, top-k, top-p, then a draw from the seeded generator.
fn sample(row: &mut [f32], opts: &GenerateOptions, rng: &mut Rng) -> u32 {
    let t = opts.temperature.max(1e-6);
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    if opts.top_k > 0 {
        idx.truncate(opts.top_k.max(1));
    }
    let max = row[idx[0]] / t;
    let mut probs: Vec<f32> = idx.iter().map(|&i| (row[i] / t - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&p| {
            acc += p;
            acc >= opts.top_p
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u = rng.uniform();
    for (j, p) in probs.iter().enumerate() {
        if u < *p {
            return idx[j] as u32;
        }
        u -= p;
    }
    idx[probs.len() - 1] as u32
}

fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    let lse = sum.ln();
    row.iter_mut().for_each(|v| *v = *v - max - lse);
}

/// The k largest (value, index), largest first; ties keep the lower index first.
fn top_k(values: &[f32], k: usize) -> Vec<(f32, usize)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (values[i], i)).collect()
}

async fn beam_search(
    dec: &mut dyn Decoder,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut OnToken<'_>,
) -> Result<Vec<u32>> {
    let nb = opts.num_beams;
    let prompt_len = prompt.len();
    let max_length = prompt_len + opts.max_new_tokens;
    let keep = 2.max(1 + opts.eos_token_ids.len()) * nb;
    let lp = opts.length_penalty;

    let mut running: Vec<Vec<u32>> = vec![prompt.to_vec(); nb];
    let mut running_scores: Vec<f32> = (0..nb).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
    let mut finished: Vec<(Vec<u32>, f32, bool)> = vec![(Vec::new(), -1e9, false); nb];
    let mut heuristic_unsatisfied = true;
    let mut cur_len = prompt_len;

    // prefill once, then every beam starts from that state
    let mut logits = dec.forward(&[prompt.to_vec()])?;
    dec.reorder(&vec![0; nb])?;
    let mut rows_per_step = 1;
    loop {
        let host = logits.to_vec_f32().await?;
        let v = host.len() / rows_per_step;
        // accumulated log-probs over beams × vocabulary
        let mut acc = Vec::with_capacity(nb * v);
        for b in 0..nb {
            let src = if rows_per_step == 1 { 0 } else { b };
            let mut row = host[src * v..(src + 1) * v].to_vec();
            log_softmax(&mut row);
            process(&mut row, &running[b], cur_len - prompt_len, opts);
            acc.extend(row.iter().map(|x| x + running_scores[b]));
        }
        let cands: Vec<(f32, usize, u32)> = top_k(&acc, keep)
            .into_iter()
            .map(|(s, i)| (s, i / v, (i % v) as u32))
            .collect();
        let hits: Vec<bool> = cands
            .iter()
            .map(|&(_, _, t)| opts.eos_token_ids.contains(&t) || cur_len + 1 >= max_length)
            .collect();

        // next running beams: the best candidates that did not stop
        let penalized: Vec<f32> = cands
            .iter()
            .zip(&hits)
            .map(|(c, &h)| c.0 + if h { -1e9 } else { 0.0 })
            .collect();
        let next = top_k(&penalized, nb);
        let sources: Vec<usize> = next.iter().map(|&(_, k)| cands[k].1).collect();
        let new_running: Vec<Vec<u32>> = next
            .iter()
            .map(|&(_, k)| {
                let mut s = running[cands[k].1].clone();
                s.push(cands[k].2);
                s
            })
            .collect();
        let new_scores: Vec<f32> = next.iter().map(|&(s, _)| s).collect();

        // finished hypotheses: the best of the old ones and the candidates that just stopped
        let all_full = finished.iter().all(|f| f.2) && opts.early_stopping == EarlyStopping::True;
        let norm = ((cur_len + 1 - prompt_len) as f32).powf(lp);
        let mut merged: Vec<(Vec<u32>, f32, bool)> = finished.clone();
        for (k, c) in cands.iter().enumerate() {
            let just_finished = hits[k] && k < nb;
            let mut score = c.0 / norm;
            if all_full {
                score += -1e9;
            }
            if !heuristic_unsatisfied {
                score += -1e9;
            }
            if !just_finished {
                score += -1e9;
            }
            let mut s = running[c.1].clone();
            s.push(c.2);
            merged.push((s, score, just_finished));
        }
        let scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
        finished = top_k(&scores, nb)
            .into_iter()
            .map(|(_, i)| merged[i].clone())
            .collect();

        running = new_running;
        running_scores = new_scores;
        cur_len += 1;
        if opts.yield_each_token {
            yield_now().await;
        }
        // the best running beam so far (the finished hypotheses compete with it at the end)
        if !on_token(&running[0][prompt_len..]) {
            return Ok(running.swap_remove(0));
        }

        let best_len = if opts.early_stopping == EarlyStopping::Never && lp > 0.0 {
            max_length - prompt_len
        } else {
            cur_len - prompt_len
        };
        let best_running = running_scores[0] / (best_len as f32).powf(lp);
        let worst_finished = finished.iter().map(|f| f.1).fold(f32::INFINITY, f32::min);
        heuristic_unsatisfied &= finished
            .iter()
            .any(|f| best_running > if f.2 { worst_finished } else { -1e9 });
        let open_beam =
            !(finished.iter().all(|f| f.2) && opts.early_stopping == EarlyStopping::True);
        let continuations = !hits.iter().all(|&h| h);
        if !(heuristic_unsatisfied && open_beam && continuations) {
            break;
        }
        dec.reorder(&sources)?;
        let last: Vec<Vec<u32>> = running.iter().map(|s| vec![s[s.len() - 1]]).collect();
        logits = dec.forward(&last)?;
        rows_per_step = nb;
    }
    let best = finished
        .into_iter()
        .next()
        .map(|f| f.0)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| running[0].clone());
    on_token(&best[prompt_len..]);
    Ok(best)
}
