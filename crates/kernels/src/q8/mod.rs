//! Integer kernels of the int8 engine (scalar reference versions).
//!
//! Conventions: activations are uint8 with a zero-point; weights arrive as `w − zero_point` in
//! i16 (so uint8 and int8 weights share one path); accumulation is exact in i32; results are
//! requantized once with [`Requant`] and clamped to the output range (which is how ReLU/ReLU6
//! are fused: the output grid saturates where the activation clamps).

use crate::ConvGeometry;

mod pack;
pub use pack::{amx_available, byte_gemm_min_k, AMX_MIN_K, byte_pair, pack_b8, pack_b_i16, pack_b_u8, vnni512_available, vnni_available, Packed8, PackedWeights, BYTE_GEMM_MIN_K, BYTE_GEMM_MIN_K_VNNI, BYTE_GEMM_MIN_K_VNNI512, GEMV_MAX_N, MR, MR8, NR, PANEL_SLACK, TILE_K, TILE_ROWS, W8_PAIR_MAX};

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod dw512;

mod dispatch;
pub use dispatch::{add_q8, clamp_channels_u8, conv_acc, conv_q8, conv_q8_clamped, conv_q8_epi, conv_q8_portable, global_avg_pool_q8, kernel_set, quantize_f32, requantize_u8, simd_level, SimdLevel};

/// Fixed-point multiplier: `apply(acc) = round(acc · multiplier / 2^shift)`, ties rounded away
/// from zero (as gemmlowp's RoundingDivideByPOT does). Multipliers are kept in [2^29, 2^30) so
/// that the sum of a few `acc · multiplier` products (|acc| < 2^31) stays inside i64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    pub multiplier: i64,
    pub shift: u32,
}

impl Requant {
    pub fn new(real: f64) -> Requant {
        Requant::common(&[real]).0[0]
    }

    /// Multipliers for several reals sharing one shift (the largest gets 30 significant bits):
    /// subtensor parts are summed in this common fixed-point domain and rounded once.
    pub fn common(reals: &[f64]) -> (Vec<Requant>, u32) {
        let max = reals.iter().cloned().fold(0.0f64, f64::max);
        if max <= 0.0 || !max.is_finite() {
            return (reals.iter().map(|_| Requant { multiplier: 0, shift: 0 }).collect(), 0);
        }
        // max · 2^shift ∈ [2^29, 2^30)
        let shift = (29 - max.log2().floor() as i32).clamp(0, 62) as u32;
        let scale = (shift as f64).exp2();
        (reals.iter().map(|&r| Requant { multiplier: (r * scale).round() as i64, shift }).collect(), shift)
    }

    #[inline]
    pub fn apply(self, acc: i64) -> i64 {
        round_shift(acc * self.multiplier, self.shift)
    }
}

/// `round(x / 2^shift)`, ties away from zero.
#[inline]
pub fn round_shift(x: i64, shift: u32) -> i64 {
    if shift == 0 {
        return x;
    }
    let half = 1i64 << (shift - 1);
    if x >= 0 { (x + half) >> shift } else { -((-x + half) >> shift) }
}

#[inline]
pub fn clamp_u8(v: i64, lo: i32, hi: i32) -> u8 {
    v.clamp(lo as i64, hi as i64) as u8
}

