//! `orchestrator`: runs one `relay-channel` per channel file, keeps them
//! up, reloads on change, and answers on HTTP.
//!
//! Exit codes: 0 stopped on a signal (or `check` found nothing wrong, or
//! a `channel` command did what it was asked); 1 failed (HTTP address
//! taken, relay binary missing, orchestrator not reachable, ...); 78 a
//! configuration error (`run` with a wrong orchestrator.toml, `check`
//! finding any problem, a channel the orchestrator refused as invalid).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestrator::config::{self, Config, InvalidChannels, DEFAULT_CONFIG};
use orchestrator::supervisor::{self};
use orchestrator::{channel_cmd, daemon, hold_cmd, pivot_cmd, speeddata_import, status_cmd};

/// The speeddata-relay supervisor: reads one TOML file per channel from
/// channels.d/, runs one isolated `relay-channel` process per channel,
/// restarts failing channels with backoff without touching the others,
/// reloads on SIGHUP and when channels.d changes, and serves status,
/// Prometheus metrics and a lifecycle event stream over HTTP.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fleet until SIGTERM or SIGINT (SIGHUP reloads).
    Run {
        #[command(flatten)]
        files: Files,
    },
    /// Validate orchestrator.toml and every channel file (schemas and fleet
    /// conflicts included); print every problem with its file and key.
    /// Exits 0 if all is valid, 78 if not.
    Check {
        #[command(flatten)]
        files: Files,
    },
    /// Print the HTTP API's OpenAPI 3 document (as served at
    /// /api/v1/openapi.json), e.g. to generate a client from it.
    Openapi,
    /// Print a table of the channels of a running orchestrator.
    Status {
        /// The orchestrator's HTTP address (default: http.listen of the
        /// configuration file, else 127.0.0.1:9464).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        files: Files,
    },
    /// Add, replace, remove or show one channel through a running
    /// orchestrator's API.
    ///
    /// channels.d stays the source of truth: these commands keep no channel
    /// anywhere else. They ask the orchestrator to write (or delete) the
    /// channel's files in its channels.d, which it then runs as it runs any
    /// file there; editing those files by hand keeps working, and
    /// `orchestrator check` sees what the commands wrote.
    ///
    /// When orchestrator.toml names an http.token_file, its token is sent
    /// with each request (Authorization: Bearer); it is never printed. The
    /// file is readable by root and the speeddata group only, under the
    /// Debian package.
    ///
    /// Exit codes: 0 done; 78 the channel or its schema is wrong (every
    /// problem printed as "file: key: message", as `check` prints them);
    /// 1 anything else (the orchestrator not running, the request refused,
    /// no such channel).
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Keep an incident's data past retention: add, list or remove holds.
    ///
    /// While a hold exists, every relay's retention keeps the archive files
    /// of a held channel whose time span overlaps the hold's range, however
    /// short retention is. A hold whose --to lies in the future also keeps
    /// the files written until then.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// Copy a hold's data out for an analyst: per channel, the held files
    /// (hard links where the filesystem allows) in OUT/<channel>/, and
    /// OUT/MANIFEST.json (the hold, channels, files, records, bytes and
    /// the SHA-256 of each file).
    ///
    /// With --cut, a channel whose `archive.time_field` is set gets instead
    /// one new Avro file holding exactly the records whose time field lies
    /// in the hold's range, in order, with the same schema and codec. OUT
    /// must be empty or not exist. Runs on the orchestrator's host (it
    /// reads the archive files).
    Export {
        /// The hold's name.
        name: String,
        /// The folder to export into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Cut each channel's records to the hold's range by its
        /// `archive.time_field`.
        #[arg(long)]
        cut: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Turn another system's configuration into channel files.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Export channels over a time range as columns, to a file: what
    /// GET /api/v1/pivot/export answers (SpeedData's Pivot API call).
    ///
    /// Through a running orchestrator's API by default (with the API token
    /// of the configuration, if it has one); with --offline, straight from
    /// the channels' archive folders, read from the configuration (the
    /// same code, no orchestrator needed).
    ///
    /// Examples:
    ///   orchestrator pivot --channels a,b --last PT30S --format parquet --out last.zip
    ///   orchestrator pivot --channels a --start 2026-12-07T12:00:00Z --duration PT1H --out a.h5
    ///
    /// Exit codes: 0 written; 2 a parameter is wrong (the message names
    /// it); 78 the configuration is wrong; 1 anything else (no such
    /// channel, the orchestrator not running, a limit). Nothing is left at
    /// --out unless the export is whole.
    #[command(verbatim_doc_comment)]
    Pivot {
        #[command(flatten)]
        query: PivotArgs,
        /// The file to write.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Read the archive folders directly, without the orchestrator.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Write one channel file per SpeedData channel, and its schema.
    ///
    /// PATH is a SpeedData tree (it holds config/relay.yaml and
    /// config/global.yaml) or a folder holding relay.yaml and global.yaml
    /// themselves (a deployed /etc/speeddata). Relative paths in them (the
    /// schemas, storage.avro_path) resolve as SpeedData resolves them,
    /// against its working folder: the tree for a tree, the folder itself
    /// for a configuration folder; --root names another.
    ///
    /// For each channel, DIR gets NAME.toml and NAME.avsc (the channel's
    /// schema, copied byte for byte). Every key is mapped or reported:
    ///   channels[].name, port, schema  -> name, receive.bind, schema
    ///   storage.avro_path               -> archive.dir (made absolute)
    ///   decimation enabled/factor/algorithm -> [decimated] (or none), factor, algorithm
    ///   rotation mode time|size + threshold -> archive.rotate_interval | rotate_size
    ///   retention mode ttl|quota + value    -> archive.retention_age | retention_size
    ///   multicast.full_rate / decimated     -> [full] / [decimated] group
    /// and any other key is listed as not mapped, with the reason. With
    /// --registry, the channels of SpeedData's SQLite registry
    /// (data/registry.db, v0.5) are imported too and override relay.yaml's
    /// of the same name, as in SpeedData; their config_json (decimation,
    /// rotation, retention) overrides relay.yaml's sections for that
    /// channel.
    ///
    /// As SpeedData, every channel receives on 127.0.0.1:PORT (SpeedData's
    /// relay binds that: --receive-address 0.0.0.0 takes senders on other
    /// hosts too) and sends to the same two groups, by the kernel's default
    /// interface with TTL 2 (--interface, --ttl: `--interface 127.0.0.1
    /// --ttl 0` keeps it on this host). Several channels on one group need
    /// `shared = true` (see docs/channel-file.md), which the import writes
    /// when it imports more than one channel; one channel keeps SpeedData's
    /// groups and needs none.
    ///
    /// Every file is checked as `orchestrator check` checks it, with the
    /// other channel files of DIR, before anything is written. Files are
    /// written atomically (a temporary file, then a rename), schemas
    /// first. A file that exists with the same content is left as it is;
    /// one with other content is never overwritten: then nothing is
    /// written.
    ///
    /// Exit codes: 0 written (or, with --dry-run, would be); 78 the
    /// SpeedData configuration cannot be imported (every problem printed as
    /// "file: key: message"); 1 a file in DIR would be overwritten, or a
    /// file cannot be written.
    #[command(verbatim_doc_comment)]
    Speeddata {
        /// The SpeedData tree, or its configuration folder.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// The folder to write the channel files into (e.g. channels.d).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// SpeedData's channel registry (v0.5 SQLite, data/registry.db).
        #[arg(long, value_name = "FILE")]
        registry: Option<PathBuf>,
        /// The folder relative paths resolve against (SpeedData's working
        /// folder).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Print the table and the files, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The address every channel receives on (with its port).
        #[arg(long, value_name = "IPV4", default_value_t = speeddata_import::SPEEDDATA_RECEIVE_ADDRESS)]
        receive_address: Ipv4Addr,
        /// The interface multicast leaves by: an address or a name
        /// (0.0.0.0: the kernel's choice by its routes, as SpeedData).
        #[arg(long, value_name = "ADDR|NAME", default_value = speeddata_import::DEFAULT_INTERFACE)]
        interface: String,
        /// The multicast TTL (0: never leaves the host; SpeedData: 2).
        #[arg(long, value_name = "N", default_value_t = speeddata_import::SPEEDDATA_TTL, value_parser = clap::value_parser!(u32).range(0..=255))]
        ttl: u32,
    },
}

/// `orchestrator pivot`'s query: the endpoint's parameters as flags.
#[derive(Debug, clap::Args)]
struct PivotArgs {
    /// Comma list of channel names.
    #[arg(long, value_name = "A,B")]
    channels: String,
    /// Start of the range, inclusive (RFC 3339: 2026-12-07T12:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "last")]
    start: Option<String>,
    /// End of the range, exclusive (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "duration")]
    end: Option<String>,
    /// Length of the range from --start (ISO 8601: PT30S, PT5M, PT1H, P1D).
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// The range ending now, instead of --start (ISO 8601: PT30S).
    #[arg(long, value_name = "DURATION")]
    last: Option<String>,
    /// Comma list of fields, dotted through nested records (pos.x);
    /// default every field. The time field always comes.
    #[arg(long, value_name = "X,Y")]
    signals: Option<String>,
    /// hdf5 (SpeedData's layout), parquet, arrow (IPC file) or csv;
    /// several channels in the last three make a zip of one file each.
    #[arg(long, value_name = "FORMAT", default_value = "hdf5")]
    format: String,
    /// Select records by their own time (record: archive.time_field, the
    /// default where set) or by arrival.
    #[arg(long, value_name = "record|arrival")]
    time: Option<String>,
}

impl PivotArgs {
    fn pairs(&self) -> Vec<(String, String)> {
        let mut p = vec![("channels".to_string(), self.channels.clone())];
        let opt = [
            ("start", &self.start),
            ("end", &self.end),
            ("duration", &self.duration),
            ("last", &self.last),
            ("signals", &self.signals),
            ("time", &self.time),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                p.push((k.to_string(), v.clone()));
            }
        }
        p.push(("format".into(), self.format.clone()));
        p
    }
}

