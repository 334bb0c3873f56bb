//! Builders for the tar archives the image tests import.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::sha256_hex;

pub(super) struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub(super) fn new() -> TarBuilder {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    pub(super) fn dir(self, path: &str, mode: u32) -> TarBuilder {
        self.dir_with(path, mode, 1_700_000_000)
    }

    pub(super) fn dir_with(mut self, path: &str, mode: u32, mtime: u64) -> TarBuilder {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0, mtime);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
        self
    }

    pub(super) fn file(self, path: &str, content: &[u8], mode: u32) -> TarBuilder {
        self.file_with(path, content, mode, 1_700_000_000)
    }

    pub(super) fn file_with(
        mut self,
        path: &str,
        content: &[u8],
        mode: u32,
        mtime: u64,
    ) -> TarBuilder {
        let mut header = Self::header(tar::EntryType::Regular, mode, content.len() as u64, mtime);
        self.builder
            .append_data(&mut header, path, content)
            .unwrap();
        self
    }

    pub(super) fn file_owned(
        mut self,
        path: &str,
        content: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> TarBuilder {
        let mut header = Self::header(
            tar::EntryType::Regular,
            mode,
            content.len() as u64,
            1_700_000_000,
        );
        header.set_uid(uid);
        header.set_gid(gid);
        self.builder
            .append_data(&mut header, path, content)
            .unwrap();
        self
    }

    /// An entry whose name is written verbatim, bypassing the builder's own path checks.
    pub(super) fn raw_file(mut self, name: &[u8], content: &[u8]) -> TarBuilder {
        let mut header = Self::header(
            tar::EntryType::Regular,
            0o644,
            content.len() as u64,
            1_700_000_000,
        );
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        self.builder.append(&header, content).unwrap();
        self
    }

    pub(super) fn symlink(mut self, path: &str, target: &str) -> TarBuilder {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0, 1_700_000_000);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub(super) fn hardlink(mut self, path: &str, target: &str) -> TarBuilder {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0, 1_700_000_000);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub(super) fn fifo(mut self, path: &str, mode: u32) -> TarBuilder {
        let mut header = Self::header(tar::EntryType::Fifo, mode, 0, 1_700_000_000);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
        self
    }

    pub(super) fn char_device(
        mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> TarBuilder {
        let mut header = Self::header(tar::EntryType::Char, mode, 0, 1_700_000_000);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
        self
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(super) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(super) fn image_config_json(entrypoint: &[&str], cmd: &[&str], working_dir: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": if entrypoint.is_empty() { serde_json::Value::Null } else { json!(entrypoint) },
            "Cmd": cmd,
            "Env": ["PATH=/bin"],
            "WorkingDir": working_dir,
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

pub(super) struct DockerImage {
    pub config: Vec<u8>,
    pub tags: Vec<String>,
    pub layers: Vec<Vec<u8>>,
}

/// A `docker save` archive: `<config-hex>.json`, `<layer-hex>/layer.tar`, `manifest.json`.
pub(super) fn docker_archive(images: &[DockerImage]) -> Vec<u8> {
    let mut archive = TarBuilder::new();
    let mut manifest = Vec::new();
    let mut written = std::collections::HashSet::new();
    for image in images {
        let config_name = format!("{}.json", sha256_hex(&image.config));
        if written.insert(config_name.clone()) {
            archive = archive.file(&config_name, &image.config, 0o644);
        }
        let mut layer_names = Vec::new();
        for layer in &image.layers {
            let hex = sha256_hex(layer);
            let name = format!("{hex}/layer.tar");
            if written.insert(name.clone()) {
                archive = archive.dir(&hex, 0o755).file(&name, layer, 0o644);
            }
            layer_names.push(name);
        }
        manifest
            .push(json!({"Config": config_name, "RepoTags": image.tags, "Layers": layer_names}));
    }
    archive
        .file(
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
            0o644,
        )
        .finish()
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// An OCI image layout archive.
pub(super) struct OciArchive {
    blobs: Vec<(Vec<u8>, bool)>,
    descriptors: Vec<serde_json::Value>,
    corrupt_layers: bool,
}

impl OciArchive {
    pub(super) fn new() -> OciArchive {
        OciArchive {
            blobs: Vec::new(),
            descriptors: Vec::new(),
            corrupt_layers: false,
        }
    }

    fn add_blob(&mut self, bytes: Vec<u8>, is_layer: bool) -> serde_json::Value {
        let descriptor =
            json!({"digest": format!("sha256:{}", sha256_hex(&bytes)), "size": bytes.len()});
        self.blobs.push((bytes, is_layer));
        descriptor
    }

    fn manifest(&mut self, config: &[u8], layers: &[Vec<u8>]) -> serde_json::Value {
        let mut config_descriptor = self.add_blob(config.to_vec(), false);
        config_descriptor["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let layer_descriptors: Vec<serde_json::Value> = layers
            .iter()
            .map(|layer| {
                let media_type = if layer.starts_with(&[0x1f, 0x8b]) {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                let mut descriptor = self.add_blob(layer.clone(), true);
                descriptor["mediaType"] = json!(media_type);
                descriptor
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": config_descriptor,
            "layers": layer_descriptors,
        });
        let mut descriptor = self.add_blob(serde_json::to_vec(&manifest).unwrap(), false);
        descriptor["mediaType"] = json!(MANIFEST_TYPE);
        descriptor
    }

    pub(super) fn image(
        mut self,
        config: &[u8],
        layers: &[Vec<u8>],
        annotations: &[(&str, &str)],
    ) -> OciArchive {
        let mut descriptor = self.manifest(config, layers);
        descriptor["annotations"] = annotations_json(annotations);
        self.descriptors.push(descriptor);
        self
    }

    /// The image behind a nested index that also lists another platform's image and an
    /// attestation, neither of whose blobs are in the archive.
    pub(super) fn image_behind_nested_index(
        mut self,
        config: &[u8],
        layers: &[Vec<u8>],
        annotations: &[(&str, &str)],
    ) -> OciArchive {
        let mut host = self.manifest(config, layers);
        host["platform"] = json!({"architecture": host_arch(), "os": "linux"});
        let missing = format!("sha256:{}", sha256_hex(b"not in this archive"));
        let nested = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {"mediaType": MANIFEST_TYPE, "digest": missing, "size": 1,
                 "platform": {"architecture": "s390x-elsewhere", "os": "linux"}},
                {"mediaType": MANIFEST_TYPE, "digest": missing, "size": 1,
                 "platform": {"architecture": "unknown", "os": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                host,
            ],
        });
        let mut descriptor = self.add_blob(serde_json::to_vec(&nested).unwrap(), false);
        descriptor["mediaType"] = json!(INDEX_TYPE);
        descriptor["annotations"] = annotations_json(annotations);
        self.descriptors.push(descriptor);
        self
    }

    pub(super) fn corrupt_layers(mut self) -> OciArchive {
        self.corrupt_layers = true;
        self
    }

    pub(super) fn finish(self) -> Vec<u8> {
        let index =
            json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": self.descriptors});
        let mut archive = TarBuilder::new()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)
            .file("index.json", &serde_json::to_vec(&index).unwrap(), 0o644)
            .dir("blobs", 0o755)
            .dir("blobs/sha256", 0o755);
        let mut written = std::collections::HashSet::new();
        for (mut bytes, is_layer) in self.blobs {
            let name = format!("blobs/sha256/{}", sha256_hex(&bytes));
            if !written.insert(name.clone()) {
                continue;
            }
            if is_layer && self.corrupt_layers {
                bytes.push(0);
            }
            archive = archive.file(&name, &bytes, 0o644);
        }
        archive.finish()
    }
}

fn annotations_json(annotations: &[(&str, &str)]) -> serde_json::Value {
    serde_json::Value::Object(
        annotations
            .iter()
            .map(|(key, value)| (key.to_string(), json!(value)))
            .collect(),
    )
}

pub(super) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// Entry names of a directory, sorted.
pub(super) fn directory_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(super) fn assert_mode(path: &Path, mode: u32) {
    let actual = fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(actual, mode, "mode of {}", path.display());
}

pub(super) fn running_as_root() -> bool {
    let temp = tempfile::tempdir().unwrap();
    use std::os::unix::fs::MetadataExt;
    fs::metadata(temp.path()).unwrap().uid() == 0
}
