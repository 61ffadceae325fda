//! Every fast integer kernel against its scalar reference, bit for bit.
//!
//! The dispatched kernels (`conv_q8`, `add_q8`, …) are checked on whatever path this machine
//! picks (run with `SUBQ_SIMD=portable` to check the portable path); on x86-64 with AVX2 the
//! AVX2 kernels are also called directly.

use proptest::prelude::*;
use subq_kernels::q8::{self, ConvPart, Requant, Scratch};
use subq_kernels::ConvGeometry;

/// Tiny deterministic generator for bulk data (proptest picks the seeds and shapes).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn bytes(&mut self, n: usize, extreme: bool) -> Vec<u8> {
        (0..n).map(|_| if extreme { if self.next() & 1 == 0 { 0 } else { 255 } } else { self.next() as u8 }).collect()
    }
    /// `w − zw` for uint8 or int8 weights: [−255, 255].
    fn weights(&mut self, n: usize, extreme: bool) -> Vec<i16> {
        (0..n).map(|_| if extreme { if self.next() & 1 == 0 { -255 } else { 255 } } else { self.range(-255, 255) as i16 }).collect()
    }
    /// `m` rows of `k` weights `w − zw` from uint8 `w`, one zero-point `zw` per row (as the
    /// engine sees 8-bit weights: each row spans at most 255).
    fn weights8(&mut self, m: usize, k: usize) -> Vec<i16> {
        let mut w = Vec::with_capacity(m * k);
        for _ in 0..m {
            let zw = self.range(0, 255) as i16;
            for _ in 0..k {
                w.push(self.next() as u8 as i16 - zw);
            }
        }
        w
    }
    /// Like trained 8-bit weights: `w − zw` mostly in [−64, 64], about 1 in 64 anywhere in
    /// [−255, 255] (the byte GEMM's sparse remainder), and 1 pair in 8 a large value next to a
    /// small one with `|d0| + |d1|` up to 128, as equalized weights are (the byte GEMM multiplies
    /// such pairs whole, right at `vpmaddubsw`'s saturation bound).
    fn weights_sparse(&mut self, n: usize) -> Vec<i16> {
        let mut w = Vec::with_capacity(n + 1);
        while w.len() < n {
            if self.next().is_multiple_of(8) {
                let big = self.range(-127, 127);
                let room = 128 - big.abs();
                let pair = [big, self.range(-room, room)];
                w.extend(if self.next() & 1 == 0 { pair } else { [pair[1], pair[0]] }.map(|d| d as i16));
            } else {
                w.push(if self.next().is_multiple_of(64) { self.range(-255, 255) as i16 } else { self.range(-64, 64) as i16 });
            }
        }
        w.truncate(n);
        w
    }
    fn real(&mut self) -> f64 {
        // log-uniform in [1e-6, 20]
        (1e-6f64.ln() + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (20f64.ln() - 1e-6f64.ln())).exp()
    }
}

#[derive(Clone, Debug)]
struct ConvCase {
    g: ConvGeometry,
    parts: usize,
    per_channel: bool,
    zp_in: i32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    extreme: bool,
    seed: u64,
}

fn conv_case(kind: u8) -> impl Strategy<Value = ConvCase> {
    (
        (1usize..=4, 1usize..=6, 1usize..=6), // groups (grouped kind) / channel multipliers
        (1usize..=5, 1usize..=5),             // kernel
        (1usize..=3, 1usize..=3),             // strides
        (1usize..=2, 1usize..=2),             // dilations
        (1usize..=19, 1usize..=37),           // input size
        (0usize..=4, 0usize..=4, 0usize..=4, 0usize..=4),
        (1usize..=3, any::<bool>(), 0i32..=255, 0i32..=255, 0i32..=120, 130i32..=255),
        (any::<bool>(), any::<u64>(), 0u8..8),
    )
        .prop_filter_map("empty output", move |((grp, ci, co), (kh, kw), (sy, sx), (dy, dx), (ih, iw), (pt, pl, pb, pr), (parts, per_channel, zp_in, out_zp, qmin, qmax), (extreme, seed, shape))| {
            // `shape` biases toward the shapes the engine meets: stride 1/2, dilation 1, odd
            // kernels with "same" padding.
            let (mut kh, mut kw, mut sy, mut sx, mut dy, mut dx, mut pt, mut pl, mut pb, mut pr) = (kh, kw, sy, sx, dy, dx, pt, pl, pb, pr);
            if shape < 5 {
                let k = [1, 3, 5, 3, 5][shape as usize];
                (kh, kw, dy, dx) = (k, k, 1, 1);
                (sy, sx) = if shape >= 3 { (2, 2) } else { (1, 1) };
                (pt, pl, pb, pr) = (k / 2, k / 2, k / 2, k / 2);
                if sy == 2 && seed & 1 == 1 {
                    (pt, pl) = ((k - 1) / 2, (k - 1) / 2);
                    (pb, pr) = (k / 2, k / 2);
                }
            }
            let (in_c, out_c, group) = match kind {
                0 => (ci * grp, co * grp, 1),   // dense
                1 => (ci * 3, ci * 3, ci * 3), // depthwise
                _ => (ci * grp, co * grp, grp), // grouped
            };
            let (hp, wp) = (ih + pt + pb, iw + pl + pr);
            let (ek, ekw) = (dy * (kh - 1) + 1, dx * (kw - 1) + 1);
            if hp < ek || wp < ekw || pt >= ek || pl >= ekw {
                return None;
            }
            let (oh, ow) = ((hp - ek) / sy + 1, (wp - ekw) / sx + 1);
            let g = ConvGeometry { in_c, in_h: ih, in_w: iw, out_c, out_h: oh, out_w: ow, kernel: [kh, kw], strides: [sy, sx], dilations: [dy, dx], pad_top: pt, pad_left: pl, group };
            Some(ConvCase { g, parts, per_channel, zp_in, out_zp, qmin, qmax, extreme, seed })
        })
}

fn pointwise_case() -> impl Strategy<Value = ConvCase> {
    (1usize..=160, 1usize..=40, 1usize..=12, 1usize..=12, 1usize..=3, any::<bool>(), 0i32..=255, 0i32..=255, any::<bool>(), any::<u64>()).prop_map(|(in_c, out_c, h, w, parts, per_channel, zp_in, out_zp, extreme, seed)| {
        let g = ConvGeometry { in_c, in_h: h, in_w: w, out_c, out_h: h, out_w: w, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 };
        ConvCase { g, parts, per_channel, zp_in, out_zp, qmin: 0, qmax: 255, extreme, seed }
    })
}

struct ConvData {
    input: Vec<u8>,
    parts: Vec<ConvPart>,
    bias: Vec<i64>,
    shift: u32,
}

fn conv_data(c: &ConvCase) -> ConvData {
    let g = &c.g;
    let mut rng = Rng(c.seed | 1);
    let input = rng.bytes(g.in_c * g.in_h * g.in_w, c.extreme);
    let per = g.weights_per_output();
    let nreq = if c.per_channel { g.out_c } else { 1 };
    let reals: Vec<Vec<f64>> = (0..c.parts).map(|_| (0..nreq).map(|_| rng.real()).collect()).collect();
    let flat: Vec<f64> = reals.iter().flatten().copied().collect();
    let (_, shift) = Requant::common(&flat);
    let scale = (shift as f64).exp2();
    let parts = reals
        .iter()
        .enumerate()
        .map(|(pi, r)| {
            // A quarter of the cases have real 8-bit weights (rows spanning ≤ 255, as the
            // engine's are), a quarter trained-like ones (mostly |w − zw| ≤ 64, a few outliers).
            // Chosen per part, so split convs mix parts with and without a byte form.
            let mut weight = match (c.extreme, (c.seed >> (1 + 2 * pi)) & 3) {
                (false, 0) => rng.weights8(g.out_c, per),
                (false, 1) => rng.weights_sparse(g.out_c * per),
                _ => rng.weights(g.out_c * per, c.extreme),
            };
            // One case in 8: weights wider than one 8-bit grid, `d1·2^j + d2` (what two parts
            // on grids 2^j apart would merge into), with the largest j whose accumulators stay
            // exact in i32: the kernels must take their bounds from `ConvPart::wmax`.
            if (c.seed >> 20).is_multiple_of(8) {
                if let Some(j) = (1..=6u32).rev().find(|&j| per as u64 * 255 * (255 << j) + per as u64 * 255 * 255 < 1 << 31) {
                    let fine = rng.weights(weight.len(), c.extreme);
                    for (d, f) in weight.iter_mut().zip(fine) {
                        *d = (*d << j) + f;
                    }
                }
            }
            let requant = r.iter().map(|&m| Requant { multiplier: (m * scale).round() as i64, shift }).collect();
            ConvPart::new(weight, requant, g)
        })
        .collect();
    let bias = (0..g.out_c).map(|_| (rng.range(-100_000, 100_000) as f64 * flat[0] * scale) as i64).collect();
    ConvData { input, parts, bias, shift }
}

