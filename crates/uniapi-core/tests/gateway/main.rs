#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One integration-test binary for the gateway core: real listeners on random ports, real sandbox
//! upstreams, a temporary SQLite store (and PostgreSQL when `UNIAPI_TEST_POSTGRES_URL` is set).

mod admin;
mod billing;
mod errors;
mod failover;
mod fal;
mod ideogram;
mod jimeng;
mod kling;
mod luma;
mod midjourney;
mod routing;
mod store;
mod support;
mod tasks;
mod udio;
mod upstream_pool;
