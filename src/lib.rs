//! Retail Pulse: turns store-visit photos into measurements.
//!
//! A request enters through [`http`], is validated into a [`domain::Submission`], and is
//! written with all its images by [`db::jobs::create`] in one transaction. The images table is
//! the queue ([`queue`]); [`worker`] claims images, downloads them ([`fetch`]), measures them
//! ([`measure`]) and records the outcome. [`app`] wires the pieces; [`cli`] is the front door;
//! [`client`] drives a running server over its HTTP API (`submit`, `status`, `results`).
//! [`auth`] says who is calling: API keys, tenants and their limits. [`ui`] is the dashboard,
//! served beside the API. [`webhooks`] tells clients that a job finished; [`retention`]
//! deletes (and archives) old finished jobs.

pub mod app;
pub mod auth;
pub mod cli;
pub(crate) mod client;
pub mod config;
pub mod db;
pub mod domain;
pub mod fetch;
pub(crate) mod http;
pub mod measure;
pub mod metrics;
pub mod queue;
pub mod retention;
pub(crate) mod shutdown;
pub mod stores;
pub(crate) mod telemetry;
pub(crate) mod ttl_map;
pub(crate) mod ui;
pub(crate) mod web;
pub mod webhooks;
pub mod worker;
