//! Which FP32 depthwise kernel is faster on each layer shape of MobileNetV2-160 and
//! EfficientNet-Lite0: the per-channel one (eight columns per vector) or the channel-blocked one
//! (eight channels per vector). The evidence behind `depthwise_blocked::prefers`.
//!
//!     cargo run --release -p subq-kernels --example depthwise_pick
//!
//! The two kernels alternate in short blocks and each round gives one time ratio, so a slow
//! phase of a shared host hits both sides of a round; the median ratio over the rounds is printed.

use std::time::Instant;
use subq_kernels::f32::{depthwise as dw, Epilogue};
use subq_kernels::ConvGeometry;

fn geom(c: usize, hw: usize, k: usize, s: usize) -> ConvGeometry {
    let pad = k / 2;
    let o = (hw + 2 * pad - k) / s + 1;
    ConvGeometry {
        in_c: c,
        in_h: hw,
        in_w: hw,
        out_c: c,
        out_h: o,
        out_w: o,
        kernel: [k, k],
        strides: [s, s],
        dilations: [1, 1],
        pad_top: pad,
        pad_left: pad,
        group: c,
    }
}

fn main() {
    if dw::best_isa() != dw::Isa::Avx2Fma {
        eprintln!("no AVX2+FMA here: nothing to compare");
        return;
    }
    let layers = [
        // MobileNetV2-1.0 at 160×160 (input plane, kernel, stride).
        geom(32, 80, 3, 1),
        geom(96, 80, 3, 2),
        geom(144, 40, 3, 1),
        geom(144, 40, 3, 2),
        geom(192, 20, 3, 1),
        geom(192, 20, 3, 2),
        geom(384, 10, 3, 1),
        geom(576, 10, 3, 1),
        geom(576, 10, 3, 2),
        geom(960, 5, 3, 1),
        // EfficientNet-Lite0 at 224×224.
        geom(32, 112, 3, 1),
        geom(96, 112, 3, 2),
        geom(144, 56, 3, 1),
        geom(144, 56, 5, 2),
        geom(240, 28, 5, 1),
        geom(240, 28, 3, 2),
        geom(480, 14, 3, 1),
        geom(480, 14, 5, 1),
        geom(672, 14, 5, 1),
        geom(672, 14, 5, 2),
        geom(1152, 7, 5, 1),
        geom(1152, 7, 3, 1),
    ];
    println!("| layer (C @ in, k, s) | out | per-channel µs | blocked µs | blocked / per-channel | prefers blocked |");
    println!("|---|---|---:|---:|---:|---|");
    for g in layers {
        let x: Vec<f32> = (0..g.in_c * g.in_h * g.in_w)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..g.out_c * g.kernel[0] * g.kernel[1])
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..g.out_c).map(|i| i as f32 * 1e-3).collect();
        let ep = Epilogue {
            affine: None,
            clamp: Some((0.0, 6.0)),
        };
        let mut out = vec![0.0; g.out_c * g.out_h * g.out_w];
        let mut scratch = Vec::new();
        let mut time = |isa: dw::Isa, reps: usize| {
            let t0 = Instant::now();
            for _ in 0..reps {
                dw::depthwise_with(isa, &x, &w, Some(&b), &g, &ep, &mut out, &mut scratch);
            }
            t0.elapsed().as_secs_f64() / reps as f64
        };
        time(dw::Isa::Avx2Fma, 20);
        time(dw::Isa::Avx2FmaBlocked, 20);
        let (mut ratios, mut a_t, mut b_t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..31 {
            let a = time(dw::Isa::Avx2Fma, 30);
            let bl = time(dw::Isa::Avx2FmaBlocked, 30);
            ratios.push(bl / a);
            a_t.push(a);
            b_t.push(bl);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let r = med(&mut ratios);
        println!(
            "| {} @ {}×{}, {}×{}, /{} | {}×{} | {:.1} | {:.1} | {:.2} | {} |",
            g.in_c,
            g.in_h,
            g.in_w,
            g.kernel[0],
            g.kernel[1],
            g.strides[0],
            g.out_h,
            g.out_w,
            med(&mut a_t) * 1e6,
            med(&mut b_t) * 1e6,
            r,
            if subq_kernels::f32::depthwise_blocked::prefers(&g) {
                "yes"
            } else {
                "no"
            }
        );
    }
}
