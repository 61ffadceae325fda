//! Bias correction: remove the per-channel mean shift that weight (and upstream) quantization
//! adds to each Conv/Gemm output.
//!
//! Empirical: run the quantized graph (written semantics) on calibration inputs, compare each
//! layer's per-channel output mean with the FP32 model's, and subtract the difference from the
//! bias, layer by layer in one pass (see [`empirical`]). Correcting all layers at once from one
//! measurement over-corrects: each layer's shift partly stems from upstream errors that the
//! upstream corrections already remove (measured: MobileNetV2 per-channel fell from 21 dB to
//! below 0 dB that way).

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use subq_ir::Graph;
use subq_runtime::Fp32Executor;
use subq_tensor::Tensor;

use crate::calibrate::ChannelMoments;
use crate::{QuantError, QuantPlan};

/// Add `delta[c]` (per output channel) to node `node`'s bias in `g`, creating a bias if needed.
pub fn shift_bias(g: &mut Graph, node: &str, delta: &[f64]) {
    let Some(i) = g.nodes.iter().position(|n| n.name == node) else { return };
    let out_c = delta.len();
    let name = match g.nodes[i].inputs.get(2).filter(|s| !s.is_empty()) {
        Some(b) => b.clone(),
        None => {
            let b = g.fresh_name(&format!("{node}.bias"));
            g.initializers.insert(b.clone(), Tensor::f32(vec![out_c], vec![0.0; out_c]).expect("len"));
            g.shapes.insert(b.clone(), vec![out_c]);
            g.dtypes.insert(b.clone(), subq_tensor::DType::F32);
            g.nodes[i].inputs.truncate(2);
            g.nodes[i].inputs.push(b.clone());
            b
        }
    };
    let t = g.initializers.get_mut(&name).expect("bias exists");
    let v = t.as_f32_mut().expect("float bias");
    for (b, d) in v.iter_mut().zip(delta) {
        *b = (*b as f64 + d) as f32;
    }
}

/// `node`'s bias as the QDQ file will store it: int32 on the exporter's grid, dequantized. With a
/// coarse per-tensor weight scale the step reaches 0.01 (MobileNetV2, first depthwise, no CLE),
/// twice a typical shift, so layers downstream are corrected against this, not the float bias.
fn stored_bias(g: &Graph, plan: &QuantPlan, node: &str, channels: usize) -> Option<Vec<f64>> {
    let n = g.nodes.iter().find(|n| n.name == node)?;
    let s_in = plan.activations.get(&n.inputs[0])?.scale[0];
    let part = plan.weights.get(node)?.first()?;
    let bias = n.inputs.get(2).filter(|b| !b.is_empty()).and_then(|b| g.initializer(b)).map(|t| t.to_f32_vec()).unwrap_or_else(|| vec![0.0; channels]);
    let (q, scales) = crate::qdq::bias_on_grid(&bias, s_in, &part.params);
    Some(q.iter().zip(&scales).map(|(&q, &s)| (q as f32 * s) as f64).collect())
}

/// Per-channel means of the named `values` when running `g` on `inputs`, merged in input order.
fn output_means(g: &Graph, values: &BTreeSet<String>, inputs: &[Tensor]) -> Result<BTreeMap<String, Vec<f64>>, QuantError> {
    let exec = Fp32Executor::new(g);
    let partials: Vec<BTreeMap<String, ChannelMoments>> = inputs
        .par_iter()
        .map(|x| -> Result<_, QuantError> {
            let mut m: BTreeMap<String, ChannelMoments> = BTreeMap::new();
            exec.run_observed(vec![x.clone()], &mut |name, t| {
                if values.contains(name) {
                    m.entry(name.to_string()).or_default().observe(t);
                }
            })?;
            Ok(m)
        })
        .collect::<Result<_, _>>()?;
    let mut total: BTreeMap<String, ChannelMoments> = BTreeMap::new();
    for p in partials {
        for (k, m) in p {
            total.entry(k).or_default().merge(&m);
        }
    }
    Ok(total.into_iter().map(|(k, m)| (k, m.mean())).collect())
}

