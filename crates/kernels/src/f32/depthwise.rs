//! Fast depthwise convolution (dilation 1, any kernel size and stride).
//!
//! Each channel's input plane is first copied into a zero-padded buffer split by column phase
//! (`x mod stride`), so every kernel tap reads a contiguous, in-bounds run of columns: tap
//! (ky, kx) of output column `ox` reads phase `kx mod sx` at column `ox + kx / sx` of padded row
//! `oy·sy + ky`. The output is then computed eight columns at a time with no edge cases; the
//! last, partial block reads (zero) padding and only stores the valid columns.
//!
//! The AVX2+FMA row kernel is chosen at run time; the portable row kernel has the same
//! structure and is what the proptests compare the SIMD one against (both are also compared
//! with [`super::conv2d_reference`]).

use super::{Epilogue, Post};
use crate::ConvGeometry;

/// Output columns per SIMD block.
const LANES: usize = 8;

/// Layout of the per-channel padded, phase-split plane. Its zero border is the same for every
/// channel, so the buffer is zeroed once per call and each channel only overwrites the interior.
struct Plane {
    /// Padded rows needed: (out_h − 1)·sy + kh.
    rows: usize,
    /// Columns per phase row: out_w rounded up to LANES plus the largest tap offset.
    width: usize,
    /// For tap t = ky·kw + kx: offset of its first column relative to the output row's base.
    tap_offsets: Vec<usize>,
    /// Distance between the bases of consecutive output rows.
    row_step: usize,
    /// Padded rows that hold input rows: [py0, py1), input row py − pad_top.
    py: (usize, usize),
    /// Per phase p: columns [q0, q1) hold input columns first + (q − q0)·sx.
    cols: Vec<(usize, usize, usize)>,
}

impl Plane {
    fn new(g: &ConvGeometry) -> Plane {
        let [kh, kw] = g.kernel;
        let (sy, sx) = (g.strides[0], g.strides[1]);
        let rows = (g.out_h - 1) * sy + kh;
        let width = g.out_w.div_ceil(LANES) * LANES + (kw - 1) / sx;
        let tap_offsets = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky * sx + kx % sx) * width + kx / sx)).collect();
        let py0 = g.pad_top.min(rows);
        let py1 = (g.pad_top + g.in_h).min(rows).max(py0);
        let cols = (0..sx)
            .map(|p| {
                let (q0, q1) = ConvGeometry::valid_range(width, g.in_w, sx, g.pad_left, p);
                (q0, q1, if q0 < q1 { q0 * sx + p - g.pad_left } else { 0 })
            })
            .collect();
        Plane { rows, width, tap_offsets, row_step: sy * sx * width, py: (py0, py1), cols }
    }

    fn len(&self, sx: usize) -> usize {
        self.rows * sx * self.width
    }

    /// Copy one channel's interior into the (already zero-bordered) buffer.
    #[inline(always)]
    fn fill(&self, src: &[f32], g: &ConvGeometry, dst: &mut [f32], fill_rows: FillRows) {
        let (sx, w) = (g.strides[1], self.width);
        let (py0, py1) = self.py;
        if py0 >= py1 {
            return;
        }
        // Bounds of everything the row filler touches, checked once per channel.
        assert!(src.len() >= (py1 - g.pad_top) * g.in_w && dst.len() >= py1 * sx * w);
        for (p, &(q0, q1, first)) in self.cols.iter().enumerate() {
            assert!(q0 >= q1 || (p * w + q1 <= sx * w && first + (q1 - q0 - 1) * sx < g.in_w));
        }
        let mut segs: [(usize, usize, usize); 2] = match sx {
            1 => [(self.cols[0].0, self.cols[0].1 - self.cols[0].0, self.cols[0].2), (0, 0, 0)],
            _ => std::array::from_fn(|p| {
                let (q0, q1, first) = self.cols.get(p).copied().unwrap_or((0, 0, 0));
                (p * w + q0, q1 - q0, first)
            }),
        };
        if sx == 2 {
            // Phase p holds input columns of parity (p + pad_left) mod 2, starting at input
            // column 0 or 1 (the left edge is padded, never cropped): even phase first.
            if !g.pad_left.is_multiple_of(2) {
                segs.swap(0, 1);
            }
            segs[0].2 = 0;
            segs[1].2 = 1;
        }
        if sx > 2 {
            // Rare (no mobile CNN uses it): plain strided gathers.
            for py in py0..py1 {
                let row = &src[(py - g.pad_top) * g.in_w..][..g.in_w];
                let d = &mut dst[py * sx * w..(py + 1) * sx * w];
                for (p, &(q0, q1, first)) in self.cols.iter().enumerate() {
                    for (j, v) in d[p * w + q0..p * w + q1].iter_mut().enumerate() {
                        *v = row[first + j * sx];
                    }
                }
            }
            return;
        }
        // SAFETY: row py reads src[(py − pad_top)·in_w + first + j·sx] < (py − pad_top + 1)·in_w
        // and writes dst[py·sx·w + off + j] < (py + 1)·sx·w, both asserted above.
        unsafe { fill_rows(src[(py0 - g.pad_top) * g.in_w..].as_ptr(), g.in_w, dst[py0 * sx * w..].as_mut_ptr(), sx * w, py1 - py0, sx, segs) };
    }
}

