//! Static shape and dtype inference. Also resolves `auto_pad` into explicit pads, which needs the
//! input size.

use subq_tensor::DType;

use crate::{AutoPad, Graph, IrError, Node, Op};

fn out_dim(input: usize, kernel: usize, stride: usize, dilation: usize, pad_total: usize, ceil: bool) -> Option<usize> {
    let eff = dilation * (kernel - 1) + 1;
    let span = (input + pad_total).checked_sub(eff)?;
    Some(if ceil { span.div_ceil(stride) } else { span / stride } + 1)
}

/// Explicit [top, left, bottom, right] pads for an auto_pad mode.
fn resolve_auto_pad(mode: AutoPad, pads: [usize; 4], input: [usize; 2], kernel: [usize; 2], strides: [usize; 2], dilations: [usize; 2]) -> [usize; 4] {
    match mode {
        AutoPad::NotSet => pads,
        AutoPad::Valid => [0; 4],
        AutoPad::SameUpper | AutoPad::SameLower => {
            let mut p = [0; 4];
            for d in 0..2 {
                let out = input[d].div_ceil(strides[d]);
                let eff = dilations[d] * (kernel[d] - 1) + 1;
                let total = ((out - 1) * strides[d] + eff).saturating_sub(input[d]);
                let (small, big) = (total / 2, total - total / 2);
                if mode == AutoPad::SameUpper {
                    p[d] = small;
                    p[d + 2] = big;
                } else {
                    p[d] = big;
                    p[d + 2] = small;
                }
            }
            p
        }
    }
}

fn broadcast(node: &Node, a: &[usize], b: &[usize]) -> Result<Vec<usize>, IrError> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(IrError::node(node, format!("shapes {a:?} and {b:?} do not broadcast")));
        };
    }
    Ok(out)
}

