//! Floating-point graph interpreter.

use std::collections::HashMap;
use std::sync::Mutex;

use subq_ir::{Graph, Node, Op};
use subq_kernels::{f32 as k, ConvGeometry};
use subq_tensor::{numel, QParams, QuantRange, Tensor, TensorData};

use crate::{conv_geometry, conv_label, RuntimeError};

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
    /// Per node: for a Conv, the BatchNormalization / Relu / Clip nodes that run fused into
    /// its output pass (execution-time only; the graph is unchanged).
    fusion: Vec<Option<ConvFusion>>,
    /// Nodes that run as part of an earlier Conv's fusion.
    fused_into_conv: Vec<bool>,
    /// Pad nodes whose padding the reading Conv applies (when not observing).
    pad_into_conv: Vec<bool>,
    /// Output buffers and scratch kept between runs, so steady-state runs neither allocate
    /// nor fault in fresh pages for convolution outputs.
    buffers: Mutex<BufferPool>,
}

/// The `run_observed` callback.
type Observer<'o> = dyn FnMut(&str, &Tensor) + 'o;

/// Post-ops run inside a Conv: an optional BatchNormalization (folded to a per-channel
/// affine) then an optional Relu/Clip, each the only reader of the previous value.
struct ConvFusion {
    /// A zero Pad of the spatial axes producing the input (its only reader being this Conv):
    /// unobserved, the Pad passes its input through and the Conv pads by [top, left, bottom,
    /// right] more instead.
    pad: Option<[usize; 4]>,
    /// (BN node index, scale, shift), computed as `eval_node` computes BatchNormalization.
    bn: Option<(usize, Vec<f32>, Vec<f32>)>,
    /// (activation node index, lo, hi).
    act: Option<(usize, f32, f32)>,
}

impl ConvFusion {
    fn last_node(&self, conv: usize) -> usize {
        self.act.map(|a| a.0).or(self.bn.as_ref().map(|b| b.0)).unwrap_or(conv)
    }
}

#[derive(Default)]
struct BufferPool {
    /// (buffer, how many leading elements have ever been written).
    free: Vec<(Vec<f32>, usize)>,
    /// Buffers handed out by `take`: (data pointer, elements written before), so that `give`
    /// knows how much of a returned buffer is initialized beyond its current length.
    lent: Vec<(usize, usize)>,
    scratch: Vec<f32>,
}

impl BufferPool {
    /// Most buffers kept for reuse.
    const KEEP: usize = 16;

    /// A buffer of `n` elements with unspecified contents (the caller overwrites all of them).
    /// Reused buffers are not zeroed: that pass cost as much as a cheap layer.
    fn take(&mut self, n: usize) -> Vec<f32> {
        let best = self.free.iter().enumerate().filter(|(_, (v, _))| v.capacity() >= n).min_by_key(|(_, (v, _))| v.capacity()).map(|(i, _)| i);
        let (mut v, mut init) = match best {
            Some(i) => self.free.swap_remove(i),
            None => (Vec::with_capacity(n), 0),
        };
        if init >= n {
            // SAFETY: n ≤ init ≤ capacity, and the first `init` elements were written before
            // (f32 has no invalid bit patterns).
            unsafe { v.set_len(n) };
        } else {
            // SAFETY: as above for the first `init` elements; `resize` writes the rest.
            unsafe { v.set_len(init) };
            v.resize(n, 0.0);
            init = n;
        }
        if self.lent.len() >= 4 * Self::KEEP {
            // Buffers that never come back (graph outputs) must not pile up.
            self.lent.remove(0);
        }
        self.lent.push((v.as_ptr() as usize, init));
        v
    }

