//! AVX2 versions of the integer kernels, bit-identical to the scalar references in [`super`].
//!
//! Products use `vpmaddwd` on i16 pairs (`|x − zp| ≤ 255`, `|w − zw| ≤ 255`): each i32 lane gets
//! `x0·w0 + x1·w1` exactly, with no intermediate saturation. The byte GEMM uses `vpmaddubsw` only
//! on weight pairs that cannot saturate it, or, on CPUs with AVX-VNNI, `vpdpbusd`, whose four
//! u8·i8 products go straight into i32 (no intermediate to saturate; [`Packed8::vnni`]). i32
//! accumulation wraps exactly like the reference's (order does not matter for wrapping sums).
//! Requantization is the reference's i64 fixed-point arithmetic, done on 4×i64 lanes
//! (`vpmuldq`), with ties-away-from-zero rounding computed on the absolute value.
//!
//! Every function here requires AVX2: call only after `is_x86_feature_detected!("avx2")`
//! (see [`super::simd_level`]).

// Safety of every `unsafe fn` here: the CPU must support AVX2 (slices are bounds-checked by
// asserts on entry).
#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::pack::{Packed8, PackedWeights, GEMV_MAX_N, MR, MR8, NR, PANEL_SLACK, TILE_K, TILE_ROWS};
use super::{im2col_q_reference, round_shift, ConvPart, FloatEpilogue, Scratch};
use crate::ConvGeometry;

/// Where a kernel's i32 accumulators go. Rows are output channels, `n` the row stride.
pub enum Sink<'a> {
    /// `out[r·n + j] = clamp(zp + round_shift(bias[r] + acc·mult[r], shift), qmin, qmax)`.
    Requant { mult: &'a [i64], bias: &'a [i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &'a mut [u8] },
    /// `acc[r·n + j] = acc` (overwritten).
    Acc(&'a mut [i32]),
}

/// Requantization constants in vector form.
///
/// Two exact ways to compute `round_shift` on i64 lanes: the general one (sign split, 9
/// operations per 4 lanes) and, when the caller's bound shows `|x| < 2^61` and
/// `|round_shift(x)| < 2^30`, a short one: with `x' = x + half + 2^62 > 0` (the offset folded
/// into the bias), ties away from zero is `(x' − [x < 0]) >> shift`, whose low 32 bits are the
/// result plus `2^(62 − shift)` (mod 2^32, removed with the zero-point); `x < 0 ⇔ x' < half +
/// 2^62`.
#[derive(Clone, Copy)]
pub(super) struct Fin {
    fast: bool,
    /// Fast path whose negative fixed-point values all end at `qmin` (`qmin ≥ zp`, a ReLU'd
    /// output): `round_shift` of a negative value is ≤ 0 with or without the ties-away
    /// correction, so the correction (two compares and two adds per 8 values) is skipped.
    relu: bool,
    /// Fast path: `half + 2^62`, added to the bias (wrapping).
    off: i64,
    /// Fast path: `x < 0 ⇔ x' < neg_below` (signed).
    neg_below: __m256i,
    half: __m256i,
    shift: __m128i,
    cap: __m256i,
    zp: __m256i,
    lo: __m256i,
    hi: __m256i,
}

/// Largest `|bias + Σ acc·mult|` when every `|acc| ≤ acc_max` (sum over parts' multipliers).
fn requant_bound(bias: &[i64], mult_max_sum: u128, acc_max: u128) -> u128 {
    bias.iter().map(|b| b.unsigned_abs() as u128).max().unwrap_or(0) + mult_max_sum * acc_max
}

/// Largest `|Σ (x − zx)·d|` over `k` terms, `|x − zx| ≤ 255` and `|d| ≤ wmax`: the accumulator
/// bound of the rounding path's proof. Never below the 8-bit bound (`wmax` 255), so layers of
/// 8-bit weights keep the rounding path they always had.
fn acc_max(k: usize, wmax: u32) -> u128 {
    k as u128 * 255 * wmax.max(255) as u128
}

/// Largest `|mult|` of a slice.
fn max_abs(m: &[i64]) -> u128 {
    m.iter().map(|v| v.unsigned_abs() as u128).max().unwrap_or(0)
}

#[inline(always)]
unsafe fn fin(shift: u32, zp: i32, qmin: i32, qmax: i32, bound: u128) -> Fin {
    let half = if shift == 0 { 0 } else { 1i64 << (shift - 1) };
    let fast = (1..=62).contains(&shift) && bound < 1u128 << 61 && (bound >> shift) + 1 < 1u128 << 30;
    let off = half + (1i64 << 62);
    // 2^(62 − shift) mod 2^32.
    let c32 = if 62 - shift.min(62) >= 32 { 0u32 } else { 1u32 << (62 - shift) };
    Fin {
        fast,
        relu: fast && qmin >= zp,
        off,
        neg_below: _mm256_set1_epi64x(off),
        half: _mm256_set1_epi64x(half),
        shift: _mm_cvtsi64_si128(shift as i64),
        // |round_shift| is clamped to 2^24 before narrowing to i32: far outside [0, 255] − zp,
        // so the final clamp is unchanged.
        cap: _mm256_set1_epi64x(1 << 24),
        zp: _mm256_set1_epi32(if fast { zp.wrapping_sub(c32 as i32) } else { zp }),
        lo: _mm256_set1_epi32(qmin),
        hi: _mm256_set1_epi32(qmax),
    }
}

/// A channel's bias (fixed-point domain) as the vector the kernels add to `acc·mult`.
#[inline(always)]
unsafe fn fin_bias(f: &Fin, bias: i64) -> __m256i {
    _mm256_set1_epi64x(if f.fast { bias.wrapping_add(f.off) } else { bias })
}

/// `round_shift` on 4×i64 (|x| < 2^62), result clamped to ±2^24.
#[inline(always)]
unsafe fn round64(x: __m256i, f: &Fin) -> __m256i {
    let sign = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
    let abs = _mm256_sub_epi64(_mm256_xor_si256(x, sign), sign);
    let r = _mm256_srl_epi64(_mm256_add_epi64(abs, f.half), f.shift);
    let r = _mm256_blendv_epi8(r, f.cap, _mm256_cmpgt_epi64(r, f.cap));
    _mm256_sub_epi64(_mm256_xor_si256(r, sign), sign)
}

/// Fast path: `x'` (offset already added) → `round_shift(x) + 2^(62 − shift)` in the low 32 bits.
#[inline(always)]
unsafe fn round64_fast(x: __m256i, f: &Fin) -> __m256i {
    if f.relu {
        return _mm256_srl_epi64(x, f.shift);
    }
    _mm256_srl_epi64(_mm256_add_epi64(x, _mm256_cmpgt_epi64(f.neg_below, x)), f.shift)
}

/// Fixed-point values of elements 0,2,4,6 (`even`) and 1,3,5,7 (`odd`) → 8 clamped i32
/// (`even`/`odd` include the bias from [`fin_bias`]).
#[inline(always)]
unsafe fn finish(even: __m256i, odd: __m256i, f: &Fin) -> __m256i {
    let (e, o) = if f.fast { (round64_fast(even, f), round64_fast(odd, f)) } else { (round64(even, f), round64(odd, f)) };
    let v = _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0b1010_1010);
    _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(v, f.zp), f.lo), f.hi)
}

/// 8 i32 accumulators → 8 clamped outputs (as i32), with one channel's i64 multiplier and bias.
#[inline(always)]
unsafe fn requant8(acc: __m256i, m: __m256i, bias: __m256i, f: &Fin) -> __m256i {
    let even = _mm256_add_epi64(_mm256_mul_epi32(acc, m), bias);
    let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), m), bias);
    finish(even, odd, f)
}

/// Two vectors of 8 i32 in [0, 255] → 16 bytes in order.
#[inline(always)]
unsafe fn pack16(a: __m256i, b: __m256i) -> __m128i {
    let t = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
    _mm_packus_epi16(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1))
}

/// Rows of a [`FloatEpilogue`], indexed like the kernel's multipliers.
#[derive(Clone, Copy)]
pub(super) struct EpiRows<'a> {
    scale: &'a [f32],
    offset: &'a [f32],
    hi: &'a [f32],
    lo: f32,
    ok: &'a [bool],
    cap: &'a [u8],
}

impl<'a> EpiRows<'a> {
    fn of(e: &'a FloatEpilogue) -> EpiRows<'a> {
        EpiRows { scale: &e.scale, offset: &e.offset, hi: &e.hi, lo: e.lo, ok: &e.ok, cap: &e.cap }
    }

    fn rows(self, r: std::ops::Range<usize>) -> EpiRows<'a> {
        EpiRows { scale: &self.scale[r.clone()], offset: &self.offset[r.clone()], hi: &self.hi[r.clone()], lo: self.lo, ok: &self.ok[r.clone()], cap: &self.cap[r] }
    }

    fn fits(&self, n: usize) -> bool {
        self.scale.len() >= n && self.offset.len() >= n && self.hi.len() >= n && self.ok.len() >= n && self.cap.len() >= n
    }
}

/// [`FloatEpilogue::apply`] on 8 accumulators (results in [0, 255] as i32).
#[inline(always)]
unsafe fn float8(acc: __m256i, s: __m256, o: __m256, lo: __m256, hi: __m256) -> __m256i {
    _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), s), o), lo), hi))
}

/// Row `row`'s 16 accumulators → 16 bytes through the float stage.
#[inline(always)]
unsafe fn float_bytes(e: &EpiRows, row: usize, v0: __m256i, v1: __m256i) -> __m128i {
    let s = _mm256_set1_ps(*e.scale.get_unchecked(row));
    let o = _mm256_set1_ps(*e.offset.get_unchecked(row));
    let hi = _mm256_set1_ps(*e.hi.get_unchecked(row));
    let lo = _mm256_set1_ps(e.lo);
    pack16(float8(v0, s, o, lo, hi), float8(v1, s, o, lo, hi))
}

/// Write 16 accumulators (`v0` = columns 0..8, `v1` = 8..16) of row `row` at column `col`,
/// `cols` ≤ 16 of them valid.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sink16(sink: &mut Sink, f: &Fin, row: usize, col: usize, n: usize, cols: usize, v0: __m256i, v1: __m256i) {
    match sink {
        Sink::Requant { mult, bias, out, .. } => {
            let m = _mm256_set1_epi64x(*mult.get_unchecked(row));
            let b = fin_bias(f, *bias.get_unchecked(row));
            let bytes = pack16(requant8(v0, m, b, f), requant8(v1, m, b, f));
            store_bytes(out.as_mut_ptr().add(row * n + col), bytes, cols, 0);
        }
        Sink::Acc(acc) => {
            let dst = acc.as_mut_ptr().add(row * n + col);
            if cols == 16 {
                _mm256_storeu_si256(dst as *mut __m256i, v0);
                _mm256_storeu_si256(dst.add(8) as *mut __m256i, v1);
            } else {
                let mut tmp = [0i32; 16];
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, v0);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, v1);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
            }
        }
    }
}

#[inline(always)]
unsafe fn sink_fin(sink: &Sink, acc_max: u128) -> Fin {
    match sink {
        Sink::Requant { mult, bias, shift, zp, qmin, qmax, .. } => fin(*shift, *zp, *qmin, *qmax, requant_bound(bias, max_abs(mult), acc_max)),
        Sink::Acc(_) => fin(0, 0, 0, 255, u128::MAX),
    }
}

/// `out[j] = clamp(zp + round_shift(bias + acc[j]·mult, shift), qmin, qmax)`: the conv epilogue
/// on one row (exposed for tests).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn requant_row(acc: &[i32], mult: i64, bias: i64, shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8]) {
    let n = acc.len().min(out.len());
    let acc_max = acc[..n].iter().map(|a| a.unsigned_abs() as u128).max().unwrap_or(0);
    let f = fin(shift, zp, qmin, qmax, requant_bound(&[bias], mult.unsigned_abs() as u128, acc_max));
    let mut sink = Sink::Requant { mult: &[mult], bias: &[bias], shift, zp, qmin, qmax, out };
    let mut j = 0;
    while j < n {
        let cols = 16.min(n - j);
        let mut tmp = [0i32; 16];
        tmp[..cols].copy_from_slice(&acc[j..j + cols]);
        let v0 = _mm256_loadu_si256(tmp.as_ptr() as *const __m256i);
        let v1 = _mm256_loadu_si256(tmp.as_ptr().add(8) as *const __m256i);
        sink16(&mut sink, &f, 0, j, 0, cols, v0, v1);
        j += 16;
    }
}

/// Pack `x − zp` of a uint8 `[k × n]` matrix into `NR`-column panels (see [`super::pack_b_u8`]).
#[target_feature(enable = "avx2")]
pub unsafe fn pack_b_u8(input: &[u8], zp: i32, k: usize, n: usize, dst: &mut Vec<i16>) {
    assert!(input.len() >= k * n);
    let (np, kp) = (n.div_ceil(NR), k.div_ceil(2));
    let len = np * kp * NR * 2;
    dst.clear();
    dst.reserve(len);
    let zpv = _mm256_set1_epi16(zp as i16);
    let full = n / NR;
    let d = dst.as_mut_ptr();
    let src = input.as_ptr();
    for jp in 0..full {
        let col = jp * NR;
        for p in 0..kp {
            let a = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(src.add(2 * p * n + col) as *const __m128i)), zpv);
            let b = if 2 * p + 1 < k { _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(src.add((2 * p + 1) * n + col) as *const __m128i)), zpv) } else { _mm256_setzero_si256() };
            let lo = _mm256_unpacklo_epi16(a, b);
            let hi = _mm256_unpackhi_epi16(a, b);
            let o = d.add((jp * kp + p) * NR * 2);
            _mm256_storeu_si256(o as *mut __m256i, _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_storeu_si256(o.add(16) as *mut __m256i, _mm256_permute2x128_si256(lo, hi, 0x31));
        }
    }
    if full < np {
        let tail = d.add(full * kp * NR * 2);
        std::ptr::write_bytes(tail, 0, kp * NR * 2);
        for row in 0..k {
            let (p, h) = (row / 2, row % 2);
            for col in full * NR..n {
                *tail.add((p * NR + col % NR) * 2 + h) = (*src.add(row * n + col) as i32 - zp) as i16;
            }
        }
    }
    dst.set_len(len);
}

/// `acc = A · B` for packed A (one group: `m` rows, `k` deep) and packed B (`n` columns),
/// results to `sink` (rows relative to this group). A's weights are 8-bit (`|w − zw| ≤ 255`):
/// the rounding path's accumulator bound assumes it (wider weights go through `conv_q8_epi`,
/// which passes `ConvPart::wmax`).
#[target_feature(enable = "avx2")]
pub unsafe fn gemm_packed(a: &[i16], m: usize, k: usize, b: &[i16], n: usize, sink: &mut Sink) {
    gemm_packed_cmax(a, m, k, b, n, sink, None, None, 255)
}

/// [`gemm_packed`], each output row `r` also capped at `cmax[r]` (requantizing sinks only), for
/// weights with `|w − zw| ≤ wmax`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_packed_cmax(a: &[i16], m: usize, k: usize, b: &[i16], n: usize, sink: &mut Sink, cmax: Option<&[u8]>, epi: Option<EpiRows>, wmax: u32) {
    let (mb, kp, np) = (m.div_ceil(MR), k.div_ceil(2), n.div_ceil(NR));
    assert!(a.len() >= mb * kp * MR * 2 && b.len() >= np * kp * NR * 2);
    let acc_max = acc_max(k, wmax);
    let f = sink_fin(sink, acc_max);
    let (a, b) = (a.as_ptr() as *const i32, b.as_ptr());
    match sink {
        Sink::Requant { mult, bias, out, shift, zp, qmin, qmax } => {
            assert!(mult.len() >= m && bias.len() >= m && out.len() >= m * n);
            assert!(cmax.is_none_or(|c| c.len() >= m));
            let st = ScalarStage { shift: *shift, zp: *zp, qmin: *qmin, qmax: *qmax };
            if let Some(e) = epi {
                // The float stage already holds the cap.
                assert!(e.fits(m));
                let dst = GemmOut::Float { e, mult, bias, out: out.as_mut_ptr(), st, free: float_clamps_free(&e, m, acc_max), capped: float_capped(&e, m) };
                return if f.fast { gemm_loop::<true, false>(a, m, kp, b, n, &f, &dst) } else { gemm_loop::<false, false>(a, m, kp, b, n, &f, &dst) };
            }
            let dst = GemmOut::Bytes { mult, bias, cmax, out: out.as_mut_ptr(), st };
            match (f.fast, cmax.is_some()) {
                (true, false) => gemm_loop::<true, false>(a, m, kp, b, n, &f, &dst),
                (true, true) => gemm_loop::<true, true>(a, m, kp, b, n, &f, &dst),
                (false, false) => gemm_loop::<false, false>(a, m, kp, b, n, &f, &dst),
                (false, true) => gemm_loop::<false, true>(a, m, kp, b, n, &f, &dst),
            }
        }
        Sink::Acc(acc) => {
            assert!(acc.len() >= m * n);
            gemm_loop::<false, false>(a, m, kp, b, n, &f, &GemmOut::Acc(acc.as_mut_ptr()))
        }
    }
}

