//! `FakeCloud`: the `Cloud` trait in memory, with the ECS semantics the controller relies on
//! (shared/volcengine/API.md; the emulator, `src/emulator/actions.rs`, is the reference):
//! per-ID `OperationDetails`, ClientToken idempotency, tags, deletion protection, prepaid
//! terms, transitional states, visibility lag, and scripted faults. Every call is recorded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::cloud::model::{Action, OperationError, Tag};
use crate::cloud::{
    Called, Cloud, CloudError, CloudFuture, DescribeInstancesResult, DescribeQuery, Instance,
    OperationDetail, RunInstancesRequest,
};

pub const NOT_FOUND: &str = "InvalidInstance.NotFound";
pub const BAD_STATUS: &str = "InvalidInstanceStatus";
pub const PROTECTED: &str = "OperationDenied.DeletionProtection";
pub const PREPAID: &str = "InvalidChargeType";
pub const MISMATCH: &str = "IdempotentParameterMismatch";

/// A VM of the fake cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub id: String,
    /// RUNNING, STOPPED, ERROR (deletable), STOPPING, STARTING, ... (transitional:
    /// `InvalidInstanceStatus`), DELETING (accepted; gone at the next `terminate`).
    pub status: String,
    pub tags: Vec<Tag>,
    pub deletion_protection: bool,
    /// A PrePaid term not yet expired: DeleteInstances refuses it.
    pub prepaid: bool,
    /// Visibility lag: the next `hidden_for` calls that would see it (DescribeInstances, and
    /// DeleteInstances by ID) do not.
    pub hidden_for: u32,
    /// Name, description and instance type (the fields in-place updates change).
    pub attrs: VmAttrs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmAttrs {
    pub name: Option<String>,
    pub description: Option<String>,
    pub instance_type: Option<String>,
}

impl Vm {
    pub fn running(id: &str) -> Self {
        Self {
            id: id.to_string(),
            status: "RUNNING".into(),
            tags: Vec::new(),
            deletion_protection: false,
            prepaid: false,
            hidden_for: 0,
            attrs: VmAttrs::default(),
        }
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }

    fn instance(&self) -> Instance {
        Instance {
            instance_id: self.id.clone(),
            status: self.status.clone(),
            tags: self.tags.clone(),
            deletion_protection: Some(self.deletion_protection),
            instance_charge_type: Some(if self.prepaid { "PrePaid" } else { "PostPaid" }.into()),
            instance_name: self.attrs.name.clone(),
            description: self.attrs.description.clone(),
            instance_type_id: self.attrs.instance_type.clone(),
            ..Default::default()
        }
    }
}

/// A scripted fault for the next matching call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 InternalError; nothing applied.
    ServerError,
    /// HTTP 429 FlowLimitExceeded; nothing applied.
    Throttled,
    /// Applied (and recorded under its ClientToken), but the caller gets a timeout.
    LostAnswer,
    /// HTTP 400 with this code; nothing applied.
    Refused(String),
}

/// One call as the cloud saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub action: Action,
    pub params: Vec<(String, String)>,
    pub token: Option<String>,
    /// "OK", or the error code the caller got (call level).
    pub result: String,
}

/// A deletion the cloud accepted, with the VM's tags at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub instance_id: String,
    pub token: String,
    pub tags: Vec<Tag>,
    /// Index of the DeleteInstances call in `calls`.
    pub call: usize,
}

/// A call's parameters (without its ClientToken), as the token check compares them.
type Params = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Recorded {
    Run(Vec<String>),
    Delete(Vec<OperationDetail>),
}

