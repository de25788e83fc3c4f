//! The x86-64 instruction-set features a compiled executable's generated code may use, and
//! the check an executable makes at start-up that the CPU it runs on has them.
//!
//! The JIT compiles for the CPU it runs on. An executable is compiled once and copied to
//! other machines, so its generated code is limited to the x86-64-v3 features Cranelift knows
//! (AVX2, FMA, BMI1/2, LZCNT and the SSE levels: what every x86 server of the last decade
//! has), or to the part of them the compiling CPU has: an executable compiled on an AVX-512
//! machine runs on an AVX2 one. The runtime's own kernels choose their ISA at run time
//! whatever this says.
//!
//! Where the runtime runs below the CPU's best (`CRANFORMER_ISA`, see
//! [`crate::gemm::Isa::detect`]), generated code follows: under `avx2` the JIT takes the
//! executables' features instead of all the host's, and under `portable` (the kernels of a CPU
//! without AVX2) both take only [`PORTABLE_FEATURES`]: no AVX and no FMA, as such a CPU, so
//! that tests and benchmarks held to a path run the code a CPU of that path runs.

/// The list below written once: `EXECUTABLE_FEATURES` and the detection of each (the
/// detection macro takes its name as a literal).
macro_rules! features {
    ($(($setting:literal, $name:tt)),* $(,)?) => {
        /// Each feature as (Cranelift's x86 setting, the name `is_x86_feature_detected!` and
        /// the error messages use).
        pub const EXECUTABLE_FEATURES: [(&str, &str); [$($name),*].len()] =
            [$(($setting, $name)),*];

        /// Whether this CPU has the feature `name` (a name of [`EXECUTABLE_FEATURES`]); false
        /// for any other name, and off x86-64.
        pub fn has(name: &str) -> bool {
            #[cfg(target_arch = "x86_64")]
            {
                match name {
                    $($name => is_x86_feature_detected!($name),)*
                    _ => false,
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = name;
                false
            }
        }
    };
}

features![
    ("has_sse3", "sse3"),
    ("has_ssse3", "ssse3"),
    ("has_sse41", "sse4.1"),
    ("has_sse42", "sse4.2"),
    ("has_popcnt", "popcnt"),
    ("has_avx", "avx"),
    ("has_avx2", "avx2"),
    ("has_fma", "fma"),
    ("has_bmi1", "bmi1"),
    ("has_bmi2", "bmi2"),
    ("has_lzcnt", "lzcnt"),
];

/// The x86-64-v2 part of [`EXECUTABLE_FEATURES`] (the SSE levels and POPCNT): all that
/// generated code uses where the runtime runs its portable kernels.
pub const PORTABLE_FEATURES: [&str; 5] = ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"];

/// The features an executable compiled on this CPU uses, as (Cranelift setting, name): those
/// of [`EXECUTABLE_FEATURES`] this CPU has, of [`PORTABLE_FEATURES`] only where the runtime
/// runs its portable kernels ([`for_isa`] of [`crate::gemm::detected`]).
pub fn for_executables() -> Vec<(&'static str, &'static str)> {
    for_isa(crate::gemm::detected())
}

/// [`for_executables`] where the runtime's kernels are `isa`'s.
pub fn for_isa(isa: crate::gemm::Isa) -> Vec<(&'static str, &'static str)> {
    EXECUTABLE_FEATURES
        .into_iter()
        .filter(|(_, name)| has(name))
        .filter(|(_, name)| isa != crate::gemm::Isa::Portable || PORTABLE_FEATURES.contains(name))
        .collect()
}

/// Whether the JIT's generated code may use every feature of this CPU, AVX-512 included: yes
/// unless `CRANFORMER_ISA` holds the runtime below the CPU's best; then it uses
/// [`for_executables`], as a CPU of that level would.
pub fn jit_takes_every_host_feature() -> bool {
    crate::gemm::detected() == crate::gemm::detect_hardware()
}

/// Those of `needed` this CPU lacks, in order.
pub fn missing(needed: &[String]) -> Vec<String> {
    needed.iter().filter(|f| !has(f)).cloned().collect()
}

/// `Err` with what an executable whose generated code uses `needed` says when this CPU lacks
/// some of them: without one, it would stop on an illegal instruction in its first call.
pub fn check(needed: &[String]) -> Result<(), String> {
    let missing = missing(needed);
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this executable's compiled code uses {} (x86-64 features of the CPU it was compiled \
         on), which this CPU ({}) lacks: compile the model on this machine \
         (`cranformer compile MODEL_DIR -o BIN`)",
        missing.join(", "),
        crate::machine::cpu_model().unwrap_or_else(|| "model unknown".into())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executable_needs_only_what_this_cpu_has() {
        let used: Vec<String> = for_executables()
            .iter()
            .map(|(_, name)| name.to_string())
            .collect();
        assert!(missing(&used).is_empty());
        // Never anything beyond x86-64-v3, however wide this CPU is.
        assert!(used.iter().all(|f| !f.starts_with("avx512")));
    }

    #[test]
    fn the_portable_path_generates_for_a_cpu_without_avx() {
        use crate::gemm::Isa;
        let portable = for_isa(Isa::Portable);
        for (_, name) in &portable {
            assert!(
                PORTABLE_FEATURES.contains(name),
                "{name} under the portable path"
            );
            assert!(has(name));
        }
        // Every v2 feature this CPU has stays; the wider paths take all it has up to v3.
        let v2_here = PORTABLE_FEATURES.iter().filter(|f| has(f)).count();
        assert_eq!(portable.len(), v2_here);
        let wide = EXECUTABLE_FEATURES.iter().filter(|(_, f)| has(f)).count();
        assert_eq!(for_isa(Isa::Avx2).len(), wide);
        assert_eq!(for_isa(Isa::Avx512).len(), wide);
    }

    #[test]
    fn a_feature_no_cpu_has_is_reported_missing() {
        let needed = vec!["avx2".to_string(), "no-such-feature".to_string()];
        let missing = missing(&needed);
        assert!(
            missing.contains(&"no-such-feature".to_string()),
            "{missing:?}"
        );
        assert_eq!(missing.contains(&"avx2".to_string()), !has("avx2"));
        let err = check(&needed).unwrap_err();
        assert!(
            err.contains("no-such-feature") && err.contains("compile the model on this machine"),
            "{err}"
        );
        assert!(check(&[]).is_ok());
    }
}