/// Output of [`gemm_loop`]: row-major `[m × n]`.
pub(super) enum GemmOut<'a> {
    Bytes { mult: &'a [i64], bias: &'a [i64], cmax: Option<&'a [u8]>, out: *mut u8, st: ScalarStage },
    /// Bytes through a [`FloatEpilogue`] (rows relative to this block); rows without a float
    /// form take the i64 stage and the cap. `free`: see [`float_clamps_free`]; `capped`: some
    /// float row's cap is below 255.
    Float { e: EpiRows<'a>, mult: &'a [i64], bias: &'a [i64], out: *mut u8, st: ScalarStage, free: bool, capped: bool },
    Acc(*mut i32),
}

/// The reference i64 output stage's scalar constants.
#[derive(Clone, Copy)]
pub(super) struct ScalarStage {
    shift: u32,
    zp: i32,
    qmin: i32,
    qmax: i32,
}

impl ScalarStage {
    #[inline(always)]
    fn apply(self, mult: i64, bias: i64, acc: i32) -> u8 {
        (self.zp as i64 + round_shift(bias + acc as i64 * mult, self.shift)).clamp(self.qmin as i64, self.qmax as i64) as u8
    }
}

/// The `MR × 8·H` micro-kernel over `kp` k-pairs (`H = 1`: only the panel's first 8 columns),
/// two k-pairs per iteration.
#[inline(always)]
unsafe fn gemm_tile<const H: usize, const V: bool>(ap: *const i32, bp: *const i16, kp: usize) -> [[__m256i; 2]; MR] {
    let mut c = [[_mm256_setzero_si256(); 2]; MR];
    // One k-pair per iteration: 12 accumulators + 2 B rows + 1 broadcast + 1 product is exactly
    // the 16 ymm registers; a 2× unrolled body made the compiler rotate and spill accumulators
    // (82 instructions per two k-pairs instead of 64).
    let mut p = 0;
    while p + 2 <= kp {
        gemm_step::<H, V>(&mut c, ap, bp, p);
        // Keeps the compiler from hoisting the next k-pair's loads above this one's products
        // (which needs more than 16 registers and spills accumulators).
        std::arch::asm!("", options(nomem, nostack, preserves_flags));
        gemm_step::<H, V>(&mut c, ap, bp, p + 1);
        p += 2;
    }
    if p < kp {
        gemm_step::<H, V>(&mut c, ap, bp, p);
    }
    c
}

/// [`gemm_tile`] with its two switches picked at run time: 16 columns (`wide`) or 8, and the
/// AVX-VNNI `vpdpwssd` form (`vnni`, from [`super::pack::vnni_available`]).
#[inline(always)]
unsafe fn gemm_tile_for(ap: *const i32, bp: *const i16, kp: usize, wide: bool, vnni: bool) -> [[__m256i; 2]; MR] {
    match (wide, vnni) {
        (true, false) => gemm_tile::<2, false>(ap, bp, kp),
        (false, false) => gemm_tile::<1, false>(ap, bp, kp),
        (true, true) => gemm_tile::<2, true>(ap, bp, kp),
        (false, true) => gemm_tile::<1, true>(ap, bp, kp),
    }
}

/// One k-pair of [`gemm_tile`].
#[inline(always)]
unsafe fn gemm_step<const H: usize, const V: bool>(c: &mut [[__m256i; 2]; MR], ap: *const i32, bp: *const i16, p: usize) {
    let b0 = _mm256_loadu_si256(bp.add(p * NR * 2) as *const __m256i);
    let b1 = if H == 2 { _mm256_loadu_si256(bp.add(p * NR * 2 + 16) as *const __m256i) } else { b0 };
    let aw = ap.add(p * MR);
    for (r, cr) in c.iter_mut().enumerate() {
        let w = _mm256_set1_epi32(aw.add(r).read_unaligned());
        cr[0] = if V { dpwssd(cr[0], b0, w) } else { _mm256_add_epi32(cr[0], _mm256_madd_epi16(b0, w)) };
        if H == 2 {
            cr[1] = if V { dpwssd(cr[1], b1, w) } else { _mm256_add_epi32(cr[1], _mm256_madd_epi16(b1, w)) };
        }
    }
}

/// One channel's 16 (or `cols`) outputs → bytes, with the short rounding path when `FAST`.
#[inline(always)]
unsafe fn row_bytes<const FAST: bool>(f: &Fin, m: i64, bias: i64, v0: __m256i, v1: __m256i) -> __m128i {
    let mv = _mm256_set1_epi64x(m);
    let bv = _mm256_set1_epi64x(if FAST { bias.wrapping_add(f.off) } else { bias });
    pack16(fin8::<FAST>(f, v0, mv, bv), fin8::<FAST>(f, v1, mv, bv))
}

/// [`requant8`] with the rounding path fixed at compile time.
#[inline(always)]
unsafe fn fin8<const FAST: bool>(f: &Fin, acc: __m256i, mv: __m256i, bv: __m256i) -> __m256i {
    let even = _mm256_add_epi64(_mm256_mul_epi32(acc, mv), bv);
    let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), mv), bv);
    fin_eo::<FAST>(f, even, odd)
}

/// [`finish`] with the rounding path fixed at compile time.
#[inline(always)]
unsafe fn fin_eo<const FAST: bool>(f: &Fin, even: __m256i, odd: __m256i) -> __m256i {
    let (e, o) = if FAST { (round64_fast(even, f), round64_fast(odd, f)) } else { (round64(even, f), round64(odd, f)) };
    let v = _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0b1010_1010);
    _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(v, f.zp), f.lo), f.hi)
}

/// One part's weights in a split GEMM: i16 pairs (packed A, the default) or the byte form of a
/// pointwise part whose weights allow it (see [`Packed8`]). Both give the same exact i32 tile.
#[derive(Clone, Copy)]
enum PartA<'a> {
    /// Packed i16 weights and their largest `|w − zw|`.
    Wide(&'a [i16], u32),
    Byte(&'a Packed8),
}

/// The B operand of a split GEMM: i16 panels `b16` (needed when a part is [`PartA::Wide`]) and
/// byte panels `b8` of the uint8 `[k × n]` input `x` with zero-point `zx` (when a part is
/// [`PartA::Byte`]); an unused form may be empty.
#[derive(Clone, Copy)]
struct PartsB<'a> {
    b16: &'a [i16],
    b8: &'a [u8],
    x: &'a [u8],
    zx: i32,
}

/// A split (multi-part) GEMM conv, output rows `r0..r1` (`r0` a multiple of [`MR`]; `out`
/// holds just those rows): each part's tile is computed over the same column panel and the
/// parts are summed in the epilogue, `clamp(zp + round_shift(bias[r] + Σ_p acc_p·mult[p·out_c + r]))`
/// (multipliers in i32 range), then capped at `cmax[r]`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_parts<const P: usize>(a: [PartA; P], k: usize, b: PartsB, n: usize, mult: &[i64], out_c: usize, bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>, r0: usize, r1: usize, out: &mut [u8]) {
    let (kp, kq, np) = (k.div_ceil(2), k.div_ceil(4), n.div_ceil(NR));
    let mb = out_c.div_ceil(MR);
    assert!(MR8 == MR && r0.is_multiple_of(MR) && r1 <= out_c && out.len() >= (r1 - r0) * n && mult.len() >= P * out_c && bias.len() >= out_c);
    assert!(cmax.is_none_or(|c| c.len() >= out_c));
    for ap in a.iter() {
        match *ap {
            PartA::Wide(w, _) => assert!(w.len() >= mb * kp * MR * 2 && b.b16.len() >= np * kp * NR * 2),
            PartA::Byte(q) => {
                assert!(q.m == out_c && q.k == k && q.a.len() >= mb * kq * MR8 * 4 && q.rowsum.len() >= out_c && q.rem_start.len() > out_c && q.rem.len() >= q.rem_start[out_c] as usize);
                assert!(q.rem.iter().all(|&(kk, _)| (kk as usize) < k) && b.b8.len() >= np * kq * NR * 4 && b.x.len() >= k * n);
            }
        }
    }
    let msum: u128 = (0..P).map(|p| max_abs(&mult[p * out_c + r0..p * out_c + r1])).sum();
    let wmax = a.iter().map(|p| if let PartA::Wide(_, wm) = p { *wm } else { 255 }).max().unwrap_or(255);
    let f = fin(shift, zp, qmin, qmax, requant_bound(&bias[r0..r1], msum, acc_max(k, wmax)));
    if f.fast {
        gemm_parts_loop::<P, true>(a, kp, kq, b, n, mult, out_c, bias, &f, cmax, r0, r1, out)
    } else {
        gemm_parts_loop::<P, false>(a, kp, kq, b, n, mult, out_c, bias, &f, cmax, r0, r1, out)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_parts_loop<const P: usize, const FAST: bool>(a: [PartA; P], kp: usize, kq: usize, b: PartsB, n: usize, mult: &[i64], out_c: usize, bias: &[i64], f: &Fin, cmax: Option<&[u8]>, r0: usize, r1: usize, out: &mut [u8]) {
    let x = b.x.as_ptr();
    let vnni = super::pack::vnni_available();
    for jp in 0..n.div_ceil(NR) {
        let bp16 = b.b16.as_ptr().wrapping_add(jp * kp * NR * 2);
        let bp8 = b.b8.as_ptr().wrapping_add(jp * kq * NR * 4);
        let cols = NR.min(n - jp * NR);
        for ib in r0 / MR..r1.div_ceil(MR) {
            let (row0, rows) = (ib * MR, MR.min(r1 - ib * MR));
            let mut c = [[[_mm256_setzero_si256(); 2]; MR]; P];
            for (cp, ap) in c.iter_mut().zip(&a) {
                *cp = match *ap {
                    PartA::Wide(w, _) => {
                        let ap = (w.as_ptr() as *const i32).add(ib * kp * MR);
                        gemm_tile_for(ap, bp16, kp, cols > 8, vnni)
                    }
                    PartA::Byte(q) => gemm8_block(q, ib, rows, bp8, x, n, b.zx, jp * NR, cols),
                };
            }
            for r in 0..rows {
                let bytes = parts_row_bytes::<P, FAST>(&c, r, row0 + r, mult, out_c, bias, f, cmax);
                store_bytes(out.as_mut_ptr().add((row0 + r - r0) * n + jp * NR), bytes, cols, 0);
            }
        }
    }
}

/// [`gemm_parts`] over all `out_c` rows, split over `tasks` row blocks.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_parts_par<const P: usize>(a: [PartA; P], k: usize, b: PartsB, n: usize, mult: &[i64], out_c: usize, bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>, out: &mut [u8], tasks: usize) {
    let mb = out_c.div_ceil(MR);
    let tasks = tasks.min(mb).max(1);
    let per = mb.div_ceil(tasks) * MR;
    if tasks == 1 || n == 0 {
        return gemm_parts::<P>(a, k, b, n, mult, out_c, bias, shift, zp, qmin, qmax, cmax, 0, out_c, out);
    }
    out[..out_c * n].par_chunks_mut(per * n).enumerate().for_each(|(i, o)| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(out_c));
        // SAFETY: reached only from AVX2 code, so the CPU has AVX2.
        unsafe { gemm_parts::<P>(a, k, b, n, mult, out_c, bias, shift, zp, qmin, qmax, cmax, r0, r1, o) };
    });
}

/// Row `r` (output channel `row`) of the parts' tiles → 16 bytes:
/// `min(clamp(zp + round_shift(bias[row] + Σ_p acc_p·mult[p·out_c + row])), cmax[row])`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn parts_row_bytes<const P: usize, const FAST: bool>(c: &[[[__m256i; 2]; MR]; P], r: usize, row: usize, mult: &[i64], out_c: usize, bias: &[i64], f: &Fin, cmax: Option<&[u8]>) -> __m128i {
    let bias_r = *bias.get_unchecked(row);
    let bv = _mm256_set1_epi64x(if FAST { bias_r.wrapping_add(f.off) } else { bias_r });
    let mut v = [_mm256_setzero_si256(); 2];
    for (h, vh) in v.iter_mut().enumerate() {
        let (mut e, mut o) = (bv, bv);
        for (p, cp) in c.iter().enumerate() {
            let mv = _mm256_set1_epi64x(*mult.get_unchecked(p * out_c + row));
            e = _mm256_add_epi64(e, _mm256_mul_epi32(cp[r][h], mv));
            o = _mm256_add_epi64(o, _mm256_mul_epi32(_mm256_srli_epi64(cp[r][h], 32), mv));
        }
        *vh = fin_eo::<FAST>(f, e, o);
    }
    let bytes = pack16(v[0], v[1]);
    match cmax {
        Some(cm) => _mm_min_epu8(bytes, _mm_set1_epi8(*cm.get_unchecked(row) as i8)),
        None => bytes,
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_store<const FAST: bool, const CAP: bool>(c: &[[__m256i; 2]; MR], row0: usize, rows: usize, col: usize, cols: usize, n: usize, f: &Fin, dst: &GemmOut) {
    let mut r = 0;
    while r < rows.min(MR) {
        let cr = c.get_unchecked(r);
        let row = row0 + r;
        match dst {
            GemmOut::Bytes { mult, bias, cmax, out, .. } => {
                let mut bytes = row_bytes::<FAST>(f, *mult.get_unchecked(row), *bias.get_unchecked(row), cr[0], cr[1]);
                if CAP {
                    let cm = cmax.unwrap_unchecked();
                    bytes = _mm_min_epu8(bytes, _mm_set1_epi8(*cm.get_unchecked(row) as i8));
                }
                store_bytes(out.add(row * n + col), bytes, cols, 0);
            }
            GemmOut::Float { e, mult, bias, out, free, capped, .. } => {
                if *free && cols == 16 && r + 1 < rows && *e.ok.get_unchecked(row) && *e.ok.get_unchecked(row + 1) {
                    // Two rows at once: the saturating packs and a byte cap instead of the
                    // float clamps (see `float_clamps_free`).
                    let cn = c.get_unchecked(r + 1);
                    let (s0, o0) = (_mm256_set1_ps(*e.scale.get_unchecked(row)), _mm256_set1_ps(*e.offset.get_unchecked(row)));
                    let (s1, o1) = (_mm256_set1_ps(*e.scale.get_unchecked(row + 1)), _mm256_set1_ps(*e.offset.get_unchecked(row + 1)));
                    let p = _mm256_packs_epi32(float8_free(cr[0], s0, o0), float8_free(cr[1], s0, o0));
                    let q = _mm256_packs_epi32(float8_free(cn[0], s1, o1), float8_free(cn[1], s1, o1));
                    // Dwords of packus(p, q): row r = 0 4 1 5, row r + 1 = 2 6 3 7.
                    let t = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p, q), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                    let t = if *capped {
                        let caps = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm_set1_epi8(*e.cap.get_unchecked(row) as i8)), _mm_set1_epi8(*e.cap.get_unchecked(row + 1) as i8));
                        _mm256_min_epu8(t, caps)
                    } else {
                        t
                    };
                    _mm_storeu_si128(out.add(row * n + col) as *mut __m128i, _mm256_castsi256_si128(t));
                    _mm_storeu_si128(out.add((row + 1) * n + col) as *mut __m128i, _mm256_extracti128_si256(t, 1));
                    r += 2;
                    continue;
                }
                let bytes = if *e.ok.get_unchecked(row) {
                    float_bytes(e, row, cr[0], cr[1])
                } else {
                    _mm_min_epu8(row_bytes::<FAST>(f, *mult.get_unchecked(row), *bias.get_unchecked(row), cr[0], cr[1]), _mm_set1_epi8(*e.cap.get_unchecked(row) as i8))
                };
                store_bytes(out.add(row * n + col), bytes, cols, 0);
            }
            GemmOut::Acc(acc) => {
                let d = acc.add(row * n + col);
                let mut tmp = [0i32; 16];
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, cr[0]);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, cr[1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), d, cols);
            }
        }
        r += 1;
    }
}

/// [`float8`] without the clamps, for a [`GemmOut::Float`] whose clamps the saturating packs
/// and a byte cap can replace (`free`): `min(sat_u8(trunc(y)), hi)` equals
/// `trunc(min(max(y, 0), hi))` for an integer `hi` in [0, 255] whenever `|y| < 2^31` (negative
/// → 0; in [0, hi) truncation stays below `hi`; at or above `hi` → `hi`).
#[inline(always)]
unsafe fn float8_free(acc: __m256i, s: __m256, o: __m256) -> __m256i {
    _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), s), o))
}

/// Whether the float stage's clamps can be dropped for every float row of `e` (see
/// [`float8_free`]): `lo = 0`, `hi` the row's byte cap, and `|acc·scale + offset|` far below
/// 2^31 for `|acc| ≤ acc_max`. Equalized layers cap each channel below 255 (their rescaled
/// ReLU6), so the cap is a byte min rather than a condition.
fn float_clamps_free(e: &EpiRows, rows: usize, acc_max: u128) -> bool {
    let amax = acc_max as f64;
    e.lo == 0.0 && (0..rows).all(|r| !e.ok[r] || (e.hi[r] == e.cap[r] as f32 && (e.scale[r].abs() as f64 * amax * 1.01 + e.offset[r].abs() as f64) < (1u64 << 30) as f64))
}

/// Whether some float row of `e` caps below 255 (else the clamp-free path needs no byte cap).
fn float_capped(e: &EpiRows, rows: usize) -> bool {
    (0..rows).any(|r| e.ok[r] && e.cap[r] < 255)
}

/// Columns of a panel holding `cols` valid ones that go through the 6×16 tile (0, 8 or 16);
/// the rest (at most 4) are computed by [`dot_tail`]: a tile column costs about as many
/// multiplies as a dot-product column, so an 8-wide tile for 1–4 columns wastes half or more.
#[inline(always)]
fn tile_cols(cols: usize) -> usize {
    match cols {
        0..=4 => 0,
        5..=12 => 8,
        _ => 16,
    }
}

/// Column `c` of the B panel at `bp` (`kp` k-pairs), each k-pair repeated [`MR`] times: the
/// vector that multiplies a packed A block (`[kp][MR]` pairs) lane by lane. Zero padded to a
/// multiple of 8 pairs.
#[inline(always)]
unsafe fn expand_column(bp: *const i16, kp: usize, c: usize, x: &mut Vec<i32>) {
    let len = (kp * MR).div_ceil(8) * 8;
    x.clear();
    x.resize(len, 0);
    let src = bp as *const i32;
    for p in 0..kp {
        let v = src.add(p * NR + c).read_unaligned();
        for r in 0..MR {
            *x.get_unchecked_mut(p * MR + r) = v;
        }
    }
}

/// 8 i32 lanes of products: i16 pairs (`U8 = false`) or, for the byte GEMM, 4 bytes of A
/// (i8, each `vpmaddubsw` pair with |c0| + |c1| ≤ 128, see `byte_pair`) times 4 bytes of B (u8) per lane, exact (`vpmaddubsw` cannot saturate).
#[inline(always)]
unsafe fn dot_product<const U8: bool>(a: __m256i, b: __m256i) -> __m256i {
    if U8 {
        _mm256_madd_epi16(_mm256_maddubs_epi16(b, a), _mm256_set1_epi16(1))
    } else {
        _mm256_madd_epi16(a, b)
    }
}

