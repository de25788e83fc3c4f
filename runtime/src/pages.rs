//! Memory for large buffers every run streams (packed matmul weights): aligned to 2 MiB and,
//! on Linux, advised for transparent huge pages before the first write, so the kernel backs
//! them with 2 MiB pages where it can.
//!
//! A matmul's B sliver spans a new 4 KiB page every 32 K steps: each is a TLB miss, and the
//! hardware prefetchers stop at the page's end. Twelve BERT-base FFN layers with cold weights
//! in huge pages ran 1.03x as fast on 2 threads and 1.07x on 1 held to AVX2, and 1.03x on 2
//! with AVX-512 (AMD EPYC Zen 4, in one process, the two placements alternating, 50-80 pairs);
//! GPT-2 decode, bound by DRAM, showed no difference. Hosts whose THP setting is `never` get
//! ordinary pages: the advice is a hint and its failure is ignored. Laying out BERT-base's
//! 440 MB of panels took 0.19-0.34 s instead of 0.42-0.46 s (220 faults instead of 110,000),
//! but 0.7-1.2 s when the kernel first had to compact fragmented memory (THP `defrag`
//! `madvise`, the default, compacts on the fault; page cache held 6 GB of 24).

use std::alloc::Layout;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The size of a transparent huge page on x86-64 (and the alignment that lets a buffer start
/// one).
pub const HUGE_PAGE: usize = 2 << 20;

/// Zero-initialised f32s in memory of their own, 2 MiB-aligned and advised for huge pages.
pub struct LargeBuf {
    ptr: NonNull<f32>,
    len: usize,
    layout: Layout,
}

// SAFETY: a LargeBuf owns its memory like a Box<[f32]>.
unsafe impl Send for LargeBuf {}
// SAFETY: shared references only read.
unsafe impl Sync for LargeBuf {}

impl LargeBuf {
    /// `len` zeros, or `None` when the allocation fails or `len` is too small to hold a huge
    /// page (an ordinary allocation serves it as well). Zeroed after the advice: the first
    /// write is what faults the pages in.
    pub fn zeroed(len: usize) -> Option<LargeBuf> {
        let bytes = len.checked_mul(4)?;
        if bytes < HUGE_PAGE {
            return None;
        }
        let layout = Layout::from_size_align(bytes, HUGE_PAGE).ok()?;
        // SAFETY: the layout's size is non-zero.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }.cast::<f32>())?;
        advise_huge(ptr.as_ptr().cast(), bytes);
        // SAFETY: `ptr` is valid for `len` f32s; all-zero bits are 0.0.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Some(LargeBuf { ptr, len, layout })
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut std::ffi::c_void, bytes: usize) {
    // SAFETY: the range is this allocation's own, and advice changes no contents.
    let _ = unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_: *mut std::ffi::c_void, _: usize) {}

impl Deref for LargeBuf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `ptr` is valid and initialised for `len` f32s while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for LargeBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as `deref`, and `&mut self` is the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for LargeBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_aligned_zeroed_and_holds_what_is_written() {
        let v: Vec<f32> = (0..HUGE_PAGE / 4 + 3).map(|i| i as f32).collect();
        let mut buf = LargeBuf::zeroed(v.len()).unwrap();
        buf.copy_from_slice(&v);
        assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(&buf[..], &v[..]);
        let z = LargeBuf::zeroed(HUGE_PAGE / 4).unwrap();
        assert!(z.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn packed_weights_of_a_huge_page_or_more_are_laid_out_in_one() {
        use crate::native::WeightPrep;
        use crate::weights::F32Buffer;
        // 768 x 768: 2.25 MiB of panels; 64 x 64 goes to the ordinary allocator (whose
        // address may happen to be aligned, so only the large one's is checked).
        for (k, n, large) in [(768, 768, true), (64, 64, false)] {
            let w: Vec<f32> = (0..k * n).map(|i| (i % 97) as f32).collect();
            let prep = WeightPrep::Panels {
                k,
                n,
                in_out: false,
            };
            let packed = prep.apply(&F32Buffer::from_vec(w.clone())).unwrap();
            assert_eq!(&packed[..], &crate::gemm::pack_b(&w, k, n, false, 32)[..]);
            if large {
                assert_eq!(packed.as_ptr() as usize % HUGE_PAGE, 0, "{k} x {n}");
            }
        }
    }

    #[test]
    fn a_small_buffer_is_left_to_the_ordinary_allocator() {
        assert!(LargeBuf::zeroed(HUGE_PAGE / 4 - 1).is_none());
        assert!(LargeBuf::zeroed(usize::MAX).is_none());
    }
}
