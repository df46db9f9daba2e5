//! A peak-tracking global allocator: exact bytes, not estimates.
//!
//! ```no_run
//! use dropit::memory::PeakAlloc;
//! #[global_allocator]
//! static ALLOC: PeakAlloc = PeakAlloc::new();
//! ALLOC.reset_peak();
//! // … train …
//! println!("peak {} bytes, {} allocations", ALLOC.peak(), ALLOC.allocations());
//! ```

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::alloc::{GlobalAlloc, Layout, System};

/// Wraps the system allocator, counting bytes in use, their peak, and allocation calls.
#[derive(Debug)]
pub struct PeakAlloc {
    current: AtomicUsize,
    peak: AtomicUsize,
    count: AtomicUsize,
}

impl PeakAlloc {
    /// A fresh counter (use as a `static`).
    pub const fn new() -> Self {
        PeakAlloc {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated now.
    pub fn current(&self) -> usize {
        self.current.load(Relaxed)
    }

    /// Most bytes allocated at once since the last [`PeakAlloc::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    /// Allocation calls (alloc, alloc_zeroed, realloc) so far.
    pub fn allocations(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Starts a new peak measurement from the current level.
    pub fn reset_peak(&self) {
        self.peak.store(self.current(), Relaxed);
    }

    fn grew(&self, by: usize) {
        let now = self.current.fetch_add(by, Relaxed) + by;
        self.peak.fetch_max(now, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

impl Default for PeakAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counters are plain atomics and never touch the memory itself.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, forwarded (the caller guarantees a non-zero size).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from System) with this layout.
        unsafe { System.dealloc(ptr, layout) };
        self.current.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from System with `layout`; the caller guarantees `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            self.current.fetch_sub(layout.size(), Relaxed);
            self.grew(new_size);
        }
        p
    }
}
