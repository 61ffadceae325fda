//! The integer engine: lowers a QDQ graph into integer steps and runs them.
//!
//! Lowering reads the graph's written semantics. A float op whose activation inputs come from
//! DequantizeLinear, whose weights are constant DequantizeLinear, and whose only reader is a
//! QuantizeLinear becomes one integer step producing that QuantizeLinear's output directly.
//! Conv+Conv(+…)→Add→Quantize with a shared input (a subtensor split) becomes one multi-part
//! conv step. Everything else runs in FP32 between a Dequantize and a Quantize step, and is
//! listed by [`Int8Engine::float_ops`].
//!
//! Activations are held as uint8; int8-typed activations are shifted by +128 (with their
//! zero-point) on entry, which leaves every real value unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use subq_ir::{Graph, Node, Op};
use subq_kernels::q8::{self, ConvPart, FloatEpilogue, Requant, Scratch};
use subq_kernels::ConvGeometry;
use subq_tensor::{DType, QParams, Tensor, TensorData};

use crate::fp32::eval_node;
use crate::{conv_geometry, conv_label, RuntimeError};

/// Per-tensor activation grid in the engine's uint8 domain.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Grid {
    scale: f32,
    zp: i32,
}

enum Arg {
    Slot(usize),
    Const(Tensor),
    None,
}

enum Step {
    Quantize { input: usize, output: usize, grid: Grid },
    Dequantize { input: usize, output: usize, grid: Grid },
    /// `cmax`: per-channel upper clamp fused into the conv (an equalized ReLU6 bound). `epi`:
    /// the same output stage in f32 when it is proven exact (single-part convs; set last).
    /// `file_parts`: the weight parts in the file (more than `parts` where they were fused).
    Conv { input: usize, output: usize, zp_in: i32, parts: Vec<ConvPart>, file_parts: usize, bias_fixed: Vec<i64>, shift: u32, out: Grid, qmin: i32, qmax: i32, cmax: Option<Vec<u8>>, epi: Option<FloatEpilogue>, geom: ConvGeometry, out_shape_per_image: Vec<usize> },
    /// A conv/Gemm whose output stays float (a graph output such as the logits): exact i32
    /// accumulators, then `y = scale[c]·(acc + bias_q[c])` with `scale = s_in·s_w[c]`, i.e. the
    /// written semantics (dequantized inputs and int32 bias) without rounding to a grid.
    ConvDequant { input: usize, output: usize, zp_in: i32, part: ConvPart, scale: Vec<f64>, bias: Vec<f64>, geom: ConvGeometry, out_shape_per_image: Vec<usize> },
    /// `qmin`/`qmax`: a Relu/Clip after the add, fused (else the whole grid).
    Add { a: usize, b: usize, output: usize, za: i32, zb: i32, ma: i64, mb: i64, shift: u32, out: Grid, qmin: i32, qmax: i32 },
    GlobalAvgPool { input: usize, output: usize, zp_in: i32, requant: Requant, out: Grid },
    /// Relu/Clip/Flatten/Reshape/Identity on quantized data: regrid (or copy) and clamp.
    Requantize { input: usize, output: usize, zp_in: i32, requant: Requant, out: Grid, qmin: i32, qmax: i32, shape: Option<Vec<usize>> },
    Float { node: Node, args: Vec<Arg>, output: usize },
    /// Per-channel upper clamp in place (an equalized ReLU6 bound after a conv): exact, since
    /// quantization is monotone, Q(min(x, b_c)) = min(Q(x), Q(b_c)).
    ClampChannels { slot: usize, qmax: Vec<u8> },
}

enum Value {
    F(Tensor),
    Q { shape: Vec<usize>, data: Vec<u8> },
}

pub struct Int8Engine {
    steps: Vec<Step>,
    slots: usize,
    input_slot: usize,
    output_slots: Vec<usize>,
    float_ops: Vec<String>,
    int_steps: usize,
    /// Per step: slots read for the last time by it (their buffers are recycled after it).
    release: Vec<Vec<usize>>,
    /// Idle per-run states (values, recycled buffers, kernel scratch), reused across runs and
    /// threads so that a steady-state run allocates almost nothing.
    pool: Mutex<Vec<RunState>>,
}

/// What one run needs besides the engine: reused from run to run.
#[derive(Default)]
struct RunState {
    vals: Vec<Option<Value>>,
    /// Recycled uint8 buffers, each at its high-water length (so that a reuse writes no zeros).
    free: Vec<Vec<u8>>,
    /// High-water length of every buffer handed out by [`RunState::buffer`], by address: the
    /// bytes below it were all written by an earlier use of that allocation.
    written: HashMap<usize, usize>,
    scratch: Scratch,
    fscratch: Vec<f32>,
}

impl RunState {
    /// A buffer of `len` bytes (contents unspecified: every kernel writes all of its output).
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        // Best fit among buffers already large enough, else the largest (it will grow).
        let pick = self.free.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i).or_else(|| self.free.iter().enumerate().max_by_key(|(_, b)| b.capacity()).map(|(i, _)| i));
        let mut b = match pick {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        let before = b.as_ptr() as usize;
        if b.len() >= len {
            b.truncate(len);
        } else {
            b.resize(len, 0);
        }
        let key = b.as_ptr() as usize;
        if key != before || !self.written.contains_key(&key) {
            // A new allocation (possibly at an address a dropped buffer had): written up to `len`.
            self.written.insert(key, len);
        }
        b
    }

    fn recycle(&mut self, slot: usize) {
        if let Some(Value::Q { mut data, .. }) = self.vals[slot].take() {
            let key = data.as_ptr() as usize;
            let hw = self.written.get(&key).copied().unwrap_or(0).max(data.len()).min(data.capacity());
            // SAFETY: u8 has no drop and every byte below `hw` of this allocation was written
            // by an earlier use (shortening a Vec<u8> leaves its bytes as they were).
            unsafe { data.set_len(hw) };
            self.written.insert(key, hw);
            self.free.push(data);
        }
    }
}

impl Step {
    /// `(kind, detail)` of this step for profiles.
    fn label(&self) -> (String, String) {
        match self {
            Step::Conv { parts, file_parts, geom: g, .. } => {
                let (kind, detail) = conv_label(g);
                let kind = match (parts.len(), *file_parts) {
                    (1, 1) => kind,
                    (1, f) => format!("{kind} ({f} parts, fused)"),
                    (p, _) => format!("{kind} ({p} parts)"),
                };
                (kind, detail)
            }
            Step::ConvDequant { geom: g, .. } => ("conv/gemm, float output".into(), conv_label(g).1),
            Step::Quantize { .. } => ("quantize".into(), String::new()),
            Step::Dequantize { .. } => ("dequantize".into(), String::new()),
            Step::Add { .. } => ("add".into(), String::new()),
            Step::GlobalAvgPool { .. } => ("global avg pool".into(), String::new()),
            Step::Requantize { .. } => ("requantize/copy".into(), String::new()),
            Step::Float { node, .. } => (format!("float {}", node.op.name()), node.name.clone()),
            Step::ClampChannels { .. } => ("clamp channels".into(), String::new()),
        }
    }

    /// Value slots this step writes.
    fn outputs(&self) -> Vec<usize> {
        match self {
            Step::Quantize { output, .. } | Step::Dequantize { output, .. } | Step::Conv { output, .. } | Step::ConvDequant { output, .. } | Step::GlobalAvgPool { output, .. } | Step::Requantize { output, .. } | Step::Add { output, .. } | Step::Float { output, .. } => vec![*output],
            Step::ClampChannels { slot, .. } => vec![*slot],
        }
    }

    /// Value slots this step reads.
    fn inputs(&self) -> Vec<usize> {
        match self {
            Step::Quantize { input, .. } | Step::Dequantize { input, .. } | Step::Conv { input, .. } | Step::ConvDequant { input, .. } | Step::GlobalAvgPool { input, .. } | Step::Requantize { input, .. } => vec![*input],
            Step::Add { a, b, .. } => vec![*a, *b],
            Step::ClampChannels { slot, .. } => vec![*slot],
            Step::Float { args, .. } => args.iter().filter_map(|a| if let Arg::Slot(s) = a { Some(*s) } else { None }).collect(),
        }
    }
}

