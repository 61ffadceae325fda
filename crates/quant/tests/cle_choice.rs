//! The subtensor scheme's automatic CLE choice keeps equalization only when its per-channel ReLU6
//! bounds and the splits fit the size budget together.

mod common;

use common::{input, seed_fp32_graph};
use subq_quant::{quantize, QuantConfig, Scheme};
use subq_tensor::Tensor;

/// The seed graph with a depthwise kernel whose channels span 100× in range: the case CLE exists
/// for, so that it wins the calibration comparison.
fn graph_that_needs_cle() -> subq_ir::Graph {
    let mut g = seed_fp32_graph();
    let w = g.initializers.get_mut("w2").unwrap().as_f32_mut().unwrap();
    for (i, v) in w.iter_mut().enumerate() {
        if (i / 9) % 2 == 0 {
            *v *= 0.01;
        }
    }
    g
}

#[test]
fn cle_bounds_count_against_the_size_budget() {
    let g = graph_that_needs_cle();
    let inputs: Vec<Tensor> = (1..=8).map(input).collect();
    // Without splits, which would otherwise absorb the spread themselves.
    let config = || {
        let mut c = QuantConfig::new(Scheme::Subtensor);
        c.split = false;
        c
    };
    let mut forced = config();
    forced.cle_auto = false;
    forced.cle = true;
    let (_, with_cle) = quantize(&g, &inputs, &forced, false).unwrap();
    assert!(with_cle.bound_bytes > 0, "CLE on the seed graph's ReLU6 links should leave bounds");

    // A budget below the bounds alone: CLE cannot be kept, whatever the SQNR says.
    let mut tight = config();
    tight.subtensor.size_budget = 0.5 * with_cle.bound_bytes as f64 / with_cle.weight_bytes as f64;
    let (_, s) = quantize(&g, &inputs, &tight, false).unwrap();
    assert!(s.cle_over_size_budget && !s.cle, "tight budget: over {} / cle {}", s.cle_over_size_budget, s.cle);

    // A generous budget: the calibration SQNR decides, as before.
    let mut loose = config();
    loose.subtensor.size_budget = 1.0;
    let (_, s) = quantize(&g, &inputs, &loose, false).unwrap();
    let (off, on) = s.cle_choice_sqnr_db.unwrap();
    assert!(!s.cle_over_size_budget);
    assert!(on > off, "CLE should win on this graph: {off:.2} dB without, {on:.2} dB with");
    assert!(s.cle, "loose budget: CLE wins ({off:.2} vs {on:.2} dB) and fits, so it is kept");
}
