//! The integration tests as one binary: each file is a module, so a build links once instead
//! of once per file (most of a test build's time on a 2-core machine). The SQL logic tests
//! (tests/slt.rs) have their own runner.

mod cache;
mod cli;
#[cfg(feature = "cluster")]
mod cluster;
mod generate;
mod hf;
mod hub_push;
mod layout;
mod models;
mod queries;
mod remote;
mod resume;
mod shell;
mod sinks;
mod support;
mod translate;
mod trl;
mod trust;
mod trust2;
