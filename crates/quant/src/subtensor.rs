//! The subtensor scheme: every weight per-tensor asymmetric uint8; the layers where one grid
//! hurts most get split into parts (see [`crate::split`]) within a size and latency budget.

use serde::Serialize;
use subq_ir::{Graph, Op};

use crate::plan::{make_plan, output_axis, QuantPlan, WeightScheme};
use crate::split::{clipped_single, split, Candidate, SplitKind, WeightLayout};
use crate::{Calibration, QuantError};

#[derive(Clone, Debug)]
pub struct SubtensorOptions {
    /// Split kinds tried per layer (the best one by output error is used).
    pub kinds: Vec<SplitKind>,
    /// Weight-clipping analysis: shrink a single grid's range where that lowers output error.
    pub clip_weights: bool,
    /// Extra weight bytes allowed, as a fraction of the per-tensor model's weight bytes.
    pub size_budget: f64,
    /// Extra MACs allowed, as a fraction of the model's MACs (the latency proxy).
    pub latency_budget: f64,
}

impl Default for SubtensorOptions {
    fn default() -> Self {
        SubtensorOptions { kinds: SplitKind::ALL.to_vec(), clip_weights: true, size_budget: 0.01, latency_budget: 0.05 }
    }
}

/// Per-layer decision record: what `subq quantize` and `subq report` show.
#[derive(Clone, Debug, Serialize)]
pub struct LayerDecision {
    pub node: String,
    pub layer: String,
    pub params: usize,
    pub macs: usize,
    /// Estimated layer-output SQNR of the weight quantization alone.
    pub sqnr_per_tensor_db: f64,
    pub clip: f32,
    pub sqnr_clipped_db: f64,
    pub sqnr_split_db: Vec<(SplitKind, f64)>,
    pub split: Option<SplitKind>,
    pub final_sqnr_db: f64,
    pub reason: String,
}

pub struct SubtensorPlan {
    pub plan: QuantPlan,
    pub layers: Vec<LayerDecision>,
    pub extra_bytes: usize,
    pub extra_macs: usize,
    pub total_bytes: usize,
    pub total_macs: usize,
}

fn layout_of(g: &Graph, n: &subq_ir::Node, w: &subq_tensor::Tensor) -> Option<(WeightLayout, usize)> {
    match &n.op {
        Op::Conv(c) => {
            let out_c = w.shape[0];
            let taps = w.shape[2] * w.shape[3];
            let per_output = w.len() / out_c;
            let spatial: usize = g.shape(&n.outputs[0])?.iter().skip(2).product();
            Some((WeightLayout { out_channels: out_c, per_output, in_per_group: w.shape[1], taps, out_per_group: out_c / c.group }, w.len() * spatial))
        }
        Op::Gemm { trans_b: true, .. } => {
            let (nn, k) = (w.shape[0], w.shape[1]);
            Some((WeightLayout { out_channels: nn, per_output: k, in_per_group: k, taps: 1, out_per_group: nn }, nn * k))
        }
        _ => None,
    }
}

/// Measures a candidate plan end to end: the logits noise power of the quantized model against
/// FP32 on a few calibration images (lower is better).
pub type Probe<'a> = &'a dyn Fn(&QuantPlan) -> Result<f64, QuantError>;

/// Extra engine work per output value of a split layer, in MAC equivalents (at the model's
/// average instructions per MAC). A split layer keeps the int8 engine's exact i64 multi-part
/// output stage while single-part layers use the cheaper float stage, so a split costs more than
/// its MACs; for a depthwise split that stage, not the second part's multiply-adds (one input
/// pass feeds all parts), is most of the cost. Calibrated with callgrind on two MobileNetV2-160
/// plans: 3 depthwise + 2 pointwise splits cost +3.41 M instructions where MACs alone predicted
/// +2.65 M, and 4 depthwise + 1 pointwise +2.79 M where MACs predicted +1.84 M; the fit is about
/// 6.6 instructions (≈ 19 MACs) per depthwise output value, about 2 (≈ 7 MACs) per pointwise one.
const SPLIT_OUTPUT_STAGE_MACS: usize = 7;
const SPLIT_OUTPUT_STAGE_MACS_DEPTHWISE: usize = 19;

