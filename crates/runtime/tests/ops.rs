//! Every `subq_ir::Op` run by the FP32 executor on a one-node graph, compared with values
//! computed by hand (each expected literal says how it was derived).

use subq_ir::{AutoPad, Conv2d, Graph, IrError, Node, Op, Pool2d};
use subq_runtime::{Fp32Executor, RuntimeError};
use subq_tensor::{DType, Tensor, TensorData};

/// A node argument: a graph input (fed at run time) or an initializer.
enum Arg {
    In(&'static str, Tensor),
    Const(&'static str, Tensor),
    /// An omitted optional input ("").
    Omitted,
}
use Arg::{Const, In, Omitted};

fn f32t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::f32(shape.to_vec(), data.to_vec()).unwrap()
}

fn u8t(shape: &[usize], data: &[u8]) -> Tensor {
    Tensor::new(shape.to_vec(), TensorData::U8(data.to_vec())).unwrap()
}

fn i8t(shape: &[usize], data: &[i8]) -> Tensor {
    Tensor::new(shape.to_vec(), TensorData::I8(data.to_vec())).unwrap()
}

/// Build a one-node graph (node "n", output "y"), infer shapes and validate. Returns the graph and
/// the run-time input tensors in graph-input order.
fn build(op: Op, args: Vec<Arg>) -> Result<(Graph, Vec<Tensor>), IrError> {
    let mut g = Graph { name: "t".into(), opset: 13, ..Default::default() };
    let mut feeds = Vec::new();
    let mut node_inputs = Vec::new();
    for a in args {
        match a {
            In(name, t) => {
                g.inputs.push(name.into());
                g.shapes.insert(name.into(), t.shape.clone());
                g.dtypes.insert(name.into(), t.dtype());
                node_inputs.push(name.to_string());
                feeds.push(t);
            }
            Const(name, t) => {
                g.initializers.insert(name.into(), t);
                node_inputs.push(name.to_string());
            }
            Omitted => node_inputs.push(String::new()),
        }
    }
    g.nodes.push(Node { name: "n".into(), op, inputs: node_inputs, outputs: vec!["y".into()] });
    g.outputs.push("y".into());
    subq_ir::infer_shapes(&mut g)?;
    g.validate()?;
    Ok((g, feeds))
}

/// Build, run, and check that the executor's output shape equals the inferred one.
fn run(op: Op, args: Vec<Arg>) -> Tensor {
    let (g, feeds) = build(op, args).expect("graph builds");
    let out = Fp32Executor::new(&g).run(feeds).expect("graph runs").remove(0);
    assert_eq!(out.shape, g.shapes["y"], "executor shape differs from inferred shape");
    assert_eq!(out.dtype(), g.dtypes["y"], "executor dtype differs from inferred dtype");
    out
}

#[track_caller]
fn assert_close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
    assert_eq!(got.shape, shape, "shape");
    let v = got.as_f32().expect("f32 output");
    assert_eq!(v.len(), want.len(), "element count");
    for (i, (&a, &b)) in v.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "element {i}: got {a}, want {b}\n got: {v:?}\nwant: {want:?}");
    }
}

fn conv(kernel: [usize; 2], strides: [usize; 2], dilations: [usize; 2], pads: [usize; 4], group: usize) -> Op {
    Op::Conv(Conv2d { kernel, strides, dilations, pads, auto_pad: AutoPad::NotSet, group })
}

fn pool(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], count_include_pad: bool, ceil_mode: bool) -> Pool2d {
    Pool2d { kernel, strides, pads, auto_pad: AutoPad::NotSet, count_include_pad, ceil_mode }
}

/// 1..=9 as a 3×3 plane:
/// 1 2 3
/// 4 5 6
/// 7 8 9
const ONE_TO_NINE: [f32; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];

// ---------------------------------------------------------------------------------------------
// Conv
// ---------------------------------------------------------------------------------------------

