//! Per-layer analysis for `subq report`: per-output-channel weight ranges after BN folding
//! (before and after cross-layer equalization), and per-layer weight and activation SQNR of a
//! quantized (QDQ) graph against the float graph it was built from.

use std::collections::{BTreeMap, HashMap, HashSet};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use subq_ir::{Graph, Op};
use subq_tensor::Tensor;

use crate::inspect::{channel_ranges, inspect};
use crate::EvalError;

/// Per-output-channel (min, max) of one Conv/Gemm weight after BN folding, without and with CLE.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRanges {
    pub node: String,
    /// "depthwise 3x3/1", "pointwise 1x1/1", "fully-connected", …
    pub kind: String,
    pub folded: Vec<(f32, f32)>,
    pub equalized: Vec<(f32, f32)>,
}

/// Largest / smallest channel range (max − min): how much coarser one per-tensor grid is for the
/// narrowest channel than a per-channel grid. Infinite when a channel is all zeros.
pub fn spread(ranges: &[(f32, f32)]) -> f32 {
    let r: Vec<f32> = ranges.iter().map(|(a, b)| b - a).collect();
    let mx = r.iter().cloned().fold(0.0, f32::max);
    let mn = r.iter().cloned().fold(f32::INFINITY, f32::min);
    if mn > 0.0 { mx / mn } else { f32::INFINITY }
}

/// Widest / median channel range: how many times coarser one per-tensor grid is for a typical
/// channel than that channel's own grid (log2 of it = bits lost). Unlike [`spread`] it is not
/// dominated by near-dead channels (which carry nothing). Infinite when the median is zero.
pub fn outlier_ratio(ranges: &[(f32, f32)]) -> f32 {
    let mut r: Vec<f32> = ranges.iter().map(|(a, b)| b - a).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    let (Some(&mx), Some(&med)) = (r.last(), r.get(r.len() / 2)) else { return 1.0 };
    if med > 0.0 { mx / med } else { f32::INFINITY }
}

/// A spread for tables: "281×", "1.2e13×" for near-dead channels, "∞" for a dead one.
pub fn format_spread(s: f32) -> String {
    if !s.is_finite() {
        "∞".into()
    } else if s >= 1e5 {
        format!("{s:.1e}×")
    } else if s < 10.0 {
        format!("{s:.1}×")
    } else {
        format!("{s:.0}×")
    }
}

impl LayerRanges {
    pub fn spread_folded(&self) -> f32 {
        spread(&self.folded)
    }
    pub fn spread_equalized(&self) -> f32 {
        spread(&self.equalized)
    }
    pub fn outlier_ratio_folded(&self) -> f32 {
        outlier_ratio(&self.folded)
    }
    pub fn outlier_ratio_equalized(&self) -> f32 {
        outlier_ratio(&self.equalized)
    }
}

fn transform_err(e: impl std::fmt::Display) -> EvalError {
    EvalError::Model(e.to_string())
}

/// The FP32 graph with Pads and BatchNorms folded (what every scheme quantizes), optionally
/// equalized with the quantization pipeline's settings (`strength`, two passes).
pub fn prepared(fp32: &Graph, cle_strength: Option<f32>) -> Result<Graph, EvalError> {
    let mut g = fp32.clone();
    subq_transforms::prepare_for_quantization(&mut g).map_err(transform_err)?;
    if let Some(s) = cle_strength {
        subq_transforms::equalize(&mut g, s, 2).map_err(transform_err)?;
    }
    Ok(g)
}

/// Output-channel axis layout of a layer's weight, when it has one: Conv (OIHW) and Gemm with
/// transB store output channels first.
fn weight_channels(n: &subq_ir::Node, w: &Tensor) -> Option<usize> {
    match n.op {
        Op::Conv(_) | Op::Gemm { trans_b: true, .. } => Some(w.shape[0]),
        _ => None,
    }
}

