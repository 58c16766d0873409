//! volcengine-ecs-operator: Volcengine ECS virtual machines as Kubernetes `EcsInstance`
//! resources. See README.md for the design.

pub mod cloud;
pub mod metrics;
pub mod emulator;
