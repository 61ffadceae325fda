//! The byte GEMM on Intel AMX tiles (see [`super::amx_available`]).
//!
//! `tdpbsud C, A, B` adds to a 16 × 16 tile of i32 sums the products of A, 16 weight rows × 64
//! i8 (`c` of [`Packed8`], in its tile form [`Packed8::tiles`]), and B, 16 k-quads × 16
//! columns × 4 uint8 activations: exactly one 1 KiB stretch of a [`super::pack_b8`] panel, so
//! the activation panels of the 512-bit kernels serve as they are. The sums are exact, as with
//! `vpdpbusd`, and the row init (`−zx·Σd`), the sparse remainder and the output stage are the
//! 512-bit kernels' own ([`super::avx2::finish512`]): the results are bit-identical.
//!
//! Register blocking: 4 accumulator tiles (2 weight blocks × 2 panels, 32 × 32 outputs) and 4
//! operand tiles, so every tile loaded feeds two `tdpbsud`.

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx2::{finish512, float_free_rows, float_store_rows, gemm8_rem512, needs_slow_rounding, row_init, store_rows512, Fin, GemmOut, A_CHUNK_BYTES};
use super::pack::{Packed8, MR8, NR, TILE_K, TILE_ROWS};

/// Bytes of one tile (16 rows × 64 bytes).
const TILE_BYTES: usize = TILE_ROWS * TILE_K;

/// The tile configuration for `ldtilecfg` (palette 1): tiles 0–3 accumulators (16 rows × 16
/// i32), 4–5 weights, 6–7 activations.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// For products over `kq` k-quads: with one k-tile (`kq` ≤ 16) the weight tiles are
    /// `4·kq` bytes wide and the activation tiles `kq` rows deep, so no load reads past the
    /// panel's `kq` rows (with `k` = 16, three quarters of a full tile's bytes).
    fn for_depth(kq: usize) -> TileConfig {
        let kq = kq.clamp(1, TILE_ROWS);
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            let (colsb, rows) = match t {
                4 | 5 => (4 * kq, TILE_ROWS),
                6 | 7 => (TILE_K, kq),
                _ => (TILE_K, TILE_ROWS),
            };
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            c[48 + t] = rows as u8;
        }
        TileConfig(c)
    }
}

/// The four accumulator tiles of one block, as stored by `tilestored` (tile `2·rt + ct`).
#[repr(C, align(64))]
struct Sums([[[i32; NR]; TILE_ROWS]; 4]);

/// `R` weight blocks (16 rows each, `a`, the next `a_next` bytes on) times `C` panels (`b`, the
/// next `b_next` bytes on) over `kt` k-tiles, stored to `sums` (tile `2·rt + ct`). Tiles: 0–3
/// accumulators, 4–5 weights, 6–7 activations. The tile registers are not the compiler's (Rust
/// has no AMX register class): the asm blocks pass them on among themselves.
#[inline(always)]
unsafe fn block_product<const R: usize, const C: usize>(a: *const i8, a_next: usize, b: *const u8, b_next: usize, kt: usize, sums: *mut Sums) {
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem, preserves_flags));
    let stride = TILE_K;
    for t in 0..kt {
        let (a0, b0) = (a.add(t * TILE_BYTES), b.add(t * TILE_BYTES));
        match (R, C) {
            (2, 2) => asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbsud tmm2, tmm5, tmm6",
                "tdpbsud tmm1, tmm4, tmm7",
                "tdpbsud tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a0.add(a_next), b0 = in(reg) b0, b1 = in(reg) b0.add(b_next), s = in(reg) stride,
                options(nostack, readonly, preserves_flags),
            ),
            (2, 1) => asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm2, tmm5, tmm6",
                a0 = in(reg) a0, a1 = in(reg) a0.add(a_next), b0 = in(reg) b0, s = in(reg) stride,
                options(nostack, readonly, preserves_flags),
            ),
            (1, 2) => asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm1, tmm4, tmm7",
                a0 = in(reg) a0, b0 = in(reg) b0, b1 = in(reg) b0.add(b_next), s = in(reg) stride,
                options(nostack, readonly, preserves_flags),
            ),
            _ => asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                a0 = in(reg) a0, b0 = in(reg) b0, s = in(reg) stride,
                options(nostack, readonly, preserves_flags),
            ),
        }
    }
    let (o, s) = (sums as *mut u8, NR * 4);
    asm!(
        "tilestored [{o} + {s}*1], tmm0",
        "tilestored [{o1} + {s}*1], tmm1",
        "tilestored [{o2} + {s}*1], tmm2",
        "tilestored [{o3} + {s}*1], tmm3",
        o = in(reg) o, o1 = in(reg) o.add(TILE_BYTES), o2 = in(reg) o.add(2 * TILE_BYTES), o3 = in(reg) o.add(3 * TILE_BYTES), s = in(reg) s,
        options(nostack, preserves_flags),
    );
}

