//! SGEMM for convolutions: `C = epilogue(A·B + bias)` with A the weights (M×K, row-major, read
//! in place), B the activations (K×N, row-major: input planes or im2col rows) and C the output
//! planes (M×N). Bias, BatchNormalization affine and Relu/Clip are applied in the register tile
//! before the single store, so the output is written once.
//!
//! Blocking: B is packed, zero-padded, in chunks of whole [`NR`]-column micro-panels sized to
//! stay in L2; for each chunk, every [`MR`]-row panel of A (MR row streams, in L1 across the
//! chunk) runs the MR×NR micro-kernel over the chunk's micro-panels. K is not blocked: the
//! convolutions of mobile CNNs have K ≤ ~1200, so an A panel (K·MR floats) stays in L1.
//! The last n mod 8 columns (a 7×7 plane's 49th, a 14×14 plane's last 4) are not a masked
//! tile: a column-tail kernel computes them as dot products vectorized over k. A last row panel
//! of 1–4 rows runs a 2- or 4-row tile.
//! Packing costs one copy of B but makes every micro-panel one contiguous, cache-line-aligned
//! stream (B read in place was a strided gather of 64-byte pieces, most split across two
//! lines) and lets the micro-kernel address B with constant offsets.

use super::{Epilogue, Post};

/// Rows of C per micro-tile.
pub const MR: usize = 6;
/// Columns of C per micro-tile (two AVX registers).
pub const NR: usize = 16;
/// Packed-B chunk budget in floats (~192 KiB, half of a typical L2).
const CHUNK_FLOATS: usize = 48 * 1024;

/// Which micro-kernel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2Fma,
}

pub fn best_isa() -> Isa {
    if super::has_avx2_fma() {
        Isa::Avx2Fma
    } else {
        Isa::Scalar
    }
}

/// Micro-kernel: rows `a[i]` (i < MR, each K long), packed B micro-panel `bp` (K rows of NR
/// values, contiguous), output tile at `c` (rows `ldc` apart), `rows`×`cols` of it valid.
/// The arrays go by reference: by value they were copied onto the stack for every tile (~50
/// instructions per call).
type MicroKernel = unsafe fn(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR]);

/// The K-blocked AVX-512 tile ([`avx2::wide`]): [`MicroKernel`] over one or two packed panels
/// (`bp`, `bp + k·NR`), which starts from the partial sums in C when `resume` and stores raw
/// sums unless `finish`.
type WideKernel = unsafe fn(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR], resume: bool, finish: bool);

