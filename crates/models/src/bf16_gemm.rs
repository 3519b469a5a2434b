//! Matrix products `C = A B` with bf16 operands and f32 accumulation, on the CPU's AVX512-BF16
//! unit (`vdpbf16ps`: 32 multiply-adds per instruction, twice the 16 of an AVX2 f32 pair of FMAs).
//!
//! `B` is a frozen weight, rounded to bf16 and packed once ([`PackedB`]); `A` (activations, f32)
//! is rounded to bf16 per product; `C` is f32. Each product `a_ik b_kj` is exact in f32, so the
//! error against the f32 product is that of the two roundings (at most 2⁻⁸ relative each) plus
//! f32 summation: `|C − C_f32| ≤ 2⁻⁷ Σ_k |a_ik b_kj|` up to f32 rounding, the bound the tests check.
//!
//! [`available`] says whether this CPU has the instructions; without them [`matmul`] computes the
//! same bf16 products in scalar code (slow: loaders then do not pack for it; see the precision
//! module).

use burn::tensor::bf16;
use rayon::prelude::*;

/// Columns of `B` per packed panel: two 16-lane registers.
const NR: usize = 32;
/// Rows of `A` per micro-tile: 8 rows × 2 registers of accumulators.
const MR: usize = 8;

/// Whether this CPU runs the bf16 kernel (AVX-512 F and BF16, as the OS exposes them).
pub fn available() -> bool {
    let cpu = crate::cpu_features::CpuFeatures::detect();
    cpu.avx512f && cpu.avx512_bf16
}

/// A `[k, n]` matrix rounded to bf16 (round to nearest even) in the kernel's layout: panels of 32
/// columns; in each, for every pair of rows `(2q, 2q + 1)`, the 32 columns' two values side by
/// side (one `u32` per column: row `2q` in the low half), so that one `vdpbf16ps` adds
/// `a_{i,2q} b_{2q,j} + a_{i,2q+1} b_{2q+1,j}` to 16 columns at once. Odd `k` and the last panel's
/// missing columns are zero.
#[derive(Debug, Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    pairs: usize,
    data: Vec<u32>,
}

fn bits(x: f32) -> u32 {
    bf16::from_f32(x).to_bits() as u32
}

fn value(bits: u32) -> f32 {
    bf16::from_bits(bits as u16).to_f32()
}

impl PackedB {
    /// Packs the `[k, n]` matrix whose `(row, column)` entry is `b(row, column)`.
    pub fn pack(k: usize, n: usize, b: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * pairs * NR];
        data.par_chunks_mut(pairs * NR).enumerate().for_each(|(p, panel)| {
            for (q, row) in panel.chunks_mut(NR).enumerate() {
                for (j, slot) in row.iter_mut().enumerate() {
                    let col = p * NR + j;
                    if col < n {
                        let lo = bits(b(2 * q, col));
                        let hi = if 2 * q + 1 < k { bits(b(2 * q + 1, col)) } else { 0 };
                        *slot = lo | (hi << 16);
                    }
                }
            }
        });
        PackedB { k, n, pairs, data }
    }

    /// Rows of `B` (the product's inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B` (the product's output width).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes the packed values take.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// Entry `(row, col)` as the kernel sees it (the bf16 value, as f32).
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let slot = self.data[((col / NR) * self.pairs + row / 2) * NR + col % NR];
        value(if row.is_multiple_of(2) { slot & 0xffff } else { slot >> 16 })
    }
}

/// `A` `[m, k]` (row-major f32) times `b`, as `[m, n]` row-major f32. Uses the AVX512-BF16 kernel
/// where [`available`], the same products in scalar code otherwise.
pub fn matmul(a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
    assert_eq!(a.len(), m * b.k, "bf16 product: A has {} values, not {m} × {}", a.len(), b.k);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512 F and BF16 (checked above).
        return unsafe { x86::matmul(a, m, b) };
    }
    matmul_scalar(a, m, b)
}

