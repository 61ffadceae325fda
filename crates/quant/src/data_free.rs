//! Data-free statistics: activation ranges and per-channel moments without images, from the
//! BatchNormalization statistics kept at folding (DFQ, Nagel et al. 2019).
//!
//! Each value gets per-channel (mean, variance), propagated in graph order: a folded BN layer's
//! output is N(β, γ²); another linear layer's follows from its weights (inputs taken as
//! independent); ReLU/ReLU6/bounds give clipped-normal moments; Add sums. The per-tensor range
//! is mean ± K·σ over channels, cut to what the activation can produce.

use std::collections::BTreeMap;

use subq_ir::{Graph, Op};
use subq_transforms::bn_fold::BnStats;

use crate::calibrate::{Calibration, ChannelMoments};
use crate::QuantError;

/// Range half-width in standard deviations.
const K_SIGMA: f64 = 4.0;

fn pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// Mean and variance of clip(X, a, b) for X ~ N(μ, σ²).
pub fn clipped_normal(mu: f64, var: f64, a: f64, b: f64) -> (f64, f64) {
    let s = var.sqrt().max(1e-12);
    let (al, be) = ((a - mu) / s, (b - mu) / s);
    let (pa, pb) = (if a.is_finite() { cdf(al) } else { 0.0 }, if b.is_finite() { cdf(be) } else { 1.0 });
    let (da, db) = (if a.is_finite() { pdf(al) } else { 0.0 }, if b.is_finite() { pdf(be) } else { 0.0 });
    let z = pb - pa;
    // E[X; a<X<b] and E[X²; a<X<b] of the untruncated normal.
    let m1 = mu * z + s * (da - db);
    let ta = if a.is_finite() { al * da } else { 0.0 };
    let tb = if b.is_finite() { be * db } else { 0.0 };
    let m2 = (mu * mu + var) * z + 2.0 * mu * s * (da - db) + var * (ta - tb);
    let (ea, eb) = (if a.is_finite() { a * pa } else { 0.0 }, if b.is_finite() { b * (1.0 - pb) } else { 0.0 });
    let (ea2, eb2) = (if a.is_finite() { a * a * pa } else { 0.0 }, if b.is_finite() { b * b * (1.0 - pb) } else { 0.0 });
    let mean = m1 + ea + eb;
    let second = m2 + ea2 + eb2;
    (mean, (second - mean * mean).max(0.0))
}

#[derive(Clone, Debug)]
struct Stats {
    mean: Vec<f64>,
    var: Vec<f64>,
    lo: f64,
    hi: f64,
    /// The range is [lo, hi] itself: the output of a fixed clip such as ReLU6 (and pooling over
    /// one). BN's normal model has thin tails where trained ReLU6 layers saturate often:
    /// EfficientNet-Lite0's head reaches 6 where mean + 4σ says 3.6, and clipping it there cost
    /// 6.5 dB of logits SQNR (BENCHMARKS.md).
    whole: bool,
}

