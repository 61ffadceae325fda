//! Depthwise convolution eight channels at a time: each SIMD lane is one channel.
//!
//! The per-channel kernel of [`super::depthwise`] puts eight output *columns* in a vector. On
//! the small planes of a network's second half (10×10, 5×5) and on strided layers it spends
//! most of its time per channel rather than per output: a padded copy of the plane, a call, and
//! 8-column blocks of which 5 or 2 are used. Here the eight planes of a channel block are
//! transposed into a zero-padded (row, column, channel) tile, every output is one vector of
//! eight channels (a 5-wide row wastes nothing, a stride is an address step) and the results
//! are transposed back on the store, so the graph keeps its NCHW layout.
//!
//! Each output is `bias + Σ_t w[t]·x[t]` accumulated with FMAs in tap order, then the
//! epilogue (multiply-add, max, min): the same operations in the same order as the
//! per-channel kernel, so the two give bit-identical results.

use crate::ConvGeometry;

/// Channels per block (one AVX register).
const CB: usize = 8;

/// Tile geometry: the zero-padded input rows and columns the outputs read, eight channels deep.
struct Tile {
    /// Padded rows: (out_h − 1)·sy + kh.
    rows: usize,
    /// Padded columns: (out_w rounded up to 8 − 1)·sx + kw, so a last 8-column group reads zeros.
    cols: usize,
    /// Input rows copied: those that fall inside the tile.
    in_rows: usize,
    /// Input columns copied per row.
    in_cols: usize,
}

impl Tile {
    fn new(g: &ConvGeometry) -> Tile {
        let [kh, kw] = g.kernel;
        let rows = (g.out_h - 1) * g.strides[0] + kh;
        let cols = (g.out_w.div_ceil(CB) * CB - 1) * g.strides[1] + kw;
        Tile {
            rows,
            cols,
            in_rows: g.in_h.min(rows.saturating_sub(g.pad_top)),
            in_cols: g.in_w.min(cols.saturating_sub(g.pad_left)),
        }
    }

    fn len(&self) -> usize {
        self.rows * self.cols * CB
    }
}

