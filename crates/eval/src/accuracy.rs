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
    /// Keep every image's model input and logits (in image order) for saving.
    pub keep_tensors: bool,
}

/// Model inputs and logits of an evaluation, in image order (skipped images left out).
#[derive(Clone, Debug, Default)]
pub struct KeptTensors {
    pub inputs: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
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
    /// The same with each image's mean logit error removed first. A constant added to every
    /// logit of an image changes no ranking (on MobileNetV2 it was half of the error), so this
    /// is the part of the error that can move a top-1.
    pub sqnr_offset_free_db: Option<f64>,
    /// Least-squares slope of the model's logits on the reference's, Σ ref·model / Σ ref². Below
    /// 1 the quantized model shrinks the logits, a systematic error rather than noise (it
    /// explained EfficientNet-Lite0's SQNR swing over CLE strengths: 0.90 at 0.6).
    pub logits_gain: Option<f64>,
    pub reference_top1: Option<f64>,
    /// 95% Wilson score intervals of top-1 and agreement: on a few hundred images a point or two
    /// of difference is within sampling noise, and these say how much.
    pub top1_ci95: Option<(f64, f64)>,
    pub agreement_ci95: Option<(f64, f64)>,
    /// With labels and a reference: images this model classifies right and the reference wrong
    /// (gained), and the other way round (lost). Their difference is the top-1 change; their sum
    /// shows how many images actually moved.
    pub images_gained: Option<usize>,
    pub images_lost: Option<usize>,
}

fn sqnr(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 { f64::INFINITY } else { 10.0 * (signal / noise).log10() }
}

/// 95% Wilson score interval of a proportion `successes / n` (better than ±1.96·σ near 0 or 1,
/// where agreement lives).
pub fn wilson95(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n) = (1.959_963_984_540_054_f64, n as f64);
    let p = successes as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
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
    gained: usize,
    lost: usize,
    signal: f64,
    noise: f64,
    noise_offset_free: f64,
    cross: f64,
    skipped: Vec<String>,
}

impl Tally {
    /// Score one image's logits against its label and the reference model's logits.
    fn add(&mut self, logits: &[f32], label: Option<usize>, reference: Option<&[f32]>) {
        let top = top_k(logits, 5);
        self.n += 1;
        if let Some(l) = label {
            self.top1 += (top[0] == l) as usize;
            self.top5 += top.contains(&l) as usize;
        }
        if let Some(r) = reference {
            let rtop = top_k(r, 1)[0];
            self.agree += (rtop == top[0]) as usize;
            if let Some(l) = label {
                self.ref_top1 += (rtop == l) as usize;
                self.gained += (top[0] == l && rtop != l) as usize;
                self.lost += (top[0] != l && rtop == l) as usize;
            }
            let offset = r.iter().zip(logits).map(|(&a, &b)| (b - a) as f64).sum::<f64>() / r.len().max(1) as f64;
            for (&a, &b) in r.iter().zip(logits) {
                self.signal += (a as f64).powi(2);
                self.noise += ((a - b) as f64).powi(2);
                self.noise_offset_free += ((b - a) as f64 - offset).powi(2);
                self.cross += a as f64 * b as f64;
            }
        }
    }

    fn report(self, model: String, has_labels: bool, has_ref: bool) -> EvalReport {
        let frac = |c: usize| if self.n == 0 { 0.0 } else { c as f64 / self.n as f64 };
        let mut skipped = self.skipped;
        skipped.sort();
        EvalReport {
            model,
            n: self.n,
            skipped,
            top1: has_labels.then(|| frac(self.top1)),
            top5: has_labels.then(|| frac(self.top5)),
            agreement: has_ref.then(|| frac(self.agree)),
            sqnr_db: has_ref.then(|| sqnr(self.signal, self.noise)),
            sqnr_offset_free_db: has_ref.then(|| sqnr(self.signal, self.noise_offset_free)),
            logits_gain: (has_ref && self.signal > 0.0).then(|| self.cross / self.signal),
            reference_top1: (has_ref && has_labels).then(|| frac(self.ref_top1)),
            top1_ci95: has_labels.then(|| wilson95(self.top1, self.n)),
            agreement_ci95: has_ref.then(|| wilson95(self.agree, self.n)),
            images_gained: (has_ref && has_labels).then_some(self.gained),
            images_lost: (has_ref && has_labels).then_some(self.lost),
        }
    }
}

fn progress_bar(len: usize, message: String, show: bool) -> ProgressBar {
    let bar = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(message);
    bar
}

