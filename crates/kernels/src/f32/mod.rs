//! FP32 kernels: convolution (im2col + SGEMM, direct depthwise), GEMM, pooling.

use crate::ConvGeometry;

pub mod conv_direct512;
pub mod depthwise;
pub mod depthwise_blocked;
pub mod depthwise_rows512;
pub mod gemm;

/// Test data shared by the FP32 kernels' tests.
#[cfg(test)]
pub(crate) mod test_data {
    /// `n` values in [−0.5, 0.5) from a 64-bit LCG seeded with `seed`.
    pub(crate) fn rnd_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }
}

/// One output channel's post-op constants (from an [`Epilogue`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Post {
    scale: f32,
    shift: f32,
    affine: bool,
    lo: f32,
    hi: f32,
    clamp: bool,
}

impl Post {
    pub(crate) fn of(ep: &Epilogue, c: usize) -> Post {
        let (affine, scale, shift) = match ep.affine {
            Some((s, b)) => (true, s[c], b[c]),
            None => (false, 1.0, 0.0),
        };
        let (clamp, lo, hi) = match ep.clamp {
            Some((lo, hi)) => (true, lo, hi),
            None => (false, f32::NEG_INFINITY, f32::INFINITY),
        };
        Post { scale, shift, affine, lo, hi, clamp }
    }
    #[inline(always)]
    pub(crate) fn apply(&self, mut v: f32) -> f32 {
        if self.affine {
            v = v * self.scale + self.shift;
        }
        if self.clamp {
            v = v.max(self.lo).min(self.hi);
        }
        v
    }
}

/// [`Post::apply`] on eight lanes, for a layer whose posts all have `affine == AFFINE` and
/// `clamp == CLAMP` (an [`Epilogue`] gives every channel the same parts): the kernels choose the
/// variant once instead of testing the flags per row or block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn post_avx2_as<const AFFINE: bool, const CLAMP: bool>(v: std::arch::x86_64::__m256, p: &Post) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    debug_assert!(p.affine == AFFINE && p.clamp == CLAMP);
    let mut v = v;
    if AFFINE {
        // Multiply then add (no FMA) to match the unfused BatchNormalization bit for bit.
        v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(p.scale)), _mm256_set1_ps(p.shift));
    }
    if CLAMP {
        v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(p.lo)), _mm256_set1_ps(p.hi));
    }
    v
}

/// `MASK[8 − n..16 − n]` enables the first n of eight lanes.
#[cfg(target_arch = "x86_64")]
static MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// A mask enabling the first `n` (at most 8) of eight f32 lanes, for masked loads and stores.
///
/// # Safety
/// The CPU supports AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn lane_mask(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_loadu_si256(MASK.as_ptr().add(8 - n.min(8)) as *const __m256i)
}

/// The 16-lane AVX-512 mask of lanes i < `count` (≤ 16) with `0 ≤ start + i < len`: which
/// lanes of a vector loaded from column `start` of a `len`-column row lie inside the row.
#[cfg(target_arch = "x86_64")]
pub(crate) fn window_mask(start: isize, len: usize, count: usize) -> u16 {
    let mut m = 0u16;
    for i in 0..count.min(16) {
        let x = start + i as isize;
        if x >= 0 && (x as usize) < len {
            m |= 1 << i;
        }
    }
    m
}

