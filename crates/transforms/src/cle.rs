//! Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization through Weight
//! Equalization and Bias Correction"), for conv → [activation] → conv pairs.
//!
//! Output channel i of the first conv is divided by s_i and the second conv's input channel i
//! multiplied by s_i, with s_i = √(r1_i / r2_i) (r = max |w| of the channel in each conv), raised
//! to `strength` (1 = full equalization, 0 = none). ReLU commutes with a positive scale; ReLU6 does
//! not, so a clip bound is kept exact by rescaling it per channel: Clip(0, 6) becomes
//! Min(Relu(x), bound[1,C,1,1]) with bound_i = 6 / s_i (never silently a plain ReLU).

use std::collections::BTreeMap;

use subq_ir::{Graph, Node, Op};
use subq_tensor::Tensor;

use crate::TransformError;

/// A conv → (Relu | Clip(0,m) | Relu → Min(const)) → conv chain, each link read only by the next.
pub(crate) struct Pair {
    pub(crate) first: usize,
    /// Min node of a rescaled ReLU6 bound, if any (Clip is rewritten before).
    pub(crate) min: Option<usize>,
    pub(crate) second: usize,
}

fn sole_consumer(g: &Graph, value: &str) -> Option<usize> {
    if g.outputs.iter().any(|o| o == value) {
        return None;
    }
    let c: Vec<usize> = g.nodes.iter().enumerate().filter(|(_, n)| n.inputs.iter().any(|i| i == value)).map(|(i, _)| i).collect();
    (c.len() == 1).then(|| c[0])
}

fn const_conv(g: &Graph, n: &Node) -> bool {
    matches!(n.op, Op::Conv(_)) && g.initializers.contains_key(&n.inputs[1])
}

/// Replace Clip(0, m) after a conv by Relu → Min(m per channel) so bounds can be rescaled.
fn split_clip(g: &mut Graph, clip: usize, channels: usize) -> Result<(), TransformError> {
    let Op::Clip { min, max } = g.nodes[clip].op else { unreachable!() };
    if min != 0.0 || !max.is_finite() {
        return Err(TransformError::Node { pass: "cle", node: g.nodes[clip].name.clone(), reason: "only Clip(0, m) can be equalized".into() });
    }
    let n = g.nodes[clip].clone();
    let relu_out = g.fresh_name(&format!("{}_relu", n.outputs[0]));
    let bound = g.fresh_name(&format!("{}_bound", n.name));
    g.initializers.insert(bound.clone(), Tensor::f32(vec![1, channels, 1, 1], vec![max; channels]).expect("len"));
    g.shapes.insert(bound.clone(), vec![1, channels, 1, 1]);
    g.dtypes.insert(bound.clone(), subq_tensor::DType::F32);
    g.shapes.insert(relu_out.clone(), g.shapes[&n.outputs[0]].clone());
    g.dtypes.insert(relu_out.clone(), subq_tensor::DType::F32);
    g.nodes[clip] = Node { name: format!("{}_relu", n.name), op: Op::Relu, inputs: n.inputs.clone(), outputs: vec![relu_out.clone()] };
    g.nodes.insert(clip + 1, Node { name: n.name.clone(), op: Op::Min, inputs: vec![relu_out, bound], outputs: n.outputs.clone() });
    Ok(())
}

pub(crate) fn find_pair(g: &mut Graph, first: usize) -> Result<Option<Pair>, TransformError> {
    if !const_conv(g, &g.nodes[first]) {
        return Ok(None);
    }
    let channels = g.initializers[&g.nodes[first].inputs[1]].shape[0];
    let Some(mut next) = sole_consumer(g, &g.nodes[first].outputs[0]) else { return Ok(None) };
    // Only a clip that sits between two convs becomes Relu → Min: a clip before anything else
    // (the head conv's ReLU6 before pooling) keeps its one bound, fused into its grid for free,
    // instead of a Min over a per-channel bound tensor that repeats one value.
    if matches!(g.nodes[next].op, Op::Clip { min, max } if min == 0.0 && max.is_finite()) {
        let feeds_conv = sole_consumer(g, &g.nodes[next].outputs[0]).is_some_and(|c| const_conv(g, &g.nodes[c]) && g.nodes[c].inputs[0] == g.nodes[next].outputs[0]);
        if !feeds_conv {
            return Ok(None);
        }
        split_clip(g, next, channels)?;
    }
    let (mut relu, mut min) = (None, None);
    if matches!(g.nodes[next].op, Op::Relu) {
        relu = Some(next);
        let Some(n2) = sole_consumer(g, &g.nodes[next].outputs[0]) else { return Ok(None) };
        next = n2;
        let is_bound = |g: &Graph, i: usize| matches!(g.nodes[i].op, Op::Min) && g.nodes[i].inputs[1] != g.nodes[i].inputs[0] && g.initializers.get(&g.nodes[i].inputs[1]).is_some_and(|t| t.len() == channels);
        if is_bound(g, next) {
            min = Some(next);
            let Some(n3) = sole_consumer(g, &g.nodes[next].outputs[0]) else { return Ok(None) };
            next = n3;
        }
    }
    let second = next;
    if !const_conv(g, &g.nodes[second]) || g.nodes[second].inputs[0] != g.nodes[min.or(relu).unwrap_or(first)].outputs[0] {
        return Ok(None);
    }
    Ok(Some(Pair { first, min, second }))
}