impl Stats {
    fn range(&self) -> (f32, f32) {
        if self.whole {
            return (self.lo as f32, self.hi as f32);
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (m, v) in self.mean.iter().zip(&self.var) {
            lo = lo.min(m - K_SIGMA * v.sqrt());
            hi = hi.max(m + K_SIGMA * v.sqrt());
        }
        (lo.max(self.lo) as f32, hi.min(self.hi) as f32)
    }
}

/// A [`Calibration`] computed from BN statistics and the input's value range.
pub fn data_free_calibration(g: &Graph, bn: &BnStats, input_range: (f32, f32)) -> Result<Calibration, QuantError> {
    let mut st: BTreeMap<String, Stats> = BTreeMap::new();
    let input = &g.inputs[0];
    let c_in = g.shape(input).map(|s| s[1]).unwrap_or(3);
    let (a, b) = (input_range.0 as f64, input_range.1 as f64);
    // Pixels taken as uniform over the input range.
    st.insert(input.clone(), Stats { mean: vec![(a + b) / 2.0; c_in], var: vec![(b - a).powi(2) / 12.0; c_in], lo: a, hi: b, whole: false });
    for n in &g.nodes {
        let get = |v: &str| st.get(v).cloned().ok_or_else(|| QuantError::Invalid(format!("data-free: no statistics for '{v}' (input of node '{}')", n.name)));
        let out = &n.outputs[0];
        let s = match &n.op {
            Op::Conv(_) | Op::Gemm { .. } => {
                if let Some((beta, gamma)) = bn.get(out) {
                    Stats { mean: beta.iter().map(|&x| x as f64).collect(), var: gamma.iter().map(|&x| (x as f64).powi(2)).collect(), lo: f64::NEG_INFINITY, hi: f64::INFINITY, whole: false }
                } else {
                    let x = get(&n.inputs[0])?;
                    let w = g.initializer(&n.inputs[1]).ok_or_else(|| QuantError::Invalid(format!("data-free: weight of '{}' is not constant", n.name)))?;
                    let wv = w.to_f32_vec();
                    let (out_c, per, in_g, taps, out_g) = match &n.op {
                        Op::Conv(c) => (w.shape[0], w.len() / w.shape[0], w.shape[1], w.shape[2] * w.shape[3], w.shape[0] / c.group),
                        Op::Gemm { trans_b: true, .. } => (w.shape[0], w.shape[1], w.shape[1], 1, w.shape[0]),
                        _ => return Err(QuantError::Invalid(format!("data-free: Gemm '{}' without transB is not supported", n.name))),
                    };
                    let bias = n.inputs.get(2).filter(|s| !s.is_empty()).and_then(|b| g.initializer(b)).map(|t| t.to_f32_vec()).unwrap_or_else(|| vec![0.0; out_c]);
                    let (mut mean, mut var) = (vec![0f64; out_c], vec![0f64; out_c]);
                    for o in 0..out_c {
                        mean[o] = bias[o] as f64;
                        for j in 0..per {
                            let i = (o / out_g) * in_g + j / taps;
                            let wj = wv[o * per + j] as f64;
                            mean[o] += wj * x.mean[i];
                            var[o] += wj * wj * x.var[i];
                        }
                    }
                    Stats { mean, var, lo: f64::NEG_INFINITY, hi: f64::INFINITY, whole: false }
                }
            }
            Op::Relu | Op::Clip { .. } => {
                let x = get(&n.inputs[0])?;
                let (lo, hi) = match n.op {
                    Op::Clip { min, max } => (min as f64, max as f64),
                    _ => (0.0, f64::INFINITY),
                };
                let (mean, var) = x.mean.iter().zip(&x.var).map(|(&m, &v)| clipped_normal(m, v, lo, hi)).unzip();
                let (lo, hi) = (lo.max(x.lo), hi.min(x.hi));
                Stats { mean, var, lo, hi, whole: matches!(n.op, Op::Clip { .. }) && lo.is_finite() && hi.is_finite() }
            }
            Op::Min => {
                let x = get(&n.inputs[0])?;
                let bound = g.initializer(&n.inputs[1]).ok_or_else(|| QuantError::Invalid(format!("data-free: Min '{}' needs a constant bound", n.name)))?.to_f32_vec();
                let bmax = bound.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let (mean, var) = x.mean.iter().zip(&x.var).enumerate().map(|(c, (&m, &v))| clipped_normal(m, v, x.lo, bound[c.min(bound.len() - 1)] as f64)).unzip();
                Stats { mean, var, lo: x.lo, hi: bmax.min(x.hi), whole: false }
            }
            Op::Add => {
                let (p, q) = (get(&n.inputs[0])?, get(&n.inputs[1])?);
                Stats { mean: p.mean.iter().zip(&q.mean).map(|(a, b)| a + b).collect(), var: p.var.iter().zip(&q.var).map(|(a, b)| a + b).collect(), lo: p.lo + q.lo, hi: p.hi + q.hi, whole: false }
            }
            // Spatial correlation is unknown: pooling keeps the per-channel variance (a wide range errs
            // on the safe side of clipping).
            Op::GlobalAveragePool | Op::AveragePool(_) | Op::MaxPool(_) | Op::Flatten { .. } | Op::Reshape { .. } | Op::Identity => get(&n.inputs[0])?,
            other => return Err(QuantError::Invalid(format!("data-free quantization cannot estimate the output of node '{}' ({}); calibrate with images instead", n.name, other.name()))),
        };
        st.insert(out.clone(), s);
    }
    let mut c = Calibration::default();
    for (k, s) in st {
        c.ranges.insert(k.clone(), s.range());
        c.moments.insert(k, ChannelMoments { count: 1.0, sum: s.mean.clone(), sum_sq: s.mean.iter().zip(&s.var).map(|(m, v)| v + m * m).collect(), min: s.mean.iter().zip(&s.var).map(|(m, v)| (m - 3.0 * v.sqrt()) as f32).collect() });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_of_standard_normal() {
        // E[max(X,0)] = 1/√(2π), E[max(X,0)²] = 1/2.
        let (m, v) = clipped_normal(0.0, 1.0, 0.0, f64::INFINITY);
        assert!((m - 0.398_942_28).abs() < 1e-6);
        assert!((v - (0.5 - m * m)).abs() < 1e-6);
    }

    #[test]
    fn clipping_far_outside_the_mass_changes_nothing() {
        let (m, v) = clipped_normal(1.0, 4.0, -100.0, 100.0);
        assert!((m - 1.0).abs() < 1e-9 && (v - 4.0).abs() < 1e-6);
        // All mass above b: the output is b.
        let (m, v) = clipped_normal(50.0, 1.0, 0.0, 6.0);
        assert!((m - 6.0).abs() < 1e-9 && v < 1e-9);
    }
}