fn err(n: &Node, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Node { node: n.name.clone(), op: n.op.name().into(), reason: reason.into() }
}

/// (scale, zero-point in the u8 domain, was int8) of a per-tensor Q/DQ node.
fn node_grid(g: &Graph, n: &Node) -> Option<(Grid, bool)> {
    let scale = g.initializer(&n.inputs[1])?;
    if scale.len() != 1 {
        return None;
    }
    let (zp, int8) = match n.inputs.get(2).filter(|s| !s.is_empty()).and_then(|z| g.initializer(z)) {
        Some(z) if z.dtype() == DType::I8 => (z.to_i32_vec()[0] + 128, true),
        Some(z) if z.dtype() == DType::U8 => (z.to_i32_vec()[0], false),
        Some(_) => return None,
        None => (0, false),
    };
    Some((Grid { scale: scale.to_f32_vec()[0], zp }, int8))
}

/// A constant DequantizeLinear: integer values and their parameters.
struct ConstDq {
    values: Tensor,
    params: QParams,
}

impl ConstDq {
    /// `w − zw` as i16 (weights of `out_c` output channels, OIHW order): what the kernels multiply.
    fn minus_zero_point(&self, out_c: usize) -> Vec<i16> {
        let per = self.values.len() / out_c;
        self.values.to_i32_vec().iter().enumerate().map(|(i, &v)| (v - self.params.zero_point_at(i / per)) as i16).collect()
    }
}

fn const_dq(g: &Graph, n: &Node) -> Option<ConstDq> {
    let values = g.initializer(&n.inputs[0])?.clone();
    let scale = g.initializer(&n.inputs[1])?.to_f32_vec();
    let zero_point = n.inputs.get(2).filter(|s| !s.is_empty()).and_then(|z| g.initializer(z)).map(|z| z.to_i32_vec()).unwrap_or_else(|| vec![0; scale.len()]);
    let Op::DequantizeLinear { axis } = n.op else { return None };
    let rank = values.shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis } as usize;
    let range = if values.dtype() == DType::U8 { subq_tensor::QuantRange::U8 } else { subq_tensor::QuantRange::I8 };
    Some(ConstDq { values, params: QParams { axis: (scale.len() > 1).then_some(axis), scale, zero_point, range } })
}

fn dequantize_const(c: &ConstDq) -> Tensor {
    let v = c.values.to_i32_vec();
    let out = v.iter().enumerate().map(|(i, &q)| c.params.dequantize_value(q, c.params.channel_of(&c.values.shape, i))).collect();
    Tensor::f32(c.values.shape.clone(), out).expect("same shape")
}

struct Lowering<'g> {
    g: &'g Graph,
    producers: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    const_dqs: HashMap<String, ConstDq>,
    slot_of: HashMap<String, usize>,
}

impl<'g> Lowering<'g> {
    fn slot(&mut self, name: &str) -> usize {
        let n = self.slot_of.len();
        *self.slot_of.entry(name.to_string()).or_insert(n)
    }

    /// Values of a constant operand: a float initializer, or a DequantizeLinear of one (subq
    /// stores equalized ReLU6 bounds as uint8 on the output grid).
    fn constant(&self, name: &str) -> Option<Vec<f32>> {
        match self.g.initializer(name) {
            Some(t) => Some(t.to_f32_vec()),
            None => self.const_dqs.get(name).map(|c| dequantize_const(c).to_f32_vec()),
        }
    }

    fn producer(&self, value: &str) -> Option<&'g Node> {
        self.producers.get(value).map(|&i| &self.g.nodes[i])
    }

    fn sole_reader(&self, value: &str, reader: &Node) -> bool {
        !self.g.outputs.iter().any(|o| o == value) && self.consumers.get(value).is_some_and(|c| c.len() == 1 && self.g.nodes[c[0]].name == reader.name)
    }

    /// If `value` is a DequantizeLinear of a quantized activation: (quantized value, its grid).
    fn activation_dq(&self, value: &str) -> Option<(&'g str, Grid)> {
        let n = self.producer(value)?;
        if !matches!(n.op, Op::DequantizeLinear { .. }) || self.g.initializers.contains_key(&n.inputs[0]) {
            return None;
        }
        let (grid, _) = node_grid(self.g, n)?;
        Some((n.inputs[0].as_str(), grid))
    }

    /// Conv (or Gemm treated as a 1×1 conv) lowered to an integer step, if its inputs allow.
    /// Returns (activation source, input grid, weight parts as (int weights OIHW, params),
    /// real bias, geometry, per-image output shape).
    #[allow(clippy::type_complexity)]
    fn conv_like(&self, n: &'g Node) -> Option<(&'g str, Grid, ConstDq, Option<Vec<f64>>, ConvGeometry, Vec<usize>)> {
        let (src, grid) = self.activation_dq(&n.inputs[0])?;
        let w_node = self.producer(&n.inputs[1])?;
        let mut w = const_dq(self.g, w_node)?;
        if !w.params.is_per_tensor() && w.params.axis != Some(0) {
            // Gemm without transB has output channels on axis 1: transpose below handles it.
            if !matches!(n.op, Op::Gemm { trans_b: false, .. }) || w.params.axis != Some(1) {
                return None;
            }
        }
        let in_shape = self.g.shape(&n.inputs[0])?;
        let (geom, out_shape) = match &n.op {
            Op::Conv(c) => {
                let out = self.g.shape(&n.outputs[0])?;
                (conv_geometry(c, in_shape, out), out[1..].to_vec())
            }
            Op::Gemm { alpha, beta, trans_a: false, trans_b } if *alpha == 1.0 && *beta == 1.0 && in_shape.len() == 2 => {
                if !trans_b {
                    // Store as [N, K] so every output channel's weights are contiguous.
                    let (k, nn) = (w.values.shape[0], w.values.shape[1]);
                    let v = w.values.to_i32_vec();
                    let t: Vec<i32> = (0..nn * k).map(|i| v[(i % k) * nn + i / k]).collect();
                    let data = match w.values.dtype() {
                        DType::U8 => TensorData::U8(t.iter().map(|&x| x as u8).collect()),
                        _ => TensorData::I8(t.iter().map(|&x| x as i8).collect()),
                    };
                    w.values = Tensor { shape: vec![nn, k], data };
                    if w.params.axis.is_some() {
                        w.params.axis = Some(0);
                    }
                }
                let k = in_shape[1];
                let nn = w.values.shape[0];
                (ConvGeometry { in_c: k, in_h: 1, in_w: 1, out_c: nn, out_h: 1, out_w: 1, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, vec![nn])
            }
            _ => return None,
        };
        let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(b) => match self.g.initializer(b) {
                Some(t) => Some(t.to_f32_vec().iter().map(|&x| x as f64).collect::<Vec<f64>>()),
                None => {
                    let c = const_dq(self.g, self.producer(b)?)?;
                    let q = c.values.to_i32_vec();
                    Some(q.iter().enumerate().map(|(i, &v)| (v - c.params.zero_point_at(i)) as f64 * c.params.scale_at(i) as f64).collect())
                }
            },
        };
        if bias.as_ref().is_some_and(|b| b.len() != geom.out_c) {
            return None;
        }
        Some((src, grid, w, bias, geom, out_shape))
    }

    /// Conv nodes summed by a tree of Adds into `value` (each read only by that tree).
    fn conv_parts(&self, value: &str, reader: &Node) -> Option<Vec<&'g Node>> {
        let p = self.producer(value)?;
        if !self.sole_reader(value, reader) {
            return None;
        }
        match p.op {
            Op::Conv(_) => Some(vec![p]),
            Op::Add => {
                let mut a = self.conv_parts(&p.inputs[0], p)?;
                a.extend(self.conv_parts(&p.inputs[1], p)?);
                Some(a)
            }
            _ => None,
        }
    }

    /// An Add of two quantized activations of one shape, requantized onto `out` (sources, step).
    fn quantized_add(&self, add: &'g Node, out: Grid) -> Option<(Vec<&'g str>, Step)> {
        let ((a, ga), (b, gb)) = (self.activation_dq(&add.inputs[0])?, self.activation_dq(&add.inputs[1])?);
        if self.g.shape(&add.inputs[0]) != self.g.shape(&add.inputs[1]) {
            return None;
        }
        let (ms, shift) = Requant::common(&[ga.scale as f64 / out.scale as f64, gb.scale as f64 / out.scale as f64]);
        Some((vec![a, b], Step::Add { a: 0, b: 0, output: 0, za: ga.zp, zb: gb.zp, ma: ms[0].multiplier, mb: ms[1].multiplier, shift, out, qmin: 0, qmax: 255 }))
    }

    /// The nodes one conv step replaces when `after` (a bound or an activation) follows it:
    /// the conv parts, `after`, and the Adds that sum a split's parts.
    fn covered_after_conv(&self, parts: &[&'g Node], after: &'g Node) -> Vec<&'g Node> {
        let mut covered: Vec<&Node> = parts.to_vec();
        covered.push(after);
        let mut frontier: Vec<&Node> = self.producer(&after.inputs[0]).into_iter().collect();
        while let Some(a) = frontier.pop() {
            if matches!(a.op, Op::Add) {
                covered.push(a);
                frontier.extend(a.inputs.iter().filter_map(|i| self.producer(i)));
            }
        }
        covered
    }

    fn build_conv(&self, parts: &[&'g Node], out: Grid) -> Option<(&'g str, Step)> {
        let mut lowered = Vec::new();
        for n in parts {
            lowered.push(self.conv_like(n)?);
        }
        let (src, in_grid, _, _, geom, out_shape) = &lowered[0];
        if lowered.iter().any(|l| l.0 != *src || l.1 != *in_grid || l.4 != *geom) {
            return None;
        }
        // Real multipliers s_in·s_w[c]/s_out of every part and channel, on one common shift.
        let mut reals: Vec<Vec<f64>> = lowered
            .iter()
            .map(|l| (0..geom.out_c).map(|c| in_grid.scale as f64 * l.2.params.scale_at(c) as f64 / out.scale as f64).collect())
            .collect();
        let mut weights: Vec<Vec<i16>> = lowered.iter().map(|l| l.2.minus_zero_point(geom.out_c)).collect();
        if let Some(fused) = fuse_power_of_two_parts(&reals, &weights) {
            // One conv instead of two (see `fuse_power_of_two_parts`): the second part's
            // multipliers, the fused weights.
            reals = vec![reals.pop().expect("two parts")];
            weights = vec![fused];
        }
        let flat: Vec<f64> = reals.iter().flatten().copied().collect();
        let (_, shift) = Requant::common(&flat);
        let scale = (shift as f64).exp2();
        let mut bias_fixed = vec![0i64; geom.out_c];
        for l in &lowered {
            if let Some(b) = &l.3 {
                for c in 0..geom.out_c {
                    bias_fixed[c] += (b[c] / out.scale as f64 * scale).round() as i64;
                }
            }
        }
        let mut conv_parts = Vec::new();
        for (weight, r) in weights.into_iter().zip(&reals) {
            let requant: Vec<Requant> = r.iter().map(|&m| Requant { multiplier: (m * scale).round() as i64, shift }).collect();
            conv_parts.push(ConvPart::new(weight, requant, geom));
        }
        let step = Step::Conv { input: usize::MAX, output: usize::MAX, zp_in: in_grid.zp, parts: conv_parts, file_parts: lowered.len(), bias_fixed, shift, out, qmin: 0, qmax: 255, cmax: None, epi: None, geom: *geom, out_shape_per_image: out_shape.clone() };
        Some((src, step))
    }
}

