//! Progress display and Ctrl-C polling during training (the core's `Observer`).

use std::os::raw::{c_int, c_void};
use std::time::Instant;

use extendr_api::prelude::*;
use rscvi_core::train::{EpochRecord, Observer};

extern "C" {
    fn R_ToplevelExec(fun: Option<unsafe extern "C" fn(*mut c_void)>, data: *mut c_void) -> c_int;
    fn R_CheckUserInterrupt();
}

unsafe extern "C" fn check_interrupt(_: *mut c_void) {
    R_CheckUserInterrupt();
}

/// True when the user pressed Ctrl-C. R_CheckUserInterrupt would longjmp over Rust frames;
/// inside R_ToplevelExec the jump ends there and only the return value tells.
pub(crate) fn interrupt_pending() -> bool {
    unsafe { R_ToplevelExec(Some(check_interrupt), std::ptr::null_mut()) == 0 }
}

/// How training reports its progress.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressMode {
    /// Silent.
    None,
    /// One line redrawn in place (interactive sessions).
    Bar,
    /// A new line every 5% of the epochs (scripts and batch jobs, whose logs keep every
    /// line).
    Lines,
}

impl ProgressMode {
    pub(crate) fn parse(mode: &str) -> Option<Self> {
        match mode {
            "none" => Some(Self::None),
            "bar" => Some(Self::Bar),
            "lines" => Some(Self::Lines),
            _ => None,
        }
    }
}

/// Lines over a whole run in [`ProgressMode::Lines`] (one every 5% of the epochs).
const LINES: usize = 20;

pub(crate) struct RProgress {
    mode: ProgressMode,
    last_draw: Option<Instant>,
    /// Lines mode: the last 5% step printed.
    last_step: usize,
    interrupted: bool,
}

impl RProgress {
    pub(crate) fn new(mode: ProgressMode) -> Self {
        Self {
            mode,
            last_draw: None,
            last_step: 0,
            interrupted: false,
        }
    }

    /// Ends the progress line when training stopped early (Ctrl-C or an error).
    pub(crate) fn finish(&self, failed: bool) {
        if self.mode == ProgressMode::Bar
            && self.last_draw.is_some()
            && (self.interrupted || failed)
        {
            reprint!("\n");
        }
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.0}s")
    }
}

impl Observer for RProgress {
    fn on_epoch(&mut self, r: &EpochRecord, done: usize, total: usize, elapsed: f64) {
        let finished = done == total;
        let eta = elapsed / done as f64 * (total - done) as f64;
        let val = r
            .elbo_validation
            .map_or(String::new(), |v| format!(" elbo_validation {v:.1}"));
        match self.mode {
            ProgressMode::None => {}
            ProgressMode::Bar => {
                if !finished
                    && self
                        .last_draw
                        .is_some_and(|t| t.elapsed().as_secs_f64() < 0.2)
                {
                    return;
                }
                self.last_draw = Some(Instant::now());
                let width = 20;
                let filled = done * width / total.max(1);
                reprint!(
                    "\rEpoch {done}/{total} [{}{}] {} elapsed, ETA {} | elbo_train {:.1}{val}   ",
                    "=".repeat(filled),
                    " ".repeat(width - filled),
                    fmt_secs(elapsed),
                    fmt_secs(eta),
                    r.elbo_train
                );
                if finished {
                    reprint!("\n");
                }
            }
            ProgressMode::Lines => {
                let step = done * LINES / total.max(1);
                if step == self.last_step && !finished && done != 1 {
                    return;
                }
                self.last_step = step;
                reprintln!(
                    "Epoch {done}/{total} ({:.0}%) {} elapsed, ETA {} | elbo_train {:.1}{val}",
                    100.0 * done as f64 / total.max(1) as f64,
                    fmt_secs(elapsed),
                    fmt_secs(eta),
                    r.elbo_train
                );
            }
        }
    }

    fn should_stop(&mut self) -> bool {
        if interrupt_pending() {
            self.interrupted = true;
        }
        self.interrupted
    }
}

/// Progress of the query running now (one per R call into the core): long queries (marginal
/// LL, differential expression, correlations...) report a line every 10% of their work once
/// they have run for [`QUERY_QUIET_SECS`], as R's option rscvi.progress allows.
struct QueryProgress {
    /// What the line says is running ("query" unless the entry point names its work).
    what: &'static str,
    start: Instant,
    /// Decided at the first report due: None until then.
    mode: Option<ProgressMode>,
    last_decile: usize,
}

/// Queries shorter than this stay silent.
const QUERY_QUIET_SECS: f64 = 3.0;

thread_local! {
    static QUERY: std::cell::RefCell<QueryProgress> = std::cell::RefCell::new(QueryProgress {
        what: "query",
        start: Instant::now(),
        mode: None,
        last_decile: 0,
    });
}

/// A new query starts now.
pub(crate) fn start_query() {
    QUERY.with(|q| {
        *q.borrow_mut() = QueryProgress {
            what: "query",
            start: Instant::now(),
            mode: None,
            last_decile: 0,
        }
    });
}

/// Names the work of the running call in its progress lines (e.g. setting up the data).
pub(crate) fn name_query(what: &'static str) {
    QUERY.with(|q| q.borrow_mut().what = what);
}

/// The progress mode training would use (R's `.progress_mode()` with the default `progress`).
fn query_progress_mode() -> ProgressMode {
    R!("rscvi:::.progress_mode(rscvi:::.progress_default(), list())")
        .ok()
        .and_then(|m| m.as_str().and_then(ProgressMode::parse))
        .unwrap_or(ProgressMode::None)
}

/// The core's report that `done` (a share in [0, 1]) of the current query's work is done.
pub(crate) fn report_query(done: f64) {
    QUERY.with(|q| {
        let mut q = q.borrow_mut();
        let elapsed = q.start.elapsed().as_secs_f64();
        let decile = (done * 10.0).floor() as usize;
        if elapsed < QUERY_QUIET_SECS || done <= 0.0 || decile <= q.last_decile {
            return;
        }
        let mode = *q.mode.get_or_insert_with(query_progress_mode);
        if mode == ProgressMode::None {
            return;
        }
        q.last_decile = decile;
        let eta = fmt_secs(elapsed * (1.0 - done) / done);
        let line = format!(
            "{} {:.0}% done, {} elapsed, ETA {eta}",
            q.what,
            100.0 * done,
            fmt_secs(elapsed)
        );
        if mode == ProgressMode::Bar {
            reprint!("\r{line}   ");
        } else {
            reprintln!("{line}");
        }
    });
}

/// Ends a progress line the query left open.
pub(crate) fn end_query() {
    QUERY.with(|q| {
        let q = q.borrow();
        if q.mode == Some(ProgressMode::Bar) && q.last_decile > 0 {
            reprint!("\r{}\r", " ".repeat(60));
        }
    });
}
