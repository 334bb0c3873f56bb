//! The test image `skiff.test/busybox:1`: Debian's static `/bin/busybox` (package
//! busybox-static) with one symlink per applet, plus `/bin/skiff-udp-echo` (a static UDP
//! server and client, `src/udp_echo.c`, since busybox has neither) and `/bin/skiff-https-get`
//! (a static HTTPS client that verifies the server, `src/https_get.c`: busybox's wget cannot
//! handshake with rustls), as a `docker save`
//! archive that `skiff-agent image import` loads on every node of a test cluster.
//!
//! The archive is built deterministically (fixed owners and times), so its digests only change
//! with its binaries. It is cached at `<target dir>/tools/skiff-test-busybox.tar` and rebuilt
//! whenever its layer differs from the one this build makes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The image reference pods use.
pub const IMAGE: &str = "skiff.test/busybox:1";

/// The static busybox the image is made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// `skiff-udp-echo serve PORT` answers each datagram with `<hostname> <peer ip>:<peer port>`;
/// `skiff-udp-echo ask [-c] [-p SRCPORT] [-w MS] [-n COUNT] [-i MS] HOST PORT` sends and
/// prints `<unix ms> <reply>` (or `timeout`, `error …`) per datagram. Built by build.rs.
pub const UDP_ECHO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff-udp-echo"));

/// Where [`UDP_ECHO`] is in the image.
pub const UDP_ECHO_PATH: &str = "/bin/skiff-udp-echo";

/// `skiff-https-get [--cacert FILE | --insecure] [--header 'Name: value']... https://IP:PORT/PATH`
/// prints the body, then `HTTP <code>` on stderr; exit 0 for 2xx, 22 for other codes, 1 for
/// errors (a certificate that does not chain to FILE or name the IP is one). Built by build.rs.
pub const HTTPS_GET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff-https-get"));

/// Where [`HTTPS_GET`] is in the image.
pub const HTTPS_GET_PATH: &str = "/bin/skiff-https-get";

/// `PATH` of the image's config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Empty directories of the layer, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("var/www", 0o755),
];

/// Small files of the layer, so `id`, `whoami` and friends have names to show.
const FILES: &[(&str, &str)] = &[
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
];

/// Modification time of every entry (the archive must not depend on when it was built).
const MTIME: u64 = 1_700_000_000;

/// The cached archive path: `<target dir>/tools/skiff-test-busybox.tar`.
pub fn archive_path() -> PathBuf {
    crate::target_dir()
        .join("tools")
        .join("skiff-test-busybox.tar")
}

/// The test image archive, (re)built first when it is missing or its layer is not the one
/// this build makes (another busybox, another `skiff-udp-echo`, another layout): keyed by
/// content, so a cached archive never lacks what the tests expect in the image.
pub fn archive() -> Result<PathBuf> {
    let path = archive_path();
    ensure_current(&path)?;
    Ok(path)
}

/// Build the archive at `path` unless the one there already has this build's layer.
pub fn ensure_current(path: &Path) -> Result<()> {
    let layer = layer_tar()?;
    let want = vec![format!("sha256:{}", sha256_hex(&layer))];
    let cached = path
        .exists()
        .then(|| inspect(path).ok())
        .flatten()
        .map(|info| info.layer_digests);
    if cached.as_ref() != Some(&want) {
        build_with_layer(path, layer)?;
    }
    Ok(())
}

/// The applets of /bin/busybox (`busybox --list`), without `busybox` itself.
pub fn applets() -> Result<Vec<String>> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} not found: install Debian's busybox-static (`cargo xtask setup` does)");
    }
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list"))?;
    ensure!(out.status.success(), "{BUSYBOX} --list failed");
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    list.sort();
    list.dedup();
    ensure!(!list.is_empty(), "{BUSYBOX} --list printed no applets");
    Ok(list)
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Build the archive at `out` (written beside it first, then renamed into place, so parallel
/// builders never see half an archive).
pub fn build(out: &Path) -> Result<()> {
    build_with_layer(out, layer_tar()?)
}

fn build_with_layer(out: &Path, layer: Vec<u8>) -> Result<()> {
    let layer_hex = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [format!("sha256:{layer_hex}")],
        },
        "history": [{
            "created": "2023-11-14T22:13:20Z",
            "created_by": "skiff-tests: /bin/busybox, its applet links and /bin/skiff-udp-echo",
        }],
    }))?;
    let config_hex = sha256_hex(&config);
    let (repo, tag) = IMAGE.rsplit_once(':').expect("IMAGE has a tag");
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [IMAGE],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]))?;
    let repositories = serde_json::to_vec(&json!({ repo: { tag: layer_hex } }))?;

    let mut b = tar::Builder::new(Vec::new());
    dir_entry(&mut b, &format!("{layer_hex}/"), 0o755)?;
    file_entry(&mut b, &format!("{layer_hex}/layer.tar"), 0o644, &layer)?;
    file_entry(&mut b, &format!("{config_hex}.json"), 0o644, &config)?;
    file_entry(&mut b, "manifest.json", 0o644, &manifest)?;
    file_entry(&mut b, "repositories", 0o644, &repositories)?;
    let archive = b.into_inner()?;

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension(format!("tar.{}.tmp", std::process::id()));
    std::fs::write(&tmp, archive).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// The image's only layer: busybox, its applet links, skiff-udp-echo, skiff-https-get, a few