/// The weights `2^k·(w1 − z1) + (w2 − z2)` of a two-part conv whose first part's multipliers
/// are exactly `2^k` times the second's (1 ≤ k ≤ 7, every channel), when they fit i16 — else
/// `None`. Then `m1·acc1 + m2·acc2 = m2·Σ (2^k·d1 + d2)·x` exactly in real arithmetic, and one
/// conv with these weights and the second part's multipliers computes the split layer at about
/// the cost of an unsplit one. The quantizer gives a depthwise residual part the first part's
/// scale over 128 (`subq_quant::split`) so that this holds; the file keeps two per-tensor parts
/// for any other runtime. Multiplying by a power of two is exact in floating point, so the test
/// `r1 == 2^k·r2` on the computed reals is exact too.
fn fuse_power_of_two_parts(reals: &[Vec<f64>], weights: &[Vec<i16>]) -> Option<Vec<i16>> {
    let ([r1, r2], [w1, w2]) = (reals, weights) else { return None };
    let k = (1..=7).find(|&k| r1.iter().zip(r2).all(|(&a, &b)| b > 0.0 && a == b * (1u32 << k) as f64))?;
    if w1.len() != w2.len() {
        return None;
    }
    w1.iter().zip(w2).map(|(&a, &b)| i16::try_from(((a as i32) << k) + b as i32).ok()).collect()
}

/// Sets every single-part conv's float output stage ([`FloatEpilogue`]; `None` where no channel
/// has one proven exact). Each is proven on the accumulators its conv can reach: from its
/// weights and the bytes its input can hold, i.e. the clamps of the conv or add that wrote them
/// (one range, or one per channel; a slot any other step writes, even a ClampChannels in place,
/// may hold any byte). Only the change points inside that range must fall right: MobileNetV2's
/// subtensor stem gets a float stage for all 32 channels instead of 29.
fn float_output_stages(steps: &mut [Step]) {
    let mut byte_ranges: HashMap<usize, Vec<(u8, u8)>> = HashMap::new();
    for st in steps {
        match st {
            Step::Conv { input, output, zp_in, parts, bias_fixed, shift, out, qmin, qmax, cmax, epi, geom, .. } => {
                if parts.len() == 1 {
                    let mult: Vec<i64> = (0..geom.out_c).map(|c| parts[0].multiplier(c)).collect();
                    let in_range = byte_ranges.get(input).filter(|r| r.len() == 1 || r.len() == geom.in_c).cloned().unwrap_or_else(|| vec![(0, 255)]);
                    let reach = q8::accumulator_bounds(&parts[0].weight, geom, *zp_in, &in_range);
                    *epi = FloatEpilogue::for_accumulators(&mult, bias_fixed, *shift, out.zp, *qmin, *qmax, cmax.as_deref(), Some(&reach));
                }
                // The reference's `min(clamp(v, qmin, qmax), cap)`: a cap below qmin wins.
                let range = match cmax {
                    Some(cm) => cm.iter().map(|&m| ((*qmin).min(m as i32) as u8, (*qmax).min(m as i32) as u8)).collect(),
                    None => vec![(*qmin as u8, *qmax as u8)],
                };
                byte_ranges.insert(*output, range);
            }
            Step::Add { output, qmin, qmax, .. } => {
                byte_ranges.insert(*output, vec![(*qmin as u8, *qmax as u8)]);
            }
            other => {
                for slot in other.outputs() {
                    byte_ranges.remove(&slot);
                }
            }
        }
    }
}