#[test]
fn conv_3x3_pad1_with_bias_is_cross_correlation() {
    // Two output channels on x = 1..9 (3×3), pads 1:
    //  ch0: all-ones kernel, bias 0.5 → zero-padded 3×3 box sums + 0.5
    //       box sums: 1+2+4+5=12, 1..6=21, 2+3+5+6=16, 27, 45, 33, 24, 39, 28
    //  ch1: kernel with a single 1 at (0,0), bias −1 → out(y,x) = x(y−1,x−1) − 1 (0 outside);
    //       this is orientation-sensitive (a flipped kernel would read x(y+1,x+1)).
    let mut w = vec![1.0; 9];
    w.extend([1., 0., 0., 0., 0., 0., 0., 0., 0.]);
    let y = run(
        conv([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 1),
        vec![In("x", f32t(&[1, 1, 3, 3], &ONE_TO_NINE)), Const("w", f32t(&[2, 1, 3, 3], &w)), Const("b", f32t(&[2], &[0.5, -1.0]))],
    );
    #[rustfmt::skip]
    let want = [
        12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5,
        -1., -1., -1., -1., 0., 1., -1., 3., 4.,
    ];
    assert_close(&y, &[1, 2, 3, 3], &want, 0.0);
}

#[test]
fn conv_stride_2_without_bias() {
    // x(i,j) = 5i + j on 5×5, all-ones 3×3 kernel, stride 2, no pad → 2×2 output.
    // x is linear, so a 3×3 window sum = 9 × centre: centres (1,1)=6, (1,3)=8, (3,1)=16, (3,3)=18.
    let x: Vec<f32> = (0..25).map(|v| v as f32).collect();
    let y = run(conv([3, 3], [2, 2], [1, 1], [0; 4], 1), vec![In("x", f32t(&[1, 1, 5, 5], &x)), Const("w", f32t(&[1, 1, 3, 3], &[1.0; 9]))]);
    assert_close(&y, &[1, 1, 2, 2], &[54., 72., 144., 162.], 0.0);
}

#[test]
fn conv_dilation_2() {
    // x(i,j) = 4i + j on 4×4, 2×2 kernel [[1,2],[3,4]] with dilation 2 (effective 3×3) → 2×2:
    // out(r,c) = 1·x(r,c) + 2·x(r,c+2) + 3·x(r+2,c) + 4·x(r+2,c+2) = 10·x(r,c) + (2·2 + 3·8 + 4·10)
    //          = 10·x(r,c) + 68 → x(r,c) ∈ {0, 1, 4, 5} gives 68, 78, 108, 118.
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let y = run(conv([2, 2], [1, 1], [2, 2], [0; 4], 1), vec![In("x", f32t(&[1, 1, 4, 4], &x)), Const("w", f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.]))]);
    assert_close(&y, &[1, 1, 2, 2], &[68., 78., 108., 118.], 0.0);
}

#[test]
fn conv_asymmetric_pads_pad_only_bottom_and_right() {
    // pads [top=0, left=0, bottom=1, right=1] on x = [[1,2],[3,4]], all-ones 2×2 kernel:
    // padded input   1 2 0     → sums: 1+2+3+4=10, 2+4=6
    //                3 4 0             3+4=7,      4
    //                0 0 0
    // (padding top/left instead would give 1, 3, 4, 10.)
    let y = run(
        conv([2, 2], [1, 1], [1, 1], [0, 0, 1, 1], 1),
        vec![In("x", f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.])), Const("w", f32t(&[1, 1, 2, 2], &[1.0; 4]))],
    );
    assert_close(&y, &[1, 1, 2, 2], &[10., 6., 7., 4.], 0.0);
}

#[test]
fn conv_group_2_uses_only_its_group_channels() {
    // x: 4 channels of 2×2; 1×1 kernels, group 2 → each output sees 2 input channels.
    //   ch0 = [1,2,3,4], ch1 = [0,1,0,1], ch2 = [1,1,1,1], ch3 = [0,0,1,2]
    //   out0 = 1·ch0 + 10·ch1 + 0.5     = [1.5, 12.5, 3.5, 14.5]
    //   out1 = 100·ch2 + 1000·ch3 − 0.5 = [99.5, 99.5, 1099.5, 2099.5]
    let x = [1., 2., 3., 4., 0., 1., 0., 1., 1., 1., 1., 1., 0., 0., 1., 2.];
    let y = run(
        conv([1, 1], [1, 1], [1, 1], [0; 4], 2),
        vec![In("x", f32t(&[1, 4, 2, 2], &x)), Const("w", f32t(&[2, 2, 1, 1], &[1., 10., 100., 1000.])), Const("b", f32t(&[2], &[0.5, -0.5]))],
    );
    assert_close(&y, &[1, 2, 2, 2], &[1.5, 12.5, 3.5, 14.5, 99.5, 99.5, 1099.5, 2099.5], 0.0);
}

