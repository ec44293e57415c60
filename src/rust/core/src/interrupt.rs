//! Interrupts and progress of long queries. The front end registers how to ask whether the
//! user pressed Ctrl-C (R's interrupt check, which may only run on the thread that registered
//! it) and how to show progress; the query loops call [`check`] (or [`step`], which also
//! reports how far they are) between units of work and stop with [`Error::Interrupted`].
//! Training polls and reports through its observer instead.

use std::sync::OnceLock;
use std::thread::ThreadId;

use crate::error::{Error, Result};

static POLL: OnceLock<(ThreadId, fn() -> bool)> = OnceLock::new();
static REPORT: OnceLock<(ThreadId, fn(f64))> = OnceLock::new();

/// Registers `poll` (true when an interrupt is pending), to be called on this thread only.
pub fn set_poll(poll: fn() -> bool) {
    let _ = POLL.set((std::thread::current().id(), poll));
}

/// Registers `report` (called with the share of a query's work done, in [0, 1]), to be called
/// on this thread only; the front end decides whether and how often to show it.
pub fn set_reporter(report: fn(f64)) {
    let _ = REPORT.set((std::thread::current().id(), report));
}

/// [`check`], after reporting that `done` of `total` units of a query's work are done.
pub fn step(done: usize, total: usize) -> Result<()> {
    if let Some((thread, report)) = REPORT.get() {
        if *thread == std::thread::current().id() && total > 0 {
            report(done as f64 / total as f64);
        }
    }
    check()
}

/// Err(Interrupted) when the user asked to stop; Ok elsewhere (no front end, another thread).
pub fn check() -> Result<()> {
    match POLL.get() {
        Some((thread, poll)) if *thread == std::thread::current().id() && poll() => {
            Err(Error::Interrupted)
        }
        _ => Ok(()),
    }
}
