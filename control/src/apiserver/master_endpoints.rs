//! The endpoints of the `default/kubernetes` Service, kept by every API server itself (kube's
//! lease endpoint reconciler, not a controller: it runs without leader election, from the
//! moment the server listens).
//!
//! Each server holds a lease in the store (`/registry/masterleases/<ip>`, an expiry time it
//! renews every [`RECONCILE_INTERVAL`]) and then writes the Endpoints and the EndpointSlice
//! named `kubernetes` to list the addresses of every unexpired lease with the secure port
//! (port name `https`, TCP). Doing that on every tick also puts back what somebody deleted or
//! altered. A server that stops removes its lease and rewrites the endpoints without itself,
//! and a server that dies drops out when its lease expires.
//!
//! As kube-apiserver writes them: the Endpoints carry `endpointslice.kubernetes.io/skip-mirror`
//! (the mirroring controller leaves them alone), the slice only `kubernetes.io/service-name`
//! (no managed-by: the EndpointSlice controller, which skips selectorless Services anyway,
//! does not own it).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{Value, json};

use super::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use super::resources;
use crate::store::StoreError;

/// How often the lease is renewed and the endpoints checked (kube's endpoint reconciler
/// interval).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// A lease not renewed for this long no longer counts (kube's master lease TTL).
const LEASE_TTL: Duration = Duration::from_secs(15);
const LEASE_PREFIX: &str = "/registry/masterleases/";
const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// This server's place in the `kubernetes` Service.
pub struct MasterEndpoints {
    pub address: IpAddr,
    pub port: u16,
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MasterEndpoints {
    fn lease_key(&self) -> String {
        format!("{LEASE_PREFIX}{}", self.address)
    }

    /// Renew this server's lease, then make the endpoints list every live lease.
    pub async fn reconcile(&self, registry: &Registry) -> Result<()> {
        self.renew_lease(registry).await?;
        let addresses = self.live_addresses(registry).await?;
        self.write_endpoints(registry, &addresses).await
    }

    /// Leave: drop the lease and the address from the endpoints, so clients stop coming here.
    pub async fn remove(&self, registry: &Registry) -> Result<()> {
        match registry.store().delete(&self.lease_key(), None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut addresses = self.live_addresses(registry).await?;
        addresses.remove(&self.address);
        self.write_endpoints(registry, &addresses).await
    }

    async fn renew_lease(&self, registry: &Registry) -> Result<()> {
        let store = registry.store();
        let key = self.lease_key();
        let value = serde_json::to_vec(&json!({
            "port": self.port,
            "expiresUnixMillis": unix_millis(SystemTime::now() + LEASE_TTL),
        }))?;
        // Create, or replace at the revision read; a lost race is retried on the next tick.
        match store.get(&key).await? {
            Some(kv) => store.update(&key, value, kv.mod_revision).await?,
            None => store.create(&key, value).await?,
        };
        Ok(())
    }

    /// Addresses of the unexpired leases (of this server's address family; this one always
    /// counts). Expired leases are deleted.
    async fn live_addresses(&self, registry: &Registry) -> Result<BTreeSet<IpAddr>> {
        let store = registry.store();
        let now = unix_millis(SystemTime::now());
        let mut live = BTreeSet::from([self.address]);
        for kv in store.list(LEASE_PREFIX, None, 0, None).await?.items {
            let Some(address) = kv
                .key
                .strip_prefix(LEASE_PREFIX)
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let expires = serde_json::from_slice::<Value>(&kv.value)
                .ok()
                .and_then(|v| v.get("expiresUnixMillis")?.as_u64())
                .unwrap_or(0);
            if expires <= now {
                // Only the version we read: a server that renewed meanwhile keeps its lease.
                match store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            if address.is_ipv4() == self.address.is_ipv4() {
                live.insert(address);
            }
        }
        Ok(live)
    }

    async fn write_endpoints(
        &self,
        registry: &Registry,
        addresses: &BTreeSet<IpAddr>,
    ) -> Result<()> {
        let port = json!({"name": "https", "port": self.port, "protocol": "TCP"});
        write_endpoints_object(registry, addresses, &port).await?;
        self.write_endpoint_slice(registry, addresses, port).await
    }

    /// The `kubernetes` EndpointSlice of this server's address family; other slices of the
    /// Service are deleted.
    async fn write_endpoint_slice(
        &self,
        registry: &Registry,
        addresses: &BTreeSet<IpAddr>,
        port: Value,
    ) -> Result<()> {
        let opts = WriteOptions::default();
        let slices = resources::lookup("discovery.k8s.io", "v1", "endpointslices").expect("served");
        let address_type = if self.address.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let labels = json!({SERVICE_NAME_LABEL: NAME});
        let slice_endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
            .collect();
        let ports = json!([port]);
        let list = ListOptions {
            labels: super::selectors::LabelSelector::parse(&format!("{SERVICE_NAME_LABEL}={NAME}"))
                .map_err(anyhow::Error::msg)?,
            ..ListOptions::default()
        };
        let mut current = None;
        for slice in registry.list(slices, Some(NAMESPACE), &list).await?.items {
            if slice["metadata"]["name"] == NAME && slice["addressType"] == address_type {
                current = Some(slice);
                continue;
            }
            // Any other slice of this Service is stale (kube deletes them too).
            let name = slice["metadata"]["name"].as_str().unwrap_or_default();
            match registry
                .delete(slices, Some(NAMESPACE), name, &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "addressType": address_type,
            "endpoints": slice_endpoints,
            "ports": ports,
        });
        match current {
            None => {
                registry
                    .create(slices, Some(NAMESPACE), slice, opts)
                    .await?;
            }
            Some(c) => {
                let same = c["metadata"]["labels"] == labels
                    && normalized(&c["endpoints"]) == normalized(&slice["endpoints"])
                    && normalized(&c["ports"]) == normalized(&slice["ports"]);
                if !same {
                    tracing::warn!("resetting the endpoint slice of the kubernetes service");
                    registry
                        .update(slices, Some(NAMESPACE), NAME, None, slice, opts)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// The `kubernetes` Endpoints, rewritten when they differ from what they should be.
async fn write_endpoints_object(
    registry: &Registry,
    addresses: &BTreeSet<IpAddr>,
    port: &Value,
) -> Result<()> {
    let endpoints = resources::lookup("", "v1", "endpoints").expect("served");
    let labels = json!({SKIP_MIRROR_LABEL: "true"});
    let subsets = if addresses.is_empty() {
        json!([])
    } else {
        let ips: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"ip": a.to_string()}))
            .collect();
        json!([{"addresses": ips, "ports": [port.clone()]}])
    };
    let current = match registry.get(endpoints, Some(NAMESPACE), NAME).await {
        Ok(v) => Some(v),
        Err(e) if e.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    let same = current.as_ref().is_some_and(|c| {
        c["metadata"]["labels"] == labels && normalized(&c["subsets"]) == normalized(&subsets)
    });
    if !same {
        if current.is_some() {
            tracing::warn!("resetting the endpoints of the kubernetes service");
        }
        let ep = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "subsets": subsets,
        });
        // An unconditional PUT, which creates the Endpoints when they are missing.
        registry
            .update(
                endpoints,
                Some(NAMESPACE),
                NAME,
                None,
                ep,
                WriteOptions::default(),
            )
            .await?;
    }
    Ok(())
}

/// JSON without nulls and empty lists or objects: what we build compares equal to what the
/// store gives back, which may have dropped or kept empty values.
fn normalized(v: &Value) -> Value {
    let n = strip(v);
    if is_empty(&n) { Value::Null } else { n }
}

fn strip(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(strip).filter(|v| !is_empty(v)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), strip(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_do_not_count() {
        assert_eq!(
            normalized(&json!([{"addresses": [], "ports": [{"port": 1, "name": null}]}])),
            json!([{"ports": [{"port": 1}]}])
        );
        assert_eq!(normalized(&json!(null)), normalized(&json!([])));
    }
}
