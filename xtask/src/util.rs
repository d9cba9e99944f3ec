//! Running commands with a visible trail.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The repository root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the repository")
        .to_owned()
}

/// `<repo>/.npd-cache/<sub>`, created if missing. A `.npd-cache` that is a symlink to nowhere
/// (a cache shared between checkouts, then moved) is named as the problem, not left to
/// surface as a bare "File exists".
pub(crate) fn cache_dir(sub: &str) -> anyhow::Result<PathBuf> {
    cache_dir_in(&root(), sub)
}

fn cache_dir_in(repo: &Path, sub: &str) -> anyhow::Result<PathBuf> {
    let cache = repo.join(".npd-cache");
    if let Ok(target) = std::fs::read_link(&cache)
        && !cache.exists()
    {
        anyhow::bail!(
            "{} is a symlink to {}, which does not exist: create that directory or remove the \
             link (xtask then makes a cache of its own)",
            cache.display(),
            target.display()
        );
    }
    let dir = cache.join(sub);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Prints what is about to happen, for the person watching.
pub(crate) fn step(message: impl AsRef<str>) {
    eprintln!("xtask: {}", message.as_ref());
}

/// The command line, with very long arguments (lists of hundreds of packages) shortened.
pub(crate) fn describe(cmd: &Command) -> String {
    const LONGEST_ARG: usize = 500;
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        match arg.char_indices().nth(LONGEST_ARG) {
            Some((cut, _)) => {
                text.push_str(&arg[..cut]);
                text.push_str(&format!("...({} more bytes)", arg.len() - cut));
            }
            None => text.push_str(&arg),
        }
    }
    text
}

/// Runs a command, inheriting stdio; fails with the command line if it fails.
pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let line = describe(cmd);
    eprintln!("  $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Like [`sh`], with the command's stdout sent to stderr as well: for commands that only
/// narrate (apt-get, tar), so that stdout carries nothing but what the xtask itself prints.
pub(crate) fn sh_narrating(cmd: &mut Command) -> anyhow::Result<()> {
    sh(cmd.stdout(std::io::stderr()))
}

/// Runs a command and returns its stdout; fails if it fails.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A cargo command free of the variables the outer `cargo xtask` set, which would otherwise
/// pin the inner build to the wrong toolchain or flags.
pub(crate) fn cargo(toolchain: Option<&str>) -> Command {
    let mut cmd = Command::new("cargo");
    if let Some(toolchain) = toolchain {
        cmd.arg(format!("+{toolchain}"));
    }
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_link_to_nowhere_is_named() {
        let repo = std::env::temp_dir().join(format!("npd-xtask-cache-{}", std::process::id()));
        std::fs::create_dir_all(&repo).unwrap();
        std::os::unix::fs::symlink(repo.join("gone"), repo.join(".npd-cache")).unwrap();
        let err = cache_dir_in(&repo, "helm").unwrap_err().to_string();
        assert!(
            err.contains("is a symlink to") && err.contains("gone"),
            "{err}"
        );
        std::fs::create_dir(repo.join("gone")).unwrap();
        assert_eq!(
            cache_dir_in(&repo, "helm").unwrap(),
            repo.join(".npd-cache/helm")
        );
        assert!(repo.join("gone/helm").is_dir());
        std::fs::remove_dir_all(&repo).unwrap();
    }
}
