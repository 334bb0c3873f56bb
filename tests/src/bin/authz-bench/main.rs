//! `authz-bench`: what authorization costs on the API's hot path.
//!
//! One `skiff-control` (embedded store) is seeded with a realistic RBAC policy (see
//! [`policy`]: by default 200 Roles/ClusterRoles and 500 RoleBindings/ClusterRoleBindings on
//! top of kube's bootstrap policy). The same workload — create ConfigMaps with C concurrent
//! clients, get random ones, list the namespace in pages of 500 — then runs as:
//!
//! - `admin`: the admin kubeconfig, a client certificate in `system:masters` (RBAC is skipped);
//! - `admin2`: the same again in another namespace, an A/A control showing the noise floor;
//! - `user`: a client certificate from `skiff-control kubeconfig` whose access comes from a
//!   RoleBinding to `edit` in its namespace, found after its other grants;
//! - `sa`: a service-account token (JWT signature, claims and the account's existence checked
//!   on every request), allowed by a RoleBinding.
//!
//! Each identity works in its own namespace, so every round they all hold the same number of
//! objects. The work is split into rounds, and each round runs every identity in turn, starting
//! with a different one each time, so machine noise lands on all of them alike. Samples are
//! pooled over the rounds; the report gives p50/p99 and throughput per identity and the
//! difference from `admin`. Run through `cargo xtask bench-authz`, which builds release binaries
//! and writes docs/benchmarks-authz.md.

mod policy;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use skiff_tests::apiload::{Percentiles, configmap, list_all, percentiles, time_each};
use skiff_tests::{ControlPlane, StoreBackend};

use policy::{Policy, Rng};

#[derive(Parser)]
struct Args {
    /// ConfigMaps each identity creates (and then gets and lists).
    #[arg(long, default_value_t = 20_000)]
    objects: usize,
    /// Concurrent clients for creates and gets.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Random gets each identity times.
    #[arg(long, default_value_t = 40_000)]
    gets: usize,
    /// Full (paged) lists of its namespace each identity times.
    #[arg(long, default_value_t = 40)]
    lists: usize,
    /// Rounds the work is split into; each round runs every identity once.
    #[arg(long, default_value_t = 40)]
    rounds: usize,
    /// Roles and ClusterRoles to seed.
    #[arg(long, default_value_t = 200)]
    roles: usize,
    /// RoleBindings and ClusterRoleBindings to seed.
    #[arg(long, default_value_t = 500)]
    bindings: usize,
    /// Identities to measure (admin is always measured first in the table): admin, admin2,
    /// user, sa.
    #[arg(long, default_value = "admin,admin2,user,sa", value_delimiter = ',')]
    identities: Vec<String>,
    /// A tiny run that checks the benchmark works (the full policy, little traffic).
    #[arg(long)]
    quick: bool,
    /// Write the Markdown report here as well as printing it.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The command line to record in the output (xtask passes its own).
    #[arg(long, default_value = "cargo xtask bench-authz")]
    command: String,
}

impl Args {
    fn sized(mut self) -> Args {
        if self.quick {
            self.objects = 200;
            self.gets = 200;
            self.lists = 2;
            self.rounds = 2;
        }
        self.rounds = self.rounds.max(1);
        self
    }
}

/// Who the workload runs as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Identity {
    Admin,
    Admin2,
    User,
    ServiceAccount,
}