/// Reorders the output channels of convs A → depthwise B → conv C so that the channels with a
/// float output stage (see [`FloatEpilogue`]) come first, where that makes whole blocks of them:
/// - A's rows, when A runs on the byte GEMM: it runs the float stage on whole tiles of rows, and
///   one i64 row sends its whole tile to the slower per-row epilogue (in subtensor files,
///   equalized expansion layers often have 10–15% such rows, spread out);
/// - B's channels, when B runs on the channel-vectorized depthwise (`q8::dw512`): it takes the
///   float stage for 16 channels at once only when all 16 have one (a fused subtensor depthwise
///   layer of EfficientNet-Lite0 has 295 of 480, spread out).
///
/// Only where the permutation stays invisible: A's output is read only by B (channels kept in
/// place, so permuted alike), whose output is read only by C (its input columns permuted back).
/// The order is A's float rows first, then within each part B's. Integer sums in another order:
/// every output byte is unchanged.
fn cluster_float_rows(steps: &mut [Step], graph_outputs: &[usize]) {
    let sole_reader = |steps: &[Step], slot: usize| -> Option<usize> {
        let mut readers = steps.iter().enumerate().filter(|(_, st)| st.inputs().contains(&slot)).map(|(i, _)| i);
        let r = readers.next()?;
        (readers.next().is_none() && !graph_outputs.contains(&slot)).then_some(r)
    };
    let float_rows = |epi: &Option<FloatEpilogue>, n: usize| -> Vec<bool> { epi.as_ref().map_or(vec![false; n], |e| e.ok.clone()) };
    let misplaced = |ok: &[bool]| ok.iter().skip_while(|&&k| k).any(|&k| k);
    let whole_blocks = |ok: &[bool]| ok.chunks_exact(16).filter(|b| b.iter().all(|&k| k)).count();
    for a in 0..steps.len() {
        let Step::Conv { output: a_out, epi: epi_a, geom: ga, parts, .. } = &steps[a] else { continue };
        if ga.group != 1 {
            continue;
        }
        let (a_ok, a_tiled, a_out) = (float_rows(epi_a, ga.out_c), parts[0].packed8.is_some(), *a_out);
        let Some(b) = sole_reader(steps, a_out) else { continue };
        let Step::Conv { output: b_out, epi: epi_b, geom: gb, parts: parts_b, .. } = &steps[b] else { continue };
        if !(gb.is_depthwise() && gb.in_c == ga.out_c) {
            continue;
        }
        let b_ok = float_rows(epi_b, gb.out_c);
        let b_blocked = parts_b.len() == 1 && q8::dw512::chosen(gb) && q8::dw512::available();
        let Some(c) = sole_reader(steps, *b_out) else { continue };
        let Step::Conv { geom: gc, .. } = &steps[c] else { continue };
        if gc.group != 1 || gc.in_c != ga.out_c {
            continue;
        }
        let mut order: Vec<usize> = (0..ga.out_c).collect();
        order.sort_by_key(|&ch| (!a_ok[ch], !b_ok[ch]));
        let b_ok_after: Vec<bool> = order.iter().map(|&ch| b_ok[ch]).collect();
        let helps_a = a_tiled && misplaced(&a_ok);
        let helps_b = b_blocked && whole_blocks(&b_ok_after) > whole_blocks(&b_ok);
        if !(helps_a || helps_b) {
            continue;
        }
        permute_output_channels(&mut steps[a], &order);
        permute_output_channels(&mut steps[b], &order);
        permute_input_channels(&mut steps[c], &order);
    }
}

/// Output channel `i` of the conv becomes its former channel `order[i]` (weights, multipliers,
/// biases, caps, float stages).
fn permute_output_channels(step: &mut Step, order: &[usize]) {
    let Step::Conv { parts, bias_fixed, cmax, epi, geom, .. } = step else { return };
    let per = geom.weights_per_output();
    for part in parts.iter_mut() {
        let weight: Vec<i16> = order.iter().flat_map(|&o| part.weight[o * per..(o + 1) * per].iter().copied()).collect();
        let requant = if part.requant.len() == 1 { part.requant.clone() } else { order.iter().map(|&o| part.requant[o]).collect() };
        *part = ConvPart::new(weight, requant, geom);
    }
    *bias_fixed = order.iter().map(|&o| bias_fixed[o]).collect();
    if let Some(cm) = cmax {
        *cm = order.iter().map(|&o| cm[o]).collect();
    }
    // Each channel's float stage was proven for that channel alone, so it moves with it.
    if let Some(e) = epi {
        *e = FloatEpilogue {
            scale: order.iter().map(|&o| e.scale[o]).collect(),
            offset: order.iter().map(|&o| e.offset[o]).collect(),
            lo: e.lo,
            hi: order.iter().map(|&o| e.hi[o]).collect(),
            ok: order.iter().map(|&o| e.ok[o]).collect(),
            cap: order.iter().map(|&o| e.cap[o]).collect(),
        };
    }
}

/// Input channel `i` of the conv becomes the producer's former channel `order[i]`.
fn permute_input_channels(step: &mut Step, order: &[usize]) {
    let Step::Conv { parts, geom, .. } = step else { return };
    let (per, taps) = (geom.weights_per_output(), geom.kernel[0] * geom.kernel[1]);
    for part in parts.iter_mut() {
        let weight: Vec<i16> = part.weight.chunks(per).flat_map(|row| order.iter().flat_map(move |&o| row[o * taps..(o + 1) * taps].iter().copied())).collect();
        *part = ConvPart::new(weight, part.requant.clone(), geom);
    }
}

fn q_of(grid: Grid, real: f32) -> i32 {
    ((real / grid.scale).round_ties_even() as i64 + grid.zp as i64).clamp(0, 255) as i32
}

/// The bytes a Relu or Clip leaves on grid `out`, as (qmin, qmax); (0, 255) for any other op.
/// Exact as a clamp of the quantized value, since quantization is monotone:
/// Q(clip(y, lo, hi)) = clamp(Q(y), Q(lo), Q(hi)).
fn clamp_range(op: &Op, out: Grid) -> (i32, i32) {
    match *op {
        Op::Relu => (q_of(out, 0.0), 255),
        Op::Clip { min, max } => (if min.is_finite() { q_of(out, min) } else { 0 }, if max.is_finite() { q_of(out, max) } else { 255 }),
        _ => (0, 255),
    }
}

