//! Run the FP32 model over calibration images and record each activation's range.

use std::collections::BTreeMap;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use subq_calib::observer::{Histogram, MinMax, ObserverKind};
use subq_calib::{ImageItem, Preprocess};
use subq_ir::Graph;
use subq_runtime::Fp32Executor;
use subq_tensor::Tensor;

use crate::QuantError;

pub struct CalibOptions {
    pub observer: ObserverKind,
    pub preprocess: Preprocess,
    pub skip_unreadable: bool,
    pub progress: bool,
}

/// Observed [min, max] of every activation (graph inputs and node outputs) by value name, and
/// per-channel first and second moments (what split selection and bias correction weigh
/// weight errors with).
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub ranges: BTreeMap<String, (f32, f32)>,
    pub moments: BTreeMap<String, ChannelMoments>,
    pub images: usize,
    pub skipped: Vec<String>,
}

/// Per-channel (axis 1) sums over batch and spatial positions, and the smallest value seen
/// (what high-bias absorption may move out of a channel).
#[derive(Clone, Debug, Default)]
pub struct ChannelMoments {
    pub count: f64,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
    pub min: Vec<f32>,
}

impl ChannelMoments {
    pub fn observe(&mut self, t: &Tensor) {
        let Ok(v) = t.as_f32() else { return };
        if t.shape.len() < 2 {
            return;
        }
        let c = t.shape[1];
        let inner: usize = t.shape[2..].iter().product();
        if self.sum.is_empty() {
            self.sum = vec![0.0; c];
            self.sum_sq = vec![0.0; c];
            self.min = vec![f32::INFINITY; c];
        }
        for (i, chunk) in v.chunks(inner.max(1)).enumerate() {
            let ch = i % c;
            let (mut s, mut s2, mut lo) = (0f64, 0f64, f32::INFINITY);
            for &x in chunk {
                s += x as f64;
                s2 += (x as f64) * (x as f64);
                lo = lo.min(x);
            }
            self.sum[ch] += s;
            self.sum_sq[ch] += s2;
            self.min[ch] = self.min[ch].min(lo);
        }
        self.count += (v.len() / c) as f64;
    }

    pub fn merge(&mut self, o: &ChannelMoments) {
        if self.sum.is_empty() {
            *self = o.clone();
            return;
        }
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&o.sum_sq) {
            *a += b;
        }
        for (a, b) in self.min.iter_mut().zip(&o.min) {
            *a = a.min(*b);
        }
        self.count += o.count;
    }

    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.count.max(1.0)).collect()
    }

    pub fn mean_sq(&self) -> Vec<f64> {
        self.sum_sq.iter().map(|s| s / self.count.max(1.0)).collect()
    }
}

fn bar(len: usize, msg: &str, show: bool) -> ProgressBar {
    let b = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    b.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    b.set_message(msg.to_string());
    b
}

/// Decode the calibration images once (they are reused by every pass).
pub fn load_inputs(g: &Graph, items: &[ImageItem], opts: &CalibOptions) -> Result<(Vec<Tensor>, Vec<String>), QuantError> {
    let shape = g.shape(&g.inputs[0]).ok_or_else(|| QuantError::Invalid("model input has no shape".into()))?.to_vec();
    if shape.len() != 4 || shape[1] != 3 {
        return Err(QuantError::Invalid(format!("model input has shape {shape:?}; calibration needs an N×3×H×W image input")));
    }
    let (h, w) = (shape[2], shape[3]);
    let b = bar(items.len(), "decoding calibration images", opts.progress);
    let loaded: Vec<Result<Tensor, (String, subq_calib::CalibError)>> = items
        .par_iter()
        .map(|it| {
            let r = opts.preprocess.load(&it.path, h, w).map(|px| Tensor::f32(vec![1, 3, h, w], px).expect("3·h·w values"));
            b.inc(1);
            r.map_err(|e| (it.path.display().to_string(), e))
        })
        .collect();
    b.finish_and_clear();
    let (mut inputs, mut skipped) = (Vec::new(), Vec::new());
    for r in loaded {
        match r {
            Ok(t) => inputs.push(t),
            Err((path, _)) if opts.skip_unreadable => skipped.push(path),
            Err((_, e)) => return Err(e.into()),
        }
    }
    if inputs.is_empty() {
        return Err(QuantError::Invalid("no calibration image could be used".into()));
    }
    Ok((inputs, skipped))
}