impl Identity {
    fn parse(s: &str) -> Result<Identity> {
        Ok(match s {
            "admin" => Identity::Admin,
            "admin2" => Identity::Admin2,
            "user" => Identity::User,
            "sa" => Identity::ServiceAccount,
            _ => bail!("unknown identity {s:?} (admin, admin2, user, sa)"),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Identity::Admin => "admin (system:masters, x509)",
            Identity::Admin2 => "admin again (A/A control)",
            Identity::User => "user (x509, RBAC)",
            Identity::ServiceAccount => "service account (JWT, RBAC)",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Identity::Admin => policy::BENCH_NAMESPACES[0],
            Identity::Admin2 => policy::BENCH_NAMESPACES[1],
            Identity::User => policy::USER_NAMESPACE,
            Identity::ServiceAccount => policy::SA_NAMESPACE,
        }
    }
}

/// Samples of one identity, pooled over the rounds.
#[derive(Default)]
struct Tally {
    creates: Vec<Duration>,
    create_wall: Duration,
    gets: Vec<Duration>,
    get_wall: Duration,
    pages: Vec<Duration>,
    lists: Vec<Duration>,
    /// Each round's own figures, for the paired comparison.
    rounds: Vec<[(f64, bool); PAIRED]>,
}

/// The figures compared round by round: create p50, creates/s, get p50, gets/s, page p50.
const PAIRED: usize = 5;
const PAIRED_HEADER: &str = "| identity | create p50 | creates/s | get p50 | gets/s | list page p50 |\n\
                             |---|---|---|---|---|---|\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rate(n: usize, wall: Duration) -> f64 {
    n as f64 / wall.as_secs_f64().max(1e-9)
}

impl Tally {
    fn add_round(
        &mut self,
        creates: Vec<Duration>,
        create_wall: Duration,
        gets: Vec<Duration>,
        get_wall: Duration,
        pages_before: usize,
    ) {
        let page_p50 = match &self.pages[pages_before..] {
            [] => f64::NAN,
            pages => ms(percentiles(pages).p50),
        };
        self.rounds.push([
            (ms(percentiles(&creates).p50), false),
            (rate(creates.len(), create_wall), true),
            (ms(percentiles(&gets).p50), false),
            (rate(gets.len(), get_wall), true),
            (page_p50, false),
        ]);
        self.creates.extend(creates);
        self.create_wall += create_wall;
        self.gets.extend(gets);
        self.get_wall += get_wall;
    }
}

struct Side {
    identity: Identity,
    api: Api<ConfigMap>,
    tally: Tally,
}

async fn client_from(kubeconfig: kube::config::Kubeconfig) -> Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn read_kubeconfig(path: &std::path::Path) -> Result<kube::config::Kubeconfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(kube::config::Kubeconfig::from_yaml(&text)?)
}

/// A kubeconfig for the bench user: a client certificate issued by `skiff-control kubeconfig`.
fn user_kubeconfig(cp: &ControlPlane) -> Result<kube::config::Kubeconfig> {
    let binary = std::env::var_os("SKIFF_CONTROL_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| skiff_tests::workspace_binary("skiff-control"));
    let out = cp.data_dir.join("bench-user.kubeconfig");
    let mut cmd = std::process::Command::new(binary);
    cmd.args(["kubeconfig", "--user", policy::BENCH_USER])
        .arg("--data-dir")
        .arg(&cp.data_dir)
        .args(["--server", &cp.url])
        .arg("--out")
        .arg(&out);
    for g in policy::BENCH_GROUPS {
        cmd.args(["--group", g]);
    }
    let output = cmd.output().context("running skiff-control kubeconfig")?;
    ensure!(
        output.status.success(),
        "skiff-control kubeconfig failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_kubeconfig(&out)
}

/// A kubeconfig for the bench service account: the admin's cluster, with a token from the
/// TokenRequest API in place of the client certificate.
async fn service_account_kubeconfig(
    cp: &ControlPlane,
    admin: &kube::Client,
) -> Result<kube::config::Kubeconfig> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), policy::SA_NAMESPACE);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": policy::BENCH_SA}}))?;
    accounts.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 24 * 3600}}))?;
    let issued: TokenRequest = accounts
        .create_subresource("token", policy::BENCH_SA, &PostParams::default(), &request)
        .await
        .context("requesting a service-account token")?;
    let token = issued.status.context("TokenRequest without status")?.token;
    let admin_text = std::fs::read_to_string(&cp.kubeconfig)?;
    let mut config: Value = serde_norway::from_str(&admin_text)?;
    let users = config["users"]
        .as_array_mut()
        .context("admin kubeconfig without users")?;
    for user in users {
        user["user"] = json!({"token": token});
    }
    Ok(serde_json::from_value(config)?)
}