/// The K (≤ 5) tap vectors of one input row at stride 2, 16 outputs wide: lane ox of tap kx is
/// input column `at + 2·ox + kx`. Two loads cover columns at .. at + 32, whose even and odd
/// lanes are taps 0 and 1; tap 2 + j is tap j one lane on, its last lane taken from the
/// columns after the pair (`masks`: the lanes inside the row of the loads at `at`, `at + 16`
/// and `at + 32`; masked-off lanes read as zeros).
///
/// # Safety
/// AVX-512F; the unmasked lanes of the three loads are readable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn stride2_taps<const K: usize>(row: *const f32, at: isize, masks: [u16; 3]) -> [std::arch::x86_64::__m512; K] {
    use std::arch::x86_64::*;
    debug_assert!((2..=5).contains(&K));
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let xl = _mm512_maskz_loadu_ps(masks[0], row.wrapping_offset(at));
    let xh = _mm512_maskz_loadu_ps(masks[1], row.wrapping_offset(at + 16));
    let x0 = _mm512_castps_si512(_mm512_permutex2var_ps(xl, even, xh));
    let x1 = _mm512_castps_si512(_mm512_permutex2var_ps(xl, odd, xh));
    let mut taps = [_mm512_setzero_ps(); K];
    taps[0] = _mm512_castsi512_ps(x0);
    taps[1] = _mm512_castsi512_ps(x1);
    if K > 2 {
        let next = _mm512_castps_si512(_mm512_maskz_loadu_ps(masks[2], row.wrapping_offset(at + 32)));
        let (ne, no) = (_mm512_permutexvar_epi32(even, next), _mm512_permutexvar_epi32(odd, next));
        taps[2] = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(ne, x0));
        if K > 3 {
            taps[3] = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(no, x1));
        }
        if K > 4 {
            taps[4] = _mm512_castsi512_ps(_mm512_alignr_epi32::<2>(ne, x0));
        }
    }
    taps
}

/// Whether the AVX2+FMA kernels can run here.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the FP32 GEMM may use its 512-bit tile (AVX-512F; checked once). `SUBQ_SIMD=avx2`
/// or `avxvnni` keeps it on 256 bits, as for the integer kernels.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| {
            crate::simd_cap() >= crate::SimdCap::Avx512 && has_avx2_fma() && std::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The FP32 kernels this process runs, for reports: `avx2+fma+avx512` (the SGEMM's 6×32 tile),
/// `avx2+fma` or `portable`.
pub fn kernel_set() -> &'static str {
    if has_avx512() {
        "avx2+fma+avx512"
    } else if has_avx2_fma() {
        "avx2+fma"
    } else {
        "portable"
    }
}

/// Post-ops fused into a convolution's output pass, applied per output channel `c` as
/// `y = clamp(conv · scale[c] + shift[c], lo, hi)` (each part optional). The affine part is an
/// inference BatchNormalization; the clamp a Relu or Clip.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// (scale, shift) per output channel.
    pub affine: Option<(&'a [f32], &'a [f32])>,
    /// (lo, hi), applied as `max(lo)` then `min(hi)`.
    pub clamp: Option<(f32, f32)>,
}

impl Epilogue<'_> {
    pub const NONE: Epilogue<'static> = Epilogue { affine: None, clamp: None };

    pub fn is_identity(&self) -> bool {
        self.affine.is_none() && self.clamp.is_none()
    }

    /// Apply to the output plane(s) of channel `c`, in place.
    pub fn apply(&self, c: usize, ys: &mut [f32]) {
        if let Some((s, b)) = self.affine {
            let (a, off) = (s[c], b[c]);
            ys.iter_mut().for_each(|y| *y = *y * a + off);
        }
        if let Some((lo, hi)) = self.clamp {
            ys.iter_mut().for_each(|y| *y = y.max(lo).min(hi));
        }
    }

    /// Apply to `channels` consecutive planes of `plane` elements each.
    pub fn apply_planes(&self, out: &mut [f32], channels: usize, plane: usize) {
        if self.is_identity() || plane == 0 {
            return;
        }
        for (c, ys) in out.chunks_mut(plane).take(channels).enumerate() {
            self.apply(c, ys);
        }
    }
}

/// C[m×n] = A[m×k] · B[k×n] (+ C when `accumulate`), all row-major, through `matrixmultiply`'s
/// blocked SGEMM.
pub fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    sgemm_strided(m, k, n, a, (k as isize, 1), b, (n as isize, 1), c, accumulate)
}

