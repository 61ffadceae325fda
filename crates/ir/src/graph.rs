use std::collections::{BTreeMap, HashMap, HashSet};

use subq_tensor::{DType, Tensor};

use crate::{IrError, Op};

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// Value names; "" marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A static-shape graph. Nodes are kept in topological order; every value (graph input,
/// initializer, node output) has a shape and dtype after [`crate::infer_shapes`].
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub nodes: Vec<Node>,
    pub initializers: BTreeMap<String, Tensor>,
    pub shapes: BTreeMap<String, Vec<usize>>,
    pub dtypes: BTreeMap<String, DType>,
    /// Model-level metadata (ONNX `metadata_props`), kept sorted for deterministic export.
    pub metadata: BTreeMap<String, String>,
    pub opset: i64,
}

impl Graph {
    pub fn shape(&self, value: &str) -> Option<&[usize]> {
        self.shapes.get(value).map(|s| s.as_slice())
    }

    pub fn initializer(&self, value: &str) -> Option<&Tensor> {
        self.initializers.get(value)
    }

    /// Index of the node producing each value.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                m.insert(o.as_str(), i);
            }
        }
        m
    }

    /// Indices of the nodes reading each value (graph outputs are not counted).
    pub fn consumers(&self) -> HashMap<&str, Vec<usize>> {
        let mut m: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                m.entry(inp.as_str()).or_default().push(i);
            }
        }
        m
    }

    /// A name not used by any value or node yet, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let used = |s: &str| {
            self.shapes.contains_key(s)
                || self.initializers.contains_key(s)
                || self.nodes.iter().any(|n| n.name == s || n.outputs.iter().any(|o| o == s))
        };
        if !used(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}_{i}")).find(|c| !used(c)).expect("unbounded")
    }

    /// Replace every read of `old` by `new` (node inputs and graph outputs).
    pub fn replace_uses(&mut self, old: &str, new: &str) {
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if i == old {
                    *i = new.to_string();
                }
            }
        }
        for o in &mut self.outputs {
            if o == old {
                *o = new.to_string();
            }
        }
    }

    /// Drop nodes whose outputs nobody reads and initializers nobody uses.
    pub fn remove_dead(&mut self) {
        loop {
            let mut live: HashSet<String> = self.outputs.iter().cloned().collect();
            for n in &self.nodes {
                live.extend(n.inputs.iter().cloned());
            }
            let before = self.nodes.len();
            self.nodes.retain(|n| n.outputs.iter().any(|o| live.contains(o)));
            if self.nodes.len() == before {
                self.initializers.retain(|k, _| live.contains(k));
                let keep: HashSet<String> = live
                    .into_iter()
                    .chain(self.inputs.iter().cloned())
                    .chain(self.nodes.iter().flat_map(|n| n.outputs.iter().cloned()))
                    .collect();
                self.shapes.retain(|k, _| keep.contains(k));
                self.dtypes.retain(|k, _| keep.contains(k));
                return;
            }
        }
    }

    /// Reorder nodes topologically (stable: keeps the existing order where it is valid).
    pub fn toposort(&mut self) -> Result<(), IrError> {
        let mut available: HashSet<String> =
            self.inputs.iter().chain(self.initializers.keys()).cloned().collect();
        available.insert(String::new());
        let mut pending: Vec<Node> = std::mem::take(&mut self.nodes);
        let mut sorted = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for n in pending {
                if n.inputs.iter().all(|i| available.contains(i)) {
                    available.extend(n.outputs.iter().cloned());
                    sorted.push(n);
                } else {
                    rest.push(n);
                }
            }
            if rest.len() == before {
                let n = &rest[0];
                let missing = n.inputs.iter().find(|i| !available.contains(*i)).cloned().unwrap_or_default();
                self.nodes = sorted.into_iter().chain(rest).collect();
                return Err(IrError::Undefined(missing));
            }
            pending = rest;
        }
        self.nodes = sorted;
        Ok(())
    }

    /// Structural checks: every value defined once before use, arities respected, every value
    /// has a shape, graph outputs exist.
    pub fn validate(&self) -> Result<(), IrError> {
        let mut defined: HashSet<&str> = HashSet::new();
        for i in &self.inputs {
            if self.initializers.contains_key(i) {
                return Err(IrError::Graph(format!("input '{i}' is also an initializer")));
            }
            if !defined.insert(i) {
                return Err(IrError::Redefined(i.clone()));
            }
        }
        for k in self.initializers.keys() {
            defined.insert(k);
        }
        for n in &self.nodes {
            let (lo, hi) = n.op.arity();
            let given = n.inputs.len();
            if given < lo || given > hi {
                return Err(IrError::node(n, format!("takes {lo}..{hi} inputs, has {given}")));
            }
            for i in n.inputs.iter().filter(|s| !s.is_empty()) {
                if !defined.contains(i.as_str()) {
                    return Err(IrError::node(n, format!("input '{i}' is not defined before this node")));
                }
            }
            for o in &n.outputs {
                if !defined.insert(o) {
                    return Err(IrError::Redefined(o.clone()));
                }
                if !self.shapes.contains_key(o) {
                    return Err(IrError::node(n, format!("output '{o}' has no inferred shape")));
                }
            }
        }
        for o in &self.outputs {
            if !defined.contains(o.as_str()) {
                return Err(IrError::Undefined(o.clone()));
            }
        }
        Ok(())
    }

    /// Total number of weight parameters (elements of initializers).
    pub fn param_count(&self) -> usize {
        self.initializers.values().map(|t| t.len()).sum()
    }

    pub fn is_quantized(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.op, Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. }))
    }
}
