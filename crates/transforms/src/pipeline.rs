//! The ordered pass pipeline that prepares an FP32 graph for quantization.
//!
//! Order and why:
//! 1. `fold_pads` — explicit zero Pads become conv padding, so step 2 sees Conv→BN pairs and
//!    the quantized graph has no Pad to requantize through.
//! 2. `fold_batch_norms` — BN becomes part of the conv's weights and bias; quantization must see
//!    the folded weights (folding is what creates the wide per-channel range spread). Its
//!    statistics are kept for data-free quantization.
//! 3. (optional, `equalize`) cross-layer equalization — needs folded weights, and must come
//!    before calibration because it changes the activations' per-channel ranges.

use subq_ir::Graph;

use crate::TransformError;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PrepareReport {
    pub pads_folded: usize,
    pub batch_norms_folded: usize,
    #[serde(skip)]
    pub bn_stats: crate::bn_fold::BnStats,
}

pub fn prepare_for_quantization(g: &mut Graph) -> Result<PrepareReport, TransformError> {
    let pads_folded = crate::fold_pads(g)?;
    let bn_stats = crate::bn_fold::fold_batch_norms_with_stats(g)?;
    Ok(PrepareReport { pads_folded, batch_norms_folded: bn_stats.len(), bn_stats })
}