#[derive(Debug, Default)]
pub struct CloudState {
    pub vms: BTreeMap<String, Vm>,
    pub calls: Vec<Call>,
    pub deletions: Vec<Deletion>,
    /// Faults for the next calls: the first whose action matches (`None`: any) is used.
    pub faults: VecDeque<(Option<Action>, Fault)>,
    /// Visibility lag of the next VMs RunInstances makes.
    pub lag_new_vms: u32,
    /// DescribeInstances answers at most this many instances a page (with a NextToken),
    /// whatever MaxResults asked. None: one page.
    pub describe_page: Option<usize>,
    /// DeleteInstances tokens whose answer said NotFound for a VM that exists but was not
    /// visible yet (the answer a retry with the same token replays).
    pub not_found_while_lagging: Vec<String>,
    tokens: BTreeMap<(&'static str, String), (Params, Recorded)>,
    next_id: u64,
    requests: u64,
}

impl CloudState {
    /// Calls answered `IdempotentParameterMismatch`: a token re-used with other parameters.
    pub fn mismatches(&self) -> usize {
        self.calls.iter().filter(|c| c.result == MISMATCH).count()
    }

    pub fn calls_of(&self, action: Action) -> impl Iterator<Item = &Call> {
        self.calls.iter().filter(move |c| c.action == action)
    }

    fn take_fault(&mut self, action: Action) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|(a, _)| a.is_none_or(|a| a == action))?;
        self.faults.remove(i).map(|(_, f)| f)
    }

    fn request_id(&mut self) -> String {
        self.requests += 1;
        format!("req-{}", self.requests)
    }

    /// A visible VM: a lagging one uses up one of its invisible calls instead.
    fn visible(&mut self, id: &str) -> Option<&mut Vm> {
        let vm = self.vms.get_mut(id)?;
        if vm.hidden_for > 0 {
            vm.hidden_for -= 1;
            return None;
        }
        Some(vm)
    }

    fn delete_one(&mut self, id: &str, token: &str, call: usize) -> Option<OperationError> {
        let err = |code: &str| {
            Some(OperationError {
                code: code.into(),
                message: format!("fake: {code}"),
            })
        };
        let exists = self.vms.contains_key(id);
        let Some(vm) = self.visible(id) else {
            if exists {
                self.not_found_while_lagging.push(token.to_string());
            }
            return err(NOT_FOUND);
        };
        if !matches!(vm.status.as_str(), "RUNNING" | "STOPPED" | "ERROR") {
            return err(BAD_STATUS);
        }
        if vm.deletion_protection {
            return err(PROTECTED);
        }
        if vm.prepaid {
            return err(PREPAID);
        }
        vm.status = "DELETING".into();
        let tags = vm.tags.clone();
        self.deletions.push(Deletion {
            instance_id: id.to_string(),
            token: token.to_string(),
            tags,
            call,
        });
        None
    }
}

/// The fake cloud. Cheap to share (`Arc<FakeCloud>` as `Arc<dyn Cloud>`).
pub struct FakeCloud {
    region: String,
    state: Mutex<CloudState>,
}

fn api_error(action: Action, status: u16, code: &str) -> CloudError {
    CloudError::Api {
        action,
        code: code.into(),
        code_n: None,
        message: format!("fake: {code}"),
        status,
        request_id: "req-fault".into(),
    }
}

