//! Allocator settings for sluice's binaries (all use mimalloc).
//!
//! Profiling `sluice-bench partitioned` (10 M rows, 5 GB through one
//! shuffle, 2 cores) put 30-40% of all CPU time in the kernel zeroing fresh
//! transparent huge pages: mimalloc hands freed memory back to the OS after
//! 10 ms, and every re-allocation of a shuffle or Parquet buffer then
//! faults in and zeroes 2 MiB pages again. Same job (`hash`, 10 M rows,
//! `sluice run`), side by side: mimalloc's defaults (restored through the
//! environment) 14.58 / 16.38 s wall, 14.5 / 17.4 s system time; these
//! settings 12.15 / 10.30 / 9.77 / 9.85 s wall, 10.8 / 6.6 / 6.0 / 5.3 s
//! system time; peak RSS ~4.6-5.2 GB either way. `MIMALLOC_ALLOW_THP` and
//! `MIMALLOC_PURGE_DELAY` in the environment win over these defaults.

/// mimalloc v2's option numbers (`mi_option_e` in the vendored
/// `mimalloc.h` of libmimalloc-sys 0.1.49); the Rust bindings lack them.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns off transparent huge pages for this process and sets how long
/// mimalloc keeps freed memory before returning it to the OS (`-1`: never,
/// right for a process that runs one job; long-running servers pass a
/// delay). Call first thing in `main`.
pub fn tune(purge_delay_ms: i64) {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this
        // process's memory map; it takes no pointers.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it on each purge.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, purge_delay_ms as _);
        }
    }
}
