//! Floating-point graph interpreter.

use std::collections::HashMap;

use subq_ir::{Graph, Node, Op};
use subq_kernels::{f32 as k, ConvGeometry};
use subq_tensor::{numel, QParams, QuantRange, Tensor, TensorData};

use crate::RuntimeError;

fn node_err(node: &Node, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Node { node: node.name.clone(), op: node.op.name().into(), reason: reason.into() }
}

/// Runs a graph node by node. Values live in slots indexed at construction; each intermediate
/// is dropped after its last reader, so peak memory is the live set, not the whole graph.
pub struct Fp32Executor<'g> {
    graph: &'g Graph,
    slot_of: HashMap<String, usize>,
    node_slots: Vec<(Vec<Option<usize>>, usize)>,
    /// Slots to free after each node.
    frees: Vec<Vec<usize>>,
    output_slots: Vec<usize>,
    input_slots: Vec<usize>,
}

impl<'g> Fp32Executor<'g> {
    pub fn new(graph: &'g Graph) -> Fp32Executor<'g> {
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let slot = |name: &str, slot_of: &mut HashMap<String, usize>| {
            let n = slot_of.len();
            *slot_of.entry(name.to_string()).or_insert(n)
        };
        let input_slots = graph.inputs.iter().map(|i| slot(i, &mut slot_of)).collect();
        let mut node_slots = Vec::new();
        for n in &graph.nodes {
            let ins: Vec<Option<usize>> = n
                .inputs
                .iter()
                .map(|i| if i.is_empty() || graph.initializers.contains_key(i) { None } else { Some(slot(i, &mut slot_of)) })
                .collect();
            let out = slot(&n.outputs[0], &mut slot_of);
            node_slots.push((ins, out));
        }
        let output_slots: Vec<usize> = graph.outputs.iter().map(|o| slot(o, &mut slot_of)).collect();
        let mut last_use = vec![usize::MAX; slot_of.len()];
        for (i, (ins, _)) in node_slots.iter().enumerate() {
            for s in ins.iter().flatten() {
                last_use[*s] = i;
            }
        }
        let mut frees = vec![Vec::new(); graph.nodes.len()];
        for (s, &i) in last_use.iter().enumerate() {
            if i != usize::MAX && !output_slots.contains(&s) {
                frees[i].push(s);
            }
        }
        Fp32Executor { graph, slot_of, node_slots, frees, output_slots, input_slots }
    }

    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// Run on the graph inputs (in `graph.inputs` order); returns the graph outputs in order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_observed(inputs, &mut |_, _| {})
    }

    /// Run and show every node output to `observe(value_name, tensor)` as it is produced
    /// (calibration and per-layer error analysis hook in here).
    pub fn run_observed(&self, inputs: Vec<Tensor>, observe: &mut dyn FnMut(&str, &Tensor)) -> Result<Vec<Tensor>, RuntimeError> {
        let g = self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(RuntimeError::MissingInput(g.inputs.get(inputs.len()).cloned().unwrap_or_default()));
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; self.slot_of.len()];
        for ((name, &s), t) in g.inputs.iter().zip(&self.input_slots).zip(inputs) {
            let expected = &g.shapes[name];
            // The batch dimension may differ from the one the graph was imported with.
            if t.shape.len() != expected.len() || t.shape[1..] != expected[1..] {
                return Err(RuntimeError::InputShape { name: name.clone(), expected: expected.clone(), actual: t.shape });
            }
            slots[s] = Some(t);
        }
        let mut scratch = Vec::new();
        for (i, n) in g.nodes.iter().enumerate() {
            let (ins, out) = &self.node_slots[i];
            let args: Vec<Option<&Tensor>> = n
                .inputs
                .iter()
                .zip(ins)
                .map(|(name, s)| match s {
                    Some(s) => slots[*s].as_ref(),
                    None => g.initializers.get(name),
                })
                .collect();
            let result = eval_node(n, &args, &mut scratch)?;
            observe(&n.outputs[0], &result);
            slots[*out] = Some(result);
            for &s in &self.frees[i] {
                slots[s] = None;
            }
        }
        self.output_slots.iter().map(|&s| slots[s].take().ok_or_else(|| RuntimeError::Other("graph output was not computed".into()))).collect()
    }
}