fn check_conv(c: &ConvCase) -> Result<(), TestCaseError> {
    let g = &c.g;
    let d = conv_data(c);
    let n = g.out_c * g.out_h * g.out_w;
    let run = |f: &dyn Fn(&mut [u8], &mut Scratch)| {
        let mut out = vec![0xAAu8; n];
        f(&mut out, &mut Scratch::default());
        out
    };
    let want = run(&|o, s| q8::conv_q8_reference(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, g, o, s));
    let got = run(&|o, s| q8::conv_q8(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, g, o, s));
    prop_assert_eq!(&got, &want, "dispatched conv, {:?}", g);
    let got = run(&|o, s| q8::conv_q8_portable(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, g, o, s));
    prop_assert_eq!(&got, &want, "portable conv, {:?}", g);
    // With a per-channel cap (fused into the AVX2 epilogues): the reference output, capped.
    let mut rng = Rng(c.seed ^ 0x9e37_79b9_7f4a_7c15 | 1);
    let cmax: Vec<u8> = (0..g.out_c).map(|_| if rng.next().is_multiple_of(4) { 255 } else { rng.next() as u8 }).collect();
    let mut capped = want.clone();
    q8::clamp_channels_u8_reference(&mut capped, g.out_h * g.out_w, &cmax);
    let got = run(&|o, s| q8::conv_q8_clamped(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, &cmax, g, o, s));
    prop_assert_eq!(&got, &capped, "capped conv, {:?}", g);
    // The float output stage, wherever it is provably exact: same bytes, capped or not.
    if d.parts.len() == 1 {
        let r = &d.parts[0].requant;
        let mult: Vec<i64> = (0..g.out_c).map(|i| if r.len() == 1 { r[0].multiplier } else { r[i].multiplier }).collect();
        for (cap, expect) in [(None, &want), (Some(&cmax[..]), &capped)] {
            if let Some(e) = q8::FloatEpilogue::new(&mult, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, cap) {
                let got = run(&|o, s| q8::conv_q8_epi(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, cap, Some(&e), g, o, s));
                prop_assert_eq!(&got, expect, "float output stage (cap {}), {:?}", cap.is_some(), g);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && q8::avx2::conv_supported(&d.parts, g) {
        // A reused scratch (dirty from a previous call) must not change anything either.
        let mut s = Scratch::default();
        for _ in 0..2 {
            let mut out = vec![0x55u8; n];
            unsafe { q8::avx2::conv_q8(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, g, &mut out, &mut s) };
            prop_assert_eq!(&out, &want, "avx2 conv, {:?}", g);
        }
    }
    Ok(())
}

/// The dispatched accumulators (float-output layers) equal the reference's, whatever the
/// buffers held before.
fn check_conv_acc(c: &ConvCase) -> Result<(), TestCaseError> {
    let d = conv_data(c);
    let (mut want, mut cols) = (vec![3i32; 5], vec![-2i16; 7]);
    q8::conv_acc_reference(&d.input, c.zp_in, &d.parts[0].weight, &c.g, &mut want, &mut cols);
    let mut got = vec![-9i32; 11];
    let mut scratch = Scratch { cols: vec![5i16; 3], ..Default::default() };
    q8::conv_acc(&d.input, c.zp_in, &d.parts[0], &c.g, &mut got, &mut scratch);
    prop_assert_eq!(got, want);
    Ok(())
}

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cfg(200))]

    #[test]
    fn conv_dense_matches_reference(c in conv_case(0)) { check_conv(&c)?; }

    #[test]
    fn conv_depthwise_matches_reference(c in conv_case(1)) { check_conv(&c)?; }

    #[test]
    fn conv_grouped_matches_reference(c in conv_case(2)) { check_conv(&c)?; }

    #[test]
    fn conv_pointwise_matches_reference(c in pointwise_case()) { check_conv(&c)?; }

    /// `qmin = 0`: the float output stage may then run without its f32 clamps (saturating
    /// byte packs instead), in the depthwise and dense kernels.
    #[test]
    fn conv_depthwise_qmin0_matches_reference(c in conv_case(1).prop_map(|mut c| { c.qmin = 0; c })) { check_conv(&c)?; }

    #[test]
    fn conv_dense_qmin0_matches_reference(c in conv_case(0).prop_map(|mut c| { c.qmin = 0; c })) { check_conv(&c)?; }

    #[test]
    fn conv_acc_matches_reference(c in conv_case(0)) { check_conv_acc(&c)?; }

    /// Classifier heads (one output position): the byte-row matrix–vector path when the rows fit.
    #[test]
    fn conv_acc_fully_connected_matches_reference(c in pointwise_case().prop_map(|mut c| { (c.g.in_h, c.g.in_w, c.g.out_h, c.g.out_w) = (1, 1, 1, 1); c })) { check_conv_acc(&c)?; }

    #[test]
    fn conv_acc_grouped_and_depthwise_match_reference(c in conv_case(2), dw in conv_case(1)) { check_conv_acc(&c)?; check_conv_acc(&dw)?; }

    #[test]
    fn add_matches_reference(n in 0usize..300, za in 0i32..=255, zb in 0i32..=255, zo in 0i32..=255, lo in 0i32..=100, hi in 150i32..=255, extreme in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let (a, b) = (rng.bytes(n, extreme), rng.bytes(n, extreme));
        let (ms, shift) = Requant::common(&[rng.real(), rng.real()]);
        let mut want = vec![0u8; n];
        q8::add_q8_reference(&a, za, ms[0].multiplier, &b, zb, ms[1].multiplier, shift, zo, lo, hi, &mut want);
        let mut got = vec![0u8; n];
        q8::add_q8(&a, za, ms[0].multiplier, &b, zb, ms[1].multiplier, shift, zo, lo, hi, &mut got);
        prop_assert_eq!(&got, &want);
    }

    /// Multipliers on a coarse power-of-two grid put many sums exactly halfway between two
    /// outputs, where the kernels' rounding (ties away from zero, both signs) must match.
    #[test]
    fn add_rounds_ties_as_the_reference(n in 0usize..300, za in 0i32..=255, zb in 0i32..=255, zo in 0i32..=255, ka in 1i64..4, kb in 1i64..4, seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let (a, b) = (rng.bytes(n, false), rng.bytes(n, false));
        let (ma, mb, shift) = (ka << 28, kb << 28, 31);
        let mut want = vec![0u8; n];
        q8::add_q8_reference(&a, za, ma, &b, zb, mb, shift, zo, 0, 255, &mut want);
        let mut got = vec![0u8; n];
        q8::add_q8(&a, za, ma, &b, zb, mb, shift, zo, 0, 255, &mut got);
        prop_assert_eq!(&got, &want);
    }

    #[test]
    fn global_avg_pool_matches_reference(c in 1usize..20, hw in 1usize..300, zp in 0i32..=255, zo in 0i32..=255, extreme in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let x = rng.bytes(c * hw, extreme);
        let r = Requant::new(rng.real() / hw as f64);
        let (mut want, mut got) = (vec![0u8; c], vec![0u8; c]);
        q8::global_avg_pool_q8_reference(&x, c, zp, r, zo, &mut want);
        q8::global_avg_pool_q8(&x, c, zp, r, zo, &mut got);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn quantize_matches_reference(n in 0usize..200, scale_exp in -12i32..6, zp in 0i32..=255, seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let scale = (scale_exp as f32).exp2() * (1.0 + (rng.next() % 1000) as f32 / 1000.0);
        let x: Vec<f32> = (0..n).map(|_| match rng.next() % 8 {
            0 => (rng.range(-300, 300) as f32 + 0.5) * scale, // ties (when exact)
            1 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, f32::MIN_POSITIVE][rng.next() as usize % 8],
            _ => (rng.range(-1 << 20, 1 << 20) as f32 / 1024.0) * scale * 3.0,
        }).collect();
        let (mut want, mut got) = (vec![0u8; n], vec![7u8; n]);
        q8::quantize_f32_reference(&x, scale, zp, &mut want);
        q8::quantize_f32(&x, scale, zp, &mut got);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn clamp_channels_matches_reference(images in 1usize..3, ch in 1usize..9, inner in 1usize..120, seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let x = rng.bytes(images * ch * inner, false);
        let qmax = rng.bytes(ch, false);
        let (mut want, mut got) = (x.clone(), x);
        q8::clamp_channels_u8_reference(&mut want, inner, &qmax);
        q8::clamp_channels_u8(&mut got, inner, &qmax);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn requantize_matches_reference(n in 0usize..2000, zp in 0i32..=255, zo in 0i32..=255, lo in 0i32..=100, hi in 150i32..=255, seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let x = rng.bytes(n, false);
        let r = Requant::new(rng.real());
        let (mut want, mut got) = (vec![0u8; n], vec![0u8; n]);
        q8::requantize_u8_reference(&x, zp, r, zo, lo, hi, &mut want);
        q8::requantize_u8(&x, zp, r, zo, lo, hi, &mut got);
        prop_assert_eq!(got, want);
    }

    /// Same grid in and out (multiplier 1, equal zero-points: a clamp) and one zero-point off
    /// (a shift by one step, not a clamp).
    #[test]
    fn requantize_on_one_grid_matches_reference(n in 0usize..2000, zp in 0i32..=255, lo in 0i32..=100, hi in 150i32..=255, off in 0i32..=1, seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let x = rng.bytes(n, false);
        let r = Requant::new(1.0);
        let zo = (zp + off).min(255);
        let (mut want, mut got) = (vec![0u8; n], vec![0u8; n]);
        q8::requantize_u8_reference(&x, zp, r, zo, lo, hi, &mut want);
        q8::requantize_u8(&x, zp, r, zo, lo, hi, &mut got);
        prop_assert_eq!(got, want);
    }
}

/// The reference output stage of one channel (the single-part conv's epilogue, then the cap).
#[allow(clippy::too_many_arguments)]
fn stage_reference(acc: i32, m: i64, bias: i64, shift: u32, zp: i32, qmin: i32, qmax: i32, cap: u8) -> u8 {
    (q8::clamp_u8(zp as i64 + q8::round_shift(bias + acc as i64 * m, shift), qmin, qmax)).min(cap)
}

proptest! {
    #![proptest_config(cfg(300))]

    /// A float output stage, when `FloatEpilogue::new` gives one, equals the i64 stage on the
    /// i32 extremes, on random accumulators, and around every point where the output changes.
    #[test]
    fn float_stage_matches_reference(real in 1e-7f64..40.0, bias_real in -300.0f64..300.0, zp in 0i32..=255, qmin in 0i32..=120, qmax in 130i32..=255, cap in any::<u8>(), capped in any::<bool>(), seed in any::<u64>()) {
        let r = Requant::new(real);
        let scale = (r.shift as f64).exp2();
        let bias = (bias_real * scale).round() as i64;
        let cap = if capped { cap } else { 255 };
        let cm = [cap];
        let Some(e) = q8::FloatEpilogue::new(&[r.multiplier], &[bias], r.shift, zp, qmin, qmax, capped.then_some(&cm[..])) else { return Ok(()) };
        prop_assert!(e.ok[0]);
        let want = |acc: i32| stage_reference(acc, r.multiplier, bias, r.shift, zp, qmin, qmax, cap);
        let mut rng = Rng(seed | 1);
        let mut accs = vec![i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
        accs.extend((0..200).map(|_| rng.next() as i32));
        accs.extend((0..200).map(|_| rng.range(-2_000_000, 2_000_000) as i32));
        // Around the real-valued change points (j − zp − 0.5 − bias_real) / real.
        for j in qmin..=qmax + 1 {
            let t = ((j - zp) as f64 - 0.5 - bias as f64 / scale) / (r.multiplier as f64 / scale);
            if t.abs() < 2.0e9 {
                accs.extend((-3..=3).map(|d| (t.round() as i64 + d).clamp(i32::MIN as i64, i32::MAX as i64) as i32));
            }
        }
        for acc in accs {
            prop_assert_eq!(e.apply(0, acc), want(acc), "acc {}", acc);
        }
    }
}

proptest! {
    #![proptest_config(cfg(200))]

    /// `accumulator_bounds` holds every accumulator of random convs (grouped, strided, padded)
    /// on inputs inside the given byte ranges, and is reached where the input may sit at its zero
    /// point (one output pixel seeing every tap, each at the end of its range the weight favours).
    #[test]
    fn accumulator_bounds_hold_and_are_reached(groups in 1usize..=3, cin_g in 1usize..=3, cout_g in 1usize..=3, k in 1usize..=3, stride in 1usize..=2, side in 3usize..=6, zp in 0i32..=255, wide in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let (in_c, out_c) = (groups * cin_g, groups * cout_g);
        let out_side = (side + 2 * (k / 2) - k) / stride + 1;
        let g = ConvGeometry { in_c, in_h: side, in_w: side, out_c, out_h: out_side, out_w: out_side, kernel: [k, k], strides: [stride, stride], dilations: [1, 1], pad_top: k / 2, pad_left: k / 2, group: groups };
        // Fused subtensor weights reach ±2^15; 8-bit ones ±255.
        let wmax = if wide { 32_000 } else { 255 };
        let weight: Vec<i16> = (0..out_c * g.weights_per_output()).map(|_| rng.range(-wmax, wmax) as i16).collect();
        let ranges: Vec<(u8, u8)> = (0..in_c).map(|_| { let (a, b) = (rng.next() as u8, rng.next() as u8); (a.min(b), a.max(b)) }).collect();
        let bounds = q8::accumulator_bounds(&weight, &g, zp, &ranges);
        prop_assert_eq!(bounds.len(), out_c);
        let plane = side * side;
        let (mut acc, mut cols) = (Vec::new(), Vec::new());
        for trial in 0..20 {
            // Bytes at the ends of each channel's range (where the extremes are), or anywhere in it.
            let x: Vec<u8> = (0..in_c * plane).map(|i| { let (l, h) = ranges[i / plane]; if trial % 2 == 0 { if rng.next() & 1 == 0 { l } else { h } } else { rng.range(l as i64, h as i64) as u8 } }).collect();
            q8::conv_acc_reference(&x, zp, &weight, &g, &mut acc, &mut cols);
            for (i, &a) in acc.iter().enumerate() {
                let (lo, hi) = bounds[i / (out_side * out_side)];
                prop_assert!(lo <= a && a <= hi, "channel {} acc {} outside [{}, {}]", i / (out_side * out_side), a, lo, hi);
            }
        }
        // Tightness: a k×k input without padding, one output pixel, zero point inside each range.
        let gt = ConvGeometry { in_h: k, in_w: k, out_h: 1, out_w: 1, pad_top: 0, pad_left: 0, strides: [1, 1], ..g };
        let inside: Vec<(u8, u8)> = ranges.iter().map(|&(l, h)| (l.min(zp as u8), h.max(zp as u8))).collect();
        let tight = q8::accumulator_bounds(&weight, &gt, zp, &inside);
        let (taps, per) = (k * k, gt.weights_per_output());
        for c in 0..out_c {
            for want_max in [false, true] {
                let mut x = vec![zp as u8; in_c * taps];
                for (i, &d) in weight[c * per..(c + 1) * per].iter().enumerate() {
                    let ic = c / cout_g * cin_g + i / taps;
                    let (l, h) = inside[ic];
                    x[ic * taps + i % taps] = if (d > 0) == want_max { h } else { l };
                }
                q8::conv_acc_reference(&x, zp, &weight, &gt, &mut acc, &mut cols);
                let want = if want_max { tight[c].1 } else { tight[c].0 };
                prop_assert_eq!(acc[c], want, "channel {} max {}", c, want_max);
            }
        }
    }

    /// A float stage proven on a range of accumulators (`for_accumulators`) equals the i64 stage
    /// at both ends of the range, around every change point inside it and on random accumulators
    /// in it (multipliers log-uniform from 1e-6 to 0.5, so that many have no form on all of i32).
    #[test]
    fn float_stage_on_reachable_accumulators_matches_reference(real_log10 in -6.0f64..-0.3, bias_real in -300.0f64..300.0, zp in 0i32..=255, qmin in 0i32..=120, qmax in 130i32..=255, cap in any::<u8>(), capped in any::<bool>(), width_log2 in 0u32..32, centre in -1_000_000_000i64..1_000_000_000, seed in any::<u64>()) {
        let r = Requant::new(10f64.powf(real_log10));
        let scale = (r.shift as f64).exp2();
        let bias = (bias_real * scale).round() as i64;
        let cap = if capped { cap } else { 255 };
        let cm = [cap];
        // Widths from 1 to all of i32 (log-uniform), clipped to i32.
        let width = 1i64 << width_log2;
        let range = ((centre - width).max(i32::MIN as i64) as i32, (centre + width).min(i32::MAX as i64) as i32);
        let Some(e) = q8::FloatEpilogue::for_accumulators(&[r.multiplier], &[bias], r.shift, zp, qmin, qmax, capped.then_some(&cm[..]), Some(&[range])) else { return Ok(()) };
        prop_assert!(e.ok[0]);
        let want = |acc: i32| stage_reference(acc, r.multiplier, bias, r.shift, zp, qmin, qmax, cap);
        let mut rng = Rng(seed | 1);
        let mut accs = vec![range.0, range.0 + 1, range.1 - 1, range.1];
        accs.extend((0..300).map(|_| rng.range(range.0 as i64, range.1 as i64) as i32));
        for j in qmin..=qmax + 1 {
            let t = ((j - zp) as f64 - 0.5 - bias as f64 / scale) / (r.multiplier as f64 / scale);
            accs.extend((-3..=3).map(|d| (t.round() as i64 + d).clamp(range.0 as i64, range.1 as i64) as i32));
        }
        for acc in accs {
            prop_assert_eq!(e.apply(0, acc), want(acc), "acc {} in [{}, {}]", acc, range.0, range.1);
        }
    }
}

/// Proving the float stage only on the accumulators a channel can reach gives one to channels
/// with tiny multipliers that have none on all of i32 (fused subtensor depthwise layers: real
/// multipliers around 1e-4, small weights in the quiet channels).
#[test]
fn reachable_range_gives_float_stages_to_small_multipliers() {
    let mut rng = Rng(0x0dd5_eed5);
    let (mut on_i32, mut on_range) = (0, 0);
    for c in 0..100 {
        let r = Requant::new(1.1e-4 + c as f64 * 1.3e-7);
        let bias = (rng.range(-50_000, 50_000) as f64 / 1000.0 * (r.shift as f64).exp2()) as i64;
        let zp = rng.range(0, 255) as i32;
        // A 3×3 channel with weights up to ±40 on bytes 0..=255 (zero point 128).
        let weight: Vec<i16> = (0..9).map(|_| rng.range(-40, 40) as i16).collect();
        let g = ConvGeometry { in_c: 1, in_h: 3, in_w: 3, out_c: 1, out_h: 1, out_w: 1, kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 };
        let reach = q8::accumulator_bounds(&weight, &g, 128, &[(0, 255)]);
        on_i32 += q8::FloatEpilogue::new(&[r.multiplier], &[bias], r.shift, zp, 0, 255, None).is_some() as usize;
        on_range += q8::FloatEpilogue::for_accumulators(&[r.multiplier], &[bias], r.shift, zp, 0, 255, None, Some(&reach)).is_some() as usize;
    }
    assert!(on_i32 < 50 && on_range >= 90, "float stages: {on_i32} of 100 on all of i32, {on_range} on the reachable range");
}

/// Typical engine parameters get a float output stage (else the fast path would never run).
#[test]
fn float_stage_exists_for_typical_layers() {
    let mut rng = Rng(0x1234_5678);
    let mut built = 0;
    for _ in 0..200 {
        // Real multipliers 0.005 … 0.1, biases within ±300 output steps.
        let real = 0.005 * (1.0 + (rng.next() % 1000) as f64 / 50.0);
        let r = Requant::new(real);
        let bias = (rng.range(-300_000, 300_000) as f64 / 1000.0 * (r.shift as f64).exp2()) as i64;
        if q8::FloatEpilogue::new(&[r.multiplier], &[bias], r.shift, rng.range(0, 255) as i32, 0, 255, None).is_some() {
            built += 1;
        }
    }
    assert!(built >= 150, "float stage built for only {built} of 200 channels");
}

/// Subtensor-split depthwise (2 parts, also 3): stride 1 and 2, 3×3 and 5×5, "same" and
/// asymmetric padding, widths around the 16-lane blocks, per-tensor and per-channel grids,
/// extreme data (the fused multi-part AVX2 kernel must equal the reference bit for bit).
#[test]
fn conv_depthwise_split_parts_match_reference() {
    let mut seed = 0x5eed_u64;
    for parts in [2usize, 3] {
        for k in [3usize, 5] {
            for s in [1usize, 2] {
                for &(h, w) in &[(1usize, 1usize), (5, 7), (9, 16), (12, 17), (16, 33), (23, 40)] {
                    for asym in [false, true] {
                        if asym && s == 1 {
                            continue;
                        }
                        let (pt, pb) = if asym { ((k - 1) / 2, k / 2) } else { (k / 2, k / 2) };
                        if h + pt + pb < k || w + pt + pb < k {
                            continue;
                        }
                        let (oh, ow) = ((h + pt + pb - k) / s + 1, (w + pt + pb - k) / s + 1);
                        for (per_channel, extreme) in [(false, false), (true, false), (true, true)] {
                            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            let ch = 1 + (seed >> 40) as usize % 7;
                            let g = ConvGeometry { in_c: ch, in_h: h, in_w: w, out_c: ch, out_h: oh, out_w: ow, kernel: [k, k], strides: [s, s], dilations: [1, 1], pad_top: pt, pad_left: pt, group: ch };
                            let c = ConvCase { g, parts, per_channel, zp_in: (seed >> 8) as i32 & 255, out_zp: (seed >> 16) as i32 & 255, qmin: 0, qmax: 255, extreme, seed };
                            check_conv(&c).unwrap_or_else(|e| panic!("{e}: {c:?}"));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use q8::avx2::Sink;

    fn have() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// Depthwise shapes of the channel-vectorized kernel (`q8::dw512`): 16–80 channels, 3×3 or
    /// 5×5 "same" kernels, stride 1 or 2 (both TF and symmetric padding), planes of 4–14.
    fn dw_lanes_case() -> impl Strategy<Value = ConvCase> {
        (1usize..=5, prop_oneof![Just(3usize), Just(5)], 1usize..=2, 4usize..=14, 4usize..=14, (any::<bool>(), 0i32..=255, 0i32..=255, any::<bool>(), any::<bool>(), any::<u64>(), 1usize..=3, -2i32..=1)).prop_filter_map("plane too small", |(blocks, k, s, ih, iw, (tf_pad, zp_in, out_zp, per_channel, extreme, seed, parts, qmin_at))| {
            // qmin 0, or one below, at or one above the zero point (a ReLU'd output: the i64
            // stage's shortcut for negative values applies from `zp` up).
            let qmin = if qmin_at == -2 { 0 } else { (out_zp + qmin_at).clamp(0, 255) };
            let c = 16 * blocks;
            let (pt, pb) = if s == 2 && tf_pad { ((k - 1) / 2, k / 2) } else { (k / 2, k / 2) };
            let (oh, ow) = ((ih + pt + pb - k) / s + 1, (iw + pt + pb - k) / s + 1);
            let g = ConvGeometry { in_c: c, in_h: ih, in_w: iw, out_c: c, out_h: oh, out_w: ow, kernel: [k, k], strides: [s, s], dilations: [1, 1], pad_top: pt, pad_left: pt, group: c };
            q8::dw512::applies(&g).then_some(ConvCase { g, parts, per_channel, zp_in, out_zp, qmin, qmax: 255, extreme, seed })
        })
    }

    proptest! {
        #![proptest_config(cfg(300))]

        /// The channel-vectorized depthwise kernel equals the reference: through the dispatched
        /// conv (which picks it on the shapes it wins, split layers included), and called
        /// directly on every shape it computes, with its float stage (capped or not, some
        /// channels forced onto the i64 stage) and with the i64 stage alone, for 1–3 parts.
        #[test]
        fn depthwise_lanes_matches_reference(c in dw_lanes_case()) {
            if !q8::dw512::available() { return Ok(()); }
            let g = &c.g;
            check_conv(&c)?;
            let d = conv_data(&c);
            let n = g.out_c * g.out_h * g.out_w;
            let mut want = vec![0u8; n];
            q8::conv_q8_reference(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, g, &mut want, &mut Scratch::default());
            let lanes: Vec<&[i32]> = d.parts.iter().map(|p| match &p.packed { q8::PackedWeights::Depthwise { lanes, .. } => &lanes[..], _ => panic!("depthwise packing") }).collect();
            let mults: Vec<Vec<i64>> = d.parts.iter().map(|p| (0..g.out_c).map(|i| p.multiplier(i)).collect()).collect();
            if mults.iter().flatten().any(|&m| m != m as i32 as i64) { return Ok(()); }
            let mut rng = Rng(c.seed ^ 0x5851_f42d_4c95_7f2d | 1);
            let cmax: Vec<u8> = (0..g.out_c).map(|_| if rng.next().is_multiple_of(3) { 255 } else { rng.next() as u8 }).collect();
            let mut capped = want.clone();
            q8::clamp_channels_u8_reference(&mut capped, g.out_h * g.out_w, &cmax);
            let (mut xb, mut ob) = (vec![-3i16; 7], vec![9u8; 5]);
            for (cap, expect) in [(None, &want), (Some(&cmax[..]), &capped)] {
                let mut got = vec![0x5Au8; n];
                macro_rules! run {
                    ($p:literal, $float:expr, $cap:expr, $mults:expr, $bias:expr, $shift:expr) => {{
                        let st = q8::dw512::Stage::<$p> { float: $float, mult: std::array::from_fn(|i| &$mults[i][..]), bias: $bias, shift: $shift, zp: c.out_zp, qmin: c.qmin, qmax: c.qmax, cap: $cap };
                        unsafe { q8::dw512::depthwise::<$p>(&d.input, c.zp_in, std::array::from_fn(|i| lanes[i]), g, &st, &mut got, &mut xb, &mut ob) };
                    }};
                }
                macro_rules! run_i64 {
                    ($mults:expr, $bias:expr, $shift:expr) => {
                        match d.parts.len() {
                            1 => run!(1, None, cap, $mults, $bias, $shift),
                            2 => run!(2, None, cap, $mults, $bias, $shift),
                            _ => run!(3, None, cap, $mults, $bias, $shift),
                        }
                    };
                }
                run_i64!(mults, &d.bias, d.shift);
                prop_assert_eq!(&got, expect, "i64 stage, {} parts, cap {}, {:?}", d.parts.len(), cap.is_some(), g);
                // Power-of-two multipliers: many sums land exactly halfway between two outputs.
                let tie_mults: Vec<Vec<i64>> = (0..d.parts.len()).map(|p| vec![(p as i64 + 1) << 12; g.out_c]).collect();
                let tie_bias = vec![0i64; g.out_c];
                let mut tie_want = vec![0u8; n];
                let mut accs = Vec::new();
                for part in &d.parts {
                    let (mut acc, mut cols) = (Vec::new(), Vec::new());
                    q8::conv_acc_reference(&d.input, c.zp_in, &part.weight, g, &mut acc, &mut cols);
                    accs.push(acc);
                }
                let spatial = g.out_h * g.out_w;
                for (i, w) in tie_want.iter_mut().enumerate() {
                    let ch = i / spatial;
                    let x = accs.iter().zip(&tie_mults).map(|(a, m)| a[i] as i64 * m[ch]).sum::<i64>();
                    *w = ((c.out_zp as i64 + q8::round_shift(x, 13)).clamp(c.qmin as i64, c.qmax as i64) as u8).min(cap.map_or(255, |cm| cm[ch]));
                }
                run_i64!(tie_mults, &tie_bias, 13);
                prop_assert_eq!(&got, &tie_want, "i64 stage at ties, {} parts, cap {}, {:?}", d.parts.len(), cap.is_some(), g);
                if d.parts.len() > 1 { continue; }
                let Some(mut e) = q8::FloatEpilogue::new(&mults[0], &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, cap) else { continue };
                for force in [false, true] {
                    if force {
                        // One channel in 5 on the i64 stage (its block then takes it whole).
                        for (i, ok) in e.ok.iter_mut().enumerate() {
                            *ok &= !(i * 7 + c.seed as usize).is_multiple_of(5);
                        }
                    }
                    let float = Some(q8::dw512::Float { scale: &e.scale, offset: &e.offset, hi: &e.hi, lo: e.lo, ok: &e.ok });
                    run!(1, float, Some(&e.cap[..]), mults, &d.bias, d.shift);
                    prop_assert_eq!(&got, expect, "float stage, cap {}, forced i64 lanes {}, {:?}", cap.is_some(), force, g);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(cfg(200))]

        /// Raw accumulators of the packed GEMM equal the reference GEMM's.
        #[test]
        fn gemm_packed_matches_reference(m in 1usize..40, k in 1usize..80, n in 1usize..70, extreme in any::<bool>(), seed in any::<u64>()) {
            if !have() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let a = rng.weights(m * k, extreme);
            let b = rng.weights(k * n, extreme);
            let mut want = vec![0i32; m * n];
            q8::gemm_i16_reference(m, k, n, &a, &b, &mut want);
            let g = ConvGeometry { in_c: k, in_h: 1, in_w: n, out_c: m, out_h: 1, out_w: n, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 };
            let q8::PackedWeights::Gemm { data, .. } = q8::PackedWeights::gemm(&a, &g) else { panic!("gemm packing") };
            let mut bp = Vec::new();
            q8::pack_b_i16(&b, k, n, &mut bp);
            let mut got = vec![7i32; m * n];
            unsafe { q8::avx2::gemm_packed(&data, m, k, &bp, n, &mut Sink::Acc(&mut got)) };
            prop_assert_eq!(&got, &want);
            let mut xcol = Vec::new();
            let mut got = vec![7i32; m * n];
            unsafe { q8::avx2::gemv(&a, m, k, &b, n, &mut xcol, &mut Sink::Acc(&mut got)) };
            prop_assert_eq!(&got, &want);
            // Byte rows plus a per-row offset, for 8-bit weights (`w − zw` spans ≤ 255 per row).
            prop_assert!(q8::PackedWeights::gemv(&a, &g).is_some() == a.chunks(k).all(|r| r.iter().max().unwrap() - r.iter().min().unwrap() <= 255));
            let a8 = rng.weights8(m, k);
            let mut want = vec![0i32; m * n];
            q8::gemm_i16_reference(m, k, n, &a8, &b, &mut want);
            let Some(q8::PackedWeights::Gemv { u, off, .. }) = q8::PackedWeights::gemv(&a8, &g) else { panic!("8-bit weights have the byte form") };
            let mut got = vec![7i32; m * n];
            unsafe { q8::avx2::gemv_u8(&u, &off, m, k, &b, n, &mut xcol, &mut Sink::Acc(&mut got)) };
            prop_assert_eq!(&got, &want);
        }

        #[test]
        fn pack_b_u8_matches_portable(k in 1usize..40, n in 1usize..100, zp in 0i32..=255, seed in any::<u64>()) {
            if !have() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let x = rng.bytes(k * n, false);
            let (mut want, mut got) = (Vec::new(), vec![3i16; 5]);
            q8::pack_b_u8(&x, zp, k, n, &mut want);
            unsafe { q8::avx2::pack_b_u8(&x, zp, k, n, &mut got) };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn pack_b8_matches_portable(k in 1usize..40, n in 1usize..100, seed in any::<u64>()) {
            if !have() { return Ok(()); }
            let x = Rng(seed | 1).bytes(k * n, false);
            let (mut want, mut got) = (Vec::new(), vec![9u8; 3]);
            q8::pack_b8(&x, k, n, &mut want);
            unsafe { q8::avx2::pack_b8(&x, k, n, &mut got) };
            prop_assert_eq!(got, want);
        }

        /// The byte GEMM (clipped i8 weights + sparse remainder + zero-point row term) equals
        /// the i16 reference GEMM, through both output stages, in both packed forms: for
        /// `vpmaddubsw` and, where the CPU has AVX-VNNI, for `vpdpbusd`.
        #[test]
        fn gemm8_matches_reference(m in 1usize..40, k in 1usize..300, n in 5usize..70, zx in 0i32..=255, seed in any::<u64>(), vnni in any::<bool>()) {
            if !have() || (vnni && !q8::vnni_available()) { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let d = rng.weights_sparse(m * k);
            let x = rng.bytes(k * n, seed & 1 == 1);
            let Some(p8) = q8::Packed8::with_form(&d, m, k, vnni) else { return Ok(()) };
            prop_assert_eq!(p8.vnni, vnni);
            // Deep enough VNNI forms run on AMX tiles where the CPU has them (and this test with them).
            prop_assert_eq!(!p8.tiles.is_empty(), vnni && k >= q8::AMX_MIN_K && q8::amx_available());
            let xs: Vec<i16> = x.iter().map(|&v| v as i16 - zx as i16).collect();
            let mut acc = vec![0i32; m * n];
            q8::gemm_i16_reference(m, k, n, &d, &xs, &mut acc);
            let mult: Vec<i64> = (0..m).map(|_| rng.range(1 << 29, (1 << 30) - 1)).collect();
            let bias: Vec<i64> = (0..m).map(|_| rng.range(-(1 << 40), 1 << 40)).collect();
            let shift = 38 + (seed >> 8) as u32 % 8;
            let (zp, qmin, qmax) = (rng.range(0, 255) as i32, rng.range(0, 40) as i32, rng.range(200, 255) as i32);
            // Half the cases with the full output range (the float stage then drops its clamps).
            let (qmin, qmax) = if seed & 8 == 0 { (0, 255) } else { (qmin, qmax) };
            let want: Vec<u8> = (0..m * n).map(|i| (zp as i64 + q8::round_shift(bias[i / n] + acc[i] as i64 * mult[i / n], shift)).clamp(qmin as i64, qmax as i64) as u8).collect();
            let mut b = Vec::new();
            q8::pack_b8(&x, k, n, &mut b);
            let mut got = vec![0u8; m * n];
            unsafe { q8::avx2::gemm8_requant(&p8, &b, &x, n, zx, &mult, &bias, shift, zp, qmin, qmax, &mut got, 1, None, None) };
            prop_assert_eq!(&got, &want);
            if let Some(e) = q8::FloatEpilogue::new(&mult, &bias, shift, zp, qmin, qmax, None) {
                let mut got = vec![0u8; m * n];
                unsafe { q8::avx2::gemm8_requant(&p8, &b, &x, n, zx, &mult, &bias, shift, zp, qmin, qmax, &mut got, 1, None, Some(&e)) };
                prop_assert_eq!(&got, &want);
            }
        }

        /// The byte GEMM's clamp-free float stage on whole tiles, the common case of real
        /// layers (AMX: 16-row tiles, narrowed four rows at a time; 512 bits: 6-row tiles):
        /// i8-range weights (no remainder), the full output range, multipliers the float stage
        /// resolves. Outputs spread over the byte range, some saturate.
        #[test]
        fn gemm8_float_tiles_match_reference(m in 16usize..72, k in 40usize..300, n in 16usize..70, zx in 0i32..=255, seed in any::<u64>()) {
            if !have() || !q8::vnni_available() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let d: Vec<i16> = (0..m * k).map(|_| if rng.next().is_multiple_of(16) { rng.range(-128, 127) as i16 } else { rng.range(-8, 8) as i16 }).collect();
            let x = rng.bytes(k * n, false);
            let Some(p8) = q8::Packed8::with_form(&d, m, k, true) else { return Ok(()) };
            prop_assert!(p8.rem.is_empty());
            let xs: Vec<i16> = x.iter().map(|&v| v as i16 - zx as i16).collect();
            let mut acc = vec![0i32; m * n];
            q8::gemm_i16_reference(m, k, n, &d, &xs, &mut acc);
            // Real multipliers 2^29..2^30 / 2^37 ≈ 0.004–0.008.
            let mult: Vec<i64> = (0..m).map(|_| rng.range(1 << 29, (1 << 30) - 1)).collect();
            let bias: Vec<i64> = (0..m).map(|_| rng.range(-(1 << 40), 1 << 40)).collect();
            let (shift, zp) = (37, 128);
            let want: Vec<u8> = (0..m * n).map(|i| (zp as i64 + q8::round_shift(bias[i / n] + acc[i] as i64 * mult[i / n], shift)).clamp(0, 255) as u8).collect();
            let Some(e) = q8::FloatEpilogue::new(&mult, &bias, shift, zp, 0, 255, None) else { return Ok(()) };
            let mut b = Vec::new();
            q8::pack_b8(&x, k, n, &mut b);
            let mut got = vec![0u8; m * n];
            unsafe { q8::avx2::gemm8_requant(&p8, &b, &x, n, zx, &mult, &bias, shift, zp, 0, 255, &mut got, 1, None, Some(&e)) };
            prop_assert_eq!(&got, &want);
        }

        /// The byte GEMM's i64 output stage rounds exact ties away from zero, negative ones
        /// included: multipliers `2^(shift − 8)` make every accumulator ≡ 128 (mod 256) a tie.
        #[test]
        fn gemm8_rounds_ties_away_from_zero(m in 1usize..40, k in 40usize..200, n in 5usize..70, zx in 0i32..=255, seed in any::<u64>()) {
            if !have() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let d: Vec<i16> = (0..m * k).map(|_| rng.range(-8, 8) as i16).collect();
            let x = rng.bytes(k * n, false);
            let Some(p8) = q8::Packed8::new(&d, m, k) else { return Ok(()) };
            let xs: Vec<i16> = x.iter().map(|&v| v as i16 - zx as i16).collect();
            let mut acc = vec![0i32; m * n];
            q8::gemm_i16_reference(m, k, n, &d, &xs, &mut acc);
            let shift = 30;
            let mult = vec![1i64 << (shift - 8); m];
            let bias: Vec<i64> = (0..m).map(|_| rng.range(-64, 64) << shift).collect();
            prop_assume!(acc.iter().any(|&a| a < 0 && a.rem_euclid(256) == 128));
            let want: Vec<u8> = (0..m * n).map(|i| (128 + q8::round_shift(bias[i / n] + acc[i] as i64 * mult[i / n], shift)).clamp(0, 255) as u8).collect();
            let mut b = Vec::new();
            q8::pack_b8(&x, k, n, &mut b);
            let mut got = vec![0u8; m * n];
            unsafe { q8::avx2::gemm8_requant(&p8, &b, &x, n, zx, &mult, &bias, shift, 128, 0, 255, &mut got, 1, None, None) };
            prop_assert_eq!(&got, &want);
        }

        /// With AVX-VNNI the byte GEMM takes dense full-range i8 weights (pairs far past the
        /// `vpmaddubsw` limit) and stays exact: the form that makes it the default for per-tensor
        /// uint8 weights.
        #[test]
        fn gemm8_vnni_takes_full_range_weights(m in 1usize..40, k in 1usize..300, n in 5usize..70, zx in 0i32..=255, seed in any::<u64>()) {
            if !have() || !q8::vnni_available() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let d: Vec<i16> = (0..m * k).map(|_| if rng.next().is_multiple_of(100) { rng.range(-255, 255) as i16 } else { rng.range(-128, 127) as i16 }).collect();
            let x = rng.bytes(k * n, seed & 1 == 1);
            let Some(p8) = q8::Packed8::with_form(&d, m, k, true) else { return Ok(()) };
            let xs: Vec<i16> = x.iter().map(|&v| v as i16 - zx as i16).collect();
            let mut acc = vec![0i32; m * n];
            q8::gemm_i16_reference(m, k, n, &d, &xs, &mut acc);
            // Multipliers as the engine's (in [2^29, 2^30)) and the shift that maps the largest
            // accumulator to about ±100 steps: a product gone wrong moves outputs by many steps.
            let mult: Vec<i64> = (0..m).map(|_| rng.range(1 << 29, (1 << 30) - 1)).collect();
            let peak = acc.iter().map(|a| a.unsigned_abs() as u64).max().unwrap_or(0).max(1);
            let shift = (((peak as f64) * (1u64 << 30) as f64 / 100.0).log2().floor() as u32).max(1);
            let bias = vec![0i64; m];
            let want: Vec<u8> = (0..m * n).map(|i| (128 + q8::round_shift(acc[i] as i64 * mult[i / n], shift)).clamp(0, 255) as u8).collect();
            let mut b = Vec::new();
            q8::pack_b8(&x, k, n, &mut b);
            let mut got = vec![0u8; m * n];
            unsafe { q8::avx2::gemm8_requant(&p8, &b, &x, n, zx, &mult, &bias, shift, 128, 0, 255, &mut got, 1, None, None) };
            prop_assert_eq!(&got, &want);
        }

        #[test]
        fn pack_b_i16_matches_portable(k in 1usize..40, n in 1usize..100, seed in any::<u64>()) {
            if !have() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let x = rng.weights(k * n, false);
            let (mut want, mut got) = (Vec::new(), vec![3i16; 5]);
            q8::pack_b_i16(&x, k, n, &mut want);
            unsafe { q8::avx2::pack_b_i16(&x, k, n, &mut got) };
            prop_assert_eq!(got, want);
        }

        /// im2col columns (x − zp, padding 0) equal the reference's, whatever was in the buffer.
        #[test]
        fn im2col_matches_reference(c in conv_case(0)) {
            if !have() { return Ok(()); }
            let g = &c.g;
            let d = conv_data(&c);
            let n = g.weights_per_output() * g.out_h * g.out_w;
            let mut want = vec![0i16; n];
            q8::im2col_q_reference(&d.input, c.zp_in, g, 0, g.in_c, &mut want);
            let mut got = vec![-7i16; n];
            unsafe { q8::avx2::im2col_q(&d.input, c.zp_in, g, 0, g.in_c, &mut got) };
            prop_assert_eq!(got, want);
        }

        /// The byte im2col (the byte GEMM's input for dense convs): the input bytes, padding the
        /// zero-point, whatever was in the buffer.
        #[test]
        fn im2col_u8_matches_reference(c in conv_case(0)) {
            if !have() { return Ok(()); }
            let g = &c.g;
            let d = conv_data(&c);
            let n = g.in_c * g.kernel[0] * g.kernel[1] * g.out_h * g.out_w;
            let mut want = vec![0u8; n];
            subq_kernels::im2col_with(&d.input, g, 0, g.in_c, &mut want, c.zp_in as u8, |x| x);
            let mut got = vec![0x3Cu8; n];
            unsafe { q8::avx2::im2col_u8(&d.input, c.zp_in, g, &mut got) };
            prop_assert_eq!(got, want);
        }

        /// Raw depthwise accumulators equal the reference's.
        #[test]
        fn depthwise_acc_matches_reference(c in conv_case(1)) {
            if !have() || !q8::avx2::depthwise_supported(&c.g) { return Ok(()); }
            let g = &c.g;
            let d = conv_data(&c);
            let n = g.out_c * g.out_h * g.out_w;
            let mut want = vec![0i32; n];
            q8::depthwise_acc_reference(&d.input, c.zp_in, &d.parts[0].weight, g, &mut want);
            let q8::PackedWeights::Depthwise { pairs, .. } = &d.parts[0].packed else { panic!("depthwise packing") };
            let mut got = vec![7i32; n];
            let mut plane = vec![-1i16; 3];
            unsafe { q8::avx2::depthwise(&d.input, c.zp_in, pairs, g, &mut plane, &mut Sink::Acc(&mut got)) };
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(cfg(500))]

        /// The epilogue (both of its exact rounding paths) against `round_shift`: random
        /// accumulators, some exactly on ties, any shift and bias.
        #[test]
        fn requant_row_matches_round_shift(n in 1usize..40, mult in (1i64 << 29)..(1i64 << 30), shift in 0u32..=62, bias_exp in 0u32..50, neg_bias in any::<bool>(), zp in 0i32..=255, lo in 0i32..=60, hi in 190i32..=255, big in any::<bool>(), seed in any::<u64>()) {
            if !have() { return Ok(()); }
            let mut rng = Rng(seed | 1);
            let lim = if big { i32::MAX as i64 / 2 } else { 70_000 };
            let bias = { let b = rng.range(0, 1 << bias_exp.min(40)) << (bias_exp.saturating_sub(40)); if neg_bias { -b } else { b } };
            let accs: Vec<i32> = (0..n).map(|_| {
                let a = rng.range(-lim, lim) as i32;
                // Every third value: an exact tie of bias + a·mult when one exists nearby.
                if rng.next().is_multiple_of(3) && shift > 0 && mult % 2 == 0 { a & !1 } else { a }
            }).collect();
            let want: Vec<u8> = accs.iter().map(|&a| (zp as i64 + q8::round_shift(bias + a as i64 * mult, shift)).clamp(lo as i64, hi as i64) as u8).collect();
            let mut got = vec![0u8; n];
            unsafe { q8::avx2::requant_row(&accs, mult, bias, shift, zp, lo, hi, &mut got) };
            prop_assert_eq!(got, want);
        }
    }

    /// Requantization corner cases: accumulators at the edges of i32 products, ties, shift 0.
    #[test]
    fn requant_epilogue_corners() {
        if !have() {
            return;
        }
        let accs: Vec<i32> = vec![0, 1, -1, 2, -2, 3, -3, 1 << 20, -(1 << 20), 16_581_375, -16_581_375, i32::MAX / 4, i32::MIN / 4, 12345, -12345, 7];
        for &(mult, shift) in &[(1i64 << 29, 30u32), ((1 << 30) - 1, 62), (1 << 29, 0), (536_870_913, 31), (1 << 29, 29), (805_306_368, 40)] {
            for &bias in &[0i64, 1, -1, 1 << 40, -(1 << 40)] {
                // qmin one below, at and above the zero point: at and above, the kernels drop the
                // ties-away correction of negative values (every one ends at qmin); one below,
                // a tie at −half (acc −1 with 2^29 / 2^30) must still round to zp − 1.
                for &(zp, lo, hi) in &[(0, 0, 255), (128, 0, 255), (255, 0, 255), (10, 3, 200), (10, 9, 200), (10, 10, 200), (10, 11, 200)] {
                    let want: Vec<u8> = accs.iter().map(|&a| (zp as i64 + q8::round_shift(bias + a as i64 * mult, shift)).clamp(lo as i64, hi as i64) as u8).collect();
                    let mut got = vec![0u8; accs.len()];
                    unsafe { q8::avx2::requant_row(&accs, mult, bias, shift, zp, lo, hi, &mut got) };
                    assert_eq!(got, want, "mult {mult} shift {shift} bias {bias} zp {zp}");
                }
            }
        }
    }
}

/// Capped float rows at the end of a pointwise layer: the byte GEMM narrows tile rows four at a
/// time and reads their caps in one load, except where fewer than four caps are left (the last
/// tile's rows 4 and 5 when the layer's rows are a whole number of tiles). Every row has a float
/// stage (multipliers off round numbers, small biases), caps below 255 on most rows, outputs
/// equal to the reference capped, for layers of 6, 12 and 18 rows.
#[test]
fn pointwise_float_caps_at_the_layer_end() {
    let mut rng = Rng(0xcafe_f00d);
    for (out_c, k, side) in [(6usize, 32usize, 8usize), (12, 32, 8), (18, 48, 6)] {
        let g = ConvGeometry { in_c: k, in_h: side, in_w: side, out_c, out_h: side, out_w: side, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 };
        let weight: Vec<i16> = (0..out_c * k).map(|_| rng.range(-60, 60) as i16).collect();
        let (requant, shift) = Requant::common(&(0..out_c).map(|c| 0.0137 + c as f64 * 1.1e-6).collect::<Vec<_>>());
        let mult: Vec<i64> = requant.iter().map(|r| r.multiplier).collect();
        let part = ConvPart::new(weight, requant, &g);
        let bias: Vec<i64> = (0..out_c).map(|_| (rng.range(-20, 20) as f64 * 0.37 * (shift as f64).exp2()) as i64).collect();
        let cmax: Vec<u8> = (0..out_c).map(|c| if c % 5 == 0 { 255 } else { rng.range(40, 200) as u8 }).collect();
        let input: Vec<u8> = (0..k * side * side).map(|_| rng.next() as u8).collect();
        let e = q8::FloatEpilogue::new(&mult, &bias, shift, 0, 0, 255, Some(&cmax)).expect("a float stage");
        assert!(e.ok.iter().all(|&k| k), "every row needs a float stage here: {:?}", e.ok);
        let n = out_c * side * side;
        let mut want = vec![0u8; n];
        q8::conv_q8_reference(&input, 9, std::slice::from_ref(&part), &bias, shift, 0, 0, 255, &g, &mut want, &mut Scratch::default());
        q8::clamp_channels_u8_reference(&mut want, side * side, &cmax);
        let mut got = vec![0u8; n];
        q8::conv_q8_epi(&input, 9, std::slice::from_ref(&part), &bias, shift, 0, 0, 255, Some(&cmax), Some(&e), &g, &mut got, &mut Scratch::default());
        assert_eq!(got, want, "{out_c} rows, k {k}");
    }
}

/// The depthwise kernels' i64 stage at a tie just below zero: accumulator −1 times the real
/// multiplier 0.5 is −0.5, which rounds away from zero to −1. With qmin one below the zero point
/// that byte shows (the shortcut that drops the correction applies only from qmin = zp up); at
/// and above it, every negative value ends at qmin. Through the dispatched conv (planar kernel)
/// and the channel-vectorized one.
#[test]
fn depthwise_i64_stage_ties_below_zero() {
    let (c, zp_in, zp) = (16usize, 10i32, 10i32);
    // 6×6 planes take the channel-vectorized kernel where the CPU has it, 24×24 the planar one.
    for side in [6usize, 24] {
        let g = ConvGeometry { in_c: c, in_h: side, in_w: side, out_c: c, out_h: side, out_w: side, kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pad_top: 1, pad_left: 1, group: c };
        // Only the centre tap, weight 1: every accumulator is x − zp_in = −1.
        let weight: Vec<i16> = (0..c * 9).map(|i| (i % 9 == 4) as i16).collect();
        let part = ConvPart::new(weight, vec![Requant { multiplier: 1 << 12, shift: 13 }], &g);
        let input = vec![(zp_in - 1) as u8; c * side * side];
        let bias = vec![0i64; c];
        for qmin in [zp - 1, zp, zp + 1] {
            let n = c * side * side;
            let mut want = vec![0u8; n];
            q8::conv_q8_reference(&input, zp_in, std::slice::from_ref(&part), &bias, 13, zp, qmin, 255, &g, &mut want, &mut Scratch::default());
            assert_eq!(want[0] as i32, qmin.max(zp - 1), "the reference rounds −0.5 to −1");
            let mut got = vec![0u8; n];
            q8::conv_q8(&input, zp_in, std::slice::from_ref(&part), &bias, 13, zp, qmin, 255, &g, &mut got, &mut Scratch::default());
            assert_eq!(got, want, "dispatched, {side}×{side}, qmin {qmin}");
            if q8::dw512::available() && q8::dw512::applies(&g) {
                let q8::PackedWeights::Depthwise { lanes, .. } = &part.packed else { panic!("depthwise packing") };
                let mult = vec![1i64 << 12; c];
                let st = q8::dw512::Stage::<1> { float: None, mult: [&mult[..]], bias: &bias, shift: 13, zp, qmin, qmax: 255, cap: None };
                let mut got = vec![0u8; n];
                unsafe { q8::dw512::depthwise::<1>(&input, zp_in, [&lanes[..]], &g, &st, &mut got, &mut Vec::new(), &mut Vec::new()) };
                assert_eq!(got, want, "channel-vectorized, {side}×{side}, qmin {qmin}");
            }
        }
    }
}

/// Depthwise layers at the sizes the engine meets (7…112, both the "flat" small-plane order and
/// the row-by-row one, stride 1 and 2, 3×3 and 5×5, 1–3 parts) equal the reference.
#[test]
fn conv_depthwise_engine_shapes_match_reference() {
    let mut seed = 0xd1ce_u64;
    for parts in 1usize..=3 {
        for k in [3usize, 5] {
            for s in [1usize, 2] {
                for hw in [7usize, 8, 14, 15, 28, 56, 112] {
                    if hw == 112 && parts > 1 {
                        continue;
                    }
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let (pt, pb) = if s == 2 && seed & 1 == 1 { ((k - 1) / 2, k / 2) } else { (k / 2, k / 2) };
                    let o = (hw + pt + pb - k) / s + 1;
                    let ch = 1 + (seed >> 40) as usize % 4;
                    let g = ConvGeometry { in_c: ch, in_h: hw, in_w: hw, out_c: ch, out_h: o, out_w: o, kernel: [k, k], strides: [s, s], dilations: [1, 1], pad_top: pt, pad_left: pt, group: ch };
                    let c = ConvCase { g, parts, per_channel: seed & 2 == 2, zp_in: (seed >> 8) as i32 & 255, out_zp: (seed >> 16) as i32 & 255, qmin: 0, qmax: 255, extreme: seed & 4 == 4, seed };
                    check_conv(&c).unwrap_or_else(|e| panic!("{e}: {c:?}"));
                }
            }
        }
    }
}

/// Convs big enough to be split over threads give the same bytes on 1, 2 and 3 threads, equal
/// to the reference (pointwise, dense 3×3, depthwise, split depthwise).
#[test]
fn conv_threads_do_not_change_results() {
    // The engine splits only convs of 50 M multiply-adds or more; these shapes are far smaller.
    #[cfg(target_arch = "x86_64")]
    q8::avx2::set_split_threshold(100_000);
    let shapes = [
        (ConvGeometry { in_c: 24, in_h: 28, in_w: 28, out_c: 88, out_h: 28, out_w: 28, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, 1),
        (ConvGeometry { in_c: 40, in_h: 7, in_w: 7, out_c: 700, out_h: 7, out_w: 7, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, 1),
        (ConvGeometry { in_c: 3, in_h: 40, in_w: 40, out_c: 32, out_h: 20, out_w: 20, kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, 1),
        (ConvGeometry { in_c: 40, in_h: 14, in_w: 14, out_c: 98, out_h: 14, out_w: 14, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, 2),
        (ConvGeometry { in_c: 96, in_h: 28, in_w: 28, out_c: 40, out_h: 28, out_w: 28, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, 2),
        (ConvGeometry { in_c: 144, in_h: 14, in_w: 14, out_c: 56, out_h: 14, out_w: 14, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 }, 1),
        (ConvGeometry { in_c: 5, in_h: 30, in_w: 30, out_c: 20, out_h: 30, out_w: 30, kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pad_top: 1, pad_left: 1, group: 1 }, 3),
        (ConvGeometry { in_c: 37, in_h: 30, in_w: 30, out_c: 37, out_h: 30, out_w: 30, kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pad_top: 1, pad_left: 1, group: 37 }, 1),
        (ConvGeometry { in_c: 45, in_h: 14, in_w: 14, out_c: 45, out_h: 7, out_w: 7, kernel: [5, 5], strides: [2, 2], dilations: [1, 1], pad_top: 1, pad_left: 1, group: 45 }, 2),
        (ConvGeometry { in_c: 50, in_h: 14, in_w: 14, out_c: 50, out_h: 14, out_w: 14, kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pad_top: 1, pad_left: 1, group: 50 }, 3),
    ];
    for (i, (g, parts)) in shapes.into_iter().enumerate() {
        let c = ConvCase { g, parts, per_channel: i % 2 == 0, zp_in: 100 + i as i32, out_zp: 20 * i as i32, qmin: 0, qmax: 255, extreme: false, seed: 77 + i as u64 };
        let d = conv_data(&c);
        let n = g.out_c * g.out_h * g.out_w;
        let mut want = vec![0u8; n];
        q8::conv_q8_reference(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, &g, &mut want, &mut Scratch::default());
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut got = vec![0x5Au8; n];
            pool.install(|| q8::conv_q8(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, &g, &mut got, &mut Scratch::default()));
            assert_eq!(got, want, "{threads} threads, {g:?}");
            let cmax: Vec<u8> = (0..g.out_c).map(|i| (97 * i % 256) as u8).collect();
            let mut capped = want.clone();
            q8::clamp_channels_u8_reference(&mut capped, g.out_h * g.out_w, &cmax);
            pool.install(|| q8::conv_q8_clamped(&d.input, c.zp_in, &d.parts, &d.bias, d.shift, c.out_zp, c.qmin, c.qmax, &cmax, &g, &mut got, &mut Scratch::default()));
            assert_eq!(got, capped, "{threads} threads, capped, {g:?}");
        }
    }
}

/// Pointwise layers at the sizes of the engine's models equal the reference: maps whose last
/// column panel is narrow (7×7: 1 column, 5×5: 9, 10×10 and 14×14: 4), packed weights larger
/// than one L2 chunk of the GEMM (1152 × 320), and fully connected layers (1×1 output, byte
/// weights), with and without the float output stage.
#[test]
fn conv_pointwise_engine_shapes_match_reference() {
    // (in_c, out_c, side, parts): split layers (2–3 parts) take the byte GEMM for k ≥ 80.
    let shapes = [(1152usize, 320usize, 7usize, 1usize), (320, 1280, 7, 1), (192, 1152, 7, 1), (960, 160, 5, 1), (160, 960, 5, 1), (112, 672, 14, 1), (64, 384, 10, 1), (24, 144, 12, 1), (1280, 1000, 1, 1), (320, 40, 2, 1), (240, 40, 28, 2), (480, 80, 14, 3), (672, 112, 14, 2), (40, 240, 28, 2)];
    for (i, &(in_c, out_c, hw, parts)) in shapes.iter().enumerate() {
        let g = ConvGeometry { in_c, in_h: hw, in_w: hw, out_c, out_h: hw, out_w: hw, kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 };
        // (seed >> 1) & 3: 0 = 8-bit rows, 1 = mostly small with outliers, 2 = full range.
        for seed in [1u64, 2, 5] {
            let c = ConvCase { g, parts, per_channel: i % 2 == 0, zp_in: 3 + 25 * i as i32, out_zp: 11 * i as i32, qmin: if seed == 5 { 17 } else { 0 }, qmax: 255, extreme: false, seed: seed + 8 * i as u64 };
            check_conv(&c).unwrap_or_else(|e| panic!("{e}: {c:?}"));
        }
    }
}

/// A split depthwise layer fused into one conv by the engine (i16 weights `128·d1 + d2`, real
/// multipliers ~128× smaller, accumulators up to 2^27): the dispatched kernels (planar, and
/// channel-vectorized on small planes; the f32 stage where it is proven exact, the i64 stage
/// elsewhere) equal the reference, with and without channel caps.
#[test]
fn fused_split_depthwise_matches_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let geoms = [(32usize, 28usize, 3usize, 1usize), (64, 14, 5, 1), (48, 20, 3, 2), (16, 7, 5, 1)];
    for (i, &(c, side, k, s)) in geoms.iter().enumerate() {
        let pad = k / 2;
        let out = (side + 2 * pad - k) / s + 1;
        let g = ConvGeometry { in_c: c, in_h: side, in_w: side, out_c: c, out_h: out, out_w: out, kernel: [k, k], strides: [s, s], dilations: [1, 1], pad_top: pad, pad_left: pad, group: c };
        let input = rng.bytes(c * side * side, false);
        let weight: Vec<i16> = (0..c * k * k).map(|_| (rng.range(-255, 255) * 128 + rng.range(-64, 64)) as i16).collect();
        // Reals like a fused layer's (the first part's ~0.05 over 128).
        let reals: Vec<f64> = (0..c).map(|_| (2e-2 + rng.range(0, 1000) as f64 * 6e-5) / 128.0).collect();
        let (_, shift) = Requant::common(&reals);
        let requant: Vec<Requant> = reals.iter().map(|&r| Requant { multiplier: (r * (shift as f64).exp2()).round() as i64, shift }).collect();
        let mult: Vec<i64> = requant.iter().map(|r| r.multiplier).collect();
        let bias: Vec<i64> = (0..c).map(|_| rng.range(-(1 << 36), 1 << 36)).collect();
        let parts = vec![ConvPart::new(weight, requant, &g)];
        let (zp_in, zp_out) = (90 + i as i32, 120 - 7 * i as i32);
        let mut want = vec![0u8; c * out * out];
        q8::conv_q8_reference(&input, zp_in, &parts, &bias, shift, zp_out, 0, 255, &g, &mut want, &mut Scratch::default());
        let cmax: Vec<u8> = (0..c).map(|_| rng.range(100, 255) as u8).collect();
        let mut capped = want.clone();
        q8::clamp_channels_u8_reference(&mut capped, out * out, &cmax);
        for (cap, expect) in [(None, &want), (Some(&cmax[..]), &capped)] {
            let epi = q8::FloatEpilogue::new(&mult, &bias, shift, zp_out, 0, 255, cap);
            let mut got = vec![0x5Au8; c * out * out];
            q8::conv_q8_epi(&input, zp_in, &parts, &bias, shift, zp_out, 0, 255, cap, epi.as_ref(), &g, &mut got, &mut Scratch::default());
            assert_eq!(&got, expect, "{g:?}, cap {}", cap.is_some());
        }
    }
}
