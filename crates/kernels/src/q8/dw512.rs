//! Depthwise convolution with the channels in the vector lanes (AVX-512), for small planes.
//!
//! Why: the planar kernel ([`super::avx2::depthwise`]) vectorizes along one channel's output
//! rows. A 5×5 or 10×10 plane fills few lanes and pays the channel's set-up (padded plane,
//! weight broadcasts, output-stage constants) for only 25–100 outputs: MobileNetV2's depthwise
//! layers ran at 4–11 G multiply-adds/s there against 19–24 on 40×40 and 80×80 planes. Here
//! 16 channels share every instruction, whatever the plane.
//!
//! The engine keeps NCHW activations, so the input is transposed into a padded pixel-major
//! buffer and the output back, through 16×16 byte transposes (about 4 instructions per 16
//! bytes). Session 9's 256-bit channel-blocked attempt transposed widened i32 values and lost
//! its gain to them.
//!
//! Arithmetic: exact, as the reference's. The input is widened once to i16 `x − zp` (padding 0).
//! Two taps share one `vpdpwssd`: each i32 lane holds the i16 pair `(x_2t, x_2t+1)` of one
//! channel, times the weight pair `(d_2t, d_2t+1)`; 32 channels per step.

use std::arch::x86_64::*;

use crate::ConvGeometry;

/// Lanes (channels) per vector.
const LANES: usize = 16;

/// Whether the CPU runs this kernel: the byte GEMM's 512-bit check (AVX-512F/BW/VL +
/// AVX512-VNNI; BW covers the 16-bit unpacks), so `SUBQ_SIMD=avxvnni` switches both off.
pub fn available() -> bool {
    super::vnni512_available()
}

/// Geometry this kernel computes: depthwise, channels a multiple of 16, dilation 1, kernels up
/// to 5×5, input and output planes of at least 16 pixels (the transposes move 16 pixels at a
/// time).
pub fn applies(g: &ConvGeometry) -> bool {
    let (inp, outp) = (g.in_h * g.in_w, g.out_h * g.out_w);
    g.is_depthwise() && g.out_c.is_multiple_of(LANES) && g.dilations == [1, 1] && inp >= 16 && outp >= 16 && g.kernel[0] * g.kernel[1] <= 25
}

/// Where the engine prefers this kernel to the planar one. Measured per layer on the bundled
/// models (`subq bench --profile`, 1 thread; BENCHMARKS.md, sessions 12 and 13): it wins on
/// planes of up to 10×10 (0.36–0.72× the planar kernel's time on 5×5 and 10×10 outputs), on
/// 14×14 (5×5 kernels 0.73–0.82×, 3×3 0.86×), on 3×3 at stride 2 from inputs of up to 20×20
/// (0.52–0.84×) and on 5×5 at stride 2 from 14×14 (0.76×); the pixel-major copies of a larger
/// input cost more than it saves (1.14–1.7×; 3×3 at stride 2 from 28×28 1.3×). The same holds for
/// split layers: 2 parts on 80×80 took 1.43× the planar kernel's time, on 10×10 and 5×5 the
/// same or less.
pub fn chosen(g: &ConvGeometry) -> bool {
    let (inp, outp, taps) = (g.in_h * g.in_w, g.out_h * g.out_w, g.kernel[0] * g.kernel[1]);
    applies(g)
        && match g.strides {
            [1, 1] => outp <= 196,
            [2, 2] => (taps == 9 && inp <= 400) || (taps == 25 && inp <= 196),
            _ => false,
        }
}

/// Channels padded to whole 32-channel blocks (the kernel's step).
fn padded(c: usize) -> usize {
    c.div_ceil(2 * LANES) * 2 * LANES
}

/// The weights `d = w − zw` (OIHW, one input channel per group) as tap pairs, channel-minor:
/// `[ceil(kh·kw / 2)][padded(out_c)]` i32, each the i16 pair `(d_2t, d_2t+1)` (high half 0 past
/// the last tap; 0 for the padding channels).
pub fn pack(weight: &[i16], g: &ConvGeometry) -> Vec<i32> {
    let (c, taps) = (g.out_c, g.kernel[0] * g.kernel[1]);
    let (pairs, cp) = (taps.div_ceil(2), padded(c));
    let mut v = vec![0i32; pairs * cp];
    for ch in 0..c {
        let d = &weight[ch * taps..(ch + 1) * taps];
        for t in 0..pairs {
            let lo = d[2 * t] as u16 as u32;
            let hi = if 2 * t + 1 < taps { d[2 * t + 1] as u16 as u32 } else { 0 };
            v[t * cp + ch] = (lo | hi << 16) as i32;
        }
    }
    v
}