/// Copies `rows` input rows (`src_stride` apart) into padded rows (`dst_stride` apart). For
/// column stride 1, segs[0] = (offset, len, first): `d[offset + j] = s[first + j]`. For stride
/// 2, segs = [even, odd] phase rows (offset, len, first = 0 resp. 1): `d[offset + j] =
/// s[first + 2j]`.
type FillRows = unsafe fn(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, rows: usize, sx: usize, segs: [(usize, usize, usize); 2]);

/// Portable [`FillRows`].
///
/// # Safety
/// Every index described at [`FillRows`] is in bounds.
unsafe fn fill_rows_scalar(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, rows: usize, sx: usize, segs: [(usize, usize, usize); 2]) {
    for r in 0..rows {
        let (s, d) = (src.add(r * src_stride), dst.add(r * dst_stride));
        for &(off, len, first) in &segs[..sx] {
            for j in 0..len {
                *d.add(off + j) = *s.add(first + j * sx);
            }
        }
    }
}

/// One block of up to [`LANES`] consecutive output columns of one output row.
#[derive(Clone, Copy, Debug)]
struct Block {
    /// Offset of the block's first tap-(0, 0) input in the padded plane.
    src: usize,
    /// Offset of its first output in the channel's output plane.
    dst: usize,
    /// Valid columns (1..=LANES).
    len: usize,
}

fn blocks(g: &ConvGeometry, plane: &Plane) -> Vec<Block> {
    let mut v = Vec::with_capacity(g.out_h * g.out_w.div_ceil(LANES));
    for oy in 0..g.out_h {
        for x0 in (0..g.out_w).step_by(LANES) {
            v.push(Block { src: oy * plane.row_step + x0, dst: oy * g.out_w + x0, len: (g.out_w - x0).min(LANES) });
        }
    }
    v
}

/// One channel: for every block, `out[ox] = post(bias + Σ_t w[t] · plane[src + off[t] + ox])`.
type ChannelKernel = unsafe fn(plane: *const f32, blocks: &[Block], offs: &[usize], w: &[f32], bias: f32, post: Post, out: &mut [f32]);

