//! Types shared by the nve eBPF programs and the daemon: map names, capacities, keys and
//! values, wire constants and the outcome counters. Every type here crosses the
//! kernel boundary, so each is `#[repr(C)]` with explicit padding and a size assertion.
#![no_std]

pub mod maps;
pub mod metrics;
pub mod wire;