/// Empirical bias correction of `g` (the FP32 graph the QDQ graph is built from, corrected in
/// place) against `reference` (the unmodified FP32 graph), layer by layer: the QDQ graph runs once
/// over the inputs as one batch, node by node; at each Conv/Gemm output the per-channel mean
/// shift against the FP32 model is measured with everything upstream already quantized and
/// corrected, removed from that output (a bias change only adds a constant per channel, so the
/// output need not be recomputed) and recorded in the bias. Returns the number of layers corrected.
///
/// With `correct_weights`, each layer's weights are first refitted to its quantized input
/// ([`crate::weight_correction`]); `plan` then holds the corrected parts, and what each layer's
/// correction did is returned next to the count.
pub fn empirical(g: &mut Graph, reference: &Graph, plan: &mut QuantPlan, inputs: &[Tensor], post_activation: bool, correct_weights: bool) -> Result<(usize, Vec<(String, crate::weight_correction::Corrected)>), QuantError> {
    let conv_outputs: BTreeMap<String, String> = g.nodes.iter().filter(|n| plan.weights.contains_key(&n.name)).map(|n| (n.name.clone(), n.outputs[0].clone())).collect();
    let clamps: BTreeMap<String, Clamp> = if post_activation { conv_outputs.keys().filter_map(|node| Clamp::after(g, plan, node).map(|c| (node.clone(), c))).collect() } else { BTreeMap::new() };
    // One FP32 pass for both targets: each layer's output and, if wanted, its clamped value.
    let wanted: BTreeSet<String> = conv_outputs.values().chain(clamps.values().map(|c| &c.value)).cloned().collect();
    let fp32_means = output_means(reference, &wanted, inputs)?;
    let (mut q, pre_quant) = crate::build_qdq_graph_with_map(g, plan)?;
    let node_of: BTreeMap<&str, &str> = pre_quant.iter().map(|(node, v)| (v.as_str(), node.as_str())).collect();
    // The inputs as one batch.
    let per = inputs[0].len();
    let mut batch = Vec::with_capacity(per * inputs.len());
    for x in inputs {
        batch.extend_from_slice(x.as_f32().map_err(|e| QuantError::Invalid(e.to_string()))?);
    }
    let mut shape = inputs[0].shape.clone();
    shape[0] = inputs.len();
    let mut values: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    let batch = Tensor::f32(shape, batch).expect("batch size");
    // Weight correction reads each layer's FP32 input: the reference runs alongside, node by node.
    let mut fp32 = correct_weights.then(|| Lockstep::new(reference, batch.clone()));
    values.insert(q.inputs[0].clone(), batch);
    // The q node that reads a layer's input first (its only conv, or part 0 of a split).
    let first_part: BTreeMap<String, String> = plan.weights.iter().map(|(node, parts)| (crate::qdq::part_node_name(node, parts.len(), 0), node.clone())).collect();
    let mut last_use: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, n) in q.nodes.iter().enumerate() {
        for v in &n.inputs {
            last_use.insert(v.as_str(), i);
        }
    }
    let mut scratch = Vec::new();
    let mut corrected = 0;
    let mut weight_corrections = Vec::new();
    let nodes = q.nodes.clone();
    for (i, n) in nodes.iter().enumerate() {
        if let (Some(fp32), Some(node)) = (fp32.as_mut(), first_part.get(&n.name)) {
            let layer = g.nodes.iter().find(|x| &x.name == node).expect("planned layer").clone();
            let x_f = fp32.value(&layer.inputs[0])?;
            let x_q = values.get(&n.inputs[0]).ok_or_else(|| QuantError::Invalid(format!("node '{}': input not computed", n.name)))?;
            let parts = plan.weights.get_mut(node).expect("planned layer");
            if let Some(done) = crate::weight_correction::correct_layer(g, &layer, parts, x_q, x_f) {
                weight_corrections.push((node.clone(), done));
                // The q graph reads the new parts from here on.
                for (pi, part) in parts.iter().enumerate() {
                    let conv = crate::qdq::part_node_name(node, parts.len(), pi);
                    let dq = q.nodes.iter().find(|x| x.name == conv).and_then(|c| q.nodes.iter().find(|d| d.outputs[0] == c.inputs[1])).cloned();
                    let dq = dq.ok_or_else(|| QuantError::Invalid(format!("node '{conv}': weight is not a DequantizeLinear of a constant")))?;
                    q.initializers.insert(dq.inputs[0].clone(), crate::qdq::quantize_tensor(&part.values, &part.params));
                    // Its DequantizeLinear has already run: run it again on the new bytes.
                    let args: Vec<Option<&Tensor>> = dq.inputs.iter().map(|v| q.initializers.get(v)).collect();
                    let weight = subq_runtime::eval_node(&dq, &args, &mut scratch)?;
                    values.insert(dq.outputs[0].clone(), weight);
                }
            }
        }
        let args: Vec<Option<&Tensor>> = n.inputs.iter().map(|v| if v.is_empty() { None } else { values.get(v).or_else(|| q.initializers.get(v)) }).collect();
        let mut out = subq_runtime::eval_node(n, &args, &mut scratch)?;
        if let Some(node) = node_of.get(n.outputs[0].as_str()) {
            if let Some(fm) = conv_outputs.get(*node).and_then(|v| fp32_means.get(v)) {
                let mut m = ChannelMoments::default();
                m.observe(&out);
                let mut delta: Vec<f64> = fm.iter().zip(m.mean()).map(|(f, q)| f - q).collect();
                let inner: usize = out.shape[2..].iter().product();
                let c = delta.len();
                if let Some((clamp, target)) = clamps.get(*node).and_then(|c| Some((c, fp32_means.get(&c.value)?))) {
                    clamp.match_means(&out, inner.max(1), target, &mut delta);
                }
                // The post-activation target solves for exact clamped means, so downstream must
                // see the bias the file will store; the pre-activation rule keeps the float shift
                // (its files stay as they were: the stored rounding measured no better there).
                let before = if post_activation { stored_bias(g, plan, node, c) } else { None };
                shift_bias(g, node, &delta);
                let applied: Vec<f64> = match before.and_then(|old| Some((old, stored_bias(g, plan, node, c)?))) {
                    Some((old, new)) => new.iter().zip(&old).map(|(n, o)| n - o).collect(),
                    None => delta.clone(),
                };
                for (j, chunk) in out.as_f32_mut().expect("float").chunks_mut(inner.max(1)).enumerate() {
                    let d = applied[j % c] as f32;
                    chunk.iter_mut().for_each(|v| *v += d);
                }
                corrected += 1;
            }
        }
        values.insert(n.outputs[0].clone(), out);
        for v in &n.inputs {
            if last_use.get(v.as_str()) == Some(&i) {
                values.remove(v);
            }
        }
    }
    Ok((corrected, weight_corrections))
}

