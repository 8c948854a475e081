//! The OpenAI family: chat, legacy completions, embeddings, moderations, images, audio,
//! responses and models, with the wire shapes of `docs/upstream-apis/openai.md`.

mod audio;
mod chat;
mod completions;
mod embeddings;
mod fields;
mod images;
mod models;
mod moderations;
mod responses;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::state::SandboxState;

pub fn routes() -> Router<Arc<SandboxState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/moderations", post(moderations::create))
        .route("/v1/images/generations", post(images::generate))
        .route("/v1/images/edits", post(images::edit))
        .route("/v1/images/variations", post(images::vary))
        .route("/v1/audio/speech", post(audio::speech))
        .route("/v1/audio/transcriptions", post(audio::transcribe))
        .route("/v1/audio/translations", post(audio::translate))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
}
