//! Compute kernels over plain slices. No kernel knows the graph: each takes buffers and a
//! geometry and writes its output.
//!
//! `f32` holds the floating-point kernels of the reference engine; `q8` the integer kernels.

pub mod f32;
pub mod q8;

/// The widest kernels `SUBQ_SIMD` allows (read once): `portable` (or `scalar`, `off`, `none`),
/// `avx2`, `avxvnni` (256-bit VNNI, no 512-bit kernels), `avx512` (no AMX tiles), anything
/// else the best the CPU has.
/// Ordered: each level allows the ones below it. One parser for every kernel family's check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SimdCap {
    Portable,
    Avx2,
    AvxVnni,
    Avx512,
    Best,
}

pub(crate) fn simd_cap() -> SimdCap {
    static CAP: std::sync::OnceLock<SimdCap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("SUBQ_SIMD").map(|v| v.to_ascii_lowercase()).as_deref() {
        Ok("portable" | "scalar" | "off" | "none") => SimdCap::Portable,
        Ok("avx2") => SimdCap::Avx2,
        Ok("avxvnni") => SimdCap::AvxVnni,
        Ok("avx512") => SimdCap::Avx512,
        _ => SimdCap::Best,
    })
}

/// Geometry of a 2-D convolution on one image (CHW in, CHW out, weights OIHW / group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// top, left (bottom/right padding is implied by the output size)
    pub pad_top: usize,
    pub pad_left: usize,
    pub group: usize,
}

impl ConvGeometry {
    pub fn is_depthwise(&self) -> bool {
        self.group > 1 && self.group == self.in_c && self.group == self.out_c
    }
    pub fn is_pointwise(&self) -> bool {
        self.group == 1 && self.kernel == [1, 1] && self.strides == [1, 1] && self.pad_top == 0 && self.pad_left == 0 && self.out_h == self.in_h && self.out_w == self.in_w
    }
    /// Weights per output channel: (in_c / group) · kh · kw.
    pub fn weights_per_output(&self) -> usize {
        self.in_c / self.group * self.kernel[0] * self.kernel[1]
    }
    pub fn macs(&self) -> usize {
        self.out_c * self.out_h * self.out_w * self.weights_per_output()
    }

    /// For kernel offset `k` along one axis, the range of output positions whose input position
    /// `o·stride − pad + k·dilation` falls inside `[0, in_len)`.
    #[inline]
    pub fn valid_range(out_len: usize, in_len: usize, stride: usize, pad: usize, k_off: usize) -> (usize, usize) {
        // o·s + k_off − pad ≥ 0  ⇔  o ≥ ceil((pad − k_off) / s)
        let lo = if pad > k_off { (pad - k_off).div_ceil(stride) } else { 0 };
        // o·s + k_off − pad ≤ in_len − 1
        let hi = if in_len + pad > k_off { ((in_len - 1 + pad - k_off) / stride + 1).min(out_len) } else { 0 };
        (lo.min(hi), hi)
    }
}

/// Unfold one group's input patches (channels `c_begin..c_begin + c_count` of a CHW image) into a
/// [(c·kh·kw) × (oh·ow)] matrix, converting each value with `convert`; padding is `pad`. Shared by
/// the FP32 path (identity) and the int8 path (subtract the zero-point into i16).
///
/// Each row of a patch plane is its padded border plus one contiguous (stride 1) or strided run
/// of the input row, so the compiler vectorizes the copy: filling every plane first and
/// bounds-checking each element cost 11 instructions per value of the stem conv.
pub fn im2col_with<S: Copy, D: Copy>(input: &[S], g: &ConvGeometry, c_begin: usize, c_count: usize, cols: &mut [D], pad: D, convert: impl Fn(S) -> D) {
    let (oh, ow, ih, iw) = (g.out_h, g.out_w, g.in_h, g.in_w);
    let [kh, kw] = g.kernel;
    let (sy, sx) = (g.strides[0], g.strides[1]);
    let (dy, dx) = (g.dilations[0], g.dilations[1]);
    let mut row = 0;
    for c in c_begin..c_begin + c_count {
        let plane = &input[c * ih * iw..(c + 1) * ih * iw];
        for ky in 0..kh {
            let (y0, y1) = ConvGeometry::valid_range(oh, ih, sy, g.pad_top, ky * dy);
            for kx in 0..kw {
                let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                row += 1;
                let (x0, x1) = ConvGeometry::valid_range(ow, iw, sx, g.pad_left, kx * dx);
                dst[..y0 * ow].fill(pad);
                dst[y1 * ow..].fill(pad);
                for oy in y0..y1 {
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    d[..x0].fill(pad);
                    d[x1..].fill(pad);
                    if x0 >= x1 {
                        continue;
                    }
                    let iy = oy * sy + ky * dy - g.pad_top;
                    let base = iy * iw + x0 * sx + kx * dx - g.pad_left;
                    let src = &plane[base..base + (x1 - x0 - 1) * sx + 1];
                    let d = &mut d[x0..x1];
                    if sx == 1 {
                        for (v, &x) in d.iter_mut().zip(src) {
                            *v = convert(x);
                        }
                    } else {
                        for (j, v) in d.iter_mut().enumerate() {
                            // SAFETY: j·sx ≤ (x1 − x0 − 1)·sx < src.len().
                            *v = convert(unsafe { *src.get_unchecked(j * sx) });
                        }
                    }
                }
            }
        }
    }
}
