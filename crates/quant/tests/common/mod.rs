//! A small FP32 CNN built in code (no file needed), a reproducible random stream, and the
//! bundled assets (images, logits SQNR against FP32), shared by the quantizer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use subq_calib::{list_images, preprocess::Preprocess};
use subq_ir::{Conv2d, Graph, Node, Op};
use subq_runtime::Fp32Executor;
use subq_tensor::{DType, Tensor};

pub fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// Images `range` of the bundled folder `dir` (`calib` or `eval`), preprocessed with `preset`.
pub fn images(dir: &str, preset: &str, size: usize, range: std::ops::Range<usize>) -> Vec<Tensor> {
    let items = list_images(&assets().join("images").join(dir)).unwrap();
    let pre = Preprocess::preset(preset).unwrap();
    items[range].iter().map(|it| Tensor::f32(vec![1, 3, size, size], pre.load(&it.path, size, size).unwrap()).unwrap()).collect()
}

/// Logits SQNR (dB) of `model` against `reference` over all logits of `inputs`.
pub fn logits_sqnr_db(reference: &Fp32Executor, model: &Fp32Executor, inputs: &[Tensor]) -> f64 {
    let logits = |e: &Fp32Executor| -> Vec<f32> { inputs.iter().flat_map(|x| e.run(vec![x.clone()]).unwrap().remove(0).to_f32_vec()).collect() };
    subq_tensor::sqnr_db(&logits(reference), &logits(model))
}

/// xorshift64*: a reproducible stream from one seed (a failure is replayed from its seed).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn conv(kernel: usize, stride: usize, group: usize) -> Op {
    let p = kernel / 2;
    Op::Conv(Conv2d { kernel: [kernel; 2], strides: [stride; 2], dilations: [1, 1], pads: [p; 4], auto_pad: subq_ir::AutoPad::NotSet, group })
}

/// conv 3×3/2 → ReLU6 → depthwise 3×3 → ReLU6 → pointwise → residual Add → global pool → Gemm,
/// input 1×3×16×16, 5 outputs, seeded random weights.
pub fn seed_fp32_graph() -> Graph {
    let mut rng = Rng(0x5eed);
    let mut g = Graph { name: "fuzz_seed".into(), inputs: vec!["x".into()], outputs: vec!["logits".into()], opset: 13, ..Default::default() };
    let mut init = |g: &mut Graph, name: &str, shape: Vec<usize>, scale: f32| {
        let n: usize = shape.iter().product();
        g.initializers.insert(name.into(), Tensor::f32(shape, (0..n).map(|_| rng.f32() * scale).collect()).unwrap());
    };
    init(&mut g, "w1", vec![8, 3, 3, 3], 0.5);
    init(&mut g, "b1", vec![8], 0.1);
    init(&mut g, "w2", vec![8, 1, 3, 3], 1.0);
    init(&mut g, "b2", vec![8], 0.1);
    init(&mut g, "w3", vec![8, 8, 1, 1], 0.5);
    init(&mut g, "b3", vec![8], 0.1);
    init(&mut g, "fc_w", vec![5, 8], 0.5);
    init(&mut g, "fc_b", vec![5], 0.1);
    let node = |name: &str, op: Op, inputs: &[&str], out: &str| Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect(), outputs: vec![out.into()] };
    g.nodes = vec![
        node("conv1", conv(3, 2, 1), &["x", "w1", "b1"], "c1"),
        node("relu1", Op::Clip { min: 0.0, max: 6.0 }, &["c1"], "r1"),
        node("dw", conv(3, 1, 8), &["r1", "w2", "b2"], "c2"),
        node("relu2", Op::Clip { min: 0.0, max: 6.0 }, &["c2"], "r2"),
        node("pw", conv(1, 1, 1), &["r2", "w3", "b3"], "c3"),
        node("add", Op::Add, &["c3", "r1"], "sum"),
        node("pool", Op::GlobalAveragePool, &["sum"], "pooled"),
        node("flat", Op::Flatten { axis: 1 }, &["pooled"], "flat"),
        node("fc", Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, &["flat", "fc_w", "fc_b"], "logits"),
    ];
    g.shapes.insert("x".into(), vec![1, 3, 16, 16]);
    g.dtypes.insert("x".into(), DType::F32);
    subq_ir::infer_shapes(&mut g).unwrap();
    g.validate().unwrap();
    g
}

pub fn input(seed: u64) -> Tensor {
    let mut rng = Rng(seed);
    Tensor::f32(vec![1, 3, 16, 16], (0..768).map(|_| rng.f32() * 2.0).collect()).unwrap()
}

