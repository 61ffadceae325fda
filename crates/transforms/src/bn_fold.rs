//! Fold BatchNormalization into the preceding Conv or Gemm:
//! y = γ·(W·x + b − μ)/√(σ²+ε) + β  ⇒  W' = a·W, b' = a·(b − μ) + β with a = γ/√(σ²+ε).

use subq_ir::{Graph, Op};
use subq_tensor::Tensor;

use crate::TransformError;

/// Per-channel (β, |γ|) of a folded BatchNormalization, by the folded layer's output value: under
/// BN's own assumption that output channel c is distributed as N(β_c, γ_c²), which is what
/// data-free quantization estimates ranges and bias shifts from.
pub type BnStats = std::collections::BTreeMap<String, (Vec<f32>, Vec<f32>)>;

/// Returns how many BatchNormalization nodes were folded. A BN whose input is not the sole use of
/// a Conv/Gemm output (or whose parameters are not constants) is left in place.
pub fn fold_batch_norms(g: &mut Graph) -> Result<usize, TransformError> {
    fold_batch_norms_with_stats(g).map(|s| s.len())
}

pub fn fold_batch_norms_with_stats(g: &mut Graph) -> Result<BnStats, TransformError> {
    let mut stats = BnStats::new();
    loop {
        let producers = g.producers();
        let consumers = g.consumers();
        let candidate = g.nodes.iter().enumerate().find_map(|(bi, bn)| {
            let Op::BatchNorm { epsilon } = bn.op else { return None };
            let pi = *producers.get(bn.inputs[0].as_str())?;
            let p = &g.nodes[pi];
            let foldable = matches!(p.op, Op::Conv(_) | Op::Gemm { trans_b: true, .. })
                && consumers.get(bn.inputs[0].as_str()).is_some_and(|c| c.len() == 1)
                && !g.outputs.contains(&bn.inputs[0])
                && g.initializers.contains_key(&p.inputs[1])
                && bn.inputs[1..].iter().all(|i| g.initializers.contains_key(i));
            foldable.then_some((pi, bi, epsilon))
        });
        let Some((pi, bi, eps)) = candidate else { break };
        let bn = g.nodes[bi].clone();
        let prod = g.nodes[pi].clone();
        let param = |i: usize| g.initializers[&bn.inputs[i]].to_f32_vec();
        let (gamma, beta, mean, var) = (param(1), param(2), param(3), param(4));
        stats.insert(bn.outputs[0].clone(), (beta.clone(), gamma.iter().map(|x| x.abs()).collect()));
        let a: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let w = g.initializers.get(&prod.inputs[1]).cloned().expect("checked");
        let out_c = w.shape[0];
        if out_c != a.len() {
            return Err(TransformError::Node { pass: "bn_fold", node: bn.name, reason: format!("{} channels but the weight has {out_c} outputs", a.len()) });
        }
        let per = w.len() / out_c;
        let wv: Vec<f32> = w.to_f32_vec().chunks(per).zip(&a).flat_map(|(row, &s)| row.iter().map(move |x| x * s)).collect();
        let old_bias = prod.inputs.get(2).filter(|s| !s.is_empty()).map(|b| g.initializers[b].to_f32_vec()).unwrap_or_else(|| vec![0.0; out_c]);
        let bias: Vec<f32> = (0..out_c).map(|c| a[c] * (old_bias[c] - mean[c]) + beta[c]).collect();
        // New names so that weights shared with another node are never modified in place.
        let w_name = g.fresh_name(&format!("{}.weight_folded", prod.name));
        g.initializers.insert(w_name.clone(), Tensor::f32(w.shape.clone(), wv).expect("same size"));
        let b_name = g.fresh_name(&format!("{}.bias_folded", prod.name));
        g.initializers.insert(b_name.clone(), Tensor::f32(vec![out_c], bias).expect("len"));
        let p = &mut g.nodes[pi];
        p.inputs.truncate(1);
        p.inputs.push(w_name.clone());
        p.inputs.push(b_name.clone());
        g.shapes.insert(w_name.clone(), w.shape.clone());
        g.shapes.insert(b_name.clone(), vec![out_c]);
        g.dtypes.insert(w_name, subq_tensor::DType::F32);
        g.dtypes.insert(b_name, subq_tensor::DType::F32);
        // The producer now writes the BN's output directly.
        let old_out = std::mem::replace(&mut g.nodes[pi].outputs[0], bn.outputs[0].clone());
        g.shapes.remove(&old_out);
        g.nodes.remove(bi);
    }
    g.remove_dead();
    g.validate()?;
    Ok(stats)
}
