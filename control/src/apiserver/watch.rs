//! Watch: a store watch turned into Kubernetes watch events (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK`, `ERROR`), one JSON object per line of a chunked response.
//!
//! Selectors are applied to both the old and the new state, so an object that moves into a
//! selector is `ADDED` and one that moves out is `DELETED`, as kube's watch cache does.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::store::{EventKind, Revision, StoreError, WatchEvent, WatchStream};

use super::object::{decode, decode_at};
use super::registry::{ListOptions, Registry};
use super::request::Shape;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};
use super::table::{self, IncludeObject};

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Events after this revision; `None` (unset or "0") starts with the current state as
    /// synthetic `ADDED` events.
    pub resource_version: Option<Revision>,
    /// `sendInitialEvents=true`: the current state first, then a bookmark marking its end.
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub shape: Shape,
    pub include: IncludeObject,
}

/// How often an idle watch with bookmarks enabled gets one (kube: about every minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

pub type Body = mpsc::Receiver<Result<Bytes, Infallible>>;

/// Start a watch; the returned channel yields the response body's lines until the timeout,
/// an error, or the client going away.
pub async fn watch(
    registry: &Registry,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    opts: WatchOptions,
) -> ApiResult<Body> {
    let (initial_events, start) = initial_state(registry, info, ns, &opts).await?;
    let (tx, rx) = mpsc::channel(256);
    let prefix = info.key_prefix(ns);
    let stream = match registry.store().watch(&prefix, start).await {
        Ok(s) => s,
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            // kube answers 200 and then an ERROR event; clients re-list on its 410.
            let status = ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            ))
            .to_status();
            let _ = tx.try_send(Ok(line("ERROR", status)));
            return Ok(rx);
        }
        Err(e) => return Err(ApiError::from_store(e, info.group, info.plural, "")),
    };
    let encoder = Encoder {
        info,
        shape: opts.shape,
        include: opts.include,
    };
    tokio::spawn(stream_events(
        encoder,
        stream,
        tx,
        initial_events,
        start,
        opts,
    ));
    Ok(rx)
}

/// The objects to send as synthetic `ADDED` events and the revision the store watch starts
/// after: the current list when the client asked for the initial state, else nothing.
async fn initial_state(
    registry: &Registry,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    opts: &WatchOptions,
) -> ApiResult<(Vec<Value>, Revision)> {
    if let Some(rv) = opts.resource_version
        && !opts.send_initial_events
    {
        return Ok((Vec::new(), rv));
    }
    let page = registry
        .list(
            info,
            ns,
            &ListOptions {
                labels: opts.labels.clone(),
                fields: opts.fields.clone(),
                resource_version: opts.resource_version,
                exact: opts.resource_version.is_some(),
                ..Default::default()
            },
        )
        .await?;
    Ok((page.items, page.resource_version))
}