/// An FP32 graph run over one batch node by node, only as far as the values asked for; values
/// are dropped after their last reader has run.
struct Lockstep<'a> {
    graph: &'a Graph,
    next: usize,
    values: std::collections::HashMap<String, Tensor>,
    last_use: std::collections::HashMap<&'a str, usize>,
    scratch: Vec<f32>,
}

impl<'a> Lockstep<'a> {
    fn new(graph: &'a Graph, batch: Tensor) -> Lockstep<'a> {
        let mut last_use = std::collections::HashMap::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            for v in &n.inputs {
                last_use.insert(v.as_str(), i);
            }
        }
        let values = std::iter::once((graph.inputs[0].clone(), batch)).collect();
        Lockstep { graph, next: 0, values, last_use, scratch: Vec::new() }
    }

    fn value(&mut self, name: &str) -> Result<&Tensor, QuantError> {
        while !self.values.contains_key(name) && self.next < self.graph.nodes.len() {
            let n = &self.graph.nodes[self.next];
            let args: Vec<Option<&Tensor>> = n.inputs.iter().map(|v| if v.is_empty() { None } else { self.values.get(v).or_else(|| self.graph.initializers.get(v)) }).collect();
            let out = subq_runtime::eval_node(n, &args, &mut self.scratch)?;
            self.values.insert(n.outputs[0].clone(), out);
            for v in &n.inputs {
                if self.last_use.get(v.as_str()) == Some(&self.next) && v != name {
                    self.values.remove(v);
                }
            }
            self.next += 1;
        }
        self.values.get(name).ok_or_else(|| QuantError::Invalid(format!("value '{name}' is not computed by the FP32 graph")))
    }
}

/// The clamp a Conv's output goes through before its grid: a fused Relu/Clip and, after
/// equalization, the per-channel ReLU6 bound.
struct Clamp {
    lower: f32,
    upper: Vec<f32>,
    /// The clamped value in the float graph, whose FP32 means are the target.
    value: String,
}

impl Clamp {
    fn after(g: &Graph, plan: &QuantPlan, node: &str) -> Option<Clamp> {
        let conv = g.nodes.iter().find(|n| n.name == node)?;
        let act = g.nodes.iter().find(|n| n.inputs.first() == Some(&conv.outputs[0]) && plan.fused_activations.contains_key(&n.name))?;
        let (lower, upper) = match act.op {
            subq_ir::Op::Relu => (0.0, f32::INFINITY),
            subq_ir::Op::Clip { min, max } => (min, max),
            _ => return None,
        };
        let bound = g.nodes.iter().find(|n| n.inputs.first() == Some(&act.outputs[0]) && plan.attached_bounds.contains_key(&n.name));
        match bound.and_then(|b| Some((b, g.initializer(b.inputs.get(1)?)?))) {
            Some((b, t)) => Some(Clamp { lower, upper: t.to_f32_vec().iter().map(|&v| v.min(upper)).collect(), value: b.outputs[0].clone() }),
            None => Some(Clamp { lower, upper: vec![upper], value: act.outputs[0].clone() }),
        }
    }