/// `acc + Σ₄ x·w` per i32 lane: AVX-VNNI's `vpdpbusd` (x u8, w i8), exact. Inline assembly
/// because the intrinsic needs the `avxvnni` target feature on every caller to be inlined; callers
/// check [`Packed8::vnni`], which is only set when the CPU has it.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dpbusd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!("{{vex}} vpdpbusd {c}, {x}, {w}", c = inout(ymm_reg) acc, x = in(ymm_reg) x, w = in(ymm_reg) w, options(pure, nomem, nostack, preserves_flags));
    acc
}

/// `acc + x0·w0 + x1·w1` per i32 lane on i16 pairs: AVX-VNNI's `vpdpwssd`, the same wrapping sum
/// as `vpmaddwd` then `vpaddd` in one instruction (same inline-assembly reason as [`dpbusd`]).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dpwssd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!("{{vex}} vpdpwssd {c}, {x}, {w}", c = inout(ymm_reg) acc, x = in(ymm_reg) x, w = in(ymm_reg) w, options(pure, nomem, nostack, preserves_flags));
    acc
}

/// The [`MR`] accumulators of one A block (`ap`, `kp` k-pairs) times one expanded column `x`
/// (see [`expand_column`]): lane `q` of the flat pair sequence belongs to row `q mod MR`, and
/// 24 pairs (3 vectors) are a whole number of k-pairs, so each of 3 vector accumulators has a
/// fixed lane → row map. The A block is read exactly to its end (a masked load for the last
/// partial vector). Exact in wrapping i32, like the tile.
#[inline(always)]
unsafe fn dot_tail<const U8: bool>(ap: *const i32, kp: usize, x: &[i32], vnni: bool) -> [i32; MR] {
    let total = kp * MR;
    let mut v = [_mm256_setzero_si256(); 3];
    let xp = x.as_ptr();
    let mut q = 0;
    while q + 24 <= total {
        for (t, vt) in v.iter_mut().enumerate() {
            let a = _mm256_loadu_si256(ap.add(q + 8 * t) as *const __m256i);
            let b = _mm256_loadu_si256(xp.add(q + 8 * t) as *const __m256i);
            *vt = if U8 && vnni { dpbusd(*vt, b, a) } else { _mm256_add_epi32(*vt, dot_product::<U8>(a, b)) };
        }
        q += 24;
    }
    let mut t = 0;
    while q < total {
        let b = _mm256_loadu_si256(xp.add(q) as *const __m256i);
        let a = if q + 8 <= total {
            _mm256_loadu_si256(ap.add(q) as *const __m256i)
        } else {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((total - q) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            _mm256_maskload_epi32(ap.add(q), mask)
        };
        v[t] = if U8 && vnni { dpbusd(v[t], b, a) } else { _mm256_add_epi32(v[t], dot_product::<U8>(a, b)) };
        q += 8;
        t += 1;
    }
    let mut lanes = [0i32; 24];
    for (t, vt) in v.iter().enumerate() {
        _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * t) as *mut __m256i, *vt);
    }
    let mut acc = [0i32; MR];
    for (i, &l) in lanes.iter().enumerate() {
        acc[i % MR] = acc[i % MR].wrapping_add(l);
    }
    acc
}

/// One output of a [`gemm_loop`] destination, from its exact accumulator (scalar epilogue for
/// the [`dot_tail`] columns): the same value as the vector stages.
#[inline(always)]
unsafe fn store_one<const CAP: bool>(dst: &GemmOut, row: usize, col: usize, n: usize, acc: i32) {
    match dst {
        GemmOut::Bytes { mult, bias, cmax, out, st } => {
            let mut v = st.apply(*mult.get_unchecked(row), *bias.get_unchecked(row), acc);
            if CAP {
                v = v.min(*cmax.unwrap_unchecked().get_unchecked(row));
            }
            *out.add(row * n + col) = v;
        }
        GemmOut::Float { e, mult, bias, out, st, .. } => {
            let v = if *e.ok.get_unchecked(row) {
                let y = (acc as f32) * *e.scale.get_unchecked(row) + *e.offset.get_unchecked(row);
                y.max(e.lo).min(*e.hi.get_unchecked(row)) as i32 as u8
            } else {
                st.apply(*mult.get_unchecked(row), *bias.get_unchecked(row), acc).min(*e.cap.get_unchecked(row))
            };
            *out.add(row * n + col) = v;
        }
        GemmOut::Acc(a) => *a.add(row * n + col) = acc,
    }
}

#[inline(always)]
unsafe fn gemm_loop<const FAST: bool, const CAP: bool>(a: *const i32, m: usize, kp: usize, b: *const i16, n: usize, f: &Fin, dst: &GemmOut) {
    let (mb, np) = (m.div_ceil(MR), n.div_ceil(NR));
    let mut x = Vec::new();
    // With AVX-VNNI each k-pair product is one `vpdpwssd` instead of `vpmaddwd` + `vpaddd`.
    let vnni = super::pack::vnni_available();
    // Row blocks in chunks of at most A_CHUNK_BYTES of packed A, each chunk against every
    // panel: a chunk stays in L2 while the panels go by (one pass over a large A, such as the
    // 7×7 layers' 0.4–0.8 MB, instead of one per panel from L3).
    let chunks = (mb * kp * MR * 4).div_ceil(A_CHUNK_BYTES).clamp(1, mb.max(1));
    let per = mb.div_ceil(chunks);
    for ib0 in (0..mb).step_by(per.max(1)) {
        let ib1 = (ib0 + per).min(mb);
        for jp in 0..np {
            let bp = b.add(jp * kp * NR * 2);
            let cols = NR.min(n - jp * NR);
            let tc = tile_cols(cols);
            if tc > 0 {
                for ib in ib0..ib1 {
                    let ap = a.add(ib * kp * MR);
                    let rows = MR.min(m - ib * MR);
                    let c = gemm_tile_for(ap, bp, kp, tc > 8, vnni);
                    gemm_store::<FAST, CAP>(&c, ib * MR, rows, jp * NR, cols.min(tc), n, f, dst);
                }
            }
            for c in tc..cols {
                expand_column(bp, kp, c, &mut x);
                for ib in ib0..ib1 {
                    let acc = dot_tail::<false>(a.add(ib * kp * MR), kp, &x, false);
                    for (r, &v) in acc.iter().enumerate().take(MR.min(m - ib * MR)) {
                        store_one::<CAP>(dst, ib * MR + r, jp * NR + c, n, v);
                    }
                }
            }
        }
    }
}

/// Row init of byte-GEMM row `row`: `−zx · Σ_k d`, the zero-point term of its exact sums.
#[inline(always)]
pub(super) unsafe fn row_init(p8: &Packed8, row: usize, zx: i32) -> i32 {
    zx.wrapping_neg().wrapping_mul(*p8.rowsum.get_unchecked(row))
}

/// [`row_init`] of a byte-GEMM tile's rows, broadcast (0 past the last row).
#[inline(always)]
unsafe fn row_init8(p8: &Packed8, row0: usize, rows: usize, zx: i32) -> [__m256i; MR8] {
    let mut init = [_mm256_setzero_si256(); MR8];
    for (r, v) in init.iter_mut().enumerate().take(rows) {
        *v = _mm256_set1_epi32(row_init(p8, row0 + r, zx));
    }
    init
}

/// The `MR8 × 8·H` byte micro-kernel over `kq` k-quads: per row and 8 columns,
/// `vpmaddubsw` (x u8 · c i8, 4 k per i32 lane as two exact i16 pair sums) then `vpmaddwd`
/// by 1 (exact i32), accumulated on top of `init`.
#[inline(always)]
unsafe fn gemm8_tile<const H: usize>(ap: *const i32, bp: *const u8, kq: usize, init: &[__m256i; MR8], vnni: bool) -> [[__m256i; 2]; MR8] {
    let mut c = [[_mm256_setzero_si256(); 2]; MR8];
    for (cr, &i) in c.iter_mut().zip(init) {
        *cr = [i, i];
    }
    let ones = _mm256_set1_epi16(1);
    if H == 2 && MR8 == 6 {
        return match (vnni, super::pack::vnni512_available()) {
            (true, true) => gemm8_tile16_vnni512(ap, bp, kq, c),
            (true, false) => gemm8_tile16_vnni(ap, bp, kq, c),
            _ => gemm8_tile16(ap, bp, kq, c),
        };
    }
    if vnni {
        for q in 0..kq {
            let b0 = _mm256_loadu_si256(bp.add(q * NR * 4) as *const __m256i);
            let b1 = if H == 2 { _mm256_loadu_si256(bp.add(q * NR * 4 + 32) as *const __m256i) } else { b0 };
            let aw = ap.add(q * MR8);
            for (r, cr) in c.iter_mut().enumerate() {
                let w = _mm256_set1_epi32(aw.add(r).read_unaligned());
                cr[0] = dpbusd(cr[0], b0, w);
                if H == 2 {
                    cr[1] = dpbusd(cr[1], b1, w);
                }
            }
        }
        return c;
    }
    for q in 0..kq {
        let b0 = _mm256_loadu_si256(bp.add(q * NR * 4) as *const __m256i);
        let b1 = if H == 2 { _mm256_loadu_si256(bp.add(q * NR * 4 + 32) as *const __m256i) } else { b0 };
        let aw = ap.add(q * MR8);
        for (r, cr) in c.iter_mut().enumerate() {
            let w = _mm256_set1_epi32(aw.add(r).read_unaligned());
            cr[0] = _mm256_add_epi32(cr[0], _mm256_madd_epi16(_mm256_maddubs_epi16(b0, w), ones));
            if H == 2 {
                cr[1] = _mm256_add_epi32(cr[1], _mm256_madd_epi16(_mm256_maddubs_epi16(b1, w), ones));
            }
        }
        std::arch::asm!("", options(nomem, nostack, preserves_flags));
    }
    c
}

/// 16 × i16 1, 32-byte aligned: the memory operand of [`gemm8_tile16`]'s `vpmaddwd` (a static,
/// not a stack array: re-stored per tile, its first loads stalled on store forwarding).
#[repr(align(32))]
struct Ones16([i16; 16]);
static ONES16: Ones16 = Ones16([1; 16]);

/// [`gemm8_tile`] with 16 columns, in assembly: 12 accumulators, 2 B vectors, the broadcast and
/// a product are the 16 ymm registers, so the vector of ones must stay in memory (with
/// intrinsics the compiler kept it in a register and spilled an accumulator every k-quad).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn gemm8_tile16(ap: *const i32, bp: *const u8, kq: usize, c: [[__m256i; 2]; MR8]) -> [[__m256i; 2]; MR8] {
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] = [c[0], c[1], c[2], c[3], c[4], c[5]];
    for q in 0..kq {
        let (b, a) = (bp.add(q * NR * 4), ap.add(q * MR8));
        std::arch::asm!(
            "vmovdqu {b0}, ymmword ptr [{b}]",
            "vmovdqu {b1}, ymmword ptr [{b} + 32]",
            "vpbroadcastd {w}, dword ptr [{a}]",
            "vpmaddubsw {t}, {b0}, {w}",
            "vpmaddwd {t}, {t}, ymmword ptr [{o}]",
            "vpaddd {c00}, {c00}, {t}",
            "vpmaddubsw {w}, {b1}, {w}",
            "vpmaddwd {w}, {w}, ymmword ptr [{o}]",
            "vpaddd {c01}, {c01}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 4]",
            "vpmaddubsw {t}, {b0}, {w}",
            "vpmaddwd {t}, {t}, ymmword ptr [{o}]",
            "vpaddd {c10}, {c10}, {t}",
            "vpmaddubsw {w}, {b1}, {w}",
            "vpmaddwd {w}, {w}, ymmword ptr [{o}]",
            "vpaddd {c11}, {c11}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 8]",
            "vpmaddubsw {t}, {b0}, {w}",
            "vpmaddwd {t}, {t}, ymmword ptr [{o}]",
            "vpaddd {c20}, {c20}, {t}",
            "vpmaddubsw {w}, {b1}, {w}",
            "vpmaddwd {w}, {w}, ymmword ptr [{o}]",
            "vpaddd {c21}, {c21}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 12]",
            "vpmaddubsw {t}, {b0}, {w}",
            "vpmaddwd {t}, {t}, ymmword ptr [{o}]",
            "vpaddd {c30}, {c30}, {t}",
            "vpmaddubsw {w}, {b1}, {w}",
            "vpmaddwd {w}, {w}, ymmword ptr [{o}]",
            "vpaddd {c31}, {c31}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 16]",
            "vpmaddubsw {t}, {b0}, {w}",
            "vpmaddwd {t}, {t}, ymmword ptr [{o}]",
            "vpaddd {c40}, {c40}, {t}",
            "vpmaddubsw {w}, {b1}, {w}",
            "vpmaddwd {w}, {w}, ymmword ptr [{o}]",
            "vpaddd {c41}, {c41}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 20]",
            "vpmaddubsw {t}, {b0}, {w}",
            "vpmaddwd {t}, {t}, ymmword ptr [{o}]",
            "vpaddd {c50}, {c50}, {t}",
            "vpmaddubsw {w}, {b1}, {w}",
            "vpmaddwd {w}, {w}, ymmword ptr [{o}]",
            "vpaddd {c51}, {c51}, {w}",
            b = in(reg) b,
            a = in(reg) a,
            o = in(reg) ONES16.0.as_ptr(),
            b0 = out(ymm_reg) _,
            b1 = out(ymm_reg) _,
            w = out(ymm_reg) _,
            t = out(ymm_reg) _,
            c00 = inout(ymm_reg) c00,
            c01 = inout(ymm_reg) c01,
            c10 = inout(ymm_reg) c10,
            c11 = inout(ymm_reg) c11,
            c20 = inout(ymm_reg) c20,
            c21 = inout(ymm_reg) c21,
            c30 = inout(ymm_reg) c30,
            c31 = inout(ymm_reg) c31,
            c40 = inout(ymm_reg) c40,
            c41 = inout(ymm_reg) c41,
            c50 = inout(ymm_reg) c50,
            c51 = inout(ymm_reg) c51,
            options(nostack, readonly, preserves_flags),
        );
    }
    [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]
}

/// [`gemm8_tile16`] for weights packed for VNNI ([`Packed8::vnni`]): one `vpdpbusd` per row and
/// 8 columns per k-quad, where the other needs `vpmaddubsw`, `vpmaddwd` and `vpaddd`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn gemm8_tile16_vnni(ap: *const i32, bp: *const u8, kq: usize, c: [[__m256i; 2]; MR8]) -> [[__m256i; 2]; MR8] {
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] = [c[0], c[1], c[2], c[3], c[4], c[5]];
    for q in 0..kq {
        let (b, a) = (bp.add(q * NR * 4), ap.add(q * MR8));
        std::arch::asm!(
            "vmovdqu {b0}, ymmword ptr [{b}]",
            "vmovdqu {b1}, ymmword ptr [{b} + 32]",
            "vpbroadcastd {w}, dword ptr [{a}]",
            "{{vex}} vpdpbusd {c00}, {b0}, {w}",
            "{{vex}} vpdpbusd {c01}, {b1}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 4]",
            "{{vex}} vpdpbusd {c10}, {b0}, {w}",
            "{{vex}} vpdpbusd {c11}, {b1}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 8]",
            "{{vex}} vpdpbusd {c20}, {b0}, {w}",
            "{{vex}} vpdpbusd {c21}, {b1}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 12]",
            "{{vex}} vpdpbusd {c30}, {b0}, {w}",
            "{{vex}} vpdpbusd {c31}, {b1}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 16]",
            "{{vex}} vpdpbusd {c40}, {b0}, {w}",
            "{{vex}} vpdpbusd {c41}, {b1}, {w}",
            "vpbroadcastd {w}, dword ptr [{a} + 20]",
            "{{vex}} vpdpbusd {c50}, {b0}, {w}",
            "{{vex}} vpdpbusd {c51}, {b1}, {w}",
            b = in(reg) b,
            a = in(reg) a,
            b0 = out(ymm_reg) _,
            b1 = out(ymm_reg) _,
            w = out(ymm_reg) _,
            c00 = inout(ymm_reg) c00,
            c01 = inout(ymm_reg) c01,
            c10 = inout(ymm_reg) c10,
            c11 = inout(ymm_reg) c11,
            c20 = inout(ymm_reg) c20,
            c21 = inout(ymm_reg) c21,
            c30 = inout(ymm_reg) c30,
            c31 = inout(ymm_reg) c31,
            c40 = inout(ymm_reg) c40,
            c41 = inout(ymm_reg) c41,
            c50 = inout(ymm_reg) c50,
            c51 = inout(ymm_reg) c51,
            options(nostack, readonly, preserves_flags),
        );
    }
    [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]
}

/// [`gemm8_tile16_vnni`] on 512 bits (AVX-512F + AVX512-VNNI, see `vnni512_available`): the
/// panel's 16 columns × 4 bytes are one zmm, so one `vpdpbusd` per row and k-quad, with the row's
/// weights broadcast from memory (`{1to16}`). The accumulators go back to ymm pairs for the
/// shared epilogue.
#[target_feature(enable = "avx2,avx512f,avx512vnni")]
#[inline]
unsafe fn gemm8_tile16_vnni512(ap: *const i32, bp: *const u8, kq: usize, c: [[__m256i; 2]; MR8]) -> [[__m256i; 2]; MR8] {
    let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5) = (join512(c[0][0], c[0][1]), join512(c[1][0], c[1][1]), join512(c[2][0], c[2][1]), join512(c[3][0], c[3][1]), join512(c[4][0], c[4][1]), join512(c[5][0], c[5][1]));
    for q in 0..kq {
        let (b, a) = (bp.add(q * NR * 4), ap.add(q * MR8));
        std::arch::asm!(
            "vmovdqu64 {b0}, zmmword ptr [{b}]",
            "vpdpbusd {c0}, {b0}, dword ptr [{a}]{{1to16}}",
            "vpdpbusd {c1}, {b0}, dword ptr [{a} + 4]{{1to16}}",
            "vpdpbusd {c2}, {b0}, dword ptr [{a} + 8]{{1to16}}",
            "vpdpbusd {c3}, {b0}, dword ptr [{a} + 12]{{1to16}}",
            "vpdpbusd {c4}, {b0}, dword ptr [{a} + 16]{{1to16}}",
            "vpdpbusd {c5}, {b0}, dword ptr [{a} + 20]{{1to16}}",
            b = in(reg) b,
            a = in(reg) a,
            b0 = out(zmm_reg) _,
            c0 = inout(zmm_reg) c0,
            c1 = inout(zmm_reg) c1,
            c2 = inout(zmm_reg) c2,
            c3 = inout(zmm_reg) c3,
            c4 = inout(zmm_reg) c4,
            c5 = inout(zmm_reg) c5,
            options(nostack, readonly, preserves_flags),
        );
    }
    split512(&[c0, c1, c2, c3, c4, c5])
}

