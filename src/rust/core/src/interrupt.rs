//! Interrupts of long queries. The front end registers how to ask whether the user pressed
//! Ctrl-C (R's interrupt check, which may only run on the thread that registered it); the
//! query loops call [`check`] between units of work and stop with [`Error::Interrupted`].
//! Training polls through its observer instead.

use std::sync::OnceLock;
use std::thread::ThreadId;

use crate::error::{Error, Result};

static POLL: OnceLock<(ThreadId, fn() -> bool)> = OnceLock::new();

/// Registers `poll` (true when an interrupt is pending), to be called on this thread only.
pub fn set_poll(poll: fn() -> bool) {
    let _ = POLL.set((std::thread::current().id(), poll));
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
