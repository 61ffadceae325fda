//! Empirical weight correction: the first-order sibling of bias correction.
//!
//! Bias correction removes the *mean* of each layer's output error, measured with everything
//! upstream already quantized. What is left is the part of the error that moves with the input:
//! upstream weight and activation errors reach a layer as a distorted input `x_q` instead of the
//! FP32 `x_f`, and part of that distortion is a linear function of `x_q` itself. Per layer, the
//! weights are refitted by least squares so that the layer applied to its *quantized* input
//! reproduces the FP32 layer applied to the *FP32* input,
//!
//! ```text
//! W' = argmin E‖W x_f − W' x_q‖² + λ‖W' − W‖²  ⇒  W' (H_q + λI) = W C + λW,
//! ```
//!
//! with `H_q = cov(x_q)` and `C = cov(x_f, x_q)` over the calibration images (centered: the mean
//! is bias correction's job, which runs on the same layer right after). λ, a small fraction of
//! the mean input variance, pulls W' towards W where the data say little. W' is then rounded
//! onto the layer's existing grids (the finest part of a split layer carries it, as in
//! [`crate::gptq`]) with error feedback against `H_q`; since the residual of a least-squares fit
//! is orthogonal to the inputs, that rounding's own error δᵀH_qδ is exactly what it adds to the
//! objective. Per output channel the stored weights change only where the objective, measured
//! on the same moments, goes down. Grids (scales, zero-points) and the split structure are kept.
//!
//! Dense convs (1×1 and k×k) use one (in_c·kh·kw)² system per layer; a depthwise conv one
//! (kh·kw)² system per channel. Gemm layers are left alone: a classifier sees one input vector
//! per image, too few samples for its thousand features.

use rayon::prelude::*;
use subq_ir::{Graph, Node};
use subq_tensor::Tensor;

use crate::gptq::{add_cross_gram, add_gram, cholesky_lower, damped, round_rows, Shape, Target};
use crate::WeightPart;

/// Ridge strength λ as a fraction of the mean diagonal of `H_q`.
const DAMPING: f64 = 0.01;

/// Layers with fewer input samples per unknown of a row are left alone: on MobileNetV2 the
/// held-out check below rejected every row of such layers (10×10 projections, 26 samples per
/// feature with 100 images) or all but a few, and their systems are the largest to solve.
const MIN_SAMPLES_PER_FEATURE: f64 = 30.0;

/// Centered second moments of one layer's quantized and FP32 inputs, per block (one block for a
/// dense conv, one per channel for a depthwise conv).
#[derive(Clone)]
struct CrossMoments {
    /// Σ x_q x_qᵀ, Σ x_f x_qᵀ (rows: FP32 features), Σ x_f x_fᵀ, per block n×n.
    qq: Vec<f64>,
    fq: Vec<f64>,
    ff: Vec<f64>,
    sum_q: Vec<f64>,
    sum_f: Vec<f64>,
    count: f64,
}

impl CrossMoments {
    fn zeros(blocks: usize, n: usize) -> CrossMoments {
        CrossMoments { qq: vec![0.0; blocks * n * n], fq: vec![0.0; blocks * n * n], ff: vec![0.0; blocks * n * n], sum_q: vec![0.0; blocks * n], sum_f: vec![0.0; blocks * n], count: 0.0 }
    }

