//! Depthwise convolution on small planes with AVX-512: one output row per vector.
//!
//! On outputs up to 16 columns wide (the 10×10, 7×7 and 5×5 planes of a network's second half,
//! and the stride-2 layers that produce them) a whole output row fits one 16-lane vector.
//! Each tap is then one masked load of the input row (lanes outside the image read as zeros,
//! so there is no padded copy) and one FMA; a stride of 2 is one pair of loads per input row
//! and one two-source permute per tap. No transposes, no per-channel copy: the blocked kernel
//! ([`super::depthwise_blocked`]) spends most of its time on those at these sizes.
//!
//! Each output is `bias + Σ_t w[t]·x[t]` accumulated with FMAs in tap order (taps outside the
//! image multiply a zero), then the epilogue (multiply-add, max, min): the operations of the
//! other depthwise kernels in the same order, so all give the same bits.

use crate::ConvGeometry;

/// Whether this kernel handles the geometry: dilation 1, a 3×3 or 5×5 kernel (unrolled at
/// compile time: with the tap loops at run time, loop control was most of the instructions),
/// output rows of at most 16 columns, horizontal stride 1, or 2 with the input span of a row
/// (2·(out_w − 1) + kw) within 32.
pub fn applies(g: &ConvGeometry) -> bool {
    let [_, kw] = g.kernel;
    g.dilations == [1, 1]
        && (g.kernel == [3, 3] || g.kernel == [5, 5])
        && g.out_w <= 16
        && g.out_h > 0
        && g.out_w > 0
        && match g.strides[1] {
            1 => true,
            2 => 2 * (g.out_w - 1) + kw <= 32,
            _ => false,
        }
}

/// Whether it is the fastest kernel for the geometry (measured inside MobileNetV2 and
/// EfficientNet-Lite0, BENCHMARKS.md, session 13): on rows of 10 or 14 columns, and on the
/// stride-2 layers to 10×10, 14×14 and 5×5, it took 0.33–0.83 of the blocked kernel's time
/// (about even on 5×5 taps to 7×7 at stride 2). On rows of 5 or 7 columns at stride 1 a
/// vector is a third full while each row's FMA chain is as long: about even with 3×3 taps,
/// 1.27× with 5×5 (7×7 planes); those stay blocked.
pub fn chosen(g: &ConvGeometry) -> bool {
    applies(g) && (g.strides[1] == 2 || g.out_w >= 9)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::f32::Epilogue;
    use crate::ConvGeometry;
    use std::arch::x86_64::*;

    /// Lanes `0..n` set.
    fn lanes(n: usize) -> u16 {
        if n >= 16 {
            u16::MAX
        } else {
            ((1u32 << n) - 1) as u16
        }
    }

    /// Lanes i with `0 ≤ start + i < len` and i < `count`.
    fn window(start: isize, len: usize, count: usize) -> u16 {
        let mut m = 0u16;
        for i in 0..count.min(16) {
            let x = start + i as isize;
            if x >= 0 && (x as usize) < len {
                m |= 1 << i;
            }
        }
        m
    }

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
        let store = lanes(ow);
        // Stride 1: tap column kx reads input columns ox + kx − pad_l, one masked load each.
        // Stride 2: two masked loads cover input columns −pad_l .. 32 − pad_l, and tap kx picks
        // lanes 2·ox + kx of the pair.
        let mut tap_masks = [0u16; K];
        let mut picks = [_mm512_setzero_si512(); K];
        if SX == 1 {
            for (kx, m) in tap_masks.iter_mut().enumerate() {
                *m = window(kx as isize - pad_l, iw, ow);
            }
        } else {
            for (kx, p) in picks.iter_mut().enumerate() {
                let mut idx = [0i32; 16];
                for (ox, v) in idx.iter_mut().enumerate().take(ow) {
                    *v = (2 * ox + kx) as i32;
                }
                *p = _mm512_loadu_si512(idx.as_ptr() as *const _);
            }
        }
        let (lo_mask, hi_mask) = (window(-pad_l, iw, 16), window(16 - pad_l, iw, 16));
        let (lo, hi) = ep.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let zero = _mm512_setzero_ps();
        // Output rows first_inner..end_inner read only rows inside the image.
        let first_inner = (g.pad_top.div_ceil(sy)).min(oh);
        let end_inner = if ih + g.pad_top >= K { ((ih + g.pad_top - K) / sy + 1).min(oh) } else { 0 };
        let end_inner = end_inner.max(first_inner);
        for ch in 0..g.out_c {
            let plane = input.as_ptr().add(ch * ih * iw);
            let w = weight.as_ptr().add(ch * K * K);
            let b = _mm512_set1_ps(bias.map_or(0.0, |b| b[ch]));
            let (scale, shift) = match ep.affine {
                Some((s, t)) => (_mm512_set1_ps(s[ch]), _mm512_set1_ps(t[ch])),
                None => (zero, zero),
            };
            let dst = out.as_mut_ptr().add(ch * oh * ow);
            // One output row: K rows of K taps. `$check`: test each input row against the
            // image (the first and last rows); the rows between take no branch (a branch per
            // input row mispredicted at every channel's borders and kept the next rows'
            // independent FMA chains from overlapping).
            macro_rules! row {
                ($oy:expr, $check:expr) => {{
                    let oy = $oy;
                    let mut acc = b;
                    for ky in 0..K {
                        let iy = (oy * sy + ky) as isize - pad_t;
                        let inside = !$check || (iy >= 0 && (iy as usize) < ih);
                        // A row outside the image: its taps multiply zeros, as in the other
                        // kernels.
                        let row = plane.wrapping_offset(if inside { iy * iw as isize } else { 0 });
                        if SX == 1 {
                            for kx in 0..K {
                                let m = if inside { tap_masks[kx] } else { 0 };
                                let x = _mm512_maskz_loadu_ps(m, row.wrapping_offset(kx as isize - pad_l));
                                acc = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(ky * K + kx)), x, acc);
                            }
                        } else {
                            let (ml, mh) = if inside { (lo_mask, hi_mask) } else { (0, 0) };
                            let xl = _mm512_maskz_loadu_ps(ml, row.wrapping_offset(-pad_l));
                            let xh = _mm512_maskz_loadu_ps(mh, row.wrapping_offset(16 - pad_l));
                            for (kx, pick) in picks.iter().enumerate() {
                                let x = _mm512_permutex2var_ps(xl, *pick, xh);
                                acc = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(ky * K + kx)), x, acc);
                            }
                        }
                    }
                    if AF {
                        // Multiply then add (no FMA), as every other FP32 epilogue.
                        acc = _mm512_add_ps(_mm512_mul_ps(acc, scale), shift);
                    }
                    if CL {
                        acc = _mm512_min_ps(_mm512_max_ps(acc, lo), hi);
                    }
                    _mm512_mask_storeu_ps(dst.add(oy * ow), store, acc);
                }};
            }
            for oy in 0..first_inner {
                row!(oy, true);
            }
            for oy in first_inner..end_inner {
                row!(oy, false);
            }
            for oy in end_inner..oh {
                row!(oy, true);
            }
        }
    }
}