/// Rows `r0..r1` of the byte GEMM (`r0` a multiple of [`TILE_ROWS`]; `dst` rows relative to
/// `r0`) on AMX tiles: the arguments of `avx2::gemm8_loop`, `b` from [`super::pack_b8`] (its
/// [`super::PANEL_SLACK`] covers the last k-tile's reads past the last panel). Called from
/// AVX-512 code (the epilogue's), on a CPU where [`super::amx_available`] holds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm8_loop<const FAST: bool, const CAP: bool>(p8: &Packed8, r0: usize, r1: usize, b: *const u8, x: *const u8, n: usize, zx: i32, f: &Fin, dst: &GemmOut) {
    let (kq, kt, np) = (p8.k.div_ceil(4), p8.k.div_ceil(TILE_K), n.div_ceil(NR));
    let (lo, hi) = (r0 / TILE_ROWS, r1.div_ceil(TILE_ROWS));
    let (a_next, b_next) = (kt * TILE_BYTES, kq * NR * 4);
    let a = p8.tiles.as_ptr();
    let cfg = TileConfig::for_depth(if kt == 1 { kq } else { TILE_ROWS });
    asm!("ldtilecfg [{c}]", c = in(reg) cfg.0.as_ptr(), options(nostack, readonly, preserves_flags));
    // Two sets of sums: a block's epilogue (vector code) runs after the next block's tile
    // instructions are issued, so that the out-of-order core overlaps the two instead of
    // waiting for the tiles between epilogues (which, with one k-tile, cost as much as them).
    let mut sums = [Sums([[[0; NR]; TILE_ROWS]; 4]), Sums([[[0; NR]; TILE_ROWS]; 4])];
    let sp = sums.as_mut_ptr();
    let mut pending: Option<Block> = None;
    // As in the 512-bit loop: weight blocks in chunks that stay in L2 while every panel passes.
    let per = (A_CHUNK_BYTES / a_next).clamp(2, (hi - lo).max(2)) & !1;
    for c0 in (lo..hi).step_by(per) {
        let c1 = (c0 + per).min(hi);
        let mut jp = 0;
        while jp < np {
            let bp = b.add(jp * b_next);
            let mut ib = c0;
            while ib < c1 {
                let blk = Block { ib, jp, two_blocks: ib + 1 < c1, two_panels: jp + 1 < np, buf: pending.map_or(0, |p| 1 - p.buf) };
                let (ap, out) = (a.add(ib * a_next), sp.add(blk.buf));
                match (blk.two_blocks, blk.two_panels) {
                    (true, true) => block_product::<2, 2>(ap, a_next, bp, b_next, kt, out),
                    (true, false) => block_product::<2, 1>(ap, a_next, bp, b_next, kt, out),
                    (false, true) => block_product::<1, 2>(ap, a_next, bp, b_next, kt, out),
                    (false, false) => block_product::<1, 1>(ap, a_next, bp, b_next, kt, out),
                }
                if let Some(p) = pending {
                    store_block::<FAST, CAP>(&p, &*sp.add(p.buf), p8, r0, r1, x, n, zx, f, dst);
                }
                pending = Some(blk);
                ib += 2;
            }
            jp += 2;
        }
    }
    if let Some(p) = pending {
        store_block::<FAST, CAP>(&p, &*sp.add(p.buf), p8, r0, r1, x, n, zx, f, dst);
    }
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}

