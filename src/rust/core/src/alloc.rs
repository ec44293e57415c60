//! The global allocator of everything built on rscvi-core (the R library, the CLI, the
//! tests). Burn allocates a fresh buffer for every tensor op; glibc's malloc hands large
//! buffers back to the kernel and page-faults them in again on every step, which cost a
//! third of CPU time.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in mimalloc 3's option enum; the Rust
/// bindings do not name it). Freed pages are kept for 10 s instead of 10 ms, so the buffers
/// of one training step are reused by the next instead of being zeroed again by the kernel
/// (about 20% of a cellbench epoch). At 1 s a MULTIVI epoch still faulted in ~11,000 pages
/// (its 24,744-region buffers); at 10 s almost none. `MIMALLOC_PURGE_DELAY` (ms) overrides.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the allocator options once; front ends call it before heavy work.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting an allocator option is thread-safe and has no other precondition.
    ONCE.call_once(|| unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 10_000)
    });
}
