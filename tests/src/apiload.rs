//! The API load the benchmarks share (`api-bench`, `authz-bench`): ConfigMaps of a fixed
//! size, requests run N at a time with the latency of each, full lists paged as kubectl pages,
//! and percentiles of the samples.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::json;

/// ConfigMap `<prefix>-<i>` with a 128-byte value, labelled `bench=<bench>` and one of ten
/// shards.
pub fn configmap(bench: &str, prefix: &str, i: usize) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{prefix}-{i:06}"), "labels": {"bench": bench, "shard": (i % 10).to_string()}},
        "data": {"payload": "x".repeat(128)},
    }))
    .expect("valid ConfigMap")
}

/// Runs `request` for every item, `concurrency` at a time: the latency of each.
pub async fn time_each<T, O, Fut>(
    items: impl IntoIterator<Item = T>,
    concurrency: usize,
    request: impl Fn(T) -> Fut,
) -> Result<Vec<Duration>, kube::Error>
where
    Fut: std::future::Future<Output = Result<O, kube::Error>>,
{
    let request = &request;
    futures::stream::iter(items)
        .map(|item| async move {
            let t = Instant::now();
            request(item).await.map(|_| t.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One full list in pages of 500 (kubectl's page size): the time of each page goes to
/// `pages`; the number of objects listed.
pub async fn list_all(
    api: &Api<ConfigMap>,
    pages: &mut Vec<Duration>,
) -> Result<usize, kube::Error> {
    let mut token: Option<String> = None;
    let mut count = 0;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let t = Instant::now();
        let page = api.list(&lp).await?;
        pages.push(t.elapsed());
        count += page.items.len();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(count);
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
}

/// The nearest-rank 50th and 99th percentiles (zero for no samples).
pub fn percentiles(samples: &[Duration]) -> Percentiles {
    let mut samples = samples.to_vec();
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default()
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_samples() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = percentiles(&samples);
        assert_eq!(p.p50, Duration::from_millis(51));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(percentiles(&[]).p50, Duration::ZERO);
    }

    #[test]
    fn configmaps_are_named_and_sharded() {
        let c = configmap("api", "bench", 12);
        assert_eq!(c.metadata.name.as_deref(), Some("bench-000012"));
        assert_eq!(c.metadata.labels.unwrap()["shard"], "2");
    }
}
