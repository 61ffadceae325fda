//! Function-preserving graph passes on FP32 graphs, one pass per file.

pub mod bias_absorption;
pub mod bn_fold;
pub mod cle;
pub mod dequantize;
pub mod pad_fold;
pub mod pipeline;

pub use bias_absorption::absorb_high_biases;
pub use bn_fold::fold_batch_norms;
pub use cle::{equalize, equalize_with_scales, rescale_bn_stats, ChannelScales};
pub use dequantize::dequantize_qdq;
pub use pad_fold::fold_pads;
pub use pipeline::{prepare_for_quantization, PrepareReport};

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("pass {pass}: node '{node}': {reason}")]
    Node { pass: &'static str, node: String, reason: String },
    #[error(transparent)]
    Ir(#[from] subq_ir::IrError),
}