    fn merge(mut self, other: CrossMoments) -> CrossMoments {
        for (a, b) in [(&mut self.qq, &other.qq), (&mut self.fq, &other.fq), (&mut self.ff, &other.ff), (&mut self.sum_q, &other.sum_q), (&mut self.sum_f, &other.sum_f)] {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self.count += other.count;
        self
    }

    /// Add the samples of block `b`: `q` and `f` are n × cols (row-major), column = one sample.
    fn add(&mut self, b: usize, n: usize, q: &[f32], f: &[f32], cols: usize, scratch: &mut Vec<f32>) {
        let (r, v) = (b * n * n..(b + 1) * n * n, b * n..(b + 1) * n);
        add_gram(&mut self.qq[r.clone()], &mut self.sum_q[v.clone()], q, n, cols, scratch);
        add_gram(&mut self.ff[r.clone()], &mut self.sum_f[v], f, n, cols, scratch);
        add_cross_gram(&mut self.fq[r], f, q, n, cols, scratch);
    }

    /// Centered (H_q, C, H_f) of block `b`, as averages.
    fn centered(&self, b: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let c = self.count.max(1.0);
        let (mq, mf) = (&self.sum_q[b * n..(b + 1) * n], &self.sum_f[b * n..(b + 1) * n]);
        let block = |m: &[f64], left: &[f64], right: &[f64]| -> Vec<f64> { (0..n * n).map(|idx| m[b * n * n + idx] / c - (left[idx / n] / c) * (right[idx % n] / c)).collect() };
        (block(&self.qq, mq, mq), block(&self.fq, mf, mq), block(&self.ff, mf, mf))
    }
}

/// The moments of layer `t`'s input over a batch: `x_q` as the quantized graph feeds it, `x_f`
/// as the FP32 graph does (both [N, C, H, W]); images `parity`, `parity + 2`, … only.
fn moments(t: &Target, x_q: &Tensor, x_f: &Tensor, parity: usize) -> Option<CrossMoments> {
    let geo = t.geometry?;
    let (q, f) = (x_q.as_f32().ok()?, x_f.as_f32().ok()?);
    let per_image = geo.in_c * geo.in_h * geo.in_w;
    if q.len() != f.len() || q.len() % per_image != 0 {
        return None;
    }
    let positions = geo.out_h * geo.out_w;
    let (blocks, n) = match t.shape {
        Shape::Dense { features } => (1, features),
        Shape::Depthwise { channels, taps } => (channels, taps),
    };
    let images: Vec<usize> = (parity..q.len() / per_image).step_by(2).collect();
    // Fixed chunks summed in order: the same bytes out whatever the thread count or scheduling
    // (rayon's adaptive fold would change the f64 summation order from run to run).
    let partials: Vec<CrossMoments> = images
        .par_chunks(8)
        .map(|chunk| {
            chunk.iter().fold(CrossMoments::zeros(blocks, n), |mut m, &i| {
                let (qi, fi) = (&q[i * per_image..(i + 1) * per_image], &f[i * per_image..(i + 1) * per_image]);
                let (mut cq, mut cf, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
                match t.shape {
                    Shape::Dense { features } if geo.is_pointwise() => m.add(0, features, qi, fi, positions, &mut scratch),
                    Shape::Dense { features } => {
                        cq.resize(features * positions, 0.0);
                        cf.resize(features * positions, 0.0);
                        subq_kernels::f32::im2col(qi, &geo, 0, geo.in_c, &mut cq);
                        subq_kernels::f32::im2col(fi, &geo, 0, geo.in_c, &mut cf);
                        m.add(0, features, &cq, &cf, positions, &mut scratch);
                    }
                    Shape::Depthwise { channels, taps } => {
                        cq.resize(taps * positions, 0.0);
                        cf.resize(taps * positions, 0.0);
                        for c in 0..channels {
                            subq_kernels::f32::im2col(qi, &geo, c, 1, &mut cq);
                            subq_kernels::f32::im2col(fi, &geo, c, 1, &mut cf);
                            m.add(c, taps, &cq, &cf, positions, &mut scratch);
                        }
                    }
                }
                m.count += positions as f64;
                m
            })
        })
        .collect();
    let total = partials.into_iter().fold(CrossMoments::zeros(blocks, n), CrossMoments::merge);
    Some(total)
}

/// Solve `h` x = rhs for every row of `rhs` (rows × n), in place (`h` already damped). None
/// when it is not positive definite.
fn solve_rows(h: &[f64], n: usize, rhs: &mut [f64], rows: usize) -> Option<()> {
    let l = cholesky_lower(h, n)?;
    rhs.par_chunks_mut(n).take(rows).for_each(|x| {
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l[i * n + k] * x[k]).sum();
            x[i] = (x[i] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
            x[i] = (x[i] - s) / l[i * n + i];
        }
    });
    Some(())
}

/// E‖W x_f − Ŵ x_q‖² of one output row (`w`: FP32 row, `w_hat`: stored row) from one block's
/// centered moments: wᵀH_f w − 2 wᵀCŵ + ŵᵀH_qŵ.
fn objective(m: &(Vec<f64>, Vec<f64>, Vec<f64>), w: &[f64], w_hat: &[f64]) -> f64 {
    let (hq, c, hf) = m;
    let n = w.len();
    let mut e = 0.0;
    for i in 0..n {
        for j in 0..n {
            e += w[i] * hf[i * n + j] * w[j] - 2.0 * w[i] * c[i * n + j] * w_hat[j] + w_hat[i] * hq[i * n + j] * w_hat[j];
        }
    }
    e
}

/// The least-squares rows of one block (`rows` × n, FP32 rows `w`), as the finest part will
/// carry them: minus the other parts (`others`), rounded onto `part`'s grid with error feedback.
fn fit_block(m: &(Vec<f64>, Vec<f64>, Vec<f64>), w: &[f32], others: &[f32], rows: usize, n: usize, part: &WeightPart, channel_of_row: impl Fn(usize) -> usize) -> Option<Vec<f32>> {
    let (hq, c, _) = m;
    let (hq_damped, lambda) = damped(hq, n, DAMPING);
    // Right-hand sides Cᵀw + λw per row, solved in place.
    let mut rhs: Vec<f64> = (0..rows * n)
        .map(|idx| {
            let (r, j) = (idx / n, idx % n);
            (0..n).map(|i| c[i * n + j] * w[r * n + i] as f64).sum::<f64>() + lambda * w[idx] as f64
        })
        .collect();
    solve_rows(&hq_damped, n, &mut rhs, rows)?;
    let mut target: Vec<f32> = rhs.iter().zip(others).map(|(&x, &o)| (x - o as f64) as f32).collect();
    round_rows(&mut target, rows, n, hq, &part.params, channel_of_row)?;
    Some(target)
}

/// What a layer's weight correction did: output channels changed, and the summed calibration
/// objective E‖W x_f − Ŵ x_q‖² before and after.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Corrected {
    pub channels_changed: usize,
    pub channels: usize,
    pub error_before: f64,
    pub error_after: f64,
}

