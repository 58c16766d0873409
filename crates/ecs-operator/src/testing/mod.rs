//! Test doubles for the controller's two boundaries, and the real `Context` built on them:
//! `FakeCloud` (the `Cloud` trait in memory, scripted), `FakeKube` (an in-memory Kubernetes
//! API under a real `kube::Client`), and `clock` (wall-clock time that follows tokio's
//! paused clock). Compiled for unit tests and with the `testing` feature (the simulation,
//! tests/simulation.rs); never in the operator binary.

pub mod clock;
pub mod cloud;
pub mod kube;

use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::controller::Action;

pub use self::cloud::{FakeCloud, Fault, Vm};
pub use self::kube::FakeKube;
use crate::api::{DeletionPolicy, EcsInstance};
use crate::cloud::gated::{GatedCloud, MutationGate};
use crate::cloud::Cloud;
use crate::controller::batch::BatchConfig;
use crate::controller::{reconcile, Context, Settings};
use crate::metrics::Metrics;

pub const REGION: &str = "cn-beijing";
pub const CLUSTER: &str = "sim-cluster";

/// The operator's defaults, as `ecs-operator run` has them.
pub fn settings() -> Settings {
    Settings {
        resync: Duration::from_secs(300),
        transition_poll: Duration::from_secs(5),
        default_policy: DeletionPolicy::Delete,
        cluster_id: CLUSTER.into(),
        concurrency: 4,
        batch: BatchConfig::default(),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
        namespaces: Vec::new(),
        recreate_missing: false,
        appear_window: Duration::from_secs(600),
        termination_timeout: Duration::from_secs(1800),
        account_manager: None,
    }
}

/// The real `Context` on the fakes, its cloud behind a mutation gate as in `main`. Needs a
/// tokio runtime (the batchers and the client's buffer are tasks).
pub fn context(kube: &FakeKube, cloud: Arc<FakeCloud>, settings: Settings) -> Arc<Context> {
    let gate = MutationGate::default();
    let raw: Arc<dyn Cloud> = cloud;
    let gated: Arc<dyn Cloud> = Arc::new(GatedCloud::new(raw, gate.clone()));
    Arc::new(Context::new(
        kube.client(),
        gated,
        Arc::new(Metrics::default()),
        settings,
        gate,
    ))
}

/// One reconcile of the resource as the store has it now; `None` when it is gone.
pub async fn reconcile_now(
    ctx: &Arc<Context>,
    kube: &FakeKube,
    ns: &str,
    name: &str,
) -> Option<Result<Action, crate::Error>> {
    let obj = kube.get(ns, name)?;
    Some(reconcile::reconcile(Arc::new(obj), ctx.clone()).await)
}

