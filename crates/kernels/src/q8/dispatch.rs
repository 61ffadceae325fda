//! Run-time choice between the AVX2 kernels and the portable (scalar reference) ones.

use std::sync::OnceLock;

use super::{ConvPart, FloatEpilogue, PackedWeights, Requant, Scratch};
use crate::ConvGeometry;

/// Instruction-set level the dispatched kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    /// The scalar reference kernels (any target).
    Portable,
    /// x86-64 AVX2 kernels.
    Avx2,
}

/// Detected once: AVX2 when the CPU has it, unless the environment variable `SUBQ_SIMD` is
/// `portable` (or `scalar`/`off`), which forces the portable path (to compare or debug).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if crate::simd_cap() == crate::SimdCap::Portable {
            return SimdLevel::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return SimdLevel::Avx2;
        }
        SimdLevel::Portable
    })
}

/// The integer kernels this process runs, for reports: `portable`, `avx2`, `avx2+avx-vnni` (the
/// byte GEMM on `vpdpbusd`), `avx2+avx-vnni+avx512-vnni` (its 16-column tile on 512 bits) or
/// `avx2+avx-vnni+avx512-vnni+amx` (the byte GEMM on AMX tiles).
pub fn kernel_set() -> &'static str {
    match (simd_level(), super::vnni_available(), super::vnni512_available()) {
        (SimdLevel::Portable, _, _) => "portable",
        (_, true, true) if super::amx_available() => "avx2+avx-vnni+avx512-vnni+amx",
        (_, true, true) => "avx2+avx-vnni+avx512-vnni",
        (_, true, false) => "avx2+avx-vnni",
        _ => "avx2",
    }
}

/// Integer convolution (see [`super::conv_q8_reference`] for the arguments): the fastest kernel
/// the CPU supports, bit-identical to the reference.
#[allow(clippy::too_many_arguments)]
pub fn conv_q8(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 && super::avx2::conv_supported(parts, g) {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::conv_q8(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, g, out, scratch) };
        return;
    }
    conv_q8_portable(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, g, out, scratch)
}

/// [`conv_q8`], then output channel `c` capped at `cmax[c]` (an equalized per-channel ReLU6
/// bound): the AVX2 paths fuse the cap into their epilogue; the reference is
/// [`super::conv_q8_reference`] followed by [`super::clamp_channels_u8_reference`].
#[allow(clippy::too_many_arguments)]
pub fn conv_q8_clamped(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, cmax: &[u8], g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    assert!(cmax.len() >= g.out_c);
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 && super::avx2::conv_supported(parts, g) {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::conv_q8_clamped(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, Some(cmax), g, out, scratch) };
        return;
    }
    conv_q8_portable(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, g, out, scratch);
    let spatial = g.out_h * g.out_w;
    super::clamp_channels_u8_reference(&mut out[..g.out_c * spatial], spatial, &cmax[..g.out_c]);
}

/// [`conv_q8`] with an optional per-channel cap (as [`conv_q8_clamped`]) and an optional float
/// output stage `epi`, built by [`FloatEpilogue::new`] (or [`FloatEpilogue::for_accumulators`],
/// with bounds that hold for this input) from these same `parts[0]` multipliers, `bias_fixed`,
/// `shift`, `out_zp`, `qmin`, `qmax` and `cmax` (so proven equal to the i64 stage);
/// the AVX2 single-part paths then use it. The bytes are those of [`super::conv_q8_reference`]
/// (capped) either way.
#[allow(clippy::too_many_arguments)]
pub fn conv_q8_epi(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, cmax: Option<&[u8]>, epi: Option<&FloatEpilogue>, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    assert!(cmax.is_none_or(|c| c.len() >= g.out_c) && epi.is_none_or(|e| [e.scale.len(), e.offset.len(), e.hi.len(), e.ok.len(), e.cap.len()].iter().all(|&l| l >= g.out_c)));
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 && super::avx2::conv_supported(parts, g) {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::conv_q8_epi(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, cmax, epi, g, out, scratch) };
        return;
    }
    conv_q8_portable(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, g, out, scratch);
    if let Some(cm) = cmax {
        let spatial = g.out_h * g.out_w;
        super::clamp_channels_u8_reference(&mut out[..g.out_c * spatial], spatial, &cm[..g.out_c]);
    }
}

/// The portable conv path (the scalar reference).
#[allow(clippy::too_many_arguments)]
pub fn conv_q8_portable(input: &[u8], zp_in: i32, parts: &[ConvPart], bias_fixed: &[i64], shift: u32, out_zp: i32, qmin: i32, qmax: i32, g: &ConvGeometry, out: &mut [u8], scratch: &mut Scratch) {
    super::conv_q8_reference(input, zp_in, parts, bias_fixed, shift, out_zp, qmin, qmax, g, out, scratch)
}