/// directories and files.
fn layer_tar() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (install Debian's busybox-static)"))?;
    let applets = applets()?;
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in DIRS {
        dir_entry(&mut b, &format!("{dir}/"), *mode)?;
    }
    file_entry(&mut b, "bin/busybox", 0o755, &busybox)?;
    file_entry(
        &mut b,
        UDP_ECHO_PATH.trim_start_matches('/'),
        0o755,
        UDP_ECHO,
    )?;
    file_entry(
        &mut b,
        HTTPS_GET_PATH.trim_start_matches('/'),
        0o755,
        HTTPS_GET,
    )?;
    for applet in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (path, text) in FILES {
        file_entry(&mut b, path, 0o644, text.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

fn dir_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn file_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data)?;
    Ok(())
}

/// What [`inspect`] found in an archive.
#[derive(Debug)]
pub struct ArchiveInfo {
    pub repo_tags: Vec<String>,
    pub config: serde_json::Value,
    /// `sha256:<hex>` of each layer tar, as computed from the archive.
    pub layer_digests: Vec<String>,
    /// Every entry of the (single) layer: path → (entry type, mode, link target).
    pub layer_entries: Vec<LayerEntry>,
}

#[derive(Debug, Clone)]
pub struct LayerEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub link: Option<String>,
    pub size: u64,
}

/// Read a `docker save` archive back and check its internal consistency: the manifest names
/// files that exist, the config's name is its own sha256, and `rootfs.diff_ids` match the
/// layers' sha256.
pub fn inspect(archive: &Path) -> Result<ArchiveInfo> {
    let mut files = std::collections::BTreeMap::new();
    let mut a = tar::Archive::new(
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?,
    );
    for e in a.entries()? {
        let mut e = e?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        files.insert(path, data);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(files.get("manifest.json").context("no manifest.json")?)?;
    let m = manifest
        .as_array()
        .and_then(|a| a.first())
        .context("manifest.json is not a non-empty array")?;
    let config_name = m["Config"].as_str().context("manifest has no Config")?;
    let config_bytes = files
        .get(config_name)
        .with_context(|| format!("config {config_name} is missing"))?;
    ensure!(
        format!("{}.json", sha256_hex(config_bytes)) == config_name,
        "config {config_name} is not named after its sha256"
    );
    let config: serde_json::Value = serde_json::from_slice(config_bytes)?;
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let layers: Vec<&str> = m["Layers"]
        .as_array()
        .context("manifest has no Layers")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    ensure!(
        layers.len() == diff_ids.len(),
        "{} layers but {} diff_ids",
        layers.len(),
        diff_ids.len()
    );
    let mut layer_digests = Vec::new();
    let mut layer_entries = Vec::new();
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let data = files
            .get(*layer)
            .with_context(|| format!("layer {layer} is missing"))?;
        let digest = format!("sha256:{}", sha256_hex(data));
        ensure!(
            digest == *diff_id,
            "layer {layer} has {digest}, the config says {diff_id}"
        );
        layer_digests.push(digest);
        let mut la = tar::Archive::new(&data[..]);
        for e in la.entries()? {
            let e = e?;
            let h = e.header();
            layer_entries.push(LayerEntry {
                path: e
                    .path()?
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                kind: h.entry_type(),
                mode: h.mode()?,
                link: e.link_name()?.map(|l| l.to_string_lossy().into_owned()),
                size: h.size()?,
            });
        }
    }
    let repo_tags = m["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(ArchiveInfo {
        repo_tags,
        config,
        layer_digests,
        layer_entries,
    })
}