/// A single-part layer's float output stage ([`super::FloatEpilogue`]): per channel, where
/// proven equal to the reference (`ok`).
pub struct Float<'a> {
    pub scale: &'a [f32],
    pub offset: &'a [f32],
    pub hi: &'a [f32],
    pub lo: f32,
    pub ok: &'a [bool],
}

/// The output stage of `P` weight parts: per channel `c`,
/// `min(clamp(zp + round_shift(bias[c] + Σ_p acc_p·mult[p][c], shift), qmin, qmax), cap[c])`,
/// the reference's. The multipliers must fit in i32 (they are multiplied with `vpmuldq`). A
/// 16-channel block whose channels all have a float form takes it instead.
pub struct Stage<'a, const P: usize> {
    pub float: Option<Float<'a>>,
    pub mult: [&'a [i64]; P],
    pub bias: &'a [i64],
    pub shift: u32,
    pub zp: i32,
    pub qmin: i32,
    pub qmax: i32,
    pub cap: Option<&'a [u8]>,
}

/// 16×16 byte transpose: `out[j]` byte `i` = `r[i]` byte `j`. Four rounds of unpacks (8-, 16-,
/// 32-, 64-bit), each pairing rows twice as far apart.
#[inline(always)]
unsafe fn transpose16(r: &[__m128i; 16]) -> [__m128i; 16] {
    let z = _mm_setzero_si128();
    // s1[2i], s1[2i + 1]: rows 2i and 2i + 1 interleaved, columns 0..8 and 8..16.
    let mut s1 = [z; 16];
    for i in 0..8 {
        s1[2 * i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
        s1[2 * i + 1] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
    }
    // s2[4i + g]: rows 4i..4i + 4 of columns 4g..4g + 4.
    let mut s2 = [z; 16];
    for i in 0..4 {
        for h in 0..2 {
            let (a, b) = (s1[4 * i + h], s1[4 * i + 2 + h]);
            s2[4 * i + 2 * h] = _mm_unpacklo_epi16(a, b);
            s2[4 * i + 2 * h + 1] = _mm_unpackhi_epi16(a, b);
        }
    }
    // s3[8i + q]: rows 8i..8i + 8 of columns 2q, 2q + 1.
    let mut s3 = [z; 16];
    for i in 0..2 {
        for g in 0..4 {
            let (a, b) = (s2[8 * i + g], s2[8 * i + 4 + g]);
            s3[8 * i + 2 * g] = _mm_unpacklo_epi32(a, b);
            s3[8 * i + 2 * g + 1] = _mm_unpackhi_epi32(a, b);
        }
    }
    let mut out = [z; 16];
    for q in 0..8 {
        out[2 * q] = _mm_unpacklo_epi64(s3[q], s3[8 + q]);
        out[2 * q + 1] = _mm_unpackhi_epi64(s3[q], s3[8 + q]);
    }
    out
}

/// 16 rows of 16 bytes, `stride` apart. Loops here and below, not `array::from_fn`: closures
/// do not inherit `target_feature`, and where the compiler did not inline one its intrinsics
/// stayed calls.
#[inline(always)]
unsafe fn load16(p: *const u8, stride: usize) -> [__m128i; 16] {
    let mut r = [_mm_setzero_si128(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm_loadu_si128(p.add(i * stride) as *const __m128i);
    }
    r
}

/// First pixels of the 16-pixel blocks covering `n` ≥ 16 pixels: the last block is moved back
/// to end at `n` (it rewrites a few pixels with the same bytes).
fn pixel_blocks(n: usize) -> impl Iterator<Item = usize> {
    (0..n.div_ceil(16)).map(move |b| (b * 16).min(n - 16))
}

/// Depthwise conv of one CHW image: `input` `[c × ih·iw]` (zero-point `zp`), `packed` from
/// [`pack`], `out` `[c × oh·ow]`; `xbuf` and `obuf` are scratch (the padded pixel-major input
/// as i16 `x − zp`, the pixel-major output).
///
/// # Safety
/// The CPU must have AVX-512F/BW and AVX512-VNNI ([`available`]).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise<const P: usize>(input: &[u8], zp: i32, packed: [&[i32]; P], g: &ConvGeometry, st: &Stage<P>, out: &mut [u8], xbuf: &mut Vec<i16>, obuf: &mut Vec<u8>) {
    assert!(applies(g));
    match g.kernel {
        [3, 3] => depthwise_k::<P, 9>(input, zp, packed, g, st, out, xbuf, obuf),
        [5, 5] => depthwise_k::<P, 25>(input, zp, packed, g, st, out, xbuf, obuf),
        _ => depthwise_k::<P, 0>(input, zp, packed, g, st, out, xbuf, obuf),
    }
}

/// [`depthwise`] with `T` taps known at compile time (0: read from `g`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_k<const P: usize, const T: usize>(input: &[u8], zp: i32, packed: [&[i32]; P], g: &ConvGeometry, st: &Stage<P>, out: &mut [u8], xbuf: &mut Vec<i16>, obuf: &mut Vec<u8>) {
    let c = g.out_c;
    let cp = padded(c);
    let [kh, kw] = g.kernel;
    let (ih, iw, oh, ow) = (g.in_h, g.in_w, g.out_h, g.out_w);
    let (sy, sx) = (g.strides[0], g.strides[1]);
    let (pt, pl) = (g.pad_top, g.pad_left);
    let taps = if T > 0 { T } else { kh * kw };
    let pairs = taps.div_ceil(2);
    assert!(taps == kh * kw && taps <= 25);
    assert!(input.len() >= c * ih * iw && out.len() >= c * oh * ow && packed.iter().all(|w| w.len() >= pairs * cp));
    assert!(st.bias.len() >= c && st.cap.is_none_or(|v| v.len() >= c) && st.mult.iter().all(|m| m.len() >= c && m[..c].iter().all(|&v| v == v as i32 as i64)));
    assert!(st.float.as_ref().is_none_or(|f| [f.scale.len(), f.offset.len(), f.hi.len(), f.ok.len()].iter().all(|&l| l >= c)));
    // Padded plane: every cell a tap reads, and every input pixel.
    let hp = ((oh - 1) * sy + kh).max(pt + ih);
    let wp = ((ow - 1) * sx + kw).max(pl + iw);
    // Both buffers start on a cache line: a pixel's 32 values (64 bytes) are then one line, and
    // no load or store of the kernel splits across two (unaligned, most of them did: 3× slower).
    if xbuf.len() < hp * wp * cp + 32 {
        xbuf.resize(hp * wp * cp + 32, 0);
    }
    if obuf.len() < oh * ow * c + 64 {
        obuf.resize(oh * ow * c + 64, 0);
    }
    let xb = xbuf.as_mut_ptr();
    let xb = xb.add((64 - xb as usize % 64) % 64 / 2);
    let ob = obuf.as_mut_ptr();
    let ob = ob.add((64 - ob as usize % 64) % 64);
    // Border cells are padding: 0 (= x − zp of a padded cell). The interior is overwritten below.
    for y in 0..hp {
        let row = xb.add(y * wp * cp);
        if y < pt || y >= pt + ih {
            std::ptr::write_bytes(row, 0, wp * cp);
        } else {
            std::ptr::write_bytes(row, 0, pl * cp);
            std::ptr::write_bytes(row.add((pl + iw) * cp), 0, (wp - pl - iw) * cp);
        }
    }

    // Input: 32 channels × 16 pixels at a time, channel rows → pixel rows of i16 `x − zp`.
    // In a pixel's 32 values, word `8k + j` (k < 4, j < 4) is channel `4k + j` and word
    // `8k + 4 + j` channel `16 + 4k + j`: then `vpunpcklwd` / `vpunpckhwd` of two taps give the
    // tap pairs of channels 0..16 and 16..32 in order.
    let src = input.as_ptr();
    let inp = ih * iw;
    let zpw = _mm512_set1_epi16(zp as i16);
    for p0 in pixel_blocks(inp) {
        let mut dst = [std::ptr::null_mut::<i16>(); 16];
        let (mut y, mut x) = (p0 / iw, p0 % iw);
        for d in dst.iter_mut() {
            *d = xb.add(((y + pt) * wp + x + pl) * cp);
            x += 1;
            if x == iw {
                x = 0;
                y += 1;
            }
        }
        for c0 in (0..c).step_by(2 * LANES) {
            let t0 = transpose16(&load16(src.add(c0 * inp + p0), inp));
            let t1 = if c0 + LANES < c { transpose16(&load16(src.add((c0 + LANES) * inp + p0), inp)) } else { [_mm_set1_epi8(zp as u8 as i8); 16] };
            for j in 0..16 {
                let bytes = _mm256_set_m128i(_mm_unpackhi_epi32(t0[j], t1[j]), _mm_unpacklo_epi32(t0[j], t1[j]));
                let v = _mm512_sub_epi16(_mm512_cvtepu8_epi16(bytes), zpw);
                _mm512_storeu_si512(dst[j].add(c0) as *mut __m512i, v);
            }
        }
    }

    let mut tap_off = [0usize; 26];
    for ky in 0..kh {
        for kx in 0..kw {
            tap_off[ky * kw + kx] = (ky * wp + kx) * cp;
        }
    }
    let i64s = I64Stage::new(st);
    for c0 in (0..c).step_by(2 * LANES) {
        let second = c0 + LANES < c;
        let f0 = FloatBlock::new(st, c0);
        let f1 = if second { FloatBlock::new(st, c0 + LANES) } else { None };
        // Two output pixels per step: 4·P independent accumulator chains.
        let npix = oh * ow;
        let pix_base = |p: usize| xb.add(((p / ow) * sy * wp + (p % ow) * sx) * cp + c0) as *const i16;
        let mut p = 0;
        while p < npix {
            let two = p + 1 < npix;
            let (b0, b1) = (pix_base(p), pix_base(if two { p + 1 } else { p }));
            let z = _mm512_setzero_si512();
            // acc[q]: part q's (pixel 0 low half, pixel 0 high, pixel 1 low, pixel 1 high).
            let mut acc = [[z; 4]; P];
            for t in 0..pairs {
                let (oa, ob_) = (tap_off[2 * t], tap_off[2 * t + 1]);
                let has_b = 2 * t + 1 < taps;
                let xa = _mm512_loadu_si512(b0.add(oa) as *const __m512i);
                let xb_ = if has_b { _mm512_loadu_si512(b0.add(ob_) as *const __m512i) } else { z };
                let ya = _mm512_loadu_si512(b1.add(oa) as *const __m512i);
                let yb = if has_b { _mm512_loadu_si512(b1.add(ob_) as *const __m512i) } else { z };
                let x = [_mm512_unpacklo_epi16(xa, xb_), _mm512_unpackhi_epi16(xa, xb_), _mm512_unpacklo_epi16(ya, yb), _mm512_unpackhi_epi16(ya, yb)];
                for (aq, wq) in acc.iter_mut().zip(&packed) {
                    let w = wq.as_ptr().add(t * cp + c0);
                    aq[0] = dpwssd(aq[0], x[0], w);
                    aq[1] = dpwssd(aq[1], x[1], w.add(LANES));
                    aq[2] = dpwssd(aq[2], x[2], w);
                    aq[3] = dpwssd(aq[3], x[3], w.add(LANES));
                }
            }
            for (px, dst) in [(0, ob.add(p * c + c0)), (1, ob.add((p + 1) * c + c0))].into_iter().take(if two { 2 } else { 1 }) {
                let mut lo = [z; P];
                let mut hi = [z; P];
                for q in 0..P {
                    (lo[q], hi[q]) = (acc[q][2 * px], acc[q][2 * px + 1]);
                }
                store16(&i64s, &f0, c0, lo, dst);
                if second {
                    store16(&i64s, &f1, c0 + LANES, hi, dst.add(LANES));
                }
            }
            p += 2;
        }
    }

    // Output: pixel rows → channel rows, 16 × 16 at a time.
    let outp = oh * ow;
    let dst = out.as_mut_ptr();
    for c0 in (0..c).step_by(LANES) {
        for p0 in pixel_blocks(outp) {
            let t = transpose16(&load16(ob.add(p0 * c + c0), c));
            for (j, v) in t.iter().enumerate() {
                _mm_storeu_si128(dst.add((c0 + j) * outp + p0) as *mut __m128i, *v);
            }
        }
    }
}

