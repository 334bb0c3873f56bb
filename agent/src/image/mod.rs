//! placeholder until the image store lands (helper replaces this file)
use std::path::{Path, PathBuf};
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub id: String,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    pub size_bytes: u64,
}
pub struct ImageStore {
    root: PathBuf,
}
impl ImageStore {
    pub fn open(root: &Path) -> anyhow::Result<ImageStore> {
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }
    pub fn import(&self, _archive: &Path) -> anyhow::Result<Vec<Image>> {
        anyhow::bail!("not yet {}", self.root.display())
    }
    pub fn list(&self) -> anyhow::Result<Vec<Image>> {
        Ok(vec![])
    }
    pub fn resolve(&self, _reference: &str) -> Option<Image> {
        None
    }
}
