//! subq's graph IR: a static-shape, topologically ordered graph over a closed set of ops.
//!
//! Everything the importer accepts becomes an [`Op`]; everything downstream (passes,
//! quantization, engines, the exporter) matches on that enum, so an op the toolkit does not
//! understand can never slip through silently.

mod graph;
mod op;
mod shape;

pub use graph::{Graph, Node};
pub use op::{AutoPad, Conv2d, Op, Pool2d};
pub use shape::infer_shapes;

#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("node '{node}' ({op}): {reason}")]
    Node { node: String, op: String, reason: String },
    #[error("value '{0}' is used but never produced (not a graph input, initializer or node output)")]
    Undefined(String),
    #[error("value '{0}' is produced twice")]
    Redefined(String),
    #[error("graph: {0}")]
    Graph(String),
}

impl IrError {
    pub fn node(node: &Node, reason: impl Into<String>) -> IrError {
        IrError::Node { node: node.name.clone(), op: node.op.name().to_string(), reason: reason.into() }
    }
}
