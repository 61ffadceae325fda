use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use subq_ir::{AutoPad, Conv2d, Graph, Node, Op, Pool2d};
use subq_tensor::{DType, Tensor, TensorData};

use crate::proto::{self, attribute_type as at, data_type as dt, AttributeProto, NodeProto, TensorProto};
use crate::{OnnxError, MAX_OPSET, MIN_OPSET};

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Value given to a symbolic batch dimension (`N`, `batch_size`, …) of graph inputs.
    pub batch: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { batch: 1 }
    }
}

pub fn load_model(path: &Path, opts: &ImportOptions) -> Result<Graph, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.to_path_buf(), source })?;
    import_model(&bytes, path, opts)
}

/// Decode an ONNX model, convert it to the IR, infer shapes and validate. `path` is only used in
/// error messages.
pub fn import_model(bytes: &[u8], path: &Path, opts: &ImportOptions) -> Result<Graph, OnnxError> {
    let path = path.to_path_buf();
    let model = proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode { path: path.clone(), reason: e.to_string() })?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    let gp = model.graph.as_ref().ok_or_else(|| OnnxError::NoGraph { path: path.clone() })?;
    if gp.node.is_empty() && gp.output.is_empty() {
        // A protobuf that happens to decode (prost is lenient) but is not a model.
        return Err(OnnxError::Decode { path, reason: "graph has no nodes and no outputs".into() });
    }
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(OnnxError::Opset { path, opset });
    }
    let mut imp = Importer { path: path.clone(), opset, g: Graph { opset, ..Default::default() }, quantized: Default::default() };
    imp.g.name = gp.name.clone();
    for t in &gp.initializer {
        let tensor = imp.tensor(t)?;
        imp.g.initializers.insert(t.name.clone(), tensor);
    }
    for vi in &gp.input {
        if imp.g.initializers.contains_key(&vi.name) {
            continue;
        }
        imp.graph_input(vi, opts.batch)?;
    }
    for n in &gp.node {
        imp.node(n)?;
    }
    imp.g.outputs = gp.output.iter().map(|o| o.name.clone()).collect();
    // Constants folded into an op (Clip bounds, Pad amounts, Reshape shape, Dropout ratio) are no
    // longer read by any node: drop them, or every export → import round trip would add another
    // copy (the exporter re-emits them under the node's name).
    let read: std::collections::HashSet<&String> = imp.g.nodes.iter().flat_map(|n| &n.inputs).chain(&imp.g.outputs).collect();
    let unread: Vec<String> = imp.g.initializers.keys().filter(|k| !read.contains(k)).cloned().collect();
    for k in unread {
        imp.g.initializers.remove(&k);
    }
    imp.g.metadata = model.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect::<BTreeMap<_, _>>();
    let mut g = imp.g;
    let wrap = |source| OnnxError::Ir { path: path.clone(), source };
    g.toposort().map_err(wrap)?;
    subq_ir::infer_shapes(&mut g).map_err(wrap)?;
    g.validate().map_err(wrap)?;
    Ok(g)
}

struct Importer {
    path: PathBuf,
    opset: i64,
    g: Graph,
    /// Values that hold quantized data (a QuantizeLinear output) → their (scale, zero-point)
    /// names: a shape op or max pool reading one runs between a DequantizeLinear and a
    /// QuantizeLinear on that grid (see [`Importer::qoperator`]).
    quantized: std::collections::HashMap<String, (String, String)>,
}

fn le_chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N).map(|c| f(c.try_into().expect("chunk size"))).collect()
}

impl Importer {
    fn tensor_err(&self, name: &str, reason: impl Into<String>) -> OnnxError {
        OnnxError::Tensor { path: self.path.clone(), name: name.to_string(), reason: reason.into() }
    }