fn arg<'a>(n: &Node, args: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, RuntimeError> {
    args.get(i).copied().flatten().ok_or_else(|| node_err(n, format!("input {i} is missing")))
}

fn f32_arg<'a>(n: &Node, args: &[Option<&'a Tensor>], i: usize) -> Result<&'a [f32], RuntimeError> {
    arg(n, args, i)?.as_f32().map_err(|e| node_err(n, e.to_string()))
}

fn map_unary(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor, RuntimeError> {
    let v = x.as_f32().map_err(|e| RuntimeError::Other(e.to_string()))?;
    Ok(Tensor { shape: x.shape.clone(), data: TensorData::F32(v.iter().map(|&a| f(a)).collect()) })
}

/// Element-wise binary op with NumPy broadcasting.
fn broadcast_binary(n: &Node, a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor, RuntimeError> {
    let (av, bv) = (a.as_f32().map_err(|e| node_err(n, e.to_string()))?, b.as_f32().map_err(|e| node_err(n, e.to_string()))?);
    if a.shape == b.shape {
        return Ok(Tensor { shape: a.shape.clone(), data: TensorData::F32(av.iter().zip(bv).map(|(&x, &y)| f(x, y)).collect()) });
    }
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let mut out_shape = vec![0; rank];
    for d in 0..rank {
        out_shape[d] = match (sa[d], sb[d]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(node_err(n, format!("cannot broadcast {:?} with {:?}", a.shape, b.shape))),
        };
    }
    let strides = |s: &[usize]| -> Vec<usize> {
        let mut st = vec![0; rank];
        let mut acc = 1;
        for d in (0..rank).rev() {
            st[d] = if s[d] == 1 { 0 } else { acc };
            acc *= s[d];
        }
        st
    };
    let (ta, tb) = (strides(&sa), strides(&sb));
    let total = numel(&out_shape);
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; rank];
    for _ in 0..total {
        let (mut ia, mut ib) = (0, 0);
        for d in 0..rank {
            ia += idx[d] * ta[d];
            ib += idx[d] * tb[d];
        }
        out.push(f(av[ia], bv[ib]));
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Tensor { shape: out_shape, data: TensorData::F32(out) })
}

/// Per-tensor or per-axis quantization parameters read from a Q/DQ node's inputs.
pub fn qdq_params(n: &Node, args: &[Option<&Tensor>], axis: i64, rank: usize, dtype_hint: Option<subq_tensor::DType>) -> Result<(QParams, usize), RuntimeError> {
    let scale = arg(n, args, 1)?.to_f32_vec();
    let zp_t = args.get(2).copied().flatten();
    let range = match zp_t.map(|t| t.dtype()).or(dtype_hint) {
        // int32 (bias) tensors are only ever dequantized, so their range is never used to clamp.
        Some(subq_tensor::DType::I8) | Some(subq_tensor::DType::I32) => QuantRange::I8,
        _ => QuantRange::U8,
    };
    let zero_point = zp_t.map(|t| t.to_i32_vec()).unwrap_or_else(|| vec![0; scale.len()]);
    let axis = if axis < 0 { (axis + rank as i64) as usize } else { axis as usize };
    Ok((QParams { axis: (scale.len() > 1).then_some(axis), scale, zero_point, range }, axis))
}

/// Index of the per-axis channel for every flat element.
fn channel_index(shape: &[usize], axis: usize, flat: usize) -> usize {
    let inner: usize = shape[axis + 1..].iter().product();
    (flat / inner) % shape[axis]
}

/// Evaluate one node on its inputs (None for omitted optional inputs).
pub fn eval_node(n: &Node, args: &[Option<&Tensor>], scratch: &mut Vec<f32>) -> Result<Tensor, RuntimeError> {
    let x = arg(n, args, 0)?;
    Ok(match &n.op {
        Op::Conv(c) => {
            let xv = f32_arg(n, args, 0)?;
            let w = arg(n, args, 1)?;
            let wv = w.as_f32().map_err(|e| node_err(n, e.to_string()))?;
            let bias = match args.get(2).copied().flatten() {
                Some(b) => Some(b.as_f32().map_err(|e| node_err(n, e.to_string()))?),
                None => None,
            };
            let [batch, in_c, in_h, in_w] = x.shape[..] else { return Err(node_err(n, "input must be 4-D")) };
            let eff = |k: usize, d: usize| d * (k - 1) + 1;
            let out_h = (in_h + c.pads[0] + c.pads[2] - eff(c.kernel[0], c.dilations[0])) / c.strides[0] + 1;
            let out_w = (in_w + c.pads[1] + c.pads[3] - eff(c.kernel[1], c.dilations[1])) / c.strides[1] + 1;
            let geom = ConvGeometry { in_c, in_h, in_w, out_c: w.shape[0], out_h, out_w, kernel: c.kernel, strides: c.strides, dilations: c.dilations, pad_top: c.pads[0], pad_left: c.pads[1], group: c.group };
            let (isz, osz) = (in_c * in_h * in_w, geom.out_c * out_h * out_w);
            let mut out = vec![0.0; batch * osz];
            for b in 0..batch {
                k::conv2d(&xv[b * isz..(b + 1) * isz], wv, bias, &geom, &mut out[b * osz..(b + 1) * osz], scratch);
            }
            Tensor { shape: vec![batch, geom.out_c, out_h, out_w], data: TensorData::F32(out) }
        }
        Op::BatchNorm { epsilon } => {
            let xv = f32_arg(n, args, 0)?;
            let (s, b, m, v) = (f32_arg(n, args, 1)?, f32_arg(n, args, 2)?, f32_arg(n, args, 3)?, f32_arg(n, args, 4)?);
            let c = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let mut out = xv.to_vec();
            for (i, chunk) in out.chunks_mut(inner).enumerate() {
                let ch = i % c;
                let a = s[ch] / (v[ch] + epsilon).sqrt();
                let off = b[ch] - m[ch] * a;
                chunk.iter_mut().for_each(|y| *y = *y * a + off);
            }
            Tensor { shape: x.shape.clone(), data: TensorData::F32(out) }
        }
        Op::Relu => map_unary(x, |a| a.max(0.0))?,
        Op::Clip { min, max } => map_unary(x, |a| a.max(*min).min(*max))?,
        Op::Sigmoid => map_unary(x, |a| 1.0 / (1.0 + (-a).exp()))?,
        Op::HardSigmoid { alpha, beta } => map_unary(x, |a| (alpha * a + beta).clamp(0.0, 1.0))?,
        Op::HardSwish => map_unary(x, |a| a * (a / 6.0 + 0.5).clamp(0.0, 1.0))?,
        Op::Identity => x.clone(),
        Op::Add => broadcast_binary(n, x, arg(n, args, 1)?, |a, b| a + b)?,
        Op::Mul => broadcast_binary(n, x, arg(n, args, 1)?, |a, b| a * b)?,
        Op::GlobalAveragePool => {
            let xv = f32_arg(n, args, 0)?;
            let inner: usize = x.shape[2..].iter().product();
            let out = xv.chunks(inner).map(|c| c.iter().map(|&v| v as f64).sum::<f64>() as f32 / inner as f32).collect();
            Tensor { shape: vec![x.shape[0], x.shape[1], 1, 1], data: TensorData::F32(out) }
        }
        Op::AveragePool(p) | Op::MaxPool(p) => {
            let xv = f32_arg(n, args, 0)?;
            let [batch, c, h, w] = x.shape[..] else { return Err(node_err(n, "input must be 4-D")) };
            let oh = if p.ceil_mode { (h + p.pads[0] + p.pads[2] - p.kernel[0]).div_ceil(p.strides[0]) + 1 } else { (h + p.pads[0] + p.pads[2] - p.kernel[0]) / p.strides[0] + 1 };
            let ow = if p.ceil_mode { (w + p.pads[1] + p.pads[3] - p.kernel[1]).div_ceil(p.strides[1]) + 1 } else { (w + p.pads[1] + p.pads[3] - p.kernel[1]) / p.strides[1] + 1 };
            let mut out = vec![0.0; batch * c * oh * ow];
            for b in 0..batch {
                k::pool2d(&xv[b * c * h * w..(b + 1) * c * h * w], c, h, w, oh, ow, p.kernel, p.strides, p.pads, matches!(n.op, Op::MaxPool(_)), p.count_include_pad, &mut out[b * c * oh * ow..(b + 1) * c * oh * ow]);
            }
            Tensor { shape: vec![batch, c, oh, ow], data: TensorData::F32(out) }
        }
        Op::Pad { pads, value } => {
            let xv = f32_arg(n, args, 0)?;
            let r = x.shape.len();
            let out_shape: Vec<usize> = (0..r).map(|d| (x.shape[d] as i64 + pads[d] + pads[d + r]) as usize).collect();
            let mut out = vec![*value; numel(&out_shape)];
            // Copy rows of the last axis into their padded place.
            let last = x.shape[r - 1];
            let rows = numel(&x.shape) / last.max(1);
            let mut idx = vec![0usize; r - 1];
            for row in 0..rows {
                let mut off = 0;
                for d in 0..r - 1 {
                    off = off * out_shape[d] + idx[d] + pads[d] as usize;
                }
                off = off * out_shape[r - 1] + pads[r - 1] as usize;
                out[off..off + last].copy_from_slice(&xv[row * last..(row + 1) * last]);
                for d in (0..r - 1).rev() {
                    idx[d] += 1;
                    if idx[d] < x.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            Tensor { shape: out_shape, data: TensorData::F32(out) }
        }
        Op::Flatten { .. } | Op::Reshape { .. } => {
            let out_shape = reshape_target(n, &x.shape)?;
            Tensor { shape: out_shape, data: x.data.clone() }
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let (a, b) = (x, arg(n, args, 1)?);
            let (av, bv) = (f32_arg(n, args, 0)?, f32_arg(n, args, 1)?);
            let (m, kk) = if *trans_a { (a.shape[1], a.shape[0]) } else { (a.shape[0], a.shape[1]) };
            let nn = if *trans_b { b.shape[0] } else { b.shape[1] };
            let a_str = if *trans_a { (1, m as isize) } else { (kk as isize, 1) };
            let b_str = if *trans_b { (1, kk as isize) } else { (nn as isize, 1) };
            let mut out = vec![0.0; m * nn];
            k::sgemm_strided(m, kk, nn, av, a_str, bv, b_str, &mut out, false);
            if *alpha != 1.0 {
                out.iter_mut().for_each(|v| *v *= alpha);
            }
            let mut t = Tensor { shape: vec![m, nn], data: TensorData::F32(out) };
            if let Some(c) = args.get(2).copied().flatten() {
                let scaled = map_unary(c, |v| v * beta)?;
                t = broadcast_binary(n, &t, &scaled, |p, q| p + q)?;
            }
            t
        }
        Op::MatMul => {
            let b = arg(n, args, 1)?;
            let (av, bv) = (f32_arg(n, args, 0)?, f32_arg(n, args, 1)?);
            let kk = b.shape[0];
            let nn = b.shape[1];
            let m = av.len() / kk;
            let mut out = vec![0.0; m * nn];
            k::sgemm(m, kk, nn, av, bv, &mut out, false);
            let mut shape = x.shape.clone();
            *shape.last_mut().unwrap() = nn;
            Tensor { shape, data: TensorData::F32(out) }
        }
        Op::Concat { axis } => {
            let r = x.shape.len();
            let a = if *axis < 0 { (*axis + r as i64) as usize } else { *axis as usize };
            let parts: Vec<&Tensor> = (0..n.inputs.len()).map(|i| arg(n, args, i)).collect::<Result<_, _>>()?;
            let outer: usize = x.shape[..a].iter().product();
            let mut out_shape = x.shape.clone();
            out_shape[a] = parts.iter().map(|p| p.shape[a]).sum();
            let mut out = Vec::with_capacity(numel(&out_shape));
            for o in 0..outer {
                for p in &parts {
                    let pv = p.as_f32().map_err(|e| node_err(n, e.to_string()))?;
                    let chunk: usize = p.shape[a..].iter().product();
                    out.extend_from_slice(&pv[o * chunk..(o + 1) * chunk]);
                }
            }
            Tensor { shape: out_shape, data: TensorData::F32(out) }
        }
        Op::Softmax { axis } => {
            let r = x.shape.len();
            let a = if *axis < 0 { (*axis + r as i64) as usize } else { *axis as usize };
            if a != r - 1 {
                return Err(node_err(n, "Softmax is only supported over the last axis"));
            }
            let xv = f32_arg(n, args, 0)?;
            let inner = x.shape[r - 1];
            let mut out = xv.to_vec();
            for row in out.chunks_mut(inner) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut s = 0.0;
                row.iter_mut().for_each(|v| {
                    *v = (*v - m).exp();
                    s += *v
                });
                row.iter_mut().for_each(|v| *v /= s);
            }
            Tensor { shape: x.shape.clone(), data: TensorData::F32(out) }
        }
        Op::QuantizeLinear { axis } => {
            let (qp, ax) = qdq_params(n, args, *axis, x.shape.len(), None)?;
            let xv = f32_arg(n, args, 0)?;
            let ch = |i: usize| if qp.is_per_tensor() { 0 } else { channel_index(&x.shape, ax, i) };
            let data = match qp.range {
                QuantRange::U8 => TensorData::U8(xv.iter().enumerate().map(|(i, &v)| qp.quantize_value(v, ch(i)) as u8).collect()),
                _ => TensorData::I8(xv.iter().enumerate().map(|(i, &v)| qp.quantize_value(v, ch(i)) as i8).collect()),
            };
            Tensor { shape: x.shape.clone(), data }
        }
        Op::DequantizeLinear { axis } => {
            let (qp, ax) = qdq_params(n, args, *axis, x.shape.len(), Some(x.dtype()))?;
            let q = x.to_i32_vec();
            let out = q
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = if qp.scale.len() == 1 { 0 } else { channel_index(&x.shape, ax, i) };
                    // Computed as in the ONNX reference: (x − zp) · scale, the difference in int32.
                    (v - qp.zero_point_at(c)) as f32 * qp.scale_at(c)
                })
                .collect();
            Tensor { shape: x.shape.clone(), data: TensorData::F32(out) }
        }
    })
}

fn reshape_target(n: &Node, shape: &[usize]) -> Result<Vec<usize>, RuntimeError> {
    match &n.op {
        Op::Flatten { axis } => {
            let a = if *axis < 0 { (*axis + shape.len() as i64) as usize } else { *axis as usize };
            Ok(vec![shape[..a].iter().product(), shape[a..].iter().product()])
        }
        Op::Reshape { shape: target } => {
            let total: usize = shape.iter().product();
            let mut out: Vec<usize> = target.iter().enumerate().map(|(i, &d)| if d == 0 { shape[i] } else if d < 0 { 1 } else { d as usize }).collect();
            if let Some(i) = target.iter().position(|&d| d == -1) {
                let known: usize = out.iter().product();
                out[i] = total / known.max(1);
            }
            Ok(out)
        }
        _ => Err(node_err(n, "not a reshape")),
    }
}