/// Correct the weights of layer `n` of `g` in `parts` (its planned weight parts), given its input
/// batch as the quantized graph computes it (`x_q`) and as the FP32 graph does (`x_f`). Only the
/// finest part changes. Returns None, leaving `parts` alone, for layers this does not handle.
///
/// Overfitting guard: a row has as many unknowns as the layer has input features (960 on
/// MobileNetV2's late projections, fitted from 100 images × 25 positions), and a fit to all
/// images lowered those layers' calibration error 3× while the model got worse on other images.
/// So the images are split in two halves; a row is corrected only if the fit on either half
/// lowers the error on the other half (and the fit on all images lowers it on all images). The
/// stored row is the fit on all images.
pub fn correct_layer(g: &Graph, n: &Node, parts: &mut [WeightPart], x_q: &Tensor, x_f: &Tensor) -> Option<Corrected> {
    let t = crate::gptq::target_of(g, n)?;
    let w = g.initializer(n.inputs.get(1)?)?.to_f32_vec();
    let images = x_q.shape.first().copied().unwrap_or(1);
    if ((images * t.samples_per_image()) as f64) < MIN_SAMPLES_PER_FEATURE * t.features() as f64 {
        return None;
    }
    let halves = [moments(&t, x_q, x_f, 0)?, moments(&t, x_q, x_f, 1)?];
    let finest = (0..parts.len()).min_by(|&a, &b| parts[a].params.scale[0].total_cmp(&parts[b].params.scale[0]))?;
    // The other parts as they will be stored: the finest part carries W' minus them.
    let mut others = vec![0f32; w.len()];
    for p in parts.iter().enumerate().filter(|(k, _)| *k != finest).map(|(_, p)| p) {
        for (i, (o, &v)) in others.iter_mut().zip(p.values.as_f32().ok()?).enumerate() {
            *o += p.params.fake_quantize(v, p.params.channel_of(&p.values.shape, i));
        }
    }
    let part = &parts[finest];
    let stored = |v: f32, i: usize| part.params.fake_quantize(v, part.params.channel_of(&part.values.shape, i));
    let old: Vec<f32> = part.values.as_f32().ok()?.to_vec();
    let mut new = old.clone();
    let (blocks, size, rows_per_block) = match t.shape {
        Shape::Dense { features } => (1, features, w.len() / features),
        Shape::Depthwise { channels, taps } => (channels, taps, 1),
    };
    let [a, b] = &halves;
    let both = a.clone().merge(b.clone());
    let mut done = Corrected::default();
    for blk in 0..blocks {
        let (ma, mb) = (a.centered(blk, size), b.centered(blk, size));
        let all = both.centered(blk, size);
        let range = blk * rows_per_block * size..(blk + 1) * rows_per_block * size;
        let channel_of_row = |r: usize| if part.params.is_per_tensor() { 0 } else { part.params.channel_of(&part.values.shape, range.start + r * size) };
        let (w_blk, o_blk) = (&w[range.clone()], &others[range.clone()]);
        let (Some(fit_a), Some(fit_b), Some(fit_all)) = (fit_block(&ma, w_blk, o_blk, rows_per_block, size, part, channel_of_row), fit_block(&mb, w_blk, o_blk, rows_per_block, size, part, channel_of_row), fit_block(&all, w_blk, o_blk, rows_per_block, size, part, channel_of_row)) else { continue };
        let mut rows_ok = Vec::with_capacity(rows_per_block);
        for r in 0..rows_per_block {
            let row = range.start + r * size..range.start + (r + 1) * size;
            let local = r * size..(r + 1) * size;
            let wr: Vec<f64> = w[row.clone()].iter().map(|&v| v as f64).collect();
            let hat = |vals: &[f32]| -> Vec<f64> { vals.iter().zip(row.clone()).map(|(&v, i)| (stored(v, i) + others[i]) as f64).collect() };
            let kept = hat(&old[row.clone()]);
            // Each half's fit judged on the other half.
            let validated = objective(&mb, &wr, &hat(&fit_a[local.clone()])) < objective(&mb, &wr, &kept) && objective(&ma, &wr, &hat(&fit_b[local.clone()])) < objective(&ma, &wr, &kept);
            let (before, after) = (objective(&all, &wr, &kept), objective(&all, &wr, &hat(&fit_all[local.clone()])));
            rows_ok.push((validated && after < before, before, after));
        }
        for (r, (ok, before, after)) in rows_ok.into_iter().enumerate() {
            let row = range.start + r * size..range.start + (r + 1) * size;
            done.channels += 1;
            done.error_before += before;
            if ok {
                new[row].copy_from_slice(&fit_all[r * size..(r + 1) * size]);
                done.channels_changed += 1;
                done.error_after += after;
            } else {
                done.error_after += before;
            }
        }
    }
    parts[finest].values = Tensor::f32(parts[finest].values.shape.clone(), new).ok()?;
    Some(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use subq_ir::{Conv2d, Op};
    use subq_tensor::{QParams, QuantRange};

    /// A 1×1 conv (4 → 3 channels) on 8×8 planes, seeded weights, and a batch of seeded inputs.
    fn pointwise_layer(images: usize) -> (Graph, Node, Vec<f32>, Tensor) {
        let mut seed = 11u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let w: Vec<f32> = (0..12).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..images * 4 * 64).map(|_| rnd() * 4.0).collect();
        let mut g = Graph { inputs: vec!["x".into()], outputs: vec!["y".into()], opset: 13, ..Default::default() };
        g.initializers.insert("w".into(), Tensor::f32(vec![3, 4, 1, 1], w.clone()).unwrap());
        let op = Op::Conv(Conv2d { kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pads: [0; 4], auto_pad: subq_ir::AutoPad::NotSet, group: 1 });
        let n = Node { name: "pw".into(), op, inputs: vec!["x".into(), "w".into()], outputs: vec!["y".into()] };
        g.nodes.push(n.clone());
        g.shapes.insert("x".into(), vec![1, 4, 8, 8]);
        g.shapes.insert("y".into(), vec![1, 3, 8, 8]);
        (g, n, w, Tensor::f32(vec![images, 4, 8, 8], x).unwrap())
    }

    #[test]
    fn a_gain_lost_upstream_is_put_back_into_the_weights() {
        // The quantized graph delivers 0.8× the FP32 input on channel 0 and 1.25× on channel 2:
        // the least-squares weights are W with those columns divided by the same factors.
        let (g, n, w, x_f) = pointwise_layer(32);
        let gains = [0.8f32, 1.0, 1.25, 1.0];
        let x_q = Tensor::f32(x_f.shape.clone(), x_f.as_f32().unwrap().iter().enumerate().map(|(i, &v)| v * gains[(i / 64) % 4]).collect()).unwrap();
        let q = QParams::asymmetric(-1.0, 1.0, QuantRange::U8);
        let mut parts = vec![WeightPart { values: Tensor::f32(vec![3, 4, 1, 1], w.clone()).unwrap(), params: q.clone() }];
        let done = correct_layer(&g, &n, &mut parts, &x_q, &x_f).unwrap();
        assert_eq!((done.channels, done.channels_changed), (3, 3), "{done:?}");
        assert!(done.error_after < 0.05 * done.error_before, "{done:?}");
        let step = q.scale[0];
        for (i, (&got, &orig)) in parts[0].values.as_f32().unwrap().iter().zip(&w).enumerate() {
            let want = orig / gains[i % 4];
            assert!((got - want).abs() <= step, "weight {i}: {got} vs {want} (step {step})");
        }
    }

    #[test]
    fn an_undistorted_input_leaves_the_weights_near_their_rounding() {
        // x_q = x_f: nothing to correct beyond the rounding itself, so no stored weight moves by
        // more than one grid step (the feedback rounding may still pick the other neighbour).
        let (g, n, w, x_f) = pointwise_layer(32);
        let q = QParams::asymmetric(-1.0, 1.0, QuantRange::U8);
        let mut parts = vec![WeightPart { values: Tensor::f32(vec![3, 4, 1, 1], w.clone()).unwrap(), params: q.clone() }];
        let done = correct_layer(&g, &n, &mut parts, &x_f, &x_f).unwrap();
        assert!(done.error_after <= done.error_before);
        for (&got, &orig) in parts[0].values.as_f32().unwrap().iter().zip(&w) {
            assert!((q.fake_quantize(got, 0) - orig).abs() <= q.scale[0] * 1.01, "{got} vs {orig}");
        }
    }

    #[test]
    fn too_few_samples_per_feature_leave_the_layer_alone() {
        // 1 image × 64 positions for 4 features: under MIN_SAMPLES_PER_FEATURE.
        let (g, n, w, x_f) = pointwise_layer(1);
        let mut parts = vec![WeightPart { values: Tensor::f32(vec![3, 4, 1, 1], w.clone()).unwrap(), params: QParams::asymmetric(-1.0, 1.0, QuantRange::U8) }];
        assert!(correct_layer(&g, &n, &mut parts, &x_f, &x_f).is_none());
        assert_eq!(parts[0].values.as_f32().unwrap(), &w[..]);
    }
}
