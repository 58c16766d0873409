use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use ecs_operator::accounts::factory::EcsFactory;
use ecs_operator::accounts::manager::ManagerConfig;
use ecs_operator::accounts::DEFAULT_ACCOUNT;
use ecs_operator::cloud::client::EcsClient;
use ecs_operator::cloud::gated::{GatedCloud, MutationGate};
use ecs_operator::cloud::Cloud;
use ecs_operator::config::{Cli, Command, CrdKind, OnMissing, RunArgs, SweepArgs};
use ecs_operator::controller::batch::BatchConfig;
use ecs_operator::controller::{self, Context, Settings};
use ecs_operator::identity::{self, ClusterIdentity};
use ecs_operator::leader::{self, LeaderConfig};
use ecs_operator::metrics::AccountObserver;
use ecs_operator::metrics::Metrics;
use ecs_operator::sweeper::{self, SweepMode, Tracker};
use ecs_operator::{server, telemetry};

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async_main())
}

/// jemalloc, not glibc's malloc: at N = 10,000 resources glibc held about 45 MiB more than the
/// live heap (heaptrack: peak heap 90.8 MiB, peak RSS 134.8 MiB, with its arenas limited to
/// two), memory freed by one thread's bursts and not reusable by another's. jemalloc's size
/// classes and decay return it (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Crd { kind } => match match kind {
            CrdKind::Instance => ecs_operator::admission::crd(),
            CrdKind::Account => ecs_operator::admission::account_crd(),
        }
        .and_then(|c| serde_yaml::to_string(&c).map_err(|e| e.to_string()))
        {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sweep(args) => match sweep(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Explain {
            target,
            default_deletion_policy,
        } => {
            let explained = match kube::Client::try_default().await {
                Ok(client) => {
                    ecs_operator::explain::gather(&client, &target, default_deletion_policy).await
                }
                Err(e) => Err(format!("kubeconfig: {e}")),
            };
            match explained {
                Ok(inputs) => {
                    print!("{}", ecs_operator::explain::render(&inputs));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => match run(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

/// `ecs-operator sweep`: runs a few sweeps and prints the candidates as a table.
async fn sweep(args: SweepArgs) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let cfg = match &args.account {
        None => args.cloud.client_config(),
        Some(name) => account_client_config(&client, &args, name).await?,
    };
    let cloud = EcsClient::new(cfg, None)?;
    let mode = if args.dry_run {
        SweepMode::Report
    } else {
        args.mode
    };
    let identity = identity::resolve(
        &client,
        args.cluster_id.as_deref(),
        mode == SweepMode::Delete,
        5,
    )
    .await?;
    log_identity(&identity);
    let mut tracker = Tracker::default();
    let mut last = Vec::new();
    for i in 0..args.sweeps.max(1) {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(args.interval_secs)).await;
        }
        let (c, actions) = sweeper::sweep_once(
            &client,
            &cloud,
            &mut tracker,
            &identity.id,
            &args.regions,
            Duration::from_secs(args.grace_secs),
            mode,
        )
        .await?;
        for (id, d) in actions {
            println!("deleted? {id}: {}", d.code());
        }
        last = c;
    }
    println!(
        "{:<24} {:<14} {:<10} {:<8} {:<10} {:<38} RESOURCE",
        "INSTANCE-ID", "REGION", "STATUS", "LEAKED-S", "CONFIRMED", "UID"
    );
    for c in &last {
        println!(
            "{:<24} {:<14} {:<10} {:<8} {:<10} {:<38} {}/{}",
            c.instance_id,
            c.region,
            c.status,
            c.leaked_for.as_secs(),
            c.confirmed,
            c.uid,
            c.namespace,
            c.name
        );
    }
    println!(
        "{} candidate(s), {} confirmed",
        last.len(),
        last.iter().filter(|c| c.confirmed).count()
    );
    Ok(())
}

/// Refuses to start against an older EcsInstance CRD (`admission::check_installed`). A read
/// that fails is retried (the API server may be starting), unless it is refused: waiting
/// would not change RBAC.
async fn require_current_crd(client: &kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let crd = loop {
        match api.get(ecs_operator::api::CRD_NAME).await {
            Ok(c) => break c,
            Err(kube::Error::Api(e)) if e.code == 401 || e.code == 403 => {
                return Err(format!("reading the EcsInstance CRD {}: {} (the ClusterRole in deploy/rbac grants get on it)", ecs_operator::api::CRD_NAME, e.message).into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the EcsInstance CRD; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let json = serde_json::to_value(&crd)?;
    ecs_operator::admission::check_installed(&json).map_err(|e| e.into())
}

/// The client settings of an EcsAccount for `ecs-operator sweep --account`: the flags' and
/// environment's settings with the account's key, region and endpoint.
async fn account_client_config(
    client: &kube::Client,
    args: &SweepArgs,
    name: &str,
) -> Result<ecs_operator::cloud::client::ClientConfig, Box<dyn std::error::Error>> {
    use k8s_openapi::api::core::v1::Secret;
    let account = kube::Api::<ecs_operator::api::EcsAccount>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| format!("EcsAccount {name}: {e}"))?;
    let ns = &args.account_secret_namespace;
    let secret_name = &account.spec.secret_ref.name;
    let secret = kube::Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret_name)
        .await
        .map_err(|e| format!("Secret {ns}/{secret_name} of EcsAccount {name}: {e}"))?;
    let credentials = ecs_operator::accounts::secret::credentials(secret.data.as_ref())
        .map_err(|e| format!("Secret {ns}/{secret_name} of EcsAccount {name}: {e}"))?;
    let mut cfg = args.cloud.client_config();
    if let Some(e) = account
        .spec
        .endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        cfg.endpoint = e.trim().to_string();
        cfg.region_endpoints.clear();
    }
    if let Some(r) = &account.spec.region {
        cfg.region = r.clone();
    }
    cfg.credentials = credentials;
    Ok(cfg)
}

fn log_identity(id: &ClusterIdentity) {
    tracing::info!(cluster_id = %id.id, source = id.source.label(), "cluster identity (tag ecs.volcengine.io/cluster)");
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::default());
    let replica = args
        .identity
        .clone()
        .unwrap_or_else(leader::default_identity);
    let mut cloud_cfg = args.cloud.client_config();
    cloud_cfg.caller = args.leader_elect.then(|| replica.clone());
    // Every mutation, from the controller, its batches and the sweeper, passes the gate.
    let gate = MutationGate::default();
    let factory = EcsFactory {
        base: cloud_cfg.clone(),
        metrics: metrics.clone(),
        gate: gate.clone(),
    };
    let observer = AccountObserver {
        account: DEFAULT_ACCOUNT.into(),
        metrics: metrics.clone(),
    };
    let raw: Arc<dyn Cloud> = Arc::new(EcsClient::new(cloud_cfg, Some(Arc::new(observer)))?);
    let cloud: Arc<dyn Cloud> = Arc::new(GatedCloud::new(raw, gate.clone()));
    let kube_config = kube::Config::infer().await?;
    let client =
        ecs_operator::kube_client::limited(kube_config, usize::from(args.kube_api_in_flight))?;
    // Never start with a guessed identity: it decides which VMs the sweeper may delete.
    let sweep_deletes = args.sweep_interval_secs > 0 && args.sweep_mode == SweepMode::Delete;
    let identity =
        identity::resolve(&client, args.cluster_id.as_deref(), sweep_deletes, u32::MAX).await?;
    log_identity(&identity);
    metrics.set_cluster_identity(&identity.id, identity.source.label());
    require_current_crd(&client).await?;
    let (backoff_base, backoff_max) = args.backoff();
    let settings = Settings {
        resync: Duration::from_secs(args.resync_secs.max(1)),
        transition_poll: Duration::from_secs_f64(args.transition_poll_secs.max(0.1)),
        default_policy: args.default_deletion_policy,
        cluster_id: identity.id.clone(),
        concurrency: args.concurrency,
        batch: BatchConfig {
            max_size: usize::from(args.batch_size),
            idle: Duration::from_millis(args.batch_idle_ms),
            stream_idle: Duration::from_millis(args.batch_stream_idle_ms),
            max_linger: Duration::from_millis(args.batch_max_linger_ms),
        },
        backoff_base,
        backoff_max,
        namespaces: ecs_operator::config::watched_namespaces(&args.namespaces),
        recreate_missing: args.on_missing_instance == OnMissing::Recreate,
        appear_window: Duration::from_secs(args.instance_appear_window_secs),
        termination_timeout: Duration::from_secs(args.termination_timeout_secs),
        // Always on: without the namespace watch an `ecs.volcengine.io/account` annotation
        // would go unseen and its resources would act in the default account.
        account_manager: Some(ManagerConfig {
            secret_namespace: args
                .account_secret_namespace
                .clone()
                .unwrap_or_else(|| args.lease_namespace.clone()),
            poll: Duration::from_secs_f64(args.account_secret_poll_secs.max(0.2)),
        }),
    };
    tracing::info!(endpoint = %args.cloud.endpoint, region = %args.cloud.region, namespaces = ?settings.namespaces, "starting ecs-operator");
    let token = CancellationToken::new();
    tokio::spawn(shutdown_signal(token.clone()));
    let ready = Arc::new(AtomicBool::new(false));
    let srv = {
        let t = token.clone();
        tokio::spawn(server::serve(
            args.metrics_addr,
            metrics.clone(),
            ready.clone(),
            async move { t.cancelled().await },
        ))
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            cloud,
            metrics.clone(),
            settings,
            gate.clone(),
        )
        .with_account_factory(Arc::new(factory)),
    );
    let sweeper = (args.sweep_interval_secs > 0).then(|| {
        let (client, accounts, metrics) = (client.clone(), ctx.accounts.clone(), metrics.clone());
        let cfg = sweeper::PeriodicConfig {
            cluster_id: identity.id.clone(),
            summary_namespace: args.lease_namespace.clone(),
            interval: Duration::from_secs(args.sweep_interval_secs),
            grace: Duration::from_secs(args.sweep_grace_secs),
            mode: args.sweep_mode,
            regions: args.sweep_regions.clone(),
        };
        move |stop: CancellationToken| {
            tokio::spawn(sweeper::run_periodic(client, accounts, metrics, cfg, stop))
        }
    });
    let result = if args.leader_elect {
        let cfg = LeaderConfig {
            lease_name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: replica,
            duration_secs: args.lease_duration_secs,
        };
        // A standby replica is ready: it serves probes and waits for the Lease.
        let standby_ready = ready.clone();
        let cache_ready = Arc::new(AtomicBool::new(false));
        let leading = metrics.clone();
        leader::run_as_leader(
            client,
            cfg,
            token.clone(),
            gate,
            move || standby_ready.store(true, Ordering::SeqCst),
            |stop| {
                leading.leader.set(1);
                if let Some(start) = sweeper {
                    start(stop.clone());
                }
                controller::run(ctx, async move { stop.cancelled().await }, cache_ready)
            },
        )
        .await
        .map_err(|e| e.into())
    } else {
        metrics.leader.set(1);
        if let Some(start) = sweeper {
            start(token.clone());
        }
        let t = token.clone();
        controller::run(ctx, async move { t.cancelled().await }, ready).await;
        Ok(())
    };
    token.cancel();
    match srv.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server"),
        Err(e) => tracing::warn!(error = %e, "admin server task"),
        Ok(Ok(())) => {}
    }
    tracing::info!("stopped");
    result
}