    fn give(&mut self, t: Tensor) {
        if let TensorData::F32(v) = t.data {
            if v.capacity() >= 1024 {
                let init = match self.lent.iter().position(|&(p, _)| p == v.as_ptr() as usize) {
                    Some(i) => self.lent.swap_remove(i).1.max(v.len()),
                    None => v.len(),
                };
                self.free.push((v, init));
                if self.free.len() > Self::KEEP {
                    // Drop the smallest.
                    let i = self.free.iter().enumerate().min_by_key(|(_, (v, _))| v.capacity()).map(|(i, _)| i).unwrap();
                    self.free.swap_remove(i);
                }
            }
        }
    }
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
        let (fusion, fused_into_conv, pad_into_conv) = plan_fusion(graph, &node_slots, &output_slots, slot_of.len());
        Fp32Executor { graph, slot_of, node_slots, frees, output_slots, input_slots, fusion, fused_into_conv, pad_into_conv, buffers: Mutex::new(BufferPool::default()) }
    }

    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// Run on the graph inputs (in `graph.inputs` order); returns the graph outputs in order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        self.execute(inputs, None, None)
    }

    /// [`Fp32Executor::run`] that also adds each node's wall time (seconds) to `times[i]`
    /// (`times` is resized to the node count). A node fused into its conv costs nothing of its
    /// own: its work is in the conv's time (see [`Fp32Executor::node_labels`]).
    pub fn run_profiled(
        &self,
        inputs: Vec<Tensor>,
        times: &mut Vec<f64>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        times.resize(self.graph.nodes.len(), 0.0);
        self.execute(inputs, None, Some(times))
    }

    /// Per node, in graph order: `Some((kind, detail))` for a node that runs as a step of its
    /// own, e.g. `("conv 1×1", "96→24 @ 20×20")`; `None` for one fused into the conv before it
    /// (BatchNormalization, Relu, Clip) or a Pad folded into the conv after it.
    pub fn node_labels(&self) -> Vec<Option<(String, String)>> {
        let g = self.graph;
        g.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if self.fused_into_conv[i] || self.pad_into_conv[i] {
                    return None;
                }
                let shape = |v: &str| g.shapes.get(v).map(Vec::as_slice).unwrap_or_default();
                Some(match (&n.op, shape(&n.inputs[0]), shape(&n.outputs[0])) {
                    (Op::Conv(c), x @ [_, _, _, _], y @ [_, _, _, _]) => conv_label(&conv_geometry(c, x, y)),
                    _ => (n.op.name().to_string(), n.name.clone()),
                })
            })
            .collect()
    }

    /// Run and show every node output to `observe(value_name, tensor)` as it is produced
    /// (calibration and per-layer error analysis hook in here).
    pub fn run_observed(&self, inputs: Vec<Tensor>, observe: &mut dyn FnMut(&str, &Tensor)) -> Result<Vec<Tensor>, RuntimeError> {
        self.execute(inputs, Some(observe), None)
    }

    fn execute(&self, inputs: Vec<Tensor>, mut observe: Option<&mut Observer<'_>>, mut times: Option<&mut Vec<f64>>) -> Result<Vec<Tensor>, RuntimeError> {
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
        // Another thread running the same executor gets a fresh pool rather than waiting.
        let mut pool = self.buffers.try_lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for (i, n) in g.nodes.iter().enumerate() {
            let t0 = times.is_some().then(std::time::Instant::now);
            if self.pad_into_conv[i] && observe.is_none() {
                // Pass the unpadded input through; the reading Conv pads it.
                let (ins, out) = &self.node_slots[i];
                let src = ins[0].expect("planned Pad reads a value");
                let t = if self.frees[i].contains(&src) { slots[src].take() } else { slots[src].clone() };
                slots[*out] = t;
            } else if !self.fused_into_conv[i] {
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
                match (&n.op, &self.fusion[i]) {
                    (Op::Conv(c), Some(f)) => {
                        let result = self.run_conv(n, c, f, &args, &mut pool, observe.as_deref_mut())?;
                        slots[self.node_slots[f.last_node(i)].1] = Some(result);
                    }
                    _ => {
                        let result = match (&n.op, &args[..]) {
                            // A residual sum of two same-shape tensors, into a pooled buffer: a
                            // fresh vector per Add faulted its pages in on every run (an
                            // EfficientNet-Lite0 56×56×24 sum took 45 µs).
                            (Op::Add, [Some(a), Some(b)]) if a.shape == b.shape && a.as_f32().is_ok() && b.as_f32().is_ok() => {
                                let (av, bv) = (a.as_f32().expect("checked"), b.as_f32().expect("checked"));
                                let mut sum = pool.take(av.len());
                                for ((s, &x), &y) in sum.iter_mut().zip(av).zip(bv) {
                                    *s = x + y;
                                }
                                Tensor { shape: a.shape.clone(), data: TensorData::F32(sum) }
                            }
                            _ => eval_node(n, &args, &mut pool.scratch)?,
                        };
                        if let Some(obs) = observe.as_deref_mut() {
                            obs(&n.outputs[0], &result);
                        }
                        slots[*out] = Some(result);
                    }
                }
            }
            for &s in &self.frees[i] {
                if let Some(t) = slots[s].take() {
                    pool.give(t);
                }
            }
            if let (Some(times), Some(t0)) = (times.as_deref_mut(), t0) {
                times[i] += t0.elapsed().as_secs_f64();
            }
        }
        let outputs = self.output_slots.iter().map(|&s| slots[s].take().ok_or_else(|| RuntimeError::Other("graph output was not computed".into()))).collect();
        if let Ok(mut p) = self.buffers.try_lock() {
            *p = pool;
        }
        outputs
    }

    /// A Conv node with its fused followers. Unobserved, the followers run inside the
    /// convolution's output pass; observed, they run in place one after another so every
    /// intermediate value is shown (the values are the same either way).
    #[allow(clippy::too_many_arguments)]
    fn run_conv(&self, n: &Node, c: &subq_ir::Conv2d, f: &ConvFusion, args: &[Option<&Tensor>], pool: &mut BufferPool, observe: Option<&mut Observer<'_>>) -> Result<Tensor, RuntimeError> {
        let padded;
        let c = match (f.pad, observe.is_some()) {
            (Some([t, l, b, r]), false) => {
                padded = subq_ir::Conv2d { pads: [c.pads[0] + t, c.pads[1] + l, c.pads[2] + b, c.pads[3] + r], ..c.clone() };
                &padded
            }
            _ => c,
        };
        let (x, geom, xv, wv, bias) = conv_operands(n, c, args)?;
        let batch = x.shape[0];
        let (isz, osz) = (geom.in_c * geom.in_h * geom.in_w, geom.out_c * geom.out_h * geom.out_w);
        let mut out = pool.take(batch * osz);
        let affine = f.bn.as_ref().map(|(_, s, b)| (&s[..], &b[..]));
        let clamp = f.act.map(|(_, lo, hi)| (lo, hi));
        let fused = if observe.is_some() { k::Epilogue::NONE } else { k::Epilogue { affine, clamp } };
        for b in 0..batch {
            k::conv2d_fused(&xv[b * isz..(b + 1) * isz], wv, bias, &geom, &fused, &mut out[b * osz..(b + 1) * osz], &mut pool.scratch);
        }
        let mut t = Tensor { shape: vec![batch, geom.out_c, geom.out_h, geom.out_w], data: TensorData::F32(out) };
        if let Some(obs) = observe {
            obs(&n.outputs[0], &t);
            let plane = geom.out_h * geom.out_w;
            let TensorData::F32(v) = &mut t.data else { unreachable!() };
            if let Some((j, _, _)) = &f.bn {
                let ep = k::Epilogue { affine, clamp: None };
                v.chunks_mut(osz).for_each(|img| ep.apply_planes(img, geom.out_c, plane));
                obs(&self.graph.nodes[*j].outputs[0], &t);
            }
            let TensorData::F32(v) = &mut t.data else { unreachable!() };
            if let Some((j, _, _)) = f.act {
                let ep = k::Epilogue { affine: None, clamp };
                v.chunks_mut(osz).for_each(|img| ep.apply_planes(img, geom.out_c, plane));
                obs(&self.graph.nodes[j].outputs[0], &t);
            }
        }
        Ok(t)
    }
}