impl Int8Engine {
    pub fn new(g: &Graph) -> Result<Int8Engine, RuntimeError> {
        if g.inputs.len() != 1 {
            return Err(RuntimeError::Other("the int8 engine runs models with one input".into()));
        }
        let mut lw = Lowering { g, producers: g.producers(), consumers: g.consumers(), const_dqs: HashMap::new(), slot_of: HashMap::new() };
        for n in &g.nodes {
            if matches!(n.op, Op::DequantizeLinear { .. }) {
                if let Some(c) = const_dq(g, n) {
                    lw.const_dqs.insert(n.outputs[0].clone(), c);
                }
            }
        }
        // Pass 1: decide the integer steps, keyed by the QuantizeLinear they end in.
        let mut int_steps: HashMap<usize, (Vec<String>, Step)> = HashMap::new();
        let mut channel_bounds: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut absorbed: HashSet<usize> = HashSet::new();
        let index: HashMap<&str, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        for (qi, qn) in g.nodes.iter().enumerate() {
            if !matches!(qn.op, Op::QuantizeLinear { .. }) {
                continue;
            }
            let Some((out, _int8)) = node_grid(g, qn) else { continue };
            let x = &qn.inputs[0];
            let Some(p) = lw.producer(x) else { continue };
            if !lw.sole_reader(x, qn) {
                continue;
            }
            let lowered: Option<(Vec<&str>, Vec<&Node>, Step)> = match &p.op {
                Op::Conv(_) | Op::Gemm { .. } | Op::Add if lw.conv_parts(x, qn).is_some() || matches!(p.op, Op::Gemm { .. }) => {
                    let parts = if matches!(p.op, Op::Gemm { .. }) { vec![p] } else { lw.conv_parts(x, qn).expect("checked") };
                    lw.build_conv(&parts, out).map(|(src, step)| {
                        let mut covered: Vec<&Node> = parts.clone();
                        // The Adds of a split are absorbed too.
                        let mut frontier = vec![p];
                        while let Some(a) = frontier.pop() {
                            if matches!(a.op, Op::Add) {
                                covered.push(a);
                                for i in &a.inputs {
                                    if let Some(pp) = lw.producer(i) {
                                        frontier.push(pp);
                                    }
                                }
                            }
                        }
                        (vec![src], covered, step)
                    })
                }
                Op::Min if lw.constant(&p.inputs[1]).is_some() && lw.conv_parts(&p.inputs[0], p).is_some() => {
                    let parts = lw.conv_parts(&p.inputs[0], p).expect("checked");
                    let bound = lw.constant(&p.inputs[1]).expect("checked");
                    lw.build_conv(&parts, out).and_then(|(src, step)| {
                        let Step::Conv { geom, .. } = &step else { return None };
                        if bound.len() != geom.out_c {
                            return None;
                        }
                        channel_bounds.insert(qi, bound.iter().map(|&b| q_of(out, b) as u8).collect());
                        let covered = lw.covered_after_conv(&parts, p);
                        Some((vec![src], covered, step))
                    })
                }
                // Conv → Relu/Clip → QuantizeLinear, as files from other tools keep it (ONNX
                // Runtime's quantizer drops the activation into the grid): the clamp joins the
                // conv's output stage, exactly, since quantization is monotone:
                // Q(clip(y, lo, hi)) = clamp(Q(y), Q(lo), Q(hi)). Left alone, the conv would
                // run with a float output followed by a float activation and a quantize.
                Op::Relu | Op::Clip { .. } if lw.conv_parts(&p.inputs[0], p).is_some() => {
                    let parts = lw.conv_parts(&p.inputs[0], p).expect("checked");
                    lw.build_conv(&parts, out).map(|(src, mut step)| {
                        if let Step::Conv { qmin, qmax, .. } = &mut step {
                            (*qmin, *qmax) = clamp_range(&p.op, out);
                        }
                        let covered = lw.covered_after_conv(&parts, p);
                        (vec![src], covered, step)
                    })
                }
                Op::Add => lw.quantized_add(p, out).map(|step| (step.0, vec![p], step.1)),
                // The same for a residual add (Add → Relu/Clip → QuantizeLinear).
                Op::Relu | Op::Clip { .. } if lw.producer(&p.inputs[0]).is_some_and(|a| matches!(a.op, Op::Add) && lw.sole_reader(&p.inputs[0], p)) => {
                    let add = lw.producer(&p.inputs[0]).expect("checked");
                    lw.quantized_add(add, out).map(|(srcs, mut step)| {
                        if let Step::Add { qmin, qmax, .. } = &mut step {
                            (*qmin, *qmax) = clamp_range(&p.op, out);
                        }
                        (srcs, vec![add, p], step)
                    })
                }
                Op::GlobalAveragePool => lw.activation_dq(&p.inputs[0]).and_then(|(a, ga)| {
                    let shape = g.shape(&p.inputs[0])?;
                    let hw: usize = shape[2..].iter().product();
                    let r = Requant::new(ga.scale as f64 / (out.scale as f64 * hw as f64));
                    Some((vec![a], vec![p], Step::GlobalAvgPool { input: 0, output: 0, zp_in: ga.zp, requant: r, out }))
                }),
                Op::Relu | Op::Clip { .. } | Op::Flatten { .. } | Op::Reshape { .. } | Op::Identity => lw.activation_dq(&p.inputs[0]).map(|(a, ga)| {
                    let (qmin, qmax) = clamp_range(&p.op, out);
                    let shape = if matches!(p.op, Op::Flatten { .. } | Op::Reshape { .. }) { g.shape(&p.outputs[0]).map(|s| s[1..].to_vec()) } else { None };
                    let r = Requant::new(ga.scale as f64 / out.scale as f64);
                    (vec![a], vec![p], Step::Requantize { input: 0, output: 0, zp_in: ga.zp, requant: r, out, qmin, qmax, shape })
                }),
                _ => None,
            };
            if let Some((srcs, covered, step)) = lowered {
                for c in &covered {
                    absorbed.insert(index[c.name.as_str()]);
                }
                int_steps.insert(qi, (srcs.into_iter().map(String::from).collect(), step));
            }
        }
        // Conv/Gemm outputs left in float (no QuantizeLinear reads them): integer accumulation,
        // one dequantizing multiply.
        for (ci, n) in g.nodes.iter().enumerate() {
            if !matches!(n.op, Op::Conv(_) | Op::Gemm { .. }) || absorbed.contains(&ci) {
                continue;
            }
            let read_by_quantize = lw.consumers.get(n.outputs[0].as_str()).is_some_and(|cs| cs.iter().any(|&c| matches!(g.nodes[c].op, Op::QuantizeLinear { .. })));
            if read_by_quantize {
                continue;
            }
            let Some((src, grid, w, bias, geom, out_shape)) = lw.conv_like(n) else { continue };
            let weight = w.minus_zero_point(geom.out_c);
            let scale: Vec<f64> = (0..geom.out_c).map(|c| grid.scale as f64 * w.params.scale_at(c) as f64).collect();
            // No requantization: the part's multipliers are unused.
            let part = ConvPart::new(weight, Vec::new(), &geom);
            let step = Step::ConvDequant { input: 0, output: 0, zp_in: grid.zp, part, scale, bias: bias.unwrap_or_else(|| vec![0.0; geom.out_c]), geom, out_shape_per_image: out_shape };
            absorbed.insert(ci);
            int_steps.insert(ci, (vec![src.to_string()], step));
        }
        // Which activation DequantizeLinear outputs are still read in float.
        let float_readers_of = |value: &str| -> bool {
            g.outputs.iter().any(|o| o == value) || lw.consumers.get(value).is_some_and(|cs| cs.iter().any(|&c| !absorbed.contains(&c) && !int_steps.contains_key(&c)))
        };
        let needed_dq: HashSet<usize> = g
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::DequantizeLinear { .. }) && !lw.const_dqs.contains_key(&n.outputs[0]) && float_readers_of(&n.outputs[0]))
            .map(|(i, _)| i)
            .collect();
        // Pass 2: emit steps in graph order.
        let input_slot = lw.slot(&g.inputs[0]);
        let mut steps = Vec::new();
        let mut float_ops = Vec::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if let Some((srcs, mut step)) = int_steps.remove(&i) {
                let output = lw.slot(&n.outputs[0]);
                let ins: Vec<usize> = srcs.iter().map(|s| lw.slot(s)).collect();
                match &mut step {
                    Step::Conv { input, output: o, .. } | Step::ConvDequant { input, output: o, .. } | Step::GlobalAvgPool { input, output: o, .. } | Step::Requantize { input, output: o, .. } => {
                        *input = ins[0];
                        *o = output;
                    }
                    Step::Add { a, b, output: o, .. } => {
                        *a = ins[0];
                        *b = ins[1];
                        *o = output;
                    }
                    _ => unreachable!("only integer steps are planned in pass 1"),
                }
                if let Some(bound) = channel_bounds.remove(&i) {
                    match &mut step {
                        Step::Conv { cmax, .. } => *cmax = Some(bound),
                        _ => {
                            steps.push(step);
                            steps.push(Step::ClampChannels { slot: output, qmax: bound });
                            continue;
                        }
                    }
                }
                steps.push(step);
                continue;
            }
            if absorbed.contains(&i) || lw.const_dqs.contains_key(&n.outputs[0]) {
                continue;
            }
            match n.op {
                Op::DequantizeLinear { .. } => {
                    if needed_dq.contains(&i) {
                        let (grid, _) = node_grid(g, n).ok_or_else(|| err(n, "per-axis activation quantization is not supported"))?;
                        let (input, output) = (lw.slot(&n.inputs[0]), lw.slot(&n.outputs[0]));
                        steps.push(Step::Dequantize { input, output, grid });
                    }
                }
                Op::QuantizeLinear { .. } => {
                    let (grid, _) = node_grid(g, n).ok_or_else(|| err(n, "per-axis activation quantization is not supported"))?;
                    let (input, output) = (lw.slot(&n.inputs[0]), lw.slot(&n.outputs[0]));
                    steps.push(Step::Quantize { input, output, grid });
                }
                _ => {
                    // Shape-only ops move float values without arithmetic: not worth a warning.
                    if !matches!(n.op, Op::Identity | Op::Flatten { .. } | Op::Reshape { .. }) {
                        float_ops.push(format!("{} ({})", n.name, n.op.name()));
                    }
                    let args = n
                        .inputs
                        .iter()
                        .map(|v| {
                            if v.is_empty() {
                                Arg::None
                            } else if let Some(t) = g.initializer(v) {
                                Arg::Const(t.clone())
                            } else if let Some(c) = lw.const_dqs.get(v) {
                                Arg::Const(dequantize_const(c))
                            } else {
                                Arg::Slot(lw.slot(v))
                            }
                        })
                        .collect();
                    let output = lw.slot(&n.outputs[0]);
                    steps.push(Step::Float { node: n.clone(), args, output });
                }
            }
        }
        // A clamp on a conv's (or an add's) own grid right after it (an activation kept between
        // two QuantizeLinears of one grid, Conv → Q → DQ → Clip → Q, as files that keep their
        // activations have it) joins its output stage: it clamps the same bytes.
        let graph_outputs: Vec<usize> = g.outputs.iter().map(|o| lw.slot(o)).collect();
        let mut i = 0;
        while i < steps.len() {
            let clamp = match &steps[i] {
                Step::Requantize { input, output, zp_in, requant, out, qmin, qmax, shape: None } if requant.shift < 63 && requant.multiplier == 1 << requant.shift && *zp_in == out.zp => Some((*input, *output, *qmin, *qmax)),
                _ => None,
            };
            let producer = clamp.and_then(|(input, ..)| {
                let readers = steps.iter().filter(|st| st.inputs().contains(&input)).count();
                let producer = steps[..i].iter().rposition(|st| matches!(st, Step::Conv { output, .. } | Step::Add { output, .. } if *output == input))?;
                (readers == 1 && !graph_outputs.contains(&input)).then_some(producer)
            });
            if let (Some((_, to, lo, hi)), Some(c)) = (clamp, producer) {
                if let Step::Conv { output, qmin, qmax, .. } | Step::Add { output, qmin, qmax, .. } = &mut steps[c] {
                    *output = to;
                    *qmin = (*qmin).max(lo);
                    *qmax = (*qmax).min(hi);
                }
                steps.remove(i);
                continue;
            }
            i += 1;
        }
        // Float output stages, now that every conv's cap is known.
        float_output_stages(&mut steps);
        cluster_float_rows(&mut steps, &graph_outputs);
        let output_slots: Vec<usize> = g.outputs.iter().map(|o| lw.slot(o)).collect();
        let int_count = steps.iter().filter(|s| matches!(s, Step::Conv { .. } | Step::ConvDequant { .. } | Step::Add { .. } | Step::GlobalAvgPool { .. } | Step::Requantize { .. })).count();
        let slots = lw.slot_of.len();
        let mut last_read = vec![None; slots];
        for (i, st) in steps.iter().enumerate() {
            for s in st.inputs() {
                last_read[s] = Some(i);
            }
        }
        let mut release = vec![Vec::new(); steps.len()];
        for (s, last) in last_read.iter().enumerate() {
            if let Some(i) = last {
                if !output_slots.contains(&s) {
                    release[*i].push(s);
                }
            }
        }
        Ok(Int8Engine { steps, slots, input_slot, output_slots, float_ops, int_steps: int_count, release, pool: Mutex::new(Vec::new()) })
    }

    /// Ops that run in FP32 (between dequantize and quantize) because no integer kernel covers
    /// them: "name (OpType)". Shape-only ops (Identity, Flatten, Reshape) on float values, such
    /// as an Identity after float logits, are not listed.
    pub fn float_ops(&self) -> &[String] {
        &self.float_ops
    }

    pub fn integer_steps(&self) -> usize {
        self.int_steps
    }

    pub fn run(&self, input: Tensor) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_timed(input, None)
    }

    /// [`Int8Engine::run`] that also adds each step's wall time (seconds) to `times[i]`
    /// (`times` is resized to the number of steps; see [`Int8Engine::step_labels`]).
    pub fn run_profiled(&self, input: Tensor, times: &mut Vec<f64>) -> Result<Vec<Tensor>, RuntimeError> {
        times.resize(self.steps.len(), 0.0);
        self.run_timed(input, Some(times))
    }

    /// One label per step, in run order: `(kind, detail)`, e.g. `("conv 1×1", "96→24 @ 56×56")`.
    pub fn step_labels(&self) -> Vec<(String, String)> {
        self.steps.iter().map(Step::label).collect()
    }

    fn run_timed(&self, input: Tensor, times: Option<&mut Vec<f64>>) -> Result<Vec<Tensor>, RuntimeError> {
        let mut st = self.pool.lock().map(|mut p| p.pop()).unwrap_or_default().unwrap_or_default();
        st.vals.clear();
        st.vals.resize_with(self.slots, || None);
        st.vals[self.input_slot] = Some(Value::F(input));
        let result = self.run_steps(&mut st, times);
        // Keep every remaining buffer for the next run.
        for s in 0..st.vals.len() {
            st.recycle(s);
        }
        st.vals.clear();
        if let Ok(mut p) = self.pool.lock() {
            p.push(st);
        }
        result
    }

    fn run_steps(&self, st: &mut RunState, mut times: Option<&mut Vec<f64>>) -> Result<Vec<Tensor>, RuntimeError> {
        for (i, (step, release)) in self.steps.iter().zip(&self.release).enumerate() {
            let t0 = times.is_some().then(std::time::Instant::now);
            match step {
                Step::Quantize { input, output, grid } => {
                    let Some(Value::F(t)) = &st.vals[*input] else { return Err(RuntimeError::Other("quantize of a non-float value".into())) };
                    let x = t.as_f32().map_err(|e| RuntimeError::Other(e.to_string()))?;
                    let shape = t.shape.clone();
                    let n = x.len();
                    let mut data = st.buffer(n);
                    let Some(Value::F(t)) = &st.vals[*input] else { unreachable!() };
                    let x = t.as_f32().map_err(|e| RuntimeError::Other(e.to_string()))?;
                    // Same rounding as QuantizeLinear; int8 grids arrive already shifted into uint8.
                    q8::quantize_f32(x, grid.scale, grid.zp, &mut data);
                    st.vals[*output] = Some(Value::Q { shape, data });
                }
                Step::Dequantize { input, output, grid } => {
                    let Some(Value::Q { shape, data }) = &st.vals[*input] else { return Err(RuntimeError::Other("dequantize of a non-quantized value".into())) };
                    let f = data.iter().map(|&q| (q as i32 - grid.zp) as f32 * grid.scale).collect();
                    st.vals[*output] = Some(Value::F(Tensor::f32(shape.clone(), f).expect("same size")));
                }
                Step::Conv { input, output, zp_in, parts, bias_fixed, shift, out, qmin, qmax, cmax, epi, geom, out_shape_per_image, .. } => {
                    let Some(Value::Q { shape, .. }) = &st.vals[*input] else { return Err(RuntimeError::Other("conv input is not quantized".into())) };
                    let images = shape[0];
                    let (isz, osz) = (geom.in_c * geom.in_h * geom.in_w, geom.out_c * geom.out_h * geom.out_w);
                    let mut o = st.buffer(images * osz);
                    let RunState { vals, scratch, .. } = &mut *st;
                    let Some(Value::Q { data, .. }) = &vals[*input] else { unreachable!() };
                    for b in 0..images {
                        let (x, y) = (&data[b * isz..(b + 1) * isz], &mut o[b * osz..(b + 1) * osz]);
                        q8::conv_q8_epi(x, *zp_in, parts, bias_fixed, *shift, out.zp, *qmin, *qmax, cmax.as_deref(), epi.as_ref(), geom, y, scratch);
                    }
                    let mut s = vec![images];
                    s.extend_from_slice(out_shape_per_image);
                    st.vals[*output] = Some(Value::Q { shape: s, data: o });
                }
                Step::ConvDequant { input, output, zp_in, part, scale, bias, geom, out_shape_per_image } => {
                    let Some(Value::Q { shape, .. }) = &st.vals[*input] else { return Err(RuntimeError::Other("conv input is not quantized".into())) };
                    let images = shape[0];
                    let (isz, spatial) = (geom.in_c * geom.in_h * geom.in_w, geom.out_h * geom.out_w);
                    let mut y = Vec::with_capacity(images * geom.out_c * spatial);
                    let RunState { vals, scratch, .. } = &mut *st;
                    let Some(Value::Q { data, .. }) = &vals[*input] else { unreachable!() };
                    let mut acc = std::mem::take(&mut scratch.acc);
                    for b in 0..images {
                        q8::conv_acc(&data[b * isz..(b + 1) * isz], *zp_in, part, geom, &mut acc, scratch);
                        y.extend(acc.iter().enumerate().map(|(i, &a)| (a as f64 * scale[i / spatial] + bias[i / spatial]) as f32));
                    }
                    scratch.acc = acc;
                    let mut s = vec![images];
                    s.extend_from_slice(out_shape_per_image);
                    st.vals[*output] = Some(Value::F(Tensor::f32(s, y).map_err(|e| RuntimeError::Other(e.to_string()))?));
                }
                Step::Add { a, b, output, za, zb, ma, mb, shift, out, qmin, qmax } => {
                    let (Some(Value::Q { shape, data: da }), Some(Value::Q { .. })) = (&st.vals[*a], &st.vals[*b]) else { return Err(RuntimeError::Other("add inputs are not quantized".into())) };
                    let (shape, n) = (shape.clone(), da.len());
                    let mut o = st.buffer(n);
                    let (Some(Value::Q { data: da, .. }), Some(Value::Q { data: db, .. })) = (&st.vals[*a], &st.vals[*b]) else { unreachable!() };
                    q8::add_q8(da, *za, *ma, db, *zb, *mb, *shift, out.zp, *qmin, *qmax, &mut o);
                    st.vals[*output] = Some(Value::Q { shape, data: o });
                }
                Step::GlobalAvgPool { input, output, zp_in, requant, out } => {
                    let Some(Value::Q { shape, data }) = &st.vals[*input] else { return Err(RuntimeError::Other("pool input is not quantized".into())) };
                    let (n, c) = (shape[0], shape[1]);
                    let per = data.len() / n;
                    let mut o = st.buffer(n * c);
                    let Some(Value::Q { data, .. }) = &st.vals[*input] else { unreachable!() };
                    for b in 0..n {
                        q8::global_avg_pool_q8(&data[b * per..(b + 1) * per], c, *zp_in, *requant, out.zp, &mut o[b * c..(b + 1) * c]);
                    }
                    st.vals[*output] = Some(Value::Q { shape: vec![n, c, 1, 1], data: o });
                }
                Step::Requantize { input, output, zp_in, requant, out, qmin, qmax, shape: new_shape } => {
                    let Some(Value::Q { shape, data }) = &st.vals[*input] else { return Err(RuntimeError::Other("input is not quantized".into())) };
                    let s = match new_shape {
                        Some(ns) => std::iter::once(shape[0]).chain(ns.iter().copied()).collect(),
                        None => shape.clone(),
                    };
                    let mut o = st.buffer(data.len());
                    let Some(Value::Q { data, .. }) = &st.vals[*input] else { unreachable!() };
                    q8::requantize_u8(data, *zp_in, *requant, out.zp, *qmin, *qmax, &mut o);
                    st.vals[*output] = Some(Value::Q { shape: s, data: o });
                }
                Step::ClampChannels { slot, qmax } => {
                    let Some(Value::Q { shape, data }) = &mut st.vals[*slot] else { return Err(RuntimeError::Other("clamp of a non-quantized value".into())) };
                    let inner: usize = shape[2..].iter().product();
                    q8::clamp_channels_u8(data, inner, qmax);
                }
                Step::Float { node, args, output } => {
                    let RunState { vals, fscratch, .. } = &mut *st;
                    let refs: Vec<Option<&Tensor>> = args
                        .iter()
                        .map(|a| match a {
                            Arg::Slot(s) => match &vals[*s] {
                                Some(Value::F(t)) => Some(t),
                                _ => None,
                            },
                            Arg::Const(t) => Some(t),
                            Arg::None => None,
                        })
                        .collect();
                    let r = eval_node(node, &refs, fscratch)?;
                    st.vals[*output] = Some(Value::F(r));
                }
            }
            for &s in release {
                st.recycle(s);
            }
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t[i] += t0.elapsed().as_secs_f64();
            }
        }
        self.output_slots
            .iter()
            .map(|&s| match st.vals[s].take() {
                Some(Value::F(t)) => Ok(t),
                Some(Value::Q { shape, data }) => Ok(Tensor { shape, data: TensorData::U8(data) }),
                None => Err(RuntimeError::Other("graph output was not computed".into())),
            })
            .collect()
    }
}