/// Output stage shared by conv and gemm: per output channel, `zp + requant(acc)` clamped.
#[derive(Clone, Debug)]
pub struct OutputStage {
    pub requant: Vec<Requant>,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl OutputStage {
    #[inline]
    pub fn finish(&self, channel: usize, acc: i64) -> u8 {
        let r = if self.requant.len() == 1 { self.requant[0] } else { self.requant[channel] };
        clamp_u8(self.zero_point as i64 + r.apply(acc), self.qmin, self.qmax)
    }
}

/// Subtract the input zero-point once, unfolding patches into [(c·kh·kw) × (oh·ow)] i16 columns.
/// Padding becomes 0, i.e. exactly the real value 0.
pub fn im2col_q_reference(input: &[u8], zp: i32, g: &ConvGeometry, c_begin: usize, c_count: usize, cols: &mut [i16]) {
    crate::im2col_with(input, g, c_begin, c_count, cols, 0, |x| x as i16 - zp as i16)
}

/// acc[m×n] += A[m×k] · B[k×n] in i32, row-major. The inner loop over n is contiguous and
/// branch-free so that the compiler vectorizes it.
pub fn gemm_i16_reference(m: usize, k: usize, n: usize, a: &[i16], b: &[i16], acc: &mut [i32]) {
    for i in 0..m {
        let row = &mut acc[i * n..(i + 1) * n];
        for p in 0..k {
            let w = a[i * k + p] as i32;
            if w == 0 {
                continue;
            }
            let brow = &b[p * n..(p + 1) * n];
            for (o, &x) in row.iter_mut().zip(brow) {
                *o += w * x as i32;
            }
        }
    }
}

/// The exact i32 accumulators `Σ (x − zp_in)·(w − zw)` of one conv part, `[out_c × oh·ow]`
/// (`weight` is `w − zw` in OIHW order). `acc` and `cols` are resized as needed.
pub fn conv_acc_reference(input: &[u8], zp_in: i32, weight: &[i16], g: &ConvGeometry, acc: &mut Vec<i32>, cols: &mut Vec<i16>) {
    let spatial = g.out_h * g.out_w;
    let (cin_g, cout_g, k) = (g.in_c / g.group, g.out_c / g.group, g.weights_per_output());
    acc.clear();
    acc.resize(g.out_c * spatial, 0);
    if g.is_depthwise() {
        depthwise_acc_reference(input, zp_in, weight, g, acc);
        return;
    }
    for grp in 0..g.group {
        cols.resize(k * spatial, 0);
        im2col_q_reference(input, zp_in, g, grp * cin_g, cin_g, cols);
        let w = &weight[grp * cout_g * k..(grp + 1) * cout_g * k];
        gemm_i16_reference(cout_g, k, spatial, w, cols, &mut acc[grp * cout_g * spatial..(grp + 1) * cout_g * spatial]);
    }
}

/// One weight part of a (possibly split) convolution: `w − zw` in OIHW order, its requantization
/// multipliers (per output channel or one) and optional int32 bias at this part's scale.
#[derive(Clone, Debug)]
pub struct ConvPart {
    pub weight: Vec<i16>,
    pub requant: Vec<Requant>,
    /// `weight` re-laid for the SIMD kernels (built once, by [`ConvPart::new`]).
    pub packed: PackedWeights,
    /// Pointwise convs: the byte-GEMM form, where the weights allow it.
    pub packed8: Option<Packed8>,
    /// Largest `|w − zw|`: at most 255 for weights on one uint8 grid, but `ConvPart::new` accepts
    /// any i16; the kernels derive their accumulator bounds, and with them the fast rounding
    /// path, from it.
    pub wmax: u32,
}

impl ConvPart {
    /// A part with its weights packed for geometry `g`.
    pub fn new(weight: Vec<i16>, requant: Vec<Requant>, g: &ConvGeometry) -> ConvPart {
        let packed = PackedWeights::new(&weight, g);
        // Dense convs (the stem) take the byte GEMM on 512 bits only, where it was measured.
        let dense8 = g.group == 1 && !g.is_pointwise() && vnni512_available();
        let packed8 = if (g.is_pointwise() || dense8) && g.out_h * g.out_w > GEMV_MAX_N && g.weights_per_output() >= byte_gemm_min_k() { Packed8::new(&weight, g.out_c, g.weights_per_output()) } else { None };
        let wmax = weight.iter().map(|d| d.unsigned_abs() as u32).max().unwrap_or(0);
        ConvPart { weight, requant, packed, packed8, wmax }
    }