/// The same products in plain code: `A` rounded to bf16 as the kernel rounds it, f32 sums.
pub fn matmul_scalar(a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
    let mut c = vec![0f32; m * b.n];
    c.par_chunks_mut(b.n.max(1)).enumerate().for_each(|(i, row)| {
        let a_row: Vec<f32> = a[i * b.k..(i + 1) * b.k].iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        for (j, out) in row.iter_mut().enumerate() {
            *out = (0..b.k).map(|kk| a_row[kk] * b.get(kk, j)).sum();
        }
    });
    c
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use crate::bf16_gemm::{MR, NR, PackedB, bits};

    /// Products of at most this many rows split `B`'s panels between tasks, not the rows.
    const FEW_ROWS: usize = 64;
    /// `A`s of fewer values are converted on the calling thread (a task costs more).
    const SERIAL_PACK: usize = 1 << 16;

    /// The output's base pointer, shared by tasks that write disjoint parts of it.
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    // SAFETY: only dereferenced through `at` by tasks writing disjoint elements.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}
    impl OutPtr {
        /// The element `offset` past the base.
        ///
        /// # Safety
        /// `offset` lies within the output.
        unsafe fn at(self, offset: usize) -> *mut f32 {
            // SAFETY: the caller's.
            unsafe { self.0.add(offset) }
        }
    }

    /// `A` rounded to bf16 in pairs along `k` (one `u32` per pair, the even column low), rows
    /// padded with zeros to a multiple of [`MR`] so every micro-tile reads whole rows.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pack_a(a: &[f32], m: usize, k: usize, pairs: usize) -> Vec<u32> {
        let rows = m.div_ceil(MR) * MR;
        let mut packed = vec![0u32; rows * pairs];
        if m * k < SERIAL_PACK {
            for (i, out) in packed.chunks_mut(pairs).take(m).enumerate() {
                convert_row(&a[i * k..(i + 1) * k], out)
            }
        } else {
            packed.par_chunks_mut(pairs).take(m).enumerate().for_each(|(i, out)| {
                // The closure inherits the enclosing function's target features.
                convert_row(&a[i * k..(i + 1) * k], out)
            });
        }
        packed
    }

    /// One row: 32 values per `vcvtne2ps2bf16`, the tail one by one.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn convert_row(row: &[f32], out: &mut [u32]) {
        let whole = row.len() / 32;
        for c in 0..whole {
            // SAFETY: c * 32 + 32 ≤ row.len() and c * 16 + 16 ≤ out.len() (pairs = ⌈k/2⌉).
            unsafe {
                let lo = _mm512_loadu_ps(row.as_ptr().add(c * 32));
                let hi = _mm512_loadu_ps(row.as_ptr().add(c * 32 + 16));
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.as_mut_ptr().add(c * 16) as *mut _, both);
            }
        }
        for q in whole * 16..out.len() {
            let lo = bits(row[2 * q]);
            let hi = row.get(2 * q + 1).map_or(0, |&x| bits(x));
            out[q] = lo | (hi << 16);
        }
    }

    /// `C[rows, cols] = A[MR, ·] B[·, panel]` for one micro-tile: `a` points at the tile's first
    /// packed row (rows `a_stride` apart), `b` at the panel, `c` at the tile's first output.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `a` holds `MR` rows of `pairs` values, `b` `pairs × NR`,
    /// and `c` `rows` rows (`ldc` apart) of at least `cols ≤ NR` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        a: *const u32,
        a_stride: usize,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // SAFETY: the reads stay within the extents the caller guarantees.
        unsafe {
            for q in 0..pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR) as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16) as *const _));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * a_stride + q) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], ar, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], ar, b1);
                }
            }
            let low = if cols >= 16 { u16::MAX } else { ((1u32 << cols) - 1) as u16 };
            let high = if cols >= 32 {
                u16::MAX
            } else if cols > 16 {
                ((1u32 << (cols - 16)) - 1) as u16
            } else {
                0
            };
            for (r, acc) in acc.iter().enumerate().take(rows) {
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, low, acc[0]);
                if high != 0 {
                    _mm512_mask_storeu_ps(row.add(16), high, acc[1]);
                }
            }
        }
    }

    /// One task's share of `C`: the rows `rows` (starting on a row block) against the panels in
    /// `group`, the first of which is panel `first_panel`; each panel stays in cache while the
    /// rows' blocks pass over it.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `packed` holds `pairs` values for every row up to
    /// `rows.end` rounded up to [`MR`] (padded); `out` points at `C`, `n` columns wide, with room
    /// for these rows; no other task writes these rows in these panels' columns meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tiles(
        packed: &[u32],
        pairs: usize,
        rows: std::ops::Range<usize>,
        group: &[u32],
        first_panel: usize,
        n: usize,
        out: OutPtr,
    ) {
        for (g, panel) in group.chunks(pairs * NR).enumerate() {
            let p = first_panel + g;
            let cols = (n - p * NR).min(NR);
            for block in rows.clone().step_by(MR) {
                // SAFETY: `packed` has MR whole rows from any block start (padded); the panel has
                // pairs × NR values; the tile writes `rows` rows of `cols` inside this share.
                unsafe {
                    tile(
                        packed.as_ptr().add(block * pairs),
                        pairs,
                        panel.as_ptr(),
                        pairs,
                        out.at(block * n + p * NR),
                        n,
                        (rows.end - block).min(MR),
                        cols,
                    )
                }
            }
        }
    }

    /// `C = A B`, split between rayon's tasks: by panels of `B` for few rows (each panel of `B`
    /// is then read from memory once, where tasks of rows would each read all of `B`, and the
    /// packed rows, at most FEW_ROWS × k, stay in cache), by row blocks otherwise (a panel, up to
    /// 96 KB at k = 1536, stays in L2 while the task's row blocks pass over it).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn matmul(a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
        let (n, pairs) = (b.n, b.pairs);
        let mut c = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return c;
        }
        let packed = pack_a(a, m, b.k, pairs);
        let tasks = rayon::current_num_threads() * 2;
        let (packed, panels) = (&packed, &b.data);
        let out = OutPtr(c.as_mut_ptr());
        // SAFETY (both splits): the tasks write disjoint parts of `c` (their own panels' columns,
        // or their own rows), which outlives them: `for_each` returns when every task has ended.
        if m <= FEW_ROWS {
            let panel_count = n.div_ceil(NR);
            let panels_per_task = panel_count.div_ceil(tasks.min(panel_count));
            panels
                .par_chunks(panels_per_task * pairs * NR)
                .enumerate()
                .for_each(|(t, group)| unsafe { tiles(packed, pairs, 0..m, group, t * panels_per_task, n, out) });
        } else {
            let rows_per_task = (m.div_ceil(tasks).div_ceil(MR) * MR).clamp(MR, 128);
            (0..m.div_ceil(rows_per_task)).into_par_iter().for_each(|t| unsafe {
                let first = t * rows_per_task;
                tiles(packed, pairs, first..(first + rows_per_task).min(m), panels, 0, n, out)
            });
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values of both signs and varied magnitude.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// The product against f64 arithmetic on the f32 inputs: within 2⁻⁷ Σ|a b| (the two bf16
    /// roundings) plus 1e-5 of the same sum (f32 summation).
    fn check_against_f32(m: usize, k: usize, n: usize, product: fn(&[f32], usize, &PackedB) -> Vec<f32>) {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let packed = PackedB::pack(k, n, |r, c| b[r * n + c]);
        let c = product(&a, m, &packed);
        assert_eq!(c.len(), m * n);
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64).sum();
                let scale: f64 = (0..k).map(|kk| (a[i * k + kk] as f64 * b[kk * n + j] as f64).abs()).sum();
                let err = (c[i * n + j] as f64 - exact).abs();
                let bound = scale * (2f64.powi(-7) + 1e-5) + 1e-30;
                assert!(
                    err <= bound,
                    "[{m}×{k}]·[{k}×{n}] at ({i}, {j}): {} vs {exact}, error {err} > {bound}",
                    c[i * n + j]
                );
                worst = worst.max(err / scale.max(1e-30));
            }
        }
        // bf16 rounding really happened (a kernel computing in f32 would not be caught otherwise,
        // and neither would one that dropped half the terms, which the bound catches).
        assert!(worst > 1e-5, "[{m}×{k}]·[{k}×{n}]: error {worst} of Σ|ab| is too small for bf16 operands");
    }

    #[test]
    fn kernel_matches_f32_within_the_bf16_bound_on_every_edge_shape() {
        // Odd k, partial panels and row blocks, one row, a panel exactly full, k past 32; panels
        // shared unevenly between the tasks of a few-row product (33 × 200: 7 panels); products
        // of more rows than FEW_ROWS, split by rows (70, 130).
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 64, 32),
            (9, 33, 33),
            (17, 70, 65),
            (40, 576, 48),
            (5, 1536, 20),
            (33, 96, 200),
            (70, 100, 70),
            (130, 40, 33),
        ] {
            check_against_f32(m, k, n, matmul);
            check_against_f32(m, k, n, matmul_scalar);
        }
    }

    #[test]
    fn kernel_equals_the_scalar_products() {
        if !available() {
            eprintln!("this CPU has no AVX512-BF16: only the scalar products were checked");
            return;
        }
        let (m, k, n) = (37, 300, 70);
        let a = values(m * k, 3);
        let b = values(k * n, 4);
        let packed = PackedB::pack(k, n, |r, c| b[r * n + c]);
        let (fast, slow) = (matmul(&a, m, &packed), matmul_scalar(&a, m, &packed));
        for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
            // Same bf16 operands, exact f32 products; only the summation order differs.
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "element {i}: kernel {x}, scalar {y}");
        }
    }

    #[test]
    fn packing_keeps_every_entry_rounded_to_bf16() {
        let (k, n) = (7, 35);
        let b = values(k * n, 5);
        let packed = PackedB::pack(k, n, |r, c| b[r * n + c]);
        for r in 0..k {
            for c in 0..n {
                assert_eq!(packed.get(r, c), bf16::from_f32(b[r * n + c]).to_f32(), "entry ({r}, {c})");
            }
        }
    }
}
