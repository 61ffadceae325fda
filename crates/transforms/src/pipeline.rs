//! The ordered pass pipeline that prepares an FP32 graph for quantization.
//!
//! Order and why:
//! 1. `fold_pads` — explicit zero Pads become conv padding, so step 2 sees Conv→BN pairs and
//!    the quantized graph has no Pad to requantize through.
//! 2. `fold_batch_norms` — BN becomes part of the conv's weights and bias; quantization must see
//!    the folded weights (folding is what creates the wide per-channel range spread).

use subq_ir::Graph;

use crate::TransformError;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PrepareReport {
    pub pads_folded: usize,
    pub batch_norms_folded: usize,
}

pub fn prepare_for_quantization(g: &mut Graph) -> Result<PrepareReport, TransformError> {
    let pads_folded = crate::fold_pads(g)?;
    let batch_norms_folded = crate::fold_batch_norms(g)?;
    Ok(PrepareReport { pads_folded, batch_norms_folded })
}