/// C[m×n] = epilogue(A[m×k]·B[k×n] + bias) with `ep` channel indices offset by `c0` (the first
/// row's output channel).
#[allow(clippy::too_many_arguments)]
pub fn gemm_epilogue(isa: Isa, m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], bias: Option<&[f32]>, ep: &Epilogue, c0: usize) {
    thread_local! {
        static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PACKED.with(|p| match p.try_borrow_mut() {
        Ok(mut packed) => gemm_with(isa, m, k, n, a, b, c, bias, ep, c0, &mut packed),
        Err(_) => gemm_with(isa, m, k, n, a, b, c, bias, ep, c0, &mut Vec::new()),
    })
}

#[allow(clippy::too_many_arguments)]
fn gemm_with(isa: Isa, m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], bias: Option<&[f32]>, ep: &Epilogue, c0: usize, scratch: &mut Vec<f32>) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n && bias.is_none_or(|b| b.len() >= m));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            let p = Post::of(ep, c0 + i);
            let v = p.apply(bias.map_or(0.0, |b| b[i]));
            c[i * n..(i + 1) * n].fill(v);
        }
        return;
    }
    // (full panels, a last panel of at most 8 columns; on AVX-512 the tiles of one, two and
    // three panels)
    let (kernel, kernel8, wide): (MicroKernel, MicroKernel, Option<[WideKernel; 3]>) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(super::has_avx2_fma());
            // The epilogue's parts are the same for every row: chosen once, not tested per row.
            let (k, k8, w): (MicroKernel, MicroKernel, [WideKernel; 3]) = match (ep.affine.is_some(), ep.clamp.is_some()) {
                (false, false) => (avx2::kernel::<false, false>, avx2::kernel8::<false, false>, [avx2::wide::<false, false, 1>, avx2::wide::<false, false, 2>, avx2::wide::<false, false, 3>]),
                (true, false) => (avx2::kernel::<true, false>, avx2::kernel8::<true, false>, [avx2::wide::<true, false, 1>, avx2::wide::<true, false, 2>, avx2::wide::<true, false, 3>]),
                (false, true) => (avx2::kernel::<false, true>, avx2::kernel8::<false, true>, [avx2::wide::<false, true, 1>, avx2::wide::<false, true, 2>, avx2::wide::<false, true, 3>]),
                (true, true) => (avx2::kernel::<true, true>, avx2::kernel8::<true, true>, [avx2::wide::<true, true, 1>, avx2::wide::<true, true, 2>, avx2::wide::<true, true, 3>]),
            };
            (k, k8, super::has_avx512().then_some(w))
        }
        _ => (kernel_scalar, kernel_scalar, None),
    };
    let posts: Vec<Post> = (0..m).map(|i| Post::of(ep, c0 + i)).collect();
    if let (Some(tiles), true) = (wide, n <= 2 * NR) {
        one_pair(&[tiles[0], tiles[1]], m, k, n, a, b, c, bias, &posts, scratch);
        return;
    }
    let (kernel32, kernel48) = (wide.map(|w| w[1]), wide.map(|w| w[2]));
    // With the SIMD kernels, the last n mod 8 columns (1 of a 7×7 plane's 49, 4 of a 14×14
    // plane's 196) go to the column-tail kernel, which vectorizes over k: as a masked 6×8 tile
    // they cost as much as eight columns.
    let tail = if cfg!(target_arch = "x86_64") && isa == Isa::Avx2Fma { n % 8 } else { 0 };
    let nv = n - tail;
    // On AVX-512 at least three panels (one three-panel tile), else the deep layers of a 7×7
    // plane (k = 1152: 74 KiB per panel) split their 48 columns in two chunks and read the
    // cold weights twice; three such panels still sit well inside L2.
    let panels_per_chunk = (CHUNK_FLOATS / (k * NR)).max(if kernel48.is_some() { 3 } else { 1 });
    let total_panels = nv.div_ceil(NR);
    let chunk_len = panels_per_chunk.min(total_panels) * k * NR;
    let kp = k.div_ceil(8) * 8;
    let tail_len = tail * kp;
    // 16 spare floats to start the packed panels on a 64-byte boundary. Not cleared: packing
    // writes every float of a panel it uses, padding included.
    if scratch.len() < chunk_len + tail_len + 16 {
        scratch.resize(chunk_len + tail_len + 16, 0.0);
    }
    let align = (64 - scratch.as_ptr() as usize % 64) % 64 / 4;
    let (packed, packed_tail) = scratch[align..align + chunk_len + tail_len].split_at_mut(chunk_len);
    if tail > 0 {
        // Columns nv..n, each packed as one contiguous k-vector (zero padded to kp).
        for (j, dst) in packed_tail.chunks_exact_mut(kp).enumerate() {
            for (kk, d) in dst[..k].iter_mut().enumerate() {
                *d = b[kk * n + nv + j];
            }
            dst[k..].fill(0.0);
        }
    }
    // The tail columns of rows i0..i0 + rows. Run right after the rows' last micro-panel, while
    // their A rows are still in L1: as a separate pass over all of A they cost a second read of
    // the weights, which on a 5×5 plane (24 columns + 1) is most of the layer's memory traffic.
    let tail_rows = |i0: usize, rows: usize, c: &mut [f32]| {
        if tail == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA asserted above (tail > 0 only off the scalar path); A holds m·k
        // values from row i0 on, the packed tail tail·kp, C rows i0..i0 + rows with columns
        // nv..n = nv + tail; posts and bias have m ≥ i0 + rows entries.
        unsafe {
            avx2::tail_cols(rows, k, a[i0 * k..].as_ptr(), packed_tail.as_ptr(), kp, c[i0 * n + nv..].as_mut_ptr(), n, tail, bias.map(|b| &b[i0..]), &posts[i0..])
        };
    };
    if total_panels == 0 {
        tail_rows(0, m, c);
    }
    let mut p0 = 0;
    while p0 < total_panels {
        let np = panels_per_chunk.min(total_panels - p0);
        for (i, dst) in packed.chunks_exact_mut(k * NR).take(np).enumerate() {
            pack_b(b, k, n, nv, (p0 + i) * NR, dst);
        }
        let last_chunk = p0 + np == total_panels;
        for i0 in (0..m).step_by(MR) {
            let rows = MR.min(m - i0);
            // The next row panel of A, into L1 while this one computes. With few columns (a 5×5
            // or 10×10 plane) a panel computes for too short a time for the hardware
            // prefetchers to hide the weights' misses, and the weights are read once per
            // image, cold.
            #[cfg(target_arch = "x86_64")]
            if i0 + MR < m {
                let next = &a[(i0 + MR) * k..(i0 + 2 * MR).min(m) * k];
                for line in next.chunks(16) {
                    // SAFETY: prefetching is a hint; the address lies inside A.
                    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr() as *const i8) };
                }
            }
            let (arows, bias6, post6) = row_panel(a, k, 0, i0, rows, bias, &posts);
            let mut i = 0;
            while i < np {
                let bp = packed[i * k * NR..].as_ptr();
                let j0 = (p0 + i) * NR;
                let cols = NR.min(nv - j0);
                if let (Some(k48), true) = (kernel48, rows >= 5 && np - i == 3) {
                    // An odd count of panels ends in three at once (a 7×7 plane's 48 columns):
                    // one pass over the row panel, its broadcasts shared by 18 accumulators
                    // instead of a pair and a lone panel, whose 6 FMA chains cannot cover the
                    // FMA latency (triples throughout measured no faster than pairs).
                    // SAFETY: as below, over three consecutive packed panels.
                    unsafe { k48(k, &arows, bp, c[i0 * n + j0..].as_mut_ptr(), n, rows, 2 * NR + NR.min(nv - j0 - 2 * NR), &bias6, &post6, false, true) };
                    i += 3;
                    continue;
                }
                if let (Some(k32), true) = (kernel32, rows >= 5 && i + 1 < np) {
                    // SAFETY: as below, over two consecutive packed panels (32 columns, the
                    // valid ones inside C).
                    unsafe { k32(k, &arows, bp, c[i0 * n + j0..].as_mut_ptr(), n, rows, NR + NR.min(nv - j0 - NR), &bias6, &post6, false, true) };
                    i += 2;
                    continue;
                }
                // SAFETY: rows·cols of the tile lie inside C (asserted above); A rows hold k
                // values; the packed panel holds k·NR.
                let kern = if cols <= 8 { kernel8 } else { kernel };
                unsafe { kern(k, &arows, bp, c[i0 * n + j0..].as_mut_ptr(), n, rows, cols, &bias6, &post6) };
                i += 1;
            }
            if last_chunk {
                tail_rows(i0, rows, c);
            }
        }
        p0 += np;
    }
}

