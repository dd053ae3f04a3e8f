//! Multi-process tests: real `pbft-replica` processes on loopback, driven
//! through the client library. Each test is bounded in time; the tests run
//! one at a time (they share two cores with everything else).

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_agree_primary_kill_view_change_and_catch_up() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new("failover", 4);
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let mut cl = cluster.client();
    for i in 0..20 {
        cl.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
    }
    check_all(&cluster, &(0..20).map(|i| (format!("k{i}"), format!("v{i}"))).collect::<Vec<_>>()).await;
    // All replicas executed the same number of batches.
    let t = Instant::now();
    loop {
        let ex = cluster.executed().await;
        let seqs: Vec<u64> = ex.values().map(|x| x.0).collect();
        if seqs.len() == 4 && seqs.iter().all(|s| *s == seqs[0]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "replicas disagree on executed seq: {ex:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Kill -9 the primary (view 0: replica 0) under load.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = load(&cluster, 4, "load", stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill9(0);
    let killed = Instant::now();
    let before = cluster.executed().await.values().map(|x| x.0).max().unwrap_or(0);
    let mut probe = cluster.client();
    probe.put(b"after-kill", b"1").await.expect("write after the primary was killed");
    let vc_time = killed.elapsed();
    // Status is published asynchronously (at most every 10 ms, later when the
    // driver is busy): a replica that took part in the write may still show
    // the old view for a moment (seen in a CI run: the new primary at view 0
    // a few ms after entering view 1).
    let t = Instant::now();
    let views = loop {
        let views = cluster.executed().await;
        if views.len() == 3 && views.values().all(|(_, v)| *v >= 1) {
            break views;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no new view: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("MEASURE view change after primary kill: first write committed {:.0} ms after kill -9 (executed before: {before}); {views:?}", vc_time.as_secs_f64() * 1000.0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Restart it: it catches up.
    let restarted = Instant::now();
    cluster.start(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = collect(handles).await;
    assert!(acked.len() > 20, "too few writes acknowledged under load: {}", acked.len());
    let target = cluster.executed().await.iter().filter(|(id, _)| **id != 0).map(|(_, x)| x.0).max().unwrap_or(0);
    let t = Instant::now();
    loop {
        let ex = cluster.executed().await;
        if ex.get(&0).is_some_and(|x| x.0 >= target) {
            eprintln!(
                "MEASURE restarted replica caught up to seq {target} {:.0} ms after restart",
                restarted.elapsed().as_secs_f64() * 1000.0
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "replica 0 did not catch up to {target}: {ex:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_restart_all_keeps_acknowledged_writes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new("killall", 4);
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = load(&cluster, 8, "dur", stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..4 {
        cluster.kill9(i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = collect(handles).await;
    assert!(acked.len() > 20, "too few acknowledged writes: {}", acked.len());
    let t = Instant::now();
    for i in 0..4 {
        cluster.start(i);
    }
    let mut cl = cluster.client();
    cl.put(b"after-restart", b"1").await.expect("write after restarting all");
    eprintln!(
        "MEASURE all 4 restarted: first write committed {:.0} ms after restart; {} acknowledged writes to check",
        t.elapsed().as_secs_f64() * 1000.0,
        acked.len()
    );
    check_all(&cluster, &acked).await;
    for i in 0..4 {
        let d = cluster.terminate(i);
        eprintln!("MEASURE SIGTERM to exit of replica {i}: {:.1} ms", d.as_secs_f64() * 1000.0);
        assert!(d < Duration::from_secs(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_port_changes_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new("garbage", 4);
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let mut cl = cluster.client();
    cl.put(b"before", b"1").await.unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rand_bytes = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    for p in cluster.slots.iter().map(|s| s.ports).collect::<Vec<_>>() {
        for port in p {
            for size in [1usize, 100, 65536, 1 << 20] {
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = s.write_all(&rand_bytes(size));
                }
                // An HTTP/2 preface followed by junk frames.
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
                    let _ = s.write_all(&rand_bytes(size));
                }
            }
        }
    }
    // Well-formed gRPC carrying garbage: client requests and peer frames.
    for p in cluster.slots.iter().map(|s| s.ports).collect::<Vec<_>>() {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", p[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = pbft::server::rpc::client_client::ClientClient::new(ch.clone());
        let r = c.submit(pbft::server::rpc::SubmitRequest { request: rand_bytes(300).into() }).await;
        let code = r.expect_err("garbage request accepted").code();
        assert!(matches!(code, tonic::Code::InvalidArgument | tonic::Code::Unauthenticated), "{code:?}");
        let big = c.submit(pbft::server::rpc::SubmitRequest { request: rand_bytes(2 << 20).into() }).await;
        assert!(big.is_err());
        let mut peer = pbft::server::rpc::peer_client::PeerClient::new(ch);
        let frames: Vec<pbft::server::rpc::Frame> =
            (0..200).map(|i| pbft::server::rpc::Frame { envelope: rand_bytes(10 + i * 37).into() }).collect();
        let _ = peer.stream(tokio_stream::iter(frames)).await;
    }
    for i in 0..4 {
        assert!(cluster.alive(i), "replica {i} died");
    }
    cl.put(b"after", b"2").await.expect("write after garbage");
    check_all(&cluster, &[("before".into(), "1".into()), ("after".into(), "2".into())]).await;
    let ex = cluster.executed().await;
    assert!(ex.values().all(|(_, v)| *v == 0), "garbage caused a view change: {ex:?}");
}

const FLOOD_LIMIT: u64 = 64 << 20;

/// 300 clients writing 2 kB values for 6 s against replicas assuming a 64 MiB
/// limit and serving at most 128 client calls at once: every replica stays
/// alive, its peak RSS stays under the limit and clients are refused with
/// RESOURCE_EXHAUSTED (and a retry hint, which the client library follows).
/// Each client overwrites its own four keys: the pressure is in the calls in
/// flight, not in a growing state (a state that fills the memory budget is
/// shed for good, by design: see `Shared::projected_usage`).
/// With `PBFT_FI_REPLICA` naming a fault-injection build, replica 3 also
/// floods its peers with far-future messages the whole time.
async fn flood(tag: &str, check_rss: bool) -> Cluster {
    let limit = FLOOD_LIMIT.to_string();
    let mut cluster =
        Cluster::prepare(tag, 4, &[("PBFT_DEFAULT_MEMORY_LIMIT", &limit), ("PBFT_MAX_CLIENT_CALLS", "128")]);
    match std::env::var_os("PBFT_FI_REPLICA") {
        Some(bin) => {
            eprintln!("peer flood: replica 3 runs {} with PBFT_FAULTS=flood", std::path::Path::new(&bin).display());
            cluster.slots[3].binary = Some(bin.into());
            cluster.slots[3].env = vec![("PBFT_FAULTS".into(), "flood".into())];
        }
        None => eprintln!("no peer flood: set PBFT_FI_REPLICA to a fault-injection build to add one"),
    }
    for i in 0..4 {
        cluster.start(i);
    }
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let value = vec![b'x'; 2000];
    let handles: Vec<_> = (0..300)
        .map(|c| {
            let mut cl = cluster.client();
            cl.timeout = Duration::from_secs(3);
            let (stop, value) = (stop.clone(), value.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = cl.put(format!("flood-{c}-{}", i % 4).as_bytes(), &value).await;
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        let _ = h.await;
    }
    let mut shed = 0.0;
    let ports: Vec<[u16; 4]> = cluster.slots.iter().map(|s| s.ports).collect();
    for (i, p) in ports.iter().enumerate() {
        assert!(cluster.alive(i as u32), "replica {i} died under the flood");
        let peak = peak_rss(cluster.pid(i as u32).unwrap_or(0));
        eprintln!(
            "MEASURE flood: replica {i} peak RSS {:.1} MiB, limit {} MiB",
            peak as f64 / 1048576.0,
            FLOOD_LIMIT >> 20
        );
        if check_rss {
            assert!(peak < FLOOD_LIMIT, "replica {i} peaked at {peak} bytes, over the limit {FLOOD_LIMIT}");
        }
        let text = http_get(p[3], "/metrics").await;
        shed += text
            .lines()
            .filter(|l| l.starts_with("pbft_shed_requests_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    eprintln!("MEASURE flood: {shed} requests shed with RESOURCE_EXHAUSTED");
    assert!(shed > 0.0, "300 clients against 128 calls per replica were never refused");
    cluster
}

/// History: after the transport frame limit, bounded client bytes, outbound
/// queues sized from the limit, two malloc arenas, 25 ms sampling, shedding
/// ahead of the checkpoint's copies of the state and streaming WAL
/// compaction, the peak stayed at 41-62 MiB in 9 of 10 floods but reached
/// 69.7 MiB once: tonic decodes a request in full before the handler can
/// refuse it, so up to 4096 decoded calls could be in memory at once. Calls
/// are now admitted before their body is read (`server::admission`), as many
/// as the client byte budget holds at the largest request size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_flood_is_shed_within_the_memory_limit() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    flood("flood", true).await;
}

/// After the flood, a quorum settles on one view and serves. (A replica whose
/// timer fired alone, on a request that the primary had shed, can stay in its
/// view change until the others change view: PBFT never goes back a view.
/// That is reported, not asserted.)
///
/// History: in a CI run on 2026-11-25 the replicas stayed above their
/// shedding threshold (usage plus twice the snapshot) and refused every
/// request for 60 s after the flood. The flood then wrote a new key with
/// every put, and 6 s of it left a state of tens of MiB: three copies of it
/// (state, snapshot, log record) do not fit 80% of 64 MiB, so shedding was
/// right. The flood now overwrites a few keys per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_again_after_a_client_flood() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = flood("flood-live", false).await;
    let t = Instant::now();
    let mut cl = cluster.client();
    cl.timeout = Duration::from_secs(60);
    cl.put(b"after-flood", b"ok").await.expect("write after the flood");
    // The flooding replica still follows the protocol: it counts toward the quorum.
    let honest: Vec<u32> = vec![0, 1, 2, 3];
    let quorum = cluster.endpoints().membership.quorum();
    let views = loop {
        let st = cluster.statuses().await;
        let views: Vec<(u64, bool)> = honest.iter().filter_map(|i| st.get(i)).map(|s| (s.view, s.active)).collect();
        let mut active: Vec<u64> = views.iter().filter(|v| v.1).map(|v| v.0).collect();
        active.sort_unstable();
        let settled = active.iter().any(|v| active.iter().filter(|w| *w == v).count() >= quorum);
        if settled {
            break views;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "no quorum settled on one view after the flood: {views:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "MEASURE flood: serving again {:.0} ms after the flood stopped; (view, active) per replica: {views:?}",
        t.elapsed().as_secs_f64() * 1000.0
    );
    check_all(&cluster, &[("after-flood".into(), "ok".into())]).await;
}

/// A TCP balancer in front of the replicas' client ports, as a Kubernetes
/// client Service is: each connection goes to one replica and stays there.
/// Its first `sticky` connections all go to replica 0 (a Service whose other
/// endpoints are not published yet), later ones round-robin over all.
async fn sticky_balancer(backends: Vec<u16>, sticky: usize) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let k = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let backend = if k < sticky { backends[0] } else { backends[k % backends.len()] };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, accepted)
}

/// Seen in a CI run: `pbftctl --service`, through a client Service that
/// seemingly had one ready endpoint when its connections opened, got replies
/// from fewer than f+1 replicas and retried over the same connections for
/// 60 s. The client now opens new connections on a retry, so the balancer
/// chooses again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_through_a_balancer_stuck_on_one_replica_dials_again() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::new("balancer", 4);
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let connections = 12;
    let backends = cluster.slots.iter().map(|s| s.ports[1]).collect();
    let (port, accepted) = sticky_balancer(backends, connections).await;
    let membership = cluster.endpoints().membership;
    let through = pbft::kvclient::Endpoints::through(membership, &format!("127.0.0.1:{port}"), connections).unwrap();
    let mut cl = pbft::kvclient::KvClient::new(through);
    cl.timeout = Duration::from_secs(20);
    let t = Instant::now();
    cl.put(b"through", b"balancer").await.expect("a write through a balancer that first knew one replica");
    let dialled = accepted.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "MEASURE sticky balancer: committed after {:.0} ms over {dialled} connections",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert!(dialled > connections, "the client dialled again ({dialled} connections)");
    check_all(&cluster, &[("through".into(), "balancer".into())]).await;
}
