//! `throughput`: the benchmark harness (see `speeddata_benches::harness`).
//!
//! ```sh
//! cargo build --release --bins && target/release/throughput
//! target/release/throughput --quick          # about a minute, 800 B only
//! target/release/throughput --json results.json
//! ```

use clap::Parser;
use speeddata_benches::harness::{self, Options};

fn main() {
    std::process::exit(harness::main(Options::parse()));
}