/// `lo` and `hi` as one zmm (a function, not a closure: closures do not inherit
/// `target_feature`, so their intrinsics could stay calls).
#[inline(always)]
pub(super) unsafe fn join512(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// [`gemm8_tile16_vnni512`] over two adjacent column panels (`bp` and `bp1`, 32 columns): 12
/// accumulators instead of 6. `vpdpbusd` has a 4–5 cycle latency and two ports, so 6 chains
/// leave it half idle; 12 keep it fed. Each row's 4 weight bytes are broadcast once into a
/// register and used for both panels.
#[target_feature(enable = "avx2,avx512f,avx512vnni")]
#[inline]
unsafe fn gemm8_tile32_vnni512(ap: *const i32, bp: *const u8, bp1: *const u8, kq: usize, init: &[__m256i; MR8]) -> [[__m512i; MR8]; 2] {
    let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5) = (join512(init[0], init[0]), join512(init[1], init[1]), join512(init[2], init[2]), join512(init[3], init[3]), join512(init[4], init[4]), join512(init[5], init[5]));
    let (mut d0, mut d1, mut d2, mut d3, mut d4, mut d5) = (c0, c1, c2, c3, c4, c5);
    for q in 0..kq {
        let (b, b1, a) = (bp.add(q * NR * 4), bp1.add(q * NR * 4), ap.add(q * MR8));
        std::arch::asm!(
            "vmovdqu64 {x0}, zmmword ptr [{b}]",
            "vmovdqu64 {x1}, zmmword ptr [{b1}]",
            "vpbroadcastd {w0}, dword ptr [{a}]",
            "vpbroadcastd {w1}, dword ptr [{a} + 4]",
            "vpbroadcastd {w2}, dword ptr [{a} + 8]",
            "vpdpbusd {c0}, {x0}, {w0}",
            "vpdpbusd {d0}, {x1}, {w0}",
            "vpbroadcastd {w0}, dword ptr [{a} + 12]",
            "vpdpbusd {c1}, {x0}, {w1}",
            "vpdpbusd {d1}, {x1}, {w1}",
            "vpbroadcastd {w1}, dword ptr [{a} + 16]",
            "vpdpbusd {c2}, {x0}, {w2}",
            "vpdpbusd {d2}, {x1}, {w2}",
            "vpbroadcastd {w2}, dword ptr [{a} + 20]",
            "vpdpbusd {c3}, {x0}, {w0}",
            "vpdpbusd {d3}, {x1}, {w0}",
            "vpdpbusd {c4}, {x0}, {w1}",
            "vpdpbusd {d4}, {x1}, {w1}",
            "vpdpbusd {c5}, {x0}, {w2}",
            "vpdpbusd {d5}, {x1}, {w2}",
            b = in(reg) b,
            b1 = in(reg) b1,
            a = in(reg) a,
            x0 = out(zmm_reg) _,
            x1 = out(zmm_reg) _,
            w0 = out(zmm_reg) _,
            w1 = out(zmm_reg) _,
            w2 = out(zmm_reg) _,
            c0 = inout(zmm_reg) c0,
            c1 = inout(zmm_reg) c1,
            c2 = inout(zmm_reg) c2,
            c3 = inout(zmm_reg) c3,
            c4 = inout(zmm_reg) c4,
            c5 = inout(zmm_reg) c5,
            d0 = inout(zmm_reg) d0,
            d1 = inout(zmm_reg) d1,
            d2 = inout(zmm_reg) d2,
            d3 = inout(zmm_reg) d3,
            d4 = inout(zmm_reg) d4,
            d5 = inout(zmm_reg) d5,
            options(nostack, readonly, preserves_flags),
        );
    }
    [[c0, c1, c2, c3, c4, c5], [d0, d1, d2, d3, d4, d5]]
}

/// A 512-bit tile as the ymm pairs of the shared epilogue.
#[inline(always)]
unsafe fn split512(z: &[__m512i; MR8]) -> [[__m256i; 2]; MR8] {
    // A loop, not `array::from_fn`: closures do not inherit `target_feature`, so its intrinsics
    // could stay calls.
    let mut c = [[_mm256_setzero_si256(); 2]; MR8];
    for (cr, &v) in c.iter_mut().zip(z) {
        *cr = [_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v)];
    }
    c
}

/// Stores a 512-bit tile of exact accumulators (rows `row0..row0 + rows` of `dst`, 16 columns
/// from `col`, `cols` valid). Where every row takes the clamp-free float stage (see
/// [`float8_free`]) a row is one vector: `vcvtdq2ps`, `vmulps`, `vaddps`, `vcvttps2dq`, then
/// `vpmaxsd` with 0 and `vpmovusdb` (together the clamp to [0, 255] of the AVX2 path's two
/// saturating packs) and the byte cap. Other rows go through [`gemm_store`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_store512<const FAST: bool, const CAP: bool>(z: &[__m512i; MR8], row0: usize, rows: usize, col: usize, cols: usize, n: usize, f: &Fin, dst: &GemmOut) {
    if let Some((e, out, capped)) = float_free_rows(dst, row0, rows) {
        if rows == MR8 && cols >= NR {
            // A full tile: rows narrowed together by the saturating packs (their clamp to
            // [0, 255] is that of vpmaxsd + vpmovusdb in `float_free_bytes512`), 2 shuffles per
            // 16 outputs fewer on the ports vpdpbusd needs.
            float_store_rows::<4>(&z[..4], e, out, row0, n, col, capped);
            float_store_rows::<2>(&z[4..], e, out, row0 + 4, n, col, capped);
            return;
        }
        // A partial last panel: a byte-masked store (AVX-512BW), not a copy through memory.
        let mask = col_mask(cols);
        for (r, &acc) in z.iter().enumerate().take(rows) {
            let row = row0 + r;
            _mm_mask_storeu_epi8(out.add(row * n + col) as *mut i8, mask, float_free_bytes512(acc, e, row, capped));
        }
        return;
    }
    gemm_store::<FAST, CAP>(&split512(z), row0, rows, col, cols, n, f, dst);
}

/// Rows `row0..row0 + rows` (relative) of a `GemmOut::Bytes` or `Float` destination from
/// 512-bit accumulators, one vector per row: float rows as in [`gemm_store512`] (clamped where
/// not `free`), the others through [`i64_bytes512`], so only with the fast rounding path (the
/// caller checks, see [`needs_slow_rounding`]). For the AMX tiles' epilogue. Not inlined: with
/// these rows inlined next to the 512-bit tile's inline assembly (17 zmm operands; it is in
/// the same function), LLVM (rustc 1.95) named an invalid register ("R19BH") for one of them.
#[inline(never)]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn store_rows512<const CAP: bool>(z: &[__m512i; MR8], row0: usize, rows: usize, col: usize, cols: usize, n: usize, f: &Fin, dst: &GemmOut) {
    // A byte-masked store (AVX-512BW) for a partial last panel.
    let mask = col_mask(cols);
    for (r, &acc) in z.iter().enumerate().take(rows) {
        let row = row0 + r;
        let (bytes, out) = match dst {
            GemmOut::Bytes { mult, bias, cmax, out, .. } => {
                let bytes = i64_bytes512(acc, *mult.get_unchecked(row), *bias.get_unchecked(row), f);
                (if CAP { _mm_min_epu8(bytes, _mm_set1_epi8(*cmax.unwrap_unchecked().get_unchecked(row) as i8)) } else { bytes }, *out)
            }
            GemmOut::Float { e, mult, bias, out, free, capped, .. } => {
                let bytes = if !*e.ok.get_unchecked(row) {
                    _mm_min_epu8(i64_bytes512(acc, *mult.get_unchecked(row), *bias.get_unchecked(row), f), _mm_set1_epi8(*e.cap.get_unchecked(row) as i8))
                } else if *free {
                    float_free_bytes512(acc, e, row, *capped)
                } else {
                    // `float8` on 16 lanes: the clamps to [lo, hi[row]] (the cap included).
                    let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(*e.scale.get_unchecked(row))), _mm512_set1_ps(*e.offset.get_unchecked(row)));
                    let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(e.lo)), _mm512_set1_ps(*e.hi.get_unchecked(row)));
                    _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(y))
                };
                (bytes, *out)
            }
            GemmOut::Acc(_) => unreachable!("the byte GEMM never sums into accumulators"),
        };
        _mm_mask_storeu_epi8(out.add(row * n + col) as *mut i8, mask, bytes);
    }
}

/// Whether rows `row0..row0 + rows` (relative) of `dst` need the i64 stage's slow rounding path
/// (some row takes the i64 stage and `f` is not fast), which [`store_rows512`] lacks.
#[inline(always)]
pub(super) unsafe fn needs_slow_rounding(dst: &GemmOut, f: &Fin, row0: usize, rows: usize) -> bool {
    !f.fast
        && match dst {
            GemmOut::Float { e, .. } => (0..rows).any(|r| !*e.ok.get_unchecked(row0 + r)),
            _ => true,
        }
}

/// The i64 output stage (fast rounding path, see [`Fin`]) on 16 accumulators of one row:
/// [`fin8`] on 512 bits, where a masked subtract replaces the compare-and-add and a masked blend
/// the 256-bit blend.
#[inline(always)]
unsafe fn i64_bytes512(acc: __m512i, m: i64, bias: i64, f: &Fin) -> __m128i {
    let (mv, bv) = (_mm512_set1_epi64(m), _mm512_set1_epi64(bias.wrapping_add(f.off)));
    let (nb, one) = (_mm512_set1_epi64(f.off), _mm512_set1_epi64(1));
    let even = _mm512_add_epi64(_mm512_mul_epi32(acc, mv), bv);
    let odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64::<32>(acc), mv), bv);
    let (e, o) = if f.relu {
        (_mm512_srl_epi64(even, f.shift), _mm512_srl_epi64(odd, f.shift))
    } else {
        (_mm512_srl_epi64(_mm512_mask_sub_epi64(even, _mm512_cmpgt_epi64_mask(nb, even), even, one), f.shift), _mm512_srl_epi64(_mm512_mask_sub_epi64(odd, _mm512_cmpgt_epi64_mask(nb, odd), odd, one), f.shift))
    };
    let v = _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64::<32>(o));
    let v = _mm512_add_epi32(v, _mm512_broadcast_i64x4(f.zp));
    let v = _mm512_min_epi32(_mm512_max_epi32(v, _mm512_broadcast_i64x4(f.lo)), _mm512_broadcast_i64x4(f.hi));
    _mm512_cvtusepi32_epi8(v)
}

/// [`gemm8_rem`] on 512-bit rows: adds the sparse remainder `Σ (d − c)·x` of rows
/// `row0..row0 + z.len()` at column `col` (`cols` valid, masked loads past them). Not inlined,
/// for the reason given at [`store_rows512`] (few rows have a remainder).
#[inline(never)]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm8_rem512(z: &mut [__m512i], p8: &Packed8, row0: usize, x: *const u8, n: usize, col: usize, cols: usize) {
    let mask = col_mask(cols);
    for (r, zr) in z.iter_mut().enumerate() {
        let (s, e) = (*p8.rem_start.get_unchecked(row0 + r) as usize, *p8.rem_start.get_unchecked(row0 + r + 1) as usize);
        for &(kk, wr) in p8.rem.get_unchecked(s..e) {
            let xv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, x.add(kk as usize * n + col) as *const i8));
            *zr = _mm512_add_epi32(*zr, _mm512_mullo_epi32(xv, _mm512_set1_epi32(wr)));
        }
    }
}

/// Finishes rows `row0..row0 + rows` (≤ [`MR8`], absolute) of a 512-bit byte-GEMM tile at
/// column `col` (`cols` valid): adds the sparse remainder of the rows that have one, then stores
/// them to `dst` (rows relative to `r0`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn finish512<const FAST: bool, const CAP: bool>(z: &[__m512i; MR8], p8: &Packed8, row0: usize, rows: usize, r0: usize, x: *const u8, n: usize, col: usize, cols: usize, f: &Fin, dst: &GemmOut) {
    if *p8.rem_start.get_unchecked(row0) == *p8.rem_start.get_unchecked(row0 + rows) {
        gemm_store512::<FAST, CAP>(z, row0 - r0, rows, col, cols, n, f, dst);
    } else {
        let mut c = split512(z);
        gemm8_rem::<2>(&mut c, p8, row0, rows, x, n, col, cols);
        gemm_store::<FAST, CAP>(&c, row0 - r0, rows, col, cols, n, f, dst);
    }
}

/// The float rows of `dst` from `row0` (relative), `rows` of them, when every one takes the
/// clamp-free float stage (the fast path of [`gemm_store512`]), and whether some row is capped.
#[inline(always)]
pub(super) unsafe fn float_free_rows<'a>(dst: &'a GemmOut, row0: usize, rows: usize) -> Option<(&'a EpiRows<'a>, *mut u8, bool)> {
    match dst {
        GemmOut::Float { e, out, free: true, capped, .. } if (0..rows).all(|r| *e.ok.get_unchecked(row0 + r)) => Some((e, *out, *capped)),
        _ => None,
    }
}

/// The byte caps of rows `row0..row0 + 4` (relative; rows past the float block's end read as
/// the caps that follow, unused), cap `r` in every byte of 128-bit lane `r`: the cap vector of
/// a tile narrowed by the packs and [`float_store_rows`]'s permute.
#[inline(always)]
unsafe fn row_caps4(e: &EpiRows, row0: usize) -> __m512i {
    // One 4-byte load inside the block (the caps are read once per 64 bytes stored).
    let c4 = if row0 + 4 <= e.cap.len() {
        std::ptr::read_unaligned(e.cap.as_ptr().add(row0) as *const [u8; 4])
    } else {
        std::array::from_fn(|r| e.cap.get(row0 + r).copied().unwrap_or(255))
    };
    let lane_index = _mm512_set_epi32(0x0303_0303, 0x0303_0303, 0x0303_0303, 0x0303_0303, 0x0202_0202, 0x0202_0202, 0x0202_0202, 0x0202_0202, 0x0101_0101, 0x0101_0101, 0x0101_0101, 0x0101_0101, 0, 0, 0, 0);
    _mm512_shuffle_epi8(_mm512_set1_epi32(i32::from_le_bytes(c4)), lane_index)
}

/// `ROWS` (2 or 4) rows of 16 exact accumulators (rows `row0..row0 + ROWS` relative, columns
/// `col..col + 16`) through the clamp-free float stage: narrowed together by the saturating packs
/// (their clamp to [0, 255] is the stage's, see [`gemm_store512`]), one permute, the byte caps
/// where `capped`, one 16-byte store per row.
#[inline(always)]
pub(super) unsafe fn float_store_rows<const ROWS: usize>(z: &[__m512i], e: &EpiRows, out: *mut u8, row0: usize, n: usize, col: usize, capped: bool) {
    let mut y = [_mm512_setzero_si512(); 4];
    for (r, v) in y.iter_mut().enumerate().take(ROWS) {
        *v = float_trunc512(z[r], *e.scale.get_unchecked(row0 + r), *e.offset.get_unchecked(row0 + r));
    }
    // Per 128-bit lane L: dword r holds row r's columns 4L..4L + 4 (rows 2, 3 repeat 0, 1 when
    // ROWS = 2).
    let p01 = _mm512_packs_epi32(y[0], y[1]);
    let p23 = if ROWS == 4 { _mm512_packs_epi32(y[2], y[3]) } else { p01 };
    let mut t = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), _mm512_packus_epi16(p01, p23));
    if capped {
        t = _mm512_min_epu8(t, row_caps4(e, row0));
    }
    let o = out.add(row0 * n + col);
    _mm_storeu_si128(o as *mut __m128i, _mm512_castsi512_si128(t));
    _mm_storeu_si128(o.add(n) as *mut __m128i, _mm512_extracti32x4_epi32::<1>(t));
    if ROWS == 4 {
        _mm_storeu_si128(o.add(2 * n) as *mut __m128i, _mm512_extracti32x4_epi32::<2>(t));
        _mm_storeu_si128(o.add(3 * n) as *mut __m128i, _mm512_extracti32x4_epi32::<3>(t));
    }
}

/// Lane mask of a 16-column panel's `cols` valid columns (all of them from 16 on).
#[inline(always)]
fn col_mask(cols: usize) -> u16 {
    if cols >= NR { u16::MAX } else { (1u16 << cols) - 1 }
}

/// The clamp-free float stage of row `row` (`e.ok[row]`, a `free` destination) on 16
/// accumulators: `vpmaxsd` with 0 and `vpmovusdb` are its clamp to [0, 255], then the byte cap
/// where some row is `capped`.
#[inline(always)]
unsafe fn float_free_bytes512(acc: __m512i, e: &EpiRows, row: usize, capped: bool) -> __m128i {
    let y = float_trunc512(acc, *e.scale.get_unchecked(row), *e.offset.get_unchecked(row));
    let bytes = _mm512_cvtusepi32_epi8(_mm512_max_epi32(y, _mm512_setzero_si512()));
    if capped { _mm_min_epu8(bytes, _mm_set1_epi8(*e.cap.get_unchecked(row) as i8)) } else { bytes }
}

/// [`float8_free`] on 16 accumulators: `trunc(acc·scale + offset)` as i32.
#[inline(always)]
unsafe fn float_trunc512(acc: __m512i, scale: f32, offset: f32) -> __m512i {
    _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(scale)), _mm512_set1_ps(offset)))
}

