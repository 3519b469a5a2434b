//! A small seeded generator (SplitMix64) for everything that must be reproducible from a seed
//! alone — parameter initialisation, shuffles, splits — rather than from the backend's global
//! generator, which concurrent work (other tests, other interventions) also draws from.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// SplitMix64 with Box–Muller normals.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A tensor of standard normals.
    pub fn normal_tensor<B: Backend, const D: usize>(&mut self, shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// A random mutation of `input`, for the fuzz tests of every parser: one to four edits, each
    /// a flipped bit, a byte set to an edge value (0, 0x7F, 0x80, 0xFF, a quote, a brace), a
    /// little-endian 0xFFFFFFFF or 0x7FFFFFFF written over four bytes (huge lengths and counts),
    /// a deleted or duplicated span, or the input cut short; or, one time in sixteen, random
    /// bytes of a random length.
    pub fn mutated(&mut self, input: &[u8]) -> Vec<u8> {
        if self.below(16) == 0 {
            return (0..self.below(256)).map(|_| self.below(256) as u8).collect();
        }
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            if out.is_empty() {
                out.push(self.below(256) as u8);
                continue;
            }
            let at = self.below(out.len());
            match self.below(7) {
                0 => out[at] ^= 1 << self.below(8),
                1 => out[at] = [0u8, 0x7F, 0x80, 0xFF, b'"', b'{', b'\\'][self.below(7)],
                2 => {
                    let word: [u8; 4] = if self.below(2) == 0 { [0xFF; 4] } else { [0xFF, 0xFF, 0xFF, 0x7F] };
                    for (i, b) in word.iter().enumerate() {
                        if let Some(x) = out.get_mut(at + i) {
                            *x = *b;
                        }
                    }
                }
                3 => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    out.drain(at..end);
                }
                4 => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    let span = out[at..end].to_vec();
                    out.splice(at..at, span);
                }
                5 => out.truncate(at),
                _ => out.insert(at, self.below(256) as u8),
            }
        }
        out
    }

    /// A tensor uniform in [−bound, bound).
    pub fn uniform_tensor<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f64,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((2.0 * self.uniform() - 1.0) * bound) as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}
