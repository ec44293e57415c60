//! rscvi-core: scvi-tools' models on Burn, with no R dependency. The R package (rbridge) and
//! the command-line tool (cli) are thin front ends over this crate.
//!
//! Layers, bottom up: `data` (sparse counts, covariates, splits, minibatches), `nn` and `dist`
//! (network blocks, likelihoods), `family` (the traits every model implements, the model
//! handle, device dispatch), `train` (the one training loop), `infer` and `de` (queries and
//! differential expression), `io` (persistence), `models/<name>` (each model's own math).

pub mod alloc;
pub mod backend;
pub mod data;
pub mod de;
pub mod dist;
pub mod error;
pub mod family;
pub mod infer;
pub mod interrupt;
pub mod io;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod parity;
pub mod simd;
pub mod train;

pub use error::{Error, Result};

/// A seeded random stream for front ends that must not depend on `rand` themselves.
pub fn rand_seeded(seed: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Flex's random stream is process-global: tests that seed it and compare runs take this
/// lock so that they do not interleave with each other. Tests that merely draw (building a
/// module) do not, so `make test` runs the tests on one thread.
#[cfg(test)]
pub(crate) static TEST_RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
