//! The models of the family, one folder each: the module's math and config, and how the
//! model plugs into the shared family (`crate::family`).

pub mod gimvi;
pub mod multivi;
pub mod options;
pub mod scvi;
pub mod splicevi;
