//! Subtensor splitting: W = W1 + W2, each part on its own per-tensor asymmetric uint8 grid.
//!
//! Every candidate is scored by the expected layer-output error it causes on the calibration
//! data: for output channel o, E‖ΔW_o·x‖² ≈ Σ_i ‖ΔW[o,i,·]‖² · E[x_i²] (input channels taken as
//! uncorrelated; E[x_i²] measured during calibration). The same score picks the clipping range,
//! the split kind and, against a size/latency budget, which layers get split at all.

use serde::Serialize;
use subq_tensor::{QParams, QuantRange, Tensor};

use crate::plan::WeightPart;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// W1 = clip(W, −t, t), W2 = W − W1: the few large weights go to a sparse second part.
    Outlier,
    /// Channels sorted by range: narrow channels in W1, wide ones in W2 (zeros elsewhere).
    ChannelGroup,
    /// W1 = W on one grid; W2 = W − dequant(W1) on a grid as fine as W1's rounding error.
    Residual,
}

impl SplitKind {
    pub const ALL: [SplitKind; 3] = [SplitKind::Outlier, SplitKind::ChannelGroup, SplitKind::Residual];
}

/// How a weight is laid out relative to the channels of its input: for output channel o and
/// flat index j within o's weights, the input channel is `input_channel(o, j)`.
#[derive(Clone, Copy, Debug)]
pub struct WeightLayout {
    pub out_channels: usize,
    /// Weights per output channel.
    pub per_output: usize,
    /// Input channels per group (1 for depthwise).
    pub in_per_group: usize,
    /// Kernel taps per input channel (kh·kw).
    pub taps: usize,
    pub out_per_group: usize,
}

impl WeightLayout {
    #[inline]
    pub fn input_channel(&self, o: usize, j: usize) -> usize {
        (o / self.out_per_group) * self.in_per_group + j / self.taps
    }
}

/// Expected layer-output error of replacing `w` by `wq`, as (mean over output channels of the
/// channel's noise-to-signal ratio, 1). Channels are weighed equally, not by their output power:
/// after BN folding a channel's magnitude says little about its importance downstream (the next
/// layer was trained on the normalized channel), and a per-tensor grid fails precisely on the
/// small channels that a power-weighted sum would hide. Channels without signal are skipped.
pub fn output_error(w: &[f32], wq: &[f32], layout: &WeightLayout, stats: &InputStats) -> (f64, f64) {
    let mean_sq = &stats.mean_sq;
    let (mut nsr, mut counted) = (0f64, 0usize);
    for o in 0..layout.out_channels {
        // The channel's output power includes its constant part (bias): a channel that BN
        // folding shrank to almost nothing but a bias carries no information to lose.
        let (mut err, mut sig) = (0f64, stats.bias_sq.get(o).copied().unwrap_or(0.0));
        for j in 0..layout.per_output {
            let idx = o * layout.per_output + j;
            let m2 = mean_sq.get(layout.input_channel(o, j)).copied().unwrap_or(1.0);
            let d = (w[idx] - wq[idx]) as f64;
            err += d * d * m2;
            sig += (w[idx] as f64).powi(2) * m2;
        }
        if sig > 0.0 {
            nsr += err / sig;
            counted += 1;
        }
    }
    (nsr / counted.max(1) as f64, 1.0)
}

/// Calibration statistics a weight error is weighed with: E[x_i²] per input channel and the
/// squared bias per output channel.
#[derive(Clone, Debug, Default)]
pub struct InputStats {
    pub mean_sq: Vec<f64>,
    pub bias_sq: Vec<f64>,
}

/// Per-tensor asymmetric uint8 parameters covering [lo, hi].
fn grid(lo: f32, hi: f32) -> QParams {
    QParams::asymmetric(lo, hi, QuantRange::U8)
}

pub fn fake_quantize(w: &[f32], q: &QParams) -> Vec<f32> {
    w.iter().map(|&x| q.fake_quantize(x, 0)).collect()
}

fn min_max(w: &[f32]) -> (f32, f32) {
    w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)))
}

/// A scored way of representing one weight tensor.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub kind: Option<SplitKind>,
    /// Clip factor applied to a single-part grid (1.0 = full range).
    pub clip: f32,
    pub parts: Vec<Vec<f32>>,
    pub params: Vec<QParams>,
    pub error: f64,
    pub signal: f64,
}

impl Candidate {
    pub fn sqnr_db(&self) -> f64 {
        10.0 * (self.signal / self.error.max(1e-30)).log10()
    }

    pub fn into_parts(self, shape: &[usize]) -> Vec<WeightPart> {
        self.parts.into_iter().zip(self.params).map(|(v, p)| WeightPart { values: Tensor::f32(shape.to_vec(), v).expect("same shape"), params: p }).collect()
    }