/// Adds the sparse remainder `Σ (d − c)·x` of rows `row0..row0 + rows` to a tile at column
/// `col` (`cols` valid): x rows are read from the uint8 `[k × n]` input.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_rem<const H: usize>(c: &mut [[__m256i; 2]; MR8], p8: &Packed8, row0: usize, rows: usize, x: *const u8, n: usize, col: usize, cols: usize) {
    for (r, cr) in c.iter_mut().enumerate().take(rows) {
        let (s, e) = (*p8.rem_start.get_unchecked(row0 + r) as usize, *p8.rem_start.get_unchecked(row0 + r + 1) as usize);
        for &(kk, wr) in p8.rem.get_unchecked(s..e) {
            let wv = _mm256_set1_epi32(wr);
            let src = x.add(kk as usize * n + col);
            let mut tmp = [0u8; 16];
            let p = if cols == 16 {
                src
            } else {
                std::ptr::copy_nonoverlapping(src, tmp.as_mut_ptr(), cols);
                tmp.as_ptr()
            };
            cr[0] = _mm256_add_epi32(cr[0], _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)), wv));
            if H == 2 {
                cr[1] = _mm256_add_epi32(cr[1], _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i)), wv));
            }
        }
    }
}

/// One byte-GEMM tile of rows `ib·MR8..` at column `col`, `width` ≤ 16 columns valid (8-column
/// kernel for `width` ≤ 8): the row init, the `vpmaddubsw` products and the sparse remainder,
/// i.e. the exact `Σ d·(x − zx)`. `bp` is the column panel of `p8`'s input `x`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_block(p8: &Packed8, ib: usize, rows: usize, bp: *const u8, x: *const u8, n: usize, zx: i32, col: usize, width: usize) -> [[__m256i; 2]; MR8] {
    let kq = p8.k.div_ceil(4);
    let row0 = ib * MR8;
    let init = row_init8(p8, row0, rows, zx);
    let ap = (p8.a.as_ptr() as *const i32).add(ib * kq * MR8);
    if width > 8 || (p8.vnni && super::pack::vnni512_available()) {
        let mut c = gemm8_tile::<2>(ap, bp, kq, &init, p8.vnni);
        gemm8_rem::<2>(&mut c, p8, row0, rows, x, n, col, width);
        c
    } else {
        let mut c = gemm8_tile::<1>(ap, bp, kq, &init, p8.vnni);
        gemm8_rem::<1>(&mut c, p8, row0, rows, x, n, col, width);
        c
    }
}

/// [`gemm_loop`] for the byte GEMM: rows `r0..r1` of `p8` (`r0` a multiple of [`MR8`]; `dst`
/// rows relative to `r0`), byte panels `b` of the uint8 `[k × n]` input `x` (zero-point `zx`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_loop<const FAST: bool, const CAP: bool, const WIDE: bool>(p8: &Packed8, r0: usize, r1: usize, b: *const u8, x: *const u8, n: usize, zx: i32, f: &Fin, dst: &GemmOut) {
    if WIDE && !p8.tiles.is_empty() {
        return super::amx::gemm8_loop::<FAST, CAP>(p8, r0, r1, b, x, n, zx, f, dst);
    }
    let kq = p8.k.div_ceil(4);
    let np = n.div_ceil(NR);
    let (lo, hi) = (r0 / MR8, r1.div_ceil(MR8));
    let a = p8.a.as_ptr() as *const i32;
    let mut xe = Vec::new();
    let chunks = ((hi - lo) * kq * MR8 * 4).div_ceil(A_CHUNK_BYTES).clamp(1, (hi - lo).max(1));
    let per = (hi - lo).div_ceil(chunks).max(1);
    for c0 in (lo..hi).step_by(per) {
        let c1 = (c0 + per).min(hi);
        let mut jp = 0;
        while jp < np {
            let bp = b.add(jp * kq * NR * 4);
            if WIDE && jp + 1 < np {
                // Two panels through the 12-accumulator tile (the second may be the zero-padded
                // last one: on 512 bits a padded tile costs less than dot-product columns).
                let bp1 = bp.add(kq * NR * 4);
                let cols1 = NR.min(n - (jp + 1) * NR);
                for ib in c0..c1 {
                    let row0 = ib * MR8;
                    let rows = MR8.min(r1 - row0);
                    let init = row_init8(p8, row0, rows, zx);
                    let [za, zb] = gemm8_tile32_vnni512(a.add(ib * kq * MR8), bp, bp1, kq, &init);
                    finish512::<FAST, CAP>(&za, p8, row0, rows, r0, x, n, jp * NR, NR, f, dst);
                    finish512::<FAST, CAP>(&zb, p8, row0, rows, r0, x, n, (jp + 1) * NR, cols1, f, dst);
                }
                jp += 2;
                continue;
            }
            let cols = NR.min(n - jp * NR);
            // On 512 bits every column goes through the 16-wide tile (see above).
            let tc = if WIDE { NR } else { tile_cols(cols) };
            if tc > 0 {
                for ib in c0..c1 {
                    let row0 = ib * MR8;
                    let rows = MR8.min(r1 - row0);
                    let c = gemm8_block(p8, ib, rows, bp, x, n, zx, jp * NR, cols.min(tc));
                    gemm_store::<FAST, CAP>(&c, row0 - r0, rows, jp * NR, cols.min(tc), n, f, dst);
                }
            }
            for cc in tc..cols {
                expand_column(bp as *const i16, kq, cc, &mut xe);
                let col = jp * NR + cc;
                for ib in c0..c1 {
                    let row0 = ib * MR8;
                    let acc = dot_tail::<true>(a.add(ib * kq * MR8), kq, &xe, p8.vnni);
                    for (r, &v) in acc.iter().enumerate().take(MR8.min(r1 - row0)) {
                        let row = row0 + r;
                        let mut v = v.wrapping_sub(zx.wrapping_mul(*p8.rowsum.get_unchecked(row)));
                        let (s, e) = (*p8.rem_start.get_unchecked(row) as usize, *p8.rem_start.get_unchecked(row + 1) as usize);
                        for &(kk, wr) in p8.rem.get_unchecked(s..e) {
                            v = v.wrapping_add(wr.wrapping_mul(*x.add(kk as usize * n + col) as i32));
                        }
                        store_one::<CAP>(dst, row - r0, col, n, v);
                    }
                }
            }
            jp += 1;
        }
    }
}

/// Row blocks of the byte GEMM's packed weights: a task's first row must start one.
fn row_unit(p8: &Packed8) -> usize {
    if p8.tiles.is_empty() { MR8 } else { TILE_ROWS }
}

/// The byte GEMM with a requantizing destination: rows `r0..r1` (`mult`, `bias`, `out`,
/// `cmax`, `epi` hold just those rows).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_rows(p8: &Packed8, r0: usize, r1: usize, b: &[u8], x: &[u8], n: usize, zx: i32, mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8], cmax: Option<&[u8]>, epi: Option<EpiRows>) {
    if p8.vnni && super::pack::vnni512_available() {
        return gemm8_rows512(p8, r0, r1, b, x, n, zx, mult, bias, shift, zp, qmin, qmax, out, cmax, epi);
    }
    gemm8_rows_with::<false>(p8, r0, r1, b, x, n, zx, mult, bias, shift, zp, qmin, qmax, out, cmax, epi)
}

/// [`gemm8_rows`] compiled for AVX-512 (checked by the caller), so that the 512-bit tile and
/// epilogue inline into the loop: called per tile, their zmm accumulators went through memory.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_rows512(p8: &Packed8, r0: usize, r1: usize, b: &[u8], x: &[u8], n: usize, zx: i32, mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8], cmax: Option<&[u8]>, epi: Option<EpiRows>) {
    gemm8_rows_with::<true>(p8, r0, r1, b, x, n, zx, mult, bias, shift, zp, qmin, qmax, out, cmax, epi)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_rows_with<const WIDE: bool>(p8: &Packed8, r0: usize, r1: usize, b: &[u8], x: &[u8], n: usize, zx: i32, mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8], cmax: Option<&[u8]>, epi: Option<EpiRows>) {
    let (m, k) = (p8.m, p8.k);
    let (kq, np, rows) = (k.div_ceil(4), n.div_ceil(NR), r1 - r0);
    assert!(r0.is_multiple_of(row_unit(p8)) && r0 <= r1 && r1 <= m);
    assert!(p8.a.len() >= m.div_ceil(MR8) * kq * MR8 * 4 && p8.rowsum.len() >= m && p8.rem_start.len() > m && p8.rem.len() >= p8.rem_start[m] as usize);
    assert!(p8.tiles.is_empty() || WIDE && p8.tiles.len() >= m.div_ceil(TILE_ROWS) * k.div_ceil(TILE_K) * TILE_ROWS * TILE_K && b.len() >= np * kq * NR * 4 + PANEL_SLACK);
    assert!(p8.rem.iter().all(|&(kk, _)| (kk as usize) < k));
    assert!(b.len() >= np * kq * NR * 4 && x.len() >= k * n && out.len() >= rows * n && mult.len() >= rows && bias.len() >= rows);
    assert!(cmax.is_none_or(|c| c.len() >= rows) && epi.is_none_or(|e| e.fits(rows)));
    let sink = Sink::Requant { mult, bias, shift, zp, qmin, qmax, out: &mut [] };
    // Byte-form weights are 8-bit (`Packed8::new` rejects wider ones).
    let acc_max = acc_max(k, 255);
    let f = sink_fin(&sink, acc_max);
    let st = ScalarStage { shift, zp, qmin, qmax };
    let (b, x) = (b.as_ptr(), x.as_ptr());
    if let Some(e) = epi {
        let dst = GemmOut::Float { e, mult, bias, out: out.as_mut_ptr(), st, free: float_clamps_free(&e, rows, acc_max), capped: float_capped(&e, rows) };
        return if f.fast { gemm8_loop::<true, false, WIDE>(p8, r0, r1, b, x, n, zx, &f, &dst) } else { gemm8_loop::<false, false, WIDE>(p8, r0, r1, b, x, n, zx, &f, &dst) };
    }
    let dst = GemmOut::Bytes { mult, bias, cmax, out: out.as_mut_ptr(), st };
    match (f.fast, cmax.is_some()) {
        (true, false) => gemm8_loop::<true, false, WIDE>(p8, r0, r1, b, x, n, zx, &f, &dst),
        (true, true) => gemm8_loop::<true, true, WIDE>(p8, r0, r1, b, x, n, zx, &f, &dst),
        (false, false) => gemm8_loop::<false, false, WIDE>(p8, r0, r1, b, x, n, zx, &f, &dst),
        (false, true) => gemm8_loop::<false, true, WIDE>(p8, r0, r1, b, x, n, zx, &f, &dst),
    }
}

/// The byte GEMM of a pointwise conv (see [`Packed8`]): `x` the uint8 `[k × n]` input with
/// zero-point `zx`, `b` its panels from [`pack_b8`]; output rows split over `tasks`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm8_requant(p8: &Packed8, b: &[u8], x: &[u8], n: usize, zx: i32, mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8], tasks: usize, cmax: Option<&[u8]>, epi: Option<&FloatEpilogue>) {
    gemm8_par(p8, b, x, n, zx, mult, bias, shift, zp, qmin, qmax, out, tasks, cmax, epi.map(EpiRows::of))
}

#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm8_par(p8: &Packed8, b: &[u8], x: &[u8], n: usize, zx: i32, mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8], tasks: usize, cmax: Option<&[u8]>, epi: Option<EpiRows>) {
    let m = p8.m;
    assert!(mult.len() >= m && bias.len() >= m && out.len() >= m * n);
    let unit = row_unit(p8);
    let mb = m.div_ceil(unit);
    let tasks = tasks.min(mb).max(1);
    if tasks <= 1 || n == 0 {
        return gemm8_rows(p8, 0, m, b, x, n, zx, mult, bias, shift, zp, qmin, qmax, out, cmax, epi);
    }
    let per = mb.div_ceil(tasks) * unit;
    out[..m * n].par_chunks_mut(per * n).enumerate().for_each(|(i, o)| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(m));
        // SAFETY: reached only from AVX2 code, so the CPU has AVX2.
        unsafe { gemm8_rows(p8, r0, r1, b, x, n, zx, &mult[r0..r1], &bias[r0..r1], shift, zp, qmin, qmax, o, cmax.map(|c| &c[r0..r1]), epi.map(|e| e.rows(r0..r1))) };
    });
}

/// Row `r` of a `[k × n]` byte matrix, 16 bytes from column `col` (zeros past row k).
#[inline(always)]
unsafe fn load_row16(src: *const u8, k: usize, n: usize, r: usize, col: usize) -> __m128i {
    if r < k { _mm_loadu_si128(src.add(r * n + col) as *const __m128i) } else { _mm_setzero_si128() }
}

/// Pack a uint8 `[k × n]` matrix into byte panels (see [`super::pack_b8`]).
#[target_feature(enable = "avx2")]
pub unsafe fn pack_b8(input: &[u8], k: usize, n: usize, dst: &mut Vec<u8>) {
    assert!(input.len() >= k * n);
    let (np, kq) = (n.div_ceil(NR), k.div_ceil(4));
    let len = np * kq * NR * 4;
    dst.clear();
    dst.reserve(len + PANEL_SLACK);
    let full = n / NR;
    let d = dst.as_mut_ptr();
    let src = input.as_ptr();
    for jp in 0..full {
        let col = jp * NR;
        for q in 0..kq {
            let (r0, r1, r2, r3) = (load_row16(src, k, n, 4 * q, col), load_row16(src, k, n, 4 * q + 1, col), load_row16(src, k, n, 4 * q + 2, col), load_row16(src, k, n, 4 * q + 3, col));
            let (a_lo, a_hi) = (_mm_unpacklo_epi8(r0, r1), _mm_unpackhi_epi8(r0, r1));
            let (b_lo, b_hi) = (_mm_unpacklo_epi8(r2, r3), _mm_unpackhi_epi8(r2, r3));
            let o = d.add((jp * kq + q) * NR * 4);
            _mm_storeu_si128(o as *mut __m128i, _mm_unpacklo_epi16(a_lo, b_lo));
            _mm_storeu_si128(o.add(16) as *mut __m128i, _mm_unpackhi_epi16(a_lo, b_lo));
            _mm_storeu_si128(o.add(32) as *mut __m128i, _mm_unpacklo_epi16(a_hi, b_hi));
            _mm_storeu_si128(o.add(48) as *mut __m128i, _mm_unpackhi_epi16(a_hi, b_hi));
        }
    }
    if full < np {
        let tail = d.add(full * kq * NR * 4);
        std::ptr::write_bytes(tail, 0, kq * NR * 4);
        for row in 0..k {
            for col in full * NR..n {
                *tail.add(((row / 4) * NR + col % NR) * 4 + row % 4) = *src.add(row * n + col);
            }
        }
    }
    std::ptr::write_bytes(d.add(len), 0, PANEL_SLACK);
    dst.set_len(len + PANEL_SLACK);
}

/// Most bytes of packed A that [`gemm_loop`] runs against all panels at once (half the L2 of
/// this target's cores, 512 KiB: the rest holds the B panels and outputs).
pub(super) const A_CHUNK_BYTES: usize = 256 * 1024;

/// Sum of the 8 i32 lanes (wrapping).
#[inline(always)]
unsafe fn hsum_epi32(s: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

impl Sink<'_> {
    /// One accumulator (row `i`, column `j`, row stride `n`) to its destination: the scalar
    /// form of the vector stages, for matrix–vector products.
    #[inline(always)]
    fn put(&mut self, i: usize, j: usize, n: usize, acc: i32) {
        match self {
            Sink::Requant { mult, bias, shift, zp, qmin, qmax, out } => out[i * n + j] = ScalarStage { shift: *shift, zp: *zp, qmin: *qmin, qmax: *qmax }.apply(mult[i], bias[i], acc),
            Sink::Acc(a) => a[i * n + j] = acc,
        }
    }
}

/// Σ a[i]·b[i] over i16 slices of equal length, exact in (wrapping) i32.
#[inline(always)]
unsafe fn dot_i16(a: &[i16], b: &[i16]) -> i32 {
    let k = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut s0 = _mm256_setzero_si256();
    let mut s1 = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= k {
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_loadu_si256(pa.add(i) as *const __m256i), _mm256_loadu_si256(pb.add(i) as *const __m256i)));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_loadu_si256(pa.add(i + 16) as *const __m256i), _mm256_loadu_si256(pb.add(i + 16) as *const __m256i)));
        i += 32;
    }
    while i + 16 <= k {
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_loadu_si256(pa.add(i) as *const __m256i), _mm256_loadu_si256(pb.add(i) as *const __m256i)));
        i += 16;
    }
    let mut acc = hsum_epi32(_mm256_add_epi32(s0, s1));
    while i < k {
        acc = acc.wrapping_add(*pa.add(i) as i32 * *pb.add(i) as i32);
        i += 1;
    }
    acc
}

/// Matrix–vector products for narrow outputs (`n` small, e.g. Gemm/FC): `w` is `[m × k]`
/// row-major (unpacked), `cols` the `[k × n]` i16 right-hand side.
#[target_feature(enable = "avx2")]
pub unsafe fn gemv(w: &[i16], m: usize, k: usize, cols: &[i16], n: usize, xcol: &mut Vec<i16>, sink: &mut Sink) {
    assert!(w.len() >= m * k && cols.len() >= k * n);
    for j in 0..n {
        xcol.clear();
        xcol.extend((0..k).map(|p| cols[p * n + j]));
        for i in 0..m {
            let acc = dot_i16(&w[i * k..(i + 1) * k], xcol);
            sink.put(i, j, n, acc);
        }
    }
}

/// Σ u[i]·x[i], `u` bytes, `x` i16, exact in (wrapping) i32.
#[inline(always)]
unsafe fn dot_u8_i16(u: &[u8], x: &[i16]) -> i32 {
    let k = u.len().min(x.len());
    let (pu, px) = (u.as_ptr(), x.as_ptr());
    let mut s0 = _mm256_setzero_si256();
    let mut s1 = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= k {
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(pu.add(i) as *const __m128i)), _mm256_loadu_si256(px.add(i) as *const __m256i)));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(pu.add(i + 16) as *const __m128i)), _mm256_loadu_si256(px.add(i + 16) as *const __m256i)));
        i += 32;
    }
    if i + 16 <= k {
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(pu.add(i) as *const __m128i)), _mm256_loadu_si256(px.add(i) as *const __m256i)));
        i += 16;
    }
    let mut acc = hsum_epi32(_mm256_add_epi32(s0, s1));
    while i < k {
        acc = acc.wrapping_add(*pu.add(i) as i32 * *px.add(i) as i32);
        i += 1;
    }
    acc
}

