//! Static bearer tokens: the admin token of the in-process controllers, scheduler and node
//! agents, and kube-apiserver's `--token-auth-file`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::UserInfo;

/// Bearer tokens known at start, each standing for one user.
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, UserInfo>,
}

/// The user of the admin token (`admin.token` in the data dir).
pub fn admin_user() -> UserInfo {
    UserInfo {
        name: "admin".into(),
        uid: "admin".into(),
        groups: vec![
            crate::apiserver::pki::MASTERS_GROUP.into(),
            super::AUTHENTICATED_GROUP.into(),
        ],
        ..UserInfo::default()
    }
}

impl StaticTokens {
    pub fn authenticate(&self, token: &str) -> Option<&UserInfo> {
        self.tokens.get(token)
    }

    pub fn insert(&mut self, token: String, user: UserInfo) {
        self.tokens.insert(token, user);
    }

    /// Tokens in kube-apiserver's `--token-auth-file` format:
    /// `token,user,uid[,"group1,group2"]`, one per line; `#` starts a comment.
    pub fn load_csv(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                bail!(
                    "{}:{}: want token,user,uid[,\"groups\"], got {line:?}",
                    path.display(),
                    i + 1
                );
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            self.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                    ..UserInfo::default()
                },
            );
        }
        Ok(())
    }
}

/// Split one CSV line, honouring double quotes (the groups column is quoted).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_csv_with_quoted_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\nt1,alice,1001,\"dev,ops\"\nt2,bob,1002\n").unwrap();
        let mut auth = StaticTokens::default();
        auth.load_csv(&path).unwrap();
        let alice = auth.authenticate("t1").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, vec!["dev", "ops"]);
        assert_eq!(auth.authenticate("t2").unwrap().uid, "1002");
        assert!(auth.authenticate("nope").is_none());
    }

    #[test]
    fn malformed_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "onlytoken\n").unwrap();
        assert!(StaticTokens::default().load_csv(&path).is_err());
    }
}