fn norm_axis(node: &Node, axis: i64, rank: usize) -> Result<usize, IrError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize > rank {
        return Err(IrError::node(node, format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Infer every node output's shape and dtype in order. Graph inputs and initializers must
/// already have theirs.
pub fn infer_shapes(g: &mut Graph) -> Result<(), IrError> {
    for (k, t) in &g.initializers {
        g.shapes.insert(k.clone(), t.shape.clone());
        g.dtypes.insert(k.clone(), t.dtype());
    }
    for idx in 0..g.nodes.len() {
        let node = g.nodes[idx].clone();
        let shape_of = |i: usize| -> Result<Vec<usize>, IrError> {
            let name = node.inputs.get(i).filter(|s| !s.is_empty()).ok_or_else(|| IrError::node(&node, format!("missing input {i}")))?;
            g.shapes.get(name).cloned().ok_or_else(|| IrError::node(&node, format!("input '{name}' has no known shape")))
        };
        let dtype_of = |i: usize| g.dtypes.get(&node.inputs[i]).copied().unwrap_or(DType::F32);
        let x = shape_of(0)?;
        let need_rank4 = |s: &[usize]| -> Result<(), IrError> {
            if s.len() != 4 {
                return Err(IrError::node(&node, format!("expects a 4-D NCHW input, got shape {s:?}")));
            }
            Ok(())
        };
        let mut dtype = dtype_of(0);
        let out: Vec<usize> = match &node.op {
            Op::Conv(c) => {
                need_rank4(&x)?;
                let w = shape_of(1)?;
                if w.len() != 4 {
                    return Err(IrError::node(&node, format!("weight must be 4-D OIHW, got {w:?}")));
                }
                if c.group == 0 || x[1] != w[1] * c.group || w[0] % c.group != 0 {
                    return Err(IrError::node(&node, format!("input channels {} do not match weight {w:?} with group {}", x[1], c.group)));
                }
                if [w[2], w[3]] != c.kernel {
                    return Err(IrError::node(&node, format!("kernel_shape {:?} does not match weight {w:?}", c.kernel)));
                }
                if node.inputs.len() > 2 && !node.inputs[2].is_empty() && shape_of(2)? != [w[0]] {
                    return Err(IrError::node(&node, format!("bias shape {:?} does not match {} output channels", shape_of(2)?, w[0])));
                }
                let pads = resolve_auto_pad(c.auto_pad, c.pads, [x[2], x[3]], c.kernel, c.strides, c.dilations);
                if let Op::Conv(c) = &mut g.nodes[idx].op {
                    c.pads = pads;
                    c.auto_pad = AutoPad::NotSet;
                }
                let oh = out_dim(x[2], c.kernel[0], c.strides[0], c.dilations[0], pads[0] + pads[2], false);
                let ow = out_dim(x[3], c.kernel[1], c.strides[1], c.dilations[1], pads[1] + pads[3], false);
                match (oh, ow) {
                    (Some(oh), Some(ow)) => vec![x[0], w[0], oh, ow],
                    _ => return Err(IrError::node(&node, "kernel larger than padded input")),
                }
            }
            Op::AveragePool(p) | Op::MaxPool(p) => {
                need_rank4(&x)?;
                let pads = resolve_auto_pad(p.auto_pad, p.pads, [x[2], x[3]], p.kernel, p.strides, [1, 1]);
                match &mut g.nodes[idx].op {
                    Op::AveragePool(q) | Op::MaxPool(q) => {
                        q.pads = pads;
                        q.auto_pad = AutoPad::NotSet;
                    }
                    _ => unreachable!(),
                }
                let oh = out_dim(x[2], p.kernel[0], p.strides[0], 1, pads[0] + pads[2], p.ceil_mode);
                let ow = out_dim(x[3], p.kernel[1], p.strides[1], 1, pads[1] + pads[3], p.ceil_mode);
                match (oh, ow) {
                    (Some(oh), Some(ow)) => vec![x[0], x[1], oh, ow],
                    _ => return Err(IrError::node(&node, "kernel larger than padded input")),
                }
            }
            Op::GlobalAveragePool => {
                need_rank4(&x)?;
                vec![x[0], x[1], 1, 1]
            }
            Op::BatchNorm { .. } => {
                if x.len() < 2 {
                    return Err(IrError::node(&node, "input needs a channel axis"));
                }
                for i in 1..5 {
                    if shape_of(i)? != [x[1]] {
                        return Err(IrError::node(&node, format!("parameter {i} must have shape [{}]", x[1])));
                    }
                }
                x
            }
            Op::Relu | Op::Clip { .. } | Op::Sigmoid | Op::HardSigmoid { .. } | Op::HardSwish | Op::Identity | Op::Softmax { .. } => x,
            Op::Add | Op::Mul | Op::Min => broadcast(&node, &x, &shape_of(1)?)?,
            Op::Pad { pads, .. } => {
                if pads.len() != 2 * x.len() {
                    return Err(IrError::node(&node, format!("pads has {} entries for a rank-{} input", pads.len(), x.len())));
                }
                let r = x.len();
                let mut o = Vec::with_capacity(r);
                for d in 0..r {
                    let v = x[d] as i64 + pads[d] + pads[d + r];
                    if v <= 0 {
                        return Err(IrError::node(&node, "padding removes the whole axis"));
                    }
                    o.push(v as usize);
                }
                o
            }
            Op::Flatten { axis } => {
                let a = norm_axis(&node, *axis, x.len())?;
                vec![x[..a].iter().product(), x[a..].iter().product()]
            }
            Op::Reshape { shape } => {
                let total: usize = x.iter().product();
                let mut o = Vec::with_capacity(shape.len());
                let mut infer_at = None;
                for (i, &d) in shape.iter().enumerate() {
                    match d {
                        0 => o.push(*x.get(i).ok_or_else(|| IrError::node(&node, "0 in shape beyond input rank"))?),
                        -1 => {
                            infer_at = Some(i);
                            o.push(1)
                        }
                        d if d > 0 => o.push(d as usize),
                        _ => return Err(IrError::node(&node, format!("invalid target dimension {d}"))),
                    }
                }
                let known: usize = o.iter().product();
                if let Some(i) = infer_at {
                    if known == 0 || !total.is_multiple_of(known) {
                        return Err(IrError::node(&node, "cannot infer -1 dimension"));
                    }
                    o[i] = total / known;
                }
                if o.iter().product::<usize>() != total {
                    return Err(IrError::node(&node, format!("cannot reshape {x:?} to {shape:?}")));
                }
                o
            }
            Op::Gemm { trans_a, trans_b, .. } => {
                let b = shape_of(1)?;
                if x.len() != 2 || b.len() != 2 {
                    return Err(IrError::node(&node, format!("Gemm needs 2-D inputs, got {x:?} and {b:?}")));
                }
                let (m, k) = if *trans_a { (x[1], x[0]) } else { (x[0], x[1]) };
                let (kb, n) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
                if k != kb {
                    return Err(IrError::node(&node, format!("inner dimensions differ: {x:?} × {b:?}")));
                }
                // C must broadcast to [m, n] (ONNX unidirectional broadcasting).
                if node.inputs.len() > 2 && !node.inputs[2].is_empty() {
                    let c = shape_of(2)?;
                    let fits = |d: usize, full: usize| d == 1 || d == full;
                    let ok = match c.as_slice() {
                        [] => true,
                        [cn] => fits(*cn, n),
                        [cm, cn] => fits(*cm, m) && fits(*cn, n),
                        _ => false,
                    };
                    if !ok {
                        return Err(IrError::node(&node, format!("bias C of shape {c:?} does not broadcast to [{m}, {n}]")));
                    }
                }
                vec![m, n]
            }
            Op::MatMul => {
                let b = shape_of(1)?;
                if x.len() < 2 || b.len() != 2 || x[x.len() - 1] != b[0] {
                    return Err(IrError::node(&node, format!("unsupported MatMul shapes {x:?} × {b:?} (B must be 2-D)")));
                }
                let mut o = x.clone();
                *o.last_mut().unwrap() = b[1];
                o
            }
            Op::Concat { axis } => {
                let a = norm_axis(&node, *axis, x.len())?;
                if a >= x.len() {
                    return Err(IrError::node(&node, format!("axis {axis} out of range for rank {}", x.len())));
                }
                let mut o = x.clone();
                for i in 1..node.inputs.len() {
                    let s = shape_of(i)?;
                    if s.len() != x.len() || (0..x.len()).any(|d| d != a && s[d] != x[d]) {
                        return Err(IrError::node(&node, format!("cannot concatenate {x:?} and {s:?} on axis {a}")));
                    }
                    o[a] += s[a];
                }
                o
            }
            Op::QuantizeLinear { axis } | Op::DequantizeLinear { axis } => {
                // Scale: one value (per tensor) or one per entry of `axis`; the zero-point, when
                // given, has the scale's shape. Consumers index them by channel.
                let scale = shape_of(1)?;
                let count: usize = scale.iter().product();
                if scale.len() > 1 || count == 0 {
                    return Err(IrError::node(&node, format!("scale must be a scalar or 1-D and non-empty, got shape {scale:?}")));
                }
                if count > 1 {
                    let a = norm_axis(&node, *axis, x.len())?;
                    if a >= x.len() || x[a] != count {
                        return Err(IrError::node(&node, format!("{count} scales for axis {axis} of shape {x:?}")));
                    }
                }
                // Shapes [] and [1] both mean per tensor (ONNX Runtime writes either).
                if node.inputs.len() > 2 && !node.inputs[2].is_empty() {
                    let zp = shape_of(2)?;
                    if zp.len() > 1 || zp.iter().product::<usize>() != count {
                        return Err(IrError::node(&node, format!("zero-point shape {zp:?} does not match scale shape {scale:?}")));
                    }
                }
                dtype = if matches!(node.op, Op::DequantizeLinear { .. }) {
                    DType::F32
                } else if node.inputs.len() > 2 && !node.inputs[2].is_empty() {
                    dtype_of(2)
                } else {
                    DType::U8
                };
                x
            }
        };
        for o in &node.outputs {
            g.shapes.insert(o.clone(), out.clone());
            g.dtypes.insert(o.clone(), dtype);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_upper_pads_match_tf() {
        // TF SAME, input 224, kernel 3, stride 2 → output 112, total pad 1, extra at the end.
        let p = resolve_auto_pad(AutoPad::SameUpper, [0; 4], [224, 224], [3, 3], [2, 2], [1, 1]);
        assert_eq!(p, [0, 0, 1, 1]);
        let p = resolve_auto_pad(AutoPad::SameLower, [0; 4], [224, 224], [3, 3], [2, 2], [1, 1]);
        assert_eq!(p, [1, 1, 0, 0]);
        let p = resolve_auto_pad(AutoPad::SameUpper, [0; 4], [7, 7], [5, 5], [1, 1], [1, 1]);
        assert_eq!(p, [2, 2, 2, 2]);
    }

    #[test]
    fn out_dim_formula() {
        assert_eq!(out_dim(224, 3, 2, 1, 1, false), Some(112));
        assert_eq!(out_dim(5, 2, 2, 1, 0, true), Some(3));
        assert_eq!(out_dim(5, 2, 2, 1, 0, false), Some(2));
        assert_eq!(out_dim(2, 5, 1, 1, 0, false), None);
    }
}
