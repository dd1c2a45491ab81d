//! The service's vocabulary: a validated job submission, and the states of jobs and images.
//! Validation happens once, here; everything past the HTTP layer holds parsed values.

pub mod job;
pub mod strict_json;
pub mod submission;

pub use job::{ErrorKind, FirstFailure, ImageStatus, JobStatus, StoreError, StoreFailure};
pub use submission::{Limits, Submission, ValidationError, Visit};