pub fn evaluate(model: &dyn RunModel, items: &[ImageItem], opts: &EvalOptions) -> Result<(EvalReport, Option<KeptTensors>), EvalError> {
    // Labels are resolved up front so that an unknown label fails before any inference.
    let labels: Vec<Option<usize>> = match opts.synsets {
        Some(s) => items.iter().map(|it| subq_calib::dataset::label_of(it, s).map(Some)).collect::<Result<_, _>>()?,
        None => vec![None; items.len()],
    };
    let bar = progress_bar(items.len(), model.describe(), opts.progress);
    let tally = Mutex::new(Tally::default());
    // One slot per image (its input and logits), filled by whichever worker runs it.
    type Slot = Mutex<Option<(Vec<f32>, Vec<f32>)>>;
    let kept: Vec<Slot> = if opts.keep_tensors { items.iter().map(|_| Mutex::new(None)).collect() } else { Vec::new() };
    // Each worker decodes its image and runs it, so decoding of one image overlaps inference of
    // another; the pool size is set by the caller (`--threads`).
    items.par_iter().zip(labels.par_iter()).enumerate().try_for_each(|(index, (item, label))| -> Result<(), EvalError> {
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
        let kept_input = opts.keep_tensors.then(|| pixels.clone());
        let input = Tensor::f32(vec![1, 3, opts.height, opts.width], pixels).map_err(|e| EvalError::Model(e.to_string()))?;
        let reference = match opts.reference {
            Some(r) => Some(r.run(input.clone())?),
            None => None,
        };
        let out = model.run(input)?;
        let logits = out.as_f32().map_err(|e| EvalError::Model(e.to_string()))?;
        let reference = match &reference {
            Some(r) => Some(r.as_f32().map_err(|e| EvalError::Model(e.to_string()))?),
            None => None,
        };
        tally.lock().unwrap().add(logits, *label, reference);
        if let Some(pixels) = kept_input {
            *kept[index].lock().unwrap() = Some((pixels, logits.to_vec()));
        }
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let report = tally.into_inner().unwrap().report(model.describe(), opts.synsets.is_some(), opts.reference.is_some());
    let kept = opts.keep_tensors.then(|| {
        let (inputs, logits) = kept.into_iter().filter_map(|k| k.into_inner().unwrap()).unzip();
        KeptTensors { inputs, logits }
    });
    Ok((report, kept))
}

/// `rows` (all of length `row_shape`'s product) as a float32 `.npy` file of shape
/// `[rows.len(), row_shape…]`, in memory, for the caller to write atomically.
pub fn npy_bytes(rows: &[Vec<f32>], row_shape: &[usize]) -> std::io::Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let mut shape = vec![rows.len() as u64];
    shape.extend(row_shape.iter().map(|&d| d as u64));
    let mut bytes = Vec::new();
    let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(&shape).writer(std::io::Cursor::new(&mut bytes)).begin_nd()?;
    for r in rows {
        w.extend(r.iter().copied())?;
    }
    w.finish()?;
    Ok(bytes)
}

/// Scores of a model on already-decoded inputs, against labels and optionally reference logits
/// (both indexed like `inputs`). Returns the report and the model's logits per input.
pub fn evaluate_tensors(model: &dyn RunModel, inputs: &[Tensor], labels: &[Option<usize>], reference: Option<&[Vec<f32>]>, progress: bool) -> Result<(EvalReport, Vec<Vec<f32>>), EvalError> {
    let bar = progress_bar(inputs.len(), model.describe(), progress);
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
        t.add(l, labels.get(i).copied().flatten(), reference.and_then(|r| r.get(i)).map(|r| r.as_slice()));
    }
    let report = t.report(model.describe(), labels.iter().any(|l| l.is_some()), reference.is_some());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_logit() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 1.0], 1), vec![0]);
    }

    #[test]
    fn wilson_interval_matches_textbook_values() {
        // Reference values from the closed form (e.g. Newcombe 1998, table I: 0/10 and 5/10).
        let (lo, hi) = wilson95(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson95(5, 10);
        assert!((lo - 0.2366).abs() < 1e-4 && (hi - 0.7634).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson95(391, 400);
        assert!(lo < 391.0 / 400.0 && hi > 391.0 / 400.0 && hi < 1.0);
    }

    #[test]
    fn tally_counts_images_gained_and_lost_against_the_reference() {
        let mut t = Tally::default();
        // (model logits, label, reference logits): right/wrong, wrong/right, right/right, wrong/wrong.
        t.add(&[0.0, 1.0], Some(1), Some(&[1.0, 0.0]));
        t.add(&[1.0, 0.0], Some(1), Some(&[0.0, 1.0]));
        t.add(&[1.0, 0.0], Some(1), Some(&[0.0, 1.0]));
        t.add(&[0.0, 1.0], Some(1), Some(&[0.0, 1.0]));
        t.add(&[1.0, 0.0], Some(1), Some(&[1.0, 0.0]));
        let r = t.report("m".into(), true, true);
        assert_eq!((r.images_gained, r.images_lost), (Some(1), Some(2)));
        assert_eq!(r.top1, Some(0.4));
        assert_eq!(r.reference_top1, Some(0.6));
        assert_eq!(r.agreement, Some(0.4));
    }

    #[test]
    fn tally_separates_an_image_offset_and_a_gain_from_noise() {
        // Reference logits with zero mean per image, so that an offset and a gain are orthogonal.
        let refs = [[1.0f32, -1.0, 2.0, -2.0], [0.5, 1.5, -1.0, -1.0]];
        let mut offset = Tally::default();
        let mut shrunk = Tally::default();
        for (i, r) in refs.iter().enumerate() {
            let moved: Vec<f32> = r.iter().map(|v| v + 0.5 * (i as f32 + 1.0)).collect();
            offset.add(&moved, None, Some(r));
            let scaled: Vec<f32> = r.iter().map(|v| 0.9 * v).collect();
            shrunk.add(&scaled, None, Some(r));
        }
        let (o, s) = (offset.report("o".into(), false, true), shrunk.report("s".into(), false, true));
        // A per-image constant: finite SQNR, no error left once it is removed, gain 1.
        assert!(o.sqnr_db.unwrap().is_finite());
        assert_eq!(o.sqnr_offset_free_db, Some(f64::INFINITY));
        assert!((o.logits_gain.unwrap() - 1.0).abs() < 1e-9);
        // A 0.9 gain: error 0.1·ref everywhere, 20 dB either way.
        assert!((s.logits_gain.unwrap() - 0.9).abs() < 1e-6);
        assert!((s.sqnr_db.unwrap() - 20.0).abs() < 1e-4 && (s.sqnr_offset_free_db.unwrap() - 20.0).abs() < 1e-4);
    }
}
