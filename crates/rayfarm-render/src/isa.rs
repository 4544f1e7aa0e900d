//! Which instruction-set path the renderer's kernels take on this CPU.
//!
//! One release binary runs on every x86-64 (and aarch64) CPU and picks, at run time, the
//! widest path the CPU has; the environment variable `RAYFARM_ISA` forces one (`scalar`, or
//! `avx2` or `avx512` on a CPU that has it). Every path computes the same IEEE operations in
//! the same order per lane, with no fused multiply-add and no approximate reciprocals, so the
//! bytes of an image never depend on the path: tests render with each path this machine
//! supports and compare bytes.
//!
//! Paths today:
//! - `scalar`: portable code (SSE2 on x86-64, NEON on aarch64, through glam).
//! - `avx2`: the BVH node test checks all 8 children of a node in one 256-bit operation, and
//!   the traversal loop around it is compiled for AVX2; so are the path tracer's and the
//!   baker's whole loops ([`run`]), with BMI1/2, LZCNT and POPCNT.
//! - `avx512`: as `avx2`, with the path tracer's and the baker's loops compiled for AVX-512
//!   (F, VL, BW, DQ) too: twice the vector registers, fewer spills.
//!
//! The wavefront kernel (`integrator::wavefront`) shades 16 paths per operation on every
//! path: one AVX-512 instruction per operation on `avx512`, two on `avx2`, four SSE2 (or NEON)
//! ones on `scalar`; the same IEEE operation per lane on each.

use std::sync::OnceLock;

/// A code path of the renderer's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

/// `RAYFARM_ISA` names a path that does not exist or that this CPU cannot run.
#[derive(Debug, thiserror::Error)]
#[error(
    "RAYFARM_ISA={value}: {why}; this CPU runs {supported} (unset RAYFARM_ISA to take the best)"
)]
pub struct IsaError {
    pub value: String,
    pub why: &'static str,
    pub supported: String,
}

impl Isa {
    /// Every path, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether BVH traversal takes the 8-wide AVX2 node test on this path.
    #[inline(always)]
    pub fn wide_nodes(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            // The paths compile whole kernels for these ([`run`]).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("bmi2")
                    && std::arch::is_x86_feature_detected!("lzcnt")
                    && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The paths this CPU runs, narrowest first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The widest path this CPU runs.
    pub fn best() -> Isa {
        *Isa::supported().last().expect("scalar is always supported")
    }

    /// The path `RAYFARM_ISA` asks for (`value`), or the best one when it is unset.
    pub fn from_env_value(value: Option<&str>) -> Result<Isa, IsaError> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Isa::best());
        };
        let supported = || {
            Isa::supported()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match Isa::from_name(&value.to_ascii_lowercase()) {
            Some(isa) if isa.is_supported() => Ok(isa),
            Some(_) => Err(IsaError {
                value: value.into(),
                why: "this CPU lacks the instructions of that path",
                supported: supported(),
            }),
            None => Err(IsaError {
                value: value.into(),
                why: "no such path (the paths are scalar, avx2 and avx512)",
                supported: supported(),
            }),
        }
    }

    /// The path from `RAYFARM_ISA`, checked: programs call this at start-up to report a bad
    /// value as an error.
    pub fn from_env() -> Result<Isa, IsaError> {
        Isa::from_env_value(std::env::var("RAYFARM_ISA").ok().as_deref())
    }
}

/// The path new scenes take: `RAYFARM_ISA`, or the best this CPU runs. A bad `RAYFARM_ISA`
/// (which programs report at start-up through [`Isa::from_env`]) falls back to the best path
/// with a warning; whichever path runs, the bytes are the same.
pub fn selected() -> Isa {
    static SELECTED: OnceLock<Isa> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        Isa::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; taking {}", Isa::best().name());
            Isa::best()
        })
    })
}

/// Runs `f` compiled for `isa`: on the `avx2` and `avx512` paths (on a CPU that has them)
/// inside a function compiled for those instructions and the bit-manipulation extensions
/// that come with them (three-operand instructions, 32 vector registers with AVX-512, `tzcnt`,
/// `popcnt`), so that whatever of `f` is inlined there (the kernels mark their bodies and the
/// closure they pass `#[inline(always)]`) is compiled so too. Rust never fuses a multiply and
/// an add on its own (AVX-512 brings FMA instructions, which only an explicit `mul_add`
/// would use, and the kernels have none), so every path computes the same IEEE operations.
/// Otherwise `f` as it is.
#[inline(always)]
pub fn run<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the CPU has every feature each copy enables (`Isa::is_supported`).
        Isa::Avx512 if isa.is_supported() => return unsafe { run_avx512(f) },
        Isa::Avx2 if isa.is_supported() => return unsafe { run_avx2(f) },
        _ => {}
    }
    let _ = isa;
    f()
}

/// [`run`]'s `avx2` copy.
///
/// # Safety
/// The CPU must have every feature enabled here ([`Isa::Avx2`]'s `is_supported`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// [`run`]'s `avx512` copy.
///
/// # Safety
/// The CPU must have every feature enabled here ([`Isa::Avx512`]'s `is_supported`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt,avx512f,avx512vl,avx512bw,avx512dq")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_env_values() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert_eq!(Isa::from_env_value(None).unwrap(), Isa::best());
        assert_eq!(Isa::from_env_value(Some("")).unwrap(), Isa::best());
        assert_eq!(Isa::from_env_value(Some("SCALAR")).unwrap(), Isa::Scalar);
        let e = Isa::from_env_value(Some("sse9")).unwrap_err();
        assert!(
            e.to_string().contains("RAYFARM_ISA=sse9: no such path"),
            "{e}"
        );
        assert!(e.to_string().contains("scalar"), "{e}");
        if !Isa::Avx2.is_supported() {
            let e = Isa::from_env_value(Some("avx2")).unwrap_err();
            assert!(e.to_string().contains("lacks"), "{e}");
        }
    }
}
