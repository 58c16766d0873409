//! Garbage-collection benchmark on the real control plane and the emulator (issue 5).
//!
//!   cargo bench --bench gc -- [--n 10000] [--compare 1000] [--latency 100]
//!
//! For each run: seed N VMs, create N EcsInstances adopting them, wait until all carry the
//! finalizer and their instance ID, delete the namespace, and measure until it is gone.
//! `--compare M` runs M with batching on and off (batch size 1) and prints the ratios.
//! `--latency K` measures single-resource `delete` -> gone latency over K deletions.
//! The emulator throttles DeleteInstances at 10 requests/s (429 FlowLimitExceeded above).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use ecs_operator::api::EcsInstance;
use futures::{stream, StreamExt};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use support::*;

struct Outcome {
    n: usize,
    batch: u16,
    seconds: f64,
    delete_calls: u64,
    all_calls: u64,
    rss_mib: f64,
    cpu_s: f64,
    vms_left: usize,
    resources_left: usize,
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_kb / 1024.0, ticks / 100.0)
}

fn calls_of(stats: &Value, action: &str) -> u64 {
    stats["actions"][action]["calls"].as_u64().unwrap_or(0)
}

async fn run(n: usize, batch: u16) -> Outcome {
    let client = client().await;
    let ns = namespace(&client, &format!("bench-{n}-b{batch}")).await;
    let emu = Emulator::start(
        &format!("bench-{n}-b{batch}"),
        &["--delete-delay-ms", "0", "--create-delay-ms", "0"],
    );
    emu.faults(
        "DeleteInstances",
        json!({"throttle_rps": 10.0, "throttle_burst": 10}),
    )
    .await;
    let ids: Vec<String> = emu
        .send(
            reqwest::Method::POST,
            "instances/bulk",
            json!({"Count": n, "Status": "RUNNING"}),
        )
        .await["InstanceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let batch_s = batch.to_string();
    let op = Operator::start(
        &format!("bench-{n}-b{batch}"),
        &ns,
        &emu,
        &[
            "--batch-size",
            &batch_s,
            "--rate-limit",
            "10",
            "--rate-burst",
            "10",
            "--resync-secs",
            "3600",
        ],
    );
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    stream::iter(ids.iter().enumerate())
        .for_each_concurrent(32, |(i, id)| {
            let api = api.clone();
            async move {
                let o = ecsi(&format!("vm-{i:05}"), json!({"instanceId": id}));
                api.create(&PostParams::default(), &o)
                    .await
                    .expect("create");
            }
        })
        .await;
    eprintln!(
        "  created {n} resources in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let lp = ListParams::default();
    wait_for(600, "all adopted", || async {
        let l = api.list(&lp).await.ok()?;
        let done = l
            .items
            .iter()
            .filter(|o| {
                !o.metadata
                    .finalizers
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
                    && o.status
                        .as_ref()
                        .and_then(|s| s.instance_id.as_ref())
                        .is_some()
            })
            .count();
        (done == n).then_some(())
    })
    .await;
    eprintln!("  all {n} adopted after {:.1}s", t.elapsed().as_secs_f64());
    let before = emu.get("stats").await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let t0 = Instant::now();
    nss.delete(&ns, &DeleteParams::default()).await.unwrap();
    wait_for(1800, "namespace gone", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        matches!(nss.get_opt(&ns).await, Ok(None)).then_some(())
    })
    .await;
    let seconds = t0.elapsed().as_secs_f64();
    let after = emu.get("stats").await;
    let (rss_mib, cpu_s) = proc_stats(op.pid().unwrap_or(0));
    let all_calls = after["calls"].as_u64().unwrap_or(0) - before["calls"].as_u64().unwrap_or(0);
    let delete_calls = calls_of(&after, "DeleteInstances") - calls_of(&before, "DeleteInstances");
    let vms_left = emu
        .get("instances")
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(usize::MAX);
    let resources_left = api.list(&lp).await.map(|l| l.items.len()).unwrap_or(0);
    Outcome {
        n,
        batch,
        seconds,
        delete_calls,
        all_calls,
        rss_mib,
        cpu_s,
        vms_left,
        resources_left,
    }
}

async fn latency(k: usize) -> (f64, f64) {
    let client = client().await;
    let ns = namespace(&client, "bench-latency").await;
    let emu = Emulator::start("bench-latency", &["--delete-delay-ms", "0"]);
    let _op = Operator::start("bench-latency", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut samples = Vec::new();
    for i in 0..k {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        let name = format!("vm-{i}");
        create(&api, &name, json!({"instanceId": id})).await;
        wait_for(30, "adopted", || async {
            let o = api.get(&name).await.ok()?;
            o.status.as_ref()?.instance_id.as_ref()?;
            (!o.metadata.finalizers.unwrap_or_default().is_empty()).then_some(())
        })
        .await;
        let t = Instant::now();
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        loop {
            if matches!(api.get_opt(&name).await, Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    (p(0.50), p(0.95))
}

fn print(o: &Outcome) {
    println!(
        "| {:>6} | {:>5} | {:>8.1} | {:>6} | {:>6} | {:>7.1} | {:>6.1} | {:>3} | {:>3} |",
        o.n,
        o.batch,
        o.seconds,
        o.delete_calls,
        o.all_calls,
        o.rss_mib,
        o.cpu_s,
        o.vms_left,
        o.resources_left
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let n = arg("--n");
    let compare = arg("--compare");
    let lat = arg("--latency");
    println!("| N | batch | seconds | DeleteInstances | all calls | peak RSS MiB | CPU s | VMs left | resources left |");
    println!("|---|---|---|---|---|---|---|---|---|");
    if let Some(m) = compare {
        let on = run(m, 100).await;
        print(&on);
        let off = run(m, 1).await;
        print(&off);
        println!(
            "\nN = {m}: batching off/on time ratio {:.1}x, DeleteInstances call ratio {:.1}x",
            off.seconds / on.seconds,
            off.delete_calls as f64 / on.delete_calls.max(1) as f64
        );
    }
    if let Some(n) = n {
        let o = run(n, 100).await;
        print(&o);
        let limit = 1.05 * (n as f64 / 100.0).ceil();
        println!(
            "\nN = {n}: {:.1}s (target <= 60), DeleteInstances {} (target <= {limit:.0}), peak RSS {:.1} MiB (target <= 96), left {}+{}",
            o.seconds, o.delete_calls, o.rss_mib, o.vms_left, o.resources_left
        );
    }
    if let Some(k) = lat {
        let (p50, p95) = latency(k).await;
        println!("\nsingle-resource delete -> gone over {k} deletions: p50 {p50:.0} ms, p95 {p95:.0} ms (target p50 < 250 ms)");
    }
}
