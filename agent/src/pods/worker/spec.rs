//! What a container instance runs with: environment, user, limits, files and volumes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, Container, EnvFromSource, EnvVar, PodSecurityContext, Secret,
    SecretKeySelector,
};

use super::PodWorker;
use crate::image::Image;
use crate::pods::{env, sandbox, volumes};
use crate::runtime::cgroup::Limits;
use crate::runtime::spec::{ContainerSpec, PidNamespace};

impl PodWorker {
    /// The spec of instance `n`: command line, environment, user, cgroups, the pod's /etc
    /// files and volumes. Creates the container's cgroups.
    pub(super) async fn container_spec(
        &self,
        c: &Container,
        n: u32,
        image: &Image,
    ) -> anyhow::Result<ContainerSpec> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let sandbox = self
            .sandbox
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the pod has no sandbox"))?;
        let at = self.addresses();
        let vars = self.environment(c, image, &at).await?;
        let argv = env::argv(c, &image.config, &vars.0);
        let (uid, gid) = user(c, spec.security_context.as_ref(), &image.config.user);
        let cgroups = self
            .agent
            .edge
            .create_container_cgroups(&self.uid, &c.name, limits_of(c))?;
        let bind_dirs = volumes::mounts(&self.agent, &self.pod, &self.uid, &at, c).await?;
        // Last: an instance directory on disk counts as a started instance.
        let instance_dir = self.agent.runtime.instance_dir(&self.uid, &c.name, n);
        let mut bind_files = self.bind_files(c);
        bind_files.push(super::message::termination_log(&instance_dir, c)?);
        Ok(ContainerSpec {
            pod_uid: self.uid.clone(),
            container: c.name.clone(),
            restart_count: n,
            sandbox_pid: sandbox.pause_pid,
            host_network: sandbox.host_network,
            pid_namespace: PidNamespace::of(&spec),
            argv,
            env: vars.0.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: c
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| image.config.working_dir.clone()),
            uid,
            gid,
            image_rootfs: image.rootfs.clone(),
            instance_dir,
            bind_files,
            bind_dirs,
            cgroups,
            log_dir: self.agent.runtime.log_dir(&self.uid, &c.name),
            log_max_size: self.agent.cfg.log_max_size,
            log_max_files: self.agent.cfg.log_max_files,
        })
    }

    /// The image's environment, HOSTNAME, the service links, the container's envFrom
    /// sources, then its own variables, each of which may refer to those before it.
    async fn environment(
        &self,
        c: &Container,
        image: &Image,
        at: &env::Addresses,
    ) -> anyhow::Result<OrderedEnv> {
        let mut vars = OrderedEnv::default();
        for kv in &image.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                vars.set(k, v.to_string());
            }
        }
        vars.set("HOSTNAME", sandbox::hostname(&self.pod));
        self.service_links(&mut vars);
        for src in c.env_from.iter().flatten() {
            self.env_from(src, &mut vars).await?;
        }
        for e in c.env.iter().flatten() {
            if let Some(value) = self.env_value(c, e, &vars, at).await? {
                vars.set(&e.name, value);
            }
        }
        Ok(vars)
    }

    /// The keys of one envFrom ConfigMap or Secret, each name prefixed; a missing optional
    /// source adds nothing, and keys that make no valid variable name are skipped with the
    /// kubelet's InvalidEnvironmentVariableNames warning.
    async fn env_from(&self, src: &EnvFromSource, vars: &mut OrderedEnv) -> anyhow::Result<()> {
        let (kind, name, data) = if let Some(r) = &src.config_map_ref {
            match self
                .object::<ConfigMap>("configmap", &r.name, r.optional)
                .await?
            {
                Some(cm) => ("configMap", &r.name, cm.data.unwrap_or_default()),
                None => return Ok(()),
            }
        } else if let Some(r) = &src.secret_ref {
            match self.object::<Secret>("secret", &r.name, r.optional).await? {
                Some(s) => {
                    let data = s.data.unwrap_or_default().into_iter();
                    let data = data.map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()));
                    ("secret", &r.name, data.collect::<BTreeMap<_, _>>())
                }
                None => return Ok(()),
            }
        } else {
            return Ok(());
        };
        let prefix = src.prefix.as_deref().unwrap_or_default();
        let mut invalid = Vec::new();
        for (k, v) in data {
            let k = format!("{prefix}{k}");
            if env::is_env_var_name(&k) {
                vars.set(&k, v);
            } else {
                invalid.push(k);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            let msg = format!(
                "Keys [{}] from the EnvFrom {kind} {}/{name} were skipped since they are \
                 considered invalid environment variable names.",
                invalid.join(", "),
                self.namespace()
            );
            let pod = self.pod.clone();
            self.agent
                .event(&pod, None, true, "InvalidEnvironmentVariableNames", msg)
                .await;
        }
        Ok(())
    }

    /// Object `name` of the pod's namespace; `None` when it is missing and `optional`, the
    /// kubelet's `<kind> "name" not found` when it is missing and required.
    async fn object<K>(
        &self,
        kind: &str,
        name: &str,
        optional: Option<bool>,
    ) -> anyhow::Result<Option<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        crate::pods::optional_object(&self.agent.client, &self.namespace(), kind, name, optional)
            .await
    }

    /// The `<SERVICE>_SERVICE_HOST`… variables of the pod's namespace (unless
    /// enableServiceLinks is false) and of the apiserver's own service.
    fn service_links(&self, vars: &mut OrderedEnv) {
        let spec = self.pod.spec.as_ref();
        let ns = self.namespace();
        if spec.and_then(|s| s.enable_service_links).unwrap_or(true) {
            let services = self.agent.services.state();
            let in_ns = services
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
                .map(|s| s.as_ref());
            for (k, v) in env::service_env(in_ns) {
                vars.set(&k, v);
            }
        }
        // The apiserver's own service is always announced, whatever the namespace.
        if let Some(k) = self.agent.services.state().iter().find(|s| {
            s.metadata.namespace.as_deref() == Some("default")
                && s.metadata.name.as_deref() == Some("kubernetes")
        }) {
            for (key, v) in env::service_env([k.as_ref()]) {
                vars.set(&key, v);
            }
        }
    }

    /// One variable's value; None for an optional key that is not there (the variable is
    /// left out).
    async fn env_value(
        &self,
        c: &Container,
        e: &EnvVar,
        vars: &OrderedEnv,
        at: &env::Addresses,
    ) -> anyhow::Result<Option<String>> {
        if let Some(v) = &e.value {
            return Ok(Some(env::expand(v, &vars.0)));
        }
        let Some(src) = &e.value_from else {
            return Ok(Some(String::new()));
        };
        if let Some(f) = &src.field_ref {
            env::field_ref(&self.pod, &f.field_path, at)
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("unsupported fieldRef {}", f.field_path))
        } else if let Some(r) = &src.resource_field_ref {
            let allocatable = crate::node::allocatable(&self.agent.cfg);
            let target = env::resource_container(&self.pod, r.container_name.as_deref(), Some(c));
            target
                .and_then(|t| env::resource_value(&r.resource, r.divisor.as_ref(), t, &allocatable))
                .map(Some)
                .map_err(|e| anyhow::anyhow!(e))
        } else if let Some(r) = &src.config_map_key_ref {
            self.config_map_key(r).await
        } else if let Some(r) = &src.secret_key_ref {
            self.secret_key(r).await
        } else {
            anyhow::bail!(
                "env {}: only value, fieldRef, resourceFieldRef, configMapKeyRef and \
                 secretKeyRef are supported",
                e.name
            )
        }
    }

    async fn config_map_key(&self, r: &ConfigMapKeySelector) -> anyhow::Result<Option<String>> {
        let ns = self.namespace();
        let optional = r.optional == Some(true);
        let Some(cm) = self
            .object::<ConfigMap>("configmap", &r.name, r.optional)
            .await?
        else {
            return Ok(None);
        };
        match cm.data.and_then(|d| d.get(&r.key).cloned()) {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => anyhow::bail!("couldn't find key {} in ConfigMap {ns}/{}", r.key, r.name),
        }
    }

    async fn secret_key(&self, r: &SecretKeySelector) -> anyhow::Result<Option<String>> {
        let ns = self.namespace();
        let optional = r.optional == Some(true);
        let Some(sec) = self.object::<Secret>("secret", &r.name, r.optional).await? else {
            return Ok(None);
        };
        match sec.data.and_then(|d| d.get(&r.key).cloned()) {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).to_string())),
            None if optional => Ok(None),
            None => anyhow::bail!("couldn't find key {} in Secret {ns}/{}", r.key, r.name),
        }
    }

    /// The pod's generated /etc files: hostname, hosts (unless a volume is mounted there),
    /// resolv.conf.
    fn bind_files(&self, c: &Container) -> Vec<(PathBuf, String)> {
        let etc = sandbox::etc_dir(&self.agent, &self.uid);
        let mut bind_files = vec![(etc.join("hostname"), "/etc/hostname".to_string())];
        if !c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/etc/hosts")
        {
            bind_files.push((etc.join("hosts"), "/etc/hosts".to_string()));
        }
        bind_files.push((etc.join("resolv.conf"), "/etc/resolv.conf".to_string()));
        bind_files
    }
}

