//! The QuantPlan: every quantized tensor's parameters, decided once, read by the QDQ builder
//! (and through the QDQ graph by the exporter and the int8 engine).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use subq_ir::{Graph, Op};
use subq_tensor::{QParams, QuantRange, Tensor};

use crate::{Calibration, QuantError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightScheme {
    /// One asymmetric uint8 grid per weight tensor (min/max → 0..255 with a zero-point): what
    /// per-tensor-only hardware takes, and what subtensor splitting builds on.
    PerTensor,
    /// One symmetric int8 grid (−127..127, zero-point 0) per weight tensor.
    PerTensorSymmetric,
    /// One symmetric int8 grid per output channel: the TFLite / ONNX Runtime baseline.
    PerChannel,
}

impl WeightScheme {
    pub fn name(self) -> &'static str {
        match self {
            WeightScheme::PerTensor => "per-tensor",
            WeightScheme::PerTensorSymmetric => "per-tensor-symmetric",
            WeightScheme::PerChannel => "per-channel",
        }
    }
}

/// One additive part of a weight tensor, quantized on its own grid. A plain layer has one part;
/// a split (subtensor) layer has several whose float values sum to the original weight.
#[derive(Clone, Debug)]
pub struct WeightPart {
    pub values: Tensor,
    pub params: QParams,
}

#[derive(Clone, Debug, Default)]
pub struct QuantPlan {
    /// uint8 asymmetric per-tensor parameters of every activation, by value name.
    pub activations: BTreeMap<String, QParams>,
    /// Weight parts of every Conv/Gemm, by node name.
    pub weights: BTreeMap<String, Vec<WeightPart>>,
    /// Relu/Clip nodes absorbed into their producer's output quantization (by node name): the
    /// output grid already saturates exactly where the activation would clamp.
    pub fused_activations: BTreeMap<String, ()>,
    /// Per-channel bound nodes (Min with a constant, from equalized ReLU6) that read their
    /// producer's float output directly: the producer gets no QuantizeLinear of its own.
    pub attached_bounds: BTreeMap<String, ()>,
    /// Values left in float (no QuantizeLinear): graph outputs computed by a Conv/Gemm, and the
    /// shape-only ops between them, when outputs are not quantized (see [`keep_outputs_float`]).
    pub float_outputs: BTreeSet<String>,
}

/// Leave the graph outputs that a Conv/Gemm computes (directly or through Identity, Flatten or
/// Reshape) in float: the layer's int32 accumulator is dequantized instead of rounded onto a
/// uint8 grid. A grid of 256 levels over the logits' range makes near-equal top classes tie,
/// and the tie is then broken by class index, not by the model. Returns how many outputs.
pub fn keep_outputs_float(g: &Graph, plan: &mut QuantPlan) -> usize {
    let producers = g.producers();
    let consumers = g.consumers();
    let mut kept = 0;
    for out in &g.outputs {
        // An output that other nodes also read keeps its grid (they would read it in float).
        if consumers.get(out.as_str()).is_some_and(|c| !c.is_empty()) {
            continue;
        }
        let mut chain = vec![out.clone()];
        let mut value = out.clone();
        while let Some(&pi) = producers.get(value.as_str()) {
            let n = &g.nodes[pi];
            match n.op {
                Op::Conv(_) | Op::Gemm { .. } => {
                    plan.float_outputs.extend(chain);
                    kept += 1;
                    break;
                }
                Op::Identity | Op::Flatten { .. } | Op::Reshape { .. } if consumers.get(n.inputs[0].as_str()).is_some_and(|c| c.len() == 1) && !g.outputs.contains(&n.inputs[0]) => {
                    value = n.inputs[0].clone();
                    chain.push(value.clone());
                }
                _ => break,
            }
        }
    }
    kept
}

/// Axis of output channels in the weight of a Conv (OIHW) or Gemm.
pub fn output_axis(op: &Op) -> usize {
    match op {
        Op::Gemm { trans_b: false, .. } | Op::MatMul => 1,
        _ => 0,
    }
}

/// Weight parameters under `scheme`.
pub fn weight_params(w: &Tensor, axis: usize, scheme: WeightScheme) -> QParams {
    let v = w.to_f32_vec();
    match scheme {
        WeightScheme::PerTensor => {
            let (lo, hi) = w.min_max();
            QParams::asymmetric(lo, hi, QuantRange::U8)
        }
        WeightScheme::PerTensorSymmetric => {
            let m = v.iter().fold(0f32, |a, &x| a.max(x.abs()));
            QParams::symmetric(m, QuantRange::I8Narrow)
        }
        WeightScheme::PerChannel => {
            let channels = w.shape[axis];
            let inner: usize = w.shape[axis + 1..].iter().product();
            let mut absmax = vec![0f32; channels];
            for (i, &x) in v.iter().enumerate() {
                let c = (i / inner) % channels;
                absmax[c] = absmax[c].max(x.abs());
            }
            let scale: Vec<f32> = absmax.iter().map(|&m| QParams::symmetric(m, QuantRange::I8Narrow).scale[0]).collect();
            QParams { zero_point: vec![0; channels], scale, axis: Some(axis), range: QuantRange::I8Narrow }
        }
    }
}