/// Whether the blocked kernel is the faster one for this depthwise geometry (dilation 1, as
/// [`super::depthwise::supports`]). Measured on every depthwise shape of MobileNetV2 and
/// EfficientNet-Lite0 (`cargo run --release -p subq-kernels --example depthwise_pick`,
/// BENCHMARKS.md, "Session 8"): blocked takes 0.36–1.04× the time on outputs up to 28 columns
/// wide (about even at 20×20 stride 1), where the per-channel kernel's per-channel work and
/// part-empty vectors weigh most, and 1.1–1.4× on outputs of 40 columns or more, where its
/// transposes do.
pub fn prefers(g: &ConvGeometry) -> bool {
    g.out_w < 32
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{Tile, CB};
    use crate::f32::{lane_mask as mask, Epilogue};
    use crate::ConvGeometry;
    use std::arch::x86_64::*;

    /// 8×8 transpose: `r[i]` lane j becomes `r[j]` lane i.
    #[inline(always)]
    unsafe fn transpose(r: &mut [__m256; 8]) {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
        r[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
        r[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
        r[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
        r[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
        r[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
        r[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
        r[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
        r[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
    }

    /// Per-block constants of the epilogue, one lane per channel.
    struct PostV {
        scale: __m256,
        shift: __m256,
        lo: __m256,
        hi: __m256,
    }

    /// Copy channels c0..c0 + nc (nc ≤ 8) of the input into the tile's interior.
    ///
    /// # Safety
    /// AVX2; `tile` holds `t.len()` floats; `input` holds the layer's C·in_h·in_w values and
    /// c0 + nc ≤ C.
    #[inline(always)]
    unsafe fn fill(
        input: *const f32,
        g: &ConvGeometry,
        t: &Tile,
        c0: usize,
        nc: usize,
        tile: *mut f32,
    ) {
        let plane = g.in_h * g.in_w;
        for iy in 0..t.in_rows {
            let dst_row = tile.add(((iy + g.pad_top) * t.cols + g.pad_left) * CB);
            let mut x0 = 0;
            while x0 < t.in_cols {
                let n = (t.in_cols - x0).min(CB);
                let m = mask(n);
                // Missing channels of a last partial block read as zeros. A loop, not
                // `array::from_fn`: its closure does not inherit `target_feature`, and where the
                // compiler did not inline it each masked load became a call (FP32 MobileNetV2
                // 4.2 → 6.0 ms after an unrelated change moved the code).
                let mut r = [_mm256_setzero_ps(); 8];
                for (ch, v) in r.iter_mut().enumerate().take(nc) {
                    *v = _mm256_maskload_ps(input.add((c0 + ch) * plane + iy * g.in_w + x0), m);
                }
                transpose(&mut r);
                for (j, v) in r.iter().enumerate().take(n) {
                    _mm256_storeu_ps(dst_row.add((x0 + j) * CB), *v);
                }
                x0 += CB;
            }
        }
    }

    /// `N` consecutive output columns from `ox` of output row `oy`, all eight channels, stored
    /// transposed into the channel planes (`nc` of them valid).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn group<const N: usize, const AF: bool, const CL: bool>(
        tile: *const f32,
        t: &Tile,
        g: &ConvGeometry,
        wv: *const f32,
        bias: __m256,
        post: &PostV,
        oy: usize,
        ox: usize,
        out: *mut f32,
        nc: usize,
    ) {
        let [kh, kw] = g.kernel;
        let (sy, sx) = (g.strides[0], g.strides[1]);
        let mut acc = [bias; N];
        for ky in 0..kh {
            let row = tile.add(((oy * sy + ky) * t.cols + ox * sx) * CB);
            for kx in 0..kw {
                let w = _mm256_loadu_ps(wv.add((ky * kw + kx) * CB));
                let src = row.add(kx * CB);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(src.add(j * sx * CB)), *a);
                }
            }
        }
        let mut r = [_mm256_setzero_ps(); 8];
        for (j, a) in acc.iter().enumerate() {
            let mut v = *a;
            if AF {
                // Multiply then add (no FMA), as every other FP32 epilogue.
                v = _mm256_add_ps(_mm256_mul_ps(v, post.scale), post.shift);
            }
            if CL {
                v = _mm256_min_ps(_mm256_max_ps(v, post.lo), post.hi);
            }
            r[j] = v;
        }
        transpose(&mut r);
        let plane = g.out_h * g.out_w;
        let dst = out.add(oy * g.out_w + ox);
        for (ch, v) in r.iter().enumerate().take(nc) {
            if N == CB {
                _mm256_storeu_ps(dst.add(ch * plane), *v);
            } else {
                _mm256_maskstore_ps(dst.add(ch * plane), mask(N), *v);
            }
        }
    }

    /// The whole layer.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `g` is a dilation-1 depthwise geometry and the slices
    /// hold its C·in_h·in_w inputs, C·kh·kw weights, C biases (if any) and C·out_h·out_w outputs.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn run(
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        g: &ConvGeometry,
        ep: &Epilogue,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        match (ep.affine.is_some(), ep.clamp.is_some()) {
            (false, false) => run_as::<false, false>(input, weight, bias, g, ep, out, scratch),
            (true, false) => run_as::<true, false>(input, weight, bias, g, ep, out, scratch),
            (false, true) => run_as::<false, true>(input, weight, bias, g, ep, out, scratch),
            (true, true) => run_as::<true, true>(input, weight, bias, g, ep, out, scratch),
        }
    }

    #[inline(always)]
    unsafe fn run_as<const AF: bool, const CL: bool>(
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        g: &ConvGeometry,
        ep: &Epilogue,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let c = g.out_c;
        let taps = g.kernel[0] * g.kernel[1];
        let (oh, ow) = (g.out_h, g.out_w);
        assert!(
            input.len() >= c * g.in_h * g.in_w
                && weight.len() >= c * taps
                && out.len() >= c * oh * ow
                && bias.is_none_or(|b| b.len() >= c)
        );
        let t = Tile::new(g);
        // [tile | packed weights of one block]. The tile's zero border is the same for every
        // block: zeroed once, only the interior is rewritten.
        scratch.clear();
        scratch.resize(t.len() + taps * CB + CB, 0.0);
        let (tile, wpack) = scratch.split_at_mut(t.len());
        let (lo, hi) = ep.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        for c0 in (0..c).step_by(CB) {
            let nc = (c - c0).min(CB);
            fill(input.as_ptr(), g, &t, c0, nc, tile.as_mut_ptr());
            for tap in 0..taps {
                for ch in 0..CB {
                    wpack[tap * CB + ch] = if ch < nc {
                        weight[(c0 + ch) * taps + tap]
                    } else {
                        0.0
                    };
                }
            }
            let lane = |f: &dyn Fn(usize) -> f32| {
                _mm256_setr_ps(f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7))
            };
            let live = |ch: usize| c0 + ch < c;
            let bias_v = lane(&|ch| {
                if live(ch) {
                    bias.map_or(0.0, |b| b[c0 + ch])
                } else {
                    0.0
                }
            });
            let (scale, shift) = match ep.affine {
                Some((s, b)) => (
                    lane(&|ch| if live(ch) { s[c0 + ch] } else { 1.0 }),
                    lane(&|ch| if live(ch) { b[c0 + ch] } else { 0.0 }),
                ),
                None => (_mm256_set1_ps(1.0), _mm256_setzero_ps()),
            };
            let post = PostV {
                scale,
                shift,
                lo: _mm256_set1_ps(lo),
                hi: _mm256_set1_ps(hi),
            };
            let (tp, wp, op) = (
                tile.as_ptr(),
                wpack.as_ptr(),
                out.as_mut_ptr().add(c0 * oh * ow),
            );
            for oy in 0..oh {
                let mut ox = 0;
                while ow - ox >= CB {
                    group::<8, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc);
                    ox += CB;
                }
                // The rest of the row as one group: each group ends in a transpose and eight
                // stores, so 5 = 4 + 1 would pay twice for five columns.
                match ow - ox {
                    0 => {}
                    1 => group::<1, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                    2 => group::<2, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                    3 => group::<3, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                    4 => group::<4, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                    5 => group::<5, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                    6 => group::<6, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                    _ => group::<7, AF, CL>(tp, &t, g, wp, bias_v, &post, oy, ox, op, nc),
                }
            }
        }
    }
}
