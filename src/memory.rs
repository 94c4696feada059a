//! What ferry asks of glibc's allocator: keep freed memory while work runs, give it back when
//! the server is quiet.

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
}

/// Returns free memory to the system (only glibc's allocator is asked).
#[cfg(not(target_env = "gnu"))]
pub(crate) fn trim() {}