impl FakeCloud {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_string(),
            state: Mutex::new(CloudState::default()),
        }
    }

    /// The state, to script and to inspect.
    pub fn state(&self) -> MutexGuard<'_, CloudState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn add_vm(&self, vm: Vm) {
        self.state().vms.insert(vm.id.clone(), vm);
    }

    pub fn vm(&self, id: &str) -> Option<Vm> {
        self.state().vms.get(id).cloned()
    }

    pub fn fail_next(&self, action: Option<Action>, fault: Fault) {
        self.state().faults.push_back((action, fault));
    }

    /// DELETING VMs finish terminating and are gone.
    pub fn terminate(&self) {
        self.state().vms.retain(|_, v| v.status != "DELETING");
    }

    /// The common path of every call: scripted faults, the ClientToken check (replay or
    /// mismatch), execution, recording. `record` / `replay` convert the answer for the
    /// token store (only answers carrying a token are recorded).
    fn call<T>(
        &self,
        action: Action,
        params: Vec<(String, String)>,
        token: Option<String>,
        exec: impl FnOnce(&mut CloudState, usize) -> Result<T, CloudError>,
        record: impl FnOnce(&T) -> Option<Recorded>,
        replay: impl FnOnce(Recorded) -> Option<T>,
    ) -> Result<Called<T>, CloudError> {
        let mut st = self.state();
        let index = st.calls.len();
        let log = |st: &mut CloudState, result: &str| {
            st.calls.push(Call {
                action,
                params: params.clone(),
                token: token.clone(),
                result: result.to_string(),
            })
        };
        let fault = st.take_fault(action);
        let refused = match &fault {
            Some(Fault::ServerError) => Some(api_error(action, 500, "InternalError")),
            Some(Fault::Throttled) => Some(api_error(action, 429, "FlowLimitExceeded")),
            Some(Fault::Refused(code)) => Some(api_error(action, 400, code)),
            Some(Fault::LostAnswer) | None => None,
        };
        if let Some(e) = refused {
            log(&mut st, e.code());
            return Err(e);
        }
        let recorded = token
            .as_ref()
            .and_then(|t| st.tokens.get(&(action.as_str(), t.clone())).cloned());
        let value = match recorded {
            Some((p, _)) if p != params => {
                log(&mut st, MISMATCH);
                return Err(api_error(action, 400, MISMATCH));
            }
            Some((_, r)) => match replay(r) {
                Some(v) => v,
                None => {
                    log(&mut st, MISMATCH);
                    return Err(api_error(action, 400, MISMATCH));
                }
            },
            None => {
                // Logged before executing, so a deletion can name its call.
                log(&mut st, "OK");
                let v = match exec(&mut st, index) {
                    Ok(v) => v,
                    Err(e) => {
                        st.calls[index].result = e.code().to_string();
                        return Err(e);
                    }
                };
                if let (Some(t), Some(r)) = (&token, record(&v)) {
                    st.tokens
                        .insert((action.as_str(), t.clone()), (params.clone(), r));
                }
                if fault == Some(Fault::LostAnswer) {
                    st.calls[index].result = "Timeout".into();
                    return Err(lost(action));
                }
                return Ok(Called {
                    request_id: st.request_id(),
                    value: v,
                });
            }
        };
        log(&mut st, if fault.is_some() { "Timeout" } else { "OK" });
        if fault == Some(Fault::LostAnswer) {
            return Err(lost(action));
        }
        Ok(Called {
            request_id: st.request_id(),
            value,
        })
    }
}

impl FakeCloud {
    /// Stop or start: per ID, `from` -> `to`, else an `InvalidInstanceStatus` detail.
    fn power<'a>(
        &'a self,
        action: Action,
        instance_ids: Vec<String>,
        client_token: String,
        from: &'static str,
        to: &'static str,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        let mut p = crate::cloud::model::Params::new();
        p.list("InstanceIds", &instance_ids);
        let exec = |st: &mut CloudState, _: usize| {
            let details = instance_ids
                .iter()
                .map(|id| {
                    let error = match st.visible(id) {
                        Some(vm) if vm.status == from => {
                            vm.status = to.to_string();
                            None
                        }
                        Some(_) => Some(BAD_STATUS),
                        None => Some(NOT_FOUND),
                    };
                    OperationDetail {
                        instance_id: id.clone(),
                        error: error.map(|code| OperationError {
                            code: code.to_string(),
                            message: code.to_string(),
                        }),
                    }
                })
                .collect();
            Ok(details)
        };
        let token = Some(client_token);
        ready(self.call(action, p.into_vec(), token, exec, |_| None, |_| None))
    }
}

fn lost(action: Action) -> CloudError {
    CloudError::Timeout {
        action,
        after: Duration::from_secs(10),
    }
}

fn ready<'a, T: Send + 'a>(r: Result<Called<T>, CloudError>) -> CloudFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

impl Cloud for FakeCloud {
    fn default_region(&self) -> &str {
        &self.region
    }

