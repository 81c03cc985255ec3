//! `relay-channel`: runs one speeddata-relay channel.
//!
//! A thin binary over the library: parse the command line, set up logging,
//! and map every outcome to an exit code in one place (0 stopped cleanly,
//! 1 failed, 78 configuration error: do not restart until the file changes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relay_channel::config::{parse_table, ChannelSpec};
use relay_channel::relay::{self, RunError};

/// One channel of speeddata-relay: receives UDP datagrams that each carry one
/// Avro-encoded record, archives them into Avro container files, re-emits
/// every valid datagram on a full-rate multicast group and every Nth on a
/// decimated group.
///
/// stdout carries JSON lines for a supervisor (`ready`, `stats` every second,
/// `file_closed`, `stopped`); stderr carries logs, filtered by RUST_LOG
/// (default `info`). SIGTERM or SIGINT stops it cleanly: everything received
/// is written out and the open archive file is closed.
///
/// The outputs send runs of equal-length datagrams as UDP GSO messages where
/// the kernel offers it; SPEEDDATA_GSO=0 in the environment turns that off.
///
/// Exit codes: 0 stopped on a signal; 1 failed (port taken, archive folder
/// not writable, ...); 78 the configuration or schema is wrong.
#[derive(Debug, Parser)]
#[command(name = "relay-channel", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a channel until SIGTERM or SIGINT.
    Run {
        /// The channel file (TOML). Relative paths inside it resolve against
        /// its folder.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// TOML text merged under the channel file: keys the file sets win.
        /// The orchestrator passes its `[defaults]` here.
        #[arg(long, value_name = "TOML")]
        defaults: Option<String>,
        /// The holds folder: retention never deletes a file of this channel
        /// whose time span overlaps a hold there that covers the channel
        /// (one `{name}.json` per hold, read every second; a missing folder
        /// holds nothing).
        #[arg(long, value_name = "DIR", env = "SPEEDDATA_HOLDS_DIR")]
        holds_dir: Option<PathBuf>,
    },
    /// Validate a channel file and its schema, print the result, and exit:
    /// 0 if valid, 78 if not.
    Check {
        /// The channel file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// TOML text merged under the channel file, as for `run`.
        #[arg(long, value_name = "TOML")]
        defaults: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    relay_channel::logs::init();
    let result = match cli.command {
        Command::Run {
            config,
            defaults,
            holds_dir,
        } => load(&config, defaults.as_deref())
            .and_then(|spec| relay::run_with(spec, &relay::RunOptions { holds_dir })),
        Command::Check { config, defaults } => check(&config, defaults.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            match &e {
                RunError::Config(c) => {
                    for line in c.to_string().lines() {
                        eprintln!("error: {line}");
                    }
                }
                RunError::Failed(m) => eprintln!("error: {m}"),
            }
            ExitCode::from(code as u8)
        }
    }
}

fn load(path: &Path, defaults: Option<&str>) -> Result<ChannelSpec, RunError> {
    let defaults = defaults
        .map(|d| parse_table(d, Path::new("--defaults")))
        .transpose()?;
    Ok(ChannelSpec::load(path, defaults.as_ref())?)
}

fn check(path: &Path, defaults: Option<&str>) -> Result<(), RunError> {
    let spec = load(path, defaults)?;
    relay_channel::schema::load(&spec)?;
    println!(
        "{}: channel {:?} is valid (receive {}, archive {})",
        path.display(),
        spec.name,
        spec.receive.bind,
        spec.archive.channel_dir(&spec.name).display()
    );
    Ok(())
}
