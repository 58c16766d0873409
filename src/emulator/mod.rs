//! A local, in-memory Volcengine ECS endpoint (being written).