/// Portable channel kernel.
///
/// # Safety
/// `plane + block.src + offs[t] + LANES` stays inside the padded plane for every block and tap.
unsafe fn channel_scalar(plane: *const f32, blocks: &[Block], offs: &[usize], w: &[f32], bias: f32, post: Post, out: &mut [f32]) {
    for b in blocks {
        let mut acc = [bias; LANES];
        for (&off, &wt) in offs.iter().zip(w) {
            let src = std::slice::from_raw_parts(plane.add(b.src + off), LANES);
            for (a, &s) in acc.iter_mut().zip(src) {
                *a += wt * s;
            }
        }
        for (o, &a) in out[b.dst..b.dst + b.len].iter_mut().zip(&acc) {
            *o = post.apply(a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Block, Post, LANES};
    use crate::f32::post_avx2_as as post;
    use std::arch::x86_64::*;

    use crate::f32::lane_mask as mask;

    #[inline(always)]
    unsafe fn store(out: *mut f32, b: &Block, v: __m256) {
        if b.len == LANES {
            _mm256_storeu_ps(out.add(b.dst), v);
        } else {
            let m = mask(b.len);
            _mm256_maskstore_ps(out.add(b.dst), m, v);
        }
    }

    /// `N` blocks at once: N independent accumulator chains share each broadcast weight.
    ///
    /// `KW` > 0 divides the tap count: taps then go KW at a time, unrolled (one kernel row of a
    /// 3×3 or 5×5 kernel; these spent a third of their instructions on the per-tap loop).
    /// `KW` = 0 loops over the taps one by one.
    #[inline(always)]
    unsafe fn group<const N: usize, const KW: usize, const AF: bool, const CL: bool>(plane: *const f32, bs: &[Block], offs: &[usize], w: &[f32], bias: f32, p: &Post, out: *mut f32) {
        let mut acc = [_mm256_set1_ps(bias); N];
        let mut src = [plane; N];
        for i in 0..N {
            src[i] = plane.add(bs[i].src);
        }
        macro_rules! tap {
            ($off:expr, $wt:expr) => {{
                let (off, wv) = ($off, _mm256_broadcast_ss($wt));
                for i in 0..N {
                    acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(src[i].add(off)), acc[i]);
                }
            }};
        }
        if KW > 0 {
            for (o, wr) in offs.chunks_exact(KW).zip(w.chunks_exact(KW)) {
                for kx in 0..KW {
                    tap!(*o.get_unchecked(kx), wr.get_unchecked(kx));
                }
            }
        } else {
            for (&off, wt) in offs.iter().zip(w) {
                tap!(off, wt);
            }
        }
        for i in 0..N {
            store(out, &bs[i], post::<AF, CL>(acc[i], p));
        }
    }

    /// AVX2+FMA channel kernel.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; same bounds as [`super::channel_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn channel(plane: *const f32, blocks: &[Block], offs: &[usize], w: &[f32], bias: f32, p: Post, out: &mut [f32]) {
        // Unrolled by 3 or 5 taps for the 3×3 and 5×5 kernels of mobile CNNs (any kernel with
        // 9 or 25 taps is fine: only the tap count must be a multiple).
        // The post's parts are the same for every channel of a layer (tested once per channel
        // here instead of once per output block).
        macro_rules! by_post {
            ($kw:literal) => {
                match (p.affine, p.clamp) {
                    (false, false) => channel_kw::<$kw, false, false>(plane, blocks, offs, w, bias, p, out),
                    (true, false) => channel_kw::<$kw, true, false>(plane, blocks, offs, w, bias, p, out),
                    (false, true) => channel_kw::<$kw, false, true>(plane, blocks, offs, w, bias, p, out),
                    (true, true) => channel_kw::<$kw, true, true>(plane, blocks, offs, w, bias, p, out),
                }
            };
        }
        match offs.len() {
            9 => by_post!(3),
            25 => by_post!(5),
            _ => by_post!(0),
        }
    }

    /// # Safety
    /// As [`channel`]; `KW` = 0 or a divisor of the tap count.
    #[inline(always)]
    unsafe fn channel_kw<const KW: usize, const AF: bool, const CL: bool>(plane: *const f32, blocks: &[Block], offs: &[usize], w: &[f32], bias: f32, p: Post, out: &mut [f32]) {
        let o = out.as_mut_ptr();
        let mut rest = blocks;
        while rest.len() >= 8 {
            group::<8, KW, AF, CL>(plane, &rest[..8], offs, w, bias, &p, o);
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            group::<4, KW, AF, CL>(plane, &rest[..4], offs, w, bias, &p, o);
            rest = &rest[4..];
        }
        if rest.len() >= 2 {
            group::<2, KW, AF, CL>(plane, &rest[..2], offs, w, bias, &p, o);
            rest = &rest[2..];
        }
        if !rest.is_empty() {
            group::<1, KW, AF, CL>(plane, rest, offs, w, bias, &p, o);
        }
    }

    /// AVX2 [`super::FillRows`]: whole vectors, then one masked step per segment tail (no
    /// scalar loops or library calls: rows are only 7–112 values long).
    ///
    /// # Safety
    /// The CPU supports AVX2; indices as for [`super::fill_rows_scalar`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fill_rows(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, rows: usize, sx: usize, segs: [(usize, usize, usize); 2]) {
        if sx == 1 {
            let (off, len, first) = segs[0];
            let tail = mask(len % LANES);
            let full = len - len % LANES;
            for r in 0..rows {
                let (s, d) = (src.add(r * src_stride + first), dst.add(r * dst_stride + off));
                let mut j = 0;
                while j < full {
                    _mm256_storeu_ps(d.add(j), _mm256_loadu_ps(s.add(j)));
                    j += LANES;
                }
                if j < len {
                    _mm256_maskstore_ps(d.add(j), tail, _mm256_maskload_ps(s.add(j), tail));
                }
            }
            return;
        }
        let (even, odd) = (segs[0], segs[1]);
        debug_assert!(even.2 == 0 && odd.2 == 1);
        let n = even.1.max(odd.1);
        // Input values a row reads: even lanes up to 2·len − 1, odd ones up to 2·len.
        let used = (2 * even.1).saturating_sub(1).max(2 * odd.1);
        for r in 0..rows {
            let (s, d) = (src.add(r * src_stride), dst.add(r * dst_stride));
            let mut j = 0;
            while j < n {
                let (a, b) = if 2 * j + 2 * LANES <= used {
                    (_mm256_loadu_ps(s.add(2 * j)), _mm256_loadu_ps(s.add(2 * j + LANES)))
                } else {
                    let left = used - 2 * j;
                    // `wrapping_add`: the second half may start past the row (all lanes masked off).
                    (_mm256_maskload_ps(s.add(2 * j), mask(left)), _mm256_maskload_ps(s.wrapping_add(2 * j + LANES), mask(left.saturating_sub(LANES))))
                };
                // Per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6], then fix the 64-bit pair order.
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                let od = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
                let od = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(od)));
                if j + LANES <= even.1 {
                    _mm256_storeu_ps(d.add(even.0 + j), e);
                } else if j < even.1 {
                    _mm256_maskstore_ps(d.add(even.0 + j), mask(even.1 - j), e);
                }
                if j + LANES <= odd.1 {
                    _mm256_storeu_ps(d.add(odd.0 + j), od);
                } else if j < odd.1 {
                    _mm256_maskstore_ps(d.add(odd.0 + j), mask(odd.1 - j), od);
                }
                j += LANES;
            }
        }
    }
}