/// SGEMM with explicit (row, column) strides for A and B, so transposed operands need no copy.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_strided(m: usize, k: usize, n: usize, a: &[f32], a_strides: (isize, isize), b: &[f32], b_strides: (isize, isize), c: &mut [f32], accumulate: bool) {
    assert!(c.len() >= m * n);
    let max_index = |rows: usize, cols: usize, (rs, cs): (isize, isize)| {
        if rows == 0 || cols == 0 { 0 } else { (rows - 1) as isize * rs + (cols - 1) as isize * cs + 1 }
    };
    assert!(a.len() as isize >= max_index(m, k, a_strides));
    assert!(b.len() as isize >= max_index(k, n, b_strides));
    if m == 1 && k > 0 && a_strides.1 == 1 && b_strides.0 == 1 && b_strides.1 > 0 {
        // Row vector times a transposed matrix (a fully-connected layer at batch 1): one
        // contiguous dot product per output.
        let (x, ldb) = (&a[..k], b_strides.1 as usize);
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // Eight rows at a time: the weights stream from memory once (a 1000-class
            // classifier's 5 MB), and eight streams in flight read them ~1.4× as fast as one
            // (EfficientNet-Lite0's classifier: 575 → 400 µs).
            while j + 8 <= n {
                // SAFETY: AVX-512F detected; rows j..j + 8 of B hold k values each (asserted
                // through max_index above).
                let d = unsafe { dot8_avx512(x, b[j * ldb..].as_ptr(), ldb) };
                for (r, d) in d.into_iter().enumerate() {
                    let y = &mut c[j + r];
                    *y = if accumulate { *y + d } else { d };
                }
                j += 8;
            }
        }
        for (j, y) in c[..n].iter_mut().enumerate().skip(j) {
            let d = dot(x, &b[j * ldb..j * ldb + k]);
            *y = if accumulate { *y + d } else { d };
        }
        return;
    }
    if m == 1 && k > 0 && b_strides.1 == 1 && b_strides.0 > 0 {
        // Row vector times a row-major matrix: accumulate scaled rows of B.
        let (ldb, y) = (b_strides.0 as usize, &mut c[..n]);
        if !accumulate {
            y.fill(0.0);
        }
        for kk in 0..k {
            let s = a[kk * a_strides.1 as usize];
            for (o, &bv) in y.iter_mut().zip(&b[kk * ldb..kk * ldb + n]) {
                *o += s * bv;
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every index the strided views can touch.
    unsafe {
        matrixmultiply::sgemm(
            m, k, n, 1.0,
            a.as_ptr(), a_strides.0, a_strides.1,
            b.as_ptr(), b_strides.0, b_strides.1,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(), n as isize, 1,
        );
    }
}

/// [`dot`] of `x` with eight rows of B (`b`, `ldb` apart, each x.len() long), the same
/// operations in the same order (16 lane sums of products, added up in lane order, then the
/// remainder), so the same bits.
///
/// # Safety
/// The CPU supports AVX-512F; `b + r·ldb` is readable for x.len() values, r < 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot8_avx512(x: &[f32], b: *const f32, ldb: usize) -> [f32; 8] {
    use std::arch::x86_64::*;
    let k = x.len();
    let full = k - k % 16;
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut kk = 0;
    while kk < full {
        let xv = _mm512_loadu_ps(x.as_ptr().add(kk));
        for (r, a) in acc.iter_mut().enumerate() {
            // Multiply then add, as `dot` (no FMA).
            *a = _mm512_add_ps(*a, _mm512_mul_ps(xv, _mm512_loadu_ps(b.add(r * ldb + kk))));
        }
        kk += 16;
    }
    let mut out = [0f32; 8];
    for (r, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), *a);
        let mut s: f32 = lanes.iter().sum();
        for (i, &xi) in x.iter().enumerate().skip(full) {
            s += xi * *b.add(r * ldb + i);
        }
        out[r] = s;
    }
    out
}