#[test]
fn conv_depthwise_3x3_pad1_with_bias() {
    // group = in = out = 2, pads 1.
    //  ch0: x = 1..9, all-ones kernel, bias 0 → box sums 12 21 16 / 27 45 33 / 24 39 28
    //  ch1: x = all ones, kernel w(ky,kx) = 3ky+kx+1 (1..9), bias 10 → sum of the kernel taps
    //       that land inside the image: corner (0,0) uses taps 5,6,8,9 = 28; edge (0,1) uses
    //       rows 1-2 = 39; (0,2) 4+5+7+8=24; (1,0) 2+3+5+6+8+9=33; centre 45; (1,2) 27;
    //       (2,0) 2+3+5+6=16; (2,1) 21; (2,2) 1+2+4+5=12; then + 10.
    let mut x = ONE_TO_NINE.to_vec();
    x.extend([1.0; 9]);
    let mut w = vec![1.0; 9];
    w.extend(ONE_TO_NINE);
    let op = conv([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 2);
    if let Op::Conv(c) = &op {
        assert!(c.is_depthwise(2, 2));
    }
    let y = run(op, vec![In("x", f32t(&[1, 2, 3, 3], &x)), Const("w", f32t(&[2, 1, 3, 3], &w)), Const("b", f32t(&[2], &[0., 10.]))]);
    #[rustfmt::skip]
    let want = [
        12., 21., 16., 27., 45., 33., 24., 39., 28.,
        38., 49., 34., 43., 55., 37., 26., 31., 22.,
    ];
    assert_close(&y, &[1, 2, 3, 3], &want, 0.0);
}

#[test]
fn conv_runs_a_larger_batch_than_the_graph_was_built_with() {
    // Graph built for batch 1, run on batch 2: image 0 = 1..9, image 1 = 2·(1..9).
    // All-ones 3×3 kernel, no pad → one output per image: 45 and 90.
    let (g, _) = build(conv([3, 3], [1, 1], [1, 1], [0; 4], 1), vec![In("x", f32t(&[1, 1, 3, 3], &ONE_TO_NINE)), Const("w", f32t(&[1, 1, 3, 3], &[1.0; 9]))]).unwrap();
    let mut x = ONE_TO_NINE.to_vec();
    x.extend(ONE_TO_NINE.iter().map(|v| 2.0 * v));
    let y = Fp32Executor::new(&g).run(vec![f32t(&[2, 1, 3, 3], &x)]).unwrap().remove(0);
    assert_close(&y, &[2, 1, 1, 1], &[45., 90.], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Normalization and element-wise ops
// ---------------------------------------------------------------------------------------------

#[test]
fn batchnorm_uses_scale_bias_mean_var_and_epsilon() {
    // y = scale·(x − mean)/sqrt(var + eps) + bias, eps = 0.25 (var + eps chosen to be squares):
    //  ch0: scale 4, bias 1, mean 1, var 3.75 → sqrt(4) = 2 → y = 2(x−1) + 1: x=1,2 → 1, 3
    //  ch1: scale 0.5, bias 0, mean 4, var 0 → sqrt(0.25) = 0.5 → y = x − 4: x=3,4 → −1, 0
    let y = run(
        Op::BatchNorm { epsilon: 0.25 },
        vec![
            In("x", f32t(&[1, 2, 1, 2], &[1., 2., 3., 4.])),
            Const("scale", f32t(&[2], &[4., 0.5])),
            Const("bias", f32t(&[2], &[1., 0.])),
            Const("mean", f32t(&[2], &[1., 4.])),
            Const("var", f32t(&[2], &[3.75, 0.])),
        ],
    );
    assert_close(&y, &[1, 2, 1, 2], &[1., 3., -1., 0.], 1e-6);
}

#[test]
fn relu_zeroes_negatives() {
    let y = run(Op::Relu, vec![In("x", f32t(&[1, 5], &[-1., 0., 2.5, -0.001, 7.]))]);
    assert_close(&y, &[1, 5], &[0., 0., 2.5, 0., 7.], 0.0);
}

#[test]
fn clip_clamps_to_min_and_max() {
    // Clip(0, 6) = ReLU6.
    let y = run(Op::Clip { min: 0., max: 6. }, vec![In("x", f32t(&[1, 5], &[-3., 0., 3., 6., 9.]))]);
    assert_close(&y, &[1, 5], &[0., 0., 3., 6., 6.], 0.0);
}

#[test]
fn add_broadcasts_per_channel_vector() {
    // [1,2,2,2] + [1,2,1,1]: channel 0 (0..3) + 10, channel 1 (4..7) + 20.
    let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let y = run(Op::Add, vec![In("x", f32t(&[1, 2, 2, 2], &x)), Const("b", f32t(&[1, 2, 1, 1], &[10., 20.]))]);
    assert_close(&y, &[1, 2, 2, 2], &[10., 11., 12., 13., 24., 25., 26., 27.], 0.0);
}

#[test]
fn add_same_shape_and_trailing_rank_broadcast() {
    // [1,2,3] + [3] (lower rank, aligned on the last axis): each row + [100, 200, 300].
    let y = run(Op::Add, vec![In("x", f32t(&[1, 2, 3], &[1., 2., 3., 4., 5., 6.])), Const("b", f32t(&[3], &[100., 200., 300.]))]);
    assert_close(&y, &[1, 2, 3], &[101., 202., 303., 104., 205., 306.], 0.0);
    // Same shapes: plain element-wise sum.
    let y = run(Op::Add, vec![In("x", f32t(&[1, 3], &[1., 2., 3.])), Const("b", f32t(&[1, 3], &[0.5, 0.25, -3.]))]);
    assert_close(&y, &[1, 3], &[1.5, 2.25, 0.], 0.0);
}

#[test]
fn mul_broadcasts_both_operands() {
    // [2,1] × [1,3] → [2,3] outer product: [1,2]ᵀ × [1,10,100].
    let y = run(Op::Mul, vec![In("x", f32t(&[2, 1], &[1., 2.])), Const("s", f32t(&[1, 3], &[1., 10., 100.]))]);
    assert_close(&y, &[2, 3], &[1., 10., 100., 2., 20., 200.], 0.0);
    // [1,2,2,2] × scalar-like [1] → every element × 0.5.
    let y = run(Op::Mul, vec![In("x", f32t(&[1, 2, 2, 2], &[2., 4., 6., 8., -2., -4., -6., -8.])), Const("s", f32t(&[1], &[0.5]))]);
    assert_close(&y, &[1, 2, 2, 2], &[1., 2., 3., 4., -1., -2., -3., -4.], 0.0);
}

#[test]
fn sigmoid_values_and_saturation() {
    // σ(0) = 1/2, σ(ln 3) = 1/(1 + 1/3) = 3/4, σ(−ln 3) = 1/(1+3) = 1/4; large |x| saturate
    // without NaN: σ(100) = 1, σ(−1000) = 1/(1+inf) = 0.
    let ln3 = 3f32.ln();
    let y = run(Op::Sigmoid, vec![In("x", f32t(&[1, 5], &[0., ln3, -ln3, 100., -1000.]))]);
    assert_close(&y, &[1, 5], &[0.5, 0.75, 0.25, 1.0, 0.0], 1e-6);
}

#[test]
fn hardsigmoid_default_and_custom_alpha_beta() {
    // alpha 0.2, beta 0.5: clamp(0.2x + 0.5, 0, 1):
    // −5 → −0.5 → 0; −2.5 → 0; 0 → 0.5; 1 → 0.7; 2.5 → 1; 5 → 1.5 → 1.
    let y = run(Op::HardSigmoid { alpha: 0.2, beta: 0.5 }, vec![In("x", f32t(&[1, 6], &[-5., -2.5, 0., 1., 2.5, 5.]))]);
    assert_close(&y, &[1, 6], &[0., 0., 0.5, 0.7, 1., 1.], 1e-6);
    // alpha 0.5, beta 0.25: x = −1 → −0.25 → 0; 0 → 0.25; 1 → 0.75; 2 → 1.25 → 1.
    let y = run(Op::HardSigmoid { alpha: 0.5, beta: 0.25 }, vec![In("x", f32t(&[1, 4], &[-1., 0., 1., 2.]))]);
    assert_close(&y, &[1, 4], &[0., 0.25, 0.75, 1.], 1e-6);
}

#[test]
fn hardswish_is_x_times_relu6_of_x_plus_3_over_6() {
    // x · clamp(x/6 + 1/2, 0, 1): −4 → 0; −3 → 0; −1 → −1·(1/3); 0 → 0; 1 → 2/3; 3 → 3; 4 → 4.
    let y = run(Op::HardSwish, vec![In("x", f32t(&[1, 7], &[-4., -3., -1., 0., 1., 3., 4.]))]);
    assert_close(&y, &[1, 7], &[0., 0., -1. / 3., 0., 2. / 3., 3., 4.], 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

#[test]
fn global_average_pool_means_each_channel() {
    // ch0: (1+2+3+4)/4 = 2.5; ch1: (−1+1+5+7)/4 = 3.
    let y = run(Op::GlobalAveragePool, vec![In("x", f32t(&[1, 2, 2, 2], &[1., 2., 3., 4., -1., 1., 5., 7.]))]);
    assert_close(&y, &[1, 2, 1, 1], &[2.5, 3.], 1e-6);
}

#[test]
fn average_pool_2x2_stride_2_without_pads() {
    // x(i,j) = 4i + j on 4×4: windows {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}.
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let y = run(Op::AveragePool(pool([2, 2], [2, 2], [0; 4], false, false)), vec![In("x", f32t(&[1, 1, 4, 4], &x))]);
    assert_close(&y, &[1, 1, 2, 2], &[2.5, 4.5, 10.5, 12.5], 1e-6);
}

#[test]
fn average_pool_with_pads_excludes_padding_by_default() {
    // 3×3 kernel, stride 1, pads 1 on x = 1..9; box sums 12 21 16 / 27 45 33 / 24 39 28 divided
    // by the number of real cells (4 in corners, 6 on edges, 9 in the centre).
    let y = run(Op::AveragePool(pool([3, 3], [1, 1], [1, 1, 1, 1], false, false)), vec![In("x", f32t(&[1, 1, 3, 3], &ONE_TO_NINE))]);
    assert_close(&y, &[1, 1, 3, 3], &[3., 3.5, 4., 4.5, 5., 5.5, 6., 6.5, 7.], 1e-6);
}

#[test]
fn average_pool_with_pads_and_count_include_pad_divides_by_kernel_size() {
    // Same box sums, all divided by 9.
    let y = run(Op::AveragePool(pool([3, 3], [1, 1], [1, 1, 1, 1], true, false)), vec![In("x", f32t(&[1, 1, 3, 3], &ONE_TO_NINE))]);
    let want: Vec<f32> = [12., 21., 16., 27., 45., 33., 24., 39., 28.].iter().map(|s| s / 9.0).collect();
    assert_close(&y, &[1, 1, 3, 3], &want, 1e-6);
}

#[test]
fn max_pool_2x2_stride_2() {
    // x(i,j) = 4i + j on 4×4: maxima of the four 2×2 blocks are their bottom-right cells.
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let y = run(Op::MaxPool(pool([2, 2], [2, 2], [0; 4], false, false)), vec![In("x", f32t(&[1, 1, 4, 4], &x))]);
    assert_close(&y, &[1, 1, 2, 2], &[5., 7., 13., 15.], 0.0);
}

#[test]
fn max_pool_padding_never_wins_over_negative_values() {
    // x(i,j) = −(4i + j + 1), all negative. 3×3 kernel, stride 2, pads 1 → 2×2 output; padded
    // cells must act as −inf, not 0: windows cover rows/cols {0,1}×{0,1} → −1, {0,1}×{1,2,3} → −2,
    // {1,2,3}×{0,1} → −5, {1,2,3}×{1,2,3} → −6.
    let x: Vec<f32> = (0..16).map(|v| -(v as f32) - 1.0).collect();
    let y = run(Op::MaxPool(pool([3, 3], [2, 2], [1, 1, 1, 1], false, false)), vec![In("x", f32t(&[1, 1, 4, 4], &x))]);
    assert_close(&y, &[1, 1, 2, 2], &[-1., -2., -5., -6.], 0.0);
}

#[test]
fn max_pool_ceil_mode_keeps_partial_windows() {
    // 2×2 kernel, stride 2 on 3×3 (1..9), ceil_mode → 2×2: {1,2,4,5} → 5, {3,6} → 6, {7,8} → 8, {9}.
    let y = run(Op::MaxPool(pool([2, 2], [2, 2], [0; 4], false, true)), vec![In("x", f32t(&[1, 1, 3, 3], &ONE_TO_NINE))]);
    assert_close(&y, &[1, 1, 2, 2], &[5., 6., 8., 9.], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Shape ops
// ---------------------------------------------------------------------------------------------

#[test]
fn pad_constant_value_on_4d_input() {
    // pads [n0,c0,h0,w0, n1,c1,h1,w1] = one row on top, two columns on the right, value −1:
    //   −1 −1 −1 −1
    //    1  2 −1 −1
    //    3  4 −1 −1
    let y = run(Op::Pad { pads: vec![0, 0, 1, 0, 0, 0, 0, 2], value: -1. }, vec![In("x", f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.]))]);
    assert_close(&y, &[1, 1, 3, 4], &[-1., -1., -1., -1., 1., 2., -1., -1., 3., 4., -1., -1.], 0.0);
}

#[test]
fn pad_constant_value_on_2d_input() {
    // [2,3] with begin [1,0], end [0,1], value 9:
    //   9 9 9 9
    //   1 2 3 9
    //   4 5 6 9
    let y = run(Op::Pad { pads: vec![1, 0, 0, 1], value: 9. }, vec![In("x", f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]))]);
    assert_close(&y, &[3, 4], &[9., 9., 9., 9., 1., 2., 3., 9., 4., 5., 6., 9.], 0.0);
}

#[test]
fn flatten_axis_1_0_and_negative() {
    // [2,3,2] (12 elements, order unchanged): axis 1 → [2,6]; axis 0 → [1,12]; axis −1 → [6,2].
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    for (axis, shape) in [(1, vec![2, 6]), (0, vec![1, 12]), (-1, vec![6, 2])] {
        let y = run(Op::Flatten { axis }, vec![In("x", f32t(&[2, 3, 2], &x))]);
        assert_close(&y, &shape, &x, 0.0);
    }
}

#[test]
fn reshape_with_zero_copies_and_minus_one_infers() {
    // [2,3,4] (24 elements): [0, −1] → [2, 24/2 = 12]; [−1, 2, 0] → 0 copies dim 2 (4),
    // −1 = 24 / (2·4) = 3 → [3, 2, 4].
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let y = run(Op::Reshape { shape: vec![0, -1] }, vec![In("x", f32t(&[2, 3, 4], &x))]);
    assert_close(&y, &[2, 12], &x, 0.0);
    let y = run(Op::Reshape { shape: vec![-1, 2, 0] }, vec![In("x", f32t(&[2, 3, 4], &x))]);
    assert_close(&y, &[3, 2, 4], &x, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Matrix ops
// ---------------------------------------------------------------------------------------------

// A = [[1,2,3],[4,5,6]], B = [[1,0],[0,1],[1,1]] → A·B = [[1+3, 2+3], [4+6, 5+6]] = [[4,5],[10,11]].
const A: [f32; 6] = [1., 2., 3., 4., 5., 6.];
const B: [f32; 6] = [1., 0., 0., 1., 1., 1.];

#[test]
fn gemm_alpha_beta_with_row_bias_broadcast() {
    // 2·A·B + 0.5·C, C = [10, 20] broadcast over rows: [[8+5, 10+10], [20+5, 22+10]].
    let y = run(
        Op::Gemm { alpha: 2., beta: 0.5, trans_a: false, trans_b: false },
        vec![In("a", f32t(&[2, 3], &A)), Const("b", f32t(&[3, 2], &B)), Const("c", f32t(&[2], &[10., 20.]))],
    );
    assert_close(&y, &[2, 2], &[13., 20., 25., 32.], 0.0);
}

#[test]
fn gemm_trans_a_trans_b_with_column_bias() {
    // A stored transposed [3,2] = [[1,4],[2,5],[3,6]], B stored transposed [2,3] = [[1,0,1],[0,1,1]];
    // A·B + C with C = [[1],[2]] broadcast over columns → [[5,6],[12,13]].
    let y = run(
        Op::Gemm { alpha: 1., beta: 1., trans_a: true, trans_b: true },
        vec![In("a", f32t(&[3, 2], &[1., 4., 2., 5., 3., 6.])), Const("b", f32t(&[2, 3], &[1., 0., 1., 0., 1., 1.])), Const("c", f32t(&[2, 1], &[1., 2.]))],
    );
    assert_close(&y, &[2, 2], &[5., 6., 12., 13.], 0.0);
}

#[test]
fn gemm_trans_b_only_without_bias() {
    // Classifier layout: B stored [N, K] = Bᵀ = [[1,0,1],[0,1,1]], no C → A·B.
    let y = run(Op::Gemm { alpha: 1., beta: 1., trans_a: false, trans_b: true }, vec![In("a", f32t(&[2, 3], &A)), Const("b", f32t(&[2, 3], &[1., 0., 1., 0., 1., 1.]))]);
    assert_close(&y, &[2, 2], &[4., 5., 10., 11.], 0.0);
}

#[test]
fn matmul_rank3_by_2d() {
    // [1,2,3] · [3,2], B = [[1,2],[3,4],[5,6]]: row [1,2,3] → [1+6+15, 2+8+18] = [22, 28];
    // row [4,5,6] → [4+15+30, 8+20+36] = [49, 64].
    let y = run(Op::MatMul, vec![In("a", f32t(&[1, 2, 3], &A)), Const("b", f32t(&[3, 2], &[1., 2., 3., 4., 5., 6.]))]);
    assert_close(&y, &[1, 2, 2], &[22., 28., 49., 64.], 0.0);
}

#[test]
fn concat_axis_1_interleaves_per_outer_index() {
    // a [2,1,2] = [[1,2]], [[3,4]]; b [2,2,2] = [[5,6],[7,8]], [[9,10],[11,12]] → [2,3,2]:
    // batch 0: 1 2 5 6 7 8; batch 1: 3 4 9 10 11 12.
    let y = run(
        Op::Concat { axis: 1 },
        vec![In("a", f32t(&[2, 1, 2], &[1., 2., 3., 4.])), Const("b", f32t(&[2, 2, 2], &[5., 6., 7., 8., 9., 10., 11., 12.]))],
    );
    assert_close(&y, &[2, 3, 2], &[1., 2., 5., 6., 7., 8., 3., 4., 9., 10., 11., 12.], 0.0);
}

#[test]
fn concat_three_inputs_on_channels() {
    // NCHW channel concat of 1 + 2 + 1 channels of 1×1: [1] ++ [2,3] ++ [4].
    let y = run(
        Op::Concat { axis: 1 },
        vec![In("a", f32t(&[1, 1, 1, 1], &[1.])), In("b", f32t(&[1, 2, 1, 1], &[2., 3.])), Const("c", f32t(&[1, 1, 1, 1], &[4.]))],
    );
    assert_close(&y, &[1, 4, 1, 1], &[1., 2., 3., 4.], 0.0);
}

#[test]
fn softmax_last_axis_is_stable_for_large_logits() {
    // Row 0: exp([0, ln2, ln5]) = [1, 2, 5] → /8 = [0.125, 0.25, 0.625].
    // Row 1: three equal huge logits (exp would overflow without max subtraction) → 1/3 each.
    let x = [0., 2f32.ln(), 5f32.ln(), 1000., 1000., 1000.];
    for axis in [-1, 1] {
        let y = run(Op::Softmax { axis }, vec![In("x", f32t(&[2, 3], &x))]);
        assert_close(&y, &[2, 3], &[0.125, 0.25, 0.625, 1. / 3., 1. / 3., 1. / 3.], 1e-6);
    }
}

#[test]
fn softmax_over_a_non_last_axis_is_an_error_not_a_panic() {
    let (g, feeds) = build(Op::Softmax { axis: 1 }, vec![In("x", f32t(&[1, 2, 2], &[0.; 4]))]).unwrap();
    let err = Fp32Executor::new(&g).run(feeds).unwrap_err();
    assert!(err.to_string().contains("Softmax"), "{err}");
}

#[test]
fn identity_returns_input_unchanged() {
    let y = run(Op::Identity, vec![In("x", f32t(&[1, 3], &[1.5, -2., 0.]))]);
    assert_close(&y, &[1, 3], &[1.5, -2., 0.], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Quantize / Dequantize
// ---------------------------------------------------------------------------------------------

#[test]
fn quantize_linear_uint8_rounds_half_to_even_and_saturates() {
    // scale 0.5, zero point 10 (uint8): x/scale = 0, 0.5, 1.5, 2.5, −0.5, 2, 2000, −2000
    // → round half to even 0, 0, 2, 2, −0, 2 → + 10 = 10, 10, 12, 12, 10, 12; ±2000 + 10 saturate
    // to 255 and 0.
    let y = run(
        Op::QuantizeLinear { axis: 1 },
        vec![
            In("x", f32t(&[1, 8], &[0., 0.25, 0.75, 1.25, -0.25, 1.0, 1000., -1000.])),
            Const("s", Tensor::scalar_f32(0.5)),
            Const("zp", Tensor::new(vec![], TensorData::U8(vec![10])).unwrap()),
        ],
    );
    assert_eq!(y.shape, [1, 8]);
    assert_eq!(y.data, TensorData::U8(vec![10, 10, 12, 12, 10, 12, 255, 0]));
}

#[test]
fn quantize_linear_int8_rounds_half_to_even_and_saturates() {
    // scale 1, zero point −1 (int8): round half to even of 0.5, 1.5, 2.5, −0.5, −1.5, −2.5 =
    // 0, 2, 2, 0, −2, −2 → −1 gives −1, 1, 1, −1, −3, −3; 200 − 1 → 127, −200 − 1 → −128.
    let y = run(
        Op::QuantizeLinear { axis: 1 },
        vec![
            In("x", f32t(&[1, 8], &[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 200., -200.])),
            Const("s", Tensor::scalar_f32(1.0)),
            Const("zp", Tensor::new(vec![], TensorData::I8(vec![-1])).unwrap()),
        ],
    );
    assert_eq!(y.data, TensorData::I8(vec![-1, 1, 1, -1, -3, -3, 127, -128]));
}

#[test]
fn quantize_linear_without_zero_point_is_uint8_with_zero_point_0() {
    // ONNX default: y_zero_point omitted → uint8, zp 0. x/2 = −0.5, 1.5, 3 → 0 (−0 and clamp), 2, 3.
    let (g, _) = build(Op::QuantizeLinear { axis: 1 }, vec![In("x", f32t(&[1, 3], &[0.; 3])), Const("s", Tensor::scalar_f32(2.0))]).unwrap();
    assert_eq!(g.dtypes["y"], DType::U8);
    let y = run(Op::QuantizeLinear { axis: 1 }, vec![In("x", f32t(&[1, 3], &[-1., 3., 6.])), Const("s", Tensor::scalar_f32(2.0)), Omitted]);
    assert_eq!(y.data, TensorData::U8(vec![0, 2, 3]));
}

#[test]
fn dequantize_linear_per_tensor_uint8_and_int8() {
    // uint8, scale 0.5, zp 128: (q − 128)·0.5 → 0 → −64, 128 → 0, 255 → 63.5, 10 → −59.
    let y = run(
        Op::DequantizeLinear { axis: 1 },
        vec![In("q", u8t(&[1, 4], &[0, 128, 255, 10])), Const("s", Tensor::scalar_f32(0.5)), Const("zp", u8t(&[], &[128]))],
    );
    assert_close(&y, &[1, 4], &[-64., 0., 63.5, -59.], 0.0);
    // int8, scale 0.25, zp 0: −128 → −32, 0 → 0, 127 → 31.75.
    let y = run(
        Op::DequantizeLinear { axis: 1 },
        vec![In("q", i8t(&[1, 3], &[-128, 0, 127])), Const("s", Tensor::scalar_f32(0.25)), Const("zp", i8t(&[], &[0]))],
    );
    assert_close(&y, &[1, 3], &[-32., 0., 31.75], 0.0);
}

#[test]
fn dequantize_linear_per_axis_0_weights() {
    // Per-output-channel weights [2,3] int8 (initializer, as in QDQ files), axis 0:
    //  row 0: scale 0.5, zp 0 → [1,2,3]·0.5 = [0.5, 1, 1.5]
    //  row 1: scale 2,   zp 1 → ([−1,−2,−3] − 1)·2 = [−4, −6, −8]
    let y = run(
        Op::DequantizeLinear { axis: 0 },
        vec![Const("q", i8t(&[2, 3], &[1, 2, 3, -1, -2, -3])), Const("s", f32t(&[2], &[0.5, 2.])), Const("zp", i8t(&[2], &[0, 1]))],
    );
    assert_close(&y, &[2, 3], &[0.5, 1., 1.5, -4., -6., -8.], 0.0);
}

#[test]
fn dequantize_linear_int32_bias_without_zero_point() {
    // int32 bias, scale 0.001, no zp: 1000 → 1, −2500 → −2.5, 0 → 0.
    let b = Tensor::new(vec![3], TensorData::I32(vec![1000, -2500, 0])).unwrap();
    let y = run(Op::DequantizeLinear { axis: 1 }, vec![Const("q", b), Const("s", Tensor::scalar_f32(0.001))]);
    assert_close(&y, &[3], &[1., -2.5, 0.], 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Errors: shape inference and executor input checks return Err, never panic.
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn build_err(op: Op, args: Vec<Arg>) -> String {
    match build(op, args) {
        Ok(_) => panic!("expected a shape-inference error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn conv_channel_mismatch_is_a_shape_error() {
    // Input has 3 channels, weight expects 2 (group 1).
    let msg = build_err(conv([3, 3], [1, 1], [1, 1], [0; 4], 1), vec![In("x", f32t(&[1, 3, 4, 4], &[0.; 48])), Const("w", f32t(&[2, 2, 3, 3], &[0.; 36]))]);
    assert!(msg.contains("'n'") && msg.contains("input channels 3"), "{msg}");
}

#[test]
fn conv_kernel_larger_than_input_is_a_shape_error() {
    let msg = build_err(conv([3, 3], [1, 1], [1, 1], [0; 4], 1), vec![In("x", f32t(&[1, 1, 2, 2], &[0.; 4])), Const("w", f32t(&[1, 1, 3, 3], &[0.; 9]))]);
    assert!(msg.contains("kernel larger"), "{msg}");
}

#[test]
fn conv_on_non_4d_input_is_a_shape_error() {
    let msg = build_err(conv([1, 1], [1, 1], [1, 1], [0; 4], 1), vec![In("x", f32t(&[1, 3], &[0.; 3])), Const("w", f32t(&[1, 3, 1, 1], &[0.; 3]))]);
    assert!(msg.contains("4-D"), "{msg}");
}

#[test]
fn non_broadcastable_add_is_a_shape_error() {
    let msg = build_err(Op::Add, vec![In("x", f32t(&[1, 3], &[0.; 3])), Const("b", f32t(&[4], &[0.; 4]))]);
    assert!(msg.contains("broadcast"), "{msg}");
}

#[test]
fn gemm_inner_dimension_mismatch_is_a_shape_error() {
    let msg = build_err(Op::Gemm { alpha: 1., beta: 1., trans_a: false, trans_b: false }, vec![In("a", f32t(&[2, 3], &A)), Const("b", f32t(&[2, 3], &B))]);
    assert!(msg.contains("inner dimensions"), "{msg}");
}

#[test]
fn impossible_reshape_is_a_shape_error() {
    let msg = build_err(Op::Reshape { shape: vec![5, -1] }, vec![In("x", f32t(&[2, 3], &A))]);
    assert!(msg.contains("-1"), "{msg}");
    let msg = build_err(Op::Reshape { shape: vec![4] }, vec![In("x", f32t(&[2, 3], &A))]);
    assert!(msg.contains("cannot reshape"), "{msg}");
}

#[test]
fn batchnorm_parameter_length_mismatch_is_a_shape_error() {
    let p = || f32t(&[3], &[1.; 3]);
    let msg = build_err(
        Op::BatchNorm { epsilon: 1e-5 },
        vec![In("x", f32t(&[1, 2, 1, 1], &[0.; 2])), Const("s", p()), Const("b", p()), Const("m", p()), Const("v", p())],
    );
    assert!(msg.contains("shape [2]"), "{msg}");
}

#[test]
fn pad_with_wrong_number_of_pads_is_a_shape_error() {
    let msg = build_err(Op::Pad { pads: vec![1, 1], value: 0. }, vec![In("x", f32t(&[1, 1, 2, 2], &[0.; 4]))]);
    assert!(msg.contains("pads"), "{msg}");
}

#[test]
fn concat_rank_mismatch_is_a_shape_error() {
    let msg = build_err(Op::Concat { axis: 1 }, vec![In("a", f32t(&[1, 2], &[0.; 2])), Const("b", f32t(&[1, 2, 1], &[0.; 2]))]);
    assert!(msg.contains("concatenate"), "{msg}");
}

#[test]
fn executor_rejects_wrong_input_shape_and_count() {
    let (g, _) = build(Op::Relu, vec![In("x", f32t(&[1, 3], &[0.; 3]))]).unwrap();
    let exec = Fp32Executor::new(&g);
    match exec.run(vec![f32t(&[1, 4], &[0.; 4])]) {
        Err(RuntimeError::InputShape { name, .. }) => assert_eq!(name, "x"),
        other => panic!("expected InputShape, got {other:?}"),
    }
    match exec.run(vec![]) {
        Err(RuntimeError::MissingInput(name)) => assert_eq!(name, "x"),
        other => panic!("expected MissingInput, got {other:?}"),
    }
}

#[test]
fn executor_reports_non_f32_input_to_a_float_op_as_error() {
    // Relu on a uint8 tensor: the executor must return Err, not panic.
    let (g, feeds) = build(Op::Relu, vec![In("x", u8t(&[1, 2], &[1, 2]))]).unwrap();
    assert!(Fp32Executor::new(&g).run(feeds).is_err());
}

#[test]
fn broadcast_operand_first_and_batch_wraps_the_channels() {
    // Min([1,2,1,1] bound, x [2,2,2,1]): the bound broadcasts from the first input and its
    // channel index restarts with the second image.
    let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let y = run(
        Op::Min,
        vec![
            Const("bound", f32t(&[1, 2, 1, 1], &[0.5, 2.5])),
            In("x", f32t(&[2, 2, 2, 1], &x)),
        ],
    );
    assert_close(
        &y,
        &[2, 2, 2, 1],
        &[0., 0.5, 2., 2.5, 0.5, 0.5, 2.5, 2.5],
        0.0,
    );
}

#[test]
fn broadcast_over_two_separate_axes_uses_the_general_path() {
    // [2,1,3] + [2,4,3]: the first operand repeats along axis 1 only, between two varying axes.
    let a: Vec<f32> = (0..6).map(|v| 100.0 * v as f32).collect();
    let b: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let y = run(
        Op::Add,
        vec![
            In("a", f32t(&[2, 1, 3], &a)),
            Const("b", f32t(&[2, 4, 3], &b)),
        ],
    );
    let want: Vec<f32> = (0..24).map(|i| b[i] + a[(i / 12) * 3 + i % 3]).collect();
    assert_close(&y, &[2, 4, 3], &want, 0.0);
}