/// Whether the fast path handles this geometry (dilation 1); [`depthwise_fused`] falls back
/// to the plain kernel otherwise.
pub fn supports(g: &ConvGeometry) -> bool {
    g.group == g.in_c && g.group == g.out_c && g.dilations == [1, 1] && g.out_h > 0 && g.out_w > 0
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32], scratch: &mut Vec<f32>, kernel: ChannelKernel, fill_rows: FillRows) {
    let [kh, kw] = g.kernel;
    let (oh, ow) = (g.out_h, g.out_w);
    let plane = Plane::new(g);
    let blocks = blocks(g, &plane);
    scratch.clear();
    scratch.resize(plane.len(g.strides[1]), 0.0);
    let in_plane = g.in_h * g.in_w;
    assert!(input.len() >= g.in_c * in_plane && out.len() >= g.out_c * oh * ow && weight.len() >= g.out_c * kh * kw);
    // The channel kernels store block b at dst..dst + len of the channel's output plane.
    assert!(blocks.iter().all(|b| b.dst + b.len <= oh * ow));
    for c in 0..g.out_c {
        plane.fill(&input[c * in_plane..(c + 1) * in_plane], g, scratch, fill_rows);
        let w = &weight[c * kh * kw..(c + 1) * kh * kw];
        let b = bias.map_or(0.0, |b| b[c]);
        // SAFETY: the plane holds `rows` padded rows of `width ≥ ceil(ow / 8)·8 + max tap
        // column offset` columns per phase, and block oy's taps stay within rows oy·sy .. oy·sy + kh.
        unsafe { kernel(scratch.as_ptr(), &blocks, &plane.tap_offsets, w, b, Post::of(ep, c), &mut out[c * oh * ow..(c + 1) * oh * ow]) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32], scratch: &mut Vec<f32>) {
    run(input, weight, bias, g, ep, out, scratch, avx2::channel, avx2::fill_rows)
}

/// Which kernel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// Eight output columns per vector, one channel at a time.
    Avx2Fma,
    /// Eight channels per vector ([`super::depthwise_blocked`]).
    Avx2FmaBlocked,
    /// One output row per AVX-512 vector ([`super::depthwise_rows512`]), for rows of at most
    /// 16 columns.
    Avx512Rows,
}

/// The best kernel set this CPU runs (its per-channel variant).
pub fn best_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return Isa::Avx2Fma;
    }
    Isa::Scalar
}

/// The fastest kernel for this geometry on this CPU.
pub fn best_for(g: &ConvGeometry) -> Isa {
    match best_isa() {
        Isa::Avx2Fma if super::has_avx512() && super::depthwise_rows512::chosen(g) => Isa::Avx512Rows,
        Isa::Avx2Fma if super::depthwise_blocked::prefers(g) => Isa::Avx2FmaBlocked,
        isa => isa,
    }
}

