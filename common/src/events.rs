//! Events as `kubectl get events` and `kubectl describe` show them: core/v1 Events with reason,
//! message, source component, involved object, and count aggregation (a repeat of the same
//! event bumps `count` and `lastTimestamp` instead of adding another object), as client-go's
//! recorder does. kube's own recorder writes events.k8s.io/v1, which kubectl's describe does
//! not read, hence this small one.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

/// How many distinct events are remembered for aggregation (kube: an LRU of 4096).
const CACHE_SIZE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    name: String,
    type_: String,
    reason: String,
    message: String,
}

struct Seen {
    namespace: String,
    name: String,
    count: i32,
}

pub struct EventRecorder {
    client: Client,
    component: String,
    host: Option<String>,
    seen: Mutex<HashMap<Key, Seen>>,
}

impl EventRecorder {
    pub fn new(client: Client, component: &str) -> EventRecorder {
        EventRecorder {
            client,
            component: component.to_string(),
            host: None,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The node name, for components that run on a node (the agent).
    pub fn with_host(mut self, host: &str) -> EventRecorder {
        self.host = Some(host.to_string());
        self
    }

    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(obj.object_ref(&()), "Normal", reason, message.into())
            .await;
    }

    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(obj.object_ref(&()), "Warning", reason, message.into())
            .await;
    }

    /// Record an event. Failures are logged, never returned: an event is worth less than the
    /// work it describes.
    pub async fn record(
        &self,
        mut involved: ObjectReference,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        // Events point at an object, not at one version of it.
        involved.resource_version = None;
        let key = Key {
            uid: involved.uid.clone().unwrap_or_default(),
            kind: involved.kind.clone().unwrap_or_default(),
            name: involved.name.clone().unwrap_or_default(),
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.clone(),
        };
        // Cluster-scoped objects' events go to `default`, as kube does.
        let namespace = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let repeat = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get_mut(&key).map(|s| {
                s.count += 1;
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        if let Some((ns, name, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"count": count, "lastTimestamp": now});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // Expired or deleted: start a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::debug!(error = %e, reason, "could not update event");
                    return;
                }
            }
        }
        let name = format!(
            "{}.{:x}",
            key.name,
            k8s_openapi::jiff::Timestamp::now().as_nanosecond()
        );
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(type_.to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() >= CACHE_SIZE {
                    seen.clear();
                }
                seen.insert(
                    key,
                    Seen {
                        namespace,
                        name,
                        count: 1,
                    },
                );
            }
            Err(e) => tracing::debug!(error = %e, reason, "could not record event"),
        }
    }
}