/// Max |w| per output channel (axis 0) and per input channel of a conv weight.
fn ranges(w: &Tensor, group: usize) -> (Vec<f32>, Vec<f32>) {
    let (o, i) = (w.shape[0], w.shape[1]);
    let taps = w.shape[2] * w.shape[3];
    let v = w.as_f32().expect("float weight");
    let mut per_out = vec![0f32; o];
    let mut per_in = vec![0f32; i * group];
    for oc in 0..o {
        let g = oc / (o / group);
        for ic in 0..i {
            for t in 0..taps {
                let a = v[(oc * i + ic) * taps + t].abs();
                per_out[oc] = per_out[oc].max(a);
                let c = g * i + ic;
                per_in[c] = per_in[c].max(a);
            }
        }
    }
    (per_out, per_in)
}

/// Per output channel, the factor CLE divided a conv's output by (all passes multiplied), keyed
/// by the conv's output value. Statistics kept from before CLE (the folded BN layers' β and γ
/// that data-free quantization starts from) scale by the same factors.
pub type ChannelScales = BTreeMap<String, Vec<f32>>;

/// Carry BN statistics through CLE: a channel whose output CLE divided by `s` is distributed as
/// N(β/s, (γ/s)²).
pub fn rescale_bn_stats(stats: &mut crate::bn_fold::BnStats, scales: &ChannelScales) {
    for (value, s) in scales {
        if let Some((beta, gamma)) = stats.get_mut(value) {
            for ((b, g), si) in beta.iter_mut().zip(gamma.iter_mut()).zip(s) {
                *b /= si;
                *g /= si;
            }
        }
    }
}

/// Equalize every conv pair `iterations` times. Returns the number of pairs equalized per pass.
pub fn equalize(g: &mut Graph, strength: f32, iterations: usize) -> Result<usize, TransformError> {
    equalize_with_scales(g, strength, iterations).map(|(pairs, _)| pairs)
}

/// [`equalize`], also returning the factors each equalized conv output was divided by.
pub fn equalize_with_scales(g: &mut Graph, strength: f32, iterations: usize) -> Result<(usize, ChannelScales), TransformError> {
    let mut pairs_seen = 0;
    let mut scales = ChannelScales::new();
    for _ in 0..iterations {
        pairs_seen = 0;
        let mut i = 0;
        while i < g.nodes.len() {
            if let Some(p) = find_pair(g, i)? {
                if let Some(s) = apply(g, &p, strength) {
                    let total = scales.entry(g.nodes[p.first].outputs[0].clone()).or_insert_with(|| vec![1.0; s.len()]);
                    total.iter_mut().zip(&s).for_each(|(t, si)| *t *= si);
                }
                pairs_seen += 1;
            }
            i += 1;
        }
    }
    g.validate()?;
    Ok((pairs_seen, scales))
}

/// Equalize one pair; returns the factors the first conv's output channels were divided by.
fn apply(g: &mut Graph, p: &Pair, strength: f32) -> Option<Vec<f32>> {
    let group_of = |n: &Node| if let Op::Conv(c) = &n.op { c.group } else { 1 };
    let (w1_name, w2_name) = (g.nodes[p.first].inputs[1].clone(), g.nodes[p.second].inputs[1].clone());
    let (r1, _) = ranges(&g.initializers[&w1_name], group_of(&g.nodes[p.first]));
    let (_, r2) = ranges(&g.initializers[&w2_name], group_of(&g.nodes[p.second]));
    if r1.len() != r2.len() {
        return None;
    }
    // Channels whose first-conv weights are (nearly) all zero carry only their bias: scaling
    // them up would blow that constant up to dominate the whole tensor's activation range
    // (MobileNetV2 collapsed to a constant output that way). They keep s = 1, and scales stay
    // within [1/MAX_SCALE, MAX_SCALE].
    const MAX_SCALE: f32 = 32.0;
    let r1_max = r1.iter().cloned().fold(0.0f32, f32::max);
    let s: Vec<f32> = r1
        .iter()
        .zip(&r2)
        .map(|(&a, &b)| if a > 1e-3 * r1_max && b > 0.0 { (a / b).sqrt().powf(strength).clamp(1.0 / MAX_SCALE, MAX_SCALE) } else { 1.0 })
        .collect();
    let c = s.len();
    {
        let w1 = g.initializers.get_mut(&w1_name).expect("weight");
        let per = w1.len() / c;
        for (i, v) in w1.as_f32_mut().expect("float").iter_mut().enumerate() {
            *v /= s[i / per];
        }
    }
    if let Some(b) = g.nodes[p.first].inputs.get(2).filter(|b| !b.is_empty()).cloned() {
        for (v, si) in g.initializers.get_mut(&b).expect("bias").as_f32_mut().expect("float").iter_mut().zip(&s) {
            *v /= si;
        }
    }
    {
        let group = group_of(&g.nodes[p.second]);
        let w2 = g.initializers.get_mut(&w2_name).expect("weight");
        let (o, i) = (w2.shape[0], w2.shape[1]);
        let taps = w2.shape[2] * w2.shape[3];
        let v = w2.as_f32_mut().expect("float");
        for oc in 0..o {
            let grp = oc / (o / group);
            for ic in 0..i {
                let ch = grp * i + ic;
                for t in 0..taps {
                    v[(oc * i + ic) * taps + t] *= s[ch];
                }
            }
        }
    }
    if let Some(m) = p.min {
        let bound = g.nodes[m].inputs[1].clone();
        for (v, si) in g.initializers.get_mut(&bound).expect("bound").as_f32_mut().expect("float").iter_mut().zip(&s) {
            *v /= si;
        }
    }
    Some(s)
}
