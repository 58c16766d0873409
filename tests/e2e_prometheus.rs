//! A real Prometheus (Debian's `prometheus`, on loopback) scrapes a real operator during a
//! stuck deletion (deletion protection on) with the alert rules of
//! deploy/monitoring/rules.yaml, the stuck-deletion threshold lowered to seconds, and sees
//! `EcsOperatorDeletionStuck` pending; before the deletion nothing is pending.

use ecs_test_harness as support;

use std::process::{Child, Command, Stdio};

use ecs_operator::api::EcsInstance;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use support::*;

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus scraping `target` every second, evaluating the project's rules every second,
/// with the stuck-deletion threshold at `stuck_secs`.
fn prometheus(target: &str, stuck_secs: u64) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(repo().join("deploy/monitoring/rules.yaml")).unwrap();
    let lowered = rules.replace(
        "max(ecs_operator_oldest_deletion_seconds) > 1800",
        &format!("max(ecs_operator_oldest_deletion_seconds) > {stuck_secs}"),
    );
    assert_ne!(lowered, rules, "the threshold was not found in rules.yaml");
    std::fs::write(dir.path().join("rules.yaml"), lowered).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: ecs-operator\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let bin = which("prometheus")
        .expect("the prometheus binary (Debian package prometheus; scripts/test.sh installs it)");
    let log = std::fs::File::create(log_dir_file("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .current_dir(dir.path())
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

fn log_dir_file(name: &str) -> std::path::PathBuf {
    let dir = repo().join("target/e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn get(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// The state of an alert (`pending`, `firing`) as Prometheus' API lists it, if listed.
async fn alert_state(p: &Prometheus, name: &str) -> Option<String> {
    let v = get(&format!("{}/api/v1/alerts", p.url)).await?;
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

async fn query(p: &Prometheus, q: &str) -> Option<f64> {
    let v = get(&format!("{}/api/v1/query?query={q}", p.url)).await?;
    v["data"]["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_sees_a_stuck_deletion_alert_pending() {
    let client = client().await;
    let ns = namespace(&client, "e2e-prom").await;
    let emu = Emulator::start("prom", &["--create-delay-ms", "0"]);
    let op = Operator::start("prom", &ns, &emu, &["--resync-secs", "2"]);
    let addr = wait_for(30, "the metrics address", || async { op.metrics_addr() }).await;
    let prom = prometheus(&addr, 3);
    wait_for(60, "Prometheus scrapes the operator", || async {
        (query(&prom, "up").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(query(&prom, "ecs_operator_leader").await, Some(1.0));

    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "guarded",
        json!({"instanceId": id, "deletionProtection": true}),
    )
    .await;
    wait_for(60, "protection on", || async {
        (emu.instance(&id).await?["DeletionProtection"] == true).then_some(())
    })
    .await;
    // Live and protected: nothing waits, nothing pending (progress: a scrape showing 0).
    wait_for(30, "a scrape of no deletion", || async {
        (query(&prom, "ecs_operator_resources_deleting").await? == 0.0).then_some(())
    })
    .await;
    assert_eq!(alert_state(&prom, "EcsOperatorDeletionStuck").await, None);

    delete(&api, "guarded").await;
    wait_for(60, "the deletion is counted", || async {
        (query(&prom, "ecs_operator_resources_deleting").await? == 1.0).then_some(())
    })
    .await;
    let state = wait_for(60, "EcsOperatorDeletionStuck pending", || async {
        alert_state(&prom, "EcsOperatorDeletionStuck")
            .await
            .filter(|s| s == "pending")
    })
    .await;
    assert_eq!(state, "pending", "for: 5m keeps it pending, not firing");
    assert!(
        query(&prom, "ecs_operator_oldest_deletion_seconds")
            .await
            .unwrap()
            > 3.0
    );
    assert_eq!(
        emu.deletions_of(&id).await,
        0,
        "the protected VM is still there"
    );

    // Let the namespace go.
    let _ = api
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
}
