//! `orchestrator`: runs one `relay-channel` per channel file, keeps them
//! up, reloads on change, and answers on HTTP.
//!
//! Exit codes: 0 stopped on a signal (or `check` found nothing wrong);
//! 1 failed (HTTP address taken, relay binary missing, ...); 78 a
//! configuration error (`run` with a wrong orchestrator.toml, `check`
//! finding any problem).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use orchestrator::config::{self, Config, InvalidChannels, DEFAULT_CONFIG};
use orchestrator::state::Fleet;
use orchestrator::supervisor::{self, Request, Supervisor};
use orchestrator::{fdlimit, http, status_cmd, systemd};

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
        Command::Status { url, json, files } => {
            let base = url.unwrap_or_else(|| {
                let listen = Config::load(&files.config, files.channels_dir.as_deref())
                    .map(|c| c.listen.to_string())
                    .unwrap_or_else(|_| config::DEFAULT_LISTEN.to_string());
                format!("http://{listen}")
            });
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
    }
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
    let http_limits = http_limits(&cfg);
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
    match rt.block_on(serve(cfg, token, binary, http_limits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Raises the descriptor limit, and sizes the HTTP connection cap so that
/// the relays always find descriptors to start with.
fn http_limits(cfg: &Config) -> http::Limits {
    let limit = match fdlimit::raise() {
        Ok(n) => {
            if n.soft > n.before {
                tracing::info!(
                    from = n.before,
                    to = n.soft,
                    hard = n.hard,
                    "raised the open-file limit (RLIMIT_NOFILE)"
                );
            } else {
                tracing::info!(
                    limit = n.soft,
                    hard = n.hard,
                    "open-file limit (RLIMIT_NOFILE)"
                );
            }
            n.soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            fdlimit::current().unwrap_or(1024)
        }
    };
    let channels = fdlimit::count_channel_files(&cfg.channels_dir);
    let cap = fdlimit::http_cap(cfg.max_connections, limit, channels);
    if cap < cfg.max_connections {
        tracing::warn!(
            configured = cfg.max_connections,
            allowed = cap,
            open_file_limit = limit,
            reserved = fdlimit::reserve(channels),
            "http.max_connections is too high for the open-file limit (raise LimitNOFILE); serving at most {cap} HTTP connections at once"
        );
    }
    http::Limits {
        max_connections: cap,
        ..http::Limits::default()
    }
}

async fn serve(
    cfg: Config,
    token: Option<String>,
    binary: PathBuf,
    http_limits: http::Limits,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{signal, SignalKind};

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let fleet = Arc::new(Fleet::new());
    let (req_tx, mut requests) = tokio::sync::mpsc::channel::<Request>(64);
    let listener = http::bind(cfg.listen)
        .await
        .with_context(|| format!("http.listen {} ({})", cfg.listen, cfg.file.display()))?;
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let shared: http::SharedConfig = Arc::new(std::sync::RwLock::new(Arc::new(cfg.clone())));
    let api = http::Api {
        fleet: fleet.clone(),
        requests: req_tx,
        config: Some(shared.clone()),
        token,
    };
    let http_task = tokio::spawn(http::serve_with(listener, api, http_limits, async {
        let _ = http_stopped.await;
    }));

    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watcher = watch(&cfg.channels_dir, changed_tx);

    tracing::info!(
        config = %cfg.file.display(),
        channels_dir = %cfg.channels_dir.display(),
        relay = %binary.display(),
        http = %cfg.listen,
        http_max_connections = http_limits.max_connections,
        "orchestrator starting"
    );
    let mut sup = Supervisor::new(cfg, binary, fleet.clone());
    sup.reconcile("start");
    systemd::ready(&fleet.summary());

    let debounce = Duration::from_millis(300);
    let mut reload_at: Option<tokio::time::Instant> = None;
    let watchdog = systemd::watchdog_interval();
    let mut status_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(5)));
    loop {
        let reload_sleep = async {
            match reload_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping every channel"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping every channel"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading");
                systemd::reloading();
                sup.reload("SIGHUP");
                *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sup.config().clone());
                systemd::ready(&fleet.summary());
            }
            Some(()) = changed.recv() => {
                reload_at = Some(tokio::time::Instant::now() + debounce);
            }
            _ = reload_sleep => {
                reload_at = None;
                sup.reconcile("channels.d changed");
                systemd::status(&fleet.summary());
            }
            Some(req) = requests.recv() => sup.handle(req),
            _ = status_tick.tick() => {
                if watchdog.is_some() {
                    systemd::watchdog();
                }
                systemd::status(&fleet.summary());
            }
        }
    }
    systemd::stopping();
    sup.shutdown().await;
    let _ = http_stop.send(());
    let _ = http_task.await;
    tracing::info!("every channel stopped");
    Ok(())
}

/// Watches the channels folder; any change of a `.toml` or `.avsc` file
/// sends a tick (debounced by the caller). `None` (and a warning) if the
/// folder cannot be watched: SIGHUP still reloads.
fn watch(
    dir: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            use notify::event::{EventKind, ModifyKind};
            // Reading the files (as every reload does) is not a change.
            let change = matches!(
                ev.kind,
                EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) | EventKind::Any
            ) && !matches!(ev.kind, EventKind::Modify(ModifyKind::Metadata(_)));
            let relevant = change
                && ev
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|x| x == "toml" || x == "avsc"));
            if relevant {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the channels folder; reload with SIGHUP"))
    .ok()?;
    if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the channels folder; reload with SIGHUP");
        return None;
    }
    Some(w)
}
