//! Build the QDQ graph of a plan, in the form ONNX Runtime's own quantizer writes: every
//! activation passes through QuantizeLinear → DequantizeLinear, weights are stored quantized
//! behind a DequantizeLinear, biases as int32 at scale s_in·s_w.

use std::collections::{BTreeMap, HashMap};

use subq_ir::{Graph, Node, Op};
use subq_tensor::{QParams, QuantRange, Tensor, TensorData};

use crate::plan::QuantPlan;
use crate::QuantError;

pub(crate) fn quantize_tensor(t: &Tensor, q: &QParams) -> Tensor {
    let v = t.to_f32_vec();
    let ch = |i: usize| q.channel_of(&t.shape, i);
    let data = match q.range {
        QuantRange::U8 => TensorData::U8(v.iter().enumerate().map(|(i, &x)| q.quantize_value(x, ch(i)) as u8).collect()),
        QuantRange::I8 | QuantRange::I8Narrow => TensorData::I8(v.iter().enumerate().map(|(i, &x)| q.quantize_value(x, ch(i)) as i8).collect()),
    };
    Tensor { shape: t.shape.clone(), data }
}

fn scale_tensor(q: &QParams) -> Tensor {
    if q.is_per_tensor() { Tensor::scalar_f32(q.scale[0]) } else { Tensor::f32(vec![q.scale.len()], q.scale.clone()).expect("len") }
}

fn zero_point_tensor(q: &QParams) -> Tensor {
    let shape = if q.is_per_tensor() { vec![] } else { vec![q.zero_point.len()] };
    let data = match q.range {
        QuantRange::U8 => TensorData::U8(q.zero_point.iter().map(|&z| z as u8).collect()),
        _ => TensorData::I8(q.zero_point.iter().map(|&z| z as i8).collect()),
    };
    Tensor { shape, data }
}

struct Builder<'a> {
    src: &'a Graph,
    out: Graph,
    /// Float value name → name of its dequantized stand-in that consumers read.
    dequantized: HashMap<String, String>,
}

impl Builder<'_> {
    fn add_init(&mut self, name: String, t: Tensor) -> String {
        self.out.shapes.insert(name.clone(), t.shape.clone());
        self.out.dtypes.insert(name.clone(), t.dtype());
        self.out.initializers.insert(name.clone(), t);
        name
    }

    fn push(&mut self, name: String, op: Op, inputs: Vec<String>, output: String) {
        self.out.nodes.push(Node { name, op, inputs, outputs: vec![output] });
    }

    /// The scale and zero-point initializers of grid `name` (`{name}_scale`, `{name}_zero_point`).
    fn grid(&mut self, name: &str, q: &QParams) -> (String, String) {
        (self.add_init(format!("{name}_scale"), scale_tensor(q)), self.add_init(format!("{name}_zero_point"), zero_point_tensor(q)))
    }

    /// Emit Q → DQ for activation `value` (already produced under `produced_as`); consumers
    /// will read the returned name. A graph output keeps its name on the DQ side.
    fn quantize_activation(&mut self, value: &str, produced_as: &str, q: &QParams) {
        let (scale, zp) = self.grid(value, q);
        let quantized = format!("{value}_quantized");
        let dq_out = if self.src.outputs.iter().any(|o| o == value) { value.to_string() } else { format!("{value}_dequantized") };
        self.push(format!("{value}_QuantizeLinear"), Op::QuantizeLinear { axis: 1 }, vec![produced_as.into(), scale.clone(), zp.clone()], quantized.clone());
        self.push(format!("{value}_DequantizeLinear"), Op::DequantizeLinear { axis: 1 }, vec![quantized, scale, zp], dq_out.clone());
        self.dequantized.insert(value.to_string(), dq_out);
    }

    /// Store constant `base` quantized on grid `grid` (its scale and zero-point initializers, see
    /// [`Builder::grid`]) and return the name of its DequantizeLinear output.
    fn constant_on_grid(&mut self, base: &str, values: &Tensor, q: &QParams, grid: &str, axis: i64) -> String {
        let wq = self.add_init(format!("{base}_quantized"), quantize_tensor(values, q));
        let (scale, zp) = self.grid(grid, q);
        let out = format!("{base}_dequantized");
        self.push(format!("{base}_DequantizeLinear"), Op::DequantizeLinear { axis }, vec![wq, scale, zp], out.clone());
        out
    }

    /// Store a weight part quantized on its own grid and return the name of its DequantizeLinear output.
    fn weight(&mut self, base: &str, part: &crate::WeightPart) -> String {
        self.constant_on_grid(base, &part.values, &part.params, base, part.params.axis.unwrap_or(0) as i64)
    }

    /// int32 bias at scale s_in·s_w (per output channel when the weight is per-channel).
    fn bias(&mut self, base: &str, bias: &[f32], s_in: f32, wq: &QParams) -> String {
        let (q, scales) = bias_on_grid(bias, s_in, wq);
        let per_channel = !wq.is_per_tensor();
        let bq = self.add_init(format!("{base}_quantized"), Tensor { shape: vec![bias.len()], data: TensorData::I32(q) });
        let scale = self.add_init(format!("{base}_scale"), if per_channel { Tensor::f32(vec![scales.len()], scales).expect("len") } else { Tensor::scalar_f32(scales[0]) });
        let zp_shape = if per_channel { vec![bias.len()] } else { vec![] };
        let zp = self.add_init(format!("{base}_zero_point"), Tensor { shape: zp_shape.clone(), data: TensorData::I32(vec![0; zp_shape.iter().product()]) });
        let out = format!("{base}_dequantized");
        self.push(format!("{base}_DequantizeLinear"), Op::DequantizeLinear { axis: 0 }, vec![bq, scale, zp], out.clone());
        out
    }

    fn read(&self, value: &str) -> String {
        if value.is_empty() || self.src.initializers.contains_key(value) {
            return value.to_string();
        }
        self.dequantized.get(value).cloned().unwrap_or_else(|| value.to_string())
    }
}

