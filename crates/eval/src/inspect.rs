//! Per-layer statistics of a graph: what `subq inspect` prints.

use serde::Serialize;
use subq_ir::{Graph, Op};

#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    pub node: String,
    pub op: String,
    pub kind: String,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub macs: usize,
    pub weight_min: Option<f32>,
    pub weight_max: Option<f32>,
    /// Largest and smallest per-output-channel weight range (max − min of one channel).
    pub channel_range_max: Option<f32>,
    pub channel_range_min: Option<f32>,
    /// channel_range_max / channel_range_min: how many times coarser a per-tensor grid is for
    /// the narrowest channel than a per-channel one.
    pub channel_range_spread: Option<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub layers: Vec<LayerInfo>,
    pub total_params: usize,
    pub total_macs: usize,
    pub fp32_bytes: usize,
}

/// Per-output-channel (min, max) of a weight stored with output channels first (Conv OIHW) or
/// in rows of `rows_are_outputs` (Gemm with transB).
pub fn channel_ranges(w: &[f32], out_c: usize) -> Vec<(f32, f32)> {
    let per = w.len() / out_c.max(1);
    w.chunks(per.max(1)).map(|c| c.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))).collect()
}

pub fn inspect(g: &Graph) -> ModelInfo {
    let mut layers = Vec::new();
    for n in &g.nodes {
        let input_shape = g.shape(&n.inputs[0]).unwrap_or(&[]).to_vec();
        let output_shape = g.shape(&n.outputs[0]).unwrap_or(&[]).to_vec();
        let weight = n.inputs.get(1).and_then(|w| g.initializer(w));
        let params: usize = n.inputs.iter().filter_map(|i| g.initializer(i)).map(|t| t.len()).sum();
        let (kind, macs, out_c) = match &n.op {
            Op::Conv(c) => {
                let w = g.shape(&n.inputs[1]).unwrap_or(&[0, 0, 0, 0]);
                let kind = if c.is_depthwise(input_shape.get(1).copied().unwrap_or(0), w[0]) {
                    "depthwise"
                } else if c.kernel == [1, 1] {
                    "pointwise"
                } else {
                    "conv"
                };
                let spatial: usize = output_shape.iter().skip(2).product();
                (format!("{kind} {}x{}/{}", c.kernel[0], c.kernel[1], c.strides[0]), w.iter().product::<usize>() * spatial, w[0])
            }
            Op::Gemm { trans_b, .. } => {
                let w = g.shape(&n.inputs[1]).unwrap_or(&[0, 0]);
                let out_c = if *trans_b { w[0] } else { w[1] };
                ("fully-connected".to_string(), w.iter().product::<usize>(), out_c)
            }
            Op::MatMul => {
                let w = g.shape(&n.inputs[1]).unwrap_or(&[0, 0]);
                ("matmul".to_string(), w.iter().product::<usize>(), 0)
            }
            other => (other.name().to_string(), 0, 0),
        };
        let mut info = LayerInfo { node: n.name.clone(), op: n.op.name().to_string(), kind, input_shape, output_shape, params, macs, weight_min: None, weight_max: None, channel_range_max: None, channel_range_min: None, channel_range_spread: None };
        if let (Some(w), true) = (weight, matches!(n.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul)) {
            let wv = w.to_f32_vec();
            let (lo, hi) = w.min_max();
            info.weight_min = Some(lo);
            info.weight_max = Some(hi);
            // Gemm without transB stores outputs in columns; per-row ranges would mean nothing.
            let rows_are_outputs = match n.op {
                Op::Conv(_) => true,
                Op::Gemm { trans_b, .. } => trans_b,
                _ => false,
            };
            if rows_are_outputs && out_c > 0 {
                let ranges: Vec<f32> = channel_ranges(&wv, out_c).iter().map(|(a, b)| b - a).collect();
                let mx = ranges.iter().cloned().fold(0.0, f32::max);
                let mn = ranges.iter().cloned().fold(f32::INFINITY, f32::min);
                info.channel_range_max = Some(mx);
                info.channel_range_min = Some(mn);
                info.channel_range_spread = Some(if mn > 0.0 { mx / mn } else { f32::INFINITY });
            }
        }
        layers.push(info);
    }
    let total_params = g.param_count();
    let total_macs = layers.iter().map(|l| l.macs).sum();
    let fp32_bytes = g.initializers.values().map(|t| t.size_bytes()).sum();
    ModelInfo { layers, total_params, total_macs, fp32_bytes }
}