    fn describe_instances<'a>(
        &'a self,
        _region: &'a str,
        query: DescribeQuery,
    ) -> CloudFuture<'a, DescribeInstancesResult> {
        let params = query.to_params().into_vec();
        let exec = |st: &mut CloudState, _: usize| {
            let ids: Vec<String> = st.vms.keys().cloned().collect();
            let mut out = Vec::new();
            for id in ids {
                let Some(vm) = st.vms.get(&id) else { continue };
                let named = query.instance_ids.is_empty() || query.instance_ids.contains(&id);
                let tagged = query
                    .tag_filters
                    .iter()
                    .all(|(k, vals)| vm.tag(k).is_some_and(|v| vals.iter().any(|x| x == v)));
                if named && tagged {
                    if let Some(vm) = st.visible(&id) {
                        out.push(vm.instance());
                    }
                }
            }
            let total = out.len();
            let (out, next_token) = match st.describe_page {
                None => (out, None),
                Some(n) => {
                    let start: usize = query
                        .next_token
                        .as_deref()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let end = (start + n.max(1)).min(total);
                    let page = out.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
                    (page, (end < total).then(|| end.to_string()))
                }
            };
            Ok(DescribeInstancesResult {
                total_count: Some(total as i64),
                instances: out,
                next_token,
            })
        };
        ready(self.call(
            Action::DescribeInstances,
            params,
            None,
            exec,
            |_| None,
            |_| None,
        ))
    }

    fn delete_instances<'a>(
        &'a self,
        _region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        let mut p = crate::cloud::model::Params::new();
        p.list("InstanceIds", &instance_ids);
        let token = client_token.clone();
        let exec = move |st: &mut CloudState, call: usize| {
            Ok(instance_ids
                .iter()
                .map(|id| OperationDetail {
                    instance_id: id.clone(),
                    error: st.delete_one(id, &token, call),
                })
                .collect::<Vec<_>>())
        };
        ready(self.call(
            Action::DeleteInstances,
            p.into_vec(),
            Some(client_token),
            exec,
            |v| Some(Recorded::Delete(v.clone())),
            |r| match r {
                Recorded::Delete(v) => Some(v),
                Recorded::Run(_) => None,
            },
        ))
    }

    fn run_instances<'a>(
        &'a self,
        _region: &'a str,
        req: RunInstancesRequest,
    ) -> CloudFuture<'a, Vec<String>> {
        let mut params = req.to_params().into_vec();
        params.retain(|(k, _)| k != "ClientToken");
        let exec = |st: &mut CloudState, _: usize| {
            st.next_id += 1;
            let id = format!("i-fake{:06}", st.next_id);
            st.vms.insert(
                id.clone(),
                Vm {
                    id: id.clone(),
                    status: "RUNNING".into(),
                    tags: req.tags.clone(),
                    deletion_protection: req.deletion_protection.unwrap_or(false),
                    prepaid: req.instance_charge_type.as_deref() == Some("PrePaid"),
                    hidden_for: st.lag_new_vms,
                    attrs: VmAttrs {
                        name: Some(req.instance_name.clone()),
                        description: req.description.clone(),
                        instance_type: Some(req.instance_type_id.clone()),
                    },
                },
            );
            Ok(vec![id])
        };
        ready(self.call(
            Action::RunInstances,
            params,
            Some(req.client_token.clone()),
            exec,
            |v| Some(Recorded::Run(v.clone())),
            |r| match r {
                Recorded::Run(v) => Some(v),
                Recorded::Delete(_) => None,
            },
        ))
    }

    fn set_deletion_protection<'a>(
        &'a self,
        _region: &'a str,
        instance_id: String,
        enabled: bool,
    ) -> CloudFuture<'a, ()> {
        let params = vec![
            ("InstanceId".to_string(), instance_id.clone()),
            ("DeletionProtection".to_string(), enabled.to_string()),
        ];
        let action = Action::ModifyInstanceAttribute;
        let exec = |st: &mut CloudState, _: usize| match st.visible(&instance_id) {
            Some(vm) => {
                vm.deletion_protection = enabled;
                Ok(())
            }
            None => Err(api_error(action, 404, NOT_FOUND)),
        };
        ready(self.call(action, params, None, exec, |_| None, |_| None))
    }

    fn modify_instance_attribute<'a>(
        &'a self,
        _region: &'a str,
        instance_id: String,
        name: Option<String>,
        description: Option<String>,
        client_token: String,
    ) -> CloudFuture<'a, ()> {
        let mut p = crate::cloud::model::Params::new();
        p.set("InstanceId", &instance_id);
        if let Some(n) = &name {
            p.set("InstanceName", n);
        }
        if let Some(d) = &description {
            p.set("Description", d);
        }
        let action = Action::ModifyInstanceAttribute;
        let exec = |st: &mut CloudState, _: usize| match st.visible(&instance_id) {
            Some(vm) => {
                if let Some(n) = name {
                    vm.attrs.name = Some(n);
                }
                if let Some(d) = description {
                    vm.attrs.description = Some(d);
                }
                Ok(())
            }
            None => Err(api_error(action, 404, NOT_FOUND)),
        };
        let token = Some(client_token);
        ready(self.call(action, p.into_vec(), token, exec, |_| None, |_| None))
    }

    /// The VM must be STOPPED (as the emulator, after Terraform's stop-first sequence).
    fn modify_instance_spec<'a>(
        &'a self,
        _region: &'a str,
        instance_id: String,
        instance_type_id: String,
        client_token: String,
    ) -> CloudFuture<'a, String> {
        let params = vec![
            ("InstanceId".to_string(), instance_id.clone()),
            ("InstanceTypeId".to_string(), instance_type_id.clone()),
        ];
        let action = Action::ModifyInstanceSpec;
        let exec = |st: &mut CloudState, _: usize| match st.visible(&instance_id) {
            Some(vm) if vm.status == "STOPPED" => {
                vm.attrs.instance_type = Some(instance_type_id);
                Ok("order-fake".to_string())
            }
            Some(_) => Err(api_error(action, 400, BAD_STATUS)),
            None => Err(api_error(action, 404, NOT_FOUND)),
        };
        let token = Some(client_token);
        ready(self.call(action, params, token, exec, |_| None, |_| None))
    }

    /// RUNNING -> STOPPED at once (a fake has no clock); otherwise `InvalidInstanceStatus`.
    fn stop_instances<'a>(
        &'a self,
        _region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        self.power(
            Action::StopInstances,
            instance_ids,
            client_token,
            "RUNNING",
            "STOPPED",
        )
    }

    fn start_instances<'a>(
        &'a self,
        _region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        self.power(
            Action::StartInstances,
            instance_ids,
            client_token,
            "STOPPED",
            "RUNNING",
        )
    }

    fn untag_instances<'a>(
        &'a self,
        _region: &'a str,
        instance_ids: Vec<String>,
        tag_keys: Vec<String>,
    ) -> CloudFuture<'a, ()> {
        let mut p = crate::cloud::model::Params::new();
        p.list("ResourceIds", &instance_ids)
            .list("TagKeys", &tag_keys);
        let action = Action::UntagResources;
        let exec = |st: &mut CloudState, _: usize| {
            for id in &instance_ids {
                let Some(vm) = st.visible(id) else {
                    return Err(api_error(action, 404, NOT_FOUND));
                };
                vm.tags.retain(|t| !tag_keys.contains(&t.key));
            }
            Ok(())
        };
        ready(self.call(action, p.into_vec(), None, exec, |_| None, |_| None))
    }

    fn tag_instances<'a>(
        &'a self,
        _region: &'a str,
        instance_ids: Vec<String>,
        tags: Vec<Tag>,
    ) -> CloudFuture<'a, ()> {
        let mut p = crate::cloud::model::Params::new();
        p.list("ResourceIds", &instance_ids);
        for (i, t) in tags.iter().enumerate() {
            p.set(format!("Tags.{}.Key", i + 1), &t.key)
                .set(format!("Tags.{}.Value", i + 1), &t.value);
        }
        let action = Action::TagResources;
        let exec = |st: &mut CloudState, _: usize| {
            for id in &instance_ids {
                let Some(vm) = st.visible(id) else {
                    return Err(api_error(action, 404, NOT_FOUND));
                };
                for t in &tags {
                    vm.tags.retain(|x| x.key != t.key);
                    vm.tags.push(t.clone());
                }
            }
            Ok(())
        };
        ready(self.call(action, p.into_vec(), None, exec, |_| None, |_| None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> FakeCloud {
        let c = FakeCloud::new("cn-beijing");
        c.add_vm(Vm::running("i-aaaa"));
        c.add_vm(Vm::running("i-bbbb"));
        c
    }

    #[tokio::test]
    async fn a_token_replays_its_answer_and_refuses_other_parameters() {
        let c = cloud();
        let first = c
            .delete_instances("r", vec!["i-aaaa".into()], "t1".into())
            .await
            .unwrap();
        assert!(first.value[0].error.is_none());
        // Replayed, not executed again (the VM is DELETING now, which would be refused).
        let again = c
            .delete_instances("r", vec!["i-aaaa".into()], "t1".into())
            .await
            .unwrap();
        assert_eq!(again.value, first.value);
        let other = c
            .delete_instances("r", vec!["i-bbbb".into()], "t1".into())
            .await
            .unwrap_err();
        assert_eq!(other.code(), MISMATCH);
        let st = c.state();
        assert_eq!((st.deletions.len(), st.mismatches()), (1, 1));
        assert_eq!(c_vm_status(&st, "i-bbbb"), "RUNNING");
    }

    fn c_vm_status(st: &CloudState, id: &str) -> String {
        st.vms[id].status.clone()
    }

    #[tokio::test]
    async fn per_instance_refusals_and_a_lost_answer() {
        let c = cloud();
        {
            let mut st = c.state();
            st.vms.get_mut("i-aaaa").unwrap().status = "STOPPING".into();
            st.vms.get_mut("i-bbbb").unwrap().deletion_protection = true;
        }
        let ids = vec!["i-aaaa".to_string(), "i-bbbb".into(), "i-none".into()];
        let r = c.delete_instances("r", ids, "t".into()).await.unwrap();
        let codes: Vec<_> = r
            .value
            .iter()
            .map(|d| d.error.as_ref().map(|e| e.code.as_str()))
            .collect();
        assert_eq!(codes, [Some(BAD_STATUS), Some(PROTECTED), Some(NOT_FOUND)]);
        c.state().vms.get_mut("i-aaaa").unwrap().status = "RUNNING".into();
        c.fail_next(Some(Action::DeleteInstances), Fault::LostAnswer);
        let lost = c
            .delete_instances("r", vec!["i-aaaa".into()], "t2".into())
            .await;
        assert!(lost.is_err());
        assert_eq!(c.vm("i-aaaa").unwrap().status, "DELETING");
        let replay = c
            .delete_instances("r", vec!["i-aaaa".into()], "t2".into())
            .await
            .unwrap();
        assert!(replay.value[0].error.is_none());
        assert_eq!(c.state().deletions.len(), 1);
    }

    #[tokio::test]
    async fn a_lagging_vm_is_not_listed_for_its_lag() {
        let c = cloud();
        c.state().lag_new_vms = 2;
        let req = RunInstancesRequest {
            client_token: "run-1".into(),
            tags: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
            ..Default::default()
        };
        let id = c.run_instances("r", req.clone()).await.unwrap().value[0].clone();
        let q = DescribeQuery {
            tag_filters: vec![("k".into(), vec!["v".into()])],
            ..Default::default()
        };
        for want in [0, 0, 1] {
            let got = c.describe_instances("r", q.clone()).await.unwrap();
            assert_eq!(got.value.instances.len(), want);
        }
        // The same token names the same VM.
        let again = c.run_instances("r", req).await.unwrap();
        assert_eq!(again.value, vec![id]);
        assert_eq!(c.state().vms.len(), 3);
    }
}