    fn score(w: &[f32], kind: Option<SplitKind>, clip: f32, parts: Vec<Vec<f32>>, params: Vec<QParams>, layout: &WeightLayout, m2: &InputStats) -> Candidate {
        let mut sum = vec![0f32; w.len()];
        for (p, q) in parts.iter().zip(&params) {
            for (s, v) in sum.iter_mut().zip(fake_quantize(p, q)) {
                *s += v;
            }
        }
        let (error, signal) = output_error(w, &sum, layout, m2);
        Candidate { kind, clip, parts, params, error, signal }
    }
}

/// Power-weighted output error Σ‖ΔW·x‖² / Σ‖W·x‖² (the plain layer-output MSE ratio), used to
/// pick a clipping range: unlike the per-channel average it does not trade the large channels'
/// accuracy for the small ones' (which, measured on MobileNetV2, cost 2 dB of logits SQNR).
pub fn output_mse_ratio(w: &[f32], wq: &[f32], layout: &WeightLayout, stats: &InputStats) -> f64 {
    let (mut err, mut sig) = (0f64, 0f64);
    for o in 0..layout.out_channels {
        for j in 0..layout.per_output {
            let idx = o * layout.per_output + j;
            let m2 = stats.mean_sq.get(layout.input_channel(o, j)).copied().unwrap_or(1.0);
            err += ((w[idx] - wq[idx]) as f64).powi(2) * m2;
            sig += (w[idx] as f64).powi(2) * m2;
        }
    }
    err / sig.max(1e-30)
}

/// Single per-tensor grid, with the clip factor (scaling both ends of the range towards zero)
/// that minimizes the layer-output MSE: the weight-clipping analysis. Returns (full range, best).
pub fn clipped_single(w: &[f32], layout: &WeightLayout, m2: &InputStats) -> (Candidate, Candidate) {
    let (lo, hi) = min_max(w);
    let full = Candidate::score(w, None, 1.0, vec![w.to_vec()], vec![grid(lo, hi)], layout, m2);
    let mse = |f: f32| output_mse_ratio(w, &fake_quantize(w, &grid(lo * f, hi * f)), layout, m2);
    let (mut best_f, mut best_e) = (1.0f32, mse(1.0));
    for i in 1..=50 {
        let f = 1.0 - i as f32 * 0.01;
        let e = mse(f);
        if e < best_e {
            (best_f, best_e) = (f, e);
        }
    }
    // Only a clear gain (≥ 1 dB of layer-output MSE) is taken: measured end to end, marginal
    // clipping costs more through the activations and bias correction than it saves.
    if best_e > 0.8 * mse(1.0) {
        best_f = 1.0;
    }
    let best = Candidate::score(w, None, best_f, vec![w.to_vec()], vec![grid(lo * best_f, hi * best_f)], layout, m2);
    (full, best)
}

pub fn outlier_split(w: &[f32], layout: &WeightLayout, m2: &InputStats) -> Candidate {
    let mut mags: Vec<f32> = w.iter().map(|x| x.abs()).collect();
    mags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut best: Option<Candidate> = None;
    // Thresholds at quantiles of |w| (keep 50%…99.9% of the weights in the dense part).
    for q in [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999] {
        let t = mags[((mags.len() - 1) as f64 * q) as usize];
        if t <= 0.0 {
            continue;
        }
        let w1: Vec<f32> = w.iter().map(|&x| x.clamp(-t, t)).collect();
        let w2: Vec<f32> = w.iter().zip(&w1).map(|(a, b)| a - b).collect();
        let (l1, h1) = min_max(&w1);
        let (l2, h2) = min_max(&w2);
        let c = Candidate::score(w, Some(SplitKind::Outlier), 1.0, vec![w1, w2], vec![grid(l1, h1), grid(l2, h2)], layout, m2);
        if best.as_ref().is_none_or(|b| c.error < b.error) {
            best = Some(c);
        }
    }
    best.unwrap_or_else(|| residual_split(w, layout, m2))
}

