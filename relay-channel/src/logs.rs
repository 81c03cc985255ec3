//! Logging set-up shared by the binaries: tracing to stderr, filtered by
//! `RUST_LOG` (default `info`).

/// Set by the orchestrator for its children: they log without timestamps,
/// since the orchestrator stamps each line it forwards.
pub const SUPERVISED_ENV: &str = "SPEEDDATA_SUPERVISED";

/// Installs the global subscriber.
pub fn init() {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A supervisor that went away closes our stderr; logging must not
        // then panic (tracing-subscriber reports write errors with
        // eprintln!, which panics on a closed stderr) and stop a clean
        // shutdown.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    if std::env::var_os(SUPERVISED_ENV).is_some() {
        logs.without_time().with_target(false).init();
    } else {
        logs.init();
    }
}