/// Decide which nodes run fused into a preceding Conv: a BatchNormalization with constant
/// parameters and/or a Relu/Clip, each the only reader of the previous value, none of the
/// intermediate values a graph output. Every Conv gets an entry (possibly with no followers)
/// so all convolutions go through the pooled-buffer path.
fn plan_fusion(graph: &Graph, node_slots: &[(Vec<Option<usize>>, usize)], output_slots: &[usize], n_slots: usize) -> (Vec<Option<ConvFusion>>, Vec<bool>, Vec<bool>) {
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n_slots];
    for (i, (ins, _)) in node_slots.iter().enumerate() {
        for s in ins.iter().flatten() {
            readers[*s].push(i);
        }
    }
    // The single node reading value `slot` through its first input and nothing else.
    let sole_reader = |slot: usize| -> Option<usize> {
        match readers[slot][..] {
            [j] if !output_slots.contains(&slot) && node_slots[j].0.first() == Some(&Some(slot)) && node_slots[j].0[1..].iter().all(|s| s.is_none()) => Some(j),
            _ => None,
        }
    };
    let mut producer = vec![usize::MAX; n_slots];
    for (i, (_, out)) in node_slots.iter().enumerate() {
        producer[*out] = i;
    }
    let mut fusion: Vec<Option<ConvFusion>> = (0..graph.nodes.len()).map(|_| None).collect();
    let mut fused = vec![false; graph.nodes.len()];
    let mut pad_into = vec![false; graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        if !matches!(n.op, Op::Conv(_)) || n.outputs.len() != 1 {
            continue;
        }
        let mut f = ConvFusion { pad: None, bn: None, act: None };
        if let Some(Some(x)) = node_slots[i].0.first() {
            let p = producer[*x];
            if p != usize::MAX && sole_reader(*x) == Some(i) && graph.nodes[p].outputs.len() == 1 && matches!(node_slots[p].0.first(), Some(Some(_))) {
                if let Op::Pad { pads, value } = &graph.nodes[p].op {
                    // [n, c, h, w begins, n, c, h, w ends]: only non-negative zero padding of H and W.
                    if *value == 0.0 && pads.len() == 8 && pads.iter().all(|&v| v >= 0) && pads[0] == 0 && pads[1] == 0 && pads[4] == 0 && pads[5] == 0 {
                        f.pad = Some([pads[2] as usize, pads[3] as usize, pads[6] as usize, pads[7] as usize]);
                        pad_into[p] = true;
                    }
                }
            }
        }
        let mut cur = node_slots[i].1;
        if let Some(j) = sole_reader(cur) {
            if let Op::BatchNorm { epsilon } = graph.nodes[j].op {
                if let Some((scale, shift)) = bn_affine(graph, &graph.nodes[j], epsilon) {
                    f.bn = Some((j, scale, shift));
                    cur = node_slots[j].1;
                }
            }
        }
        if let Some(j) = sole_reader(cur) {
            match graph.nodes[j].op {
                Op::Relu => f.act = Some((j, 0.0, f32::INFINITY)),
                Op::Clip { min, max } => f.act = Some((j, min, max)),
                _ => {}
            }
        }
        for j in f.bn.as_ref().map(|b| b.0).into_iter().chain(f.act.map(|a| a.0)) {
            fused[j] = true;
        }
        fusion[i] = Some(f);
    }
    (fusion, fused, pad_into)
}