    /// The requantization multiplier of output channel `c` (one for all channels, or per channel).
    #[inline]
    pub fn multiplier(&self, c: usize) -> i64 {
        if self.requant.len() == 1 { self.requant[0].multiplier } else { self.requant[c].multiplier }
    }
}

/// Integer convolution of one CHW uint8 image over one or more weight parts (subtensor split):
/// each part accumulates exactly in i32, the parts are combined in one fixed-point sum and
/// rounded once. `bias` is in the fixed-point domain of the parts (i64, already multiplied).
#[allow(clippy::too_many_arguments)]
pub fn conv_q8_reference(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    let spatial = g.out_h * g.out_w;
    scratch.fixed.clear();
    scratch.fixed.extend((0..g.out_c).flat_map(|c| std::iter::repeat_n(bias_fixed[c], spatial)));
    for part in parts {
        conv_acc_reference(input, zp_in, &part.weight, g, &mut scratch.acc, &mut scratch.cols);
        for c in 0..g.out_c {
            let m = part.multiplier(c);
            for (f, &a) in scratch.fixed[c * spatial..(c + 1) * spatial].iter_mut().zip(&scratch.acc[c * spatial..(c + 1) * spatial]) {
                *f += a as i64 * m;
            }
        }
    }
    for (o, &f) in out.iter_mut().zip(&scratch.fixed) {
        *o = clamp_u8(out_zp as i64 + round_shift(f, shift), qmin, qmax);
    }
}

/// The output stage of a single-part conv in f32, per output channel `c`:
/// `byte = trunc(min(max(f32(acc)·scale[c] + offset[c], lo), hi[c]))` (one rounding per f32
/// operation, no FMA), which AVX2 computes in 6 instructions per 8 accumulators instead of the
/// i64 fixed-point path's ~16 (`vpmuldq` pairs, sign-split rounding).
///
/// It is only ever used where it is *proven* equal to the reference stage
/// `min(clamp(zp + round_shift(bias[c] + acc·mult[c], shift), qmin, qmax), cmax[c])` on every
/// i32 accumulator ([`FloatEpilogue::new`]), or on every accumulator the channel can reach
/// ([`FloatEpilogue::for_accumulators`] with [`accumulator_bounds`]); `ok[c]` is false otherwise.
/// The proof: both functions are monotone non-decreasing in `acc` (i32 → f32 rounding,
/// multiplication by `scale ≥ 0`, the addition, min/max and truncation are all monotone) and
/// integer-valued, so they are equal on a range iff they are equal at its two ends and on both
/// sides of every point inside it where the reference changes value — at most 2·255 + 2 points
/// per channel, all checked.
///
/// f32 cannot always do it: with a real multiplier below ~2·10⁻³ the 255 change points are
/// often closer to an f32 rounding step than the 24-bit mantissa resolves. Such channels have
/// `ok[c] = false` and keep the i64 stage (capped at `cap[c]`) inside the same kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatEpilogue {
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    pub lo: f32,
    pub hi: Vec<f32>,
    /// Channels whose float stage is proven exact.
    pub ok: Vec<bool>,
    /// `min(qmax, cmax[c])`: the cap the i64 stage of a channel without a float form needs.
    pub cap: Vec<u8>,
}

impl FloatEpilogue {
    /// Output byte of channel `c` for accumulator `acc` (the AVX2 kernels compute exactly this);
    /// equal to the reference stage when `ok[c]`.
    #[inline]
    pub fn apply(&self, c: usize, acc: i32) -> u8 {
        let y = (acc as f32) * self.scale[c] + self.offset[c];
        // y ∈ [0, 255] after the clamp (lo, hi ≥ 0), so truncation is exact and in range.
        y.max(self.lo).min(self.hi[c]) as i32 as u8
    }

    /// The float stage for per-channel multipliers `mult` (length `out_c`), or `None` when no
    /// channel has a float form equal to the reference on all of i32 (then the i64 path runs).
    #[allow(clippy::too_many_arguments)]
    pub fn new(mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>) -> Option<FloatEpilogue> {
        Self::for_accumulators(mult, bias, shift, zp, qmin, qmax, cmax, None)
    }

