//! Shared pieces of the benchmark tools: realistic wire values, `/proc` readers and order
//! statistics.
//!
//! Benchmarks print figures; nothing here asserts on one, and nothing here is used outside
//! `benches/`.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod procfs;
pub mod stats;