/// Create `objects` (with their namespace, if any) of resource `R`, `concurrency` at a time.
async fn create_all<R>(
    client: &kube::Client,
    objects: &[(Option<String>, Value)],
    concurrency: usize,
) -> Result<()>
where
    R: kube::Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<R>(&());
    let results: Vec<Result<DynamicObject, kube::Error>> = futures::stream::iter(objects)
        .map(|(ns, body)| {
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            async move {
                let object: DynamicObject =
                    serde_json::from_value(body.clone()).map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &object).await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r.with_context(|| format!("creating a {}", resource.kind))?;
    }
    Ok(())
}

/// Create the policy's namespaces, roles and bindings as the admin.
async fn seed(admin: &kube::Client, policy: &Policy, concurrency: usize) -> Result<()> {
    let namespaces: Vec<(Option<String>, Value)> = policy
        .namespaces
        .iter()
        .map(|n| {
            (
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}),
            )
        })
        .collect();
    create_all::<Namespace>(admin, &namespaces, concurrency).await?;
    let (roles, cluster_roles): (Vec<_>, Vec<_>) = policy
        .roles
        .iter()
        .cloned()
        .partition(|(ns, _)| ns.is_some());
    create_all::<Role>(admin, &roles, concurrency).await?;
    create_all::<ClusterRole>(admin, &cluster_roles, concurrency).await?;
    let (bindings, cluster_bindings): (Vec<_>, Vec<_>) = policy
        .bindings
        .iter()
        .cloned()
        .partition(|(ns, _)| ns.is_some());
    create_all::<RoleBinding>(admin, &bindings, concurrency).await?;
    create_all::<ClusterRoleBinding>(admin, &cluster_bindings, concurrency).await
}

/// How many of each RBAC kind the server holds (seeded plus bootstrap), for the report.
async fn rbac_totals(admin: &kube::Client) -> Result<[usize; 4]> {
    let lp = ListParams::default();
    Ok([
        Api::<Role>::all(admin.clone()).list(&lp).await?.items.len(),
        Api::<ClusterRole>::all(admin.clone())
            .list(&lp)
            .await?
            .items
            .len(),
        Api::<RoleBinding>::all(admin.clone())
            .list(&lp)
            .await?
            .items
            .len(),
        Api::<ClusterRoleBinding>::all(admin.clone())
            .list(&lp)
            .await?
            .items
            .len(),
    ])
}

/// Every identity can work in its namespace; the RBAC ones may not create ConfigMaps in
/// `default` (nothing in the policy grants that), so the figures are those of requests RBAC
/// really decided.
async fn check_access(sides: &[Side], clients: &[(Identity, kube::Client)]) -> Result<()> {
    let one = ListParams::default().limit(1);
    for side in sides {
        side.api.list(&one).await.with_context(|| {
            format!(
                "{:?} cannot list ConfigMaps in its namespace",
                side.identity
            )
        })?;
    }
    for (identity, client) in clients {
        if matches!(identity, Identity::User | Identity::ServiceAccount) {
            let other: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            let r = other
                .create(&PostParams::default(), &configmap("authz", "refused", 0))
                .await;
            ensure!(
                matches!(&r, Err(kube::Error::Api(s)) if s.code == 403),
                "{identity:?} was not refused outside its grants: {r:?}"
            );
        }
    }
    Ok(())
}

/// The part `[lo, hi)` of `total` that round `r` of `rounds` does.
fn share(total: usize, r: usize, rounds: usize) -> std::ops::Range<usize> {
    total * r / rounds..total * (r + 1) / rounds
}

/// Round `r` for one identity: its share of creates, gets over what it holds so far, lists.
async fn run_round(side: &mut Side, r: usize, args: &Args) -> Result<()> {
    let api = &side.api;
    let created = share(args.objects, r, args.rounds);
    let held = created.end;
    let pages_before = side.tally.pages.len();
    let started = Instant::now();
    let creates = time_each(created, args.concurrency, |i| async move {
        api.create(&PostParams::default(), &configmap("authz", "bench", i))
            .await
    })
    .await
    .with_context(|| format!("{:?}: create failed", side.identity))?;
    let create_wall = started.elapsed();

    // Every identity gets the same names in the same round.
    let mut rng = Rng::new(0x9e37_79b9 + r as u64);
    let names: Vec<String> = share(args.gets, r, args.rounds)
        .map(|_| format!("bench-{:06}", rng.below(held as u64)))
        .collect();
    let started = Instant::now();
    let gets = time_each(names, args.concurrency, |name| async move {
        api.get(&name).await
    })
    .await
    .with_context(|| format!("{:?}: get failed", side.identity))?;
    let get_wall = started.elapsed();

    for _ in share(args.lists, r, args.rounds) {
        let t = Instant::now();
        let count = list_all(api, &mut side.tally.pages).await?;
        ensure!(
            count >= held,
            "{:?}: list returned {count} of {held}",
            side.identity
        );
        side.tally.lists.push(t.elapsed());
    }
    side.tally
        .add_round(creates, create_wall, gets, get_wall, pages_before);
    Ok(())
}

