//! `cargo bench -p speeddata-benches`: the throughput harness
//! (`speeddata_benches::harness`) with its default arguments; arguments
//! after `--` are passed on (e.g. `cargo bench -p speeddata-benches --
//! --quick`). It needs the release binaries: `cargo build --release --bins`.

use clap::Parser;
use speeddata_benches::harness::{self, Options};

fn main() {
    // `cargo bench` passes `--bench`; without it this executable was started
    // some other way (e.g. `cargo test --all-targets`), where a
    // minutes-long benchmark is not wanted.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput bench: run it with `cargo bench -p speeddata-benches` (skipped)");
        return;
    }
    std::process::exit(harness::main(Options::parse()));
}
