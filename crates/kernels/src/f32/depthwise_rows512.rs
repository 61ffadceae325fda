//! Depthwise convolution with AVX-512, 16 output columns per vector.
//!
//! Each output row goes in segments of 16 columns (one segment for the 10×10, 14×14 and 7×7
//! planes of a network's second half). Each tap is then one masked load of the input row
//! (lanes outside the image read as zeros, so there is no padded copy) and one FMA; a stride
//! of 2 is a pair of loads per input row, two permutes (the even and odd columns) and a lane
//! shift per further tap. No transposes and no per-channel copy: the blocked kernel
//! ([`super::depthwise_blocked`]) spends most of its time on those on small planes, and the
//! per-channel kernel ([`super::depthwise`]) copies every plane and covers 8 columns per
//! vector.
//!
//! Each output is `bias + Σ_t w[t]·x[t]` accumulated with FMAs in tap order (taps outside the
//! image multiply a zero), then the epilogue (multiply-add, max, min): the operations of the
//! other depthwise kernels in the same order, so all give the same bits.

use crate::ConvGeometry;

/// Whether this kernel handles the geometry: dilation 1, a 3×3 or 5×5 kernel (unrolled at
/// compile time: with the tap loops at run time, loop control was most of the instructions),
/// horizontal stride 1 or 2.
pub fn applies(g: &ConvGeometry) -> bool {
    g.dilations == [1, 1] && (g.kernel == [3, 3] || g.kernel == [5, 5]) && g.out_h > 0 && g.out_w > 0 && (g.strides[1] == 1 || g.strides[1] == 2)
}