    fn tensor(&self, t: &TensorProto) -> Result<Tensor, OnnxError> {
        if t.data_location == 1 || !t.external_data.is_empty() {
            return Err(self.tensor_err(&t.name, "external data files are not supported; save the model with its weights inside"));
        }
        if t.dims.iter().any(|&d| d < 0) {
            return Err(self.tensor_err(&t.name, format!("negative dimension in {:?}", t.dims)));
        }
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| self.tensor_err(&t.name, "too many elements"))?;
        let raw = &t.raw_data;
        let check_raw = |size: usize| -> Result<(), OnnxError> {
            if raw.len() != n * size {
                return Err(self.tensor_err(&t.name, format!("raw_data has {} bytes, shape {:?} needs {}", raw.len(), shape, n * size)));
            }
            Ok(())
        };
        let data = match t.data_type {
            dt::FLOAT if !raw.is_empty() => {
                check_raw(4)?;
                TensorData::F32(le_chunks(raw, f32::from_le_bytes))
            }
            dt::FLOAT => TensorData::F32(t.float_data.clone()),
            dt::DOUBLE if !raw.is_empty() => {
                check_raw(8)?;
                TensorData::F32(le_chunks(raw, |b| f64::from_le_bytes(b) as f32))
            }
            dt::DOUBLE => TensorData::F32(t.double_data.iter().map(|&x| x as f32).collect()),
            dt::UINT8 if !raw.is_empty() => {
                check_raw(1)?;
                TensorData::U8(raw.clone())
            }
            dt::UINT8 => TensorData::U8(t.int32_data.iter().map(|&x| x as u8).collect()),
            dt::INT8 if !raw.is_empty() => {
                check_raw(1)?;
                TensorData::I8(raw.iter().map(|&x| x as i8).collect())
            }
            dt::INT8 => TensorData::I8(t.int32_data.iter().map(|&x| x as i8).collect()),
            dt::INT32 if !raw.is_empty() => {
                check_raw(4)?;
                TensorData::I32(le_chunks(raw, i32::from_le_bytes))
            }
            dt::INT32 => TensorData::I32(t.int32_data.clone()),
            dt::INT64 if !raw.is_empty() => {
                check_raw(8)?;
                TensorData::I64(le_chunks(raw, i64::from_le_bytes))
            }
            dt::INT64 => TensorData::I64(t.int64_data.clone()),
            other => return Err(self.tensor_err(&t.name, format!("element type {other} is not supported (float, double, uint8, int8, int32, int64 are)"))),
        };
        Tensor::new(shape, data).map_err(|e| self.tensor_err(&t.name, e.to_string()))
    }

    /// Shape of a constant value: an initializer, or the output of a DequantizeLinear node
    /// reading one (how QDQ files store weights).
    fn constant_shape(&self, value: &str) -> Option<Vec<usize>> {
        if let Some(t) = self.g.initializers.get(value) {
            return Some(t.shape.clone());
        }
        let dq = self.g.nodes.iter().find(|n| n.outputs[0] == value && matches!(n.op, Op::DequantizeLinear { .. }))?;
        self.g.initializers.get(&dq.inputs[0]).map(|t| t.shape.clone())
    }

    fn graph_input(&mut self, vi: &proto::ValueInfoProto, batch: usize) -> Result<(), OnnxError> {
        let err = |reason: String| OnnxError::Input { path: self.path.clone(), name: vi.name.clone(), reason };
        let tt = vi.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).ok_or_else(|| err("is not a tensor".into()))?;
        let dtype = match tt.elem_type {
            dt::FLOAT => DType::F32,
            dt::UINT8 => DType::U8,
            dt::INT8 => DType::I8,
            dt::INT64 => DType::I64,
            dt::INT32 => DType::I32,
            other => return Err(err(format!("element type {other} is not supported"))),
        };
        let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
        let mut shape = Vec::with_capacity(dims.len());
        for (i, d) in dims.iter().enumerate() {
            match &d.value {
                Some(proto::DimValue::DimValue(v)) if *v > 0 => shape.push(*v as usize),
                // Only the leading (batch) dimension may be symbolic: everything else must be static.
                _ if i == 0 => shape.push(batch),
                _ => return Err(err(format!("dimension {i} is not a fixed size; subq needs static spatial sizes"))),
            }
        }
        self.g.inputs.push(vi.name.clone());
        self.g.shapes.insert(vi.name.clone(), shape);
        self.g.dtypes.insert(vi.name.clone(), dtype);
        Ok(())
    }

    fn node(&mut self, n: &NodeProto) -> Result<(), OnnxError> {
        let name = if n.name.is_empty() { format!("{}_{}", n.op_type, n.output.first().cloned().unwrap_or_default()) } else { n.name.clone() };
        if let Some(expanded) = self.qoperator(n, &name)? {
            for e in &expanded {
                self.node(e)?;
            }
            return Ok(());
        }
        if n.op_type == "QuantizeLinear" && n.input.len() >= 2 {
            if let Some(out) = n.output.first() {
                self.quantized.insert(out.clone(), (n.input[1].clone(), n.input.get(2).cloned().unwrap_or_default()));
            }
        }
        let node_err = |reason: String| OnnxError::Node { path: self.path.clone(), node: name.clone(), op_type: n.op_type.clone(), opset: self.opset, reason };
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(OnnxError::UnsupportedOp { path: self.path.clone(), node: name, op_type: n.op_type.clone(), domain: format!("{}:", n.domain), opset: self.opset });
        }
        let attrs = Attrs { list: &n.attribute, err: &node_err };
        let mut inputs = n.input.clone();
        let mut outputs = n.output.clone();
        // Reads a constant input (an initializer) that configures the op; None when omitted.
        let const_input = |i: usize| -> Result<Option<Tensor>, OnnxError> {
            match n.input.get(i).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(v) => self.g.initializers.get(v).cloned().map(Some).ok_or_else(|| node_err(format!("input '{v}' must be a constant (initializer or Constant node)"))),
            }
        };
        let op = match n.op_type.as_str() {
            "Constant" => {
                attrs.allow(&["value", "value_float", "value_floats", "value_int", "value_ints"])?;
                let t = if let Some(a) = attrs.get("value") {
                    let tp = a.t.as_ref().ok_or_else(|| node_err("value attribute holds no tensor".into()))?;
                    self.tensor(tp)?
                } else if let Some(a) = attrs.get("value_float") {
                    Tensor::scalar_f32(a.f)
                } else if let Some(a) = attrs.get("value_floats") {
                    Tensor::f32(vec![a.floats.len()], a.floats.clone()).expect("len")
                } else if let Some(a) = attrs.get("value_int") {
                    Tensor { shape: vec![], data: TensorData::I64(vec![a.i]) }
                } else if let Some(a) = attrs.get("value_ints") {
                    Tensor { shape: vec![a.ints.len()], data: TensorData::I64(a.ints.clone()) }
                } else {
                    return Err(node_err("Constant without a supported value attribute".into()));
                };
                let out = n.output.first().ok_or_else(|| node_err("no output".into()))?;
                self.g.initializers.insert(out.clone(), t);
                return Ok(());
            }
            "Conv" => {
                attrs.allow(&["kernel_shape", "strides", "dilations", "pads", "auto_pad", "group"])?;
                let w_shape = n.input.get(1).and_then(|w| self.constant_shape(w)).ok_or_else(|| node_err("weight must be a constant (an initializer, possibly behind DequantizeLinear)".into()))?;
                if w_shape.len() != 4 {
                    return Err(node_err(format!("only 2-D convolutions are supported (weight shape {w_shape:?})")));
                }
                if w_shape.contains(&0) {
                    return Err(node_err(format!("weight shape {w_shape:?} has a zero dimension")));
                }
                let kernel = attrs.pair("kernel_shape", [w_shape[2], w_shape[3]])?;
                Op::Conv(Conv2d {
                    kernel,
                    strides: attrs.pair("strides", [1, 1])?,
                    dilations: attrs.pair("dilations", [1, 1])?,
                    pads: attrs.pads4("pads")?,
                    auto_pad: attrs.auto_pad()?,
                    group: attrs.int("group", 1)?.max(0) as usize,
                })
            }
            "BatchNormalization" => {
                attrs.allow(&["epsilon", "momentum", "training_mode", "spatial"])?;
                if attrs.int("training_mode", 0)? != 0 {
                    return Err(node_err("training_mode=1 is not supported (inference only)".into()));
                }
                outputs.truncate(1);
                Op::BatchNorm { epsilon: attrs.float("epsilon", 1e-5)? }
            }
            "Relu" => {
                attrs.allow(&[])?;
                Op::Relu
            }
            "Clip" => {
                let (mut min, mut max) = (f32::NEG_INFINITY, f32::INFINITY);
                if self.opset < 11 {
                    attrs.allow(&["min", "max"])?;
                    min = attrs.float("min", min)?;
                    max = attrs.float("max", max)?;
                } else {
                    attrs.allow(&[])?;
                    if let Some(t) = const_input(1)? {
                        min = *t.to_f32_vec().first().ok_or_else(|| node_err("empty min".into()))?;
                    }
                    if let Some(t) = const_input(2)? {
                        max = *t.to_f32_vec().first().ok_or_else(|| node_err("empty max".into()))?;
                    }
                    inputs.truncate(1);
                }
                Op::Clip { min, max }
            }
            "Add" | "Mul" | "Min" | "Sigmoid" | "HardSwish" | "GlobalAveragePool" | "MatMul" | "Identity" => {
                attrs.allow(&[])?;
                match n.op_type.as_str() {
                    "Add" => Op::Add,
                    "Mul" => Op::Mul,
                    "Min" => Op::Min,
                    "Sigmoid" => Op::Sigmoid,
                    "HardSwish" => Op::HardSwish,
                    "GlobalAveragePool" => Op::GlobalAveragePool,
                    "MatMul" => Op::MatMul,
                    _ => Op::Identity,
                }
            }
            "Dropout" => {
                attrs.allow(&["seed", "ratio"])?;
                // Inference: Dropout is the identity; the mask output, if any, must be unused.
                inputs.truncate(1);
                outputs.truncate(1);
                Op::Identity
            }
            "HardSigmoid" => {
                attrs.allow(&["alpha", "beta"])?;
                Op::HardSigmoid { alpha: attrs.float("alpha", 0.2)?, beta: attrs.float("beta", 0.5)? }
            }
            "AveragePool" | "MaxPool" => {
                attrs.allow(&["kernel_shape", "strides", "pads", "auto_pad", "count_include_pad", "ceil_mode", "dilations", "storage_order"])?;
                if attrs.pair("dilations", [1, 1])? != [1, 1] {
                    return Err(node_err("pooling dilations other than 1 are not supported".into()));
                }
                if attrs.int("storage_order", 0)? != 0 {
                    return Err(node_err("storage_order=1 is not supported".into()));
                }
                outputs.truncate(1);
                let kernel = attrs.get("kernel_shape").map(|a| a.ints.clone()).ok_or_else(|| node_err("kernel_shape is required".into()))?;
                if kernel.len() != 2 || kernel.iter().any(|&k| k <= 0) {
                    return Err(node_err(format!("only 2-D pooling is supported (kernel_shape {kernel:?})")));
                }
                let p = Pool2d {
                    kernel: [kernel[0] as usize, kernel[1] as usize],
                    strides: attrs.pair("strides", [1, 1])?,
                    pads: attrs.pads4("pads")?,
                    auto_pad: attrs.auto_pad()?,
                    count_include_pad: attrs.int("count_include_pad", 0)? != 0,
                    ceil_mode: attrs.int("ceil_mode", 0)? != 0,
                };
                if n.op_type == "AveragePool" { Op::AveragePool(p) } else { Op::MaxPool(p) }
            }
            "Pad" => {
                let mode = attrs.string("mode", "constant")?;
                if mode != "constant" {
                    return Err(node_err(format!("Pad mode '{mode}' is not supported (only constant)")));
                }
                let (pads, value) = if self.opset < 11 {
                    attrs.allow(&["mode", "pads", "value"])?;
                    (attrs.get("pads").map(|a| a.ints.clone()).unwrap_or_default(), attrs.float("value", 0.0)?)
                } else {
                    attrs.allow(&["mode"])?;
                    let pads = const_input(1)?.ok_or_else(|| node_err("pads input is required".into()))?.to_i64_vec();
                    let value = const_input(2)?.and_then(|t| t.to_f32_vec().first().copied()).unwrap_or(0.0);
                    let pads = match const_input(3)? {
                        None => pads,
                        Some(axes) => {
                            let rank = self.g.shapes.get(&n.input[0]).map(|s| s.len()).ok_or_else(|| node_err("Pad with axes needs a known input rank".into()))?;
                            let mut full = vec![0i64; 2 * rank];
                            let axes = axes.to_i64_vec();
                            for (j, &a) in axes.iter().enumerate() {
                                let a = if a < 0 { a + rank as i64 } else { a } as usize;
                                if a >= rank || pads.len() != 2 * axes.len() {
                                    return Err(node_err("pads and axes do not match".into()));
                                }
                                full[a] = pads[j];
                                full[a + rank] = pads[j + axes.len()];
                            }
                            full
                        }
                    };
                    inputs.truncate(1);
                    (pads, value)
                };
                if pads.iter().any(|&p| p < 0) {
                    return Err(node_err("negative pads (cropping) are not supported".into()));
                }
                Op::Pad { pads, value }
            }
            "Flatten" => {
                attrs.allow(&["axis"])?;
                Op::Flatten { axis: attrs.int("axis", 1)? }
            }
            "Reshape" => {
                attrs.allow(&["allowzero"])?;
                if attrs.int("allowzero", 0)? != 0 {
                    return Err(node_err("allowzero=1 is not supported".into()));
                }
                let shape = const_input(1)?.ok_or_else(|| node_err("shape input is required".into()))?.to_i64_vec();
                inputs.truncate(1);
                Op::Reshape { shape }
            }
            "Gemm" => {
                attrs.allow(&["alpha", "beta", "transA", "transB"])?;
                Op::Gemm { alpha: attrs.float("alpha", 1.0)?, beta: attrs.float("beta", 1.0)?, trans_a: attrs.int("transA", 0)? != 0, trans_b: attrs.int("transB", 0)? != 0 }
            }
            "Concat" => {
                attrs.allow(&["axis"])?;
                Op::Concat { axis: attrs.get("axis").map(|a| a.i).ok_or_else(|| node_err("axis is required".into()))? }
            }
            "Softmax" => {
                attrs.allow(&["axis"])?;
                Op::Softmax { axis: attrs.int("axis", if self.opset < 13 { 1 } else { -1 })? }
            }
            "QuantizeLinear" | "DequantizeLinear" => {
                attrs.allow(&["axis"])?;
                let axis = attrs.int("axis", 1)?;
                if n.op_type == "QuantizeLinear" { Op::QuantizeLinear { axis } } else { Op::DequantizeLinear { axis } }
            }
            _ => return Err(OnnxError::UnsupportedOp { path: self.path.clone(), node: name, op_type: n.op_type.clone(), domain: String::new(), opset: self.opset }),
        };
        let node = Node { name: name.clone(), op, inputs, outputs };
        let (lo, hi) = node.op.arity();
        if node.inputs.len() < lo || node.inputs.len() > hi || node.outputs.len() != 1 {
            return Err(node_err(format!("expects {lo}..{hi} inputs and one output, has {} and {}", node.inputs.len(), node.outputs.len())));
        }
        self.g.nodes.push(node);
        Ok(())
    }
}

