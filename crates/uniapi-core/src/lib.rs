//! uniapi's gateway core: the relay, routing, the store, the admin API and the wiring between them.

pub mod admin;
pub mod auth;
pub mod billing;
pub mod catalog;
pub mod config;
pub mod error;
pub mod relay;
pub mod reqlog;
pub mod server;
pub mod state;
pub mod store;
pub mod tasks;
pub mod upstream;
pub mod writebehind;

pub use config::Config;
pub use server::{Gateway, app};
pub use state::AppState;
