//! Top-1/top-5 accuracy against labels and fidelity (top-1 agreement, logits SQNR) against a
//! reference model, over an image folder.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use subq_calib::{dataset::ImageItem, labels::Synsets, preprocess::Preprocess};
use subq_tensor::Tensor;

use crate::{EvalError, RunModel};

pub struct EvalOptions<'a> {
    pub preprocess: Preprocess,
    pub height: usize,
    pub width: usize,
    /// Labels for top-k accuracy; without them only fidelity to the reference is measured.
    pub synsets: Option<&'a Synsets>,
    pub reference: Option<&'a dyn RunModel>,
    /// Skip images that cannot be decoded (counted in the report) instead of failing.
    pub skip_unreadable: bool,
    pub progress: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub n: usize,
    pub skipped: Vec<String>,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    /// Fraction of images whose top-1 class equals the reference model's.
    pub agreement: Option<f64>,
    /// 10·log10(Σ ref² / Σ (ref − model)²) over all logits of all images.
    pub sqnr_db: Option<f64>,
    pub reference_top1: Option<f64>,
}

pub fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Stable sort by descending logit: ties keep the lower class first, as argmax does.
    idx.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
    idx.truncate(k);
    idx
}

#[derive(Default)]
struct Tally {
    n: usize,
    top1: usize,
    top5: usize,
    ref_top1: usize,
    agree: usize,
    signal: f64,
    noise: f64,
    skipped: Vec<String>,
}

pub fn evaluate(model: &dyn RunModel, items: &[ImageItem], opts: &EvalOptions) -> Result<EvalReport, EvalError> {
    // Labels are resolved up front so that an unknown label fails before any inference.
    let labels: Vec<Option<usize>> = match opts.synsets {
        Some(s) => items.iter().map(|it| subq_calib::dataset::label_of(it, s).map(Some)).collect::<Result<_, _>>()?,
        None => vec![None; items.len()],
    };
    let bar = if opts.progress { ProgressBar::new(items.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(model.describe());
    let tally = Mutex::new(Tally::default());
    // Each worker decodes its image and runs it, so decoding of one image overlaps inference of
    // another; the pool size is set by the caller (`--threads`).
    items.par_iter().zip(labels.par_iter()).try_for_each(|(item, label)| -> Result<(), EvalError> {
        let pixels = match opts.preprocess.load(&item.path, opts.height, opts.width) {
            Ok(p) => p,
            Err(e) if opts.skip_unreadable => {
                bar.println(format!("warning: skipping {e}"));
                tally.lock().unwrap().skipped.push(item.path.display().to_string());
                bar.inc(1);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let input = Tensor::f32(vec![1, 3, opts.height, opts.width], pixels).map_err(|e| EvalError::Model(e.to_string()))?;
        let reference = match opts.reference {
            Some(r) => Some(r.run(input.clone())?),
            None => None,
        };
        let out = model.run(input)?;
        let logits = out.as_f32().map_err(|e| EvalError::Model(e.to_string()))?;
        let top = top_k(logits, 5);
        let mut t = tally.lock().unwrap();
        t.n += 1;
        if let Some(l) = label {
            t.top1 += (top[0] == *l) as usize;
            t.top5 += top.contains(l) as usize;
        }
        if let Some(r) = &reference {
            let rv = r.as_f32().map_err(|e| EvalError::Model(e.to_string()))?;
            let rtop = top_k(rv, 1)[0];
            t.agree += (rtop == top[0]) as usize;
            if let Some(l) = label {
                t.ref_top1 += (rtop == *l) as usize;
            }
            for (&a, &b) in rv.iter().zip(logits) {
                t.signal += (a as f64).powi(2);
                t.noise += ((a - b) as f64).powi(2);
            }
        }
        drop(t);
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let t = tally.into_inner().unwrap();
    let frac = |c: usize| if t.n == 0 { 0.0 } else { c as f64 / t.n as f64 };
    let has_labels = opts.synsets.is_some();
    let has_ref = opts.reference.is_some();
    let mut skipped = t.skipped;
    skipped.sort();
    Ok(EvalReport {
        model: model.describe(),
        n: t.n,
        skipped,
        top1: has_labels.then(|| frac(t.top1)),
        top5: has_labels.then(|| frac(t.top5)),
        agreement: has_ref.then(|| frac(t.agree)),
        sqnr_db: has_ref.then(|| if t.noise == 0.0 { f64::INFINITY } else { 10.0 * (t.signal / t.noise).log10() }),
        reference_top1: (has_ref && has_labels).then(|| frac(t.ref_top1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_logit() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 1.0], 1), vec![0]);
    }
}

/// Scores of a model on already-decoded inputs, against labels and optionally reference logits
/// (both indexed like `inputs`). Returns the report and the model's logits per input.
pub fn evaluate_tensors(model: &dyn RunModel, inputs: &[Tensor], labels: &[Option<usize>], reference: Option<&[Vec<f32>]>, progress: bool) -> Result<(EvalReport, Vec<Vec<f32>>), EvalError> {
    let bar = if progress { ProgressBar::new(inputs.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(model.describe());
    let logits: Vec<Vec<f32>> = inputs
        .par_iter()
        .map(|x| {
            let out = model.run(x.clone())?;
            bar.inc(1);
            Ok(out.as_f32().map_err(|e| EvalError::Model(e.to_string()))?.to_vec())
        })
        .collect::<Result<_, EvalError>>()?;
    bar.finish_and_clear();
    let mut t = Tally::default();
    for (i, l) in logits.iter().enumerate() {
        let top = top_k(l, 5);
        t.n += 1;
        if let Some(Some(label)) = labels.get(i) {
            t.top1 += (top[0] == *label) as usize;
            t.top5 += top.contains(label) as usize;
        }
        if let Some(r) = reference.and_then(|r| r.get(i)) {
            let rtop = top_k(r, 1)[0];
            t.agree += (rtop == top[0]) as usize;
            if let Some(Some(label)) = labels.get(i) {
                t.ref_top1 += (rtop == *label) as usize;
            }
            for (&a, &b) in r.iter().zip(l) {
                t.signal += (a as f64).powi(2);
                t.noise += ((a - b) as f64).powi(2);
            }
        }
    }
    let frac = |c: usize| if t.n == 0 { 0.0 } else { c as f64 / t.n as f64 };
    let has_labels = labels.iter().any(|l| l.is_some());
    let has_ref = reference.is_some();
    let report = EvalReport {
        model: model.describe(),
        n: t.n,
        skipped: Vec::new(),
        top1: has_labels.then(|| frac(t.top1)),
        top5: has_labels.then(|| frac(t.top5)),
        agreement: has_ref.then(|| frac(t.agree)),
        sqnr_db: has_ref.then(|| if t.noise == 0.0 { f64::INFINITY } else { 10.0 * (t.signal / t.noise).log10() }),
        reference_top1: (has_ref && has_labels).then(|| frac(t.ref_top1)),
    };
    Ok((report, logits))
}

/// Median wall time of `runs` single-image runs (after `warmup`), in milliseconds, on the
/// calling thread.
pub fn median_latency_ms(model: &dyn RunModel, input: &Tensor, warmup: usize, runs: usize) -> Result<f64, EvalError> {
    for _ in 0..warmup {
        model.run(input.clone())?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let x = input.clone();
        let t0 = std::time::Instant::now();
        model.run(x)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(times[times.len() / 2])
}