#[cfg(test)]
mod fuse_tests {
    use super::fuse_power_of_two_parts;

    /// Two parts fuse into `2^k·d1 + d2` exactly when the first part's multipliers are `2^k`
    /// (k ≤ 7) times the second's on every channel and the sums fit i16.
    #[test]
    fn parts_fuse_only_on_an_exact_power_of_two() {
        let r2 = vec![3.1e-4, 7.7e-5];
        let r1: Vec<f64> = r2.iter().map(|r| r * 128.0).collect();
        let (w1, w2) = (vec![-255i16, 3, 100, 0], vec![64i16, -64, 0, 7]);
        let fused = fuse_power_of_two_parts(&[r1.clone(), r2.clone()], &[w1.clone(), w2.clone()]).expect("2^7 apart");
        assert_eq!(fused, vec![-255 * 128 + 64, 3 * 128 - 64, 100 * 128, 7]);
        let r1_k2: Vec<f64> = r2.iter().map(|r| r * 4.0).collect();
        assert_eq!(fuse_power_of_two_parts(&[r1_k2, r2.clone()], &[w1.clone(), w2.clone()]), Some(vec![-255 * 4 + 64, 3 * 4 - 64, 400, 7]));
        // One ulp off on one channel, a ratio of 2^8, a sum past i16, three parts: no fusion.
        let mut off = r1.clone();
        off[1] = f64::from_bits(off[1].to_bits() + 1);
        assert_eq!(fuse_power_of_two_parts(&[off, r2.clone()], &[w1.clone(), w2.clone()]), None);
        let r1_k8: Vec<f64> = r2.iter().map(|r| r * 256.0).collect();
        assert_eq!(fuse_power_of_two_parts(&[r1_k8, r2.clone()], &[w1.clone(), w2.clone()]), None);
        assert_eq!(fuse_power_of_two_parts(&[r1.clone(), r2.clone()], &[w1.clone(), vec![-129, 0, 0, 0]]), None);
        assert_eq!(fuse_power_of_two_parts(&[r1.clone(), r2.clone(), r2.clone()], &[w1.clone(), w2.clone(), w2]), None);
    }
}

