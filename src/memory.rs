//! ferry's allocator: a server's small allocations from mimalloc, buffers (and a client's
//! everything) from the C library's malloc, which ferry asks to keep freed memory while work
//! runs; both give back what they hold free when the server is quiet.
//!
//! A request makes dozens of small allocations (headers, futures, ids, the 8 KiB read buffer);
//! glibc's malloc spent a fifth of a 1 KiB GET's instructions on the worker on them, where
//! mimalloc serves them from free lists of the thread. With mimalloc for everything the 1 KiB
//! load ran 10 to 15% faster, but buffers of 64 KiB and more cost memory: a terminal session
//! held 10.2 MB after its output instead of 7.4, and the 1000-client load 410 MB instead of 128.
//! So sizes from `BIG` up stay with glibc. mimalloc is built without its transparent-huge-page
//! advice (`no_thp`): 2 MiB pages made the RSS after the 1 KiB load 26 MB instead of 12.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Allocations of this size and more come from the C library's `malloc`, smaller ones from
/// mimalloc once the server has started (see [`small_from_mimalloc`]).
const BIG: usize = 64 << 10;

/// Whether new small allocations come from mimalloc. Off until the server starts: a client
/// (`ferry exec`, `ferry get`) lives a few milliseconds, and mimalloc's first allocations cost
/// its start about 90 page faults and 0.2 ms (1.2 ms for `ferry --version` became 1.4).
static MIMALLOC_ON: AtomicBool = AtomicBool::new(false);

/// From now on, small allocations come from mimalloc (the server calls this as it starts).
/// Blocks made before are still freed by the C library, which made them.
pub fn small_from_mimalloc() {
    MIMALLOC_ON.store(true, Ordering::Relaxed);
}

/// The allocator of the ferry binary and of every test that links this crate: mimalloc for
/// small blocks once switched on, the C library's `malloc` for the rest.
pub struct Split;

/// Which allocator makes or frees a block.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Maker {
    Mimalloc,
    System,
}

/// The allocator a new block of `size` bytes comes from.
fn maker_for(size: usize) -> Maker {
    // Relaxed: a thread that frees a block made after the switch was handed that block, and
    // with it the switch; one that allocates a moment late allocates from the C library.
    if size < BIG && MIMALLOC_ON.load(Ordering::Relaxed) {
        Maker::Mimalloc
    } else {
        Maker::System
    }
}

/// The lowest and highest address of a small block made by the C library while mimalloc was
/// off. After the switch every new small block is mimalloc's, so a small block outside these
/// is mimalloc's without asking it: the server's early blocks lie in the C library's heap,
/// far from mimalloc's mappings, and asking cost about 1,300 instructions per 1 KiB request.
static EARLY_LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static EARLY_HIGH: AtomicUsize = AtomicUsize::new(0);

/// Notes a small block the C library made while mimalloc was off.
fn note_early(ptr: *mut u8) {
    let at = ptr as usize;
    // The loads spare the atomic updates once the range holds the block; the range only
    // grows, so a stale load can only cause an update that was not needed.
    if at < EARLY_LOW.load(Ordering::Relaxed) {
        EARLY_LOW.fetch_min(at, Ordering::Relaxed);
    }
    if at > EARLY_HIGH.load(Ordering::Relaxed) {
        EARLY_HIGH.fetch_max(at, Ordering::Relaxed);
    }
}

/// The allocator that made the block at `ptr` of `size` bytes: mimalloc only for a small block
/// in its own pages (blocks made before the switch are the C library's).
#[allow(unsafe_code)]
fn maker_of(ptr: *mut u8, size: usize) -> Maker {
    if size >= BIG || !MIMALLOC_ON.load(Ordering::Relaxed) {
        return Maker::System;
    }
    // Relaxed: the block was noted before it was handed out, and whoever frees it now was
    // handed it since.
    let at = ptr as usize;
    if at < EARLY_LOW.load(Ordering::Relaxed) || at > EARLY_HIGH.load(Ordering::Relaxed) {
        return Maker::Mimalloc;
    }
    // SAFETY: mi_is_in_heap_region only looks `ptr` up in mimalloc's page map; it reads no
    // memory at `ptr`.
    if unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) } {
        Maker::Mimalloc
    } else {
        Maker::System
    }
}