/// The body of a watch: the initial events, then store events and bookmarks until the
/// timeout, the end of the store watch, or the client going away.
async fn stream_events(
    encoder: Encoder,
    mut stream: WatchStream,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    initial_events: Vec<Value>,
    start: Revision,
    opts: WatchOptions,
) {
    let deadline = tokio::time::sleep(opts.timeout);
    tokio::pin!(deadline);
    let mut last_rv = start;
    for obj in initial_events {
        if tx.send(Ok(encoder.event("ADDED", obj))).await.is_err() {
            return;
        }
    }
    if opts.send_initial_events && opts.bookmarks {
        let b = encoder.bookmark(last_rv, true);
        if tx.send(Ok(b)).await.is_err() {
            return;
        }
    }
    let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
    bookmark.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = bookmark.tick(), if opts.bookmarks => {
                if tx.send(Ok(encoder.bookmark(last_rv, false))).await.is_err() {
                    return;
                }
            }
            next = stream.next() => {
                let out = match next {
                    None => return,
                    Some(Ok(event)) => {
                        last_rv = event.kv.mod_revision;
                        match translate(&event, &opts.labels, &opts.fields) {
                            Ok(Some((kind, obj))) => encoder.event(kind, obj),
                            Ok(None) => continue,
                            Err(e) => line("ERROR", e.to_status()),
                        }
                    }
                    Some(Err(e)) => {
                        // The store could not keep up; the client re-lists on a 410.
                        let status = ApiError::gone(format!("watch ended: {e}")).to_status();
                        let _ = tx.send(Ok(line("ERROR", status))).await;
                        return;
                    }
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The Kubernetes event type for a store event under the selectors, if the watcher sees it.
fn translate(
    event: &WatchEvent,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> ApiResult<Option<(&'static str, Value)>> {
    let matches = |o: &Value| labels.matches_object(o) && fields.matches(o);
    match event.kind {
        EventKind::Delete => {
            let obj = decode(&event.kv)?;
            Ok(matches(&obj).then_some(("DELETED", obj)))
        }
        EventKind::Put => {
            let obj = decode(&event.kv)?;
            let created = event.kv.create_revision == event.kv.mod_revision;
            let was = match (&event.prev, created) {
                (_, true) => false,
                (Some(prev), false) => matches(&decode_at(&prev.value, prev.mod_revision)?),
                // Without the old value (etcd compacted it) assume it matched as it does now.
                (None, false) => matches(&obj),
            };
            let is = matches(&obj);
            Ok(match (was, is) {
                (true, true) => Some(("MODIFIED", obj)),
                (false, true) => Some(("ADDED", obj)),
                (true, false) => Some(("DELETED", obj)),
                (false, false) => None,
            })
        }
    }
}

struct Encoder {
    info: &'static ResourceInfo,
    shape: Shape,
    include: IncludeObject,
}

impl Encoder {
    fn event(&self, kind: &str, obj: Value) -> Bytes {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let object = match self.shape {
            Shape::Plain => obj,
            Shape::Metadata => partial_metadata(&obj),
            Shape::Table => table::table(
                self.info.plural,
                &[obj],
                self.include,
                &rv,
                None,
                None,
                jiff::Timestamp::now(),
            ),
        };
        line(kind, object)
    }

    fn bookmark(&self, rv: Revision, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match self.shape {
            Shape::Table => {
                json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": [], "rows": []})
            }
            Shape::Metadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata})
            }
            Shape::Plain => {
                json!({"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": metadata})
            }
        };
        line("BOOKMARK", object)
    }
}

/// A `PartialObjectMetadata` view of an object (for metadata-only clients).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn line(kind: &str, object: Value) -> Bytes {
    // metav1.WatchEvent's field order: type, then object (in its own type's order).
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"type\":");
    out.extend_from_slice(Value::from(kind).to_string().as_bytes());
    out.extend_from_slice(b",\"object\":");
    super::wire::write(&mut out, &object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn kv(labels: Value, create: i64, modr: i64) -> KeyValue {
        KeyValue {
            key: "/registry/pods/default/p".into(),
            value: serde_json::to_vec(
                &json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}}),
            )
            .unwrap(),
            create_revision: create,
            mod_revision: modr,
        }
    }

    #[test]
    fn selector_moves_become_added_and_deleted() {
        let sel = LabelSelector::parse("app=web").unwrap();
        let fields = FieldSelector::default();
        let modified = |old: Value, new: Value| WatchEvent {
            kind: EventKind::Put,
            kv: kv(new, 1, 3),
            prev: Some(kv(old, 1, 2)),
        };
        let kind = |e: &WatchEvent| translate(e, &sel, &fields).unwrap().map(|(k, _)| k);
        assert_eq!(
            kind(&modified(
                json!({"app": "web"}),
                json!({"app": "web", "x": "1"})
            )),
            Some("MODIFIED")
        );
        assert_eq!(
            kind(&modified(json!({}), json!({"app": "web"}))),
            Some("ADDED")
        );
        assert_eq!(
            kind(&modified(json!({"app": "web"}), json!({"app": "db"}))),
            Some("DELETED")
        );
        assert_eq!(kind(&modified(json!({}), json!({"app": "db"}))), None);
        let created = WatchEvent {
            kind: EventKind::Put,
            kv: kv(json!({"app": "web"}), 4, 4),
            prev: None,
        };
        assert_eq!(kind(&created), Some("ADDED"));
        let deleted = WatchEvent {
            kind: EventKind::Delete,
            kv: kv(json!({"app": "web"}), 4, 5),
            prev: None,
        };
        let (k, obj) = translate(&deleted, &sel, &fields).unwrap().unwrap();
        assert_eq!(
            (k, obj["metadata"]["resourceVersion"].as_str()),
            ("DELETED", Some("5"))
        );
    }
}
