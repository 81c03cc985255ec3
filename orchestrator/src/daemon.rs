//! The daemon: `orchestrator run` once its configuration is loaded. Binds
//! the API, starts the channels, and runs until SIGTERM or SIGINT:
//! SIGHUP and changes in channels.d reload, systemd hears readiness,
//! status and watchdog pings, and at the end every channel is stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::state::Fleet;
use crate::supervisor::{Request, Supervisor};
use crate::{fdlimit, http, systemd};

/// Raises the descriptor limit, and sizes the HTTP connection cap so that
/// the relays always find descriptors to start with.
pub fn http_limits(cfg: &Config) -> http::Limits {
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

/// Runs the fleet until SIGTERM or SIGINT; see the module's doc.
pub async fn serve(
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
