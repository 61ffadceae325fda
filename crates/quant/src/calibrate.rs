//! Run the FP32 model over calibration images and record each activation's range.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

/// Per-channel (axis 1) sums over batch and spatial positions.
#[derive(Clone, Debug, Default)]
pub struct ChannelMoments {
    pub count: f64,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
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
        }
        for (i, chunk) in v.chunks(inner.max(1)).enumerate() {
            let ch = i % c;
            let (mut s, mut s2) = (0f64, 0f64);
            for &x in chunk {
                s += x as f64;
                s2 += (x as f64) * (x as f64);
            }
            self.sum[ch] += s;
            self.sum_sq[ch] += s2;
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
fn load_inputs(g: &Graph, items: &[ImageItem], opts: &CalibOptions) -> Result<(Vec<Tensor>, Vec<String>), QuantError> {
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

/// Calibrate on already-preprocessed input tensors.
pub fn calibrate_tensors(g: &Graph, inputs: &[Tensor], observer: ObserverKind, progress: bool) -> Result<Calibration, QuantError> {
    let exec = Fp32Executor::new(g);
    let input_name = g.inputs[0].clone();
    // Pass 1: min/max of every value.
    let minmax: Mutex<BTreeMap<String, MinMax>> = Mutex::new(BTreeMap::new());
    let moments: Mutex<BTreeMap<String, ChannelMoments>> = Mutex::new(BTreeMap::new());
    let b = bar(inputs.len(), "calibrating (min/max)", progress);
    inputs.par_iter().try_for_each(|x| -> Result<(), QuantError> {
        let mut local: BTreeMap<String, MinMax> = BTreeMap::new();
        let mut local_moments: BTreeMap<String, ChannelMoments> = BTreeMap::new();
        local.entry(input_name.clone()).or_default().observe(x.as_f32().expect("f32 input"));
        local_moments.entry(input_name.clone()).or_default().observe(x);
        exec.run_observed(vec![x.clone()], &mut |name, t| {
            if let Ok(v) = t.as_f32() {
                local.entry(name.to_string()).or_default().observe(v);
                local_moments.entry(name.to_string()).or_default().observe(t);
            }
        })?;
        let mut global = minmax.lock().unwrap();
        for (k, m) in local {
            global.entry(k).or_default().merge(&m);
        }
        drop(global);
        let mut global = moments.lock().unwrap();
        for (k, m) in local_moments {
            global.entry(k).or_default().merge(&m);
        }
        b.inc(1);
        Ok(())
    })?;
    b.finish_and_clear();
    let minmax = minmax.into_inner().unwrap();
    let ranges = if !observer.needs_histogram() {
        minmax.iter().map(|(k, m)| (k.clone(), (m.min, m.max))).collect()
    } else {
        // Pass 2: histograms over the pass-1 ranges.
        let fresh = || -> BTreeMap<String, Histogram> { minmax.iter().map(|(k, m)| (k.clone(), Histogram::new(m.min.min(0.0), m.max.max(0.0)))).collect() };
        let hists = Mutex::new(fresh());
        let b = bar(inputs.len(), "calibrating (histograms)", progress);
        inputs.par_iter().try_for_each(|x| -> Result<(), QuantError> {
            let mut local = fresh();
            local.get_mut(&input_name).expect("input observed").observe(x.as_f32().expect("f32"));
            exec.run_observed(vec![x.clone()], &mut |name, t| {
                if let (Ok(v), Some(h)) = (t.as_f32(), local.get_mut(name)) {
                    h.observe(v);
                }
            })?;
            let mut global = hists.lock().unwrap();
            for (k, h) in local {
                global.get_mut(&k).expect("same keys").merge(&h);
            }
            b.inc(1);
            Ok(())
        })?;
        b.finish_and_clear();
        hists
            .into_inner()
            .unwrap()
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
    Ok(Calibration { ranges, moments: moments.into_inner().unwrap(), images: inputs.len(), skipped: Vec::new() })
}
