//! The `Cloud` trait on the real client: each method forwards to the client's typed call.

use volcengine_ecs::model::Tag;
use volcengine_ecs::{DescribeInstancesResult, DescribeQuery, EcsClient, OperationDetail};

use super::{Cloud, CloudFuture, RunInstancesRequest};

impl Cloud for EcsClient {
    fn default_region(&self) -> &str {
        EcsClient::default_region(self)
    }

    fn describe_instances<'a>(
        &'a self,
        region: &'a str,
        query: DescribeQuery,
    ) -> CloudFuture<'a, DescribeInstancesResult> {
        Box::pin(EcsClient::describe_instances(self, region, query))
    }

    fn delete_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        Box::pin(EcsClient::delete_instances(
            self,
            region,
            instance_ids,
            client_token,
        ))
    }

    fn run_instances<'a>(
        &'a self,
        region: &'a str,
        req: RunInstancesRequest,
    ) -> CloudFuture<'a, Vec<String>> {
        Box::pin(EcsClient::run_instances(self, region, req))
    }

    fn set_deletion_protection<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        enabled: bool,
    ) -> CloudFuture<'a, ()> {
        Box::pin(EcsClient::set_deletion_protection(
            self,
            region,
            instance_id,
            enabled,
        ))
    }

    fn modify_instance_attribute<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        name: Option<String>,
        description: Option<String>,
        client_token: String,
    ) -> CloudFuture<'a, ()> {
        Box::pin(EcsClient::modify_instance_attribute(
            self,
            region,
            instance_id,
            name,
            description,
            client_token,
        ))
    }

    fn modify_instance_spec<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        instance_type_id: String,
        client_token: String,
    ) -> CloudFuture<'a, String> {
        Box::pin(EcsClient::modify_instance_spec(
            self,
            region,
            instance_id,
            instance_type_id,
            client_token,
        ))
    }

    fn stop_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        Box::pin(EcsClient::stop_instances(
            self,
            region,
            instance_ids,
            client_token,
        ))
    }

    fn start_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        Box::pin(EcsClient::start_instances(
            self,
            region,
            instance_ids,
            client_token,
        ))
    }

    fn untag_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        tag_keys: Vec<String>,
    ) -> CloudFuture<'a, ()> {
        Box::pin(EcsClient::untag_instances(
            self,
            region,
            instance_ids,
            tag_keys,
        ))
    }

    fn tag_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        tags: Vec<Tag>,
    ) -> CloudFuture<'a, ()> {
        Box::pin(EcsClient::tag_instances(self, region, instance_ids, tags))
    }
}
