//! [`Kernel`]: the CPU kernel class a model runs with, detected at run time or forced by
//! name (`llm.cpu_kernel`), so every class can be tested and benchmarked on any machine
//! that has its instructions.
//!
//! A class covers every hot loop of the forward pass, not only the matrix tiles: the
//! activation quantizer and the attention loops follow it ([`Kernel::f32_simd`]), so a
//! forced `avx2` run executes no AVX-512 instruction anywhere.

/// The kernel class: the matrix tile kernel and, through [`Kernel::f32_simd`], the width
/// of the f32 loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 VNNI on 512-bit vectors: four blocks per `vpdpbusd` pair.
    Vnni512,
    /// AVX-512 VNNI on 256-bit vectors (EVEX `vpdpbusd`).
    Vnni,
    /// AVX-VNNI (VEX `vpdpbusd` on 256-bit vectors: Alder Lake and later, Zen 5), with
    /// AVX2 f32 loops.
    AvxVnni,
    /// AVX2 + FMA (`vpmaddubsw`, `vpmaddwd`).
    Avx2,
    /// Portable Rust.
    Scalar,
}

/// The instruction set of the f32 loops (attention, activation quantization).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Simd {
    Avx512,
    Avx2,
    Portable,
}

/// Every class, fastest first.
const ALL: [Kernel; 5] = [Kernel::Vnni512, Kernel::Vnni, Kernel::AvxVnni, Kernel::Avx2, Kernel::Scalar];

impl Kernel {
    /// The fastest class this CPU runs.
    pub fn detect() -> Self {
        ALL.into_iter().find(|k| k.supported()).unwrap_or(Kernel::Scalar)
    }

    /// Whether this CPU has every instruction the class uses.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512vnni");
            match self {
                Kernel::Vnni512 => avx512 && has!("avx512bw") && has!("avx512dq"),
                Kernel::Vnni => avx512,
                Kernel::AvxVnni => avx2 && has!("avxvnni"),
                Kernel::Avx2 => avx2,
                Kernel::Scalar => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Scalar
        }
    }

    /// Classes this CPU can run, fastest first (tests compare them all).
    pub fn available() -> Vec<Kernel> {
        ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// The class named `name` (`auto` is the detected one), if this CPU runs it. Names are
    /// those of [`Kernel::name`], plus `avx512` for `avx512-vnni-512` and `portable` for
    /// `scalar`.
    pub fn from_name(name: &str) -> Result<Self, String> {
        let kernel = match name {
            "auto" => return Ok(Self::detect()),
            "avx512" | "avx512-vnni-512" => Kernel::Vnni512,
            "avx512-vnni" => Kernel::Vnni,
            "avx-vnni" => Kernel::AvxVnni,
            "avx2" => Kernel::Avx2,
            "portable" | "scalar" => Kernel::Scalar,
            other => {
                return Err(format!(
                    "unknown CPU kernel `{other}`: one of auto, avx512 (avx512-vnni-512), avx512-vnni, avx-vnni, avx2, portable"
                ))
            }
        };
        if !kernel.supported() {
            return Err(format!(
                "this CPU lacks the instructions of the `{}` kernel (it runs: {})",
                kernel.name(),
                Self::available().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(kernel)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Vnni512 => "avx512-vnni-512",
            Kernel::Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }

    /// Whether the class runs attention over the 8-bit KV cache in SIMD
    /// ([`crate::llm::attention_q8`]); the others have only its portable reference loops.
    pub fn has_q8_attention(self) -> bool {
        matches!(self, Kernel::Vnni512 | Kernel::Vnni)
    }

    /// The instruction set of the class's f32 loops.
    pub fn f32_simd(self) -> F32Simd {
        match self {
            Kernel::Vnni512 | Kernel::Vnni => F32Simd::Avx512,
            Kernel::AvxVnni | Kernel::Avx2 => F32Simd::Avx2,
            Kernel::Scalar => F32Simd::Portable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for k in Kernel::available() {
            assert_eq!(Kernel::from_name(k.name()), Ok(k));
        }
        assert_eq!(Kernel::from_name("portable"), Ok(Kernel::Scalar));
        assert_eq!(Kernel::from_name("auto"), Ok(Kernel::detect()));
        let err = Kernel::from_name("neon").unwrap_err();
        assert!(err.contains("unknown CPU kernel `neon`") && err.contains("avx2"), "{err}");
    }

    #[test]
    fn a_class_this_cpu_lacks_is_refused_by_name() {
        match ALL.into_iter().find(|k| !k.supported()) {
            Some(missing) => {
                let err = Kernel::from_name(missing.name()).unwrap_err();
                assert!(err.contains(missing.name()) && err.contains("lacks"), "{err}");
            }
            // Every class runs here: the refusal path has nothing to refuse.
            None => assert_eq!(Kernel::available().len(), ALL.len()),
        }
    }

    #[test]
    fn detect_is_the_fastest_available_and_scalar_is_always_there() {
        let available = Kernel::available();
        assert_eq!(available[0], Kernel::detect());
        assert_eq!(*available.last().unwrap(), Kernel::Scalar);
        assert_eq!(Kernel::Avx2.f32_simd(), F32Simd::Avx2);
        assert_eq!(Kernel::Scalar.f32_simd(), F32Simd::Portable);
    }
}