/// `acc + Σ pairs x·w` (`vpdpwssd`, weights read from `w`). In assembly: through the intrinsic,
/// LLVM split it into `vpmaddwd` + `vpaddd` and kept the weights in spilled registers.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dpwssd(acc: __m512i, x: __m512i, w: *const i32) -> __m512i {
    let mut acc = acc;
    std::arch::asm!("vpdpwssd {a}, {x}, zmmword ptr [{w}]", a = inout(zmm_reg) acc, x = in(zmm_reg) x, w = in(reg) w, options(pure, readonly, nostack, preserves_flags));
    acc
}

/// The float stage's vectors for a 16-channel block whose channels all have it.
struct FloatBlock {
    s: __m512,
    o: __m512,
    lo: __m512,
    hi: __m512,
}

impl FloatBlock {
    #[inline(always)]
    unsafe fn new<const P: usize>(st: &Stage<P>, c0: usize) -> Option<FloatBlock> {
        let f = st.float.as_ref()?;
        f.ok[c0..c0 + LANES].iter().all(|&k| k).then(|| FloatBlock { s: _mm512_loadu_ps(f.scale.as_ptr().add(c0)), o: _mm512_loadu_ps(f.offset.as_ptr().add(c0)), lo: _mm512_set1_ps(f.lo), hi: _mm512_loadu_ps(f.hi.as_ptr().add(c0)) })
    }
}

