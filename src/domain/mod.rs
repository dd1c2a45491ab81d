//! The service's vocabulary: a validated job submission, the states of jobs and images, and
//! the states of worker processes.
//! Validation happens once, here; everything past the HTTP layer holds parsed values.

pub(crate) mod job;
pub(crate) mod results_csv;
pub(crate) mod strict_json;
pub(crate) mod submission;
pub mod time;
pub mod wire;
pub(crate) mod worker;

pub use job::{ErrorKind, FirstFailure, ImageStatus, Job, JobStatus, StoreError, StoreFailure};
pub use submission::{Limits, Submission, ValidationError, Visit};
pub use worker::WorkerState;