/// BatchNormalization as a per-channel (scale, shift), exactly as `eval_node` computes it;
/// None unless all four parameters are f32 initializers of one length.
fn bn_affine(graph: &Graph, n: &Node, epsilon: f32) -> Option<(Vec<f32>, Vec<f32>)> {
    if n.inputs.len() != 5 || n.outputs.len() != 1 {
        return None;
    }
    let p: Vec<&[f32]> = n.inputs[1..].iter().map(|name| graph.initializers.get(name)?.as_f32().ok()).collect::<Option<_>>()?;
    let (s, b, m, v) = (p[0], p[1], p[2], p[3]);
    if [b.len(), m.len(), v.len()].iter().any(|&l| l != s.len()) {
        return None;
    }
    let scale: Vec<f32> = s.iter().zip(v).map(|(&s, &v)| s / (v + epsilon).sqrt()).collect();
    let shift = scale.iter().zip(b.iter().zip(m)).map(|(&a, (&b, &m))| b - m * a).collect();
    Some((scale, shift))
}

type ConvOperands<'a> = (&'a Tensor, ConvGeometry, &'a [f32], &'a [f32], Option<&'a [f32]>);

/// Input, geometry, input values, weights and bias of a Conv node.
fn conv_operands<'a>(n: &Node, c: &subq_ir::Conv2d, args: &[Option<&'a Tensor>]) -> Result<ConvOperands<'a>, RuntimeError> {
    let x = arg(n, args, 0)?;
    let xv = f32_arg(n, args, 0)?;
    let w = arg(n, args, 1)?;
    let wv = w.as_f32().map_err(|e| node_err(n, e.to_string()))?;
    let bias = match args.get(2).copied().flatten() {
        Some(b) => Some(b.as_f32().map_err(|e| node_err(n, e.to_string()))?),
        None => None,
    };
    let [_, in_c, in_h, in_w] = x.shape[..] else { return Err(node_err(n, "input must be 4-D")) };
    let eff = |k: usize, d: usize| d * (k - 1) + 1;
    let out_h = (in_h + c.pads[0] + c.pads[2] - eff(c.kernel[0], c.dilations[0])) / c.strides[0] + 1;
    let out_w = (in_w + c.pads[1] + c.pads[3] - eff(c.kernel[1], c.dilations[1])) / c.strides[1] + 1;
    let geom = ConvGeometry { in_c, in_h, in_w, out_c: w.shape[0], out_h, out_w, kernel: c.kernel, strides: c.strides, dilations: c.dilations, pad_top: c.pads[0], pad_left: c.pads[1], group: c.group };
    Ok((x, geom, xv, wv, bias))
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
    // One operand whole and the other varying along one block of dimensions only (a per-channel
    // bound or scale [1, C, 1, 1], a scalar): element i of the whole one meets element
    // (i / inner) mod len of the other. This is every broadcast of the mobile CNNs (CLE's
    // ReLU6 bounds, the classifier's bias); the general loop below costs an index computation
    // per element and was a quarter of `subq quantize`'s time.
    let block = match (block_broadcast(&sb, &out_shape), block_broadcast(&sa, &out_shape)) {
        (Some((inner, len)), _) if sa == out_shape => Some((av, bv, inner, len, false)),
        (_, Some((inner, len))) if sb == out_shape => Some((bv, av, inner, len, true)),
        _ => None,
    };
    if let Some((whole, part, inner, len, part_first)) = block {
        let pairs = whole.chunks(inner).enumerate().flat_map(|(i, run)| {
            let p = part[i % len];
            run.iter().map(move |&w| if part_first { (p, w) } else { (w, p) })
        });
        return Ok(Tensor { shape: out_shape, data: TensorData::F32(pairs.map(|(x, y)| f(x, y)).collect()) });
    }
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

