//! Integer kernels against a float model of the same quantized maths: real values are computed
//! in f64 from the dequantized operands, then quantized with round-half-even and saturation (the
//! written QDQ semantics). The integer result may differ by one step only where the fixed-point
//! multiplier's rounding crosses a .5 boundary, so |Δ| ≤ 1 everywhere and such cases are rare.

use proptest::prelude::*;
use subq_kernels::q8::{add_q8, conv_q8, requantize_u8, ConvPart, Requant, Scratch};
use subq_kernels::ConvGeometry;

fn q(real: f64, scale: f64, zp: i32) -> i64 {
    ((real / scale).round_ties_even() as i64 + zp as i64).clamp(0, 255)
}

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s >> 33
    }
}

#[derive(Debug, Clone)]
struct Case {
    g: ConvGeometry,
    seed: u64,
    per_channel: bool,
    zp_in: i32,
    zp_out: i32,
    zp_w: i32,
}

fn case() -> impl Strategy<Value = Case> {
    ((1usize..4, 1usize..5, 1usize..4, prop_oneof![Just(1usize), Just(3), Just(5)], 1usize..3, 0usize..3, 3usize..10, 3usize..10), (any::<bool>(), any::<u64>(), any::<bool>(), 0i32..256, 0i32..256, prop_oneof![Just(0i32), 1..256]))
        .prop_map(|((groups, cin_g, cout_g, k, stride, pad, h, w), (depthwise, seed, per_channel, zp_in, zp_out, zp_w))| {
            let (group, in_c, out_c) = if depthwise { (groups * cin_g, groups * cin_g, groups * cin_g) } else { (groups, groups * cin_g, groups * cout_g) };
            let pad = pad.min(k - 1);
            let (h, w) = (h.max(k), w.max(k));
            let out_h = (h + 2 * pad - k) / stride + 1;
            let out_w = (w + 2 * pad - k) / stride + 1;
            let g = ConvGeometry { in_c, in_h: h, in_w: w, out_c, out_h, out_w, kernel: [k, k], strides: [stride, stride], dilations: [1, 1], pad_top: pad, pad_left: pad, group };
            Case { g, seed, per_channel, zp_in, zp_out, zp_w }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Conv (dense, grouped, depthwise; 1×1 on a 1×1 image is the Gemm case) vs the float model.
    #[test]
    fn conv_matches_float_model(c in case()) {
        let g = c.g;
        let mut rnd = lcg(c.seed);
        let input: Vec<u8> = (0..g.in_c * g.in_h * g.in_w).map(|_| (rnd() % 256) as u8).collect();
        let k = g.weights_per_output();
        // uint8 weights with a zero-point (or int8 with zero-point 0 when zp_w == 0).
        let wq: Vec<i32> = (0..g.out_c * k).map(|_| if c.zp_w == 0 { (rnd() % 255) as i32 - 127 } else { (rnd() % 256) as i32 }).collect();
        let s_in = 0.01 + (rnd() % 1000) as f64 * 1e-4;
        let s_out = 0.02 + (rnd() % 1000) as f64 * 1e-3;
        let s_w: Vec<f64> = (0..if c.per_channel { g.out_c } else { 1 }).map(|_| 1e-4 + (rnd() % 1000) as f64 * 1e-5).collect();
        let sw = |o: usize| if c.per_channel { s_w[o] } else { s_w[0] };
        let bias: Vec<f64> = (0..g.out_c).map(|_| ((rnd() % 2001) as f64 - 1000.0) * 1e-3).collect();
        // Integer side, as the engine builds it.
        let reals: Vec<f64> = (0..g.out_c).map(|o| s_in * sw(o) / s_out).collect();
        let (requant, shift) = Requant::common(&reals);
        let weight: Vec<i16> = wq.iter().map(|&v| (v - c.zp_w) as i16).collect();
        let part = ConvPart::new(weight, if c.per_channel { requant } else { vec![requant[0]] }, &g);
        let bias_fixed: Vec<i64> = bias.iter().map(|&b| (b / s_out * (shift as f64).exp2()).round() as i64).collect();
        let mut out = vec![0u8; g.out_c * g.out_h * g.out_w];
        conv_q8(&input, c.zp_in, &[part], &bias_fixed, shift, c.zp_out, 0, 255, &g, &mut out, &mut Scratch::default());
        // Float model.
        let (cin_g, cout_g) = (g.in_c / g.group, g.out_c / g.group);
        let mut off_by_one = 0;
        for o in 0..g.out_c {
            let grp = o / cout_g;
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let mut acc = bias[o];
                    for ic in 0..cin_g {
                        for ky in 0..g.kernel[0] {
                            for kx in 0..g.kernel[1] {
                                let iy = (oy * g.strides[0] + ky) as isize - g.pad_top as isize;
                                let ix = (ox * g.strides[1] + kx) as isize - g.pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                    continue;
                                }
                                let x = input[((grp * cin_g + ic) * g.in_h + iy as usize) * g.in_w + ix as usize] as i32;
                                let w = wq[((o * cin_g + ic) * g.kernel[0] + ky) * g.kernel[1] + kx];
                                acc += s_in * (x - c.zp_in) as f64 * sw(o) * (w - c.zp_w) as f64;
                            }
                        }
                    }
                    let want = q(acc, s_out, c.zp_out);
                    let got = out[(o * g.out_h + oy) * g.out_w + ox] as i64;
                    prop_assert!((got - want).abs() <= 1, "{got} vs {want} at o={o} ({oy},{ox}) for {c:?}");
                    off_by_one += (got != want) as usize;
                }
            }
        }
        prop_assert!(off_by_one * 50 <= out.len().max(50), "{off_by_one} of {} outputs off by one", out.len());
    }

    #[test]
    fn add_matches_float_model(seed in any::<u64>(), n in 1usize..200, za in 0i32..256, zb in 0i32..256, zo in 0i32..256) {
        let mut rnd = lcg(seed);
        let (sa, sb, so) = (1e-3 + (rnd() % 1000) as f64 * 1e-4, 1e-3 + (rnd() % 1000) as f64 * 1e-4, 1e-3 + (rnd() % 1000) as f64 * 2e-4);
        let a: Vec<u8> = (0..n).map(|_| (rnd() % 256) as u8).collect();
        let b: Vec<u8> = (0..n).map(|_| (rnd() % 256) as u8).collect();
        let (m, shift) = Requant::common(&[sa / so, sb / so]);
        let mut out = vec![0u8; n];
        add_q8(&a, za, m[0].multiplier, &b, zb, m[1].multiplier, shift, zo, 0, 255, &mut out);
        for i in 0..n {
            let want = q(sa * (a[i] as i32 - za) as f64 + sb * (b[i] as i32 - zb) as f64, so, zo);
            prop_assert!((out[i] as i64 - want).abs() <= 1, "{} vs {want}", out[i]);
        }
    }

    #[test]
    fn requantize_matches_float_model(seed in any::<u64>(), n in 1usize..300, zi in 0i32..256, zo in 0i32..256, lo in 0i32..100, hi in 150i32..256) {
        let mut rnd = lcg(seed);
        let (si, so) = (1e-3 + (rnd() % 1000) as f64 * 1e-4, 1e-3 + (rnd() % 1000) as f64 * 1e-4);
        let x: Vec<u8> = (0..n).map(|_| (rnd() % 256) as u8).collect();
        let mut out = vec![0u8; n];
        requantize_u8(&x, zi, Requant::new(si / so), zo, lo, hi, &mut out);
        for i in 0..n {
            let want = q(si * (x[i] as i32 - zi) as f64, so, zo).clamp(lo as i64, hi as i64);
            prop_assert!((out[i] as i64 - want).abs() <= 1, "{} vs {want}", out[i]);
        }
    }
}
