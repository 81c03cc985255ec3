//! Shared pieces of the load generator and benchmarks.