/// Dot product with sixteen independent partial sums (vectorizes without reassociation flags).
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}

/// Unfold one group's input patches into a [(c·kh·kw) × (oh·ow)] matrix.
pub fn im2col(input: &[f32], g: &ConvGeometry, c_begin: usize, c_count: usize, cols: &mut [f32]) {
    crate::im2col_with(input, g, c_begin, c_count, cols, 0.0, |x| x)
}

/// Direct depthwise convolution: one kernel per channel. Loops are arranged so the innermost
/// runs over a contiguous, branch-free range of output columns.
pub fn depthwise(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, out: &mut [f32]) {
    let [kh, kw] = g.kernel;
    let (oh, ow) = (g.out_h, g.out_w);
    let (sy, sx) = (g.strides[0], g.strides[1]);
    for c in 0..g.out_c {
        let plane = &input[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        let k = &weight[c * kh * kw..(c + 1) * kh * kw];
        let o = &mut out[c * oh * ow..(c + 1) * oh * ow];
        o.fill(bias.map_or(0.0, |b| b[c]));
        for ky in 0..kh {
            let (y0, y1) = ConvGeometry::valid_range(oh, g.in_h, sy, g.pad_top, ky * g.dilations[0]);
            for kx in 0..kw {
                let w = k[ky * kw + kx];
                let (x0, x1) = ConvGeometry::valid_range(ow, g.in_w, sx, g.pad_left, kx * g.dilations[1]);
                if x0 >= x1 {
                    continue;
                }
                for oy in y0..y1 {
                    let iy = oy * sy + ky * g.dilations[0] - g.pad_top;
                    let row = &plane[iy * g.in_w..(iy + 1) * g.in_w];
                    let dst = &mut o[oy * ow + x0..oy * ow + x1];
                    let base = x0 * sx + kx * g.dilations[1] - g.pad_left;
                    if sx == 1 {
                        for (d, &x) in dst.iter_mut().zip(&row[base..base + (x1 - x0)]) {
                            *d += w * x;
                        }
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d += w * row[base + j * sx];
                        }
                    }
                }
            }
        }
    }
}

/// Convolution of one CHW image. `scratch` is reused between calls for the im2col buffer.
pub fn conv2d(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, out: &mut [f32], scratch: &mut Vec<f32>) {
    conv2d_fused(input, weight, bias, g, &Epilogue::NONE, out, scratch)
}