/// K block of [`one_pair`]: its packed B (KC·32 floats, 32 KiB) stays in L1.
const KC: usize = 256;

/// A product of at most 32 columns (a 5×5 plane's 25) on AVX-512: one pair of packed panels
/// (or one panel for ≤ 16 columns), masked, K block by K block. The row-panel-outer path
/// streams the whole packed B (k·32 floats: 123 KiB at k = 960) from L2 for every row panel;
/// here a block of it stays in L1 while every row panel passes over it, and the partial sums
/// wait in C between blocks: MobileNetV2's 1×1 convolutions on 5×5 planes took 0.84 of their
/// time (BENCHMARKS.md, session 13). Every output is one FMA chain, k in order, then bias and
/// post-ops: the bits of a single pass over K. With two pairs or more (a 7×7 plane's 49
/// columns), the same blocking lost to the row-panel-outer path inside the model (weights
/// cold, read at half the compute per byte), so it stays at one pair.
#[allow(clippy::too_many_arguments)]
fn one_pair(tiles: &[WideKernel; 2], m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], bias: Option<&[f32]>, posts: &[Post], scratch: &mut Vec<f32>) {
    debug_assert!(n <= 2 * NR);
    let kc = k.div_ceil(k.div_ceil(KC));
    if scratch.len() < 2 * kc * NR + 16 {
        scratch.resize(2 * kc * NR + 16, 0.0);
    }
    let align = (64 - scratch.as_ptr() as usize % 64) % 64 / 4;
    let packed = &mut scratch[align..align + 2 * kc * NR];
    let tile = tiles[(n > NR) as usize];
    for kb in (0..k).step_by(kc) {
        let kl = kc.min(k - kb);
        // The block's first panel, then its second (if any).
        let (p0, p1) = packed[..2 * kl * NR].split_at_mut(kl * NR);
        pack_b(&b[kb * n..], kl, n, n, 0, p0);
        if n > NR {
            pack_b(&b[kb * n..], kl, n, n, NR, p1);
        }
        for i0 in (0..m).step_by(MR) {
            let rows = MR.min(m - i0);
            let (arows, bias6, post6) = row_panel(a, k, kb, i0, rows, bias, posts);
            // SAFETY: rows·n of the tile lie inside C (rows ≤ m − i0); the A rows hold kl
            // values from kb on; the packed block holds kl·NR per panel used, 64-byte aligned.
            unsafe { tile(kl, &arows, packed.as_ptr(), c[i0 * n..].as_mut_ptr(), n, rows, n, &bias6, &post6, kb > 0, kb + kl == k) };
        }
    }
}

