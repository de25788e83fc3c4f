//! Builds the runtime of compiled executables (`exe/`, a static library) so that `cranformer`
//! can carry it: `cranformer compile` writes it out and links it with each model, which must
//! also work after `cargo install` and on machines without the source tree.
//!
//! The library is built by a nested `cargo build --release` into a target directory under
//! OUT_DIR: a directory the outer cargo does not lock, so the two never wait on each other,
//! and the nested build takes its jobs from the outer one's jobserver (inherited through
//! CARGO_MAKEFLAGS), so it does not oversubscribe the machine.

use std::path::PathBuf;
use std::process::Command;

/// What a Rust static library needs from the system on linux-gnu (rustc's usual answer), for
/// when a fresh nested build does not print it again.
const DEFAULT_NATIVE_LIBS: &str = "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc";

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    for path in [
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
        "exe",
        "runtime",
        "serve",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let target_dir = out.join("exe-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "rustc",
        "--release",
        "--locked",
        "--offline",
        "-p",
        "cranformer-exe",
        "--lib",
    ])
    .arg("--manifest-path")
    .arg(root.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .args(["--", "--print", "native-static-libs"])
    // The library is linked into every executable: no debug info to carry around.
    .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
    // `strip` does nothing to a static library: pin it so that the library's build does not
    // depend on the release profile's choice.
    .env("CARGO_PROFILE_RELEASE_STRIP", "none")
    // Under `cargo clippy` the outer build sets a wrapper; the library only needs a build.
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("CARGO_TARGET_DIR");
    let output = cmd.output().expect("running cargo to build cranformer-exe");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!("building the runtime library of compiled executables (cranformer-exe) failed:\n{stderr}");
    }
    let lib = target_dir.join("release/libcranformer_exe.a");
    assert!(lib.is_file(), "cargo built no {}", lib.display());

    // rustc prints the libraries only when it links the library; keep the last answer.
    let saved = out.join("native-static-libs.txt");
    let libs = match stderr.lines().find_map(|l| {
        l.split_once("native-static-libs: ")
            .map(|(_, libs)| libs.trim())
    }) {
        Some(libs) => {
            std::fs::write(&saved, libs).expect("writing to OUT_DIR");
            libs.to_string()
        }
        None => std::fs::read_to_string(&saved).unwrap_or_else(|_| DEFAULT_NATIVE_LIBS.into()),
    };
    println!("cargo:rustc-env=CRANFORMER_EXE_LIB={}", lib.display());
    println!("cargo:rustc-env=CRANFORMER_EXE_NATIVE_LIBS={libs}");
}
