//! `cargo xtask lint`: formatting and clippy over the whole workspace.

use anyhow::{Result, bail};

use crate::Workspace;
use crate::cmd::{cargo, phase, status};

pub fn lint(ws: &Workspace) -> Result<()> {
    let fmt = phase("fmt", || {
        status(
            cargo()
                .current_dir(&ws.root)
                .args(["fmt", "--all", "--check"]),
        )
    })?;
    let clippy = phase("clippy", || {
        status(cargo().current_dir(&ws.root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    match (fmt.success(), clippy.success()) {
        (true, true) => Ok(()),
        (false, true) => bail!("formatting differs: run `cargo fmt --all`"),
        (true, false) => bail!("clippy found problems (see above)"),
        (false, false) => {
            bail!("formatting differs (run `cargo fmt --all`) and clippy found problems")
        }
    }
}