    /// Replace each channel's shift by the one that makes the mean of the *clamped* output match
    /// FP32's (kept only where it gets closer than the plain shift). A shift of the
    /// pre-activation mean leaves the clamped mean low when quantization shrank the channel's
    /// spread: measured on EfficientNet-Lite0's head ReLU6, whose mean sits far below 0.
    fn match_means(&self, out: &Tensor, inner: usize, target: &[f64], delta: &mut [f64]) {
        let c = delta.len();
        let v = out.as_f32().expect("float");
        let images = v.len() / (inner * c);
        delta.par_iter_mut().enumerate().for_each(|(ch, d)| {
            let upper = self.upper[if self.upper.len() == 1 { 0 } else { ch }] as f64;
            let lower = self.lower as f64;
            // Every value: a strided subsample read only even columns of an even-width plane and
            // missed the mean by 3% on MobileNetV2's block_1_expand.
            let samples: Vec<f64> = (0..images).flat_map(|i| v[(i * c + ch) * inner..(i * c + ch + 1) * inner].iter().map(|&x| x as f64)).collect();
            let n = samples.len() as f64;
            let mean_and_slope = |s: f64| {
                let (mut m, mut active) = (0.0, 0usize);
                for &x in &samples {
                    let y = x + s;
                    m += y.clamp(lower, upper);
                    active += (y > lower && y < upper) as usize;
                }
                (m / n - target[ch], active as f64 / n)
            };
            let (start_err, _) = mean_and_slope(*d);
            // Newton inside a bracket, bisecting where a step would leave it (the clamped mean
            // is flat where no value is active). The shifts that clamp every value at the lower
            // or the upper end bracket every reachable target.
            // Without an upper end (plain ReLU), a shift that leaves every value active has
            // mean(x) + s, above the target once s passes target − mean(x).
            let (lo_x, hi_x) = samples.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let all_active = (lower - lo_x).max(target[ch] - samples.iter().sum::<f64>() / n) + 1.0;
            let (mut below, mut above) = (lower - hi_x, if upper.is_finite() { upper - lo_x } else { all_active });
            let mut s = *d;
            for _ in 0..40 {
                let (err, slope) = mean_and_slope(s);
                if err.abs() < 1e-7 {
                    break;
                }
                if err < 0.0 { below = s } else { above = s }
                let newton = s - err / slope.max(1e-12);
                s = if slope > 1e-6 && newton > below && newton < above { newton } else { 0.5 * (below + above) };
            }
            if mean_and_slope(s).0.abs() < start_err.abs() {
                *d = s;
            }
        });
    }
}

/// Analytic bias correction (DFQ): the expected output shift of quantized weights is
/// Σ_i (Ŵ − W)[o,i,·] · E[x_i]; it is subtracted from the bias. E[x] comes from `moments`
/// (measured, or derived from BatchNormalization statistics when data-free). Upstream
/// quantization error is not seen, which is why the empirical variant is preferred with data.
pub fn analytic(g: &mut Graph, plan: &QuantPlan, moments: &BTreeMap<String, ChannelMoments>) -> usize {
    let mut corrected = 0;
    let nodes: Vec<subq_ir::Node> = g.nodes.clone();
    for n in &nodes {
        let (Some(parts), Some(x)) = (plan.weights.get(&n.name), moments.get(&n.inputs[0])) else { continue };
        let Some(w) = g.initializer(&n.inputs[1]) else { continue };
        let wv = w.to_f32_vec();
        let mut wq = vec![0f32; wv.len()];
        for p in parts {
            for (i, (s, &v)) in wq.iter_mut().zip(p.values.as_f32().expect("float")).enumerate() {
                *s += p.params.fake_quantize(v, p.params.channel_of(&p.values.shape, i));
            }
        }
        let mean = x.mean();
        let (out_c, per, in_g, taps, out_g) = match &n.op {
            subq_ir::Op::Conv(c) => (w.shape[0], w.len() / w.shape[0], w.shape[1], w.shape[2] * w.shape[3], w.shape[0] / c.group),
            subq_ir::Op::Gemm { trans_b: true, .. } => (w.shape[0], w.shape[1], w.shape[1], 1, w.shape[0]),
            _ => continue,
        };
        let delta: Vec<f64> = (0..out_c)
            .map(|o| -(0..per).map(|j| (wq[o * per + j] - wv[o * per + j]) as f64 * mean.get((o / out_g) * in_g + j / taps).copied().unwrap_or(0.0)).sum::<f64>())
            .collect();
        shift_bias(g, &n.name, &delta);
        corrected += 1;
    }
    corrected
}
