//! What every Conveyor binary does at start: logging, settings, signals.

use std::path::Path;

use crate::settings::Settings;

/// Structured logs to stderr; `RUST_LOG` filters (default `info`), and
/// `CONVEYOR_LOG_FORMAT=json` switches to one JSON object per line.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_postgres=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("CONVEYOR_LOG_FORMAT").is_ok_and(|v| v == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Loads settings from `--config FILE` (or `CONVEYOR_CONFIG`), then the
/// environment.
pub fn load_settings(file: Option<&Path>) -> anyhow::Result<Settings> {
    let env_file = std::env::var_os("CONVEYOR_CONFIG");
    let file = file.or(env_file.as_deref().map(Path::new));
    Settings::load(file).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}