/// Quantized element-wise add (see [`super::add_q8_reference`]).
#[allow(clippy::too_many_arguments)]
pub fn add_q8(a: &[u8], za: i32, ma: i64, b: &[u8], zb: i32, mb: i64, shift: u32, zo: i32, qmin: i32, qmax: i32, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::add_q8(a, za, ma, b, zb, mb, shift, zo, qmin, qmax, out) };
        return;
    }
    super::add_q8_reference(a, za, ma, b, zb, mb, shift, zo, qmin, qmax, out)
}

/// Global average pool of one CHW image (see [`super::global_avg_pool_q8_reference`]).
pub fn global_avg_pool_q8(input: &[u8], channels: usize, zp_in: i32, r: Requant, zo: i32, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::global_avg_pool_q8(input, channels, zp_in, r, zo, out) };
        return;
    }
    super::global_avg_pool_q8_reference(input, channels, zp_in, r, zo, out)
}

/// Regrid + clamp (see [`super::requantize_u8_reference`]) through a 256-entry table: the output
/// depends only on the input byte, so the table holds exactly the reference's results.
pub fn requantize_u8(input: &[u8], zp_in: i32, r: Requant, zo: i32, qmin: i32, qmax: i32, out: &mut [u8]) {
    if input.len() < 512 {
        return super::requantize_u8_reference(input, zp_in, r, zo, qmin, qmax, out);
    }
    let all: [u8; 256] = std::array::from_fn(|i| i as u8);
    let mut lut = [0u8; 256];
    super::requantize_u8_reference(&all, zp_in, r, zo, qmin, qmax, &mut lut);
    // Same grid on both sides (an activation kept between two QuantizeLinears of one grid, as
    // files that keep their Relu/Clip have it): the table is a clamp, which vectorizes; a
    // byte-table lookup does not (one load and store per byte).
    let (lo, hi) = (lut[0], lut[255]);
    if all.iter().zip(&lut).all(|(&x, &v)| v == x.clamp(lo, hi)) {
        for (o, &x) in out.iter_mut().zip(input) {
            *o = x.clamp(lo, hi);
        }
        return;
    }
    for (o, &x) in out.iter_mut().zip(input) {
        *o = lut[x as usize];
    }
}

/// Float → uint8 grid (see [`super::quantize_f32_reference`]).
pub fn quantize_f32(x: &[f32], scale: f32, zp: i32, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::quantize_f32(x, scale, zp, out) };
        return;
    }
    super::quantize_f32_reference(x, scale, zp, out)
}

/// Per-channel upper clamp in place (see [`super::clamp_channels_u8_reference`]).
pub fn clamp_channels_u8(data: &mut [u8], inner: usize, qmax: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 {
        // SAFETY: AVX2 was detected at run time.
        unsafe { super::avx2::clamp_channels_u8(data, inner, qmax) };
        return;
    }
    super::clamp_channels_u8_reference(data, inner, qmax)
}

/// The exact i32 accumulators of one conv part, `[out_c × oh·ow]` (see
/// [`super::conv_acc_reference`]): for a layer whose output is dequantized instead of
/// requantized (a graph output kept in float). Dense single-group convs run AVX2 im2col and
/// matrix–vector products, on the part's byte rows when it has them ([`PackedWeights::Gemv`]:
/// classifier heads with one output position are memory-bound); the rest, the reference.
pub fn conv_acc(input: &[u8], zp_in: i32, part: &ConvPart, g: &ConvGeometry, acc: &mut Vec<i32>, scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2 && g.group == 1 && !g.is_depthwise() {
        let (m, k, n) = (g.out_c, g.weights_per_output(), g.out_h * g.out_w);
        assert!(part.weight.len() >= m * k && input.len() >= g.in_c * g.in_h * g.in_w);
        scratch.cols.resize(k * n, 0);
        acc.clear();
        acc.resize(m * n, 0);
        let sink = &mut super::avx2::Sink::Acc(&mut acc[..]);
        // SAFETY: AVX2 was detected at run time; the slices were sized above.
        unsafe {
            super::avx2::im2col_q(input, zp_in, g, 0, g.in_c, &mut scratch.cols);
            match &part.packed {
                PackedWeights::Gemv { u, off, m: pm, k: pk } if *pm == m && *pk == k => super::avx2::gemv_u8(u, off, m, k, &scratch.cols, n, &mut scratch.bpack, sink),
                _ => super::avx2::gemv(&part.weight, m, k, &scratch.cols, n, &mut scratch.bpack, sink),
            }
        }
        return;
    }
    super::conv_acc_reference(input, zp_in, &part.weight, g, acc, &mut scratch.cols)
}
