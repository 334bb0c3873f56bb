//! `api-bench`: control-plane API latency, throughput and memory on both stores.
//!
//! For each store it starts a fresh `skiff-control` (and, for etcd, a fresh etcd), then:
//! creates N ConfigMaps with C concurrent clients (create latency, throughput), gets random
//! ones (get latency), lists the whole namespace the way kubectl pages (500 per page), and
//! reads the control plane's resident memory idle and with the N objects stored.
//! Run through `cargo xtask bench-api`, which builds release binaries and writes the table
//! to docs/benchmarks-api.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use skiff_tests::apiload::{Percentiles, configmap, list_all, percentiles, time_each};
use skiff_tests::{ControlPlane, Etcd, StoreBackend, rss_kib};

#[derive(Parser)]
struct Args {
    /// Objects to create (and hold for the memory figure).
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent clients for creates and gets.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Random gets to time.
    #[arg(long, default_value_t = 5_000)]
    gets: usize,
    /// Full (paged) lists of the namespace to time.
    #[arg(long, default_value_t = 20)]
    lists: usize,
    /// Stores to measure: embedded, etcd, or both.
    #[arg(long, default_value = "embedded,etcd", value_delimiter = ',')]
    stores: Vec<String>,
    /// Write the Markdown table here as well as printing it.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The command line to record in the output (xtask passes its own).
    #[arg(long, default_value = "cargo xtask bench-api")]
    command: String,
}

struct Figures {
    store: String,
    create: Percentiles,
    create_per_s: f64,
    get: Percentiles,
    get_per_s: f64,
    list: Percentiles,
    list_page: Percentiles,
    rss_idle_mib: f64,
    rss_loaded_mib: f64,
    etcd_rss_mib: Option<f64>,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: Option<u64>) -> f64 {
    kib.unwrap_or(0) as f64 / 1024.0
}

async fn client(cp: &ControlPlane) -> Result<kube::Client> {
    let text = std::fs::read_to_string(&cp.kubeconfig)?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn measure(store: &str, args: &Args) -> Result<Figures> {
    let etcd = if store == "etcd" {
        Some(Etcd::start()?)
    } else {
        None
    };
    let backend = match &etcd {
        Some(e) => StoreBackend::Etcd(e),
        None => StoreBackend::Embedded,
    };
    let cp = ControlPlane::start(backend)?;
    let client = client(&cp).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // Let start-up settle before the idle reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(cp.pid());

    eprintln!(
        "[{store}] creating {} objects with {} clients…",
        args.objects, args.concurrency
    );
    let started = Instant::now();
    let api = Arc::new(api);
    let creates = time_each(0..args.objects, args.concurrency, |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &configmap("api", "bench", i))
                .await
        }
    })
    .await
    .context("create failed")?;
    let create_wall = started.elapsed();

    eprintln!("[{store}] {} random gets…", args.gets);
    let started = Instant::now();
    let gets = time_each(random_names(args), args.concurrency, |name| {
        let api = api.clone();
        async move { api.get(&name).await }
    })
    .await
    .context("get failed")?;
    let get_wall = started.elapsed();

    eprintln!("[{store}] {} full lists (pages of 500)…", args.lists);
    let (lists, pages) = time_lists(&api, args).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_loaded = rss_kib(cp.pid());
    let etcd_rss = etcd.as_ref().map(|e| mib(rss_kib(e.pid())));
    Ok(Figures {
        store: store.to_string(),
        create: percentiles(&creates),
        create_per_s: args.objects as f64 / create_wall.as_secs_f64(),
        get: percentiles(&gets),
        get_per_s: args.gets as f64 / get_wall.as_secs_f64(),
        list: percentiles(&lists),
        list_page: percentiles(&pages),
        rss_idle_mib: mib(rss_idle),
        rss_loaded_mib: mib(rss_loaded),
        etcd_rss_mib: etcd_rss,
    })
}

/// `args.gets` names of created objects, spread by a fixed xorshift sequence.
fn random_names(args: &Args) -> Vec<String> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..args.gets)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            format!("bench-{:06}", seed as usize % args.objects.max(1))
        })
        .collect()
}

/// `args.lists` full lists in pages of 500: the time of each list and of each page.
async fn time_lists(api: &Api<ConfigMap>, args: &Args) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut lists = Vec::new();
    let mut pages = Vec::new();
    for _ in 0..args.lists {
        let t = Instant::now();
        let count = list_all(api, &mut pages).await?;
        anyhow::ensure!(
            count >= args.objects,
            "list returned {count} of {} objects",
            args.objects
        );
        lists.push(t.elapsed());
    }
    Ok((lists, pages))
}

fn table(args: &Args, figures: &[Figures]) -> String {
    let mut out = format!(
        "# Control-plane API benchmark\n\n\
         Command: `{}` (objects {}, concurrency {}, gets {}, lists {})  \n\
         {}; release build; client and server on one machine over TLS (loopback).\n\n\
         Objects are ConfigMaps with a 128-byte value. Latency is per request as the `kube` client sees it; \
         a full list is every page of 500 (kubectl's page size) of the {} objects. \
         Memory is the control plane's resident set (VmRSS); for etcd, etcd's own is shown separately.\n\n\
         | store | create p50 / p99 (ms) | creates/s | get p50 / p99 (ms) | gets/s | list page p50 / p99 (ms) | full list p50 / p99 (ms) | RSS idle (MiB) | RSS with objects (MiB) | etcd RSS (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        args.command,
        args.objects,
        args.concurrency,
        args.gets,
        args.lists,
        skiff_tests::provenance(),
        args.objects,
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} / {} | {:.0} | {} / {} | {:.0} | {} / {} | {} / {} | {:.1} | {:.1} | {} |\n",
            f.store,
            ms(f.create.p50),
            ms(f.create.p99),
            f.create_per_s,
            ms(f.get.p50),
            ms(f.get.p99),
            f.get_per_s,
            ms(f.list_page.p50),
            ms(f.list_page.p99),
            ms(f.list.p50),
            ms(f.list.p99),
            f.rss_idle_mib,
            f.rss_loaded_mib,
            f.etcd_rss_mib
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "–".into()),
        ));
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut figures = Vec::new();
    for store in &args.stores {
        anyhow::ensure!(
            matches!(store.as_str(), "embedded" | "etcd"),
            "unknown store {store:?}"
        );
        figures.push(measure(store, &args).await?);
    }
    let md = table(&args, &figures);
    println!("{md}");
    if let Some(path) = &args.out {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