/// Whether it is the fastest kernel for the geometry (measured inside MobileNetV2 and
/// EfficientNet-Lite0, BENCHMARKS.md, session 13). Taken: every stride-2 layer (0.45–0.85 of
/// the other kernels' time, 56×56 at 0.7, 20×20 at 0.47), 3×3 at stride 1 from 9 columns
/// (112×112 0.75, 80×80 0.75, 20×20 0.85, 10×10 0.65–0.95), 5×5 at stride 1 on 9–28 columns
/// (14×14 0.83; 28×28 0.86 since its rows go in pairs, session 15). Not taken: rows of 5 or 7
/// columns at stride 1, where a vector is a third full while each row's FMA chain is as long
/// (5×5 on 7×7 took 1.27×).
pub fn chosen(g: &ConvGeometry) -> bool {
    applies(g) && (g.strides[1] == 2 || (g.out_w >= 9 && (g.kernel == [3, 3] || g.out_w <= 28)))
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::f32::{stride2_taps, window_mask as window, Epilogue};
    use crate::ConvGeometry;
    use std::arch::x86_64::*;

    /// The whole layer.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, AVX2 and FMA; [`super::applies`] holds for `g`, a depthwise
    /// geometry; the slices hold its C·in_h·in_w inputs, C·kh·kw weights, C biases (if any) and
    /// C·out_h·out_w outputs.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn run(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32]) {
        let c = g.out_c;
        assert!(super::applies(g) && g.group == c && g.in_c == c);
        assert!(input.len() >= c * g.in_h * g.in_w && weight.len() >= c * g.kernel[0] * g.kernel[1] && out.len() >= c * g.out_h * g.out_w && bias.is_none_or(|b| b.len() >= c));
        match (g.kernel[0], g.strides[1]) {
            (3, 1) => run_k::<3, 1>(input, weight, bias, g, ep, out),
            (3, _) => run_k::<3, 2>(input, weight, bias, g, ep, out),
            (_, 1) => run_k::<5, 1>(input, weight, bias, g, ep, out),
            _ => run_k::<5, 2>(input, weight, bias, g, ep, out),
        }
    }

    /// A row segment's epilogue: the per-channel affine (multiply then add, no FMA, as every
    /// other FP32 epilogue), then the clamp.
    #[inline(always)]
    unsafe fn post<const AF: bool, const CL: bool>(mut acc: __m512, scale: __m512, shift: __m512, lo: __m512, hi: __m512) -> __m512 {
        if AF {
            acc = _mm512_add_ps(_mm512_mul_ps(acc, scale), shift);
        }
        if CL {
            acc = _mm512_min_ps(_mm512_max_ps(acc, lo), hi);
        }
        acc
    }

    #[inline(always)]
    unsafe fn run_k<const K: usize, const SX: usize>(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32]) {
        match (ep.affine.is_some(), ep.clamp.is_some()) {
            (false, false) => run_as::<false, false, K, SX>(input, weight, bias, g, ep, out),
            (true, false) => run_as::<true, false, K, SX>(input, weight, bias, g, ep, out),
            (false, true) => run_as::<false, true, K, SX>(input, weight, bias, g, ep, out),
            (true, true) => run_as::<true, true, K, SX>(input, weight, bias, g, ep, out),
        }
    }

    #[inline(always)]
    unsafe fn run_as<const AF: bool, const CL: bool, const K: usize, const SX: usize>(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32]) {
        let (oh, ow, ih, iw) = (g.out_h, g.out_w, g.in_h, g.in_w);
        let (sy, pad_t, pad_l) = (g.strides[0], g.pad_top as isize, g.pad_left as isize);
        // An output row in segments of 16 columns. Per segment: the lanes stored, and the
        // load masks. Stride 1: tap column kx reads input columns 16·seg + ox + kx − pad_l,
        // one masked load each. Stride 2: two loads cover input columns at .. at + 32 (at =
        // 32·seg − pad_l), whose even and odd lanes are tap columns 0 and 1; tap column
        // 2 + j is column j one lane on, its last lane from the four columns after the pair.
        let segments = ow.div_ceil(16);
        let stores: Vec<u16> = (0..segments).map(|s| window(0, ow - 16 * s, 16)).collect();
        let loads: Vec<[u16; K]> = (0..segments)
            .map(|s| {
                let n = (ow - 16 * s).min(16);
                let at = 32 * s as isize - pad_l;
                std::array::from_fn(|kx| match (SX, kx) {
                    (1, _) => window(16 * s as isize + kx as isize - pad_l, iw, n),
                    (_, 0) => window(at, iw, 16),
                    (_, 1) => window(at + 16, iw, 16),
                    (_, 2) => window(at + 32, iw, 4),
                    _ => 0,
                })
            })
            .collect();
        let (store0, loads0) = (stores[0], loads[0]);
        let (lo, hi) = ep.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let zero = _mm512_setzero_ps();
        // Output rows first_inner..end_inner read only rows inside the image.
        let first_inner = (g.pad_top.div_ceil(sy)).min(oh);
        let end_inner = if ih + g.pad_top >= K { ((ih + g.pad_top - K) / sy + 1).min(oh) } else { 0 };
        let end_inner = end_inner.max(first_inner);
        // Row pairs from 20 output rows (criterion, `depthwise_kernels`: 5×5 on 28×28 0.87–0.89×,
        // 3×3 on 112×112 0.88–0.94×, 5×5 at stride 2 from 56×56 0.82×); not for 3×3 at stride 2
        // (two of six input rows shared: 0.97–1.08×), nor on 10×10 and 7×7 planes (1.02–1.07×).
        let pairs = oh >= 20 && (sy == 1 || K == 5);
        for ch in 0..g.out_c {
            let plane = input.as_ptr().add(ch * ih * iw);
            let w = weight.as_ptr().add(ch * K * K);
            let b = _mm512_set1_ps(bias.map_or(0.0, |b| b[ch]));
            let (scale, shift) = match ep.affine {
                Some((s, t)) => (_mm512_set1_ps(s[ch]), _mm512_set1_ps(t[ch])),
                None => (zero, zero),
            };
            let dst = out.as_mut_ptr().add(ch * oh * ow);
            // One output row: K rows of K taps per segment. `$check`: test each input row
            // against the image (the first and last rows); the rows between take no branch (a
            // branch per input row mispredicted at every channel's borders and kept the next
            // rows' independent FMA chains from overlapping).
            macro_rules! row {
                ($oy:expr, $check:expr) => {{
                    // One segment (rows up to 16 columns): its masks as locals, in registers;
                    // read from the vectors in the loop they cost 5-8% on 10×10 and 14×14.
                    if segments == 1 {
                        segment!($oy, $check, 0, store0, &loads0);
                    } else {
                        for (seg, (&store, m)) in stores.iter().zip(&loads).enumerate() {
                            segment!($oy, $check, seg, store, m);
                        }
                    }
                }};
            }
            macro_rules! segment {
                ($oy:expr, $check:expr, $seg:expr, $store:expr, $m:expr) => {{
                    let (oy, seg, store, m) = ($oy, $seg, $store, $m);
                    {
                        let mut acc = b;
                        for ky in 0..K {
                            let iy = (oy * sy + ky) as isize - pad_t;
                            let inside = !$check || (iy >= 0 && (iy as usize) < ih);
                            // A row outside the image: its taps multiply zeros, as in the
                            // other kernels.
                            let row = plane.wrapping_offset(if inside { iy * iw as isize } else { 0 });
                            if SX == 1 {
                                for kx in 0..K {
                                    let mk = if inside { m[kx] } else { 0 };
                                    let x = _mm512_maskz_loadu_ps(mk, row.wrapping_offset(16 * seg as isize + kx as isize - pad_l));
                                    acc = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(ky * K + kx)), x, acc);
                                }
                            } else {
                                let at = 32 * seg as isize - pad_l;
                                let masks = if inside { [m[0], m[1], m[2]] } else { [0; 3] };
                                let xs = stride2_taps::<K>(row, at, masks);
                                for (kx, x) in xs.iter().enumerate() {
                                    acc = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(ky * K + kx)), *x, acc);
                                }
                            }
                        }
                        _mm512_mask_storeu_ps(dst.add(oy * ow + 16 * seg), store, post::<AF, CL>(acc, scale, shift, lo, hi));
                    }
                }};
            }
            for oy in 0..first_inner {
                row!(oy, true);
            }
            // Inner rows two at a time: each input row's vectors (loaded, or built by the
            // stride-2 permutes) feed both output rows' FMAs, and the two chains interleave. A
            // single row's chain of K·K dependent FMAs left the FMA ports idle for most of its
            // latency on 28×28 and 7×7 planes. Each output keeps its own FMA order (ky, then
            // kx), so the bits do not change.
            macro_rules! segment2 {
                ($oy:expr, $seg:expr, $store:expr, $m:expr) => {{
                    let (oy, seg, store, m) = ($oy, $seg, $store, $m);
                    let mut acc = [b; 2];
                    for d in 0..K + sy {
                        let iy = (oy * sy + d) as isize - pad_t;
                        let row = plane.wrapping_offset(iy * iw as isize);
                        let mut xs = [zero; K];
                        if SX == 1 {
                            for (kx, x) in xs.iter_mut().enumerate() {
                                *x = _mm512_maskz_loadu_ps(m[kx], row.wrapping_offset(16 * seg as isize + kx as isize - pad_l));
                            }
                        } else {
                            xs = stride2_taps::<K>(row, 32 * seg as isize - pad_l, [m[0], m[1], m[2]]);
                        }
                        for (r, a) in acc.iter_mut().enumerate() {
                            // Output row oy + r takes this input row as its tap row ky.
                            let Some(ky) = d.checked_sub(r * sy).filter(|&ky| ky < K) else { continue };
                            for (kx, x) in xs.iter().enumerate() {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(ky * K + kx)), *x, *a);
                            }
                        }
                    }
                    for (r, a) in acc.into_iter().enumerate() {
                        _mm512_mask_storeu_ps(dst.add((oy + r) * ow + 16 * seg), store, post::<AF, CL>(a, scale, shift, lo, hi));
                    }
                }};
            }
            let mut oy = first_inner;
            while pairs && oy + 2 <= end_inner {
                if segments == 1 {
                    segment2!(oy, 0, store0, &loads0);
                } else {
                    for (seg, (&store, m)) in stores.iter().zip(&loads).enumerate() {
                        segment2!(oy, seg, store, m);
                    }
                }
                oy += 2;
            }
            for oy in oy..end_inner {
                row!(oy, false);
            }
            for oy in end_inner..oh {
                row!(oy, true);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::f32::depthwise::{best_isa, depthwise_with, Isa};
    use crate::f32::{has_avx512, Epilogue};
    use crate::f32::test_data::rnd_vec;
    use proptest::prelude::*;


    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// 3×3 and 5×5 at strides 1 and 2 (each axis), rows of 1–70 columns (up to five
        /// 16-column segments, the last partial), 1–47 rows (from 20 output rows, inner rows
        /// go in pairs), padding 0–4 on each side: the bits of the per-channel kernel, which
        /// the depthwise proptest ties to the reference.
        #[test]
        fn segments_match_the_per_channel_kernel(c in 1usize..4, k5 in any::<bool>(), sy in 1usize..3, sx in 1usize..3, h in 1usize..48, w in 1usize..140, pt in 0usize..5, pl in 0usize..5, pb in 0usize..5, pr in 0usize..5, seed in 0u64..1000, affine in any::<bool>(), clamp in any::<bool>()) {
            let k = if k5 { 5 } else { 3 };
            prop_assume!(h + pt + pb >= k && w + pl + pr >= k && pt < k && pl < k && pb < k && pr < k);
            let g = ConvGeometry { in_c: c, in_h: h, in_w: w, out_c: c, out_h: (h + pt + pb - k) / sy + 1, out_w: (w + pl + pr - k) / sx + 1, kernel: [k, k], strides: [sy, sx], dilations: [1, 1], pad_top: pt, pad_left: pl, group: c };
            prop_assert!(applies(&g));
            if best_isa() != Isa::Avx2Fma || !has_avx512() {
                return Ok(());
            }
            let (input, weight, bias) = (rnd_vec(c * h * w, seed), rnd_vec(c * k * k, seed + 1), rnd_vec(c, seed + 2));
            let (scale, shift) = (rnd_vec(c, seed + 3), rnd_vec(c, seed + 4));
            let ep = Epilogue { affine: affine.then_some((&scale[..], &shift[..])), clamp: clamp.then_some((-0.1, 0.2)) };
            let n = c * g.out_h * g.out_w;
            let (mut rows, mut per_channel) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            depthwise_with(Isa::Avx512Rows, &input, &weight, Some(&bias), &g, &ep, &mut rows, &mut Vec::new());
            depthwise_with(Isa::Avx2Fma, &input, &weight, Some(&bias), &g, &ep, &mut per_channel, &mut Vec::new());
            for i in 0..n {
                prop_assert_eq!(rows[i].to_bits(), per_channel[i].to_bits(), "[{}] {} vs {} for {:?}", i, rows[i], per_channel[i], g);
            }
        }
    }
}
