//! Memory checks before large allocations: an allocation failure aborts the process (and the
//! R session with it), so sizes that cannot fit are refused with an error instead.

use crate::error::{invalid_arg, Result};

/// Available memory in bytes (Linux /proc/meminfo), if it can be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses an allocation of `bytes` that cannot fit in the available memory.
pub fn check_memory(bytes: u64, arg: &str, hint: &str) -> Result<()> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(invalid_arg(
            arg,
            format!(
                "needs about {:.1} GB, more than the {:.1} GB of memory available; {hint}",
                bytes as f64 / 1e9,
                avail as f64 / 1e9
            ),
        )),
        _ => Ok(()),
    }
}

/// A minibatch keeps a few dozen cells x genes buffers alive (forward values, gradients);
/// an allocation failure would abort the whole R session, so refuse sizes that cannot fit.
pub fn check_minibatch_memory(batch_size: usize, n_genes: usize) -> Result<()> {
    const LIVE_BUFFERS: u64 = 48;
    let need = (batch_size as u64)
        .saturating_mul(n_genes as u64)
        .saturating_mul(4 * LIVE_BUFFERS);
    match available_memory() {
        Some(avail) if need > avail => Err(invalid_arg(
            "batch_size",
            format!(
                "= {batch_size} with {n_genes} genes needs about {:.1} GB per training step, more than the \
                 {:.1} GB of memory available; use a smaller batch_size",
                need as f64 / 1e9,
                avail as f64 / 1e9
            ),
        )),
        _ => Ok(()),
    }
}
