//! ferry's allocator, and giving freed memory back when the server is quiet.
//!
//! mimalloc serves a thread's small allocations from free lists of that thread, without the
//! locks and bin searches of glibc's malloc, which was a fifth of the instructions of a 1 KiB
//! GET on the async worker (about 45 allocations each); the 1 KiB load ran 10 to 15% faster
//! with it. Built without its transparent-huge-page advice (`no_thp`): 2 MiB pages made the
//! server's RSS after that load 26 MB instead of 12. SQLite keeps the C library's `malloc`.

/// The allocator of the ferry binary and of every test that links this crate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory the allocator holds free to the system: the calling thread's free pages,
/// and every page any thread has handed back to mimalloc's shared arena.
#[allow(unsafe_code)]
pub(crate) fn trim() {
    // SAFETY: mi_collect only frees memory mimalloc holds unused; it takes no pointer of ours.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
