//! Users from a static token file (`--token-auth-file`) on an in-process API server, driven
//! with real kubectl or the kube client: the fixture of the RBAC and access-review tests.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::PostParams;
use serde_json::json;

use super::{TestCluster, client_for, test_config};
use skiff_control::apiserver::ApiServer;
use skiff_tests::Kubectl;

pub struct TokenUsers {
    pub cluster: TestCluster,
    /// Kubeconfigs, the token file, kubectl's cache; files a test writes.
    pub dir: tempfile::TempDir,
    pub kubectl: Kubectl,
}

/// A finished kubectl: exit code, stdout, stderr.
pub struct Ran {
    pub code: i32,
    pub out: String,
    pub err: String,
}

impl TokenUsers {
    /// An API server (no controllers) accepting the `token,user,uid,"groups"` lines of `tokens`.
    pub async fn start(kubectl: Kubectl, tokens: &str) -> TokenUsers {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.csv");
        std::fs::write(&file, tokens).unwrap();
        let cluster = TestCluster::start_with_api(test_config(""), |c| {
            c.token_auth_file = Some(file);
        })
        .await;
        TokenUsers {
            cluster,
            dir,
            kubectl,
        }
    }

    pub fn server(&self) -> &ApiServer {
        self.cluster.server.as_ref().unwrap()
    }

    pub fn admin_token(&self) -> String {
        self.server().admin_token.clone()
    }

    /// The admin kubeconfig with another user's token.
    pub fn kubeconfig_of(&self, token: &str) -> String {
        let s = self.server();
        s.kubeconfig.replace(&s.admin_token, token)
    }

    pub async fn client(&self, token: &str) -> Client {
        client_for(&self.kubeconfig_of(token)).await
    }

    pub fn kubeconfig_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{token}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_of(token)).unwrap();
        path
    }

    /// kubectl as the user of `token`, whatever its exit code.
    pub fn run(&self, token: &str, args: &[&str]) -> Ran {
        let out = self
            .kubectl
            .command_with(&self.kubeconfig_file(token), self.dir.path())
            .args(args)
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// kubectl as the user of `token`: Ok(stdout) or Err(stderr).
    pub fn kubectl(&self, token: &str, args: &[&str]) -> Result<String, String> {
        let ran = self.run(token, args);
        if ran.code == 0 {
            Ok(ran.out)
        } else {
            Err(ran.err)
        }
    }

    /// kubectl as the administrator; it must succeed.
    pub fn admin(&self, args: &[&str]) -> String {
        self.kubectl(&self.admin_token(), args)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}"))
    }

    /// `kubectl auth can-i ARGS` as the user of `token`: the answer, checked against the exit
    /// code kubectl gives it (0 for yes, 1 for no).
    pub fn can_i(&self, token: &str, args: &[&str]) -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let ran = self.run(token, &all);
        match (ran.code, ran.out.trim()) {
            (0, "yes") => true,
            (1, "no") => false,
            _ => panic!(
                "kubectl 1.{} {all:?}: exit {} stdout {:?} stderr {:?}",
                self.kubectl.minor, ran.code, ran.out, ran.err
            ),
        }
    }

    pub async fn namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        self.cluster
            .cluster_api::<Namespace>()
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
}
