//! Turn a QDQ model back into an FP32 graph, so that a model that was only ever shipped quantized
//! (e.g. ONNX Runtime's QDQ files) can be re-quantized, inspected and reported on.
//!
//! - A DequantizeLinear of a constant becomes that constant in float (exactly the values the QDQ
//!   file computes with).
//! - An activation's QuantizeLinear → DequantizeLinear pair is removed, except for what it does
//!   beyond rounding that the model relies on: a grid starting at 0 (zero-point 0, uint8) is where
//!   a quantizer fused a ReLU/ReLU6 away (ONNX Runtime's files have no Relu/Clip nodes left), so it
//!   becomes Clip(0, 255·scale). Other grids' saturation only cut calibration outliers and is
//!   dropped.
//!
//! The result computes what the QDQ file computes without activation rounding: the "FP32" model a
//! re-quantization starts from. Per-channel parameters survive only as the float weights they
//! produce.

use std::collections::HashMap;

use subq_ir::{Graph, Node, Op};
use subq_tensor::{DType, QuantRange, Tensor};

use crate::TransformError;

fn err(node: &Node, reason: impl Into<String>) -> TransformError {
    TransformError::Node { pass: "dequantize", node: node.name.clone(), reason: reason.into() }
}

/// The operands of `n` that are constants (None for the others), as the FP32 executor takes them.
fn constant_args<'g>(g: &'g Graph, n: &Node) -> Vec<Option<&'g Tensor>> {
    n.inputs.iter().map(|i| g.initializer(i)).collect()
}

/// Rewrite `g` (a QDQ graph) as an FP32 graph. Returns how many Q/DQ nodes were removed.
pub fn dequantize_qdq(g: &mut Graph) -> Result<usize, TransformError> {
    let before = g.nodes.len();
    let producers: HashMap<String, usize> = g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.clone(), i))).collect();
    let mut nodes = Vec::with_capacity(g.nodes.len());
    let mut constants: Vec<(String, Tensor)> = Vec::new();
    for n in &g.nodes {
        match n.op {
            Op::DequantizeLinear { .. } => {
                // A constant: evaluated exactly as the FP32 executor runs the file.
                let args = constant_args(g, n);
                if args.iter().all(Option::is_some) {
                    let floats = subq_runtime::eval_node(n, &args, &mut Vec::new()).map_err(|e| err(n, e.to_string()))?;
                    constants.push((n.outputs[0].clone(), floats));
                    continue;
                }
                let quant = producers.get(&n.inputs[0]).map(|&p| &g.nodes[p]).filter(|p| matches!(p.op, Op::QuantizeLinear { .. }));
                let Some(quant) = quant else { return Err(err(n, "dequantizes a value that no QuantizeLinear produced")) };
                let Op::QuantizeLinear { axis } = quant.op else { unreachable!("filtered above") };
                let (q, _) = subq_runtime::qdq_params(quant, &constant_args(g, quant), axis, 4, None).map_err(|e| err(quant, e.to_string()))?;
                let source = quant.inputs[0].clone();
                let already_clamped = producers.get(&source).is_some_and(|&p| matches!(g.nodes[p].op, Op::Relu | Op::Clip { .. }));
                if q.range == QuantRange::U8 && q.is_per_tensor() && q.zero_point[0] == 0 && !already_clamped {
                    nodes.push(Node { name: format!("{}_relu_bound", n.name), op: Op::Clip { min: 0.0, max: 255.0 * q.scale[0] }, inputs: vec![source], outputs: n.outputs.clone() });
                } else {
                    nodes.push(Node { name: format!("{}_dq_identity", n.name), op: Op::Identity, inputs: vec![source], outputs: n.outputs.clone() });
                }
            }
            Op::QuantizeLinear { .. } => {}
            _ => nodes.push(n.clone()),
        }
    }
    g.nodes = nodes;
    for (name, t) in constants {
        g.shapes.insert(name.clone(), t.shape.clone());
        g.dtypes.insert(name.clone(), DType::F32);
        g.initializers.insert(name, t);
    }
    // Identity stand-ins: readers take the source directly. For a graph output the source's
    // producer takes the output's name instead, so the graph ends in a real op (the quantizer
    // gives the output its own grid).
    let identities: Vec<(String, String)> = g.nodes.iter().filter(|n| matches!(n.op, Op::Identity) && n.name.ends_with("_dq_identity")).map(|n| (n.outputs[0].clone(), n.inputs[0].clone())).collect();
    for (out, src) in &identities {
        let produced = g.nodes.iter().any(|n| n.outputs.contains(src));
        if !g.outputs.contains(out) {
            g.replace_uses(out, src);
        } else if produced && !g.outputs.contains(src) {
            g.nodes.retain(|n| !(n.outputs[0] == *out && matches!(n.op, Op::Identity)));
            for n in &mut g.nodes {
                for o in n.outputs.iter_mut().chain(n.inputs.iter_mut()) {
                    if o == src {
                        *o = out.clone();
                    }
                }
            }
            g.shapes.remove(src);
            g.dtypes.remove(src);
        }
    }
    g.remove_dead();
    for o in g.nodes.iter().flat_map(|n| n.outputs.iter()) {
        g.dtypes.insert(o.clone(), DType::F32);
    }
    subq_ir::infer_shapes(g)?;
    g.validate()?;
    Ok(before - g.nodes.len())
}