/// [`gemv`] with the weights of [`PackedWeights::Gemv`]: row `i` is `u[i·k..] + off[i]`, so
/// `Σ w·x = Σ u·x + off[i]·Σ x` (exact, wrapping i32 like the reference).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemv_u8(u: &[u8], off: &[i32], m: usize, k: usize, cols: &[i16], n: usize, xcol: &mut Vec<i16>, sink: &mut Sink) {
    assert!(u.len() >= m * k && off.len() >= m && cols.len() >= k * n);
    for j in 0..n {
        xcol.clear();
        xcol.extend((0..k).map(|p| cols[p * n + j]));
        let sx = xcol.iter().fold(0i32, |s, &x| s.wrapping_add(x as i32));
        for i in 0..m {
            let acc = dot_u8_i16(&u[i * k..(i + 1) * k], xcol).wrapping_add(off[i].wrapping_mul(sx));
            sink.put(i, j, n, acc);
        }
    }
}

/// Whether [`depthwise`] handles this geometry.
pub fn depthwise_supported(g: &ConvGeometry) -> bool {
    g.is_depthwise() && g.dilations == [1, 1] && (g.strides[1] == 1 || g.strides[1] == 2) && g.strides[0] >= 1
}

/// Depthwise conv, any kernel size, horizontal stride 1 or 2, any vertical stride, dilation 1.
///
/// Per channel the input is laid out as a zero-padded i16 plane of `x − zp` (row stride = the
/// padded width the outputs use), so every tap is a contiguous 16-wide load. Two horizontally
/// adjacent taps form one i16 pair `(w[ky][2j], w[ky][2j+1])` (the last one `(w, 0)` for odd
/// widths) and one `vpmaddwd` applies both: a load at column `x` holds the pairs
/// `(p[x+2t], p[x+2t+1])`, i.e. the taps of the outputs `x, x+2, …` (stride 1: a second load at
/// `x + 1` gives the odd outputs) or of the 8 consecutive outputs `x/2 + t` (stride 2).
/// Small stride-1 planes (7×7, 14×14, …) run "flat": the output positions are enumerated over
/// the padded row stride so that a 16-lane block spans several output rows; the lanes that fall
/// on padding columns are computed and dropped.
#[target_feature(enable = "avx2")]
pub unsafe fn depthwise(input: &[u8], zp: i32, pairs: &[i32], g: &ConvGeometry, plane: &mut Vec<i16>, sink: &mut Sink) {
    depthwise_parts::<1>(input, zp, [pairs], g, plane, sink)
}

/// Padded-plane layout and block order of one depthwise geometry.
#[derive(Clone, Copy)]
struct DwPlan {
    /// Plane row stride: the padded input width the outputs read.
    rs: usize,
    /// Plane rows (padded input rows the outputs read).
    hp: usize,
    /// Plane length in i16 (with slack for whole-vector reads past the last row).
    len: usize,
    /// Stride 1 in both directions and fewer 16-lane blocks over `oh × rs` than row by row.
    flat: bool,
    kh: usize,
    kw2: usize,
}

fn dw_plan(g: &ConvGeometry, allow_flat: bool) -> DwPlan {
    let [kh, kw] = g.kernel;
    let (sy, sx) = (g.strides[0], g.strides[1]);
    let rs = (g.out_w - 1) * sx + kw;
    let hp = (g.out_h - 1) * sy + kh;
    let flat = allow_flat && sx == 1 && sy == 1 && (g.out_h * rs).div_ceil(16) < g.out_h * g.out_w.div_ceil(16);
    DwPlan { rs, hp, len: hp * rs + kw + 64, flat, kh, kw2: kw.div_ceil(2) }
}

/// Write channel `c`'s interior (`x − zp`) into the plane; everything else stays 0. Rows go in
/// increasing order and a partial 16-lane chunk stores zeros past the row end (padding, or the
/// next row's interior, rewritten right after), so only whole vectors are stored.
#[inline(always)]
unsafe fn dw_fill(input: &[u8], c: usize, zp: i32, g: &ConvGeometry, pl: &DwPlan, plane: *mut i16) {
    let (ih, iw) = (g.in_h, g.in_w);
    let rows = ih.min(pl.hp.saturating_sub(g.pad_top));
    let w = iw.min(pl.rs.saturating_sub(g.pad_left));
    if w == 0 {
        return;
    }
    let zpv = _mm256_set1_epi16(zp as i16);
    let iota = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // The same partial chunk ends every row.
    let keep = _mm256_cmpgt_epi16(_mm256_set1_epi16((w % 16) as i16), iota);
    let full = w - w % 16;
    let end = input.as_ptr().add(input.len());
    let mut s = input.as_ptr().add(c * ih * iw);
    let mut d = plane.add(g.pad_top * pl.rs + g.pad_left);
    for _ in 0..rows {
        let mut x = 0;
        while x < full {
            let v = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(s.add(x) as *const __m128i)), zpv);
            _mm256_storeu_si256(d.add(x) as *mut __m256i, v);
            x += 16;
        }
        if x < w {
            if s.add(x + 16) <= end {
                let v = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(s.add(x) as *const __m128i)), zpv);
                _mm256_storeu_si256(d.add(x) as *mut __m256i, _mm256_and_si256(v, keep));
            } else {
                for t in x..w {
                    *d.add(t) = (*s.add(t) as i32 - zp) as i16;
                }
            }
        }
        s = s.add(iw);
        d = d.add(pl.rs);
    }
}

/// Most weight pairs a channel keeps broadcast in [`DwWeights`] (a 5×5 kernel has 15).
const DW_MAX_PAIRS: usize = 15;

/// One channel's weight pairs of every part, broadcast once per channel when they fit
/// (`wv`), else read through `wp` at each use.
struct DwWeights<const P: usize> {
    wp: [*const i32; P],
    wv: [[__m256i; DW_MAX_PAIRS]; P],
    held: bool,
}

impl<const P: usize> DwWeights<P> {
    #[inline(always)]
    unsafe fn new(wp: [*const i32; P], pairs: usize) -> Self {
        let mut wv = [[_mm256_setzero_si256(); DW_MAX_PAIRS]; P];
        let held = pairs <= DW_MAX_PAIRS;
        if held {
            for p in 0..P {
                for (i, w) in wv[p].iter_mut().enumerate().take(pairs) {
                    *w = _mm256_set1_epi32(*wp[p].add(i));
                }
            }
        }
        DwWeights { wp, wv, held }
    }

    #[inline(always)]
    unsafe fn get(&self, p: usize, i: usize) -> __m256i {
        if self.held {
            *self.wv[p].get_unchecked(i)
        } else {
            _mm256_set1_epi32(*self.wp[p].add(i))
        }
    }
}

/// Accumulators of one output block whose first tap reads `r0`: `a` from loads at `r0 + …`,
/// `b` from loads at `r0 + d + …` (`TWO = false`: `b` is not computed).
#[inline(always)]
unsafe fn dw_block<const P: usize, const TWO: bool, const V: bool>(r0: *const i16, rs: usize, d: usize, kh: usize, kw2: usize, w: &DwWeights<P>) -> ([__m256i; P], [__m256i; P]) {
    let mut a = [_mm256_setzero_si256(); P];
    let mut b = [_mm256_setzero_si256(); P];
    for ky in 0..kh {
        let r = r0.add(ky * rs);
        for j in 0..kw2 {
            let x0 = _mm256_loadu_si256(r.add(2 * j) as *const __m256i);
            let x1 = if TWO { _mm256_loadu_si256(r.add(2 * j + d) as *const __m256i) } else { x0 };
            for p in 0..P {
                let w = w.get(p, ky * kw2 + j);
                a[p] = if V { dpwssd(a[p], x0, w) } else { _mm256_add_epi32(a[p], _mm256_madd_epi16(x0, w)) };
                if TWO {
                    b[p] = if V { dpwssd(b[p], x1, w) } else { _mm256_add_epi32(b[p], _mm256_madd_epi16(x1, w)) };
                }
            }
        }
    }
    (a, b)
}

/// Even-output and odd-output accumulators (stride 1) → outputs 0..8 and 8..16 in order.
#[inline(always)]
unsafe fn interleave_eo(e: __m256i, o: __m256i) -> (__m256i, __m256i) {
    let lo = _mm256_unpacklo_epi32(e, o);
    let hi = _mm256_unpackhi_epi32(e, o);
    (_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31))
}

/// Where [`dw_channels`] writes: requantized bytes or raw accumulators (`P = 1` only), rows
/// relative to the first channel of the range.
#[allow(clippy::large_enum_variant)]
enum DwOut<'a> {
    /// `epi`: a float stage (absolute channel index, cap included), `P = 1` only.
    Requant { mult: &'a [i64], bias: &'a [i64], out_c: usize, f: Fin, cmax: Option<&'a [u8]>, epi: Option<EpiRows<'a>>, out: &'a mut [u8] },
    Acc(&'a mut [i32]),
}

/// One channel's output stage with its constants broadcast (built once per channel).
#[derive(Clone, Copy)]
struct DwStage<const P: usize> {
    /// The float stage (`P = 1`, channel proven exact).
    float: bool,
    s: __m256,
    o: __m256,
    lo: __m256,
    hi: __m256,
    m: [__m256i; P],
    b: __m256i,
    /// Byte cap applied to every result (255: none).
    cap: __m128i,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_stage<const P: usize>(mult: &[i64], bias: &[i64], out_c: usize, f: &Fin, epi: &Option<EpiRows>, cmax: Option<&[u8]>, c: usize) -> DwStage<P> {
    let mut st = DwStage {
        float: false,
        s: _mm256_setzero_ps(),
        o: _mm256_setzero_ps(),
        lo: _mm256_setzero_ps(),
        hi: _mm256_setzero_ps(),
        m: [_mm256_setzero_si256(); P],
        b: fin_bias(f, *bias.get_unchecked(c)),
        cap: _mm_set1_epi8(cmax.map_or(255, |m| *m.get_unchecked(c)) as i8),
    };
    for p in 0..P {
        st.m[p] = _mm256_set1_epi64x(*mult.get_unchecked(p * out_c + c));
    }
    if let (1, Some(e)) = (P, epi) {
        // The float stage holds the cap; channels without one take the i64 stage and `e.cap`.
        st.cap = _mm_set1_epi8(*e.cap.get_unchecked(c) as i8);
        if *e.ok.get_unchecked(c) {
            st.float = true;
            st.s = _mm256_set1_ps(*e.scale.get_unchecked(c));
            st.o = _mm256_set1_ps(*e.offset.get_unchecked(c));
            st.lo = _mm256_set1_ps(e.lo);
            st.hi = _mm256_set1_ps(*e.hi.get_unchecked(c));
        }
    }
    st
}

/// 8 accumulators of each part → 8 outputs as i32 in [0, 255] (before the byte cap): exactly
/// the reference stage, element-wise (so it commutes with any reordering of the lanes).
#[inline(always)]
unsafe fn dw_vals<const P: usize>(st: &DwStage<P>, f: &Fin, v: &[__m256i; P]) -> __m256i {
    if P == 1 {
        if st.float {
            return float8(v[0], st.s, st.o, st.lo, st.hi);
        }
        return requant8(v[0], st.m[0], st.b, f);
    }
    let (mut e, mut o) = (st.b, st.b);
    for (vp, mp) in v.iter().zip(&st.m) {
        e = _mm256_add_epi64(e, _mm256_mul_epi32(*vp, *mp));
        o = _mm256_add_epi64(o, _mm256_mul_epi32(_mm256_srli_epi64(*vp, 32), *mp));
    }
    finish(e, o, f)
}

/// Outputs `2t` (`e`) and `2t + 1` (`o`), t = 0..8, as i32 in [0, 255] → 16 bytes in order.
#[inline(always)]
unsafe fn pack_eo(e: __m256i, o: __m256i) -> __m128i {
    // i16 lanes: e0..3 o0..3 | e4..7 o4..7 → bytes e0..3 o0..3 e4..7 o4..7 → interleaved.
    let t = _mm256_packs_epi32(e, o);
    let b = _mm_packus_epi16(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    _mm_shuffle_epi8(b, _mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15))
}

/// Store the first `cols` ≤ 16 of `bytes` at `dst`; a whole 16-byte store when `room` ≥ 16
/// bytes may be written (the extra bytes are rewritten later by the caller).
#[inline(always)]
unsafe fn store_bytes(dst: *mut u8, bytes: __m128i, cols: usize, room: usize) {
    if cols == 16 || room >= 16 {
        _mm_storeu_si128(dst as *mut __m128i, bytes);
    } else if cols == 8 {
        _mm_storel_epi64(dst as *mut __m128i, bytes);
    } else {
        let mut tmp = [0u8; 16];
        _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, bytes);
        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
    }
}

/// Channels `c0..c1` of a depthwise conv over `P` weight parts (see [`depthwise_parts`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_channels<const P: usize, const KH: usize, const KW2: usize, const V: bool>(input: &[u8], zp: i32, pairs: &[&[i32]; P], g: &ConvGeometry, pl: &DwPlan, c0: usize, c1: usize, plane: &mut Vec<i16>, line: &mut Vec<u8>, out: &mut DwOut) {
    let (kh, kw2) = if KH > 0 { (KH, KW2) } else { (pl.kh, pl.kw2) };
    let (oh, ow) = (g.out_h, g.out_w);
    let (sy, sx) = (g.strides[0], g.strides[1]);
    let spatial = oh * ow;
    let rs = pl.rs;
    plane.clear();
    plane.resize(pl.len, 0);
    let nflat = (oh * rs).div_ceil(16);
    if pl.flat {
        line.clear();
        line.resize(nflat * 16 + 16, 0);
    }
    for c in c0..c1 {
        dw_fill(input, c, zp, g, pl, plane.as_mut_ptr());
        let mut wp = [std::ptr::null::<i32>(); P];
        for p in 0..P {
            wp[p] = pairs[p].as_ptr().add(c * kh * kw2);
        }
        let w = DwWeights::<P>::new(wp, kh * kw2);
        let base = plane.as_ptr();
        let row = c - c0;
        if pl.flat {
            let DwOut::Requant { mult, bias, out_c, f, cmax, epi, out } = out else { unreachable!("flat needs a requant sink") };
            let st = dw_stage::<P>(mult, bias, *out_c, f, epi, *cmax, c);
            let lp = line.as_mut_ptr();
            for blk in 0..nflat {
                let (e, o) = dw_block::<P, true, V>(base.add(blk * 16), rs, 1, kh, kw2, &w);
                let bytes = _mm_min_epu8(pack_eo(dw_vals::<P>(&st, f, &e), dw_vals::<P>(&st, f, &o)), st.cap);
                _mm_storeu_si128(lp.add(blk * 16) as *mut __m128i, bytes);
            }
            // Rows in order, 16 bytes at a time: bytes past a row end are rewritten by the next
            // row (or the next channel); only the end of `out` needs the exact store.
            let out_end = out.as_mut_ptr().add(out.len());
            let mut d = out.as_mut_ptr().add(row * spatial);
            let mut s = lp as *const u8;
            for _ in 0..oh {
                let mut x = 0;
                while x < ow {
                    let v = _mm_loadu_si128(s.add(x) as *const __m128i);
                    if d.add(x + 16) <= out_end {
                        _mm_storeu_si128(d.add(x) as *mut __m128i, v);
                    } else {
                        store_bytes(d.add(x), v, 16.min(ow - x), 0);
                    }
                    x += 16;
                }
                s = s.add(rs);
                d = d.add(ow);
            }
            continue;
        }
        match out {
            DwOut::Requant { mult, bias, out_c, f, cmax, epi, out } => {
                let st = dw_stage::<P>(mult, bias, *out_c, f, epi, *cmax, c);
                for oy in 0..oh {
                    let rb = base.add(oy * sy * rs);
                    let mut ox0 = 0;
                    while ox0 < ow {
                        let cols = 16.min(ow - ox0);
                        let bytes = if sx == 1 {
                            let (e, o) = dw_block::<P, true, V>(rb.add(ox0), rs, 1, kh, kw2, &w);
                            pack_eo(dw_vals::<P>(&st, f, &e), dw_vals::<P>(&st, f, &o))
                        } else if cols > 8 {
                            let (v0, v1) = dw_block::<P, true, V>(rb.add(2 * ox0), rs, 16, kh, kw2, &w);
                            pack16(dw_vals::<P>(&st, f, &v0), dw_vals::<P>(&st, f, &v1))
                        } else {
                            let (v0, _) = dw_block::<P, false, V>(rb.add(2 * ox0), rs, 16, kh, kw2, &w);
                            let y = dw_vals::<P>(&st, f, &v0);
                            pack16(y, y)
                        };
                        let pos = oy * ow + ox0;
                        store_bytes(out.as_mut_ptr().add(row * spatial + pos), _mm_min_epu8(bytes, st.cap), cols, spatial - pos);
                        ox0 += 16;
                    }
                }
            }
            DwOut::Acc(acc) => {
                for oy in 0..oh {
                    let rb = base.add(oy * sy * rs);
                    let mut ox0 = 0;
                    while ox0 < ow {
                        let cols = 16.min(ow - ox0);
                        let (v0, v1) = if sx == 1 {
                            let (e, o) = dw_block::<P, true, V>(rb.add(ox0), rs, 1, kh, kw2, &w);
                            interleave_eo(e[0], o[0])
                        } else {
                            let (a, b) = dw_block::<P, true, V>(rb.add(2 * ox0), rs, 16, kh, kw2, &w);
                            (a[0], b[0])
                        };
                        let dst = acc.as_mut_ptr().add(row * spatial + oy * ow + ox0);
                        let mut tmp = [0i32; 16];
                        _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, v0);
                        _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, v1);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
                        ox0 += 16;
                    }
                }
            }
        }
    }
}

