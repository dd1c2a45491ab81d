//! The black-box tests, one module per area, in one test binary: one link instead of one per
//! area, and every helper in `common` is used by some test (the compiler says when one no
//! longer is).
//!
//! The modules share this process, and whatever is global to it or to the machine (the local
//! PostgreSQL server, network namespaces, ports) is shared across modules as it is between
//! the tests of one: names and ports are made unique, and the test that restarts the local
//! PostgreSQL server runs alone ([`common::postgres_alone`]).

mod common;

mod architecture;
mod auth;
mod cli;
mod contract;
mod dashboard;
mod hostile;
mod network;
mod operability;
mod outage;
mod processes;
mod queue;
mod scale;
mod ui;
mod upgrade;
mod webhooks;
