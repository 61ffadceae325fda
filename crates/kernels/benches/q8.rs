//! Integer kernels, scalar reference vs the dispatched (SIMD where available) versions, on
//! EfficientNet-Lite0-like shapes. `cargo bench -p subq-kernels --bench q8`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use subq_kernels::q8::{self, ConvPart, Requant, Scratch};
use subq_kernels::ConvGeometry;

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn geom(in_c: usize, hw: usize, out_c: usize, k: usize, stride: usize, group: usize) -> ConvGeometry {
    let pad = k / 2;
    let out = (hw + 2 * pad - k) / stride + 1;
    ConvGeometry { in_c, in_h: hw, in_w: hw, out_c, out_h: out, out_w: out, kernel: [k, k], strides: [stride, stride], dilations: [1, 1], pad_top: pad, pad_left: pad, group }
}

fn conv(c: &mut Criterion) {
    let cases = [
        ("stem3x3s2_3to32_224", geom(3, 224, 32, 3, 2, 1)),
        ("pw_32to16_112", geom(32, 112, 16, 1, 1, 1)),
        ("pw_24to144_56", geom(24, 56, 144, 1, 1, 1)),
        ("pw_672to112_14", geom(672, 14, 112, 1, 1, 1)),
        ("pw_1152to320_7", geom(1152, 7, 320, 1, 1, 1)),
        ("dw3x3s1_32_112", geom(32, 112, 32, 3, 1, 32)),
        ("dw3x3s2_96_112", geom(96, 112, 96, 3, 2, 96)),
        ("dw5x5s1_672_14", geom(672, 14, 672, 5, 1, 672)),
        ("dw5x5s2_144_56", geom(144, 56, 144, 5, 2, 144)),
        ("grouped3x3_g4_32to32_28", geom(32, 28, 32, 3, 1, 4)),
        ("gemm_fc_1280to1000", geom(1280, 1, 1000, 1, 1, 1)),
    ];
    let mut grp = c.benchmark_group("conv_q8");
    grp.sample_size(15).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (name, g) in cases {
        let input = data(g.in_c * g.in_h * g.in_w, 1);
        let w: Vec<i16> = data(g.out_c * g.weights_per_output(), 2).iter().map(|&x| x as i16 - 128).collect();
        let (rq, shift) = Requant::common(&(0..g.out_c).map(|i| 0.001 + i as f64 * 1e-5).collect::<Vec<_>>());
        let parts = vec![ConvPart::new(w, rq, &g)];
        let bias = vec![12345i64 << 10; g.out_c];
        let mut out = vec![0u8; g.out_c * g.out_h * g.out_w];
        let mut s = Scratch::default();
        grp.bench_function(BenchmarkId::new("reference", name), |b| b.iter(|| q8::conv_q8_reference(black_box(&input), 3, &parts, &bias, shift, 7, 0, 255, &g, &mut out, &mut s)));
        grp.bench_function(BenchmarkId::new(format!("{:?}", q8::simd_level()), name), |b| b.iter(|| q8::conv_q8(black_box(&input), 3, &parts, &bias, shift, 7, 0, 255, &g, &mut out, &mut s)));
    }
    grp.finish();
}