/// [`dw_channels`] with the kernel size fixed at compile time where it is a common one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_dispatch<const P: usize>(input: &[u8], zp: i32, pairs: &[&[i32]; P], g: &ConvGeometry, pl: &DwPlan, c0: usize, c1: usize, plane: &mut Vec<i16>, line: &mut Vec<u8>, out: &mut DwOut) {
    // With AVX-VNNI each tap pair is one `vpdpwssd` instead of `vpmaddwd` + `vpaddd`.
    match (pl.kh, pl.kw2, super::pack::vnni_available()) {
        (3, 2, false) => dw_channels::<P, 3, 2, false>(input, zp, pairs, g, pl, c0, c1, plane, line, out),
        (5, 3, false) => dw_channels::<P, 5, 3, false>(input, zp, pairs, g, pl, c0, c1, plane, line, out),
        (_, _, false) => dw_channels::<P, 0, 0, false>(input, zp, pairs, g, pl, c0, c1, plane, line, out),
        (3, 2, true) => dw_channels::<P, 3, 2, true>(input, zp, pairs, g, pl, c0, c1, plane, line, out),
        (5, 3, true) => dw_channels::<P, 5, 3, true>(input, zp, pairs, g, pl, c0, c1, plane, line, out),
        (_, _, true) => dw_channels::<P, 0, 0, true>(input, zp, pairs, g, pl, c0, c1, plane, line, out),
    }
}

/// [`depthwise`] over `P` weight parts at once (a subtensor-split layer): the padded plane is
/// built once per channel and every input load feeds all parts' taps (`P` accumulator sets).
/// For `P = 1` results go to `sink` as in [`depthwise`]; for `P > 1` the sink must be
/// `Sink::Requant` with `mult[p·out_c + c]` = part `p`'s multiplier of channel `c` (each in i32
/// range) and `bias[c]` in the common fixed-point domain: the output is
/// `clamp(zp + round_shift(bias[c] + Σ_p acc_p·mult_p[c], shift))`, exactly the reference's sum.
#[target_feature(enable = "avx2")]
pub unsafe fn depthwise_parts<const P: usize>(input: &[u8], zp: i32, pairs: [&[i32]; P], g: &ConvGeometry, plane: &mut Vec<i16>, sink: &mut Sink) {
    depthwise_range::<P>(input, zp, pairs, g, 0..g.out_c, plane, sink)
}

/// [`depthwise_parts`] on channels `range` only: the sink's rows (output / accumulator rows)
/// are relative to `range.start`, its `mult`/`bias` indexed by absolute channel. Weights are
/// 8-bit (`|w − zw| ≤ 255`), as for [`gemm_packed`].
#[target_feature(enable = "avx2")]
pub unsafe fn depthwise_range<const P: usize>(input: &[u8], zp: i32, pairs: [&[i32]; P], g: &ConvGeometry, range: std::ops::Range<usize>, plane: &mut Vec<i16>, sink: &mut Sink) {
    depthwise_range_cmax::<P>(input, zp, pairs, g, range, plane, sink, None, None, 255)
}

/// [`depthwise_range`], channel `c` also capped at `cmax[c]` (absolute index; requantizing
/// sinks only).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_range_cmax<const P: usize>(input: &[u8], zp: i32, pairs: [&[i32]; P], g: &ConvGeometry, range: std::ops::Range<usize>, plane: &mut Vec<i16>, sink: &mut Sink, cmax: Option<&[u8]>, epi: Option<EpiRows>, wmax: u32) {
    let (ih, iw) = (g.in_h, g.in_w);
    let [kh, kw] = g.kernel;
    let kw2 = kw.div_ceil(2);
    assert!(P >= 1 && depthwise_supported(g) && input.len() >= g.in_c * ih * iw && range.end <= g.out_c && range.start <= range.end);
    for pr in pairs.iter() {
        assert!(pr.len() >= g.out_c * kh * kw2);
    }
    let spatial = g.out_h * g.out_w;
    let rows = range.end - range.start;
    let mut line = Vec::new();
    match sink {
        Sink::Requant { mult, bias, shift, zp: ozp, qmin, qmax, out } => {
            assert!(mult.len() >= P * g.out_c && bias.len() >= g.out_c && out.len() >= rows * spatial);
            if P > 1 {
                assert!(mult[..P * g.out_c].iter().all(|&m| m == m as i32 as i64), "multipliers must fit in i32");
            }
            let pl = dw_plan(g, true);
            let msum: u128 = (0..P).map(|p| max_abs(&mult[p * g.out_c..(p + 1) * g.out_c])).sum();
            let f = fin(*shift, *ozp, *qmin, *qmax, requant_bound(&bias[..g.out_c], msum, acc_max(kh * kw, wmax)));
            assert!(cmax.is_none_or(|c| c.len() >= g.out_c));
            assert!(epi.is_none() || (P == 1 && cmax.is_none()));
            assert!(epi.is_none_or(|e| e.fits(g.out_c)));
            let mut o = DwOut::Requant { mult, bias, out_c: g.out_c, f, cmax, epi, out };
            dw_dispatch::<P>(input, zp, &pairs, g, &pl, range.start, range.end, plane, &mut line, &mut o);
        }
        Sink::Acc(acc) => {
            assert!(P == 1 && cmax.is_none() && epi.is_none(), "depthwise_parts: several parts (or a cap) need a Requant sink");
            assert!(acc.len() >= rows * spatial);
            let pl = dw_plan(g, false);
            let mut o = DwOut::Acc(acc);
            dw_dispatch::<P>(input, zp, &pairs, g, &pl, range.start, range.end, plane, &mut line, &mut o);
        }
    }
}

/// Pack an i16 `[k × n]` matrix into `NR`-column panels (see [`super::pack_b_i16`]).
#[target_feature(enable = "avx2")]
pub unsafe fn pack_b_i16(cols: &[i16], k: usize, n: usize, dst: &mut Vec<i16>) {
    assert!(cols.len() >= k * n);
    let (np, kp) = (n.div_ceil(NR), k.div_ceil(2));
    let len = np * kp * NR * 2;
    dst.clear();
    dst.reserve(len);
    let full = n / NR;
    let d = dst.as_mut_ptr();
    let src = cols.as_ptr();
    for jp in 0..full {
        let col = jp * NR;
        for p in 0..kp {
            let a = _mm256_loadu_si256(src.add(2 * p * n + col) as *const __m256i);
            let b = if 2 * p + 1 < k { _mm256_loadu_si256(src.add((2 * p + 1) * n + col) as *const __m256i) } else { _mm256_setzero_si256() };
            let lo = _mm256_unpacklo_epi16(a, b);
            let hi = _mm256_unpackhi_epi16(a, b);
            let o = d.add((jp * kp + p) * NR * 2);
            _mm256_storeu_si256(o as *mut __m256i, _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_storeu_si256(o.add(16) as *mut __m256i, _mm256_permute2x128_si256(lo, hi, 0x31));
        }
    }
    if full < np {
        let tail = d.add(full * kp * NR * 2);
        std::ptr::write_bytes(tail, 0, kp * NR * 2);
        for row in 0..k {
            let (p, h) = (row / 2, row % 2);
            for col in full * NR..n {
                *tail.add((p * NR + col % NR) * 2 + h) = *src.add(row * n + col);
            }
        }
    }
    dst.set_len(len);
}

/// Whether [`conv_q8`] handles these parts (else the caller uses the reference).
pub fn conv_supported(parts: &[ConvPart], g: &ConvGeometry) -> bool {
    !parts.is_empty()
        && parts.iter().all(|p| match &p.packed {
            PackedWeights::Gemm { m, k, groups, .. } => *groups == g.group && *m == g.out_c / g.group && *k == g.weights_per_output(),
            PackedWeights::Gemv { m, k, .. } => g.group == 1 && *m == g.out_c && *k == g.weights_per_output() && g.out_h * g.out_w <= GEMV_MAX_N,
            PackedWeights::Depthwise { kh, kw2, .. } => depthwise_supported(g) && *kh == g.kernel[0] && *kw2 == g.kernel[1].div_ceil(2),
            PackedWeights::None => false,
        })
}

/// Convs smaller than this many multiply-adds run on the calling thread. Splitting a conv costs a
/// fork and join (waking a sleeping worker), which the 512-bit kernels no longer hide: with the
/// old 150 000, two threads at batch 1 took 2.74 ms on MobileNetV2 and 4.61 ms on
/// EfficientNet-Lite0 against 1.73 / 4.1 ms on one; with 20 M, 1.69 / 4.18 ms, and batches of 8
/// ran 1128 / 487 images/s instead of 982 / 444 (`subq bench --threads 2`, per-tensor files).
/// EfficientNet-Lite0's head (20.1 M) still split at 20 M, with no gain, hence 50 M: every conv
/// of these models runs whole, and two threads serve batches. [`set_split_threshold`] changes it
/// (tests).
const PAR_MIN_MACS: usize = 50_000_000;

static SPLIT_MIN_MACS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(PAR_MIN_MACS);

/// Sets the smallest conv (multiply-adds) that is split over the worker threads (default
/// 50 M, see `PAR_MIN_MACS`); the tests lower it to run the split paths on small shapes.
pub fn set_split_threshold(macs: usize) {
    SPLIT_MIN_MACS.store(macs, std::sync::atomic::Ordering::Relaxed);
}

/// Tasks to split a conv of `macs` multiply-adds into on the current rayon pool (1: inline).
/// Every output is computed the same way whatever the split, so results never depend on it.
fn tasks_for(macs: usize) -> usize {
    let t = rayon::current_num_threads();
    if t <= 1 || macs < SPLIT_MIN_MACS.load(std::sync::atomic::Ordering::Relaxed) {
        1
    } else {
        2 * t
    }
}

/// Depthwise over channel chunks in parallel (`tasks` > 1), each with its own plane; `sink`
/// must be `Sink::Requant` over all `out_c` channels.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_par<const P: usize>(input: &[u8], zp: i32, pairs: [&[i32]; P], g: &ConvGeometry, mut sink: Sink, plane: &mut Vec<i16>, tasks: usize, cmax: Option<&[u8]>, epi: Option<EpiRows>, wmax: u32) {
    let spatial = g.out_h * g.out_w;
    let chunk = g.out_c.div_ceil(tasks.max(1));
    match sink {
        Sink::Requant { mult, bias, shift, zp: ozp, qmin, qmax, out } if tasks > 1 && chunk < g.out_c && spatial > 0 => {
            out[..g.out_c * spatial].par_chunks_mut(chunk * spatial).enumerate().for_each(|(i, o)| {
                let c0 = i * chunk;
                let c1 = (c0 + chunk).min(g.out_c);
                let mut plane = Vec::new();
                let mut sink = Sink::Requant { mult, bias, shift, zp: ozp, qmin, qmax, out: o };
                // SAFETY: reached only from AVX2 code, so the CPU has AVX2.
                unsafe { depthwise_range_cmax::<P>(input, zp, pairs, g, c0..c1, &mut plane, &mut sink, cmax, epi, wmax) };
            });
        }
        _ => depthwise_range_cmax::<P>(input, zp, pairs, g, 0..g.out_c, plane, &mut sink, cmax, epi, wmax),
    }
}

/// [`gemm_packed`] with a requantizing sink, its output-channel blocks split over `tasks`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_par(a: &[i16], m: usize, k: usize, b: &[i16], n: usize, mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, out: &mut [u8], tasks: usize, cmax: Option<&[u8]>, epi: Option<EpiRows>, wmax: u32) {
    let mb = m.div_ceil(MR);
    let tasks = tasks.min(mb);
    if tasks <= 1 || n == 0 {
        return gemm_packed_cmax(a, m, k, b, n, &mut Sink::Requant { mult, bias, shift, zp, qmin, qmax, out }, cmax, epi, wmax);
    }
    let per = mb.div_ceil(tasks) * MR;
    let ablk = k.div_ceil(2) * MR * 2;
    out[..m * n].par_chunks_mut(per * n).enumerate().for_each(|(i, o)| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(m));
        let mut sink = Sink::Requant { mult: &mult[r0..r1], bias: &bias[r0..r1], shift, zp, qmin, qmax, out: o };
        // SAFETY: reached only from AVX2 code, so the CPU has AVX2.
        unsafe { gemm_packed_cmax(&a[r0 / MR * ablk..], r1 - r0, k, b, n, &mut sink, cmax.map(|c| &c[r0..r1]), epi.map(|e| e.rows(r0..r1)), wmax) };
    });
}


/// AVX2 [`super::conv_q8_reference`]: same arguments, same bytes out. Requires
/// [`conv_supported`].
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_q8(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    conv_q8_clamped(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, None, g, out, scratch)
}

/// [`conv_q8`] with output channel `c` also capped at `cmax[c]` (see
/// [`super::conv_q8_clamped`]): fused into the epilogue of the single-part and depthwise paths.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_q8_clamped(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    conv_q8_epi(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, cmax, None, g, out, scratch)
}