pub fn channel_group_split(w: &[f32], layout: &WeightLayout, m2: &InputStats) -> Candidate {
    let per = layout.per_output;
    let ranges: Vec<f32> = (0..layout.out_channels)
        .map(|o| {
            let (a, b) = min_max(&w[o * per..(o + 1) * per]);
            b - a
        })
        .collect();
    let mut order: Vec<usize> = (0..layout.out_channels).collect();
    order.sort_by(|&a, &b| ranges[a].partial_cmp(&ranges[b]).unwrap().then(a.cmp(&b)));
    let mut best: Option<Candidate> = None;
    // The k narrowest channels go to W1, the rest to W2; try k on a coarse grid.
    let steps = 24.min(layout.out_channels.saturating_sub(1)).max(1);
    for s in 1..=steps {
        let k = (layout.out_channels * s / (steps + 1)).max(1);
        let mut in_first = vec![false; layout.out_channels];
        for &o in &order[..k] {
            in_first[o] = true;
        }
        let w1: Vec<f32> = w.iter().enumerate().map(|(i, &x)| if in_first[i / per] { x } else { 0.0 }).collect();
        let w2: Vec<f32> = w.iter().enumerate().map(|(i, &x)| if in_first[i / per] { 0.0 } else { x }).collect();
        let (l1, h1) = min_max(&w1);
        let (l2, h2) = min_max(&w2);
        let c = Candidate::score(w, Some(SplitKind::ChannelGroup), 1.0, vec![w1, w2], vec![grid(l1, h1), grid(l2, h2)], layout, m2);
        if best.as_ref().is_none_or(|b| c.error < b.error) {
            best = Some(c);
        }
    }
    best.expect("at least one candidate")
}

/// The residual part's grid: centred on zero point 128 with every stored value within 128 ± 64
/// (129 of the 256 uint8 levels). The residual is W1's rounding error, so even this grid puts it
/// ~75 dB under W, far below every other error in the model (the full 256 levels would add 6 dB
/// nobody can see); in exchange the part fits the engine's byte GEMM whole (`vpmaddubsw`
/// needs weight pairs with |d0| + |d1| ≤ 128), where a full-grid residual sent half its weights
/// to the slower i16 path.
fn residual_grid(lo: f32, hi: f32) -> QParams {
    let absmax = lo.abs().max(hi.abs());
    let scale = if absmax > 0.0 && absmax.is_finite() { absmax / RESIDUAL_HALF_LEVELS as f32 } else { 1.0 };
    QParams::per_tensor(scale, 128, QuantRange::U8)
}

/// The residual part's grid of a depthwise kernel: zero point 128 and exactly W1's scale over
/// 128, so the residual (half a W1 step at most) spans 128 ± 64, and the parts' multipliers
/// differ by exactly 2^7. Our engine then runs the split layer as one conv with the i16 weights
/// `128·d1 + d2` (its `fuse_power_of_two_parts`), at the cost of an unsplit layer, where two
/// parts cost 1.6–1.9× one. The residual keeps 7 of its 8 bits: like [`residual_grid`], still
/// ~75 dB under W. The file keeps its two per-tensor parts for any other runtime.
fn tied_residual_grid(first: &QParams) -> QParams {
    QParams::per_tensor(first.scale[0] / 128.0, 128, QuantRange::U8)
}

/// Half the span of [`residual_grid`] in steps.
const RESIDUAL_HALF_LEVELS: i32 = 64;

pub fn residual_split(w: &[f32], layout: &WeightLayout, m2: &InputStats) -> Candidate {
    let (lo, hi) = min_max(w);
    let g1 = grid(lo, hi);
    // W1 is stored already on its grid, so the float parts sum to W exactly.
    let w1 = fake_quantize(w, &g1);
    let w2: Vec<f32> = w.iter().zip(&w1).map(|(&x, &q)| x - q).collect();
    let (l2, h2) = min_max(&w2);
    // A pointwise or dense weight gains from the narrow grid (the byte GEMM); a depthwise
    // kernel from the grid tied to W1's (one conv in the engine); a full conv kernel keeps the
    // full grid.
    let g2 = if layout.taps == 1 && layout.in_per_group > 1 {
        residual_grid(l2, h2)
    } else if layout.in_per_group == 1 {
        tied_residual_grid(&g1)
    } else {
        grid(l2, h2)
    };
    Candidate::score(w, Some(SplitKind::Residual), 1.0, vec![w1, w2], vec![g1, g2], layout, m2)
}