/// The micro-kernels' view of row panel i0..i0 + rows of A (rows k long) from column `k0` on,
/// with its biases and post-ops. Missing rows of a partial panel repeat its first row; they
/// are never stored.
#[allow(clippy::too_many_arguments)]
fn row_panel(a: &[f32], k: usize, k0: usize, i0: usize, rows: usize, bias: Option<&[f32]>, posts: &[Post]) -> ([*const f32; MR], [f32; MR], [Post; MR]) {
    let row = |r: usize| i0 + if r < rows { r } else { 0 };
    (
        std::array::from_fn(|r| a[row(r) * k + k0..].as_ptr()),
        std::array::from_fn(|r| if r < rows { bias.map_or(0.0, |b| b[i0 + r]) } else { 0.0 }),
        std::array::from_fn(|r| posts[row(r)]),
    )
}

/// Pack columns j0..j0+NR of B (n columns; zero beyond column `nv` ≤ n) as dst[kk·NR + j].
#[inline]
fn pack_b(b: &[f32], k: usize, n: usize, nv: usize, j0: usize, dst: &mut [f32]) {
    let cols = NR.min(nv - j0);
    if cols == NR {
        for (kk, d) in dst[..k * NR].chunks_exact_mut(NR).enumerate() {
            // Fixed-size copy: inlined vector moves, not a library call per row.
            let src: &[f32; NR] = b[kk * n + j0..kk * n + j0 + NR].try_into().unwrap();
            d.copy_from_slice(src);
        }
    } else {
        for (kk, d) in dst[..k * NR].chunks_exact_mut(NR).enumerate() {
            for (j, v) in d.iter_mut().enumerate() {
                *v = if j < cols { b[kk * n + j0 + j] } else { 0.0 };
            }
        }
    }
}