fn elementwise(c: &mut Criterion) {
    let level = format!("{:?}", q8::simd_level());
    let mut grp = c.benchmark_group("elementwise_q8");
    grp.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    let n = 24 * 56 * 56;
    let (a, b) = (data(n, 3), data(n, 4));
    let mut out = vec![0u8; n];
    let (ms, shift) = Requant::common(&[0.7, 1.3]);
    grp.bench_function("add/reference", |bch| bch.iter(|| q8::add_q8_reference(black_box(&a), 120, ms[0].multiplier, &b, 130, ms[1].multiplier, shift, 128, 0, 255, &mut out)));
    grp.bench_function(format!("add/{level}"), |bch| bch.iter(|| q8::add_q8(black_box(&a), 120, ms[0].multiplier, &b, 130, ms[1].multiplier, shift, 128, 0, 255, &mut out)));
    let (c_, hw) = (1280, 49);
    let x = data(c_ * hw, 5);
    let r = Requant::new(0.9 / hw as f64);
    let mut o = vec![0u8; c_];
    grp.bench_function("global_avg_pool/reference", |bch| bch.iter(|| q8::global_avg_pool_q8_reference(black_box(&x), c_, 10, r, 5, &mut o)));
    grp.bench_function(format!("global_avg_pool/{level}"), |bch| bch.iter(|| q8::global_avg_pool_q8(black_box(&x), c_, 10, r, 5, &mut o)));
    let r = Requant::new(0.8);
    grp.bench_function("requantize/reference", |bch| bch.iter(|| q8::requantize_u8_reference(black_box(&a), 10, r, 5, 5, 250, &mut out)));
    grp.bench_function("requantize/lut", |bch| bch.iter(|| q8::requantize_u8(black_box(&a), 10, r, 5, 5, 250, &mut out)));
    grp.finish();
}

/// Subtensor-split depthwise layers (2 weight parts on their own grids) vs plain ones, on
/// MobileNetV2-like shapes. Filter with `-- depthwise_parts`.
fn depthwise_parts(c: &mut Criterion) {
    let level = format!("{:?}", q8::simd_level());
    let mut grp = c.benchmark_group("depthwise_parts");
    grp.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let cases = [("dw3x3s1_144_40", geom(144, 40, 144, 3, 1, 144)), ("dw3x3s1_96_80", geom(96, 80, 96, 3, 1, 96)), ("dw3x3s2_144_80", geom(144, 80, 144, 3, 2, 144)), ("dw3x3s1_32_112", geom(32, 112, 32, 3, 1, 32))];
    for (name, g) in cases {
        let input = data(g.in_c * g.in_h * g.in_w, 1);
        let mut out = vec![0u8; g.out_c * g.out_h * g.out_w];
        let mut s = Scratch::default();
        for nparts in [1usize, 2] {
            let reals: Vec<f64> = (0..nparts * g.out_c).map(|i| 0.001 + i as f64 * 1e-5).collect();
            let (rq, shift) = Requant::common(&reals);
            let parts: Vec<ConvPart> = (0..nparts)
                .map(|p| {
                    let w: Vec<i16> = data(g.out_c * g.weights_per_output(), 2 + p as u64).iter().map(|&x| x as i16 - 128).collect();
                    ConvPart::new(w, rq[p * g.out_c..(p + 1) * g.out_c].to_vec(), &g)
                })
                .collect();
            let bias = vec![12345i64 << 10; g.out_c];
            let label = format!("depthwise 3x3 s{} {} part{}/{}", g.strides[0], nparts, if nparts > 1 { "s" } else { "" }, level);
            grp.bench_function(BenchmarkId::new(label, name), |b| b.iter(|| q8::conv_q8(black_box(&input), 3, &parts, &bias, shift, 7, 0, 255, &g, &mut out, &mut s)));
        }
    }
    grp.finish();
}