/// Calibrate on images (decoded with `opts.preprocess`).
pub fn calibrate(g: &Graph, items: &[ImageItem], opts: &CalibOptions) -> Result<Calibration, QuantError> {
    let (inputs, skipped) = load_inputs(g, items, opts)?;
    let mut c = calibrate_tensors(g, &inputs, opts.observer, opts.progress)?;
    c.skipped = skipped;
    Ok(c)
}

/// Calibration work is split into this many fixed chunks whose partial statistics are merged in
/// order: floating-point sums then do not depend on thread count or scheduling, so the same
/// images always give byte-identical models.
const CHUNKS: usize = 8;

fn chunked<T: Send>(inputs: &[Tensor], bar: &ProgressBar, work: impl Fn(&Tensor, &mut T) -> Result<(), QuantError> + Sync, fresh: impl Fn() -> T + Sync) -> Result<Vec<T>, QuantError> {
    let size = inputs.len().div_ceil(CHUNKS).max(1);
    inputs
        .par_chunks(size)
        .map(|chunk| {
            let mut acc = fresh();
            for x in chunk {
                work(x, &mut acc)?;
                bar.inc(1);
            }
            Ok(acc)
        })
        .collect()
}

/// Calibrate on already-preprocessed input tensors.
pub fn calibrate_tensors(g: &Graph, inputs: &[Tensor], observer: ObserverKind, progress: bool) -> Result<Calibration, QuantError> {
    let exec = Fp32Executor::new(g);
    let input_name = g.inputs[0].clone();
    type Pass1 = (BTreeMap<String, MinMax>, BTreeMap<String, ChannelMoments>);
    // Pass 1: min/max and channel moments of every value.
    let b = bar(inputs.len(), "calibrating (min/max)", progress);
    let partials: Vec<Pass1> = chunked(
        inputs,
        &b,
        |x, (mm, mo): &mut Pass1| {
            mm.entry(input_name.clone()).or_default().observe(x.as_f32().expect("f32 input"));
            mo.entry(input_name.clone()).or_default().observe(x);
            exec.run_observed(vec![x.clone()], &mut |name, t| {
                if let Ok(v) = t.as_f32() {
                    mm.entry(name.to_string()).or_default().observe(v);
                    mo.entry(name.to_string()).or_default().observe(t);
                }
            })?;
            Ok(())
        },
        Default::default,
    )?;
    b.finish_and_clear();
    let (mut minmax, mut moments): Pass1 = Default::default();
    for (mm, mo) in partials {
        for (k, m) in mm {
            minmax.entry(k).or_default().merge(&m);
        }
        for (k, m) in mo {
            moments.entry(k).or_default().merge(&m);
        }
    }
    let ranges = if !observer.needs_histogram() {
        minmax.iter().map(|(k, m)| (k.clone(), (m.min, m.max))).collect()
    } else {
        // Pass 2: histograms over the pass-1 ranges.
        let fresh = || -> BTreeMap<String, Histogram> { minmax.iter().map(|(k, m)| (k.clone(), Histogram::new(m.min.min(0.0), m.max.max(0.0)))).collect() };
        let b = bar(inputs.len(), "calibrating (histograms)", progress);
        let partials = chunked(
            inputs,
            &b,
            |x, local: &mut BTreeMap<String, Histogram>| {
                local.get_mut(&input_name).expect("input observed").observe(x.as_f32().expect("f32"));
                exec.run_observed(vec![x.clone()], &mut |name, t| {
                    if let (Ok(v), Some(h)) = (t.as_f32(), local.get_mut(name)) {
                        h.observe(v);
                    }
                })?;
                Ok(())
            },
            fresh,
        )?;
        b.finish_and_clear();
        let mut hists = fresh();
        for p in partials {
            for (k, h) in p {
                hists.get_mut(&k).expect("same keys").merge(&h);
            }
        }
        hists
            .into_iter()
            .map(|(k, h)| {
                let r = match observer {
                    ObserverKind::Percentile(tail) => h.percentile_range(tail),
                    _ => h.mse_range(),
                };
                (k, r)
            })
            .collect()
    };
    Ok(Calibration { ranges, moments, images: inputs.len(), skipped: Vec::new() })
}
