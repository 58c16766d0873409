//! The cloud as the controller sees it: a narrow trait (observe, create, delete, protect)
//! so the reconciler is independent of HTTP and testable with a fake. The wire protocol
//! (signing, model, errors, the HTTP client) is the `volcengine-ecs` crate, re-exported here
//! under the paths the controller has always used.

mod ecs;
pub mod gated;

use futures::future::BoxFuture;

pub use volcengine_ecs::{client, error, limiter, model, signer, Called};
pub use volcengine_ecs::{
    CloudError, DescribeInstancesResult, DescribeQuery, ErrorClass, Instance, OperationDetail,
    RunInstancesRequest,
};

pub type CloudFuture<'a, T> = BoxFuture<'a, Result<Called<T>, CloudError>>;

pub trait Cloud: Send + Sync + 'static {
    /// Region used when a resource does not name one.
    fn default_region(&self) -> &str;

    fn describe_instances<'a>(
        &'a self,
        region: &'a str,
        query: DescribeQuery,
    ) -> CloudFuture<'a, DescribeInstancesResult>;

    /// DeleteInstances: up to 100 IDs, one `OperationDetail` per ID.
    fn delete_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>>;

    /// RunInstances with Count=1; returns the new instance IDs.
    fn run_instances<'a>(
        &'a self,
        region: &'a str,
        req: RunInstancesRequest,
    ) -> CloudFuture<'a, Vec<String>>;

    /// ModifyInstanceAttribute DeletionProtection.
    fn set_deletion_protection<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        enabled: bool,
    ) -> CloudFuture<'a, ()>;

    /// ModifyInstanceAttribute with the name and/or the description (absent: unchanged).
    fn modify_instance_attribute<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        name: Option<String>,
        description: Option<String>,
        client_token: String,
    ) -> CloudFuture<'a, ()>;

    /// ModifyInstanceSpec (InstanceTypeId): the VM must be STOPPED. Returns the OrderId.
    fn modify_instance_spec<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        instance_type_id: String,
        client_token: String,
    ) -> CloudFuture<'a, String>;

    /// StopInstances (StoppedMode KeepCharging, clean shutdown): one detail per ID.
    fn stop_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>>;

    /// StartInstances: one detail per ID.
    fn start_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>>;

    /// UntagResources (ResourceType `instance`): removes these tag keys from the VMs.
    /// Used to release ownership of an orphaned VM, so no sweeper treats it as ours.
    fn untag_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        tag_keys: Vec<String>,
    ) -> CloudFuture<'a, ()>;

    /// TagResources (ResourceType `instance`): adds these tags to the VMs, overwriting the
    /// value of a key they already carry. Used to claim an adopted VM for its resource.
    fn tag_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        tags: Vec<model::Tag>,
    ) -> CloudFuture<'a, ()>;
}
