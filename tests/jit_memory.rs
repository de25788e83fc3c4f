//! The JIT engine's memory: its code and data stay within reach of each other however the
//! address space around them is filled (GPT-2 large and XL map gigabytes of weights), and
//! dropping an engine gives its memory back.
//!
//! Both tests lay out or measure the whole process, so they run one at a time.

mod common;
#[path = "common/jit.rs"]
mod jit_common;

use common::{check_close, fixture_dir};
use cranformer_compiler::Model;
use cranformer_runtime::kv_cache::KvCache;
use cranformer_runtime::Tensor;
use jit_common::Pair;
use std::sync::{Arc, Mutex};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
    fn sysconf(name: i32) -> i64;
}
const PROT_NONE: i32 = 0;
const MAP_PRIVATE: i32 = 0x02;
const MAP_ANONYMOUS: i32 = 0x20;
const MAP_NORESERVE: i32 = 0x4000;
const MAP_FIXED_NOREPLACE: i32 = 0x10_0000;
const SC_PAGESIZE: i32 = 30;

/// Runs GPT-2's `forward` on both engines and compares them.
fn check_gpt2(p: &mut Pair) {
    let (layers, width) = match p.model.info {
        cranformer_runtime::ModelInfo::Gpt2 {
            layers,
            hidden_size,
            ..
        } => (layers, hidden_size),
        _ => unreachable!("gpt2-tiny is GPT-2"),
    };
    let ids = Tensor::i64(vec![2, 5], vec![3, 14, 15, 92, 65, 35, 89, 79, 32, 38]);
    let mask = Tensor::i64(vec![2, 5], vec![1; 10]);
    let cache = KvCache::new(layers, 2, width);
    let mut inputs: Vec<(String, &Tensor)> =
        vec![("input_ids".into(), &ids), ("attention_mask".into(), &mask)];
    let past = cache.inputs();
    inputs.extend(past.iter().map(|(n, t)| (n.clone(), t)));
    let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    p.run("forward", &named, 2e-5, 2e-4);
}

/// Reserves `[start, end)` with no access, if it is free.
fn reserve(start: usize, end: usize) {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the range is never
    // accessed.
    unsafe {
        mmap(
            start as *mut u8,
            end - start,
            PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
}

/// Address space laid out so that consecutive small `mmap`s land gigabytes apart, as they
/// can once a large model's weights are mapped: `HOLES` free 64 KiB holes, each followed
/// by 4 GiB reserved with no access (costing no memory), and every other free range above
/// them reserved too. Linux places a new mapping in the highest free range that fits, so
/// small allocations fill these holes one after another, while larger ones go below.
#[test]
fn code_and_data_stay_in_reach_across_gigabytes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const HOLES: usize = 24;
    const HOLE: usize = 64 << 10;
    const GAP: usize = 4 << 30;
    let total = HOLES * (HOLE + GAP);
    // SAFETY: a fresh private reservation; its pages are never accessed. It stays mapped
    // (minus the holes) until the process exits.
    let base = unsafe {
        mmap(
            std::ptr::null_mut(),
            total,
            PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert!(
        base as isize != -1,
        "cannot reserve {total} bytes of address space"
    );
    // Fill the free ranges between the reservation and the main stack (not the one right
    // below the stack, which it grows into).
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let mut ranges: Vec<(usize, usize, bool)> = maps
        .lines()
        .map(|l| {
            let (r, rest) = l.split_once(' ').unwrap();
            let (a, b) = r.split_once('-').unwrap();
            let parse = |x| usize::from_str_radix(x, 16).unwrap();
            (parse(a), parse(b), rest.ends_with("[stack]"))
        })
        .collect();
    ranges.sort();
    let stack = ranges.iter().position(|r| r.2).expect("a [stack] mapping");
    let top = base as usize + total;
    for w in ranges[..stack].windows(2) {
        let (end, next) = (w[0].1, w[1].0);
        if end >= top && next > end {
            reserve(end, next);
        }
    }
    for i in 0..HOLES {
        // SAFETY: the range lies inside the reservation above, which nothing else uses.
        let r = unsafe { munmap(base.add(i * (HOLE + GAP)), HOLE) };
        assert_eq!(r, 0, "munmap");
    }
    let mut p = Pair::load(&fixture_dir("gpt2-tiny"));
    check_gpt2(&mut p);
}

/// Bytes of this process's anonymous executable mappings: generated code (the JIT's), which
/// nothing else here maps.
fn exec_anon() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (range, perms, inode) = (f[0], f[1], f[4]);
            (perms.contains('x') && inode == "0" && f.len() == 5).then(|| {
                let (a, b) = range.split_once('-').unwrap();
                usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap()
            })
        })
        .sum()
}

/// Resident memory of this process in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { sysconf(SC_PAGESIZE) } as usize
}

/// Loading, compiling, running and dropping a model over and over leaves resident memory
/// where it was: the engine frees its code, prepared weights and arenas.
#[test]
fn dropping_an_engine_frees_its_memory() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture_dir("gpt2-tiny");
    let cycle = || {
        let model = Arc::new(Model::load(&dir).unwrap());
        let mut p = Pair::of(model);
        check_gpt2(&mut p);
    };
    // Warm up: the thread pool, allocator arenas, lazily initialised tables.
    for _ in 0..3 {
        cycle();
    }
    // Two signals. Generated code lives in anonymous executable mappings: their total must
    // come back to where it was, exactly enough to catch one cycle's code (hundreds of KiB)
    // kept. Prepared weights and arenas live on the heap, where RSS after a cycle swings by
    // 6-18 MB as the allocator keeps or returns freed blocks: its floor over the last window
    // of cycles may not pass the first window's by more than the swings, while keeping one
    // cycle's weights (6.5 MB of gpt2-tiny) would add them for each of the 30 cycles between.
    const CYCLES: usize = 40;
    const WINDOW: usize = 10;
    let code_before = exec_anon();
    let readings: Vec<usize> = (0..CYCLES)
        .map(|_| {
            cycle();
            rss()
        })
        .collect();
    let code_after = exec_anon();
    eprintln!(
        "generated code mapped: {} KiB before, {} KiB after {CYCLES} cycles",
        code_before >> 10,
        code_after >> 10
    );
    assert!(
        code_after <= code_before + (64 << 10),
        "anonymous executable mappings grew from {} KiB to {} KiB over {CYCLES} cycles: \
         generated code is not freed",
        code_before >> 10,
        code_after >> 10
    );
    let floor = |w: &[usize]| *w.iter().min().unwrap();
    let (first, last) = (
        floor(&readings[..WINDOW]),
        floor(&readings[CYCLES - WINDOW..]),
    );
    eprintln!(
        "RSS floor {} KiB over cycles 1-{WINDOW}, {} KiB over cycles {}-{CYCLES}",
        first >> 10,
        last >> 10,
        CYCLES - WINDOW + 1
    );
    const BOUND: usize = 32 << 20;
    assert!(
        last.saturating_sub(first) <= BOUND,
        "RSS floor grew by {} KiB from the first {WINDOW} cycles to the last (bound {} KiB)",
        last.saturating_sub(first) >> 10,
        BOUND >> 10
    );
}
