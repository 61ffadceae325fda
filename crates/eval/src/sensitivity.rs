//! Layer sensitivity: quantize one layer at a time — its weight on one per-tensor asymmetric
//! uint8 grid and its output activation on the calibrated uint8 grid, everything else FP32 —
//! and measure the logits SQNR against the FP32 model on calibration images. The layers with
//! the lowest SQNR are the ones a per-tensor scheme has to treat specially.

use rayon::prelude::*;
use serde::Serialize;
use subq_calib::observer::ObserverKind;
use subq_ir::{Graph, Node, Op};
use subq_quant::{calibrate_tensors, make_plan, WeightScheme};
use subq_tensor::{QParams, QuantRange, Tensor, TensorData};

use crate::layers::{outlier_ratio, prepared, progress_bar, spread};
use crate::EvalError;

#[derive(Clone, Debug, Serialize)]
pub struct LayerSensitivity {
    /// 1 = most sensitive (lowest logits SQNR).
    pub rank: usize,
    pub node: String,
    pub kind: String,
    /// Logits SQNR vs FP32 with only this layer quantized (weights per-tensor + output activation).
    pub logits_sqnr_db: f64,
    /// SQNR of the layer's weight on one per-tensor uint8 grid.
    pub weight_sqnr_db: f64,
    /// Largest / smallest per-output-channel weight range after BN folding.
    pub channel_range_spread: Option<f32>,
    /// Largest / median per-output-channel weight range after BN folding.
    pub channel_outlier_ratio: Option<f32>,
    /// The activation quantized with it (after a fused ReLU/ReLU6, as the int8 model stores it).
    pub activation: String,
}

fn invalid(e: impl std::fmt::Display) -> EvalError {
    EvalError::Model(e.to_string())
}

