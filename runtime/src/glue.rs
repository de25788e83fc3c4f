//! The tables a compiled executable's C glue hands to the runtime: `struct cf_program` with its
//! blobs (program description, tokenizer, weight shards) and entry table. The Rust structs
//! here are the definition; [`c_declarations`] writes the C side from them, with
//! `_Static_assert`s on every size and offset taken from these structs, so the glue that
//! `cranformer compile` generates cannot disagree with the runtime that reads it: a change on
//! one side alone fails the C compile.

use crate::native::EntryFn;
use std::ffi::{c_char, CStr};
use std::fmt::Write;
use std::mem::{offset_of, size_of};

/// `struct cf_blob`: the bytes between two symbols of the executable's read-only data.
#[repr(C)]
pub struct Blob {
    start: *const u8,
    end: *const u8,
}

impl Blob {
    /// # Safety
    /// `start..end` must be one readable object for the whole run (the glue's blobs are).
    pub unsafe fn bytes(&self) -> &'static [u8] {
        // SAFETY: `start..end` is one readable object that lives for the whole run, as the
        // caller promised, so `end` is at or after `start` in the same allocation.
        unsafe { std::slice::from_raw_parts(self.start, self.end.offset_from(self.start) as usize) }
    }
}

/// `struct cf_entry`: an entry function and its name.
#[repr(C)]
pub struct RawEntry {
    name: *const c_char,
    func: EntryFn,
}

impl RawEntry {
    /// # Safety
    /// `name` must be a NUL-terminated string that lives for the whole run (the glue's are
    /// string literals).
    pub unsafe fn name(&self) -> &'static CStr {
        // SAFETY: as the caller promised.
        unsafe { CStr::from_ptr(self.name) }
    }

    pub fn func(&self) -> EntryFn {
        self.func
    }
}

/// `struct cf_program`: what the glue hands to `cranformer_exe_main`.
#[repr(C)]
pub struct RawProgram {
    pub version: u64,
    pub program: Blob,
    pub tokenizer: Blob,
    n_entries: u64,
    entries: *const RawEntry,
    n_shards: u64,
    shards: *const Blob,
}

impl RawProgram {
    /// # Safety
    /// `entries` must point at `n_entries` entries that live for the whole run (the glue's
    /// static table).
    pub unsafe fn entries(&self) -> &'static [RawEntry] {
        // SAFETY: as the caller promised.
        unsafe { std::slice::from_raw_parts(self.entries, self.n_entries as usize) }
    }

    /// # Safety
    /// As [`RawProgram::entries`], for `shards` and `n_shards`.
    pub unsafe fn shards(&self) -> &'static [Blob] {
        if self.n_shards == 0 {
            return &[];
        }
        // SAFETY: as the caller promised.
        unsafe { std::slice::from_raw_parts(self.shards, self.n_shards as usize) }
    }
}

/// The C declarations of the structs above (in the glue's field order, which the assertions
/// check against these structs' layout) and of `cranformer_exe_main`.
pub fn c_declarations() -> String {
    let mut s = String::from(
        "#include <stddef.h>\n#include <stdint.h>\n\
         typedef int64_t (*cf_entry_fn)(const void *ctx);\n\
         struct cf_blob { const uint8_t *start, *end; };\n\
         struct cf_entry { const char *name; cf_entry_fn func; };\n\
         struct cf_program {\n  uint64_t version;\n  struct cf_blob program, tokenizer;\n  \
         uint64_t n_entries;\n  const struct cf_entry *entries;\n  uint64_t n_shards;\n  \
         const struct cf_blob *shards;\n};\n\
         int cranformer_exe_main(int argc, char **argv, const struct cf_program *program);\n",
    );
    let mut check = |c: &str, size: usize, fields: &[(&str, usize)]| {
        let _ = writeln!(
            s,
            "_Static_assert(sizeof(struct {c}) == {size}, \"struct {c}: its size differs from \
             the runtime's (runtime/src/glue.rs)\");"
        );
        for (f, at) in fields {
            let _ = writeln!(
                s,
                "_Static_assert(offsetof(struct {c}, {f}) == {at}, \"struct {c}.{f}: its offset \
                 differs from the runtime's (runtime/src/glue.rs)\");"
            );
        }
    };
    check(
        "cf_blob",
        size_of::<Blob>(),
        &[
            ("start", offset_of!(Blob, start)),
            ("end", offset_of!(Blob, end)),
        ],
    );
    check(
        "cf_entry",
        size_of::<RawEntry>(),
        &[
            ("name", offset_of!(RawEntry, name)),
            ("func", offset_of!(RawEntry, func)),
        ],
    );
    check(
        "cf_program",
        size_of::<RawProgram>(),
        &[
            ("version", offset_of!(RawProgram, version)),
            ("program", offset_of!(RawProgram, program)),
            ("tokenizer", offset_of!(RawProgram, tokenizer)),
            ("n_entries", offset_of!(RawProgram, n_entries)),
            ("entries", offset_of!(RawProgram, entries)),
            ("n_shards", offset_of!(RawProgram, n_shards)),
            ("shards", offset_of!(RawProgram, shards)),
        ],
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Whether the C compiler accepts `source` (`cc -fsyntax-only`, as `cranformer compile`
    /// needs a C compiler anyway).
    fn compiles(source: &str) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("glue.c");
        std::fs::write(&file, source).unwrap();
        // The refused versions' diagnostics are expected: kept out of the test's output.
        let ok = Command::new("cc")
            .args(["-fsyntax-only", "-std=c11"])
            .arg(&file)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running cc")
            .success();
        ok
    }

    #[test]
    fn the_declarations_compile_and_a_reordered_field_does_not() {
        let c = c_declarations();
        assert!(compiles(&c), "{c}");
        // Two fields of the same width swapped: the size stays, the offsets catch it.
        let swapped = c.replace(
            "uint64_t n_entries;\n  const struct cf_entry *entries;",
            "const struct cf_entry *entries;\n  uint64_t n_entries;",
        );
        assert_ne!(swapped, c);
        assert!(!compiles(&swapped));
        // A field the runtime does not have: the size catches it.
        let widened = c.replace("uint64_t version;", "uint64_t version, flags;");
        assert_ne!(widened, c);
        assert!(!compiles(&widened));
    }
}