/// # Safety
/// See [`MicroKernel`]: `a[r]` readable for k values, `bp` for k·NR, the valid tile writable.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_scalar(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR]) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        let b = std::slice::from_raw_parts(bp.add(kk * NR), NR);
        for r in 0..MR {
            let av = *a[r].add(kk);
            for (x, &bv) in acc[r].iter_mut().zip(b) {
                *x += av * bv;
            }
        }
    }
    for r in 0..rows {
        for (j, &v) in acc[r][..cols].iter().enumerate() {
            *c.add(r * ldc + j) = post[r].apply(v + bias[r]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use crate::f32::{lane_mask, post_avx2_as, Post};
    use std::arch::x86_64::*;

    /// 6×16 AVX2+FMA micro-kernel: 12 accumulators, per k two B loads and six broadcasts
    /// (15 of the 16 vector registers).
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; bounds as for [`super::kernel_scalar`]; `bp` 32-byte aligned.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<const AF: bool, const CL: bool>(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR]) {
        // A last panel of 16 or 32 output channels (rows 4 or 2 of 6) runs a shorter tile.
        match rows {
            5.. => tile::<2, 6, AF, CL>(k, a, bp, c, ldc, rows, cols, bias, post),
            3..=4 => tile::<2, 4, AF, CL>(k, a, bp, c, ldc, rows, cols, bias, post),
            _ => tile::<2, 2, AF, CL>(k, a, bp, c, ldc, rows, cols, bias, post),
        }
    }

    /// 6×16·W AVX-512 micro-kernel over W (1 to 3) adjacent packed panels (`bp`, `bp + k·NR`, …):
    /// 6·W zmm accumulators, twice the columns per instruction of [`kernel`] (its tiles are
    /// bound by the FMA ports). Every output keeps the same FMA chain (k in order, then bias
    /// and post-ops), so the results are the same bits as [`kernel`]'s. For a K split in blocks
    /// ([`super::one_pair`]): with `resume` the chains continue from the raw partial sums in C;
    /// without `finish` they are stored raw for the next block. `cols` (≤ 16·W) valid columns,
    /// `rows` ≤ 6.
    ///
    /// # Safety
    /// As [`kernel`], for W·NR columns of packed B, and the CPU supports AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub(super) unsafe fn wide<const AF: bool, const CL: bool, const W: usize>(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR], resume: bool, finish: bool) {
        let z = _mm512_setzero_ps();
        let mut acc = [[z; W]; MR];
        let mut masks = [0u16; W];
        for (j, mk) in masks.iter_mut().enumerate() {
            let j0 = 16 * j;
            *mk = if j0 + 16 <= cols {
                u16::MAX
            } else if j0 < cols {
                ((1u32 << (cols - j0)) - 1) as u16
            } else {
                0
            };
        }
        // Loops over all MR rows with a test, not `0..rows`: a loop of unknown length indexes
        // the accumulators at run time, and they moved to the stack for the whole k loop.
        if resume {
            for r in 0..MR {
                if r < rows {
                    for j in 0..W {
                        acc[r][j] = _mm512_maskz_loadu_ps(masks[j], c.add(r * ldc + 16 * j));
                    }
                }
            }
        }
        macro_rules! step {
            ($kk:expr) => {{
                let kk = $kk;
                let mut bv = [z; W];
                for j in 0..W {
                    bv[j] = _mm512_load_ps(bp.add(j * k * NR + kk * NR));
                }
                for r in 0..MR {
                    let x = _mm512_set1_ps(*a[r].add(kk));
                    for j in 0..W {
                        acc[r][j] = _mm512_fmadd_ps(x, bv[j], acc[r][j]);
                    }
                }
            }};
        }
        let mut kk = 0;
        while kk + 4 <= k {
            step!(kk);
            step!(kk + 1);
            step!(kk + 2);
            step!(kk + 3);
            kk += 4;
        }
        while kk < k {
            step!(kk);
            kk += 1;
        }
        for r in 0..MR {
            if r >= rows {
                continue;
            }
            let row = c.add(r * ldc);
            if !finish {
                for j in 0..W {
                    _mm512_mask_storeu_ps(row.add(16 * j), masks[j], acc[r][j]);
                }
                continue;
            }
            let bv = _mm512_set1_ps(bias[r]);
            let p = &post[r];
            for j in 0..W {
                let mut v = _mm512_add_ps(acc[r][j], bv);
                if AF {
                    // Multiply then add, as `post_avx2_as`.
                    v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(p.scale)), _mm512_set1_ps(p.shift));
                }
                if CL {
                    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(p.lo)), _mm512_set1_ps(p.hi));
                }
                _mm512_mask_storeu_ps(row.add(16 * j), masks[j], v);
            }
        }
    }

    /// 6×8 variant for a last micro-panel of at most 8 columns (reads the first 8 of each
    /// packed B row).
    ///
    /// # Safety
    /// As [`kernel`], with `cols ≤ 8`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel8<const AF: bool, const CL: bool>(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR]) {
        debug_assert!(cols <= 8);
        match rows {
            5.. => tile::<1, 6, AF, CL>(k, a, bp, c, ldc, rows, cols, bias, post),
            3..=4 => tile::<1, 4, AF, CL>(k, a, bp, c, ldc, rows, cols, bias, post),
            _ => tile::<1, 2, AF, CL>(k, a, bp, c, ldc, rows, cols, bias, post),
        }
    }

    /// R × 8·V tile (R ≤ MR; rows ≤ R of it are stored).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const V: usize, const R: usize, const AF: bool, const CL: bool>(k: usize, a: &[*const f32; MR], bp: *const f32, c: *mut f32, ldc: usize, rows: usize, cols: usize, bias: &[f32; MR], post: &[Post; MR]) {
        let z = _mm256_setzero_ps();
        debug_assert!(rows <= R && R <= MR);
        let mut acc = [[z; V]; R];
        // One step: row kk of the packed panel (NR apart) against column kk of the A rows. A
        // macro, not a closure: closures do not inherit `target_feature`, and the intrinsics
        // would become calls.
        macro_rules! step {
            ($acc:expr, $kk:expr) => {{
                let kk = $kk;
                let mut bv = [z; V];
                for v in 0..V {
                    bv[v] = _mm256_load_ps(bp.add(kk * NR + 8 * v));
                }
                for r in 0..R {
                    let x = _mm256_broadcast_ss(&*a[r].add(kk));
                    for v in 0..V {
                        $acc[r][v] = _mm256_fmadd_ps(x, bv[v], $acc[r][v]);
                    }
                }
            }};
        }
        // Unrolled by 4 so loop control is a small share of the instruction stream: at 12
        // FMAs per step the core issues ~4 instructions per cycle, its front-end limit.
        let mut kk = 0;
        while kk + 4 <= k {
            step!(acc, kk);
            step!(acc, kk + 1);
            step!(acc, kk + 2);
            step!(acc, kk + 3);
            kk += 4;
        }
        while kk < k {
            step!(acc, kk);
            kk += 1;
        }
        for r in 0..rows {
            let bv = _mm256_set1_ps(bias[r]);
            let row = c.add(r * ldc);
            for (j, &v) in acc[r].iter().enumerate() {
                let v = post_avx2_as::<AF, CL>(_mm256_add_ps(v, bv), &post[r]);
                let j0 = 8 * j;
                if j0 + 8 <= cols {
                    _mm256_storeu_ps(row.add(j0), v);
                } else if j0 < cols {
                    let m = lane_mask(cols - j0);
                    _mm256_maskstore_ps(row.add(j0), m, v);
                }
            }
        }
    }

    /// Horizontal sum of eight lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// The last `t` (< 8) columns of C: `C[i][j] = post_i(A[i]·Bt[j] + bias_i)` for all m
    /// rows, with `bt` holding the columns as k-vectors `kp` apart (zero padded to kp, a
    /// multiple of 8). Vectorized over k (eight partial sums per output, then one horizontal
    /// sum), so one column costs k/8 FMAs per row instead of a 6×8 tile's k.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `a` holds m·k values, `bt` t·kp, `c` rows of `ldc` with
    /// t columns each writable for m rows; `posts` m long, `bias` (if any) ≥ m.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tail_cols(m: usize, k: usize, a: *const f32, bt: *const f32, kp: usize, c: *mut f32, ldc: usize, t: usize, bias: Option<&[f32]>, posts: &[Post]) {
        debug_assert!((1..8).contains(&t) && kp.is_multiple_of(8) && kp >= k && posts.len() >= m);
        match t {
            1 => tail_all::<1, 4>(m, k, a, bt, kp, c, ldc, bias, posts),
            2 => tail_all::<2, 4>(m, k, a, bt, kp, c, ldc, bias, posts),
            3 => tail_all::<3, 2>(m, k, a, bt, kp, c, ldc, bias, posts),
            4 => tail_all::<4, 2>(m, k, a, bt, kp, c, ldc, bias, posts),
            5 => tail_all::<5, 1>(m, k, a, bt, kp, c, ldc, bias, posts),
            6 => tail_all::<6, 1>(m, k, a, bt, kp, c, ldc, bias, posts),
            _ => tail_all::<7, 1>(m, k, a, bt, kp, c, ldc, bias, posts),
        }
    }

    /// All m rows of [`tail_cols`] for T columns, R rows at a time.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tail_all<const T: usize, const R: usize>(m: usize, k: usize, a: *const f32, bt: *const f32, kp: usize, c: *mut f32, ldc: usize, bias: Option<&[f32]>, posts: &[Post]) {
        let mut i = 0;
        while m - i >= R {
            tail_rows::<T, R>(i, k, a, bt, kp, c, ldc, bias, posts);
            i += R;
        }
        while i < m {
            tail_rows::<T, 1>(i, k, a, bt, kp, c, ldc, bias, posts);
            i += 1;
        }
    }

    /// Rows i0..i0 + R of [`tail_cols`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn tail_rows<const T: usize, const R: usize>(i0: usize, k: usize, a: *const f32, bt: *const f32, kp: usize, c: *mut f32, ldc: usize, bias: Option<&[f32]>, posts: &[Post]) {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let full = k - k % 8;
        let mut kk = 0;
        while kk < full {
            let mut bv = [_mm256_setzero_ps(); T];
            for j in 0..T {
                bv[j] = _mm256_loadu_ps(bt.add(j * kp + kk));
            }
            for r in 0..R {
                let av = _mm256_loadu_ps(a.add((i0 + r) * k + kk));
                for j in 0..T {
                    acc[r][j] = _mm256_fmadd_ps(av, bv[j], acc[r][j]);
                }
            }
            kk += 8;
        }
        if kk < k {
            // The last k mod 8 values of each A row (masked: the row ends there); Bt is zero
            // padded.
            let m = lane_mask(k - kk);
            for r in 0..R {
                let av = _mm256_maskload_ps(a.add((i0 + r) * k + kk), m);
                for j in 0..T {
                    acc[r][j] = _mm256_fmadd_ps(av, _mm256_loadu_ps(bt.add(j * kp + kk)), acc[r][j]);
                }
            }
        }
        for r in 0..R {
            let i = i0 + r;
            let (b, p) = (bias.map_or(0.0, |b| b[i]), &posts[i]);
            for j in 0..T {
                *c.add(i * ldc + j) = p.apply(hsum(acc[r][j]) + b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32::test_data::rnd_vec;
    use proptest::prelude::*;


    /// B larger than one packed chunk (k = 300: 10 panels per chunk, 25 panels here) with a
    /// column tail, which runs with the last chunk's row panels: the proptest's sizes stay within
    /// one chunk.
    #[test]
    fn several_chunks_with_a_column_tail_match_naive() {
        let (m, k, n): (usize, usize, usize) = (13, 300, 16 * 25 + 5);
        assert!(n.div_ceil(NR) > CHUNK_FLOATS / (k * NR));
        let (a, b, bias) = (rnd_vec(m * k, 1), rnd_vec(k * n, 2), rnd_vec(m, 3));
        let ep = Epilogue { affine: None, clamp: Some((-1.0, 1.0)) };
        let mut isas = vec![Isa::Scalar];
        if best_isa() != Isa::Scalar {
            isas.push(best_isa());
        }
        for isa in isas {
            let mut got = vec![f32::NAN; m * n];
            gemm_epilogue(isa, m, k, n, &a, &b, &mut got, Some(&bias), &ep, 0);
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64).sum();
                    let want = (s as f32 + bias[i]).clamp(-1.0, 1.0);
                    let x = got[i * n + j];
                    assert!((x - want).abs() <= 1e-4 * want.abs().max(1.0), "{isa:?} [{i}, {j}] {x} vs {want}");
                }
            }
        }
    }

    /// Products of ≤ 32 columns with k past one K block (the AVX-512 one-pair path resumes
    /// from partial sums in C): every output must be the bits of one FMA chain over k in order,
    /// then bias and post-ops, as the row-panel-outer tiles compute it. Without AVX-512 (e.g.
    /// `SUBQ_SIMD=avx2`) those columns take the other paths, whose column-tail kernel and
    /// scalar tile sum in another order: there the outputs must be close.
    #[test]
    fn k_blocked_one_pair_is_one_fma_chain() {
        let exact = best_isa() == Isa::Avx2Fma && super::super::has_avx512();
        for (m, k, n) in [(13, 300, 25), (7, 600, 16), (6, 257, 32), (11, 960, 1), (5, 513, 17)] {
            let (a, b, bias) = (rnd_vec(m * k, 7), rnd_vec(k * n, 8), rnd_vec(m, 9));
            let (scale, shift) = (rnd_vec(m, 10), rnd_vec(m, 11));
            let ep = Epilogue { affine: Some((&scale[..], &shift[..])), clamp: Some((-0.5, 0.5)) };
            let mut got = vec![f32::NAN; m * n];
            gemm_epilogue(best_isa(), m, k, n, &a, &b, &mut got, Some(&bias), &ep, 0);
            for i in 0..m {
                for j in 0..n {
                    let chain = (0..k).fold(0f32, |acc, kk| a[i * k + kk].mul_add(b[kk * n + j], acc));
                    let want = Post::of(&ep, i).apply(chain + bias[i]);
                    let x = got[i * n + j];
                    if exact {
                        assert_eq!(x.to_bits(), want.to_bits(), "m {m} k {k} n {n} [{i}, {j}]: {x} vs {want}");
                    } else {
                        assert!((x - want).abs() <= 1e-5 * want.abs().max(1.0), "m {m} k {k} n {n} [{i}, {j}]: {x} vs {want}");
                    }
                }
            }
        }
    }

    /// An odd number of panels ends in a three-panel tile on AVX-512 (a 7×7 plane's 48
    /// columns; 40 with a half panel; 80 as a pair, then a triple): every tile output is the
    /// bits of one FMA chain over k in order, then bias and post-ops, as in the pairs. Without
    /// AVX-512 the outputs must be close.
    #[test]
    fn three_panel_tiles_are_fma_chains() {
        let exact = best_isa() == Isa::Avx2Fma && super::super::has_avx512();
        for (m, k, n) in [(13, 192, 48), (12, 37, 40), (6, 300, 80), (17, 64, 49)] {
            let (a, b, bias) = (rnd_vec(m * k, 17), rnd_vec(k * n, 18), rnd_vec(m, 19));
            let (scale, shift) = (rnd_vec(m, 20), rnd_vec(m, 21));
            let ep = Epilogue { affine: Some((&scale[..], &shift[..])), clamp: Some((-0.5, 0.5)) };
            let mut got = vec![f32::NAN; m * n];
            gemm_epilogue(best_isa(), m, k, n, &a, &b, &mut got, Some(&bias), &ep, 0);
            // The column tail (n mod 8) sums in another order.
            let tiled = n - n % 8;
            for i in 0..m {
                for j in 0..n {
                    let chain = (0..k).fold(0f32, |acc, kk| a[i * k + kk].mul_add(b[kk * n + j], acc));
                    let want = Post::of(&ep, i).apply(chain + bias[i]);
                    let x = got[i * n + j];
                    if exact && j < tiled {
                        assert_eq!(x.to_bits(), want.to_bits(), "m {m} k {k} n {n} [{i}, {j}]: {x} vs {want}");
                    } else {
                        assert!((x - want).abs() <= 1e-5 * want.abs().max(1.0), "m {m} k {k} n {n} [{i}, {j}]: {x} vs {want}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn simd_and_scalar_match_naive(m in 1usize..13, k in 0usize..70, n in 1usize..80, seed in 0u64..1000, affine in any::<bool>(), clamp in any::<bool>(), c0 in 0usize..3) {
            let (a, b, bias) = (rnd_vec(m * k, seed), rnd_vec(k * n, seed + 1), rnd_vec(m, seed + 2));
            let (scale, shift) = (rnd_vec(m + c0, seed + 3), rnd_vec(m + c0, seed + 4));
            let ep = Epilogue { affine: affine.then_some((&scale[..], &shift[..])), clamp: clamp.then_some((-0.2, 0.3)) };
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64).sum();
                    want[i * n + j] = Post::of(&ep, c0 + i).apply(s as f32 + bias[i]);
                }
            }
            let mut isas = vec![Isa::Scalar];
            if best_isa() != Isa::Scalar {
                isas.push(best_isa());
            }
            for isa in isas {
                let mut got = vec![f32::NAN; m * n];
                gemm_epilogue(isa, m, k, n, &a, &b, &mut got, Some(&bias), &ep, c0);
                for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                    prop_assert!((x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1.0), "{isa:?} [{i}] {x} vs {y}");
                }
            }
        }
    }
}