/// The reason of a condition of the stored resource.
pub fn reason(obj: &EcsInstance, type_: &str) -> Option<String> {
    obj.condition(type_).map(|c| c.reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EcsInstanceSpec, FINALIZER};
    use crate::cloud::model::Action as CloudAction;
    use crate::controller::cleanup::delete_token;

    const NS: &str = "team";

    /// The policy read of a namespace marks it terminating (its deletions come as a wave and
    /// its Events are skipped), and a later read of a live namespace of that name (deleted
    /// and recreated within the mark's TTL) or of none clears the mark.
    #[tokio::test]
    async fn a_namespace_read_marks_and_clears_terminating() {
        use crate::controller::batch::Pace;
        let kube = FakeKube::new();
        kube.create_namespace(NS, &[]);
        let ctx = context(&kube, Arc::new(FakeCloud::new("cn-beijing")), settings());
        ctx.namespace_annotation(NS).await;
        assert_eq!(ctx.pace_of(NS), Pace::Unknown);
        let spec = EcsInstanceSpec {
            instance_id: Some("i-1".into()),
            ..Default::default()
        };
        kube.create_instance(NS, "vm", spec).unwrap();
        kube.edit(NS, "vm", |o| {
            o.metadata.finalizers = Some(vec![FINALIZER.into()])
        });
        kube.delete_namespace(NS);
        assert!(kube.namespace_terminating(NS));
        ctx.namespace_annotation(NS).await;
        assert!(ctx.is_terminating(NS));
        assert_eq!(ctx.pace_of(NS), Pace::Wave);
        kube.state().namespaces.remove(NS);
        kube.create_namespace(NS, &[]);
        ctx.namespace_annotation(NS).await;
        assert!(
            !ctx.is_terminating(NS),
            "recreated: Events there must not be skipped"
        );
        ctx.mark_terminating(NS);
        kube.state().namespaces.remove(NS);
        ctx.namespace_annotation(NS).await;
        assert!(!ctx.is_terminating(NS), "gone: the mark goes too");
    }

    /// A namespace, a running VM, and an EcsInstance that adopted it and is Ready.
    async fn adopted(
        policy: Option<DeletionPolicy>,
    ) -> (FakeKube, Arc<FakeCloud>, Arc<Context>, String) {
        let kube = FakeKube::new();
        kube.create_namespace(NS, &[]);
        let cloud = Arc::new(FakeCloud::new(REGION));
        cloud.add_vm(Vm::running("i-aaaa"));
        let ctx = context(&kube, cloud.clone(), settings());
        let spec = EcsInstanceSpec {
            instance_id: Some("i-aaaa".into()),
            deletion_policy: policy,
            ..Default::default()
        };
        let uid = kube.create_instance(NS, "vm", spec).unwrap();
        // Finalizer, claim, observe.
        for _ in 0..3 {
            reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        }
        let obj = kube.get(NS, "vm").unwrap();
        assert_eq!(
            obj.metadata.finalizers.as_deref(),
            Some(&[FINALIZER.to_string()][..])
        );
        assert_eq!(reason(&obj, "Ready").as_deref(), Some("InstanceRunning"));
        assert_eq!(
            cloud.vm("i-aaaa").unwrap().tag("ecs.volcengine.io/uid"),
            Some(&*uid)
        );
        (kube, cloud, ctx, uid)
    }

    fn delete_calls(cloud: &FakeCloud) -> Vec<String> {
        let st = cloud.state();
        st.calls_of(CloudAction::DeleteInstances)
            .filter_map(|c| c.token.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn delete_policy_deletes_the_vm_then_releases_the_resource() {
        let (kube, cloud, ctx, uid) = adopted(None).await;
        kube.delete_instance(NS, "vm");
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        assert!(
            kube.get(NS, "vm").is_none(),
            "finalizer released, object gone"
        );
        assert_eq!(cloud.vm("i-aaaa").unwrap().status, "DELETING");
        assert_eq!(delete_calls(&cloud), [delete_token(&uid, 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_vm_keeps_the_finalizer_and_the_next_attempt_has_a_new_token() {
        let (kube, cloud, ctx, uid) = adopted(None).await;
        cloud.state().vms.get_mut("i-aaaa").unwrap().status = "STOPPING".into();
        kube.delete_instance(NS, "vm");
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        let obj = kube.get(NS, "vm").expect("kept while the VM is busy");
        assert!(crate::controller::finalizer::has_finalizer(&obj));
        assert_eq!(obj.deletion_attempt(), 1);
        assert_eq!(reason(&obj, "Synced").as_deref(), Some("DeletionPending"));
        assert!(cloud.state().deletions.is_empty());

        cloud.state().vms.get_mut("i-aaaa").unwrap().status = "STOPPED".into();
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        assert!(kube.get(NS, "vm").is_none());
        assert_eq!(
            delete_calls(&cloud),
            [delete_token(&uid, 0), delete_token(&uid, 1)]
        );
        assert_eq!(cloud.state().deletions.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_namespace_keeps_the_vm_until_it_can_be_read() {
        let (kube, cloud, ctx, _) = adopted(None).await;
        kube.state().namespace_faults.insert(NS.into(), 403);
        kube.delete_instance(NS, "vm");
        for _ in 0..3 {
            reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        }
        let obj = kube
            .get(NS, "vm")
            .expect("kept while the policy is unknown");
        assert_eq!(
            reason(&obj, "Synced").as_deref(),
            Some("NamespaceUnreadable")
        );
        assert!(delete_calls(&cloud).is_empty());
        assert_eq!(cloud.vm("i-aaaa").unwrap().status, "RUNNING");

        kube.state().namespace_faults.clear();
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        assert!(kube.get(NS, "vm").is_none());
        assert_eq!(cloud.state().deletions.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn orphan_untags_and_releases_without_deleting() {
        let (kube, cloud, ctx, _) = adopted(Some(DeletionPolicy::Orphan)).await;
        kube.delete_instance(NS, "vm");
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        assert!(kube.get(NS, "vm").is_none());
        let vm = cloud.vm("i-aaaa").unwrap();
        assert_eq!(
            (vm.status.as_str(), vm.tag("ecs.volcengine.io/uid")),
            ("RUNNING", None)
        );
        assert!(delete_calls(&cloud).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_delete_answer_is_retried_with_the_same_token_and_deletes_once() {
        let (kube, cloud, ctx, uid) = adopted(None).await;
        cloud.fail_next(Some(CloudAction::DeleteInstances), Fault::LostAnswer);
        kube.delete_instance(NS, "vm");
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        let obj = kube
            .get(NS, "vm")
            .expect("an unknown answer keeps the finalizer");
        assert_eq!(obj.deletion_attempt(), 0);
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        assert!(kube.get(NS, "vm").is_none());
        assert_eq!(
            delete_calls(&cloud),
            [delete_token(&uid, 0), delete_token(&uid, 0)]
        );
        assert_eq!(cloud.state().deletions.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_status_write_creates_no_vm() {
        let kube = FakeKube::new();
        kube.create_namespace(NS, &[]);
        let cloud = Arc::new(FakeCloud::new(REGION));
        let ctx = context(&kube, cloud.clone(), settings());
        let spec = EcsInstanceSpec {
            create: Some(crate::api::CreateSpec {
                zone_id: "cn-beijing-a".into(),
                image_id: "image-1".into(),
                instance_type_id: "ecs.g1.large".into(),
                subnet_id: "subnet-1".into(),
                security_group_ids: vec!["sg-1".into()],
                system_volume: Some(crate::api::VolumeSpec {
                    volume_type: None,
                    size: 40,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        kube.create_instance(NS, "vm", spec).unwrap();
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        let stale = kube.get(NS, "vm").unwrap();
        kube.edit(NS, "vm", |o| o.spec.deletion_protection = Some(false));
        let r = reconcile::reconcile(Arc::new(stale), ctx.clone()).await;
        assert!(matches!(r, Err(crate::Error::Stale)), "{r:?}");
        assert_eq!(cloud.state().calls_of(CloudAction::RunInstances).count(), 0);
        reconcile_now(&ctx, &kube, NS, "vm").await.unwrap().unwrap();
        assert_eq!(cloud.state().vms.len(), 1);
    }

    /// Two accounts on two fake clouds, resources in three namespaces: each resource's calls
    /// go to its own account's cloud only (team a by spec.accountRef, team b by the namespace
    /// annotation), a namespace the account does not allow makes no call anywhere, the
    /// default account's cloud sees nothing, and a deletion of everything sends each VM's
    /// DeleteInstances to its own account only.
    #[tokio::test(start_paused = true)]
    async fn each_account_sees_only_its_own_resources_calls() {
        use crate::accounts::registry::AccountCloud;
        use crate::accounts::{AccountName, AccountView};
        use crate::api::{AccountRef, AllowedNamespaces, NAMESPACE_ACCOUNT_ANNOTATION};
        let kube = FakeKube::new();
        kube.create_namespace("ns-a", &[]);
        kube.create_namespace("ns-b", &[(NAMESPACE_ACCOUNT_ANNOTATION, "team-b")]);
        kube.create_namespace("ns-c", &[]);
        let default = Arc::new(FakeCloud::new(REGION));
        let a = Arc::new(FakeCloud::new(REGION));
        let b = Arc::new(FakeCloud::new(REGION));
        let ctx = context(&kube, default.clone(), settings());
        ctx.accounts.read_namespaces_from(kube.client());
        for (name, cloud, ns) in [("team-a", &a, "ns-a"), ("team-b", &b, "ns-b")] {
            let raw: Arc<dyn Cloud> = cloud.clone();
            let acct = AccountCloud::new(
                AccountName::Named(name.into()),
                raw,
                ctx.settings.batch,
                &ctx.metrics,
                None,
            );
            let view = AccountView {
                allowed: AllowedNamespaces {
                    names: vec![ns.into()],
                    selector: None,
                },
                usable: Ok(()),
                deleting: false,
            };
            ctx.accounts.set(name, view, Some(Arc::new(acct)));
        }
        ctx.accounts.mark_synced();
        kube.create_account("team-a");
        kube.create_account("team-b");
        let spec = |id: &str, account: Option<&str>| EcsInstanceSpec {
            instance_id: Some(id.into()),
            account_ref: account.map(|n| AccountRef { name: n.into() }),
            ..Default::default()
        };
        let mut all = Vec::new();
        for i in 0..4 {
            let (ida, idb) = (format!("i-a{i}"), format!("i-b{i}"));
            a.add_vm(Vm::running(&ida));
            b.add_vm(Vm::running(&idb));
            kube.create_instance("ns-a", &format!("a{i}"), spec(&ida, Some("team-a")))
                .unwrap();
            kube.create_instance("ns-b", &format!("b{i}"), spec(&idb, None))
                .unwrap();
            all.push(("ns-a", format!("a{i}")));
            all.push(("ns-b", format!("b{i}")));
        }
        // Namespace c names team a's account, which does not allow it.
        a.add_vm(Vm::running("i-a9"));
        kube.create_instance("ns-c", "c", spec("i-a9", Some("team-a")))
            .unwrap();
        all.push(("ns-c", "c".to_string()));
        for _ in 0..3 {
            for (ns, n) in &all {
                reconcile_now(&ctx, &kube, ns, n).await.unwrap().unwrap();
            }
        }
        for (ns, n) in &all[..8] {
            let o = kube.get(ns, n).unwrap();
            let want = if *ns == "ns-a" { "team-a" } else { "team-b" };
            assert_eq!(
                o.status.as_ref().unwrap().account.as_deref(),
                Some(want),
                "{n}: {:?}",
                o.status
            );
            assert_eq!(
                reason(&o, "Ready").as_deref(),
                Some("InstanceRunning"),
                "{n}"
            );
        }
        let c = kube.get("ns-c", "c").unwrap();
        assert_eq!(reason(&c, "Synced").as_deref(), Some("AccountNotAllowed"));
        let names = |cloud: &FakeCloud, id: &str| {
            cloud
                .state()
                .calls
                .iter()
                .filter(|call| call.params.iter().any(|(_, v)| v == id))
                .count()
        };
        assert_eq!(names(&a, "i-a9"), 0, "a refused resource made a call");
        assert!(
            default.state().calls.is_empty(),
            "the default account was used"
        );
        for i in 0..4 {
            assert_eq!(names(&b, &format!("i-a{i}")), 0);
            assert_eq!(names(&a, &format!("i-b{i}")), 0);
        }

        for (ns, n) in &all {
            kube.delete_instance(ns, n);
        }
        for _ in 0..3 {
            for (ns, n) in &all {
                if let Some(r) = reconcile_now(&ctx, &kube, ns, n).await {
                    r.unwrap();
                }
            }
        }
        for (ns, n) in &all {
            assert!(kube.get(ns, n).is_none(), "{ns}/{n} released");
        }
        let deleted = |cloud: &FakeCloud| {
            let mut v: Vec<String> = cloud
                .state()
                .calls_of(CloudAction::DeleteInstances)
                .flat_map(|c| {
                    c.params
                        .iter()
                        .filter(|(k, _)| k.starts_with("InstanceIds"))
                        .map(|(_, v)| v.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(deleted(&a), ["i-a0", "i-a1", "i-a2", "i-a3"]);
        assert_eq!(deleted(&b), ["i-b0", "i-b1", "i-b2", "i-b3"]);
        assert_eq!(a.vm("i-a9").unwrap().status, "RUNNING");
        assert!(default.state().calls.is_empty());
    }
}