#[derive(Debug, Subcommand)]
enum HoldCommand {
    /// Make a hold. Times: RFC 3339 (2026-11-23T14:02:00Z), `now`, or a
    /// time before now (-15m, -2h, "-1h 30m").
    Add {
        /// The hold's name (a-z, 0-9, '_' and '-').
        name: String,
        /// Start of the range.
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        from: String,
        /// End of the range (may lie in the future).
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        to: String,
        /// A channel to hold (repeat for several; default: every channel).
        #[arg(long = "channel", value_name = "NAME")]
        channels: Vec<String>,
        /// Why the data is kept.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the holds, with the files and bytes each keeps.
    Ls {
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a hold; its files go at the next retention pass that finds
    /// them past retention.
    Rm {
        /// The hold's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Add a channel, or replace the channel of the same name.
    ///
    /// Sends FILE.toml and its Avro schema to the orchestrator, which
    /// validates them as `orchestrator check` would (the file on its own
    /// and against the rest of the fleet), writes them into channels.d as
    /// NAME.toml and NAME.avsc, and starts the channel (restarts it, if it
    /// replaces one). If it finds anything wrong it answers with every
    /// problem, printed with its file and key (exit 78).
    ///
    /// NAME is the file's `name` key, else its file name without .toml.
    /// The schema is --schema, else the file that the channel's own
    /// `schema` key names (relative to FILE.toml's folder). That key is
    /// left out of what is sent (the orchestrator points it at NAME.avsc);
    /// every other line, comments included, is sent as written.
    ///
    /// Waits until the channel is ready (or has failed to start) and prints
    /// its state, e.g. "added channel east: ready (pid 1234)" or "replaced
    /// channel east: ...".
    Add {
        /// The channel file.
        #[arg(value_name = "FILE.toml")]
        file: PathBuf,
        /// The channel's Avro schema, a JSON file (default: the file that
        /// the channel's `schema` key names).
        #[arg(long, value_name = "FILE.avsc")]
        schema: Option<PathBuf>,
        /// Return once the files are written and the channel is starting,
        /// without waiting for it to be ready.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a channel: the orchestrator stops it and deletes its file
    /// from channels.d.
    ///
    /// The channel's archive (archive.dir/NAME/) is kept: its open file is
    /// closed and nothing in the folder is deleted.
    Rm {
        /// The channel's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a channel's file and schema as they are in channels.d.
    ///
    /// The channel file's path and text, then the schema file's path and
    /// the schema (JSON, pretty-printed).
    Show {
        /// The channel's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Where the API is, and the configuration that says so.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The orchestrator's HTTP address (default: http.listen of the
    /// configuration file, else 127.0.0.1:9464).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    #[command(flatten)]
    files: Files,
}

#[derive(Debug, clap::Args)]
struct Files {
    /// orchestrator.toml.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The channel files' folder (default: channels_dir of the
    /// configuration, else channels.d beside it).
    #[arg(long, value_name = "DIR")]
    channels_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    relay_channel::logs::init();
    match cli.command {
        Command::Run { files } => run(&files),
        Command::Check { files } => check(&files),
        Command::Openapi => match orchestrator::openapi().to_pretty_json() {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Status { url, json, files } => {
            let cfg = Config::load(&files.config, files.channels_dir.as_deref()).ok();
            let base = api_url(url, cfg.as_ref());
            match status_cmd::status(&base, json) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Channel { command } => channel(command),
        Command::Hold { command } => hold(command),
        Command::Export {
            name,
            out,
            cut,
            remote,
        } => remote_command(&remote, false, |c| hold_cmd::export(c, &name, &out, cut)),
        Command::Pivot {
            query,
            out,
            offline,
            remote,
        } => pivot(&query, &out, offline, &remote),
        Command::Import {
            command:
                ImportCommand::Speeddata {
                    path,
                    out,
                    registry,
                    root,
                    dry_run,
                    receive_address,
                    interface,
                    ttl,
                },
        } => {
            let mut o = speeddata_import::Options::new(path, out);
            o.registry = registry;
            o.root = root;
            o.dry_run = dry_run;
            o.receive_address = receive_address;
            o.interface = interface;
            o.ttl = ttl;
            report(speeddata_import::import(&o))
        }
    }
}

fn pivot(args: &PivotArgs, out: &std::path::Path, offline: bool, remote: &Remote) -> ExitCode {
    let q = match pivot_cmd::query(&args.pairs()) {
        Ok(q) => q,
        Err(f) => return report(Err(f)),
    };
    if !offline {
        return remote_command(remote, true, |c| pivot_cmd::through_api(c, &q, out));
    }
    let cfg = match load(&remote.files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    report(pivot_cmd::offline(&cfg, &q, out))
}

/// Prints a command's outcome; its exit code.
fn report(r: Result<String, channel_cmd::Failure>) -> ExitCode {
    match r {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            for line in f.lines.iter().flat_map(|l| l.lines()) {
                eprintln!("error: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}

/// The API's URL: `url`, else `http.listen` of the configuration (a
/// wildcard address is asked through the loopback), else the default.
fn api_url(url: Option<String>, cfg: Option<&Config>) -> String {
    url.unwrap_or_else(|| {
        let mut listen: SocketAddr = match cfg {
            Some(c) => c.listen,
            None => config::DEFAULT_LISTEN.parse().expect("the default parses"),
        };
        if listen.ip().is_unspecified() {
            listen.set_ip(match listen.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{listen}")
    })
}

fn channel(command: ChannelCommand) -> ExitCode {
    match command {
        ChannelCommand::Add {
            file,
            schema,
            no_wait,
            remote,
        } => remote_command(&remote, true, |c| {
            channel_cmd::add(c, &file, schema.as_deref(), !no_wait)
        }),
        ChannelCommand::Rm { name, remote } => {
            remote_command(&remote, true, |c| channel_cmd::remove(c, &name))
        }
        ChannelCommand::Show { name, remote } => {
            remote_command(&remote, false, |c| channel_cmd::show(c, &name))
        }
    }
}

fn hold(command: HoldCommand) -> ExitCode {
    match command {
        HoldCommand::Add {
            name,
            from,
            to,
            channels,
            note,
            remote,
        } => remote_command(&remote, true, |c| {
            hold_cmd::add(c, &name, &from, &to, &channels, note.as_deref())
        }),
        HoldCommand::Ls { remote } => remote_command(&remote, false, hold_cmd::list),
        HoldCommand::Rm { name, remote } => {
            remote_command(&remote, true, |c| hold_cmd::remove(c, &name))
        }
    }
}

/// Runs a command against the API that `remote` names, with the token of
/// its configuration for write requests, and prints its outcome.
fn remote_command(
    remote: &Remote,
    writes: bool,
    f: impl FnOnce(&channel_cmd::Client) -> Result<String, channel_cmd::Failure>,
) -> ExitCode {
    let files = &remote.files;
    let warn = |e: &dyn std::fmt::Display| {
        for line in e.to_string().lines() {
            eprintln!("warning: {line}");
        }
    };
    let cfg = match Config::load(&files.config, files.channels_dir.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            // No configuration at all is fine (the defaults); a wrong one
            // is worth a word.
            if files.config.exists() {
                warn(&e);
                eprintln!("warning: going on without its http.listen and http.token_file");
            }
            None
        }
    };
    let token = match cfg.as_ref().map(config::read_token) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            if writes {
                warn(&e);
                eprintln!("warning: sending the request without the API token");
            }
            None
        }
        None => None,
    };
    let client = channel_cmd::Client::new(&api_url(remote.url.clone(), cfg.as_ref()), token);
    report(f(&client))
}

fn load(files: &Files) -> Result<Config, ExitCode> {
    Config::load(&files.config, files.channels_dir.as_deref()).map_err(|e| {
        for line in e.to_string().lines() {
            eprintln!("error: {line}");
        }
        ExitCode::from(78)
    })
}

fn check(files: &Files) -> ExitCode {
    let cfg = match load(files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fleet = match config::load_fleet(&cfg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", cfg.channels_dir.display());
            return ExitCode::from(78);
        }
    };
    for c in &fleet.channels {
        println!("ok: {}: channel {:?}", c.file().display(), c.name());
    }
    if fleet.rejected.is_empty() {
        println!(
            "{}: {} channel(s), all valid",
            cfg.channels_dir.display(),
            fleet.channels.len()
        );
        ExitCode::SUCCESS
    } else {
        for line in InvalidChannels(&fleet.rejected).to_string().lines() {
            eprintln!("error: {line}");
        }
        eprintln!(
            "{} of {} channel file(s) invalid",
            fleet.rejected.len(),
            fleet.rejected.len() + fleet.channels.len()
        );
        ExitCode::from(78)
    }
}

fn run(files: &Files) -> ExitCode {
    let cfg = match load(files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let binary = match supervisor::relay_binary(&cfg) {
        Ok(b) if b.is_file() => b,
        Ok(b) => {
            eprintln!(
                "error: the relay binary {} does not exist (set relay_binary in {})",
                b.display(),
                cfg.file.display()
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: cannot locate the relay binary: {e}");
            return ExitCode::from(1);
        }
    };
    let token = match config::read_token(&cfg) {
        Ok(t) => t,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::from(78);
        }
    };
    let http_limits = daemon::http_limits(&cfg);
    // One thread: children are spawned from the main thread, which lives
    // as long as the process, as PR_SET_PDEATHSIG requires.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(daemon::serve(cfg, token, binary, http_limits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
