//! Golden files under tests/golden: text in, text out. `BLESS=1` rewrites them on purpose.

use std::path::PathBuf;

/// Compares `actual` with tests/golden/`name`, failing with the first differing line.
pub fn check(name: &str, actual: &str) {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden")).join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no golden file {}: run with BLESS=1 to create it",
            path.display()
        )
    });
    if want != actual {
        let first = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the golden file at line {}:\n  want: {}\n  got:  {}\n(BLESS=1 to accept)",
            path.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            actual.lines().nth(first).unwrap_or("<end>")
        );
    }
}