    /// [`FloatEpilogue::new`], proven only on the accumulators each channel can reach:
    /// `acc_range[c]` (from [`accumulator_bounds`]) instead of all of i32. Only the change
    /// points inside the range must fall right, so some channels refused on i32 get a float form
    /// (MobileNetV2's subtensor stem: 32 of 32 instead of 29).
    #[allow(clippy::too_many_arguments)]
    pub fn for_accumulators(mult: &[i64], bias: &[i64], shift: u32, zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>, acc_range: Option<&[(i32, i32)]>) -> Option<FloatEpilogue> {
        if !(0..=255).contains(&qmin) || !(qmin..=255).contains(&qmax) || shift > 62 || bias.len() < mult.len() || cmax.is_some_and(|c| c.len() < mult.len()) || acc_range.is_some_and(|r| r.len() < mult.len()) {
            return None;
        }
        let n = mult.len();
        let mut e = FloatEpilogue { scale: Vec::with_capacity(n), offset: Vec::with_capacity(n), lo: qmin as f32, hi: Vec::with_capacity(n), ok: Vec::with_capacity(n), cap: Vec::with_capacity(n) };
        for (c, (&m, &b)) in mult.iter().zip(bias).enumerate() {
            let cap = cmax.map_or(255, |cm| cm[c] as i32);
            let range = acc_range.map_or((i32::MIN, i32::MAX), |r| r[c]);
            let so = float_channel(m, b, shift, zp, qmin, qmax, cap, range);
            let (s, o) = so.unwrap_or((0.0, 0.0));
            e.scale.push(s);
            e.offset.push(o);
            e.hi.push(qmax.min(cap) as f32);
            e.ok.push(so.is_some());
            e.cap.push(qmax.min(cap) as u8);
        }
        e.ok.iter().any(|&k| k).then_some(e)
    }
}

/// The accumulators each output channel of a conv can reach, `[min, max]`, for its weights
/// `w − zw` (OIHW) on input bytes of channel `i` in `in_range[i]` (one entry: every channel) at
/// zero point `zp_in`. Padding taps add 0, so 0 is always a reachable term. Saturates at the i32
/// bounds.
pub fn accumulator_bounds(weight: &[i16], g: &ConvGeometry, zp_in: i32, in_range: &[(u8, u8)]) -> Vec<(i32, i32)> {
    let (per, taps) = (g.weights_per_output(), g.kernel[0] * g.kernel[1]);
    let (cin_g, cout_g) = (g.in_c / g.group.max(1), g.out_c / g.group.max(1));
    (0..g.out_c)
        .map(|c| {
            let (mut lo, mut hi) = (0i64, 0i64);
            for (i, &w) in weight[c * per..(c + 1) * per].iter().enumerate() {
                let ic = c / cout_g.max(1) * cin_g + i / taps.max(1);
                let (l, h) = if in_range.len() == 1 { in_range[0] } else { in_range[ic] };
                let (a, b) = (((l as i32 - zp_in).min(0) as i64) * w as i64, ((h as i32 - zp_in).max(0) as i64) * w as i64);
                lo += a.min(b);
                hi += a.max(b);
            }
            (lo.max(i32::MIN as i64) as i32, hi.min(i32::MAX as i64) as i32)
        })
        .collect()
}