/// The i64 output stage vs the float one ([`q8::FloatEpilogue`], used where proven exact) on
/// MobileNetV2-160-like layers whose per-output epilogue weighs most (small `k`, depthwise).
/// Filter with `-- output_stage`.
fn output_stage(c: &mut Criterion) {
    let level = format!("{:?}", q8::simd_level());
    let mut grp = c.benchmark_group("output_stage");
    grp.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let cases = [("pw_16to96_80", geom(16, 80, 96, 1, 1, 1)), ("pw_96to576_10", geom(96, 10, 576, 1, 1, 1)), ("dw3x3s1_144_40", geom(144, 40, 144, 3, 1, 144)), ("dw3x3s1_384_10", geom(384, 10, 384, 3, 1, 384))];
    for (name, g) in cases {
        let input = data(g.in_c * g.in_h * g.in_w, 1);
        let w: Vec<i16> = data(g.out_c * g.weights_per_output(), 2).iter().map(|&x| x as i16 - 128).collect();
        let (rq, shift) = Requant::common(&(0..g.out_c).map(|i| 0.01 + i as f64 * 1e-5).collect::<Vec<_>>());
        let mult: Vec<i64> = rq.iter().map(|r| r.multiplier).collect();
        let parts = vec![ConvPart::new(w, rq, &g)];
        let bias = vec![12345i64 << 10; g.out_c];
        let epi = q8::FloatEpilogue::new(&mult, &bias, shift, 7, 0, 255, None);
        let mut out = vec![0u8; g.out_c * g.out_h * g.out_w];
        let mut s = Scratch::default();
        grp.bench_function(BenchmarkId::new(format!("i64/{level}"), name), |b| b.iter(|| q8::conv_q8_epi(black_box(&input), 3, &parts, &bias, shift, 7, 0, 255, None, None, &g, &mut out, &mut s)));
        grp.bench_function(BenchmarkId::new(format!("float/{level}"), name), |b| b.iter(|| q8::conv_q8_epi(black_box(&input), 3, &parts, &bias, shift, 7, 0, 255, None, epi.as_ref(), &g, &mut out, &mut s)));
    }
    grp.finish();
}