fn fusable(op: &Op, q: &QParams) -> bool {
    let (qmin, qmax) = q.range.bounds();
    let (lo, hi) = (q.dequantize_value(qmin, 0), q.dequantize_value(qmax, 0));
    let (min, max) = match op {
        Op::Relu => (0.0, f32::INFINITY),
        Op::Clip { min, max } => (*min, *max),
        _ => return false,
    };
    let tol = 1e-5 * (hi - lo).abs().max(1e-12);
    lo >= min - tol && hi <= max + tol
}

/// Decide every tensor's parameters for an FP32 graph (BatchNorm already folded).
pub fn make_plan(g: &Graph, calib: &Calibration, scheme: WeightScheme) -> Result<QuantPlan, QuantError> {
    let mut plan = QuantPlan::default();
    let act = |name: &str| -> Result<QParams, QuantError> {
        let (lo, hi) = calib.ranges.get(name).copied().ok_or_else(|| QuantError::Invalid(format!("no calibration range for '{name}'")))?;
        Ok(QParams::asymmetric(lo, hi, QuantRange::U8))
    };
    for i in &g.inputs {
        plan.activations.insert(i.clone(), act(i)?);
    }
    let consumers = g.consumers();
    let producers = g.producers();
    // Conv → Relu → Min(bound): the Relu is fused and the Min attached when the Min's grid
    // starts at 0; the quantization then happens once, after the bound.
    let mut relu_grid_from: BTreeMap<String, String> = BTreeMap::new();
    for n in &g.nodes {
        if !matches!(n.op, Op::Min) || !g.initializers.contains_key(&n.inputs[1]) {
            continue;
        }
        let Some(&ri) = producers.get(n.inputs[0].as_str()) else { continue };
        let r = &g.nodes[ri];
        let sole = |v: &str| consumers.get(v).is_some_and(|c| c.len() == 1) && !g.outputs.iter().any(|o| o == v);
        let from_conv = producers.get(r.inputs[0].as_str()).is_some_and(|&p| matches!(g.nodes[p].op, Op::Conv(_) | Op::Gemm { .. }));
        if matches!(r.op, Op::Relu) && sole(&n.inputs[0]) && sole(&r.inputs[0]) && from_conv {
            relu_grid_from.insert(r.name.clone(), n.outputs[0].clone());
        }
    }
    for n in &g.nodes {
        let out = &n.outputs[0];
        let params = match n.op {
            // Shape-only ops and max pooling keep their input's grid: no requantization needed.
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Identity | Op::MaxPool(_) => plan.activations.get(&n.inputs[0]).cloned().map_or_else(|| act(out), Ok)?,
            _ => act(out)?,
        };
        plan.activations.insert(out.clone(), params.clone());
        if matches!(n.op, Op::Conv(_) | Op::Gemm { .. }) {
            let w = g.initializer(&n.inputs[1]).ok_or_else(|| QuantError::Invalid(format!("node '{}': weight is not a constant", n.name)))?;
            let p = weight_params(w, output_axis(&n.op), scheme);
            plan.weights.insert(n.name.clone(), vec![WeightPart { values: w.clone(), params: p }]);
        }
        if let Some(min_out) = relu_grid_from.get(&n.name) {
            let q = act(min_out)?;
            if fusable(&n.op, &QParams { scale: q.scale.clone(), zero_point: q.zero_point.clone(), axis: None, range: q.range }) && q.zero_point[0] == 0 {
                plan.fused_activations.insert(n.name.clone(), ());
                let min_node = g.nodes.iter().find(|m| m.inputs[0] == n.outputs[0]).expect("Min reads the Relu");
                plan.attached_bounds.insert(min_node.name.clone(), ());
            }
            continue;
        }
        if matches!(n.op, Op::Relu | Op::Clip { .. }) {
            let src = &n.inputs[0];
            let sole_use = consumers.get(src.as_str()).is_some_and(|c| c.len() == 1) && !g.outputs.contains(src);
            let from_op = producers.get(src.as_str()).is_some_and(|&p| matches!(g.nodes[p].op, Op::Conv(_) | Op::Gemm { .. } | Op::Add));
            if sole_use && from_op && fusable(&n.op, &params) {
                plan.fused_activations.insert(n.name.clone(), ());
            }
        }
    }
    Ok(plan)
}