/// The exact i64 stage's constants.
struct I64Stage<'a, const P: usize> {
    st: &'a Stage<'a, P>,
    half: __m512i,
    shift: __m128i,
    zp: __m512i,
    qmin: __m512i,
    qmax: __m512i,
}

impl<'a, const P: usize> I64Stage<'a, P> {
    #[inline(always)]
    unsafe fn new(st: &'a Stage<'a, P>) -> Self {
        let half = if st.shift == 0 { 0 } else { 1i64 << (st.shift - 1) };
        I64Stage { st, half: _mm512_set1_epi64(half), shift: _mm_cvtsi64_si128(st.shift as i64), zp: _mm512_set1_epi64(st.zp as i64), qmin: _mm512_set1_epi64(st.qmin as i64), qmax: _mm512_set1_epi64(st.qmax as i64) }
    }

    /// 8 channels from `c`: `acc[q]` holds part q's accumulators as i64 lanes.
    #[inline(always)]
    unsafe fn bytes8(&self, c: usize, acc: [__m512i; P]) -> __m128i {
        let st = self.st;
        let mut x = _mm512_loadu_si512(st.bias.as_ptr().add(c) as *const __m512i);
        for (a, m) in acc.iter().zip(&st.mult) {
            x = _mm512_add_epi64(x, _mm512_mul_epi32(*a, _mm512_loadu_si512(m.as_ptr().add(c) as *const __m512i)));
        }
        // round_shift: |x| + half, shifted, the sign put back (ties away from zero). Where every
        // negative x ends at qmin (qmin ≥ zp, a ReLU'd output), floor((x + half) / 2^shift) is
        // equal after the clamps: both are ≤ 0 for x < 0, and equal for x ≥ 0.
        let r = if st.shift == 0 {
            x
        } else if st.qmin >= st.zp {
            _mm512_sra_epi64(_mm512_add_epi64(x, self.half), self.shift)
        } else {
            let neg = _mm512_cmplt_epi64_mask(x, _mm512_setzero_si512());
            let r = _mm512_srl_epi64(_mm512_add_epi64(_mm512_abs_epi64(x), self.half), self.shift);
            _mm512_mask_sub_epi64(r, neg, _mm512_setzero_si512(), r)
        };
        let mut v = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(r, self.zp), self.qmin), self.qmax);
        if let Some(cap) = st.cap {
            v = _mm512_min_epi64(v, _mm512_cvtepu8_epi64(_mm_loadl_epi64(cap.as_ptr().add(c) as *const __m128i)));
        }
        _mm512_cvtepi64_epi8(v)
    }
}

/// 16 channels' output bytes from the parts' accumulators: the float stage when the block has
/// it (single part), else the exact i64 stage.
#[inline(always)]
unsafe fn store16<const P: usize>(i64s: &I64Stage<P>, f: &Option<FloatBlock>, c0: usize, acc: [__m512i; P], dst: *mut u8) {
    if let (Some(f), 1) = (f, P) {
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[0]), f.s), f.o);
        // In [lo, hi] ⊂ [0, 255] after the clamps, so truncation and the unsigned saturating
        // narrow are exact.
        let y = _mm512_min_ps(_mm512_max_ps(y, f.lo), f.hi);
        _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(y)));
        return;
    }
    let (mut a_lo, mut a_hi) = ([_mm512_setzero_si512(); P], [_mm512_setzero_si512(); P]);
    for q in 0..P {
        a_lo[q] = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc[q]));
        a_hi[q] = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(acc[q]));
    }
    let lo = i64s.bytes8(c0, a_lo);
    let hi = i64s.bytes8(c0 + 8, a_hi);
    _mm_storeu_si128(dst as *mut __m128i, _mm_unpacklo_epi64(lo, hi));
}