pub fn make_subtensor_plan(g: &Graph, calib: &Calibration, opts: &SubtensorOptions, probe: Option<Probe>) -> Result<SubtensorPlan, QuantError> {
    let mut plan = make_plan(g, calib, WeightScheme::PerTensor)?;
    struct Option_ {
        node: String,
        base: Candidate,
        best: Option<Candidate>,
        cost_bytes: usize,
        cost_macs: usize,
        /// `cost_macs` plus the engine's extra output-stage work, in MAC equivalents: what the
        /// latency budget is charged.
        cost_latency: usize,
        shape: Vec<usize>,
    }
    let mut layers = Vec::new();
    let mut options = Vec::new();
    let (mut total_bytes, mut total_macs) = (0usize, 0usize);
    for n in &g.nodes {
        let Some(w) = n.inputs.get(1).and_then(|w| g.initializer(w)) else { continue };
        if !matches!(n.op, Op::Conv(_) | Op::Gemm { .. }) {
            continue;
        }
        total_bytes += w.len() + 4 * w.shape[output_axis(&n.op)];
        let Some((layout, macs)) = layout_of(g, n, w) else { continue };
        total_macs += macs;
        let wv = w.to_f32_vec();
        let mean_sq = calib.moments.get(&n.inputs[0]).map(|m| m.mean_sq()).unwrap_or_else(|| vec![1.0; layout.in_per_group * (layout.out_channels / layout.out_per_group)]);
        let bias_sq = n.inputs.get(2).filter(|s| !s.is_empty()).and_then(|b| g.initializer(b)).map(|t| t.to_f32_vec().iter().map(|&b| (b as f64).powi(2)).collect()).unwrap_or_default();
        let m2 = &crate::split::InputStats { mean_sq, bias_sq };
        let (plain, clipped) = clipped_single(&wv, &layout, m2);
        let base = if opts.clip_weights && clipped.clip < 1.0 { clipped.clone() } else { plain.clone() };
        let splits: Vec<Candidate> = opts.kinds.iter().map(|&k| split(k, &wv, &layout, m2)).collect();
        let best = splits.iter().filter(|c| c.error < base.error).min_by(|a, b| a.error.partial_cmp(&b.error).unwrap()).cloned();
        let kind = match &n.op {
            Op::Conv(c) if c.group > 1 && c.group == w.shape[0] => "depthwise",
            Op::Conv(c) if c.kernel == [1, 1] => "pointwise",
            Op::Conv(_) => "conv",
            _ => "fully-connected",
        };
        layers.push(LayerDecision {
            node: n.name.clone(),
            layer: kind.into(),
            params: w.len(),
            macs,
            sqnr_per_tensor_db: plain.sqnr_db(),
            clip: base.clip,
            sqnr_clipped_db: clipped.sqnr_db(),
            sqnr_split_db: opts.kinds.iter().copied().zip(splits.iter().map(|c| c.sqnr_db())).collect(),
            split: None,
            final_sqnr_db: base.sqnr_db(),
            reason: String::new(),
        });
        // Latency cost of one more part: the layer's MACs again. (Counting a depthwise split at a
        // quarter of its MACs, since one input pass feeds all parts, chose 10 / 8 splits that
        // measured +8.7% / +8.6% instructions per image: over the 5% budget.)
        let outputs = macs / (w.len() / w.shape[0].max(1)).max(1);
        let per_output = if kind == "depthwise" { SPLIT_OUTPUT_STAGE_MACS_DEPTHWISE } else { SPLIT_OUTPUT_STAGE_MACS };
        options.push(Option_ { node: n.name.clone(), base, best, cost_bytes: w.len(), cost_macs: macs, cost_latency: macs + per_output * outputs, shape: w.shape.clone() });
    }
    // With a probe, each candidate split is measured on the model's output (the others left
    // unsplit): the per-layer estimate ranks layers within one layer type well but does not say
    // how much a layer's error matters downstream.
    let measured: Option<Vec<f64>> = match probe {
        None => None,
        Some(measure) => {
            let mut base_plan = plan.clone();
            for o in &options {
                base_plan.weights.insert(o.node.clone(), o.base.clone().into_parts(&o.shape));
            }
            let base_noise = measure(&base_plan)?;
            let mut gains = Vec::with_capacity(options.len());
            for o in &options {
                gains.push(match &o.best {
                    None => 0.0,
                    Some(b) => {
                        let mut p = base_plan.clone();
                        p.weights.insert(o.node.clone(), b.clone().into_parts(&o.shape));
                        base_noise - measure(&p)?
                    }
                });
            }
            Some(gains)
        }
    };
    // Greedy: largest reduction of noise per unit of budget first (measured at the output when
    // probed, else the layer's own noise-to-signal ratio).
    let byte_budget = (opts.size_budget * total_bytes as f64) as usize;
    let mac_budget = (opts.latency_budget * total_macs as f64) as usize;
    let mut order: Vec<usize> = (0..options.len()).filter(|&i| options[i].best.is_some() && measured.as_ref().is_none_or(|m| m[i] > 0.0)).collect();
    let index_of: std::collections::HashMap<&str, usize> = options.iter().enumerate().map(|(i, o)| (o.node.as_str(), i)).collect();
    let gain = |o: &Option_| match &measured {
        Some(m) => m[index_of[o.node.as_str()]],
        None => (o.base.error - o.best.as_ref().map_or(o.base.error, |b| b.error)) / o.base.signal.max(1e-30),
    };
    let cost = |o: &Option_| (o.cost_bytes as f64 / byte_budget.max(1) as f64).max(o.cost_latency as f64 / mac_budget.max(1) as f64);
    order.sort_by(|&a, &b| (gain(&options[b]) / cost(&options[b])).partial_cmp(&(gain(&options[a]) / cost(&options[a]))).unwrap().then(a.cmp(&b)));
    let (mut used_bytes, mut used_macs, mut used_latency) = (0usize, 0usize, 0usize);
    let mut chosen = vec![false; options.len()];
    for i in order {
        let o = &options[i];
        if used_bytes + o.cost_bytes <= byte_budget && used_latency + o.cost_latency <= mac_budget {
            used_bytes += o.cost_bytes;
            used_macs += o.cost_macs;
            used_latency += o.cost_latency;
            chosen[i] = true;
        }
    }
    for (i, o) in options.into_iter().enumerate() {
        let d = &mut layers[i];
        let cand = if chosen[i] {
            let b = o.best.expect("chosen only with a split");
            d.split = b.kind;
            d.reason = format!("split: noise/signal {:.2e} → {:.2e}", o.base.error / o.base.signal, b.error / b.signal);
            b
        } else {
            d.reason = match (&o.best, &measured) {
                (None, _) => "no split lowers the error".into(),
                (Some(_), Some(m)) if m[i] <= 0.0 => "splitting does not lower the output error".into(),
                (Some(_), _) => "outside the size/latency budget".into(),
            };
            o.base
        };
        d.final_sqnr_db = cand.sqnr_db();
        plan.weights.insert(o.node, cand.into_parts(&o.shape));
    }
    Ok(SubtensorPlan { plan, layers, extra_bytes: used_bytes, extra_macs: used_macs, total_bytes, total_macs })
}