/// (scale, offset) of one channel's float stage, verified against the reference (see
/// [`FloatEpilogue`]).
#[allow(clippy::too_many_arguments)]
fn float_channel(m: i64, bias: i64, shift: u32, zp: i32, qmin: i32, qmax: i32, cap: i32, (alo, ahi): (i32, i32)) -> Option<(f32, f32)> {
    if m < 0 || m.unsigned_abs() >= 1 << 31 || bias.unsigned_abs() >= 1 << 61 || alo > ahi {
        return None;
    }
    let hi = qmax.min(cap);
    let reference = |acc: i64| -> i32 { ((zp as i64 + round_shift(bias + acc * m, shift)).clamp(qmin as i64, qmax as i64) as i32).min(cap) };
    let (amin, amax) = (alo as i64, ahi as i64);
    // The points where the reference changes value: the first accumulator reaching each level,
    // from a floating-point estimate corrected by exact evaluation.
    let mut points = vec![amin, amax];
    if m > 0 {
        let p2 = (shift as f64).exp2();
        for j in qmin + 1..=hi {
            let est = (((j - zp) as f64 - 0.5) * p2 - bias as f64) / m as f64;
            let mut t = est.ceil().clamp(amin as f64, amax as f64 + 1.0) as i64;
            let mut steps = 0;
            while t > amin && reference(t - 1) >= j {
                t -= 1;
                steps += 1;
                if steps > 64 {
                    return None;
                }
            }
            while t <= amax && reference(t) < j {
                t += 1;
                steps += 1;
                if steps > 64 {
                    return None;
                }
            }
            if t > amin && t <= amax {
                points.push(t);
                points.push(t - 1);
            }
        }
    }
    let s = (m as f64 / (shift as f64).exp2()) as f32;
    if !s.is_finite() {
        return None;
    }
    // Feasible offsets (in real arithmetic): where the reference is v, the float value must lie
    // in [v, v + 1), except where the clamps make a side irrelevant.
    let (mut olo, mut ohi) = (f64::NEG_INFINITY, f64::INFINITY);
    for &a in &points {
        let v = reference(a);
        let x = a as f32 as f64 * s as f64;
        if v > qmin {
            olo = olo.max(v as f64 - x);
        }
        if v < hi {
            ohi = ohi.min(v as f64 + 1.0 - x);
        }
    }
    let o0 = match (olo.is_finite(), ohi.is_finite()) {
        (true, true) => (olo + ohi) / 2.0,
        (true, false) => olo + 0.5,
        (false, true) => ohi - 0.5,
        (false, false) => 0.0,
    } as f32;
    let e = |o: f32| FloatEpilogue { scale: vec![s], offset: vec![o], lo: qmin as f32, hi: vec![hi as f32], ok: vec![true], cap: vec![hi as u8] };
    // The exact check, on the f32 arithmetic the kernels run (the midpoint can miss by an ulp).
    let mut o = o0;
    for i in 0..9 {
        let cand = e(o);
        if points.iter().all(|&a| cand.apply(0, a as i32) as i32 == reference(a)) {
            return Some((s, o));
        }
        // 0, +1, −1, +2, −2, … ulps around the midpoint.
        let k = (i + 2) / 2;
        let mut x = o0;
        for _ in 0..k {
            x = if i % 2 == 0 { x.next_down() } else { x.next_up() };
        }
        o = x;
    }
    None
}

/// Reusable buffers for [`conv_q8`].
#[derive(Default)]
pub struct Scratch {
    pub cols: Vec<i16>,
    pub acc: Vec<i32>,
    pub fixed: Vec<i64>,
    /// Packed GEMM right-hand side / padded depthwise plane (SIMD paths).
    pub bpack: Vec<i16>,
    /// Byte panels of the byte GEMM.
    pub bpack8: Vec<u8>,
    /// Per-output-channel multipliers of the current part.
    pub mult: Vec<i64>,
    /// Pixel-major input (i16) and output of the channel-vectorized depthwise kernel.
    pub pixels: Vec<i16>,
    pub bytes: Vec<u8>,
}

/// Depthwise accumulation: acc[c, y, x] += Σ (x − zp)·w' over the kernel window.
pub fn depthwise_acc_reference(input: &[u8], zp_in: i32, weight: &[i16], g: &ConvGeometry, acc: &mut [i32]) {
    let [kh, kw] = g.kernel;
    let (oh, ow) = (g.out_h, g.out_w);
    let (sy, sx) = (g.strides[0], g.strides[1]);
    for c in 0..g.out_c {
        let plane = &input[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        let kern = &weight[c * kh * kw..(c + 1) * kh * kw];
        let o = &mut acc[c * oh * ow..(c + 1) * oh * ow];
        for ky in 0..kh {
            let (y0, y1) = ConvGeometry::valid_range(oh, g.in_h, sy, g.pad_top, ky * g.dilations[0]);
            for kx in 0..kw {
                let w = kern[ky * kw + kx] as i32;
                let (x0, x1) = ConvGeometry::valid_range(ow, g.in_w, sx, g.pad_left, kx * g.dilations[1]);
                if x0 >= x1 || w == 0 {
                    continue;
                }
                for oy in y0..y1 {
                    let iy = oy * sy + ky * g.dilations[0] - g.pad_top;
                    let row = &plane[iy * g.in_w..(iy + 1) * g.in_w];
                    let base = x0 * sx + kx * g.dilations[1] - g.pad_left;
                    let dst = &mut o[oy * ow + x0..oy * ow + x1];
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d += w * (row[base + j * sx] as i32 - zp_in);
                    }
                }
            }
        }
    }
}

