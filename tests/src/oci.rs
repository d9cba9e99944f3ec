//! Container images made here, without a registry or a container builder: a root filesystem
//! described file by file, written either as an OCI image layout in a tar (what
//! `ctr images import` reads) or as a plain directory (what the Dockerfile copies into a
//! `scratch` image, so both ways give the same files).
//!
//! The layer is an uncompressed tar (a valid OCI layer media type, and its digest is its
//! diff id), written reproducibly: sorted, owned by root, mtime 0.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// What one path of the image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A copy of a host file, with its mode.
    File { source: PathBuf, mode: u32 },
    /// A symbolic link to `target`.
    Symlink { target: String },
}

/// An image: its reference, its files (by absolute path in the image) and how it starts.
#[derive(Debug, Clone)]
pub struct Image {
    /// As the kubelet names it, e.g. `localhost/npd:0.1.0` (containerd keeps that name).
    pub reference: String,
    entries: BTreeMap<String, Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The OCI architecture name of this build.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Image {
    pub fn new(reference: impl Into<String>) -> Self {
        Self {
            reference: reference.into(),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
        }
    }

    /// Adds a host file at `path` (absolute, in the image) with the host file's mode.
    pub fn file(&mut self, path: &str, source: &Path) -> anyhow::Result<&mut Self> {
        let metadata = fs::metadata(source)
            .with_context(|| format!("{} (for {path} in the image)", source.display()))?;
        if !metadata.is_file() {
            bail!("{} is not a file", source.display());
        }
        self.insert(
            path,
            Entry::File {
                source: source.to_owned(),
                mode: metadata.permissions().mode() & 0o7777,
            },
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<&mut Self> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds a dynamically linked program and every shared library the dynamic loader resolves
    /// for it here (by `ldd`), each at the path it has on this machine.
    pub fn program(&mut self, path: &str, source: &Path) -> anyhow::Result<&mut Self> {
        self.file(path, source)?;
        for library in shared_libraries(source)? {
            let in_image = library
                .to_str()
                .with_context(|| format!("{} is not UTF-8", library.display()))?
                .to_owned();
            // The file itself, not a link into a tree the image does not have.
            let real = fs::canonicalize(&library)?;
            self.file(&in_image, &real)?;
        }
        Ok(self)
    }

    fn insert(&mut self, path: &str, entry: Entry) -> anyhow::Result<&mut Self> {
        let valid = path.starts_with('/')
            && path.len() > 1
            && !path.ends_with('/')
            && !path.split('/').any(|part| part == ".." || part == ".");
        if !valid {
            bail!("`{path}` is not an absolute, normal path");
        }
        if let Some(old) = self.entries.get(path)
            && *old != entry
        {
            bail!("{path} is in the image twice, differently");
        }
        self.entries.insert(path.to_owned(), entry);
        Ok(self)
    }

    /// The files and links, by path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Every directory the entries need, parents first.
    fn directories(&self) -> Vec<String> {
        let mut dirs: Vec<String> = self
            .entries
            .keys()
            .flat_map(|path| {
                path.match_indices('/')
                    .skip(1)
                    .map(|(at, _)| path[..at].to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The layer: a tar of the directories and entries, reproducible byte for byte.
    pub fn layer(&self) -> anyhow::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        for dir in self.directories() {
            let mut header = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut header, format!("{}/", &dir[1..]), std::io::empty())?;
        }
        for (path, entry) in &self.entries {
            let name = &path[1..];
            match entry {
                Entry::File { source, mode } => {
                    let data = fs::read(source).with_context(|| format!("{}", source.display()))?;
                    let mut header = header(tar::EntryType::Regular, *mode, data.len() as u64);
                    tar.append_data(&mut header, name, data.as_slice())?;
                }
                Entry::Symlink { target } => {
                    let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut header, name, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }

    /// Writes the image as an OCI image layout packed in a tar at `archive` (for
    /// `ctr images import`), and returns its manifest's digest.
    pub fn write_archive(&self, archive: &Path) -> anyhow::Result<String> {
        if self.entrypoint.is_empty() && self.cmd.is_empty() {
            bail!("{} has nothing to run", self.reference);
        }
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": architecture(),
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))?;
        let config_digest = digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = digest(&manifest);
        let tag = self
            .reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(_, tag)| tag)
            .with_context(|| format!("`{}` has no tag", self.reference))?;
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": {"architecture": architecture(), "os": "linux"},
                "annotations": {
                    // containerd names the image after this on import.
                    "io.containerd.image.name": self.reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))?;

        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        let mut add = |name: &str, data: &[u8]| -> anyhow::Result<()> {
            let mut header = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            Ok(tar.append_data(&mut header, name, data)?)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        for (blob_digest, data) in [
            (&manifest_digest, &manifest),
            (&config_digest, &config),
            (&layer_digest, &layer),
        ] {
            let hex = blob_digest.trim_start_matches("sha256:");
            add(&format!("blobs/sha256/{hex}"), data)?;
        }
        let bytes = tar.into_inner()?;
        if let Some(parent) = archive.parent() {
            fs::create_dir_all(parent)?;
        }
        let partial = archive.with_extension("partial");
        fs::File::create(&partial)?.write_all(&bytes)?;
        fs::rename(&partial, archive)?;
        Ok(manifest_digest)
    }

    /// Lays the image's files out under `root` (which must not exist yet), for a Dockerfile
    /// to copy into `scratch`.
    pub fn write_rootfs(&self, root: &Path) -> anyhow::Result<()> {
        if root.exists() {
            bail!("{} exists already", root.display());
        }
        fs::create_dir_all(root)?;
        for dir in self.directories() {
            fs::create_dir_all(root.join(&dir[1..]))?;
        }
        for (path, entry) in &self.entries {
            let at = root.join(&path[1..]);
            match entry {
                Entry::File { source, mode } => {
                    fs::copy(source, &at)?;
                    fs::set_permissions(&at, fs::Permissions::from_mode(*mode))?;
                }
                Entry::Symlink { target } => symlink(target, &at)?,
            }
        }
        Ok(())
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// The shared libraries `ldd` resolves for `program`, the dynamic loader included; none for
/// a static program.
pub fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_ldd(&text)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` give a path; the vDSO gives none; `not found` is an error.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if line.contains("not found") {
            bail!("a shared library is missing: {line}");
        }
        let path = match line.split_once(" => ") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_each_resolved_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f30)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f30)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f30)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn paths_must_be_absolute_and_normal_and_not_given_twice_differently() {
        let mut image = Image::new("localhost/t:1");
        for bad in ["relative", "/", "/a/../b", "/a/", "/./a"] {
            assert!(image.symlink(bad, "x").is_err(), "{bad}");
        }
        image.symlink("/bin/sh", "busybox").unwrap();
        image.symlink("/bin/sh", "busybox").unwrap();
        assert!(image.symlink("/bin/sh", "dash").is_err());
    }

    #[test]
    fn the_layer_is_reproducible_and_holds_parents_before_children() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("tool");
        fs::write(&source, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&source, fs::Permissions::from_mode(0o750)).unwrap();
        let mut image = Image::new("localhost/t:1");
        image.file("/usr/local/bin/tool", &source).unwrap();
        image.symlink("/bin/sh", "/usr/local/bin/tool").unwrap();
        let layer = image.layer().unwrap();
        assert_eq!(layer, image.layer().unwrap());
        let mut archive = tar::Archive::new(layer.as_slice());
        let listed: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("bin/".to_owned(), 0o755, 0),
                ("usr/".to_owned(), 0o755, 0),
                ("usr/local/".to_owned(), 0o755, 0),
                ("usr/local/bin/".to_owned(), 0o755, 0),
                ("bin/sh".to_owned(), 0o777, 0),
                ("usr/local/bin/tool".to_owned(), 0o750, 0),
            ]
        );
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_match_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = Image::new("localhost/t:1.2");
        image.symlink("/bin/sh", "busybox").unwrap();
        image.entrypoint = vec!["/bin/sh".to_owned()];
        let path = dir.path().join("image.tar");
        let manifest_digest = image.write_archive(&path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let mut blobs = BTreeMap::new();
        for entry in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            blobs.insert(name, data);
        }
        for (name, data) in &blobs {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(digest(data), format!("sha256:{hex}"));
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        let described = &index["manifests"][0];
        assert_eq!(described["digest"], manifest_digest.as_str());
        assert_eq!(
            described["annotations"]["io.containerd.image.name"],
            "localhost/t:1.2"
        );
        assert_eq!(
            described["annotations"]["org.opencontainers.image.ref.name"],
            "1.2"
        );
        let manifest: serde_json::Value = serde_json::from_slice(
            &blobs[&format!(
                "blobs/sha256/{}",
                manifest_digest.trim_start_matches("sha256:")
            )],
        )
        .unwrap();
        let config_name = format!(
            "blobs/sha256/{}",
            manifest["config"]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let config: serde_json::Value = serde_json::from_slice(&blobs[&config_name]).unwrap();
        // Uncompressed: the layer's digest is its diff id.
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/sh");
    }
}