#[cfg(test)]
mod output_stage_tests {
    use super::{cluster_float_rows, float_output_stages, Grid, Step};
    use subq_kernels::q8::{self, ConvPart, FloatEpilogue, Requant, Scratch};
    use subq_kernels::ConvGeometry;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn geometry(in_c: usize, out_c: usize, side: usize, k: usize, group: usize) -> ConvGeometry {
        ConvGeometry { in_c, in_h: side, in_w: side, out_c, out_h: side, out_w: side, kernel: [k, k], strides: [1, 1], dilations: [1, 1], pad_top: k / 2, pad_left: k / 2, group }
    }

    /// A conv step reading slot `input` into `input + 1`: random weights, per-channel `reals`,
    /// biases of ±120 output steps, the float stage where provable.
    fn conv_step(rng: &mut Lcg, input: usize, g: ConvGeometry, reals: &[f64]) -> Step {
        let weight: Vec<i16> = (0..g.out_c * g.weights_per_output()).map(|_| (rng.next() % 181) as i16 - 90).collect();
        let (requant, shift) = Requant::common(reals);
        let bias_fixed: Vec<i64> = (0..g.out_c).map(|_| (((rng.next() % 240) as f64 - 120.0) * (shift as f64).exp2()) as i64).collect();
        let out = Grid { scale: 1.0, zp: 0 };
        let mult: Vec<i64> = requant.iter().map(|r| r.multiplier).collect();
        let epi = FloatEpilogue::new(&mult, &bias_fixed, shift, out.zp, 0, 255, None);
        let parts = vec![ConvPart::new(weight, requant, &g)];
        Step::Conv { input, output: input + 1, zp_in: 3, parts, file_parts: 1, bias_fixed, shift, out, qmin: 0, qmax: 255, cmax: None, epi, geom: g, out_shape_per_image: vec![g.out_c, g.out_h, g.out_w] }
    }

    fn run(steps: &[Step], x: &[u8]) -> Vec<u8> {
        let mut x = x.to_vec();
        let mut scratch = Scratch::default();
        for st in steps {
            let Step::Conv { zp_in, parts, bias_fixed, shift, out, qmin, qmax, cmax, epi, geom, .. } = st else { unreachable!() };
            let mut y = vec![0u8; geom.out_c * geom.out_h * geom.out_w];
            q8::conv_q8_epi(&x, *zp_in, parts, bias_fixed, *shift, out.zp, *qmin, *qmax, cmax.as_deref(), epi.as_ref(), geom, &mut y, &mut scratch);
            x = y;
        }
        x
    }

