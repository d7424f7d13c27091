//! kd-harness: reproducible knowledge-distillation research.
//!
//! Data flows one way: `suite` (TOML → resolved runs) → `sched` (one child process per run)
//! → `train` (the loop, using `data`, `models`, `distill`) → `store` (results on disk).
//! See `../shared/spec/architecture.md` in the project notes and README.md.

pub mod cli;
pub mod data;
pub mod distill;
pub mod draws;
pub mod env;
pub mod error;
pub mod files;
pub mod models;
pub mod report;
pub mod sched;
pub mod store;
pub mod suite;
pub mod train;

pub use error::{InputError, Result};