/// For an operand of (rank-padded) shape `s` broadcast to `out`: `(inner, len)` when its
/// non-1 dimensions are one contiguous block equal to `out`'s, `len` their product and `inner`
/// the product of `out`'s dimensions after the block (`len` = 1, `inner` = all for a scalar).
fn block_broadcast(s: &[usize], out: &[usize]) -> Option<(usize, usize)> {
    let varying: Vec<usize> = (0..s.len()).filter(|&d| s[d] != 1).collect();
    let (Some(&first), Some(&last)) = (varying.first(), varying.last()) else {
        // A single value.
        let total: usize = out.iter().product();
        return (total > 0).then_some((total, 1));
    };
    if varying.iter().any(|&d| s[d] != out[d]) || varying.len() != last + 1 - first {
        return None;
    }
    let inner: usize = out[last + 1..].iter().product();
    let len: usize = s.iter().product();
    (inner > 0 && len > 0).then_some((inner, len))
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

/// Evaluate one node on its inputs (None for omitted optional inputs).
pub fn eval_node(n: &Node, args: &[Option<&Tensor>], scratch: &mut Vec<f32>) -> Result<Tensor, RuntimeError> {
    let x = arg(n, args, 0)?;
    Ok(match &n.op {
        Op::Conv(c) => {
            let (x, geom, xv, wv, bias) = conv_operands(n, c, args)?;
            let batch = x.shape[0];
            let (isz, osz) = (geom.in_c * geom.in_h * geom.in_w, geom.out_c * geom.out_h * geom.out_w);
            let mut out = vec![0.0; batch * osz];
            for b in 0..batch {
                k::conv2d(&xv[b * isz..(b + 1) * isz], wv, bias, &geom, &mut out[b * osz..(b + 1) * osz], scratch);
            }
            Tensor { shape: vec![batch, geom.out_c, geom.out_h, geom.out_w], data: TensorData::F32(out) }
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
        Op::Min => broadcast_binary(n, x, arg(n, args, 1)?, |a, b| a.min(b))?,
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
            let (qp, _) = qdq_params(n, args, *axis, x.shape.len(), None)?;
            let xv = f32_arg(n, args, 0)?;
            let ch = |i: usize| qp.channel_of(&x.shape, i);
            let data = match qp.range {
                QuantRange::U8 => TensorData::U8(xv.iter().enumerate().map(|(i, &v)| qp.quantize_value(v, ch(i)) as u8).collect()),
                _ => TensorData::I8(xv.iter().enumerate().map(|(i, &v)| qp.quantize_value(v, ch(i)) as i8).collect()),
            };
            Tensor { shape: x.shape.clone(), data }
        }
        Op::DequantizeLinear { axis } => {
            let (qp, _) = qdq_params(n, args, *axis, x.shape.len(), Some(x.dtype()))?;
            let q = x.to_i32_vec();
            let out = q
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = qp.channel_of(&x.shape, i);
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

#[cfg(test)]
mod tests {
    use super::*;
    use subq_ir::{AutoPad, Conv2d};

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn node(name: &str, op: Op, inputs: &[&str], out: &str) -> Node {
        Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect(), outputs: vec![out.into()] }
    }

    fn conv(k: usize, stride: usize, pad: usize, group: usize) -> Op {
        Op::Conv(Conv2d { kernel: [k, k], strides: [stride, stride], dilations: [1, 1], pads: [pad; 4], auto_pad: AutoPad::NotSet, group })
    }

    /// x → Pad → depthwise Conv → BN → Clip → pointwise Conv → Relu → Conv 3×3 → BN (output),
    /// plus a Conv whose output is both a graph output and read by a Relu (must not fuse).
    fn graph() -> Graph {
        let mut g = Graph { name: "fuse".into(), opset: 13, ..Default::default() };
        let c = 4;
        g.inputs.push("x".into());
        g.shapes.insert("x".into(), vec![1, c, 9, 11]);
        g.dtypes.insert("x".into(), subq_tensor::DType::F32);
        let mut init = |name: &str, shape: Vec<usize>, seed: u64, pos: bool| {
            let n = shape.iter().product();
            let mut v = rnd(n, seed);
            if pos {
                v.iter_mut().for_each(|x| *x = x.abs() + 0.1);
            }
            g.initializers.insert(name.into(), Tensor::f32(shape, v).unwrap());
        };
        init("wd", vec![c, 1, 3, 3], 1, false);
        init("bd", vec![c], 2, false);
        for (p, s) in [("bn1", 10), ("bn2", 20)] {
            init(&format!("{p}_s"), vec![c], s, false);
            init(&format!("{p}_b"), vec![c], s + 1, false);
            init(&format!("{p}_m"), vec![c], s + 2, false);
            init(&format!("{p}_v"), vec![c], s + 3, true);
        }
        init("wp", vec![c, c, 1, 1], 3, false);
        init("w3", vec![c, c, 3, 3], 4, false);
        init("b3", vec![c], 5, false);
        g.nodes = vec![
            node("pad", Op::Pad { pads: vec![0, 0, 0, 1, 0, 0, 1, 2], value: 0.0 }, &["x"], "xp"),
            node("dw", conv(3, 2, 1, c), &["xp", "wd", "bd"], "d"),
            node("bn1", Op::BatchNorm { epsilon: 1e-3 }, &["d", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], "dn"),
            node("clip", Op::Clip { min: 0.0, max: 0.6 }, &["dn"], "da"),
            node("pw", conv(1, 1, 0, 1), &["da", "wp"], "p"),
            node("relu", Op::Relu, &["p"], "pa"),
            node("c3", conv(3, 1, 1, 1), &["pa", "w3", "b3"], "q"),
            node("bn2", Op::BatchNorm { epsilon: 1e-5 }, &["q", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], "y"),
            node("c4", conv(1, 1, 0, 1), &["pa", "wp"], "z"),
            node("relu2", Op::Relu, &["z"], "za"),
        ];
        g.outputs = vec!["y".into(), "z".into(), "za".into()];
        subq_ir::infer_shapes(&mut g).unwrap();
        g.validate().unwrap();
        g
    }

    #[test]
    fn fused_run_matches_observed_and_node_by_node() {
        let g = graph();
        let exec = Fp32Executor::new(&g);
        assert!(exec.fused_into_conv[2] && exec.fused_into_conv[3] && exec.fused_into_conv[5] && exec.fused_into_conv[7]);
        assert!(exec.pad_into_conv[0] && !exec.fused_into_conv[9], "a graph output is never fused away");
        let x = Tensor::f32(vec![1, 4, 9, 11], rnd(4 * 9 * 11, 7)).unwrap();

        // Node by node through eval_node: the reference values.
        let mut values: HashMap<String, Tensor> = HashMap::from([("x".to_string(), x.clone())]);
        for n in &g.nodes {
            let args: Vec<Option<&Tensor>> = n.inputs.iter().map(|i| values.get(i).or(g.initializers.get(i))).collect();
            let t = eval_node(n, &args, &mut Vec::new()).unwrap();
            values.insert(n.outputs[0].clone(), t);
        }
        let mut seen = HashMap::new();
        let observed = exec.run_observed(vec![x.clone()], &mut |name, t| {
            seen.insert(name.to_string(), t.clone());
        });
        let observed = observed.unwrap();
        let fused = exec.run(vec![x.clone()]).unwrap();
        // Twice: the second run reuses pooled buffers.
        let again = exec.run(vec![x]).unwrap();
        for n in &g.nodes {
            let name = &n.outputs[0];
            let (want, got) = (values[name].as_f32().unwrap(), seen[name].as_f32().unwrap());
            assert_eq!(values[name].shape, seen[name].shape, "{name}");
            for (a, b) in want.iter().zip(got) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{name}: {a} vs {b}");
            }
        }
        for (i, name) in g.outputs.iter().enumerate() {
            assert_eq!(fused[i].shape, values[name].shape);
            // Fused and observed runs compute the same values bit for bit.
            assert_eq!(fused[i].as_f32().unwrap(), observed[i].as_f32().unwrap(), "{name}");
            assert_eq!(again[i].as_f32().unwrap(), observed[i].as_f32().unwrap(), "{name}");
        }
    }
}