    /// Pointwise → depthwise → pointwise convs on `side`², the first with channels lacking a
    /// float stage (real multipliers around 1e-4) spread among the others.
    fn block(side: usize) -> Vec<Step> {
        let mut rng = Lcg(0x5eed);
        let (c0, c1, c2) = (48, 40, 9);
        let reals_a: Vec<f64> = (0..c1).map(|c| if c % 5 == 1 { 1.1e-4 + c as f64 * 1e-7 } else { 2.0e-3 }).collect();
        vec![
            conv_step(&mut rng, 0, geometry(c0, c1, side, 1, 1), &reals_a),
            conv_step(&mut rng, 1, geometry(c1, c1, side, 3, c1), &vec![2.0e-2; c1]),
            conv_step(&mut rng, 2, geometry(c1, c2, side, 1, 1), &vec![3.0e-3; c2]),
        ]
    }

    fn float_rows(step: &Step) -> Vec<bool> {
        match step {
            Step::Conv { epi: Some(e), .. } => e.ok.clone(),
            _ => panic!("no float stage"),
        }
    }

    /// The pass moves the channels without a float stage last where the byte GEMM runs (it
    /// tiles rows), and the block's output bytes do not change.
    #[test]
    fn clustering_float_rows_keeps_every_output_byte() {
        let side = 16;
        let steps = block(side);
        let ok = float_rows(&steps[0]);
        let misplaced = |ok: &[bool]| ok.iter().skip_while(|&&k| k).any(|&k| k);
        assert!(misplaced(&ok) && ok.iter().any(|&k| !k), "the test needs channels without a float stage among others: {ok:?}");
        let Step::Conv { parts, geom, .. } = &steps[0] else { unreachable!() };
        let byte_gemm = parts[0].packed8.is_some();
        let mut rng = Lcg(7);
        let x: Vec<u8> = (0..geom.in_c * side * side).map(|_| rng.next() as u8).collect();
        let want = run(&steps, &x);
        let mut clustered = block(side);
        cluster_float_rows(&mut clustered, &[3]);
        assert_eq!(misplaced(&float_rows(&clustered[0])), !byte_gemm);
        assert_eq!(run(&clustered, &x), want);
        // A block whose middle values are also read elsewhere (here: graph outputs) stays.
        for shown in [1, 2] {
            let mut kept = block(side);
            cluster_float_rows(&mut kept, &[shown]);
            assert_eq!(float_rows(&kept[0]), ok);
        }
    }

    /// Where the depthwise conv runs on `q8::dw512` (16 channels per float stage), the pass also
    /// gathers its float channels into whole blocks, and the block's output bytes do not change.
    #[test]
    fn clustering_gathers_depthwise_float_channels_into_blocks() {
        let (side, c0, c1, c2) = (8, 24, 48, 9);
        let block = || {
            let mut rng = Lcg(0xb10c);
            // Multipliers off round numbers: with integer biases, 0.1 puts accumulators right on
            // the rounding boundaries, where f32 cannot decide.
            let reals_a: Vec<f64> = (0..c1).map(|c| 0.0173 + c as f64 * 1.1e-6).collect();
            let reals_b: Vec<f64> = (0..c1).map(|c| if c % 3 == 1 { 1.1e-4 + c as f64 * 1e-7 } else { 0.0371 + c as f64 * 1.3e-6 }).collect();
            vec![conv_step(&mut rng, 0, geometry(c0, c1, side, 1, 1), &reals_a), conv_step(&mut rng, 1, geometry(c1, c1, side, 3, c1), &reals_b), conv_step(&mut rng, 2, geometry(c1, c2, side, 1, 1), &vec![3.0e-3; c2])]
        };
        let steps = block();
        let whole_blocks = |ok: &[bool]| ok.chunks_exact(16).filter(|b| b.iter().all(|&k| k)).count();
        let (ok_a, ok_b) = (float_rows(&steps[0]), float_rows(&steps[1]));
        assert!(ok_a.iter().all(|&k| k) && whole_blocks(&ok_b) == 0 && ok_b.iter().filter(|&&k| k).count() >= 32, "the test needs float rows in A and scattered ones in B: {ok_a:?} {ok_b:?}");
        let Step::Conv { geom: gb, .. } = &steps[1] else { unreachable!() };
        let blocked = q8::dw512::chosen(gb) && q8::dw512::available();
        let mut rng = Lcg(3);
        let x: Vec<u8> = (0..c0 * side * side).map(|_| rng.next() as u8).collect();
        let want = run(&steps, &x);
        let mut clustered = block();
        cluster_float_rows(&mut clustered, &[3]);
        assert_eq!(whole_blocks(&float_rows(&clustered[1])), if blocked { 2 } else { 0 });
        assert_eq!(run(&clustered, &x), want);
    }

    /// Float stages are proven on the accumulators each conv can reach: a depthwise conv with
    /// tiny multipliers reading a capped conv's bytes gets float stages that the proof on all of
    /// i32 refuses, and its bytes stay the reference's on inputs at the ends of those ranges.
    #[test]
    fn float_stages_are_proven_on_reachable_accumulators() {
        let (side, c) = (8, 32);
        let mut rng = Lcg(11);
        let reals: Vec<f64> = (0..c).map(|i| 1.1e-4 + i as f64 * 1e-7).collect();
        let mut steps = vec![conv_step(&mut rng, 0, geometry(16, c, side, 1, 1), &vec![2.0e-2; c]), conv_step(&mut rng, 1, geometry(c, c, side, 3, c), &reals)];
        let caps: Vec<u8> = (0..c).map(|_| 20 + (rng.next() % 80) as u8).collect();
        let Step::Conv { cmax, .. } = &mut steps[0] else { unreachable!() };
        *cmax = Some(caps.clone());
        let on_i32 = float_rows(&steps[1]).iter().filter(|&&k| k).count();
        // What the weights alone allow, on any input byte.
        let on_any_byte = {
            let Step::Conv { zp_in, parts, bias_fixed, shift, out, geom, .. } = &steps[1] else { unreachable!() };
            let reach = q8::accumulator_bounds(&parts[0].weight, geom, *zp_in, &[(0, 255)]);
            let e = FloatEpilogue::for_accumulators(&(0..c).map(|i| parts[0].multiplier(i)).collect::<Vec<_>>(), bias_fixed, *shift, out.zp, 0, 255, None, Some(&reach));
            e.map_or(0, |e| e.ok.iter().filter(|&&k| k).count())
        };
        float_output_stages(&mut steps);
        let on_reach = float_rows(&steps[1]).iter().filter(|&&k| k).count();
        assert!(on_i32 <= c / 4 && on_any_byte < on_reach && on_reach >= c * 3 / 4, "float channels: {on_i32} proven on i32, {on_any_byte} on any input byte, {on_reach} on the capped conv's bytes");
        let Step::Conv { zp_in, parts, bias_fixed, shift, out, qmin, qmax, cmax, epi, geom, .. } = &steps[1] else { unreachable!() };
        let plane = side * side;
        let mut scratch = Scratch::default();
        for trial in 0..40 {
            // Each channel's bytes at 0 or its cap (where the extreme sums are), or in between.
            let x: Vec<u8> = (0..c * plane).map(|i| match (trial % 2, rng.next() % 2) { (0, 0) => 0, (0, _) => caps[i / plane], _ => (rng.next() % (caps[i / plane] as u64 + 1)) as u8 }).collect();
            let (mut fast, mut want) = (vec![0u8; c * plane], vec![0u8; c * plane]);
            q8::conv_q8_epi(&x, *zp_in, parts, bias_fixed, *shift, out.zp, *qmin, *qmax, cmax.as_deref(), epi.as_ref(), geom, &mut fast, &mut scratch);
            q8::conv_q8_reference(&x, *zp_in, parts, bias_fixed, *shift, out.zp, *qmin, *qmax, geom, &mut want, &mut scratch);
            assert_eq!(fast, want, "trial {trial}");
        }
    }
}
