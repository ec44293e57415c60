//! rscvi-core: scvi-tools' SCVI and GIMVI on Burn, with no R dependency. The R package (rbridge) and
//! the command-line tool (cli) are thin front ends over this crate.

pub mod adversarial;
pub mod alloc;
pub mod backend;
pub mod data;
pub mod de;
pub mod dist;
pub mod error;
pub mod fused;
pub mod gimvi;
pub mod gimvi_model;
pub mod importance;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod mt;
pub mod nn;
pub mod parity;
pub mod resident;
pub mod scarches;
pub mod scvi;
pub mod synth;
pub mod train;

pub use error::{Error, Result};

/// A seeded random stream for front ends that must not depend on `rand` themselves.
pub fn rand_seeded(seed: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Flex's random stream is process-global: tests that draw from it take this lock so that
/// parallel tests cannot interleave their draws.
#[cfg(test)]
pub(crate) static TEST_RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