/// A synthetic node of the QOperator expansion.
fn proto_node(name: String, op_type: &str, input: Vec<String>, output: String, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto { input, output: vec![output], name, op_type: op_type.into(), domain: String::new(), attribute, ..Default::default() }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INT, i, ..Default::default() }
}

impl Importer {
    /// Operator-format quantized ops (QLinearConv, QLinearMatMul, and ONNX Runtime's
    /// com.microsoft QLinearAdd, QLinearGlobalAveragePool and QGemm) as the QDQ nodes that mean
    /// the same: DequantizeLinear on each quantized input, the float op, QuantizeLinear on the
    /// output grid. Their int32 bias is at scale x_scale·w_scale, as in QDQ files. A shape op or
    /// max pool on quantized data (Flatten, Reshape, Identity, MaxPool) runs between a
    /// DequantizeLinear and a QuantizeLinear on its input's grid (exact: these ops only move or
    /// compare values). The int8 engine then lowers the result like any QDQ file. `None`: not
    /// such an op.
    fn qoperator(&mut self, n: &NodeProto, name: &str) -> Result<Option<Vec<NodeProto>>, OnnxError> {
        let ms = n.domain == "com.microsoft";
        let onnx = n.domain.is_empty() || n.domain == "ai.onnx";
        let kind = match n.op_type.as_str() {
            "QLinearConv" | "QLinearMatMul" if onnx => n.op_type.as_str(),
            "QLinearAdd" | "QLinearGlobalAveragePool" | "QGemm" if ms => n.op_type.as_str(),
            "Flatten" | "Reshape" | "Identity" | "MaxPool" if onnx && n.input.first().is_some_and(|i| self.quantized.contains_key(i)) => "shape",
            _ => return Ok(None),
        };
        let (path, opset) = (self.path.clone(), self.opset);
        let err = |reason: String| OnnxError::Node { path: path.clone(), node: name.to_string(), op_type: n.op_type.clone(), opset, reason };
        let out = n.output.first().filter(|o| !o.is_empty()).ok_or_else(|| err("no output".into()))?.clone();
        let input = |i: usize| n.input.get(i).cloned().unwrap_or_default();
        let mut nodes = Vec::new();
        // DequantizeLinear of input `x` on (`scale`, `zp`) → its float name.
        let dq = |nodes: &mut Vec<NodeProto>, x: String, scale: String, zp: String, axis: i64, tag: &str| -> String {
            let f = format!("{out}_{tag}_dequantized");
            let mut ins = vec![x, scale];
            if !zp.is_empty() {
                ins.push(zp);
            }
            nodes.push(proto_node(format!("{name}_{tag}_DequantizeLinear"), "DequantizeLinear", ins, f.clone(), vec![int_attr("axis", axis)]));
            f
        };
        // The output grid (scale, zero-point names; an empty zero-point is left out); None: the
        // op's output stays float.
        let grid_at = |s: usize, z: usize| Some((input(s), input(z)));
        let (op_type, float_inputs, attribute, grid) = match kind {
            "QLinearConv" => {
                let x = dq(&mut nodes, input(0), input(1), input(2), 1, "x");
                let w = dq(&mut nodes, input(3), input(4), input(5), 0, "w");
                let mut ins = vec![x, w];
                if !input(8).is_empty() {
                    ins.push(self.bias_dq(&mut nodes, &input(8), &input(1), &input(4), &out, name).map_err(err)?);
                }
                ("Conv", ins, n.attribute.clone(), grid_at(6, 7))
            }
            "QLinearMatMul" => {
                let a = dq(&mut nodes, input(0), input(1), input(2), 1, "a");
                // A per-column scale of the [K, N] weight sits on axis 1.
                let b = dq(&mut nodes, input(3), input(4), input(5), 1, "b");
                ("MatMul", vec![a, b], Vec::new(), grid_at(6, 7))
            }
            "QLinearAdd" => {
                let a = dq(&mut nodes, input(0), input(1), input(2), 1, "a");
                let b = dq(&mut nodes, input(3), input(4), input(5), 1, "b");
                ("Add", vec![a, b], Vec::new(), grid_at(6, 7))
            }
            "QLinearGlobalAveragePool" => {
                if n.attribute.iter().any(|a| a.name == "channels_last" && a.i != 0) {
                    return Err(err("channels_last=1 is not supported".into()));
                }
                let x = dq(&mut nodes, input(0), input(1), input(2), 1, "x");
                ("GlobalAveragePool", vec![x], Vec::new(), grid_at(3, 4))
            }
            "QGemm" => {
                if n.attribute.iter().any(|a| a.name == "alpha" && a.f != 1.0) {
                    return Err(err("alpha other than 1 is not supported".into()));
                }
                let trans_b = n.attribute.iter().find(|a| a.name == "transB").map_or(0, |a| a.i);
                let a = dq(&mut nodes, input(0), input(1), input(2), 1, "a");
                let b = dq(&mut nodes, input(3), input(4), input(5), if trans_b != 0 { 0 } else { 1 }, "b");
                let mut ins = vec![a, b];
                if !input(6).is_empty() {
                    ins.push(self.bias_dq(&mut nodes, &input(6), &input(1), &input(4), &out, name).map_err(err)?);
                }
                let attribute = n.attribute.iter().filter(|a| a.name == "transA" || a.name == "transB").cloned().collect();
                ("Gemm", ins, attribute, if input(7).is_empty() { None } else { grid_at(7, 8) })
            }
            _ => {
                // A shape op or max pool: its input's own grid on both sides.
                let (scale, zp) = self.quantized[&input(0)].clone();
                let mut ins = vec![dq(&mut nodes, input(0), scale.clone(), zp.clone(), 1, "x")];
                ins.extend(n.input.iter().skip(1).cloned());
                (n.op_type.as_str(), ins, n.attribute.clone(), Some((scale, zp)))
            }
        };
        match grid {
            Some((scale, zp)) => {
                let float_out = format!("{out}_float");
                nodes.push(proto_node(name.to_string(), op_type, float_inputs, float_out.clone(), attribute));
                let mut ins = vec![float_out, scale];
                if !zp.is_empty() {
                    ins.push(zp);
                }
                nodes.push(proto_node(format!("{name}_QuantizeLinear"), "QuantizeLinear", ins, out, Vec::new()));
            }
            None => nodes.push(proto_node(name.to_string(), op_type, float_inputs, out, attribute)),
        }
        Ok(Some(nodes))
    }

