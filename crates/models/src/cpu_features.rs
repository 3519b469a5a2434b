//! What the CPU offers the matrix products, detected at run time. The binary is built for any
//! x86-64 CPU; burn-flex's products go through `gemm`, which picks its AVX2/FMA (or scalar)
//! kernels at run time, and, in a build with this crate's `avx512` feature (gemm's `x86-v4`),
//! its AVX-512 kernels where [`CpuFeatures::avx512f`] holds. Recorded in every run's `report.json` (`compute.cpu`), so that a time can
//! be read against the kernels that produced it.

use serde::Serialize;

/// The instruction sets that decide which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuFeatures {
    /// AVX-512 Foundation: gemm's 16-lane f32 kernels (in a build with the `avx512` feature).
    pub avx512f: bool,
    /// AVX-512 BF16 (`vdpbf16ps`): bf16 dot products with f32 accumulation.
    pub avx512_bf16: bool,
    /// AVX2 with FMA: gemm's 8-lane kernels, the fallback.
    pub fma: bool,
}

impl CpuFeatures {
    /// This CPU's (what the OS lets programs use; under valgrind, which emulates no AVX-512,
    /// the AVX-512 flags are off).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
                fma: std::arch::is_x86_feature_detected!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures { avx512f: false, avx512_bf16: false, fma: false }
        }
    }

    /// The f32 kernels gemm picks with these features in this build: `avx512f` (only with the
    /// `avx512` feature), `fma` or `scalar` (on x86-64; other architectures have their own).
    pub fn f32_kernels(&self) -> &'static str {
        if self.avx512f && cfg!(feature = "avx512") {
            "avx512f"
        } else if self.fma {
            "fma"
        } else {
            "scalar"
        }
    }
}
