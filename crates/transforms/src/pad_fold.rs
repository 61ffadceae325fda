//! Fold a constant zero Pad that only pads H and W into the following Conv's `pads`.
//! Keras-exported MobileNetV2 pads explicitly before stride-2 depthwise convolutions; folded, the
//! convolution sees the same zeros and the quantized model needs no separate Pad.

use subq_ir::{Graph, Op};

use crate::TransformError;

pub fn fold_pads(g: &mut Graph) -> Result<usize, TransformError> {
    let mut folded = 0;
    loop {
        let consumers = g.consumers();
        let found = g.nodes.iter().enumerate().find_map(|(pi, p)| {
            let Op::Pad { pads, value } = &p.op else { return None };
            // Only H/W padding (NCHW: axes 2 and 3), non-negative, by zeros.
            let spatial_only = pads.len() == 8 && pads[0] == 0 && pads[1] == 0 && pads[4] == 0 && pads[5] == 0;
            if *value != 0.0 || !spatial_only || g.outputs.contains(&p.outputs[0]) {
                return None;
            }
            let users = consumers.get(p.outputs[0].as_str())?;
            let all_convs = users.iter().all(|&ci| matches!(g.nodes[ci].op, Op::Conv(_)) && g.nodes[ci].inputs[0] == p.outputs[0]);
            all_convs.then(|| (pi, users.clone(), [pads[2] as usize, pads[3] as usize, pads[6] as usize, pads[7] as usize]))
        });
        let Some((pi, users, extra)) = found else { break };
        let src = g.nodes[pi].inputs[0].clone();
        for ci in users {
            let n = &mut g.nodes[ci];
            if let Op::Conv(c) = &mut n.op {
                for (p, e) in c.pads.iter_mut().zip(extra) {
                    *p += e;
                }
            }
            n.inputs[0] = src.clone();
        }
        g.nodes.remove(pi);
        folded += 1;
    }
    g.remove_dead();
    g.validate()?;
    Ok(folded)
}