fn logits_of(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Vec<f32>>, EvalError> {
    let exec = subq_runtime::Fp32Executor::new(g);
    inputs.par_iter().map(|x| Ok(exec.run(vec![x.clone()])?.remove(0).to_f32_vec())).collect()
}

fn logits_sqnr(reference: &[Vec<f32>], test: &[Vec<f32>]) -> f64 {
    let r: Vec<f32> = reference.iter().flatten().copied().collect();
    let t: Vec<f32> = test.iter().flatten().copied().collect();
    subq_tensor::sqnr_db(&r, &t)
}

/// Insert QuantizeLinear → DequantizeLinear on `value` (produced by node `producer`): the
/// producer now writes `value__float`, and consumers read the dequantized `value`.
fn fake_quantize_value(g: &mut Graph, producer: usize, value: &str, q: &QParams) {
    let float = g.fresh_name(&format!("{value}__float"));
    let quantized = g.fresh_name(&format!("{value}__quantized"));
    let scale = g.fresh_name(&format!("{value}__scale"));
    let zp = g.fresh_name(&format!("{value}__zero_point"));
    let shape = g.shapes.get(value).cloned().unwrap_or_default();
    g.nodes[producer].outputs[0] = float.clone();
    g.shapes.insert(float.clone(), shape.clone());
    g.dtypes.insert(float.clone(), subq_tensor::DType::F32);
    g.shapes.insert(quantized.clone(), shape);
    g.dtypes.insert(quantized.clone(), subq_tensor::DType::U8);
    let st = Tensor::scalar_f32(q.scale[0]);
    let zt = Tensor { shape: vec![], data: TensorData::U8(vec![q.zero_point[0] as u8]) };
    for (name, t) in [(&scale, st), (&zp, zt)] {
        g.shapes.insert(name.clone(), vec![]);
        g.dtypes.insert(name.clone(), t.dtype());
        g.initializers.insert(name.clone(), t);
    }
    let qn = Node { name: format!("{value}__QuantizeLinear"), op: Op::QuantizeLinear { axis: 1 }, inputs: vec![float, scale.clone(), zp.clone()], outputs: vec![quantized.clone()] };
    let dqn = Node { name: format!("{value}__DequantizeLinear"), op: Op::DequantizeLinear { axis: 1 }, inputs: vec![quantized, scale, zp], outputs: vec![value.to_string()] };
    g.nodes.insert(producer + 1, qn);
    g.nodes.insert(producer + 2, dqn);
}

/// Rank the Conv/Gemm layers of `fp32` by the logits SQNR of quantizing each one alone
/// (worst first). Activation ranges are min/max over `inputs`, which are also the images the
/// SQNR is measured on: calibration images, never evaluation ones.
pub fn layer_sensitivity(fp32: &Graph, inputs: &[Tensor], progress: bool) -> Result<Vec<LayerSensitivity>, EvalError> {
    if inputs.is_empty() {
        return Err(EvalError::Model("layer sensitivity needs at least one calibration image".into()));
    }
    let g = prepared(fp32, None)?;
    let calib = calibrate_tensors(&g, inputs, ObserverKind::MinMax, progress).map_err(invalid)?;
    let plan = make_plan(&g, &calib, WeightScheme::PerTensor).map_err(invalid)?;
    let reference = logits_of(&g, inputs)?;
    let kinds: std::collections::HashMap<String, String> = crate::inspect::inspect(&g).layers.into_iter().map(|l| (l.node, l.kind)).collect();
    let layers: Vec<usize> = (0..g.nodes.len()).filter(|&i| matches!(g.nodes[i].op, Op::Conv(_) | Op::Gemm { .. }) && g.initializer(&g.nodes[i].inputs[1]).is_some()).collect();
    let consumers = g.consumers();
    let bar = progress_bar(layers.len(), "layer sensitivity", progress);
    let mut out = Vec::with_capacity(layers.len());
    for &li in &layers {
        let n = &g.nodes[li];
        let mut h = g.clone();
        // Weight: fake-quantized in place on one asymmetric uint8 grid.
        let w = g.initializer(&n.inputs[1]).expect("checked above");
        let (lo, hi) = w.min_max();
        let wq = QParams::asymmetric(lo, hi, QuantRange::U8);
        let wv = w.to_f32_vec();
        let fq: Vec<f32> = wv.iter().map(|&x| wq.fake_quantize(x, 0)).collect();
        let weight_sqnr_db = subq_tensor::sqnr_db(&wv, &fq);
        h.initializers.insert(n.inputs[1].clone(), Tensor::f32(w.shape.clone(), fq).map_err(invalid)?);
        // Activation: the value the int8 model quantizes after this layer (past fused ReLUs).
        let (mut producer, mut value) = (li, n.outputs[0].clone());
        while let Some([c]) = consumers.get(value.as_str()).map(|c| c.as_slice()) {
            if !plan.fused_activations.contains_key(&g.nodes[*c].name) || g.outputs.contains(&value) {
                break;
            }
            producer = *c;
            value = g.nodes[*c].outputs[0].clone();
        }
        let aq = plan.activations.get(&value).cloned().ok_or_else(|| EvalError::Model(format!("no calibration range for '{value}'")))?;
        fake_quantize_value(&mut h, producer, &value, &aq);
        let logits = logits_of(&h, inputs)?;
        let ranges = crate::inspect::channel_ranges(&wv, w.shape[0]);
        let per_channel = matches!(n.op, Op::Conv(_) | Op::Gemm { trans_b: true, .. });
        let channel_range_spread = per_channel.then(|| spread(&ranges));
        let channel_outlier_ratio = per_channel.then(|| outlier_ratio(&ranges));
        out.push(LayerSensitivity {
            rank: 0,
            node: n.name.clone(),
            kind: kinds.get(&n.name).cloned().unwrap_or_default(),
            logits_sqnr_db: logits_sqnr(&reference, &logits),
            weight_sqnr_db,
            channel_range_spread,
            channel_outlier_ratio,
            activation: value,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.sort_by(|a, b| a.logits_sqnr_db.partial_cmp(&b.logits_sqnr_db).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.node.cmp(&b.node)));
    for (i, l) in out.iter_mut().enumerate() {
        l.rank = i + 1;
    }
    Ok(out)
}