/// Per-channel weight ranges of every Conv/Gemm layer, after BN folding and after CLE.
pub fn layer_ranges(fp32: &Graph, cle_strength: f32) -> Result<Vec<LayerRanges>, EvalError> {
    let folded = prepared(fp32, None)?;
    let equalized = prepared(fp32, Some(cle_strength))?;
    let kinds: HashMap<String, String> = inspect(&folded).layers.into_iter().map(|l| (l.node, l.kind)).collect();
    let weights_of = |g: &Graph| -> HashMap<String, Vec<(f32, f32)>> {
        g.nodes
            .iter()
            .filter_map(|n| {
                let w = g.initializer(n.inputs.get(1)?)?;
                let c = weight_channels(n, w)?;
                Some((n.name.clone(), channel_ranges(&w.to_f32_vec(), c)))
            })
            .collect()
    };
    let after = weights_of(&equalized);
    let mut out = Vec::new();
    for n in &folded.nodes {
        let Some(w) = n.inputs.get(1).and_then(|w| folded.initializer(w)) else { continue };
        let Some(c) = weight_channels(n, w) else { continue };
        let before = channel_ranges(&w.to_f32_vec(), c);
        out.push(LayerRanges {
            node: n.name.clone(),
            kind: kinds.get(&n.name).cloned().unwrap_or_else(|| n.op.name().to_string()),
            equalized: after.get(&n.name).cloned().unwrap_or_else(|| before.clone()),
            folded: before,
        });
    }
    Ok(out)
}

/// Weight and activation SQNR of every Conv/Gemm layer of one quantized graph.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerSqnr {
    /// 10·log10(Σ w² / Σ (w − ŵ)²) of the layer's weight (ŵ: the sum of its dequantized parts).
    pub weight_db: Option<f64>,
    /// SQNR of the layer's quantized output activation (after a fused ReLU/ReLU6, as the int8
    /// model stores it) against the float graph, over the images: the error accumulated by every
    /// layer up to and including this one.
    pub activation_db: Option<f64>,
}

fn db(signal: f64, noise: f64) -> Option<f64> {
    if signal == 0.0 {
        None
    } else if noise == 0.0 {
        Some(f64::INFINITY)
    } else {
        Some(10.0 * (signal / noise).log10())
    }
}

