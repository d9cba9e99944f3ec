//! `cargo xtask image`: npd's container image, built here without Docker or a registry: the
//! release agent and the shared libraries it is linked against, as an OCI archive that
//! `ctr images import` (containerd) or `podman load` reads. `--rootfs DIR` lays the same
//! files out as a directory instead: the Dockerfile's last stage copies exactly that.

use std::path::PathBuf;

use clap::Args;
use npd_tests::{images, oci::Image};

use crate::{
    build::{self, BuildArgs},
    util::{root, step},
};

#[derive(Debug, Args)]
pub(crate) struct ImageArgs {
    /// Write the OCI archive here (default: target/images/npd-<version>-<arch>.oci.tar).
    #[arg(long, conflicts_with = "rootfs")]
    output: Option<PathBuf>,
    /// Lay the image's files out under this new directory instead (for the Dockerfile).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Package this agent binary instead of building one (the Dockerfile's build stage
    /// has just built it).
    #[arg(long)]
    agent: Option<PathBuf>,
}

/// The tag npd's image gets: the workspace's version.
pub(crate) const TAG: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn run(args: &ImageArgs) -> anyhow::Result<()> {
    let agent = match &args.agent {
        Some(agent) => agent.clone(),
        None => build::build(&BuildArgs { debug: false })?.agent,
    };
    let image = images::agent(&agent, TAG)?;
    if let Some(rootfs) = &args.rootfs {
        image.write_rootfs(rootfs)?;
        step(format!(
            "{} laid out under {}",
            image.reference,
            rootfs.display()
        ));
        return Ok(());
    }
    let output = args.output.clone().unwrap_or_else(default_archive);
    let digest = image.write_archive(&output)?;
    step(format!(
        "{} ({digest}) written to {}; import it with `ctr -n k8s.io images import {}` \
         (or `podman load -i`)",
        image.reference,
        output.display(),
        output.display()
    ));
    Ok(())
}

/// Writes npd's image where `cargo xtask image` would, and returns the archive's path.
pub(crate) fn write_default(agent: &std::path::Path) -> anyhow::Result<(Image, PathBuf)> {
    let image = images::agent(agent, TAG)?;
    let output = default_archive();
    image.write_archive(&output)?;
    Ok((image, output))
}

fn default_archive() -> PathBuf {
    root().join(format!(
        "target/images/npd-{TAG}-{}.oci.tar",
        npd_tests::oci::architecture()
    ))
}