/// Convolution of one CHW image followed by `ep` (see [`Epilogue`]).
pub fn conv2d_fused(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32], scratch: &mut Vec<f32>) {
    if g.is_depthwise() {
        if depthwise::supports(g) {
            return depthwise::depthwise_with(depthwise::best_for(g), input, weight, bias, g, ep, out, scratch);
        }
        depthwise(input, weight, bias, g, out);
        return ep.apply_planes(out, g.out_c, g.out_h * g.out_w);
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && conv_direct512::applies(g) {
        // SAFETY: AVX-512F (with AVX2 and FMA) detected; the geometry is one it handles; the
        // slices' sizes are asserted inside.
        return unsafe { conv_direct512::avx512::run(input, weight, bias, g, ep, out) };
    }
    conv2d_gemm(input, weight, bias, g, ep, out, scratch)
}

/// A non-depthwise convolution as GEMMs (1×1: on the input planes; otherwise through im2col),
/// the epilogue in the tiles.
pub fn conv2d_gemm(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, ep: &Epilogue, out: &mut [f32], scratch: &mut Vec<f32>) {
    let spatial = g.out_h * g.out_w;
    let cin_g = g.in_c / g.group;
    let cout_g = g.out_c / g.group;
    let k = g.weights_per_output();
    let isa = gemm::best_isa();
    for grp in 0..g.group {
        let w = &weight[grp * cout_g * k..(grp + 1) * cout_g * k];
        let o = &mut out[grp * cout_g * spatial..(grp + 1) * cout_g * spatial];
        let b = bias.map(|b| &b[grp * cout_g..(grp + 1) * cout_g]);
        if g.is_pointwise() {
            // A 1×1 convolution is a plain matrix product with the input planes.
            gemm::gemm_epilogue(isa, cout_g, k, spatial, w, &input[grp * cin_g * spatial..(grp + 1) * cin_g * spatial], o, b, ep, grp * cout_g);
        } else {
            scratch.resize(k * spatial, 0.0);
            im2col(input, g, grp * cin_g, cin_g, scratch);
            gemm::gemm_epilogue(isa, cout_g, k, spatial, w, scratch, o, b, ep, grp * cout_g);
        }
    }
}

/// Plain, obviously-correct convolution used as the reference in tests.
pub fn conv2d_reference(input: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, out: &mut [f32]) {
    let cin_g = g.in_c / g.group;
    let cout_g = g.out_c / g.group;
    let [kh, kw] = g.kernel;
    for oc in 0..g.out_c {
        let grp = oc / cout_g;
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let mut acc = bias.map_or(0.0, |b| b[oc]) as f64;
                for ic in 0..cin_g {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * g.strides[0] + ky * g.dilations[0]) as isize - g.pad_top as isize;
                            let ix = (ox * g.strides[1] + kx * g.dilations[1]) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let x = input[((grp * cin_g + ic) * g.in_h + iy as usize) * g.in_w + ix as usize];
                            let w = weight[((oc * cin_g + ic) * kh + ky) * kw + kx];
                            acc += (x * w) as f64;
                        }
                    }
                }
                out[(oc * g.out_h + oy) * g.out_w + ox] = acc as f32;
            }
        }
    }
}