/// Quantized element-wise add of same-shape tensors: out = zo + round(Ma·(a − za) + Mb·(b − zb)),
/// both multipliers on one fixed-point shift.
#[allow(clippy::too_many_arguments)]
pub fn add_q8_reference(a: &[u8], za: i32, ma: i64, b: &[u8], zb: i32, mb: i64, shift: u32, zo: i32, qmin: i32, qmax: i32, out: &mut [u8]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let v = (x as i64 - za as i64) * ma + (y as i64 - zb as i64) * mb;
        *o = clamp_u8(zo as i64 + round_shift(v, shift), qmin, qmax);
    }
}

/// Global average pool of one CHW image: per channel zo + round(Σ(x − zi) · si/(so·HW)).
pub fn global_avg_pool_q8_reference(input: &[u8], channels: usize, zp_in: i32, r: Requant, zo: i32, out: &mut [u8]) {
    let hw = input.len() / channels;
    for (c, o) in out.iter_mut().enumerate().take(channels) {
        let sum: i64 = input[c * hw..(c + 1) * hw].iter().map(|&x| x as i64 - zp_in as i64).sum();
        *o = clamp_u8(zo as i64 + r.apply(sum), 0, 255);
    }
}

/// `QuantizeLinear` of one value onto a uint8 grid: round half to even of `v / scale`, add the
/// zero-point, clamp to [0, 255]. `round_ties_even` through the 1.5·2^23 trick (exact for
/// |x| < 2^22; beyond that the value clamps to 0 or 255 either way, and NaN stays NaN, i.e.
/// 0 + zp as with `round_ties_even`).
#[inline]
pub fn quantize_one(v: f32, scale: f32, zp: i32) -> u8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = (v / scale).clamp(-4_194_304.0, 4_194_304.0);
    let r = if x.abs() < 4_194_304.0 { (x + MAGIC) - MAGIC } else { x };
    (r as i64 + zp as i64).clamp(0, 255) as u8
}

/// [`quantize_one`] over a slice (the engine's float → uint8 steps).
pub fn quantize_f32_reference(x: &[f32], scale: f32, zp: i32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, scale, zp);
    }
}

/// Per-channel upper clamp in place: `data` is `[…][channel][inner]`, channel `i` of each image
/// capped at `qmax[i % qmax.len()]`.
pub fn clamp_channels_u8_reference(data: &mut [u8], inner: usize, qmax: &[u8]) {
    for (i, chunk) in data.chunks_mut(inner.max(1)).enumerate() {
        let m = qmax[i % qmax.len()];
        chunk.iter_mut().for_each(|v| *v = (*v).min(m));
    }
}

/// Requantize u8 values from one grid to another (and clamp): ReLU/Clip and reshape-like ops
/// whose output grid differs from the input's.
pub fn requantize_u8_reference(input: &[u8], zp_in: i32, r: Requant, zo: i32, qmin: i32, qmax: i32, out: &mut [u8]) {
    for (o, &x) in out.iter_mut().zip(input) {
        *o = clamp_u8(zo as i64 + r.apply(x as i64 - zp_in as i64), qmin, qmax);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_shift_ties_away_from_zero() {
        assert_eq!(round_shift(3, 1), 2); // 1.5 → 2
        assert_eq!(round_shift(-3, 1), -2); // −1.5 → −2
        assert_eq!(round_shift(5, 2), 1); // 1.25 → 1
        assert_eq!(round_shift(-6, 2), -2); // −1.5 → −2
    }

    #[test]
    fn requant_matches_real_multiplier() {
        for &m in &[0.000123, 0.0421, 0.5, 0.999, 1.7, 37.0] {
            let r = Requant::new(m);
            assert!(r.multiplier >= 1 << 29 && r.multiplier < 1 << 30, "{m}: {r:?}");
            for acc in [-100000i64, -777, -1, 0, 1, 999, 123456] {
                let exact = acc as f64 * m;
                let got = r.apply(acc) as f64;
                assert!((got - exact).abs() <= 0.5 + exact.abs() * 1e-8, "m {m} acc {acc}: {got} vs {exact}");
            }
        }
    }
}
