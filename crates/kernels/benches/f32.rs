//! FP32 kernel benchmarks with EfficientNet-Lite0 shapes (batch 1, 224×224 input).
//!
//!     cargo bench -p subq-kernels --bench f32

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use subq_kernels::{f32 as k, ConvGeometry};

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn gemm_crate(m: usize, kk: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    unsafe {
        gemm::gemm(m, n, kk, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, kk as isize, b.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
    }
}

/// (M = out channels, K = in channels, N = H·W) of EfficientNet-Lite0 pointwise convolutions.
const PW: &[(usize, usize, usize)] = &[(16, 32, 112 * 112), (96, 16, 112 * 112), (24, 144, 56 * 56), (144, 24, 56 * 56), (240, 40, 28 * 28), (80, 480, 14 * 14), (1152, 192, 7 * 7), (192, 1152, 7 * 7), (1280, 320, 7 * 7), (320, 960, 5 * 5)];

fn bench_gemm(c: &mut Criterion) {
    let mut grp = c.benchmark_group("pointwise_gemm");
    for &(m, kk, n) in PW {
        let (a, b) = (data(m * kk, 1), data(kk * n, 2));
        let mut out = vec![0.0; m * n];
        grp.throughput(Throughput::Elements((m * kk * n) as u64));
        let id = format!("{m}x{kk}x{n}");
        grp.bench_with_input(BenchmarkId::new("sgemm", &id), &(), |bch, _| bch.iter(|| k::sgemm(m, kk, n, &a, &b, &mut out, false)));
        grp.bench_with_input(BenchmarkId::new("matrixmultiply", &id), &(), |bch, _| {
            bch.iter(|| unsafe { matrixmultiply::sgemm(m, kk, n, 1.0, a.as_ptr(), kk as isize, 1, b.as_ptr(), n as isize, 1, 0.0, out.as_mut_ptr(), n as isize, 1) })
        });
        grp.bench_with_input(BenchmarkId::new("gemm_epilogue", &id), &(), |bch, _| {
            bch.iter(|| k::gemm::gemm_epilogue(k::gemm::best_isa(), m, kk, n, &a, &b, &mut out, None, &k::Epilogue::NONE, 0))
        });
        grp.bench_with_input(BenchmarkId::new("gemm_crate", &id), &(), |bch, _| bch.iter(|| gemm_crate(m, kk, n, &a, &b, &mut out)));
    }
    grp.finish();
}

fn geom(c: usize, hw: usize, k: usize, s: usize, dw: bool, out_c: usize) -> ConvGeometry {
    let pad = k / 2;
    let o = (hw + 2 * pad - k) / s + 1;
    ConvGeometry { in_c: c, in_h: hw, in_w: hw, out_c, out_h: o, out_w: o, kernel: [k, k], strides: [s, s], dilations: [1, 1], pad_top: pad, pad_left: pad, group: if dw { c } else { 1 } }
}

fn bench_conv(c: &mut Criterion) {
    let mut grp = c.benchmark_group("conv");
    let cases = [
        ("first3x3_s2", geom(3, 224, 3, 2, false, 32)),
        ("dw3x3_s1_32x112", geom(32, 112, 3, 1, true, 32)),
        ("dw3x3_s2_96x112", geom(96, 112, 3, 2, true, 96)),
        ("dw5x5_s2_144x56", geom(144, 56, 5, 2, true, 144)),
        ("dw5x5_s1_240x28", geom(240, 28, 5, 1, true, 240)),
        ("dw5x5_s1_672x14", geom(672, 14, 5, 1, true, 672)),
        ("dw5x5_s1_1152x7", geom(1152, 7, 5, 1, true, 1152)),
        ("pw_16to96_112", geom(16, 112, 1, 1, false, 96)),
        ("pw_480to80_14", geom(480, 14, 1, 1, false, 80)),
        // 7×7 planes: 49 columns, three full 16-column panels and a one-column tail.
        ("pw_192to1152_7", geom(192, 7, 1, 1, false, 1152)),
    ];
    for (name, g) in cases {
        let input = data(g.in_c * g.in_h * g.in_w, 3);
        let w = data(g.out_c * g.weights_per_output(), 4);
        let bias = data(g.out_c, 5);
        let mut out = vec![0.0; g.out_c * g.out_h * g.out_w];
        let mut scratch = Vec::new();
        grp.throughput(Throughput::Elements(g.macs() as u64));
        grp.bench_function(name, |b| b.iter(|| k::conv2d(&input, &w, Some(&bias), &g, &mut out, &mut scratch)));
        if name == "first3x3_s2" {
            // The stem through im2col and the GEMM, against the direct kernel `conv2d` picks.
            grp.bench_function("first3x3_s2_im2col_gemm", |b| b.iter(|| k::conv2d_gemm(&input, &w, Some(&bias), &g, &k::Epilogue::NONE, &mut out, &mut scratch)));
        }
    }
    grp.finish();
}

/// A 1000-class classifier at batch 1: a row vector times transposed weights (5 MB).
fn bench_classifier(c: &mut Criterion) {
    let mut grp = c.benchmark_group("classifier");
    let (k, n) = (1280, 1000);
    let (x, w) = (data(k, 6), data(n * k, 7));
    let mut out = vec![0.0; n];
    grp.throughput(Throughput::Elements((k * n) as u64));
    grp.bench_function("gemv_1280x1000", |b| b.iter(|| k::sgemm_strided(1, k, n, &x, (k as isize, 1), &w, (1, k as isize), &mut out, false)));
    grp.finish();
}

/// The two AVX2 depthwise kernels on the same layers (which one `conv2d` picks is
/// `depthwise_blocked::prefers`; `--example depthwise_pick` times them paired on every shape).
fn bench_depthwise_kernels(c: &mut Criterion) {
    use k::depthwise::{depthwise_with, Isa};
    if k::depthwise::best_isa() != Isa::Avx2Fma {
        return;
    }
    let mut grp = c.benchmark_group("depthwise_kernels");
    for (name, g) in [
        ("dw3x3_s1_32x112", geom(32, 112, 3, 1, true, 32)),
        ("dw3x3_s2_96x112", geom(96, 112, 3, 2, true, 96)),
        ("dw5x5_s1_240x28", geom(240, 28, 5, 1, true, 240)),
        ("dw5x5_s2_144x56", geom(144, 56, 5, 2, true, 144)),
        ("dw5x5_s2_672x14", geom(672, 14, 5, 2, true, 672)),
        ("dw5x5_s1_1152x7", geom(1152, 7, 5, 1, true, 1152)),
        ("dw3x3_s1_384x10", geom(384, 10, 3, 1, true, 384)),
        ("dw3x3_s2_576x10", geom(576, 10, 3, 2, true, 576)),
    ] {
        let input = data(g.in_c * g.in_h * g.in_w, 3);
        let w = data(g.out_c * g.weights_per_output(), 4);
        let bias = data(g.out_c, 5);
        let mut out = vec![0.0; g.out_c * g.out_h * g.out_w];
        let mut scratch = Vec::new();
        grp.throughput(Throughput::Elements(g.macs() as u64));
        let mut isas = vec![("per_channel", Isa::Avx2Fma), ("blocked", Isa::Avx2FmaBlocked)];
        if k::has_avx512() && k::depthwise_rows512::applies(&g) {
            isas.push(("rows512", Isa::Avx512Rows));
        }
        for (kname, isa) in isas {
            grp.bench_with_input(BenchmarkId::new(kname, name), &(), |b, _| {
                b.iter(|| {
                    depthwise_with(
                        isa,
                        &input,
                        &w,
                        Some(&bias),
                        &g,
                        &k::Epilogue::NONE,
                        &mut out,
                        &mut scratch,
                    )
                })
            });
        }
    }
    grp.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench_gemm, bench_conv, bench_depthwise_kernels, bench_classifier
}
criterion_main!(benches);