    /// DequantizeLinear of an int32 bias at scale `x_scale · w_scale` (per output channel when
    /// `w_scale` is), zero-point 0; both scales must be constants.
    fn bias_dq(&mut self, nodes: &mut Vec<NodeProto>, bias: &str, x_scale: &str, w_scale: &str, out: &str, name: &str) -> Result<String, String> {
        let constant = |v: &str| self.g.initializers.get(v).map(|t| t.to_f32_vec()).ok_or_else(|| format!("scale '{v}' must be a constant to dequantize the bias"));
        let (xs, ws) = (constant(x_scale)?, constant(w_scale)?);
        let &[xs] = xs.as_slice() else { return Err(format!("input scale '{x_scale}' must be one value")) };
        let scales: Vec<f32> = ws.iter().map(|w| xs * w).collect();
        let shape = if self.g.initializers[w_scale].shape.is_empty() { vec![] } else { vec![scales.len()] };
        let (s, z) = (format!("{out}_bias_scale"), format!("{out}_bias_zero_point"));
        self.g.initializers.insert(s.clone(), Tensor::new(shape.clone(), TensorData::F32(scales.clone())).map_err(|e| e.to_string())?);
        self.g.initializers.insert(z.clone(), Tensor::new(shape, TensorData::I32(vec![0; scales.len()])).map_err(|e| e.to_string())?);
        let f = format!("{out}_bias_dequantized");
        nodes.push(proto_node(format!("{name}_bias_DequantizeLinear"), "DequantizeLinear", vec![bias.to_string(), s, z], f.clone(), vec![int_attr("axis", 0)]));
        Ok(f)
    }
}

