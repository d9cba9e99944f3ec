//! helm for the chart tests: the binary `cargo xtask test` fetches into `.npd-cache/helm/`
//! and passes in `NPD_HELM` (`eval "$(cargo xtask helm)"` for a bare `cargo test`).

use std::{
    env,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// Path of the helm binary, set by `cargo xtask test`.
pub const HELM_ENV: &str = "NPD_HELM";

/// The helm binary, run with homes of its own so that no repository, plugin or registry
/// login of the person running the tests changes what it does.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    home: TempDir,
}

impl Helm {
    /// From `NPD_HELM`, failing with directions when it is unset (a chart test must fail
    /// without helm, never pass quietly).
    pub fn from_env() -> anyhow::Result<Self> {
        let binary = env::var_os(HELM_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "{HELM_ENV} is not set. The chart tests run helm, which `cargo xtask test` \
                     fetches and passes in {HELM_ENV}: run the tests through `cargo xtask test` \
                     (or set it with `eval \"$(cargo xtask helm)\"`)"
                )
            })?;
        if !binary.is_file() {
            bail!("{HELM_ENV}={} is not a file", binary.display());
        }
        Ok(Self {
            binary,
            home: TempDir::with_prefix("npd-helm-")?,
        })
    }

    /// Runs `helm ARGS` and returns what it did.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.binary);
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()))
    }
}
