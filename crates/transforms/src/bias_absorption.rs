//! High-bias absorption (Nagel et al. 2019, §4.2): in a conv → ReLU[6] → conv chain, a channel
//! whose pre-activation x never falls below c > 0 passes ReLU unchanged, so
//! relu(x) = relu(x − c) + c: subtract c from the first conv's bias (and from the channel's
//! ReLU6 bound) and add W2·c to the second conv's bias. The activation between the convs loses
//! its constant offset, which shrinks its range, and with it the per-tensor quantization step.
//!
//! Exact wherever x ≥ c, which is why `c` comes from the caller as a per-channel lower bound of
//! the pre-activation (subq uses the minimum observed on the calibration images). Only chains
//! whose second conv has no padding are touched: at a zero-padded border the absorbed constant
//! would be missing, so the rewrite would no longer preserve the output.

use std::collections::BTreeMap;

use subq_ir::{Graph, Op};
use subq_tensor::Tensor;

use crate::cle::find_pair;
use crate::TransformError;

/// Absorb per-channel offsets. `lower_bounds` maps a conv's output value (the pre-activation)
/// to a per-channel lower bound of it; channels with a bound ≤ 0 are left alone. Returns the
/// number of conv pairs changed.
pub fn absorb_high_biases(g: &mut Graph, lower_bounds: &BTreeMap<String, Vec<f32>>) -> Result<usize, TransformError> {
    let mut changed = 0;
    let mut i = 0;
    while i < g.nodes.len() {
        let candidate = g.nodes[i].outputs.first().and_then(|o| lower_bounds.get(o)).cloned();
        let Some(lower) = candidate else {
            i += 1;
            continue;
        };
        // find_pair also rewrites a Clip(0, m) into Relu → Min(per-channel bound).
        let Some(pair) = find_pair(g, i)? else {
            i += 1;
            continue;
        };
        let Op::Conv(second) = &g.nodes[pair.second].op else { unreachable!("find_pair returns convs") };
        let second_group = second.group;
        if second.pads.iter().any(|&p| p != 0) || g.nodes[pair.first].inputs.get(2).is_none_or(|b| b.is_empty()) {
            i += 1;
            continue;
        }
        let channels = g.initializers[&g.nodes[pair.first].inputs[1]].shape[0];
        if lower.len() != channels {
            return Err(TransformError::Node { pass: "bias-absorption", node: g.nodes[i].name.clone(), reason: format!("{} lower bounds for {channels} channels", lower.len()) });
        }
        // With a ReLU6 bound b the channel output is min(x, b); absorbing c ≤ b keeps it exact
        // (min(x − c, b − c) + c), so c is capped at the bound.
        let bound = pair.min.map(|m| g.initializers[&g.nodes[m].inputs[1]].to_f32_vec());
        let c: Vec<f32> = (0..channels).map(|k| lower[k].max(0.0).min(bound.as_ref().map_or(f32::INFINITY, |b| b[k]))).collect();
        if c.iter().all(|&v| v == 0.0) {
            i += 1;
            continue;
        }
        let b1 = g.nodes[pair.first].inputs[2].clone();
        for (v, ck) in g.initializers.get_mut(&b1).expect("bias").as_f32_mut().expect("float bias").iter_mut().zip(&c) {
            *v -= ck;
        }
        if let Some(m) = pair.min {
            let name = g.nodes[m].inputs[1].clone();
            for (v, ck) in g.initializers.get_mut(&name).expect("bound").as_f32_mut().expect("float bound").iter_mut().zip(&c) {
                *v -= ck;
            }
        }
        let shift = second_bias_shift(&g.initializers[&g.nodes[pair.second].inputs[1]], second_group, &c);
        let second_node = pair.second;
        let bias_name = match g.nodes[second_node].inputs.get(2).filter(|b| !b.is_empty()) {
            Some(b) => b.clone(),
            None => {
                let name = g.fresh_name(&format!("{}_bias", g.nodes[second_node].name));
                g.initializers.insert(name.clone(), Tensor::f32(vec![shift.len()], vec![0.0; shift.len()]).expect("len"));
                g.shapes.insert(name.clone(), vec![shift.len()]);
                g.dtypes.insert(name.clone(), subq_tensor::DType::F32);
                g.nodes[second_node].inputs.resize(2, String::new());
                g.nodes[second_node].inputs.push(name.clone());
                name
            }
        };
        for (v, s) in g.initializers.get_mut(&bias_name).expect("bias").as_f32_mut().expect("float bias").iter_mut().zip(&shift) {
            *v += *s as f32;
        }
        changed += 1;
        i += 1;
    }
    g.validate()?;
    Ok(changed)
}

/// W2·c per output channel of the second conv: what the absorbed constants contribute.
fn second_bias_shift(w: &Tensor, group: usize, c: &[f32]) -> Vec<f64> {
    let (o, i) = (w.shape[0], w.shape[1]);
    let taps: usize = w.shape[2..].iter().product();
    let v = w.as_f32().expect("float weight");
    (0..o)
        .map(|oc| {
            let grp = oc / (o / group);
            (0..i).map(|ic| c[grp * i + ic] as f64 * (0..taps).map(|t| v[(oc * i + ic) * taps + t] as f64).sum::<f64>()).sum()
        })
        .collect()
}