/// Average or max pooling over one CHW image. `pads` = [top, left, bottom, right].
#[allow(clippy::too_many_arguments)]
pub fn pool2d(input: &[f32], c: usize, in_h: usize, in_w: usize, out_h: usize, out_w: usize, kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], max: bool, count_include_pad: bool, out: &mut [f32]) {
    for ch in 0..c {
        let plane = &input[ch * in_h * in_w..(ch + 1) * in_h * in_w];
        for oy in 0..out_h {
            for ox in 0..out_w {
                let y0 = (oy * strides[0]) as isize - pads[0] as isize;
                let x0 = (ox * strides[1]) as isize - pads[1] as isize;
                let (mut acc, mut n) = (if max { f32::NEG_INFINITY } else { 0.0 }, 0usize);
                for ky in 0..kernel[0] as isize {
                    for kx in 0..kernel[1] as isize {
                        let (iy, ix) = (y0 + ky, x0 + kx);
                        if iy < 0 || ix < 0 || iy >= in_h as isize || ix >= in_w as isize {
                            continue;
                        }
                        let v = plane[iy as usize * in_w + ix as usize];
                        if max { acc = acc.max(v) } else { acc += v }
                        n += 1;
                    }
                }
                if !max {
                    // count_include_pad counts padded cells inside the (padded) input, not beyond it.
                    let denom = if count_include_pad {
                        let yend = (y0 + kernel[0] as isize).min((in_h + pads[2]) as isize);
                        let xend = (x0 + kernel[1] as isize).min((in_w + pads[3]) as isize);
                        ((yend - y0) * (xend - x0)) as usize
                    } else {
                        n
                    };
                    acc /= denom.max(1) as f32;
                }
                out[(ch * out_h + oy) * out_w + ox] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geometry() -> impl Strategy<Value = ConvGeometry> {
        (1usize..4, 1usize..4, 1usize..4, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3, 3usize..12, 3usize..12, 1usize..3, prop::bool::ANY)
            .prop_map(|(gr, cin_g, cout_g, kh, sy, dil, pt, pl, h, w, kw, dw)| {
                let (group, in_c, out_c) = if dw { (gr * cin_g, gr * cin_g, gr * cin_g) } else { (gr, gr * cin_g, gr * cout_g) };
                let kernel = [kh, kw.max(1)];
                let dil = [dil, 1];
                let eff = |k: usize, d: usize| d * (k - 1) + 1;
                let out_h = ((h + 2 * pt).saturating_sub(eff(kernel[0], dil[0]))) / sy + 1;
                let out_w = (w + 2 * pl).saturating_sub(eff(kernel[1], dil[1])) + 1; // stride 1 across
                ConvGeometry { in_c, in_h: h.max(eff(kernel[0], dil[0])), in_w: w.max(eff(kernel[1], 1)), out_c, out_h, out_w, kernel, strides: [sy, 1], dilations: dil, pad_top: pt, pad_left: pl, group }
            })
            .prop_map(|mut g| {
                let eff = |k: usize, d: usize| d * (k - 1) + 1;
                g.out_h = (g.in_h + 2 * g.pad_top - eff(g.kernel[0], g.dilations[0])) / g.strides[0] + 1;
                g.out_w = (g.in_w + 2 * g.pad_left - eff(g.kernel[1], g.dilations[1])) / g.strides[1] + 1;
                g
            })
    }

    /// A row vector times a transposed matrix (a classifier at batch 1): the eight-row AVX-512
    /// dot products give the bits of `dot`, row by row, for row counts and lengths with and
    /// without remainders; `accumulate` adds to what C holds.
    #[test]
    fn vector_times_transposed_matrix_is_dot_per_row() {
        for (k, n) in [(1280, 19), (37, 8), (16, 17), (5, 3), (1280, 1000)] {
            let x: Vec<f32> = (0..k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021).collect();
            for accumulate in [false, true] {
                let mut got: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
                sgemm_strided(1, k, n, &x, (k as isize, 1), &w, (1, k as isize), &mut got, accumulate);
                for (j, g) in got.iter().enumerate() {
                    let d = dot(&x, &w[j * k..(j + 1) * k]);
                    let want = if accumulate { j as f32 * 0.5 + d } else { d };
                    assert_eq!(g.to_bits(), want.to_bits(), "k {k} n {n} row {j} accumulate {accumulate}: {g} vs {want}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn conv2d_matches_reference(g in geometry(), seed in 0u64..1000) {
            let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5 };
            let input: Vec<f32> = (0..g.in_c * g.in_h * g.in_w).map(|_| rnd()).collect();
            let weight: Vec<f32> = (0..g.out_c * g.weights_per_output()).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..g.out_c).map(|_| rnd()).collect();
            let n = g.out_c * g.out_h * g.out_w;
            let (mut fast, mut slow) = (vec![0.0; n], vec![0.0; n]);
            conv2d(&input, &weight, Some(&bias), &g, &mut fast, &mut Vec::new());
            conv2d_reference(&input, &weight, Some(&bias), &g, &mut slow);
            for (a, b) in fast.iter().zip(&slow) {
                prop_assert!((a - b).abs() < 1e-4, "{a} vs {b} for {g:?}");
            }
        }
    }

    proptest! {
        /// im2col writes every value of the unfolded matrix as its definition says (input value
        /// or zero padding, checked one element at a time), whatever the buffer held, for
        /// strides 1–3, dilations, padding and a channel offset.
        #[test]
        fn im2col_matches_its_definition(c0 in 0usize..3, c in 1usize..4, kh in 1usize..6, kw in 1usize..6, sy in 1usize..4, sx in 1usize..4, dy in 1usize..3, dx in 1usize..3, pt in 0usize..3, pl in 0usize..3, h in 1usize..20, w in 1usize..20, seed in 0u64..1000) {
            let (eh, ew) = (dy * (kh - 1) + 1, dx * (kw - 1) + 1);
            prop_assume!(h + 2 * pt >= eh && w + 2 * pl >= ew);
            let g = ConvGeometry { in_c: c0 + c, in_h: h, in_w: w, out_c: 2, out_h: (h + 2 * pt - eh) / sy + 1, out_w: (w + 2 * pl - ew) / sx + 1, kernel: [kh, kw], strides: [sy, sx], dilations: [dy, dx], pad_top: pt, pad_left: pl, group: 1 };
            let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let input: Vec<f32> = (0..g.in_c * h * w).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5 }).collect();
            let (oh, ow) = (g.out_h, g.out_w);
            let mut want = Vec::with_capacity(c * kh * kw * oh * ow);
            for ch in c0..c0 + c {
                for ky in 0..kh {
                    for kx in 0..kw {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let (iy, ix) = ((oy * sy + ky * dy) as isize - pt as isize, (ox * sx + kx * dx) as isize - pl as isize);
                                let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                                want.push(if inside { input[(ch * h + iy as usize) * w + ix as usize] } else { 0.0 });
                            }
                        }
                    }
                }
            }
            let mut got = vec![f32::NAN; want.len()];
            im2col(&input, &g, c0, c, &mut got);
            prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{g:?}");
        }
    }

    #[test]
    fn row_vector_times_transposed_matrix() {
        for (k, n) in [(1, 1), (15, 3), (16, 5), (37, 9), (1280, 7)] {
            let a: Vec<f32> = (0..k).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| (i % 11) as f32 * 0.125 - 0.6).collect();
            let mut got = vec![1.0; n];
            sgemm_strided(1, k, n, &a, (k as isize, 1), &bt, (1, k as isize), &mut got, true);
            // The same matrix stored row-major (k × n).
            let b: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            let mut got_nn = vec![0.5; n];
            sgemm_strided(1, k, n, &a, (k as isize, 1), &b, (n as isize, 1), &mut got_nn, false);
            for j in 0..n {
                let want: f64 = (0..k).map(|i| a[i] as f64 * bt[j * k + i] as f64).sum::<f64>();
                assert!((got[j] as f64 - 1.0 - want).abs() < 1e-3, "k {k} n {n} j {j}: {} vs {want}", got[j]);
                assert!((got_nn[j] as f64 - want).abs() < 1e-3, "k {k} n {n} j {j}: {} vs {want}", got_nn[j]);
            }
        }
    }

    #[test]
    fn hand_computed_conv() {
        // 1 channel 3×3 input, 2×2 kernel of ones, stride 1, no pad → sums of 2×2 windows.
        let g = ConvGeometry { in_c: 1, in_h: 3, in_w: 3, out_c: 1, out_h: 2, out_w: 2, kernel: [2, 2], strides: [1, 1], dilations: [1, 1], pad_top: 0, pad_left: 0, group: 1 };
        let input = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
        let mut out = [0.0; 4];
        conv2d(&input, &[1.0; 4], Some(&[0.5]), &g, &mut out, &mut Vec::new());
        assert_eq!(out, [12.5, 16.5, 24.5, 28.5]);
    }

    #[test]
    fn hand_computed_pools() {
        let input = [1., 2., 3., 4.];
        let mut out = [0.0; 1];
        pool2d(&input, 1, 2, 2, 1, 1, [2, 2], [1, 1], [0; 4], false, false, &mut out);
        assert_eq!(out, [2.5]);
        pool2d(&input, 1, 2, 2, 1, 1, [2, 2], [1, 1], [0; 4], true, false, &mut out);
        assert_eq!(out, [4.0]);
        // 3×3 average with pad 1 at the corner: excluding pads averages 4 cells, including them 9.
        let mut out = [0.0; 4];
        pool2d(&input, 1, 2, 2, 2, 2, [3, 3], [1, 1], [1, 1, 1, 1], false, false, &mut out);
        assert_eq!(out[0], 2.5);
        pool2d(&input, 1, 2, 2, 2, 2, [3, 3], [1, 1], [1, 1, 1, 1], false, true, &mut out);
        assert!((out[0] - 10.0 / 9.0).abs() < 1e-6);
    }
}
