//! The images a node made here runs, all built from files on this machine (no registry):
//! npd's own, the pod sandbox's, and the workload the end-to-end test provokes problems
//! with. `cargo xtask image` writes npd's; the node harness imports all three.

use std::path::Path;

use anyhow::Context;

use crate::oci::Image;

/// Debian's busybox-static: one static binary that is a shell, `sleep` and the rest.
pub const BUSYBOX: &str = "/bin/busybox";
/// The sandbox ("pause") image containerd starts for every pod.
pub const PAUSE_REFERENCE: &str = "localhost/npd-pause:1";
/// What the test pods run.
pub const WORKLOAD_REFERENCE: &str = "localhost/npd-workload:1";
/// Where the agent is in its image (the Dockerfile's path, too).
pub const AGENT_PATH: &str = "/usr/local/bin/npd-agent";
/// Where npd-provoke is in the workload image.
pub const PROVOKE_PATH: &str = "/usr/local/bin/npd-provoke";
/// The busybox applets the workload's commands use, as links in /bin.
const WORKLOAD_APPLETS: [&str; 7] = ["sh", "sleep", "cat", "head", "tr", "ls", "mkdir"];

/// npd's image, named `localhost/npd:<tag>`: the agent and the shared libraries it is linked
/// against, nothing else (no shell, no package manager: the pod runs one program).
pub fn agent(agent_binary: &Path, tag: &str) -> anyhow::Result<Image> {
    let mut image = Image::new(format!("localhost/npd:{tag}"));
    image.program(AGENT_PATH, agent_binary)?;
    image.entrypoint = vec![AGENT_PATH.to_owned()];
    image.cmd = vec!["run".to_owned()];
    Ok(image)
}

/// The pod sandbox: it only has to exist and hold the pod's namespaces.
pub fn pause() -> anyhow::Result<Image> {
    let mut image = Image::new(PAUSE_REFERENCE);
    image
        .file("/bin/busybox", Path::new(BUSYBOX))
        .with_context(busybox_missing)?;
    // Longest sleep busybox takes; containerd kills the sandbox with SIGKILL.
    image.entrypoint = ["/bin/busybox", "sleep", "2147483647"]
        .map(String::from)
        .into();
    Ok(image)
}

/// Test pods: a shell and npd-provoke (fd exhaustion, a writer that hangs, an allocator).
pub fn workload(provoke_binary: &Path) -> anyhow::Result<Image> {
    let mut image = Image::new(WORKLOAD_REFERENCE);
    image
        .file("/bin/busybox", Path::new(BUSYBOX))
        .with_context(busybox_missing)?;
    for applet in WORKLOAD_APPLETS {
        image.symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    image.program(PROVOKE_PATH, provoke_binary)?;
    image.entrypoint = ["/bin/sh", "-c"].map(String::from).into();
    image.cmd = vec!["sleep 2147483647".to_owned()];
    Ok(image)
}

fn busybox_missing() -> String {
    format!("{BUSYBOX} is missing: install Debian's busybox-static (`cargo xtask` does)")
}