// SAFETY: each block is freed and resized by the allocator that made it: mimalloc's blocks are
// those in its pages (it never hands out a block of the C library's), and a resize from one
// allocator to the other moves the block.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        unsafe {
            match maker_for(layout.size()) {
                Maker::Mimalloc => mi::alloc(layout, false),
                Maker::System => noted(System.alloc(layout), layout.size()),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        unsafe {
            match maker_for(layout.size()) {
                Maker::Mimalloc => mi::alloc(layout, true),
                Maker::System => noted(System.alloc_zeroed(layout), layout.size()),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` goes back to the allocator that made it.
        unsafe {
            match maker_of(ptr, layout.size()) {
                Maker::Mimalloc => libmimalloc_sys::mi_free(ptr.cast()),
                Maker::System => System.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let from = maker_of(ptr, layout.size());
        let to = maker_for(new_size);
        // SAFETY: within one allocator, the caller's arguments passed on; across the two, a
        // new block of the caller's alignment (valid: the caller guarantees `new_size` with
        // that alignment is a valid layout), the bytes both sizes hold copied, the old block
        // freed by the allocator that made it.
        unsafe {
            match (from, to) {
                (Maker::Mimalloc, Maker::Mimalloc) => mi::realloc(ptr, layout, new_size),
                (Maker::System, Maker::System) => {
                    noted(System.realloc(ptr, layout, new_size), new_size)
                }
                _ => {
                    let new = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// `ptr`, a new block of `size` bytes from the C library, noted if it is a small one.
fn noted(ptr: *mut u8, size: usize) -> *mut u8 {
    if size < BIG && !ptr.is_null() {
        note_early(ptr);
    }
    ptr
}

#[global_allocator]
static ALLOCATOR: Split = Split;

/// mimalloc's plain entry points where their alignment is enough, as the C library's are used
/// for `System`: the `mimalloc` crate calls the aligned ones for every block, whose extra path
/// cost about 1,000 instructions per 1 KiB request (callgrind).
#[allow(unsafe_code)]
mod mi {
    use libmimalloc_sys as sys;
    use std::alloc::Layout;

    /// Every block of mimalloc is aligned to this, or to its size if smaller (as malloc's).
    const MIN_ALIGN: usize = 16;

    /// Whether a plain allocation of `size` bytes is aligned enough for `align`.
    fn plain(align: usize, size: usize) -> bool {
        align <= MIN_ALIGN && align <= size
    }

    /// A new block for `layout`, zeroed if `zeroed`.
    pub(super) unsafe fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: mimalloc's allocation calls take any size and a power-of-two alignment.
        unsafe {
            match (plain(align, size), zeroed) {
                (true, false) => sys::mi_malloc(size),
                (true, true) => sys::mi_zalloc(size),
                (false, false) => sys::mi_malloc_aligned(size, align),
                (false, true) => sys::mi_zalloc_aligned(size, align),
            }
            .cast()
        }
    }

    /// The block at `ptr`, made by mimalloc for `layout`, resized to `new_size`.
    pub(super) unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of mimalloc's; the alignment is the one it was made with.
        unsafe {
            if plain(layout.align(), new_size) {
                sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Below this size, buffers come from the allocator's arenas rather than each from its own
/// `mmap` (frames are at most 1 MiB by default, 8 MiB at most).
#[cfg(target_env = "gnu")]
const MMAP_FROM: usize = 4 << 20;
/// Freed memory at the top of an arena is kept up to this much. `malloc_trim` does not return
/// the top of a thread's arena, so this much may stay after the server goes quiet: 16 MiB
/// measured 2 MB more after the 1 KiB load; 1 MiB measured no more than the default.
#[cfg(target_env = "gnu")]
const TRIM_FROM: usize = 1 << 20;

/// Most arenas: one per core, for the runtime's workers and the threads beside them (disk, MD5,
/// SQLite; glibc's default is eight per core). Each arena keeps its free top (up to
/// [`TRIM_FROM`]) after `malloc_trim`, so every extra arena is memory the server keeps once
/// quiet. Measured on 2 cores only: 2 arenas held RSS after the 1 KiB load 0.8 MB lower at the
/// same requests/s; 1 arena cost a fifth of them.
/// `None` when the operator chose a number (`MALLOC_ARENA_MAX`, or glibc's tunable): theirs
/// stands.
#[cfg(target_env = "gnu")]
fn arenas() -> Option<libc::c_int> {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if chosen {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    Some(libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX))
}

/// Keeps freed memory in glibc's arenas while transfers run; called once, at start. glibc
/// starts by giving back an arena's free top once it exceeds 128 KiB, and raises that only
/// after a block of its own `mmap` is freed (to twice that block), which buffers below the
/// 128 KiB `mmap` threshold never are: a transfer whose chunks are freed on another thread
/// (an upload's on the MD5 thread, a `ferry put`'s after they are sent) gave pages back and
/// faulted them in again every few chunks. Measured: a quarter of the server's system time
/// per uploaded GiB, and `ferry put` 343 against 405 MB/s. Setting the thresholds turns
/// glibc's own adjustment off. Where glibc refuses a value (a 4 MiB `mmap` threshold is over
/// the maximum on 32-bit targets) it keeps its default, which is only slower. It also caps the
/// arenas at one per core (see `arenas`).
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
pub fn keep_while_busy() {
    // SAFETY: mallopt only sets glibc's thresholds and limits, under its own lock; it touches
    // no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_FROM as libc::c_int);
        if let Some(n) = arenas() {
            libc::mallopt(libc::M_ARENA_MAX, n);
        }
    }
}

/// Keeps freed memory while transfers run (only glibc's allocator is tuned).
#[cfg(not(target_env = "gnu"))]
pub fn keep_while_busy() {}

/// Returns the free memory of every arena to the system.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
pub(crate) fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's arenas; it takes their locks.
    unsafe {
        libc::malloc_trim(0);
    }
    collect();
}

/// Returns free memory to the system (mimalloc's; the C library's is not asked).
#[cfg(not(target_env = "gnu"))]
pub(crate) fn trim() {
    collect();
}

/// Returns mimalloc's free memory to the system: the calling thread's free pages, and every
/// page any thread has handed back to mimalloc's shared arena.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect only frees memory mimalloc holds unused; it takes no pointer of ours.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use std::alloc::{Layout, alloc, dealloc, realloc};

    /// A block keeps its bytes and its alignment when a resize moves it from one allocator to
    /// the other and back.
    #[test]
    #[allow(unsafe_code)]
    fn resizes_across_the_split_keep_the_bytes() {
        // A block made by the C library before the switch is resized and freed after it.
        let before = vec![7u8; 1000];
        // This test alone switches mimalloc on in this binary.
        assert_eq!(
            super::maker_of(before.as_ptr().cast_mut(), 1000),
            super::Maker::System
        );
        super::small_from_mimalloc();
        let mut before = before;
        before.resize(2000, 8);
        before.shrink_to_fit();
        assert!(before[..1000].iter().all(|&b| b == 7) && before[1000..].iter().all(|&b| b == 8));
        drop(before);
        for align in [1, 16, 4096] {
            let sizes = [100, super::BIG - 1, super::BIG, 3 * super::BIG, 1000, 40];
            let mut layout = Layout::from_size_align(sizes[0], align).unwrap();
            // SAFETY: non-zero sizes; each block is resized and freed with the layout it has.
            unsafe {
                let mut p = alloc(layout);
                assert!(!p.is_null());
                for i in 0..layout.size() {
                    *p.add(i) = (i % 251) as u8;
                }
                for &size in &sizes[1..] {
                    let kept = layout.size().min(size);
                    p = realloc(p, layout, size);
                    assert!(!p.is_null());
                    let maker = if size < super::BIG {
                        super::Maker::Mimalloc
                    } else {
                        super::Maker::System
                    };
                    assert_eq!(super::maker_of(p, size), maker, "size {size}");
                    assert_eq!(p as usize % align, 0, "align {align}, size {size}");
                    for i in 0..kept {
                        assert_eq!(*p.add(i), (i % 251) as u8, "byte {i} at size {size}");
                    }
                    for i in kept..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    layout = Layout::from_size_align(size, align).unwrap();
                }
                dealloc(p, layout);
            }
        }
    }
}
