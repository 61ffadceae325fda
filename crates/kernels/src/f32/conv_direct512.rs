//! A network's first convolution (a few input channels, 3×3, stride 1 or 2) computed directly
//! with AVX-512: 16 output columns per vector, 16 output channels at a time.
//!
//! Through im2col this layer is a product with k = 27 over a large plane: the 27-row unfolded
//! matrix is written, packed and read again (1.35 MB each way for EfficientNet-Lite0's
//! 112×112 output), and each 6×32 tile runs only 27 steps between its setup and its stores.
//! Here an input vector (one masked load, or for stride 2 a pair of loads and one permute) is
//! made once per tap and multiplies the tap's weights for 16 output channels, held in 16
//! accumulators, so the layer runs from the image itself at the FMA ports' rate.
//!
//! Each output is the FMA chain over (input channel, ky, kx) in order from zero (taps outside
//! the image multiply zeros), then the bias, then the epilogue: the operations of the im2col
//! GEMM path in the same order, so the same bits.

use crate::ConvGeometry;

/// Output channels per pass (one accumulator each).
const OC: usize = 16;

/// Whether this kernel handles the geometry: group 1, at most 4 input channels, a 3×3 kernel
/// without dilation, equal strides of 1 or 2, output channels a multiple of 16.
pub fn applies(g: &ConvGeometry) -> bool {
    g.group == 1
        && (1..=4).contains(&g.in_c)
        && g.kernel == [3, 3]
        && g.dilations == [1, 1]
        && (g.strides == [1, 1] || g.strides == [2, 2])
        && g.out_c.is_multiple_of(OC)
        && g.out_h > 0
        && g.out_w > 0
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::OC;
    use crate::f32::{stride2_taps, window_mask as window, Epilogue};
    use crate::ConvGeometry;
    use std::arch::x86_64::*;

    /// The whole layer.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, AVX2 and FMA; [`super::applies`] holds for `g`; the slices
    /// hold its in_c·in_h·in_w inputs, out_c·in_c·9 weights, out_c biases (if any) and
    /// out_c·out_h·out_w outputs.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn run(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32]) {
        assert!(super::applies(g));
        assert!(input.len() >= g.in_c * g.in_h * g.in_w && weight.len() >= g.out_c * g.in_c * 9 && out.len() >= g.out_c * g.out_h * g.out_w && bias.is_none_or(|b| b.len() >= g.out_c));
        match (ep.affine.is_some(), ep.clamp.is_some(), g.strides[1]) {
            (false, false, 1) => run_as::<false, false, 1>(input, weight, bias, g, ep, out),
            (true, false, 1) => run_as::<true, false, 1>(input, weight, bias, g, ep, out),
            (false, true, 1) => run_as::<false, true, 1>(input, weight, bias, g, ep, out),
            (true, true, 1) => run_as::<true, true, 1>(input, weight, bias, g, ep, out),
            (false, false, _) => run_as::<false, false, 2>(input, weight, bias, g, ep, out),
            (true, false, _) => run_as::<true, false, 2>(input, weight, bias, g, ep, out),
            (false, true, _) => run_as::<false, true, 2>(input, weight, bias, g, ep, out),
            (true, true, _) => run_as::<true, true, 2>(input, weight, bias, g, ep, out),
        }
    }

    #[inline(always)]
    unsafe fn run_as<const AF: bool, const CL: bool, const S: usize>(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32]) {
        let (cin, ih, iw, oh, ow) = (g.in_c, g.in_h, g.in_w, g.out_h, g.out_w);
        let (pad_t, pad_l) = (g.pad_top as isize, g.pad_left as isize);
        let taps = cin * 9;
        let segments = ow.div_ceil(16);
        // Per 16-column segment of an output row: the lanes stored, and the load masks (stride
        // 1: per tap column, input columns 16·seg + ox + kx − pad_l; stride 2: the two loads
        // covering input columns 32·seg − pad_l .. + 32).
        let stores: Vec<u16> = (0..segments).map(|s| window(0, ow - 16 * s, 16)).collect();
        let loads: Vec<[u16; 3]> = (0..segments)
            .map(|s| {
                let n = (ow - 16 * s).min(16);
                if S == 1 {
                    std::array::from_fn(|kx| window(16 * s as isize + kx as isize - pad_l, iw, n))
                } else {
                    let at = 32 * s as isize - pad_l;
                    [window(at, iw, 16), window(at + 16, iw, 16), window(at + 32, iw, 1)]
                }
            })
            .collect();
        let (lo, hi) = ep.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let w = weight.as_ptr();
        for oc0 in (0..g.out_c).step_by(OC) {
            let mut bias_v = [_mm512_setzero_ps(); OC];
            let mut scale = [_mm512_setzero_ps(); OC];
            let mut shift = [_mm512_setzero_ps(); OC];
            for o in 0..OC {
                bias_v[o] = _mm512_set1_ps(bias.map_or(0.0, |b| b[oc0 + o]));
                if let Some((s, t)) = ep.affine {
                    scale[o] = _mm512_set1_ps(s[oc0 + o]);
                    shift[o] = _mm512_set1_ps(t[oc0 + o]);
                }
            }
            for oy in 0..oh {
                for (seg, (&store, m)) in stores.iter().zip(&loads).enumerate() {
                    let mut acc = [_mm512_setzero_ps(); OC];
                    for c in 0..cin {
                        let plane = input.as_ptr().add(c * ih * iw);
                        for ky in 0..3 {
                            let iy = (oy * S + ky) as isize - pad_t;
                            let inside = iy >= 0 && (iy as usize) < ih;
                            // A row outside the image: its taps multiply zeros, as the
                            // im2col zeros do.
                            let row = plane.wrapping_offset(if inside { iy * iw as isize } else { 0 });
                            let mut xs = [_mm512_setzero_ps(); 3];
                            if S == 1 {
                                for (kx, x) in xs.iter_mut().enumerate() {
                                    let mk = if inside { m[kx] } else { 0 };
                                    *x = _mm512_maskz_loadu_ps(mk, row.wrapping_offset(16 * seg as isize + kx as isize - pad_l));
                                }
                            } else {
                                let at = 32 * seg as isize - pad_l;
                                xs = stride2_taps::<3>(row, at, if inside { *m } else { [0; 3] });
                            }
                            for (kx, x) in xs.iter().enumerate() {
                                let t = c * 9 + ky * 3 + kx;
                                for (o, a) in acc.iter_mut().enumerate() {
                                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*w.add((oc0 + o) * taps + t)), *x, *a);
                                }
                            }
                        }
                    }
                    for (o, a) in acc.iter().enumerate() {
                        let mut v = _mm512_add_ps(*a, bias_v[o]);
                        if AF {
                            // Multiply then add (no FMA), as every other FP32 epilogue.
                            v = _mm512_add_ps(_mm512_mul_ps(v, scale[o]), shift[o]);
                        }
                        if CL {
                            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                        }
                        _mm512_mask_storeu_ps(out.as_mut_ptr().add((oc0 + o) * oh * ow + oy * ow + 16 * seg), store, v);
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::f32::{conv2d_gemm, conv2d_reference, has_avx512, Epilogue};
    use crate::f32::test_data::rnd_vec;
    use proptest::prelude::*;


    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The direct kernel gives the im2col GEMM path's bits (and the reference's values)
        /// for 1–4 input channels, 16 or 32 output channels, strides 1 and 2, padding 0–2 on
        /// each side and planes of 1–40 columns (one to three 16-column segments, partial last).
        #[test]
        fn direct_stem_is_the_gemm_path(cin in 1usize..5, out16 in 1usize..3, s in 1usize..3, h in 1usize..12, w in 1usize..41, pt in 0usize..3, pl in 0usize..3, pb in 0usize..3, pr in 0usize..3, seed in 0u64..1000, affine in any::<bool>(), clamp in any::<bool>()) {
            prop_assume!(h + pt + pb >= 3 && w + pl + pr >= 3);
            let out_c = 16 * out16;
            let g = ConvGeometry { in_c: cin, in_h: h, in_w: w, out_c, out_h: (h + pt + pb - 3) / s + 1, out_w: (w + pl + pr - 3) / s + 1, kernel: [3, 3], strides: [s, s], dilations: [1, 1], pad_top: pt, pad_left: pl, group: 1 };
            prop_assert!(applies(&g));
            if !has_avx512() {
                return Ok(());
            }
            let (input, weight, bias) = (rnd_vec(cin * h * w, seed), rnd_vec(out_c * cin * 9, seed + 1), rnd_vec(out_c, seed + 2));
            let (scale, shift) = (rnd_vec(out_c, seed + 3), rnd_vec(out_c, seed + 4));
            let ep = Epilogue { affine: affine.then_some((&scale[..], &shift[..])), clamp: clamp.then_some((-0.2, 0.3)) };
            let n = out_c * g.out_h * g.out_w;
            let (mut direct, mut gemm) = (vec![f32::NAN; n + 16], vec![f32::NAN; n]);
            // SAFETY: AVX-512 detected; the geometry applies; the slices have its sizes.
            unsafe { avx512::run(&input, &weight, Some(&bias), &g, &ep, &mut direct) };
            conv2d_gemm(&input, &weight, Some(&bias), &g, &ep, &mut gemm, &mut Vec::new());
            let mut want = vec![0.0; n];
            conv2d_reference(&input, &weight, Some(&bias), &g, &mut want);
            ep.apply_planes(&mut want, out_c, g.out_h * g.out_w);
            // One FMA chain per output over (channel, ky, kx) from zero, zeros outside the
            // image, then bias and post-ops: what every GEMM tile computes.
            let x_at = |c: usize, y: isize, x: isize| if y < 0 || x < 0 || y >= h as isize || x >= w as isize { 0.0 } else { input[(c * h + y as usize) * w + x as usize] };
            let plane = g.out_h * g.out_w;
            for i in 0..n {
                let (o, oy, ox) = (i / plane, i % plane / g.out_w, i % g.out_w);
                let mut chain = 0f32;
                for c in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let x = x_at(c, (oy * s + ky) as isize - pt as isize, (ox * s + kx) as isize - pl as isize);
                            chain = weight[(o * cin + c) * 9 + ky * 3 + kx].mul_add(x, chain);
                        }
                    }
                }
                let mut v = chain + bias[o];
                if affine {
                    v = v * scale[o] + shift[o];
                }
                if clamp {
                    v = v.clamp(-0.2, 0.3);
                }
                prop_assert_eq!(direct[i].to_bits(), v.to_bits(), "[{}] {} vs {} for {:?}", i, direct[i], v, g);
                prop_assert!((direct[i] - want[i]).abs() <= 1e-4 * want[i].abs().max(1.0));
                // The GEMM's tiles are such chains; its column-tail kernel (the last n mod 8
                // columns of a plane over 32) sums in another order.
                if plane.is_multiple_of(8) || plane <= 32 {
                    prop_assert_eq!(direct[i].to_bits(), gemm[i].to_bits());
                }
            }
            // Nothing written past the output.
            prop_assert!(direct[n..].iter().all(|v| v.is_nan()));
        }
    }
}