pub fn split(kind: SplitKind, w: &[f32], layout: &WeightLayout, m2: &InputStats) -> Candidate {
    match kind {
        SplitKind::Outlier => outlier_split(w, layout, m2),
        SplitKind::ChannelGroup => channel_group_split(w, layout, m2),
        SplitKind::Residual => residual_split(w, layout, m2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depthwise_like() -> (Vec<f32>, WeightLayout) {
        // 8 channels of 9 taps; channel ranges span 1000×, as after BN folding in MobileNetV2.
        let w: Vec<f32> = (0..72).map(|i| {
            let c = i / 9;
            let mag = 10f32.powf(c as f32 * 3.0 / 7.0) * 1e-3;
            mag * (((i * 7919) % 17) as f32 / 8.0 - 1.0)
        }).collect();
        (w, WeightLayout { out_channels: 8, per_output: 9, in_per_group: 1, taps: 9, out_per_group: 1 })
    }

    #[test]
    fn parts_sum_to_the_weight() {
        let (w, l) = depthwise_like();
        let m2 = stats(&[1.0; 8]);
        for kind in SplitKind::ALL {
            let c = split(kind, &w, &l, &m2);
            for (i, &x) in w.iter().enumerate() {
                let s: f32 = c.parts.iter().map(|p| p[i]).sum();
                assert!((s - x).abs() <= 1e-6 * x.abs().max(1e-6), "{kind:?} at {i}");
            }
        }
    }

    #[test]
    fn splits_beat_one_grid_on_wide_channel_spread() {
        let (w, l) = depthwise_like();
        let m2 = stats(&[1.0; 8]);
        let (plain, clipped) = clipped_single(&w, &l, &m2);
        let mse = |c: &Candidate| output_mse_ratio(&w, &fake_quantize(&c.parts[0], &c.params[0]), &l, &m2);
        assert!(mse(&clipped) <= mse(&plain));
        for kind in SplitKind::ALL {
            let c = split(kind, &w, &l, &m2);
            eprintln!("{kind:?}: {:.1} dB vs one grid {:.1} dB", c.sqnr_db(), plain.sqnr_db());
            assert!(c.error < plain.error, "{kind:?} did not help");
        }
        // The residual split gives the second part a grid as fine as the first one's rounding.
        assert!(split(SplitKind::Residual, &w, &l, &m2).sqnr_db() > plain.sqnr_db() + 20.0);
    }

    /// The residual part lands within 128 ± 64 (the byte GEMM takes it whole; the engine fuses a
    /// depthwise one) and uses that span: its extreme values reach the edge, so no resolution is
    /// given away beyond the 7 bits.
    #[test]
    fn residual_part_uses_the_centred_seven_bit_span() {
        let (w, depthwise) = depthwise_like();
        // The same weights as 8 output channels of a 1×1 conv over 9 input channels.
        let l = WeightLayout { out_channels: depthwise.out_channels, per_output: depthwise.per_output, in_per_group: depthwise.per_output, taps: 1, out_per_group: depthwise.out_channels };
        let c = split(SplitKind::Residual, &w, &l, &stats(&[1.0; 9]));
        let g = &c.params[1];
        assert_eq!(g.zero_point, vec![128]);
        let d: Vec<i32> = c.parts[1].iter().map(|&x| g.quantize_value(x, 0) - 128).collect();
        let widest = d.iter().map(|v| v.abs()).max().unwrap();
        assert_eq!(widest, RESIDUAL_HALF_LEVELS, "residual steps {d:?}");
        // A depthwise kernel's residual: W1's scale over exactly 128 (the engine fuses the two
        // parts into one conv), so it spans 128 ± 64 as well.
        let c = split(SplitKind::Residual, &w, &depthwise, &stats(&[1.0; 8]));
        assert_eq!(c.params[1].zero_point, vec![128]);
        assert_eq!(c.params[0].scale[0] / c.params[1].scale[0], 128.0);
        let d = c.parts[1].iter().map(|&x| (c.params[1].quantize_value(x, 0) - 128).abs()).max().unwrap();
        assert!((RESIDUAL_HALF_LEVELS - 16..=RESIDUAL_HALF_LEVELS).contains(&d), "depthwise residual spans ±{d}");
    }

    fn stats(m2: &[f64]) -> InputStats {
        InputStats { mean_sq: m2.to_vec(), bias_sq: vec![] }
    }

    #[test]
    fn error_is_weighted_by_input_energy_and_averaged_over_channels() {
        // One channel: error 0.25·4 against signal 4 + 1.
        let l = WeightLayout { out_channels: 1, per_output: 2, in_per_group: 2, taps: 1, out_per_group: 1 };
        let (e, s) = output_error(&[1.0, 1.0], &[0.5, 1.0], &l, &stats(&[4.0, 1.0]));
        assert_eq!((e, s), (1.0 / 5.0, 1.0));
        // Two depthwise channels, 100× apart: the small one's relative error counts as much.
        let l = WeightLayout { out_channels: 2, per_output: 1, in_per_group: 1, taps: 1, out_per_group: 1 };
        let (e, _) = output_error(&[100.0, 1.0], &[100.0, 0.5], &l, &stats(&[1.0, 1.0]));
        assert!((e - 0.125).abs() < 1e-12);
        // … unless its output is mostly bias: then its error hardly counts.
        let with_bias = InputStats { mean_sq: vec![1.0, 1.0], bias_sq: vec![0.0, 99.0] };
        let (e, _) = output_error(&[100.0, 1.0], &[100.0, 0.5], &l, &with_bias);
        assert!((e - 0.25 / 100.0 / 2.0).abs() < 1e-12);
    }
}