/// Depthwise convolution with the epilogue applied, on the given kernel set (`isa` must be
/// supported by the CPU: use [`best_isa`]). Requires [`supports`].
#[allow(clippy::too_many_arguments)]
pub fn depthwise_with(isa: Isa, input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32], scratch: &mut Vec<f32>) {
    assert!(supports(g), "depthwise fast path needs dilation 1: {g:?}");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(best_isa() == Isa::Avx2Fma);
            // SAFETY: AVX2 and FMA were detected.
            unsafe { run_avx2(input, weight, bias, g, ep, out, scratch) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2FmaBlocked => {
            assert!(best_isa() == Isa::Avx2Fma);
            // SAFETY: AVX2 and FMA were detected; the geometry is dilation-1 depthwise.
            unsafe { super::depthwise_blocked::avx2::run(input, weight, bias, g, ep, out, scratch) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Rows => {
            assert!(best_isa() == Isa::Avx2Fma && super::has_avx512() && super::depthwise_rows512::applies(g));
            // SAFETY: AVX-512F, AVX2 and FMA were detected; the geometry is one it handles.
            unsafe { super::depthwise_rows512::avx512::run(input, weight, bias, g, ep, out) }
        }
        _ => run(input, weight, bias, g, ep, out, scratch, channel_scalar, fill_rows_scalar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32::conv2d_reference;
    use crate::f32::test_data::rnd_vec;
    use proptest::prelude::*;

    fn dw_geometry() -> impl Strategy<Value = ConvGeometry> {
        (1usize..6, 1usize..6, 1usize..6, 1usize..4, 1usize..4, 0usize..4, 0usize..4, 1usize..24, 1usize..40, 0usize..3, 0usize..3).prop_filter_map(
            "kernel larger than padded input",
            |(c, kh, kw, sy, sx, pt, pl, h, w, pb, pr)| {
                let (ph, pw) = (h + pt + pb, w + pl + pr);
                if ph < kh || pw < kw {
                    return None;
                }
                let (out_h, out_w) = ((ph - kh) / sy + 1, (pw - kw) / sx + 1);
                Some(ConvGeometry { in_c: c, in_h: h, in_w: w, out_c: c, out_h, out_w, kernel: [kh, kw], strides: [sy, sx], dilations: [1, 1], pad_top: pt, pad_left: pl, group: c })
            },
        )
    }


    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn simd_and_scalar_match_reference(g in dw_geometry(), seed in 0u64..1000, affine in any::<bool>(), clamp in any::<bool>()) {
            let input = rnd_vec(g.in_c * g.in_h * g.in_w, seed);
            let weight = rnd_vec(g.out_c * g.kernel[0] * g.kernel[1], seed + 1);
            let bias = rnd_vec(g.out_c, seed + 2);
            let (scale, shift) = (rnd_vec(g.out_c, seed + 3), rnd_vec(g.out_c, seed + 4));
            let ep = Epilogue { affine: affine.then_some((&scale[..], &shift[..])), clamp: clamp.then_some((-0.1, 0.2)) };
            let n = g.out_c * g.out_h * g.out_w;
            let mut want = vec![0.0; n];
            conv2d_reference(&input, &weight, Some(&bias), &g, &mut want);
            ep.apply_planes(&mut want, g.out_c, g.out_h * g.out_w);
            let mut isas = vec![Isa::Scalar];
            if best_isa() != Isa::Scalar {
                isas.extend([Isa::Avx2Fma, Isa::Avx2FmaBlocked]);
                if crate::f32::has_avx512() && crate::f32::depthwise_rows512::applies(&g) {
                    isas.push(Isa::Avx512Rows);
                }
            }
            let mut outs = Vec::new();
            for isa in isas {
                let mut got = vec![f32::NAN; n];
                depthwise_with(isa, &input, &weight, Some(&bias), &g, &ep, &mut got, &mut vec![1.0; 3]);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    prop_assert!(close(*a, *b), "{isa:?} [{i}] {a} vs {b} for {g:?}");
                }
                outs.push(got);
            }
            // SIMD against its scalar twin (which rounds the product before the add, unlike an FMA).
            for o in &outs[1..] {
                for (a, b) in o.iter().zip(&outs[0]) {
                    prop_assert!(close(*a, *b));
                }
            }
            // The SIMD kernels: the same FMAs in the same order, so bit for bit equal.
            if let [_, per_channel, others @ ..] = &outs[..] {
                for o in others {
                    for (a, b) in per_channel.iter().zip(o) {
                        prop_assert_eq!(a.to_bits(), b.to_bits());
                    }
                }
            }
        }
    }
}