/// Unmeasured traffic first, so connections, caches and the allocator are warm for everyone.
async fn warm_up(side: &Side, concurrency: usize) -> Result<()> {
    let api = &side.api;
    time_each(0..concurrency * 4, concurrency, |i| async move {
        api.create(&PostParams::default(), &configmap("authz", "warm", i))
            .await
    })
    .await?;
    time_each(0..concurrency * 4, concurrency, |i| async move {
        api.get(&format!("warm-{i:06}")).await
    })
    .await?;
    Ok(())
}

/// Who runs when in round `r`: each identity starts a round in turn, and every other cycle
/// runs backwards, so no identity always follows the same one (whatever load one leaves
/// behind lands on different identities).
fn round_order(r: usize, n: usize) -> Vec<usize> {
    let order = (0..n).map(|k| (r + k) % n);
    if (r / n.max(1)).is_multiple_of(2) {
        order.collect()
    } else {
        order.rev().collect()
    }
}

/// The identities' clients, admin first.
async fn clients(
    cp: &ControlPlane,
    admin: &kube::Client,
    wanted: &[Identity],
) -> Result<Vec<(Identity, kube::Client)>> {
    let mut out = Vec::new();
    for identity in [
        Identity::Admin,
        Identity::Admin2,
        Identity::User,
        Identity::ServiceAccount,
    ] {
        if identity != Identity::Admin && !wanted.contains(&identity) {
            continue;
        }
        let kubeconfig = match identity {
            Identity::Admin | Identity::Admin2 => read_kubeconfig(&cp.kubeconfig)?,
            Identity::User => user_kubeconfig(cp)?,
            Identity::ServiceAccount => service_account_kubeconfig(cp, admin).await?,
        };
        out.push((identity, client_from(kubeconfig).await?));
    }
    Ok(out)
}

struct Outcome {
    sides: Vec<Side>,
    totals: [usize; 4],
}

