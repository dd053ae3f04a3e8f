//! Memory under a real cgroup limit: a 96Mi cluster takes a client flood (many
//! clients sending large signed writes to every replica without waiting) and
//! a peer flood (member 3 runs the fault-injection image with `flood`:
//! far-future prepares with every message it sends), while honest clients
//! keep writing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Endpoint;

use pbft::core::client::ClientCore;
use pbft::crypto::Keypair;
use pbft::proto::{operation::Kind, Operation, Put};
use pbft::server::rpc::{client_client::ClientClient, SubmitRequest};

use pbft_e2e::k8s;
use pbft_e2e::linearizability::Outcome;
use pbft_e2e::load::{Load, LoadSpec};
use pbft_e2e::prom;
use pbft_e2e::report::{Error, Result, Scenario};
use pbft_e2e::Ctx;

use super::{check_load, spec};

const NS: &str = "e2e-memory";
const NAME: &str = "mem";
const LIMIT: &str = "96Mi";
const FLOOD: Duration = Duration::from_secs(40);
const FLOOD_CLIENTS: usize = 48;
/// Value bytes of each flooding put: as large as a 96Mi replica accepts (its
/// core derives a largest request of about 14 KiB from the limit; larger ones
/// are refused as INVALID_ARGUMENT before they cost anything).
const FLOOD_VALUE: usize = 12 << 10;
/// Puts each flooding client has in flight at once, each sent to every replica:
/// 48 x 16 calls of 12 KiB are twice the 5% of the limit a replica lets client
/// requests take.
const FLOOD_IN_FLIGHT: usize = 16;

#[derive(Default)]
struct FloodCounts {
    sent: AtomicU64,
    ok: AtomicU64,
    exhausted: AtomicU64,
    other: AtomicU64,
    /// The other errors by gRPC code: how many, and the first one's message.
    other_by_code: std::sync::Mutex<BTreeMap<String, (u64, String)>>,
}