/// The QDQ node that computes part `part` of a planned layer `node` with `parts` parts: the
/// layer's own name when it is not split. Bias and weight correction find the convs by it.
pub(crate) fn part_node_name(node: &str, parts: usize, part: usize) -> String {
    if parts == 1 { node.to_string() } else { format!("{node}_part{part}") }
}

/// A conv's bias as the QDQ file stores it: int32 values and their per-channel scales s_in·s_w.
/// Bias correction uses it to see the bias the file will hold.
pub(crate) fn bias_on_grid(bias: &[f32], s_in: f32, wq: &QParams) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = (0..bias.len()).map(|c| s_in * wq.scale_at(c)).collect();
    let q = bias.iter().zip(&scales).map(|(&b, &s)| (b as f64 / s as f64).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32).collect();
    (q, scales)
}

/// The QDQ graph of `g` (an FP32 graph with BatchNorm folded) under `plan`.
pub fn build_qdq_graph(g: &Graph, plan: &QuantPlan) -> Result<Graph, QuantError> {
    Ok(build_qdq_graph_with_map(g, plan)?.0)
}

/// Like [`build_qdq_graph`], also returning for every Conv/Gemm node the name of its float output
/// before quantization in the QDQ graph (the sum of its parts, before any fused activation):
/// what bias correction compares with the FP32 node's output.
pub fn build_qdq_graph_with_map(g: &Graph, plan: &QuantPlan) -> Result<(Graph, BTreeMap<String, String>), QuantError> {
    let mut pre_quant = BTreeMap::new();
    let mut b = Builder { src: g, out: Graph { name: g.name.clone(), inputs: g.inputs.clone(), outputs: g.outputs.clone(), metadata: g.metadata.clone(), opset: g.opset.max(13), ..Default::default() }, dequantized: HashMap::new() };
    for i in &g.inputs {
        b.out.shapes.insert(i.clone(), g.shapes[i].clone());
        b.out.dtypes.insert(i.clone(), g.dtypes[i]);
        let q = plan.activations.get(i).ok_or_else(|| QuantError::Invalid(format!("no parameters for input '{i}'")))?;
        b.quantize_activation(i, i, q);
    }
    // A fused Relu/Clip's producer writes the activation's output value directly.
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    for n in &g.nodes {
        if plan.fused_activations.contains_key(&n.name) {
            renamed.insert(n.inputs[0].clone(), n.outputs[0].clone());
        }
    }
    // Values read in float by an attached bound: no QuantizeLinear after their producer.
    let unquantized: std::collections::BTreeSet<String> = g.nodes.iter().filter(|n| plan.attached_bounds.contains_key(&n.name)).map(|n| n.inputs[0].clone()).collect();
    for n in &g.nodes {
        if plan.fused_activations.contains_key(&n.name) {
            continue;
        }
        let value = renamed.get(&n.outputs[0]).cloned().unwrap_or_else(|| n.outputs[0].clone());
        let is_output = g.outputs.contains(&value);
        // A quantized graph output keeps its name on the DequantizeLinear side.
        let produced_as = if is_output && !plan.float_outputs.contains(&value) { format!("{value}_float") } else { value.clone() };
        let mut inputs: Vec<String> = n.inputs.iter().map(|i| b.read(i)).collect();
        match (&n.op, plan.weights.get(&n.name)) {
            (Op::Conv(_) | Op::Gemm { .. }, Some(parts)) => {
                let s_in = plan.activations.get(&n.inputs[0]).map(|q| q.scale[0]).ok_or_else(|| QuantError::Invalid(format!("no parameters for input of '{}'", n.name)))?;
                let bias = n.inputs.get(2).filter(|s| !s.is_empty()).and_then(|s| g.initializer(s)).map(|t| t.to_f32_vec());
                let mut part_outputs = Vec::new();
                for (pi, part) in parts.iter().enumerate() {
                    let base = if parts.len() == 1 { n.inputs[1].clone() } else { format!("{}_part{pi}", n.inputs[1]) };
                    inputs[1] = b.weight(&base, part);
                    inputs.truncate(2);
                    if pi == 0 {
                        if let Some(bv) = &bias {
                            let bname = b.bias(&n.inputs[2], bv, s_in, &part.params);
                            inputs.push(bname);
                        }
                    }
                    let out = if parts.len() == 1 { produced_as.clone() } else { format!("{value}_part{pi}") };
                    let name = part_node_name(&n.name, parts.len(), pi);
                    b.push(name, n.op.clone(), inputs.clone(), out.clone());
                    part_outputs.push(out);
                }
                // Parts are summed in float before the one requantization (summing separately
                // quantized part outputs would throw the split's gain away).
                let mut acc = part_outputs[0].clone();
                for (k, p) in part_outputs.iter().enumerate().skip(1) {
                    let out = if k + 1 == part_outputs.len() { produced_as.clone() } else { format!("{value}_partsum{k}") };
                    b.push(format!("{}_sum{k}", n.name), Op::Add, vec![acc, p.clone()], out.clone());
                    acc = out;
                }
                pre_quant.insert(n.name.clone(), produced_as.clone());
            }
            (Op::Min, _) if plan.attached_bounds.contains_key(&n.name) => {
                // An equalized ReLU6 bound, one per channel: stored as uint8 on the Min's own
                // output grid behind a DequantizeLinear. Exact, since quantization is monotone:
                // Q(min(x, DQ(Q(b)))) = min(Q(x), Q(b)) = Q(min(x, b)); and 4× smaller than float.
                let q = plan.activations.get(&value).ok_or_else(|| QuantError::Invalid(format!("no parameters for '{value}'")))?.clone();
                let bound = g.initializer(&n.inputs[1]).ok_or_else(|| QuantError::Invalid(format!("node '{}': bound is not a constant", n.name)))?;
                // Its DequantizeLinear reads the Min output's own scale and zero-point initializers.
                inputs[1] = b.constant_on_grid(&n.inputs[1], bound, &q, &value, 1);
                b.push(n.name.clone(), n.op.clone(), inputs, produced_as.clone())
            }
            _ => {
                // Constant operands of other ops stay float.
                for i in &n.inputs {
                    if let Some(t) = g.initializer(i) {
                        b.add_init(i.clone(), t.clone());
                    }
                }
                b.push(n.name.clone(), n.op.clone(), inputs, produced_as.clone())
            }
        }
        if unquantized.contains(&value) || plan.float_outputs.contains(&value) {
            continue;
        }
        let q = plan.activations.get(&value).ok_or_else(|| QuantError::Invalid(format!("no parameters for '{value}'")))?.clone();
        b.quantize_activation(&value, &produced_as, &q);
    }
    let mut out = b.out;
    subq_ir::infer_shapes(&mut out)?;
    out.validate()?;
    Ok((out, pre_quant))
}
