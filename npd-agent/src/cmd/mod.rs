//! One file per subcommand.

pub(crate) mod check;
pub(crate) mod dump;
pub(crate) mod run;

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default disposition still stops the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