async fn measure(args: &Args) -> Result<Outcome> {
    let wanted = args
        .identities
        .iter()
        .map(|s| Identity::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let cp = ControlPlane::start(StoreBackend::Embedded)?;
    let admin = client_from(read_kubeconfig(&cp.kubeconfig)?).await?;
    let policy = Policy::new(args.roles, args.bindings);
    eprintln!(
        "seeding {} roles and {} bindings…",
        policy.roles.len(),
        policy.bindings.len()
    );
    let started = Instant::now();
    seed(&admin, &policy, 8).await?;
    eprintln!("seeded in {:.1} s", started.elapsed().as_secs_f64());
    let totals = rbac_totals(&admin).await?;
    let clients = clients(&cp, &admin, &wanted).await?;
    let mut sides: Vec<Side> = clients
        .iter()
        .map(|(identity, client)| Side {
            identity: *identity,
            api: Api::namespaced(client.clone(), identity.namespace()),
            tally: Tally::default(),
        })
        .collect();
    check_access(&sides, &clients).await?;
    for side in &sides {
        warm_up(side, args.concurrency).await?;
    }
    for r in 0..args.rounds {
        for i in round_order(r, sides.len()) {
            let side = &mut sides[i];
            eprintln!("round {}/{}: {:?}", r + 1, args.rounds, side.identity);
            run_round(side, r, args).await?;
        }
    }
    Ok(Outcome { sides, totals })
}

/// One identity's figures, in the report's column order: latencies in ms and rates per second.
struct Figures {
    create: Percentiles,
    creates_per_s: f64,
    get: Percentiles,
    gets_per_s: f64,
    page: Percentiles,
    list: Percentiles,
}

impl Figures {
    fn of(t: &Tally) -> Figures {
        Figures {
            create: percentiles(&t.creates),
            creates_per_s: rate(t.creates.len(), t.create_wall),
            get: percentiles(&t.gets),
            gets_per_s: rate(t.gets.len(), t.get_wall),
            page: percentiles(&t.pages),
            list: percentiles(&t.lists),
        }
    }

    /// Latencies (ms) and rates, in column order; `true` marks a rate (higher is better).
    fn columns(&self) -> [(f64, bool); 9] {
        [
            (ms(self.create.p50), false),
            (ms(self.create.p99), false),
            (self.creates_per_s, true),
            (ms(self.get.p50), false),
            (ms(self.get.p99), false),
            (self.gets_per_s, true),
            (ms(self.page.p50), false),
            (ms(self.page.p99), false),
            (ms(self.list.p50), false),
        ]
    }
}

const HEADER: &str = "| identity | create p50 | create p99 | creates/s | get p50 | get p99 | gets/s | list page p50 | list page p99 | full list p50 |\n\
                      |---|---|---|---|---|---|---|---|---|---|\n";

/// How much slower than the admin (positive: slower): latency ratio, or inverse rate ratio.
fn overhead(value: (f64, bool), admin: (f64, bool)) -> f64 {
    let ratio = if value.1 {
        admin.0 / value.0
    } else {
        value.0 / admin.0
    };
    (ratio - 1.0) * 100.0
}

fn intro(args: &Args, totals: [usize; 4]) -> String {
    let [roles, cluster_roles, bindings, cluster_bindings] = totals;
    format!(
        "# Authorization benchmark\n\n\
         Command: `{}` (objects {}, concurrency {}, gets {}, lists {}, rounds {}; seeded {} roles, {} bindings)  \n\
         {}; release build; embedded store; client and server on one machine over TLS (loopback).\n\n\
         The server holds {roles} Roles, {cluster_roles} ClusterRoles, {bindings} RoleBindings and \
         {cluster_bindings} ClusterRoleBindings (the seeded policy plus kube's bootstrap one). Every identity \
         creates {} ConfigMaps (128-byte value) in its own namespace with {} concurrent clients, gets random ones \
         and lists its namespace in pages of 500; the work is split into {} rounds that run every identity in \
         turn, starting with a different one each round. Latencies in ms as the `kube` client sees them, \
         pooled over the rounds.\n\n{HEADER}",
        args.command,
        args.objects,
        args.concurrency,
        args.gets,
        args.lists,
        args.rounds,
        args.roles,
        args.bindings,
        skiff_tests::provenance(),
        args.objects,
        args.concurrency,
        args.rounds,
    )
}

fn row(identity: Identity, cells: impl IntoIterator<Item = String>) -> String {
    let cells: Vec<String> = cells.into_iter().collect();
    format!("| {} | {} |\n", identity.label(), cells.join(" | "))
}

fn percent(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:+.1} %")
    }
}

/// The median over rounds of each paired figure's difference from the admin's in that round.
fn paired(side: &Tally, admin: &Tally) -> [f64; PAIRED] {
    std::array::from_fn(|i| {
        let mut diffs: Vec<f64> = side
            .rounds
            .iter()
            .zip(&admin.rounds)
            .map(|(s, a)| overhead(s[i], a[i]))
            .filter(|d| d.is_finite())
            .collect();
        diffs.sort_by(f64::total_cmp);
        match diffs.len() {
            0 => f64::NAN,
            n if !n.is_multiple_of(2) => diffs[n / 2],
            n => (diffs[n / 2 - 1] + diffs[n / 2]) / 2.0,
        }
    })
}