/// The user and group: the image's, overridden by the container's then the pod's
/// securityContext.
fn user(c: &Container, psc: Option<&PodSecurityContext>, image_user: &str) -> (u32, u32) {
    let sc = c.security_context.as_ref();
    let (mut uid, mut gid) = parse_user(image_user);
    if let Some(u) = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
    {
        uid = u as u32;
    }
    if let Some(g) = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
    {
        gid = g as u32;
    }
    (uid, gid)
}

/// Environment variables in order, a later definition replacing an earlier one in place.
#[derive(Default)]
struct OrderedEnv(Vec<(String, String)>);

impl OrderedEnv {
    fn set(&mut self, k: &str, v: String) {
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }
}

fn parse_user(user: &str) -> (u32, u32) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    (uid, g.parse().unwrap_or(uid))
}

fn limits_of(c: &Container) -> Limits {
    let res = c.resources.as_ref();
    let get = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               k: &str| { m.and_then(|m| m.get(k)).map(|q| q.0.clone()) };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    Limits {
        // The scheduler's exact parser, rounded up as kubelet's Value()/MilliValue() are:
        // bytes and millicores.
        memory_bytes: get(limits, "memory").and_then(|q| skiff_common::quantity::parse_value(&q)),
        cpu_millis: get(limits, "cpu").and_then(|q| skiff_common::quantity::parse_milli_value(&q)),
        cpu_request_millis: get(requests, "cpu")
            .and_then(|q| skiff_common::quantity::parse_milli_value(&q)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_quantities_exactly() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "1Pi", "cpu": "1500u"},
                          "requests": {"cpu": "250m"}}}))
        .unwrap();
        let l = limits_of(&c);
        assert_eq!(l.memory_bytes, Some(1 << 50));
        assert_eq!(l.cpu_millis, Some(2)); // 1.5 millicores round up
        assert_eq!(l.cpu_request_millis, Some(250));
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "2Ei", "cpu": "1n"}}}))
        .unwrap();
        let l = limits_of(&c);
        assert_eq!(l.memory_bytes, Some(2 << 60));
        assert_eq!(l.cpu_millis, Some(1));
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "128Mi", "cpu": "x"}}}))
        .unwrap();
        let l = limits_of(&c);
        assert_eq!(l.memory_bytes, Some(128 << 20));
        assert_eq!(l.cpu_millis, None);
    }

    #[test]
    fn users() {
        assert_eq!(parse_user(""), (0, 0));
        assert_eq!(parse_user("1000"), (1000, 1000));
        assert_eq!(parse_user("1000:50"), (1000, 50));
    }
}