/// Per-layer SQNR of `qdq` (built by `subq_quant::quantize` from `reference`: the prepared FP32
/// graph, equalized when the scheme used CLE), by Conv/Gemm node name of `reference`. The QDQ
/// graph runs on the FP32 executor as written (quantize → dequantize → float op), so every
/// dequantized value can be read.
pub fn layer_sqnr(reference: &Graph, qdq: &Graph, inputs: &[Tensor], bar: &ProgressBar) -> Result<BTreeMap<String, LayerSqnr>, EvalError> {
    let q_values: HashSet<&str> = qdq.nodes.iter().map(|n| n.outputs[0].as_str()).collect();
    let consumers = reference.consumers();
    // Layer → (reference value, dequantized QDQ value) of its output activation, and the names
    // of its dequantized weight parts.
    let mut act: Vec<(String, String, String)> = Vec::new();
    let mut weight_parts: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for n in &reference.nodes {
        if !matches!(n.op, Op::Conv(_) | Op::Gemm { .. }) || reference.initializer(n.inputs.get(1).map_or("", |s| s.as_str())).is_none() {
            continue;
        }
        let w = &n.inputs[1];
        let single = format!("{w}_dequantized");
        let parts: Vec<String> = if q_values.contains(single.as_str()) {
            vec![single]
        } else {
            (0..).map(|i| format!("{w}_part{i}_dequantized")).take_while(|p| q_values.contains(p.as_str())).collect()
        };
        if !parts.is_empty() {
            weight_parts.insert(n.name.clone(), (w.clone(), parts));
        }
        // Follow fused activations (and an attached per-channel bound) to the quantized value,
        // or shape-only ops to a graph output kept in float.
        let mut v = n.outputs[0].clone();
        for _ in 0..3 {
            let dq = format!("{v}_dequantized");
            if q_values.contains(dq.as_str()) {
                act.push((n.name.clone(), v.clone(), dq));
                break;
            }
            if reference.outputs.contains(&v) {
                act.push((n.name.clone(), v.clone(), v.clone()));
                break;
            }
            match consumers.get(v.as_str()).map(|c| c.as_slice()) {
                Some([c]) if matches!(reference.nodes[*c].op, Op::Relu | Op::Clip { .. } | Op::Min | Op::Identity | Op::Flatten { .. } | Op::Reshape { .. }) => v = reference.nodes[*c].outputs[0].clone(),
                _ => break,
            }
        }
    }
    let wanted_ref: HashSet<&str> = act.iter().map(|(_, r, _)| r.as_str()).collect();
    let wanted_q: HashMap<&str, &str> = act.iter().map(|(_, r, q)| (q.as_str(), r.as_str())).collect();
    let weight_values: HashSet<&str> = weight_parts.values().flat_map(|(_, p)| p.iter().map(|s| s.as_str())).collect();
    let (fexec, qexec) = (subq_runtime::Fp32Executor::new(reference), subq_runtime::Fp32Executor::new(qdq));
    type Sums = HashMap<String, (f64, f64)>;
    // Dequantized weights, from one run (they do not depend on the input).
    let mut weights: HashMap<String, Vec<f32>> = HashMap::new();
    let per_image: Vec<Sums> = inputs
        .par_iter()
        .map(|x| -> Result<Sums, EvalError> {
            let mut ref_values: HashMap<String, Tensor> = HashMap::new();
            fexec.run_observed(vec![x.clone()], &mut |name, t| {
                if wanted_ref.contains(name) {
                    ref_values.insert(name.to_string(), t.clone());
                }
            })?;
            let mut sums = Sums::new();
            qexec.run_observed(vec![x.clone()], &mut |name, t| {
                let Some(r) = wanted_q.get(name).and_then(|r| ref_values.get(*r)) else { return };
                let (Ok(a), Ok(b)) = (r.as_f32(), t.as_f32()) else { return };
                let e = sums.entry(name.to_string()).or_default();
                for (&p, &q) in a.iter().zip(b) {
                    e.0 += (p as f64) * (p as f64);
                    e.1 += ((p - q) as f64) * ((p - q) as f64);
                }
            })?;
            bar.inc(1);
            Ok(sums)
        })
        .collect::<Result<_, _>>()?;
    if let Some(x) = inputs.first() {
        qexec.run_observed(vec![x.clone()], &mut |name, t| {
            if weight_values.contains(name) {
                weights.insert(name.to_string(), t.to_f32_vec());
            }
        })?;
    }
    let mut total = Sums::new();
    for s in per_image {
        for (k, (a, b)) in s {
            let e = total.entry(k).or_default();
            e.0 += a;
            e.1 += b;
        }
    }
    let mut out: BTreeMap<String, LayerSqnr> = BTreeMap::new();
    for (node, (w, parts)) in &weight_parts {
        let Some(orig) = reference.initializer(w) else { continue };
        let orig = orig.to_f32_vec();
        let mut sum = vec![0f32; orig.len()];
        let mut complete = true;
        for p in parts {
            match weights.get(p) {
                Some(v) if v.len() == sum.len() => sum.iter_mut().zip(v).for_each(|(s, x)| *s += x),
                _ => complete = false,
            }
        }
        if complete {
            out.entry(node.clone()).or_default().weight_db = Some(subq_tensor::sqnr_db(&orig, &sum));
        }
    }
    for (node, _, q) in &act {
        if let Some(&(s, n)) = total.get(q) {
            out.entry(node.clone()).or_default().activation_db = db(s, n);
        }
    }
    Ok(out)
}

/// A progress bar in the style of the other long steps.
pub fn progress_bar(len: usize, message: &str, show: bool) -> ProgressBar {
    let bar = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(message.to_string());
    bar
}