/// A block of up to 2 × 2 accumulator tiles: weight blocks `ib..`, panels `jp..`, in
/// `sums[buf]`.
#[derive(Clone, Copy)]
struct Block {
    ib: usize,
    jp: usize,
    two_blocks: bool,
    two_panels: bool,
    buf: usize,
}

/// The outputs of a [`Block`] from its stored sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_block<const FAST: bool, const CAP: bool>(blk: &Block, sums: &Sums, p8: &Packed8, r0: usize, r1: usize, x: *const u8, n: usize, zx: i32, f: &Fin, dst: &GemmOut) {
    for rt in 0..1 + blk.two_blocks as usize {
        for ct in 0..1 + blk.two_panels as usize {
            let col = (blk.jp + ct) * NR;
            store_tile::<FAST, CAP>(&sums.0[2 * rt + ct], p8, (blk.ib + rt) * TILE_ROWS, r0, r1, x, n, zx, col, NR.min(n - col), f, dst);
        }
    }
}

/// The output of one accumulator tile: rows `row0..` (absolute, up to `r1`) of columns
/// `col..col + cols`, in groups of [`MR8`] rows through the 512-bit epilogue.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile<const FAST: bool, const CAP: bool>(tile: &[[i32; NR]; TILE_ROWS], p8: &Packed8, row0: usize, r0: usize, r1: usize, x: *const u8, n: usize, zx: i32, col: usize, cols: usize, f: &Fin, dst: &GemmOut) {
    let valid = TILE_ROWS.min(r1 - row0);
    if valid == TILE_ROWS && cols == NR {
        if let Some((e, out, capped)) = float_free_rows(dst, row0 - r0, TILE_ROWS) {
            let rem = *p8.rem_start.get_unchecked(row0) != *p8.rem_start.get_unchecked(row0 + TILE_ROWS);
            // The common case in four groups of four rows (MR8 = 6 leaves a group of 4 on the
            // slower row-by-row path).
            for g in (0..TILE_ROWS).step_by(4) {
                let mut z = [_mm512_setzero_si512(); 4];
                for (r, v) in z.iter_mut().enumerate() {
                    *v = tile_row(tile, g + r, p8, row0 + g + r, zx);
                }
                if rem {
                    gemm8_rem512(&mut z, p8, row0 + g, x, n, col, cols);
                }
                float_store_rows::<4>(&z, e, out, row0 - r0 + g, n, col, capped);
            }
            return;
        }
    }
    let mut g = 0;
    while g < valid {
        let rows = MR8.min(valid - g);
        let mut z = [_mm512_setzero_si512(); MR8];
        for (r, v) in z.iter_mut().enumerate().take(rows) {
            *v = tile_row(tile, g + r, p8, row0 + g + r, zx);
        }
        if needs_slow_rounding(dst, f, row0 - r0 + g, rows) {
            finish512::<FAST, CAP>(&z, p8, row0 + g, rows, r0, x, n, col, cols, f, dst);
        } else {
            if *p8.rem_start.get_unchecked(row0 + g) != *p8.rem_start.get_unchecked(row0 + g + rows) {
                gemm8_rem512(&mut z[..rows], p8, row0 + g, x, n, col, cols);
            }
            store_rows512::<CAP>(&z, row0 - r0 + g, rows, col, cols, n, f, dst);
        }
        g += MR8;
    }
}

/// Row `r` of an accumulator tile plus the [`row_init`] of output row `row`: its exact sums.
#[inline(always)]
unsafe fn tile_row(tile: &[[i32; NR]; TILE_ROWS], r: usize, p8: &Packed8, row: usize, zx: i32) -> __m512i {
    _mm512_add_epi32(_mm512_load_si512(tile[r].as_ptr() as *const __m512i), _mm512_set1_epi32(row_init(p8, row, zx)))
}