/// [`conv_q8_clamped`] with an optional float output stage (see [`super::conv_q8_epi`]: it
/// must be proven on these same parameters, for every accumulator this input can give): used by
/// the single-part depthwise and one-group GEMM paths.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_q8_epi(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>, epi: Option<&FloatEpilogue>, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    assert!(conv_supported(parts, g));
    let epi = epi.filter(|_| parts.len() == 1).map(EpiRows::of);
    assert!(epi.is_none_or(|e| e.fits(g.out_c)));
    assert!(cmax.is_none_or(|c| c.len() >= g.out_c));
    // Paths without a fused cap apply it afterwards.
    let mut post_cap = cmax;
    let spatial = g.out_h * g.out_w;
    let cin_g = g.in_c / g.group;
    let cout_g = g.out_c / g.group;
    let k = g.weights_per_output();
    assert!(out.len() >= g.out_c * spatial && bias_fixed.len() >= g.out_c && input.len() >= g.in_c * g.in_h * g.in_w);
    // Split layers (2–3 parts) fused in one kernel need every part's multipliers, part-major,
    // within i32 (the kernels multiply them with `vpmuldq`).
    let split = (2..=3).contains(&parts.len());
    if split {
        scratch.mult.clear();
        for part in parts {
            scratch.mult.extend((0..g.out_c).map(|c| part.multiplier(c)));
        }
    }
    let split_fits = split && scratch.mult.iter().all(|&m| m == m as i32 as i64);
    // Split depthwise: one pass, shared padded planes and input loads.
    if split && g.is_depthwise() {
        let mut dw: [&[i32]; 3] = [&[], &[], &[]];
        let mut lanes: [&[i32]; 3] = [&[], &[], &[]];
        for (i, part) in parts.iter().enumerate() {
            if let PackedWeights::Depthwise { pairs, lanes: l, .. } = &part.packed {
                dw[i] = pairs;
                lanes[i] = l;
            }
        }
        let Scratch { bpack, mult, pixels, bytes, .. } = &mut *scratch;
        let np = parts.len();
        if split_fits && tasks_for(g.macs() * np) == 1 && lanes[..np].iter().all(|l| !l.is_empty()) && super::dw512::chosen(g) && super::dw512::available() {
            let m = |i: usize| &mult[i * g.out_c..(i + 1) * g.out_c];
            if np == 2 {
                let st = super::dw512::Stage { float: None, mult: [m(0), m(1)], bias: bias_fixed, shift, zp: out_zp, qmin, qmax, cap: cmax };
                super::dw512::depthwise::<2>(input, zp_in, [lanes[0], lanes[1]], g, &st, out, pixels, bytes);
            } else {
                let st = super::dw512::Stage { float: None, mult: [m(0), m(1), m(2)], bias: bias_fixed, shift, zp: out_zp, qmin, qmax, cap: cmax };
                super::dw512::depthwise::<3>(input, zp_in, [lanes[0], lanes[1], lanes[2]], g, &st, out, pixels, bytes);
            }
            return;
        }
        let wmax = parts.iter().map(|p| p.wmax).max().unwrap_or(0);
        if split_fits && dw[..parts.len()].iter().all(|p| !p.is_empty()) {
            let sink = Sink::Requant { mult: &mult[..], bias: bias_fixed, shift, zp: out_zp, qmin, qmax, out: &mut *out };
            let tasks = tasks_for(g.macs() * parts.len());
            if parts.len() == 2 {
                depthwise_par::<2>(input, zp_in, [dw[0], dw[1]], g, sink, bpack, tasks, cmax, None, wmax);
            } else {
                depthwise_par::<3>(input, zp_in, [dw[0], dw[1], dw[2]], g, sink, bpack, tasks, cmax, None, wmax);
            }
            return;
        }
    }
    // Split pointwise/dense (one group): B packed once per form, parts summed in the epilogue.
    // Pointwise parts with a byte form take the byte GEMM, the others i16 pairs.
    if split && g.group == 1 && spatial > GEMV_MAX_N {
        let mut pa = [PartA::Wide(&[], 0); 3];
        for (i, part) in parts.iter().enumerate() {
            match (&part.packed8, &part.packed) {
                (Some(p8), _) if g.is_pointwise() => pa[i] = PartA::Byte(p8),
                (_, PackedWeights::Gemm { data, .. }) => pa[i] = PartA::Wide(data, part.wmax),
                _ => {}
            }
        }
        let Scratch { cols, bpack, bpack8, mult, .. } = &mut *scratch;
        let usable = pa[..parts.len()].iter().all(|p| !matches!(p, PartA::Wide(w, _) if w.is_empty()));
        if split_fits && usable {
            let wide = pa[..parts.len()].iter().any(|p| matches!(p, PartA::Wide(..)));
            bpack.clear();
            bpack8.clear();
            if wide && g.is_pointwise() {
                pack_b_u8(input, zp_in, k, spatial, bpack);
            } else if wide {
                cols.resize(k * spatial, 0);
                im2col_q(input, zp_in, g, 0, g.in_c, cols);
                pack_b_i16(cols, k, spatial, bpack);
            }
            if pa[..parts.len()].iter().any(|p| matches!(p, PartA::Byte(_))) {
                pack_b8(input, k, spatial, bpack8);
            }
            let b = PartsB { b16: bpack, b8: bpack8, x: input, zx: zp_in };
            let tasks = tasks_for(g.macs() * parts.len());
            if parts.len() == 2 {
                gemm_parts_par::<2>([pa[0], pa[1]], k, b, spatial, mult, g.out_c, bias_fixed, shift, out_zp, qmin, qmax, cmax, out, tasks);
            } else {
                gemm_parts_par::<3>([pa[0], pa[1], pa[2]], k, b, spatial, mult, g.out_c, bias_fixed, shift, out_zp, qmin, qmax, cmax, out, tasks);
            }
            return;
        }
    }
    let single = parts.len() == 1;
    if !single {
        scratch.fixed.clear();
        scratch.fixed.extend((0..g.out_c).flat_map(|c| std::iter::repeat_n(bias_fixed[c], spatial)));
    }
    let Scratch { cols, acc, fixed, bpack, bpack8, mult, pixels, bytes } = scratch;
    for (pi, part) in parts.iter().enumerate() {
        mult.clear();
        mult.extend((0..g.out_c).map(|c| part.multiplier(c)));
        if !single {
            // Every entry is overwritten by the kernels' `Sink::Acc`.
            acc.resize(g.out_c * spatial, 0);
        }
        match &part.packed {
            PackedWeights::Depthwise { pairs, lanes, .. } => {
                let tasks = tasks_for(g.macs());
                if single && tasks == 1 && !lanes.is_empty() && super::dw512::chosen(g) && super::dw512::available() && mult.iter().all(|&m| m == m as i32 as i64) {
                    let float = epi.map(|e| super::dw512::Float { scale: e.scale, offset: e.offset, hi: e.hi, lo: e.lo, ok: e.ok });
                    // With a float stage, its caps hold `min(qmax, cmax)` for every channel.
                    let cap = epi.map(|e| e.cap).or(cmax);
                    let st = super::dw512::Stage { float, mult: [&mult[..]], bias: bias_fixed, shift, zp: out_zp, qmin, qmax, cap };
                    super::dw512::depthwise::<1>(input, zp_in, [lanes], g, &st, out, pixels, bytes);
                    post_cap = None;
                    continue;
                }
                if single {
                    let sink = Sink::Requant { mult: &mult[..], bias: bias_fixed, shift, zp: out_zp, qmin, qmax, out: &mut *out };
                    depthwise_par::<1>(input, zp_in, [pairs], g, sink, bpack, tasks, if epi.is_some() { None } else { cmax }, epi, part.wmax);
                    post_cap = None;
                } else {
                    depthwise(input, zp_in, pairs, g, bpack, &mut Sink::Acc(&mut acc[..]));
                }
            }
            PackedWeights::Gemm { data, .. } => {
                let blk = cout_g.div_ceil(MR) * k.div_ceil(2) * MR * 2;
                if let (true, Some(p8)) = (single && g.group == 1 && spatial > GEMV_MAX_N, &part.packed8) {
                    // A dense conv (the stem) goes through a byte im2col, padded with the
                    // zero-point; a pointwise conv reads its input as is.
                    let x: &[u8] = if g.is_pointwise() {
                        input
                    } else {
                        bytes.resize(k * spatial, 0);
                        im2col_u8(input, zp_in, g, bytes);
                        bytes
                    };
                    pack_b8(x, k, spatial, bpack8);
                    gemm8_par(p8, bpack8, x, spatial, zp_in, mult, bias_fixed, shift, out_zp, qmin, qmax, out, tasks_for(g.macs()), if epi.is_some() { None } else { cmax }, epi);
                    post_cap = None;
                    continue;
                }
                for grp in 0..g.group {
                    let rows = grp * cout_g..(grp + 1) * cout_g;
                    let mut sink = if single {
                        Sink::Requant { mult: &mult[rows.clone()], bias: &bias_fixed[rows.clone()], shift, zp: out_zp, qmin, qmax, out: &mut out[rows.start * spatial..rows.end * spatial] }
                    } else {
                        Sink::Acc(&mut acc[rows.start * spatial..rows.end * spatial])
                    };
                    if spatial <= GEMV_MAX_N {
                        cols.resize(k * spatial, 0);
                        im2col_q_reference(input, zp_in, g, grp * cin_g, cin_g, cols);
                        gemv(&part.weight[rows.start * k..rows.end * k], cout_g, k, cols, spatial, bpack, &mut sink);
                        continue;
                    }
                    if pi > 0 && g.group == 1 {
                        // Split layer, one group: `bpack` still holds this input's panels,
                        // packed for the first part (the kernels only read it).
                    } else if g.is_pointwise() {
                        pack_b_u8(input, zp_in, k, spatial, bpack);
                    } else {
                        cols.resize(k * spatial, 0);
                        im2col_q(input, zp_in, g, grp * cin_g, cin_g, cols);
                        pack_b_i16(cols, k, spatial, bpack);
                    }
                    let a = &data[grp * blk..(grp + 1) * blk];
                    match sink {
                        Sink::Requant { mult, bias, out, .. } if g.group == 1 => {
                            gemm_par(a, cout_g, k, bpack, spatial, mult, bias, shift, out_zp, qmin, qmax, out, tasks_for(g.macs()), if epi.is_some() { None } else { cmax }, epi, part.wmax);
                            post_cap = None;
                        }
                        _ => gemm_packed_cmax(a, cout_g, k, bpack, spatial, &mut sink, None, None, part.wmax),
                    }
                }
            }
            PackedWeights::Gemv { u, off, .. } => {
                let mut sink = if single { Sink::Requant { mult: &mult[..], bias: bias_fixed, shift, zp: out_zp, qmin, qmax, out: &mut *out } } else { Sink::Acc(&mut acc[..]) };
                cols.resize(k * spatial, 0);
                im2col_q_reference(input, zp_in, g, 0, g.in_c, cols);
                gemv_u8(u, off, g.out_c, k, cols, spatial, bpack, &mut sink);
            }
            PackedWeights::None => unreachable!("checked by conv_supported"),
        }
        if !single {
            for c in 0..g.out_c {
                let m = mult[c];
                for (f, &a) in fixed[c * spatial..(c + 1) * spatial].iter_mut().zip(&acc[c * spatial..(c + 1) * spatial]) {
                    *f += a as i64 * m;
                }
            }
        }
    }
    if !single {
        for (o, &f) in out.iter_mut().zip(fixed.iter()) {
            *o = (out_zp as i64 + round_shift(f, shift)).clamp(qmin as i64, qmax as i64) as u8;
        }
    }
    if let Some(cm) = post_cap {
        clamp_channels_u8(&mut out[..g.out_c * spatial], spatial, &cm[..g.out_c]);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn add8(pa: *const u8, pb: *const u8, zav: __m256i, zbv: __m256i, mav: __m256i, mbv: __m256i, off: __m256i, f: &Fin) -> __m256i {
    let xa = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(pa as *const __m128i)), zav);
    let xb = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(pb as *const __m128i)), zbv);
    let even = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epi32(xa, mav), _mm256_mul_epi32(xb, mbv)), off);
    let odd = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(xa, 32), mav), _mm256_mul_epi32(_mm256_srli_epi64(xb, 32), mbv)), off);
    finish(even, odd, f)
}

/// AVX2 [`super::add_q8_reference`].
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_q8(a: &[u8], za: i32, ma: i64, b: &[u8], zb: i32, mb: i64, shift: u32, zo: i32, qmin: i32, qmax: i32, out: &mut [u8]) {
    let n = out.len().min(a.len()).min(b.len());
    let f = fin(shift, zo, qmin, qmax, 255 * (ma.unsigned_abs() as u128 + mb.unsigned_abs() as u128));
    let off = fin_bias(&f, 0);
    let (zav, zbv) = (_mm256_set1_epi32(za), _mm256_set1_epi32(zb));
    let (mav, mbv) = (_mm256_set1_epi64x(ma), _mm256_set1_epi64x(mb));
    let mut i = if f.fast && super::pack::vnni512_available() { add_q8_x16(a, za, ma, b, zb, mb, &f, qmin, qmax, out, n) } else { 0 };
    while i + 16 <= n {
        let v0 = add8(a.as_ptr().add(i), b.as_ptr().add(i), zav, zbv, mav, mbv, off, &f);
        let v1 = add8(a.as_ptr().add(i + 8), b.as_ptr().add(i + 8), zav, zbv, mav, mbv, off, &f);
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, pack16(v0, v1));
        i += 16;
    }
    super::add_q8_reference(&a[i..n], za, ma, &b[i..n], zb, mb, shift, zo, qmin, qmax, &mut out[i..n]);
}

/// [`add_q8`]'s fast path on 512 bits, 16 elements per step (8 i64 lanes per multiply where
/// AVX2 has 4): the same fixed-point steps as [`add8`] and [`finish`]. Returns the elements done.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn add_q8_x16(a: &[u8], za: i32, ma: i64, b: &[u8], zb: i32, mb: i64, f: &Fin, qmin: i32, qmax: i32, out: &mut [u8], n: usize) -> usize {
    debug_assert!(f.fast);
    let (zav, zbv) = (_mm512_set1_epi32(za), _mm512_set1_epi32(zb));
    let (mav, mbv) = (_mm512_set1_epi64(ma), _mm512_set1_epi64(mb));
    let off = _mm512_set1_epi64(f.off);
    let shift = f.shift;
    let zp = _mm512_broadcastd_epi32(_mm256_castsi256_si128(f.zp));
    let (lo, hi) = (_mm512_set1_epi32(qmin), _mm512_set1_epi32(qmax));
    let mut i = 0;
    while i + 16 <= n {
        let xa = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i)), zav);
        let xb = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i)), zbv);
        let even = _mm512_add_epi64(_mm512_add_epi64(_mm512_mul_epi32(xa, mav), _mm512_mul_epi32(xb, mbv)), off);
        let odd = _mm512_add_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64::<32>(xa), mav), _mm512_mul_epi32(_mm512_srli_epi64::<32>(xb), mbv)), off);
        // round64_fast: minus 1 where x' < off (x < 0), then the logical shift.
        let e = _mm512_srl_epi64(_mm512_mask_sub_epi64(even, _mm512_cmplt_epi64_mask(even, off), even, _mm512_set1_epi64(1)), shift);
        let o = _mm512_srl_epi64(_mm512_mask_sub_epi64(odd, _mm512_cmplt_epi64_mask(odd, off), odd, _mm512_set1_epi64(1)), shift);
        let v = _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64::<32>(o));
        let v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, zp), lo), hi);
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtusepi32_epi8(v));
        i += 16;
    }
    i
}

/// Σ of a uint8 slice (exact).
#[target_feature(enable = "avx2")]
pub unsafe fn sum_u8(x: &[u8]) -> u64 {
    let mut s = _mm256_setzero_si256();
    let zero = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= x.len() {
        s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i), zero));
        i += 32;
    }
    let mut lanes = [0u64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s);
    lanes.iter().sum::<u64>() + x[i..].iter().map(|&v| v as u64).sum::<u64>()
}

/// AVX2 [`super::global_avg_pool_q8_reference`]: Σ(x − zp) = Σx − zp·hw, exactly.
#[target_feature(enable = "avx2")]
pub unsafe fn global_avg_pool_q8(input: &[u8], channels: usize, zp_in: i32, r: super::Requant, zo: i32, out: &mut [u8]) {
    let hw = input.len() / channels;
    for (c, o) in out.iter_mut().enumerate().take(channels) {
        let sum = sum_u8(&input[c * hw..(c + 1) * hw]) as i64 - zp_in as i64 * hw as i64;
        *o = super::clamp_u8(zo as i64 + r.apply(sum), 0, 255);
    }
}

/// 8 floats → `round_ties_even(v / scale)` clamped to ±2^22 (NaN → 0), as i32, plus `zp`,
/// clamped to [0, 255].
#[inline(always)]
unsafe fn quantize8(p: *const f32, sv: __m256, lim: __m256, zpv: __m256i) -> __m256i {
    let y = _mm256_div_ps(_mm256_loadu_ps(p), sv);
    let y = _mm256_and_ps(y, _mm256_cmp_ps(y, y, _CMP_ORD_Q));
    let y = _mm256_min_ps(_mm256_max_ps(y, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
    let r = _mm256_cvtps_epi32(_mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, zpv), _mm256_setzero_si256()), _mm256_set1_epi32(255))
}

/// AVX2 [`super::quantize_f32_reference`]: the same IEEE division, round half to even.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_f32(x: &[f32], scale: f32, zp: i32, out: &mut [u8]) {
    let n = x.len().min(out.len());
    let (sv, lim, zpv) = (_mm256_set1_ps(scale), _mm256_set1_ps(4_194_304.0), _mm256_set1_epi32(zp));
    let mut i = 0;
    while i + 16 <= n {
        let a = quantize8(x.as_ptr().add(i), sv, lim, zpv);
        let b = quantize8(x.as_ptr().add(i + 8), sv, lim, zpv);
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, pack16(a, b));
        i += 16;
    }
    super::quantize_f32_reference(&x[i..n], scale, zp, &mut out[i..n]);
}

/// im2col of `x − zp` as i16 (see [`super::im2col_q_reference`]).
#[target_feature(enable = "avx2")]
pub unsafe fn im2col_q(input: &[u8], zp: i32, g: &ConvGeometry, c_begin: usize, c_count: usize, cols: &mut [i16]) {
    assert!(cols.len() >= c_count * g.kernel[0] * g.kernel[1] * g.out_h * g.out_w);
    im2col_into::<false>(input, zp, g, c_begin, c_count, cols.as_mut_ptr() as *mut u8, cols.len());
}

/// im2col of the bytes themselves, padding = `zp` (the byte GEMM's input: it subtracts the
/// zero-point through its row sums, so a padded cell must hold `zp` to add 0).
#[target_feature(enable = "avx2")]
pub unsafe fn im2col_u8(input: &[u8], zp: i32, g: &ConvGeometry, cols: &mut [u8]) {
    assert!(cols.len() >= g.in_c * g.kernel[0] * g.kernel[1] * g.out_h * g.out_w);
    im2col_into::<true>(input, zp, g, 0, g.in_c, cols.as_mut_ptr(), cols.len());
}

/// The two im2col forms, in the `[(c·kh·kw) × (oh·ow)]` layout of [`super::im2col_q_reference`]:
/// `BYTES` = u8 copies padded with `zp`, else i16 `x − zp` padded with 0; `dst` holds `len`
/// elements of that type. Each row segment inside the input moves 16 values at a time (stride
/// 2: the even bytes of 32); strides other than 1 and 2 go element by element.
#[inline(always)]
unsafe fn im2col_into<const BYTES: bool>(input: &[u8], zp: i32, g: &ConvGeometry, c_begin: usize, c_count: usize, dst: *mut u8, len: usize) {
    let (oh, ow) = (g.out_h, g.out_w);
    let [kh, kw] = g.kernel;
    let sx = g.strides[1];
    let n = oh * ow;
    assert!(len >= c_count * kh * kw * n && input.len() >= (c_begin + c_count) * g.in_h * g.in_w);
    let zpv = _mm256_set1_epi16(zp as i16);
    // Per 128-bit lane: bytes 0,2,…,14 to the low half.
    let even = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1, 0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    let size = if BYTES { 1 } else { 2 };
    // Element `i` of the output, and `count` padding elements from `i`.
    let at = |i: usize| dst.add(i * size);
    let pad = |i: usize, count: usize| {
        if BYTES {
            std::ptr::write_bytes(dst.add(i), zp as u8, count)
        } else {
            std::ptr::write_bytes(dst.add(2 * i), 0, 2 * count)
        }
    };
    let end = len;
    let mut row = 0;
    for c in c_begin..c_begin + c_count {
        let plane = input.as_ptr().add(c * g.in_h * g.in_w);
        let plane_end = input.as_ptr().add(input.len());
        for ky in 0..kh {
            for kx in 0..kw {
                let (y0, y1) = ConvGeometry::valid_range(oh, g.in_h, g.strides[0], g.pad_top, ky * g.dilations[0]);
                let (x0, x1) = ConvGeometry::valid_range(ow, g.in_w, sx, g.pad_left, kx * g.dilations[1]);
                let base = row * n;
                for oy in 0..oh {
                    let d = base + oy * ow;
                    if oy < y0 || oy >= y1 || x0 >= x1 {
                        pad(d, ow);
                        continue;
                    }
                    let iy = oy * g.strides[0] + ky * g.dilations[0] - g.pad_top;
                    let src = plane.add(iy * g.in_w + x0 * sx + kx * g.dilations[1] - g.pad_left);
                    let mut ox = x0;
                    let mut s = src;
                    while ox < x1 {
                        let reads = if sx == 2 { 32 } else { 16 };
                        if (sx == 1 || sx == 2) && d + ox + 16 <= end && s.add(reads) <= plane_end {
                            let bytes = if sx == 1 {
                                _mm_loadu_si128(s as *const __m128i)
                            } else {
                                let t = _mm256_shuffle_epi8(_mm256_loadu_si256(s as *const __m256i), even);
                                _mm256_castsi256_si128(_mm256_permute4x64_epi64(t, 0b1000))
                            };
                            // Lanes past x1 are overwritten below (padding) or by the next segment.
                            if BYTES {
                                _mm_storeu_si128(at(d + ox) as *mut __m128i, bytes);
                            } else {
                                _mm256_storeu_si256(at(d + ox) as *mut __m256i, _mm256_sub_epi16(_mm256_cvtepu8_epi16(bytes), zpv));
                            }
                            ox += 16;
                            s = s.add(16 * sx);
                        } else {
                            if BYTES {
                                *at(d + ox) = *s;
                            } else {
                                *(at(d + ox) as *mut i16) = (*s as i32 - zp) as i16;
                            }
                            ox += 1;
                            s = s.add(sx);
                        }
                    }
                    pad(d, x0);
                    pad(d + x1, ow - x1);
                }
                row += 1;
            }
        }
    }
}

/// AVX2 [`super::clamp_channels_u8_reference`]: 32 bytes per `vpminub`.
#[target_feature(enable = "avx2")]
pub unsafe fn clamp_channels_u8(data: &mut [u8], inner: usize, qmax: &[u8]) {
    for (i, chunk) in data.chunks_mut(inner.max(1)).enumerate() {
        let m = qmax[i % qmax.len()];
        let (p, len) = (chunk.as_mut_ptr(), chunk.len());
        let mv = _mm256_set1_epi8(m as i8);
        let mut j = 0;
        while j + 32 <= len {
            let v = _mm256_loadu_si256(p.add(j) as *const __m256i);
            _mm256_storeu_si256(p.add(j) as *mut __m256i, _mm256_min_epu8(v, mv));
            j += 32;
        }
        if j + 16 <= len {
            let v = _mm_loadu_si128(p.add(j) as *const __m128i);
            _mm_storeu_si128(p.add(j) as *mut __m128i, _mm_min_epu8(v, _mm256_castsi256_si128(mv)));
            j += 16;
        }
        while j < len {
            *p.add(j) = (*p.add(j)).min(m);
            j += 1;
        }
    }
}