/// The planar depthwise kernel against the channel-vectorized one (`q8::dw512`, AVX-512) on the
/// small planes where the engine picks the latter, both with the exact i64 output stage.
/// Filter with `-- depthwise_lanes`.
#[cfg(target_arch = "x86_64")]
fn depthwise_lanes(c: &mut Criterion) {
    if !q8::dw512::available() {
        return;
    }
    let mut grp = c.benchmark_group("depthwise_lanes");
    grp.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let cases = [("dw3x3s1_960_5", geom(960, 5, 960, 3, 1, 960)), ("dw3x3s1_576_10", geom(576, 10, 576, 3, 1, 576)), ("dw3x3s2_576_10", geom(576, 10, 576, 3, 2, 576)), ("dw5x5s1_672_14", geom(672, 14, 672, 5, 1, 672)), ("dw5x5s1_1152_7", geom(1152, 7, 1152, 5, 1, 1152)), ("dw3x3s1_480_14", geom(480, 14, 480, 3, 1, 480)), ("dw5x5s1_480_14", geom(480, 14, 480, 5, 1, 480))];
    for (name, g) in cases {
        let input = data(g.in_c * g.in_h * g.in_w, 1);
        let w: Vec<i16> = data(g.out_c * g.weights_per_output(), 2).iter().map(|&x| x as i16 - 128).collect();
        let (rq, shift) = Requant::common(&(0..g.out_c).map(|i| 0.01 + i as f64 * 1e-5).collect::<Vec<_>>());
        let mult: Vec<i64> = rq.iter().map(|r| r.multiplier).collect();
        let part = ConvPart::new(w, rq, &g);
        let q8::PackedWeights::Depthwise { pairs, lanes, .. } = &part.packed else { unreachable!("depthwise packing") };
        let bias = vec![12345i64 << 10; g.out_c];
        let mut out = vec![0u8; g.out_c * g.out_h * g.out_w];
        let mut plane = Vec::new();
        grp.bench_function(BenchmarkId::new("planar", name), |b| {
            b.iter(|| unsafe { q8::avx2::depthwise(black_box(&input), 3, pairs, &g, &mut plane, &mut q8::avx2::Sink::Requant { mult: &mult, bias: &bias, shift, zp: 7, qmin: 0, qmax: 255, out: &mut out }) })
        });
        let st = q8::dw512::Stage { float: None, mult: [&mult[..]], bias: &bias, shift, zp: 7, qmin: 0, qmax: 255, cap: None };
        let (mut xb, mut ob) = (Vec::new(), Vec::new());
        grp.bench_function(BenchmarkId::new("lanes", name), |b| b.iter(|| unsafe { q8::dw512::depthwise::<1>(black_box(&input), 3, [&lanes[..]], &g, &st, &mut out, &mut xb, &mut ob) }));
        // A ReLU'd output (qmin = zp): the i64 stage's shorter form, as fused subtensor layers
        // take it; and the float stage, proven on these parameters.
        let st = q8::dw512::Stage { float: None, mult: [&mult[..]], bias: &bias, shift, zp: 7, qmin: 7, qmax: 255, cap: None };
        grp.bench_function(BenchmarkId::new("lanes_relu", name), |b| b.iter(|| unsafe { q8::dw512::depthwise::<1>(black_box(&input), 3, [&lanes[..]], &g, &st, &mut out, &mut xb, &mut ob) }));
        if let Some(e) = q8::FloatEpilogue::new(&mult, &bias, shift, 7, 7, 255, None) {
            let float = Some(q8::dw512::Float { scale: &e.scale, offset: &e.offset, hi: &e.hi, lo: e.lo, ok: &e.ok });
            let st = q8::dw512::Stage { float, mult: [&mult[..]], bias: &bias, shift, zp: 7, qmin: 7, qmax: 255, cap: None };
            grp.bench_function(BenchmarkId::new("lanes_float", name), |b| b.iter(|| unsafe { q8::dw512::depthwise::<1>(black_box(&input), 3, [&lanes[..]], &g, &st, &mut out, &mut xb, &mut ob) }));
        }
    }
    grp.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn depthwise_lanes(_: &mut Criterion) {}

/// The byte GEMM of pointwise convs (activation packing included) on AMX tiles against the
/// 512-bit `vpdpbusd` tiles, on EfficientNet-Lite0's shapes, with the float output stage.
/// Filter with `-- byte_gemm`.
#[cfg(target_arch = "x86_64")]
fn byte_gemm(c: &mut Criterion) {
    if !q8::amx_available() {
        return;
    }
    let mut grp = c.benchmark_group("byte_gemm");
    grp.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    // (k, m, side)
    let cases = [(16usize, 96usize, 112usize), (24, 144, 56), (96, 24, 56), (144, 24, 56), (40, 240, 28), (240, 40, 28), (80, 480, 14), (112, 672, 14), (672, 112, 14), (192, 1152, 7), (1152, 192, 7), (1152, 320, 7), (320, 1280, 7)];
    for (k, m, side) in cases {
        let n = side * side;
        let x = data(k * n, 1);
        let w: Vec<i16> = data(m * k, 2).iter().map(|&v| (v as i16 - 128) / 2).collect();
        let amx = q8::Packed8::with_form(&w, m, k, true).expect("byte form");
        let avx512 = q8::Packed8 { tiles: Vec::new(), ..amx.clone() };
        let (rq, shift) = Requant::common(&(0..m).map(|i| 0.001 + i as f64 * 1e-5).collect::<Vec<_>>());
        let mult: Vec<i64> = rq.iter().map(|r| r.multiplier).collect();
        let bias = vec![12345i64 << 10; m];
        let epi = q8::FloatEpilogue::new(&mult, &bias, shift, 7, 0, 255, None);
        let (mut b, mut out) = (Vec::new(), vec![0u8; m * n]);
        let name = format!("{k}to{m}_{side}");
        for (label, p8) in [("avx512", &avx512), ("amx", &amx)] {
            grp.bench_function(BenchmarkId::new(label, &name), |bch| {
                bch.iter(|| unsafe {
                    q8::avx2::pack_b8(black_box(&x), k, n, &mut b);
                    q8::avx2::gemm8_requant(p8, &b, &x, n, 3, &mult, &bias, shift, 7, 0, 255, &mut out, 1, None, epi.as_ref())
                })
            });
        }
    }
    grp.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn byte_gemm(_: &mut Criterion) {}

criterion_group!(benches, conv, elementwise, depthwise_parts, output_stage, depthwise_lanes, byte_gemm);
criterion_main!(benches);
