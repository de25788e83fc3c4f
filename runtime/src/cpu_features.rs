//! The x86-64 instruction-set features a compiled executable's generated code may use, and
//! the check an executable makes at start-up that the CPU it runs on has them.
//!
//! The JIT compiles for the CPU it runs on. An executable is compiled once and copied to
//! other machines, so its generated code is limited to the x86-64-v3 features Cranelift knows
//! (AVX2, FMA, BMI1/2, LZCNT and the SSE levels: what every x86 server of the last decade
//! has), or to the part of them the compiling CPU has: an executable compiled on an AVX-512
//! machine runs on an AVX2 one. The runtime's own kernels choose their ISA at run time
//! whatever this says.

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

/// The features an executable compiled on this CPU uses: those of [`EXECUTABLE_FEATURES`]
/// this CPU has, as (Cranelift setting, name).
pub fn for_executables() -> Vec<(&'static str, &'static str)> {
    EXECUTABLE_FEATURES
        .into_iter()
        .filter(|(_, name)| has(name))
        .collect()
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
