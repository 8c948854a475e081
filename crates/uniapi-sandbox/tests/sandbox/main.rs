//! One integration-test binary for the sandbox upstream: every test starts its own sandbox on a
//! random port and talks to it over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod control;
mod fal;
mod ideogram;
mod jimeng;
mod kling;
mod luma;
mod midjourney;
mod openai_chat;
mod openai_media;
mod openai_responses;
mod suno;
mod support;
mod udio;