/// The largest slowdown among an identity's paired figures (the number the < 5 % goal is
/// about), and the A/A control's largest difference either way (the noise floor).
fn verdict(outcome: &Outcome, admin: &Tally) -> String {
    let paired_of = |identity| {
        let side = outcome.sides.iter().find(|s| s.identity == identity)?;
        Some(paired(&side.tally, admin))
    };
    let noise = paired_of(Identity::Admin2)
        .map(|control| control.iter().map(|d| d.abs()).fold(0.0, f64::max));
    let mut out = String::new();
    if let Some(noise) = noise {
        out.push_str(&format!(
            "A/A control (admin against itself): largest paired difference ±{noise:.1} %.  \n"
        ));
    }
    for identity in [Identity::User, Identity::ServiceAccount] {
        let Some(diffs) = paired_of(identity) else {
            continue;
        };
        let worst = diffs
            .iter()
            .copied()
            .filter(|d| d.is_finite())
            .fold(f64::MIN, f64::max);
        let judged = match noise {
            _ if worst < 5.0 => "within the 5 % goal".to_string(),
            Some(noise) if worst <= noise => {
                format!(
                    "over 5 % but inside the A/A noise of ±{noise:.1} %: run larger or on a quieter machine"
                )
            }
            _ => "over the 5 % goal".to_string(),
        };
        out.push_str(&format!(
            "{}: largest paired slowdown {} ({judged}).  \n",
            identity.label(),
            percent(worst)
        ));
    }
    out
}

fn report(args: &Args, outcome: &Outcome) -> String {
    let mut out = intro(args, outcome.totals);
    let figures: Vec<(Identity, Figures)> = outcome
        .sides
        .iter()
        .map(|s| (s.identity, Figures::of(&s.tally)))
        .collect();
    for (identity, f) in &figures {
        let cells = f.columns().map(|(v, rate)| {
            if rate {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        });
        out.push_str(&row(*identity, cells));
    }
    out.push_str(
        "\nDifference from the admin, pooled (positive: slower; for rates, the admin's rate over \
         this one's):\n\n",
    );
    out.push_str(HEADER);
    let admin = figures[0].1.columns();
    for (identity, f) in &figures[1..] {
        let cells = f
            .columns()
            .into_iter()
            .zip(admin)
            .map(|(v, a)| percent(overhead(v, a)));
        out.push_str(&row(*identity, cells));
    }
    out.push_str(
        "\nDifference from the admin, paired: each round's figure against the admin's in the same \
         round, median over the rounds (a burst of other load on the machine hits one round of \
         one identity; the median discards it):\n\n",
    );
    out.push_str(PAIRED_HEADER);
    let admin = &outcome.sides[0].tally;
    for side in &outcome.sides[1..] {
        out.push_str(&row(side.identity, paired(&side.tally, admin).map(percent)));
    }
    out.push('\n');
    out.push_str(&verdict(outcome, admin));
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse().sized();
    let outcome = measure(&args).await?;
    let md = report(&args, &outcome);
    skiff_tests::print_report(&md, args.out.as_deref()).context("writing the report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_takes_every_place_and_follows_different_ones() {
        let orders: Vec<Vec<usize>> = (0..8).map(|r| round_order(r, 4)).collect();
        for place in 0..4 {
            let mut at: Vec<usize> = orders.iter().map(|o| o[place]).collect();
            at.sort();
            assert_eq!(at, [0, 0, 1, 1, 2, 2, 3, 3], "place {place}");
        }
        let before_0: std::collections::BTreeSet<usize> = orders
            .iter()
            .filter_map(|o| {
                o.iter()
                    .position(|&i| i == 0)
                    .filter(|&p| p > 0)
                    .map(|p| o[p - 1])
            })
            .collect();
        assert!(before_0.len() >= 2, "{before_0:?}");
    }

    #[test]
    fn paired_differences_are_medians_of_per_round_ones() {
        let round = |v: f64| {
            [
                (v, false),
                (v, true),
                (v, false),
                (v, true),
                (f64::NAN, false),
            ]
        };
        let admin = Tally {
            rounds: vec![round(1.0), round(1.0), round(1.0)],
            ..Tally::default()
        };
        let side = Tally {
            rounds: vec![round(1.1), round(0.5), round(1.2)],
            ..Tally::default()
        };
        let d = paired(&side, &admin);
        assert!((d[0] - 10.0).abs() < 1e-9, "{d:?}");
        assert!((d[1] - (1.0 / 1.1 - 1.0) * 100.0).abs() < 1e-9, "{d:?}");
        assert!(d[4].is_nan());
    }
}
