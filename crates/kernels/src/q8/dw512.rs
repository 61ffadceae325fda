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

/// Whether the CPU runs this kernel: AVX-512F + AVX512-VNNI, as the byte GEMM's 512-bit tiles
/// (`SUBQ_SIMD=avxvnni` switches both off, see [`super::vnni512_available`]), and AVX-512BW for
/// the 16-bit unpacks.
pub fn available() -> bool {
    static BW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::vnni512_available() && *BW.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bw"))
}

/// Geometry this kernel computes: depthwise, channels a multiple of 16, dilation 1, kernels up
/// to 5×5, input and output planes of at least 16 pixels (the transposes move 16 pixels at a
/// time).
pub fn applies(g: &ConvGeometry) -> bool {
    let (inp, outp) = (g.in_h * g.in_w, g.out_h * g.out_w);
    g.is_depthwise() && g.out_c.is_multiple_of(LANES) && g.dilations == [1, 1] && inp >= 16 && outp >= 16 && g.kernel[0] * g.kernel[1] <= 25
}

/// Where the engine prefers this kernel to the planar one. Measured per layer on the bundled
/// models (`subq bench --profile`, 1 thread; BENCHMARKS.md, session 12): it wins on planes of
/// up to 10×10 (0.36–0.72× the planar kernel's time on 5×5 and 10×10 outputs), on 5×5 kernels
/// up to 14×14 (0.73–0.82×), and on stride 2 from inputs of up to 20×20 (0.52–0.84×); the
/// pixel-major copies of a larger input cost more than it saves (1.14–1.7×).
pub fn chosen(g: &ConvGeometry) -> bool {
    let (inp, outp, taps) = (g.in_h * g.in_w, g.out_h * g.out_w, g.kernel[0] * g.kernel[1]);
    applies(g)
        && match g.strides {
            [1, 1] => outp <= 100 || (taps == 25 && outp <= 196),
            [2, 2] => taps == 9 && inp <= 400,
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

/// The output stage: per channel, the float form where proven exact (`ok`), else the
/// reference's i64 form (see [`super::FloatEpilogue`]).
pub struct Stage<'a> {
    pub scale: &'a [f32],
    pub offset: &'a [f32],
    pub hi: &'a [f32],
    pub lo: f32,
    pub ok: &'a [bool],
    pub cap: &'a [u8],
    pub mult: &'a [i64],
    pub bias: &'a [i64],
    pub shift: u32,
    pub zp: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl Stage<'_> {
    /// One output byte, as the reference computes it.
    fn scalar(&self, c: usize, acc: i32) -> u8 {
        if self.ok[c] {
            let y = (acc as f32) * self.scale[c] + self.offset[c];
            y.max(self.lo).min(self.hi[c]) as i32 as u8
        } else {
            let v = (self.zp as i64 + super::round_shift(self.bias[c] + acc as i64 * self.mult[c], self.shift)).clamp(self.qmin as i64, self.qmax as i64);
            (v as u8).min(self.cap[c])
        }
    }
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
pub unsafe fn depthwise(input: &[u8], zp: i32, packed: &[i32], g: &ConvGeometry, st: &Stage, out: &mut [u8], xbuf: &mut Vec<i16>, obuf: &mut Vec<u8>) {
    assert!(applies(g));
    match g.kernel {
        [3, 3] => depthwise_k::<9>(input, zp, packed, g, st, out, xbuf, obuf),
        [5, 5] => depthwise_k::<25>(input, zp, packed, g, st, out, xbuf, obuf),
        _ => depthwise_k::<0>(input, zp, packed, g, st, out, xbuf, obuf),
    }
}

/// [`depthwise`] with `T` taps known at compile time (0: read from `g`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_k<const T: usize>(input: &[u8], zp: i32, packed: &[i32], g: &ConvGeometry, st: &Stage, out: &mut [u8], xbuf: &mut Vec<i16>, obuf: &mut Vec<u8>) {
    let c = g.out_c;
    let cp = padded(c);
    let [kh, kw] = g.kernel;
    let (ih, iw, oh, ow) = (g.in_h, g.in_w, g.out_h, g.out_w);
    let (sy, sx) = (g.strides[0], g.strides[1]);
    let (pt, pl) = (g.pad_top, g.pad_left);
    let taps = if T > 0 { T } else { kh * kw };
    let pairs = taps.div_ceil(2);
    assert!(taps == kh * kw && taps <= 25);
    assert!(input.len() >= c * ih * iw && out.len() >= c * oh * ow && packed.len() >= pairs * cp);
    assert!([st.scale.len(), st.offset.len(), st.hi.len(), st.ok.len(), st.cap.len(), st.mult.len(), st.bias.len()].iter().all(|&l| l >= c));
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
            let t0 = transpose16(&std::array::from_fn(|i| _mm_loadu_si128(src.add((c0 + i) * inp + p0) as *const __m128i)));
            let t1 = if c0 + LANES < c { transpose16(&std::array::from_fn(|i| _mm_loadu_si128(src.add((c0 + LANES + i) * inp + p0) as *const __m128i))) } else { [_mm_set1_epi8(zp as u8 as i8); 16] };
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
    let lo = _mm512_set1_ps(st.lo);
    let wp_ = packed.as_ptr();
    for c0 in (0..c).step_by(2 * LANES) {
        let second = c0 + LANES < c;
        let ok0 = st.ok[c0..c0 + LANES].iter().all(|&k| k);
        let ok1 = second && st.ok[c0 + LANES..c0 + 2 * LANES].iter().all(|&k| k);
        let vecs = |h: usize| (_mm512_loadu_ps(st.scale.as_ptr().add(h)), _mm512_loadu_ps(st.offset.as_ptr().add(h)), _mm512_loadu_ps(st.hi.as_ptr().add(h)));
        let (s0, o0, h0) = vecs(c0);
        let (s1, o1, h1) = if second { vecs(c0 + LANES) } else { (s0, o0, h0) };
        // Two output pixels per step: four independent accumulator chains (one pixel's chain,
        // 5 `vpdpwssd` then the float stage, is too long for the out-of-order window alone).
        let npix = oh * ow;
        let pix_base = |p: usize| xb.add(((p / ow) * sy * wp + (p % ow) * sx) * cp + c0) as *const i16;
        let mut p = 0;
        while p < npix {
            let two = p + 1 < npix;
            let (b0, b1) = (pix_base(p), pix_base(if two { p + 1 } else { p }));
            let z = _mm512_setzero_si512();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            for t in 0..pairs {
                let w = wp_.add(t * cp + c0);
                let (oa, ob_) = (tap_off[2 * t], tap_off[2 * t + 1]);
                let has_b = 2 * t + 1 < taps;
                let xa = _mm512_loadu_si512(b0.add(oa) as *const __m512i);
                let xb_ = if has_b { _mm512_loadu_si512(b0.add(ob_) as *const __m512i) } else { z };
                let ya = _mm512_loadu_si512(b1.add(oa) as *const __m512i);
                let yb = if has_b { _mm512_loadu_si512(b1.add(ob_) as *const __m512i) } else { z };
                a0 = dpwssd(a0, _mm512_unpacklo_epi16(xa, xb_), w);
                a1 = dpwssd(a1, _mm512_unpackhi_epi16(xa, xb_), w.add(LANES));
                a2 = dpwssd(a2, _mm512_unpacklo_epi16(ya, yb), w);
                a3 = dpwssd(a3, _mm512_unpackhi_epi16(ya, yb), w.add(LANES));
            }
            let dst = ob.add(p * c + c0);
            store_stage(st, c0, ok0, a0, s0, o0, lo, h0, dst);
            if second {
                store_stage(st, c0 + LANES, ok1, a1, s1, o1, lo, h1, dst.add(LANES));
            }
            if two {
                let dst = dst.add(c);
                store_stage(st, c0, ok0, a2, s0, o0, lo, h0, dst);
                if second {
                    store_stage(st, c0 + LANES, ok1, a3, s1, o1, lo, h1, dst.add(LANES));
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
            let r: [__m128i; 16] = std::array::from_fn(|i| _mm_loadu_si128(ob.add((p0 + i) * c + c0) as *const __m128i));
            let t = transpose16(&r);
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

/// 16 channels' output bytes from their accumulators: the float stage when all 16 have it
/// (`ok`), else the reference per lane.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_stage(st: &Stage, c0: usize, ok: bool, acc: __m512i, s: __m512, o: __m512, lo: __m512, hi: __m512, dst: *mut u8) {
    if ok {
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), s), o);
        // In [lo, hi] ⊂ [0, 255] after the clamps, so truncation and the unsigned saturating
        // narrow are exact.
        let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
        _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(y)));
    } else {
        let mut lanes = [0i32; LANES];
        _mm512_storeu_si512(lanes.as_mut_ptr() as *mut __m512i, acc);
        store_scalar(st, c0, &lanes, dst);
    }
}

/// The reference stage lane by lane (blocks with a channel that has no exact float form).
#[inline(never)]
unsafe fn store_scalar(st: &Stage, c0: usize, lanes: &[i32; LANES], dst: *mut u8) {
    for (l, &a) in lanes.iter().enumerate() {
        *dst.add(l) = st.scalar(c0 + l, a);
    }
}