struct Attrs<'a, F: Fn(String) -> OnnxError> {
    list: &'a [AttributeProto],
    err: &'a F,
}

impl<F: Fn(String) -> OnnxError> Attrs<'_, F> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.list.iter().find(|a| a.name == name)
    }

    /// Any attribute outside `known` is an error: silently ignoring one could change the maths.
    fn allow(&self, known: &[&str]) -> Result<(), OnnxError> {
        match self.list.iter().find(|a| !known.contains(&a.name.as_str())) {
            Some(a) => Err((self.err)(format!("unsupported attribute '{}'", a.name))),
            None => Ok(()),
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64, OnnxError> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.r#type == at::INT || a.r#type == 0 => Ok(a.i),
            Some(_) => Err((self.err)(format!("attribute '{name}' must be an int"))),
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32, OnnxError> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.r#type == at::FLOAT || a.r#type == 0 => Ok(a.f),
            Some(_) => Err((self.err)(format!("attribute '{name}' must be a float"))),
        }
    }

    fn string(&self, name: &str, default: &str) -> Result<String, OnnxError> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(a) if a.r#type == at::STRING || a.r#type == 0 => Ok(String::from_utf8_lossy(&a.s).into_owned()),
            Some(_) => Err((self.err)(format!("attribute '{name}' must be a string"))),
        }
    }

    fn pair(&self, name: &str, default: [usize; 2]) -> Result<[usize; 2], OnnxError> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.ints.len() == 2 && a.ints.iter().all(|&v| v > 0) => Ok([a.ints[0] as usize, a.ints[1] as usize]),
            Some(a) => Err((self.err)(format!("attribute '{name}' = {:?}: expected two positive values (2-D)", a.ints))),
        }
    }

    fn pads4(&self, name: &str) -> Result<[usize; 4], OnnxError> {
        match self.get(name) {
            None => Ok([0; 4]),
            Some(a) if a.ints.len() == 4 && a.ints.iter().all(|&v| v >= 0) => Ok([a.ints[0] as usize, a.ints[1] as usize, a.ints[2] as usize, a.ints[3] as usize]),
            Some(a) => Err((self.err)(format!("attribute '{name}' = {:?}: expected four non-negative values", a.ints))),
        }
    }

    fn auto_pad(&self) -> Result<AutoPad, OnnxError> {
        match self.string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => Ok(AutoPad::NotSet),
            "SAME_UPPER" => Ok(AutoPad::SameUpper),
            "SAME_LOWER" => Ok(AutoPad::SameLower),
            "VALID" => Ok(AutoPad::Valid),
            other => Err((self.err)(format!("unknown auto_pad '{other}'"))),
        }
    }
}