/// One flooding client: signed puts of FLOOD_VALUE bytes to a few keys (the
/// state stays small; the pressure is in flight), FLOOD_IN_FLIGHT at a time,
/// each sent to every replica at once, never waiting for f+1.
async fn flood_client(
    c: usize,
    addrs: Vec<String>,
    membership: pbft::membership::Membership,
    stop: Arc<AtomicBool>,
    n: Arc<FloodCounts>,
) {
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let mut core = ClientCore::new(Keypair::from_secret(secret), membership, 1);
    let channels: Vec<_> = addrs
        .iter()
        .filter_map(|a| {
            Some(
                Endpoint::from_shared(format!("http://{a}"))
                    .ok()?
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy(),
            )
        })
        .collect();
    let value = Bytes::from(vec![b'f'; FLOOD_VALUE]);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let requests: Vec<Bytes> = (0..FLOOD_IN_FLIGHT)
            .map(|_| {
                i += 1;
                let key = Bytes::from(format!("flood-{}", (c as u64 + i) % 8));
                core.submit(Operation { kind: Some(Kind::Put(Put { key, value: value.clone() })) })
            })
            .collect();
        let calls = requests.iter().flat_map(|request| {
            channels.iter().map(move |ch| {
                let mut cl = ClientClient::new(ch.clone()).max_encoding_message_size(1 << 20);
                let mut req = tonic::Request::new(SubmitRequest { request: request.clone() });
                req.set_timeout(Duration::from_secs(5));
                async move { cl.submit(req).await }
            })
        });
        for r in futures::future::join_all(calls).await {
            n.sent.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(_) => n.ok.fetch_add(1, Ordering::Relaxed),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => n.exhausted.fetch_add(1, Ordering::Relaxed),
                Err(s) => {
                    if let Ok(mut m) = n.other_by_code.lock() {
                        let e = m.entry(format!("{:?}", s.code())).or_insert_with(|| (0, s.message().to_string()));
                        e.0 += 1;
                    }
                    n.other.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

async fn shed_total(topo: &pbft_e2e::topology::Topology) -> (f64, Vec<String>) {
    let mut total = 0.0;
    let mut by_reason: BTreeMap<String, f64> = BTreeMap::new();
    for r in &topo.replicas {
        let Some(m) = &r.metrics else { continue };
        let samples = prom::parse(&prom::http_get(m, "/metrics").await.unwrap_or_default());
        for s in samples.iter().filter(|s| s.name == "pbft_shed_requests_total") {
            total += s.value;
            *by_reason.entry(s.labels.clone()).or_default() += s.value;
        }
    }
    (total, by_reason.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

pub async fn memory(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let annotations = BTreeMap::from([(
        pbft_operator::fault_injection::REQUEST_ANNOTATION.to_string(),
        r#"{"3": "flood"}"#.to_string(),
    )]);
    ctx.create_cluster(NS, NAME, spec(1, LIMIT), annotations).await?;
    let (_, took) = ctx.wait_available(NS, NAME, Duration::from_secs(300)).await?;
    s.measure_secs("available_at_96Mi_with_a_flooding_member", took);
    let watcher = ctx.watcher(NS, NAME).await?;
    let topo = watcher.current();
    let (shed0, _) = shed_total(&topo).await;
    let load = Load::start(watcher.clone(), LoadSpec::light("mem"));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let start = load.now();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let addrs: Vec<String> = topo.replicas.iter().filter_map(|r| r.client.clone()).collect();
    let flooders: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|c| tokio::spawn(flood_client(c, addrs.clone(), topo.membership.clone(), stop.clone(), counts.clone())))
        .collect();
    let t = Instant::now();
    let mut peak: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    while t.elapsed() < FLOOD {
        for (id, st) in topo.statuses().await {
            if let Ok(st) = st {
                let e = peak.entry(id).or_default();
                e.0 = e.0.max(st.memory_used_bytes);
                e.1 = st.memory_limit_bytes;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let end = load.now();
    s.measure("client_flood_requests", counts.sent.load(Ordering::Relaxed), "");
    s.measure("client_flood_answered", counts.ok.load(Ordering::Relaxed), "");
    s.measure("client_flood_resource_exhausted", counts.exhausted.load(Ordering::Relaxed), "");
    s.measure("client_flood_other_errors", counts.other.load(Ordering::Relaxed), "");
    if let Ok(m) = counts.other_by_code.lock() {
        for (code, (count, first)) in m.iter() {
            s.log(format!("client flood: {count} x {code}, the first: {first}"));
        }
    }
    for (id, (used, limit)) in &peak {
        s.measure(
            &format!("replica_{id}_peak_memory"),
            format!("{:.1}/{:.1}", *used as f64 / 1048576.0, *limit as f64 / 1048576.0),
            "MiB",
        );
    }
    let (shed1, reasons) = shed_total(&topo).await;
    s.measure("shed_requests_in_metrics", shed1 - shed0, "");
    s.log(format!("shed by reason: {reasons:?}"));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = k8s::replica_pods(&ctx.client, NS, NAME).await?;
    let restarts: Vec<(String, i32, bool)> = pods
        .iter()
        .map(|p| {
            let (n, oom) = k8s::restarts(p);
            (p.metadata.name.clone().unwrap_or_default(), n, oom)
        })
        .collect();
    s.log(format!("restarts: {restarts:?}"));
    let r = load.stop().await;
    let third = (end - start) / 3;
    let acks: Vec<usize> = (0..3)
        .map(|k| {
            let (a, b) = (start + third * k, start + third * (k + 1));
            r.history.iter().filter(|x| x.outcome == Outcome::Written && x.ret >= a && x.ret < b).count()
        })
        .collect();
    s.measure("honest_writes_acked_per_third_of_the_flood", format!("{acks:?}"), "");
    s.measure_secs("honest_longest_write_gap_during_flood", r.max_gap(start, end));
    s.check(
        restarts.iter().all(|(_, n, oom)| *n == 0 && !oom),
        "no replica container restarted or was OOMKilled",
        || format!("{restarts:?}"),
    )?;
    s.check(shed1 > shed0, "shedding shows in the replicas' metrics (pbft_shed_requests_total)", || {
        format!("{shed0} -> {shed1}")
    })?;
    s.check(counts.exhausted.load(Ordering::Relaxed) > 0, "flooding clients got RESOURCE_EXHAUSTED", || {
        format!("{} answered, {} other errors", counts.ok.load(Ordering::Relaxed), counts.other.load(Ordering::Relaxed))
    })?;
    s.check(acks.iter().all(|n| *n > 0), "honest writes kept committing through the flood", || {
        format!("acks per third: {acks:?}")
    })?;
    check_load(ctx, s, NS, NAME, &r, "honest").await?;
    if r.history.is_empty() {
        return Err(Error::Check("no honest operations".into()));
    }
    k8s::delete_namespace(&ctx.client, NS, Duration::from_secs(180)).await
}
