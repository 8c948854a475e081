//! The store on SQLite always and on PostgreSQL when `UNIAPI_TEST_POSTGRES_URL` is set: the same
//! operations, the same answers.

use std::collections::BTreeMap;

use uniapi_core::config::{Config, UserConfig};
use uniapi_core::store::logs::{Attempt, LogFilter, RequestLog};
use uniapi_core::store::{ChannelSpec, KeyLimits, Store, StoreError};

use crate::support::*;

/// Database URLs for a test that runs on every backend.
pub async fn store_urls() -> Vec<String> {
    stores().await.into_iter().map(|(_, url)| url).collect()
}

/// A fresh database per call: a temp SQLite file, or a new schema in the PostgreSQL test database.
async fn stores() -> Vec<(String, String)> {
    let mut urls = vec![("sqlite".to_string(), temp_sqlite_url())];
    match std::env::var("UNIAPI_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            let schema = format!("t_{}", uuid_like().replace('-', "_"));
            let admin = Store::connect(&base, 1)
                .await
                .expect("UNIAPI_TEST_POSTGRES_URL is set but PostgreSQL is unreachable");
            if let Store::Postgres(pool) = &admin {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            let separator = if base.contains('?') { '&' } else { '?' };
            urls.push((
                "postgres".to_string(),
                format!("{base}{separator}options=-c%20search_path%3D{schema}"),
            ));
        }
        _ => eprintln!(
            "store tests: UNIAPI_TEST_POSTGRES_URL is not set; PostgreSQL is SKIPPED (SQLite only)"
        ),
    }
    urls
}

fn spec(name: &str, keys: &[&str]) -> ChannelSpec {
    ChannelSpec {
        name: name.into(),
        kind: "openai".into(),
        base_url: "http://127.0.0.1:9".into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        models: vec!["m1".into(), "m2".into()],
        model_map: BTreeMap::from([("alias".to_string(), "m1".to_string())]),
        priority: 5,
        weight: 2,
        modes: Some(vec!["fast".into()]),
        enabled: true,
    }
}

#[tokio::test]
async fn store_round_trips_on_every_backend() {
    for (backend, url) in stores().await {
        let store = Store::connect(&url, 2).await.unwrap();
        // migrations are idempotent
        let store2 = Store::connect(&url, 1).await.unwrap();
        store2.close().await;

        let user = store.create_user("u1", 123).await.unwrap();
        assert!(
            matches!(
                store.create_user("u1", 1).await,
                Err(StoreError::Conflict(_))
            ),
            "{backend}"
        );
        assert_eq!(
            store.ensure_user("u1", 999).await.unwrap().balance_nano,
            123,
            "{backend}: a balance was reset"
        );
        let renamed = store
            .update_user(user.id, Some("u2"), Some(false))
            .await
            .unwrap();
        assert_eq!(
            (renamed.name.as_str(), renamed.enabled),
            ("u2", false),
            "{backend}"
        );

        let limits = KeyLimits {
            models: Some(vec!["m1".into()]),
            quota_nano: Some(5),
            expires_at: Some(7),
            rpm: Some(3),
            tpm: None,
            max_concurrency: Some(2),
        };
        let key = store
            .create_key(user.id, "k", "hash-1", "sk-…abcd", &limits)
            .await
            .unwrap();
        assert_eq!(
            key.models.as_deref(),
            Some(&["m1".to_string()][..]),
            "{backend}"
        );
        assert_eq!(
            (
                key.quota_nano,
                key.expires_at,
                key.rpm,
                key.tpm,
                key.max_concurrency
            ),
            (Some(5), Some(7), Some(3), None, Some(2))
        );
        assert!(matches!(
            store
                .create_key(user.id, "k2", "hash-1", "x", &limits)
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.create_key(9999, "k", "hash-9", "x", &limits).await,
            Err(StoreError::NotFound(_))
        ));
        let updated = store
            .update_key(key.id, "k-renamed", false, &KeyLimits::default())
            .await
            .unwrap();
        assert_eq!(
            (
                updated.name.as_str(),
                updated.enabled,
                updated.models.clone()
            ),
            ("k-renamed", false, None),
            "{backend}"
        );

        let channel = store
            .save_channel(None, &spec("c1", &["s1", "s2"]))
            .await
            .unwrap();
        assert_eq!(channel.keys.len(), 2);
        assert_eq!(channel.model_map["alias"], "m1");
        assert_eq!(channel.modes.as_deref(), Some(&["fast".to_string()][..]));
        store
            .disable_channel_key(channel.keys[0].id, "401")
            .await
            .unwrap();
        // saving again with the same secrets keeps a disabled key disabled
        let again = store
            .save_channel(Some(channel.id), &spec("c1", &["s1", "s3"]))
            .await
            .unwrap();
        assert_eq!(
            again
                .keys
                .iter()
                .map(|k| (k.secret.as_str(), k.enabled))
                .collect::<Vec<_>>(),
            vec![("s1", false), ("s3", true)],
            "{backend}"
        );
        assert!(matches!(
            store.save_channel(None, &spec("c1", &["x"])).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.channel_id_by_name("c1").await.unwrap(),
            Some(channel.id)
        );

        store.put_price("m1", r#"{"per_call":5}"#).await.unwrap();
        store.put_price("m1", r#"{"per_call":6}"#).await.unwrap();
        assert_eq!(
            store.prices().await.unwrap(),
            vec![("m1".to_string(), r#"{"per_call":6}"#.to_string())]
        );
        store.delete_price("m1").await.unwrap();
        assert!(matches!(
            store.delete_price("m1").await,
            Err(StoreError::NotFound(_))
        ));

        assert!(store.insert_setting_if_absent("s", "1").await.unwrap());
        assert!(!store.insert_setting_if_absent("s", "2").await.unwrap());
        assert_eq!(store.setting("s").await.unwrap().as_deref(), Some("1"));

        let log = |id: &str, at: i64, status: u16| RequestLog {
            id: id.into(),
            created_at: at,
            user_id: Some(user.id),
            key_id: Some(key.id),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: Some("m1".into()),
            upstream_model: Some("m1".into()),
            channel_id: Some(channel.id),
            status,
            stream: true,
            outcome: "complete".into(),
            attempts: vec![Attempt {
                channel_id: channel.id,
                channel: "c1".into(),
                key_hint: "…s1".into(),
                status: Some(500),
                error: Some("boom".into()),
                elapsed_ms: 3,
            }],
            latency_ms: 10,
            ttfb_ms: Some(2),
            error: None,
            input_tokens: 12,
            cached_tokens: 3,
            output_tokens: 40,
            reasoning_tokens: 7,
            cost_nano: 12_345,
            cost_detail: uniapi_core::store::logs::JsonText::of(
                &serde_json::json!({"basis": "reported"}),
            ),
        };
        store
            .insert_logs(&[log("a", 1, 200), log("b", 2, 500), log("a", 1, 200)])
            .await
            .unwrap();
        let logs = store.logs(&LogFilter::default()).await.unwrap();
        assert_eq!(
            logs.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            vec!["b", "a"],
            "{backend}"
        );
        assert_eq!(logs[1], log("a", 1, 200));
        let filtered = store
            .logs(&LogFilter {
                status: Some(500),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(filtered.len(), 1);
        // retention deletes only what is older than the cut
        assert_eq!(store.delete_logs_before(2).await.unwrap(), 1);
        assert_eq!(store.logs(&LogFilter::default()).await.unwrap().len(), 1);
        // a full write-behind batch goes in 64-row statements, a tick's batch in 16-row ones: every
        // row lands once either way
        for (first, n) in [(10, 600), (700, 37)] {
            let batch: Vec<RequestLog> = (first..first + n)
                .map(|i| log(&format!("bulk-{i:04}"), i, 200))
                .collect();
            store.insert_logs(&batch).await.unwrap();
        }
        let bulk = store
            .logs(&LogFilter {
                since: Some(10),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(bulk.len(), 637, "{backend}");
        assert_eq!(bulk[0], log("bulk-0736", 736, 200), "{backend}");
        assert_eq!(bulk[636], log("bulk-0010", 10, 200), "{backend}");
        assert_eq!(store.delete_logs_before(10).await.unwrap(), 1);

        store.delete_channel(channel.id).await.unwrap();
        store.delete_user(user.id).await.unwrap();
        assert!(
            store.keys().await.unwrap().is_empty(),
            "{backend}: keys outlived their user"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn declared_config_is_upserted_and_never_resets_balances() {
    for (backend, url) in stores().await {
        let mut cfg = config(vec![]);
        cfg.database.url = url.clone();
        let gw = TestGateway::start(cfg.clone()).await;
        let user = gw.state.store.user_by_name("alice").await.unwrap().unwrap();
        assert_eq!(user.balance_nano, 10_000_000_000, "{backend}");
        // the balance changes at run time; a restart with the same config keeps it
        if let Store::Sqlite(pool) = &gw.state.store {
            sqlx::query("UPDATE users SET balance_nano = 42")
                .execute(pool)
                .await
                .unwrap();
        } else if let Store::Postgres(pool) = &gw.state.store {
            sqlx::query("UPDATE users SET balance_nano = 42")
                .execute(pool)
                .await
                .unwrap();
        }
        gw.stop().await;
        let mut cfg2: Config = cfg.clone();
        cfg2.users.push(UserConfig {
            name: "carol".into(),
            balance_usd: 1.0,
            keys: vec![],
        });
        let gw = TestGateway::start(cfg2).await;
        assert_eq!(
            gw.state
                .store
                .user_by_name("alice")
                .await
                .unwrap()
                .unwrap()
                .balance_nano,
            42,
            "{backend}"
        );
        assert!(
            gw.state
                .store
                .user_by_name("carol")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(gw.chat("gpt-4o-mini").await.status(), 404);
        gw.stop().await;
    }
}

/// Ledger entries are applied in multi-row batches: an id repeated inside a batch or across batches
/// moves the balance once, batches larger than one statement's chunk are applied whole, and the
/// stored balance equals the sum of the entries.
#[tokio::test]
async fn ledger_batches_apply_each_entry_once() {
    use uniapi_core::billing::ledger::LedgerEntry;
    for (backend, url) in stores().await {
        let store = Store::connect(&url, 2).await.unwrap();
        let user = store.create_user("payer", 1_000_000).await.unwrap();
        let entry = |id: &str, kind: &'static str, amount: i64| LedgerEntry {
            id: id.to_string(),
            user_id: user.id,
            key_id: None,
            kind,
            amount_nano: amount,
            cache_nano: 0,
            note: None,
            created_at: 1,
        };
        let mut batch: Vec<LedgerEntry> = (0..600)
            .map(|i| entry(&format!("c{i}"), "capture", -10))
            .collect();
        batch.push(entry("c5", "capture", -10)); // a repeat inside the batch
        batch.push(entry("refund:t1", "refund", 7));
        store.apply_ledger_entries(&batch).await.unwrap();
        // a repeat of an applied entry in a later batch
        store
            .apply_ledger_entries(&[
                entry("c0", "capture", -10),
                entry("credit-1", "credit", 100),
            ])
            .await
            .unwrap();
        // a batch of new entries only (inserted without asking which are new)
        store
            .apply_ledger_entries(&[entry("c600", "capture", -10), entry("c601", "capture", -10)])
            .await
            .unwrap();
        let stored = store.user_by_name("payer").await.unwrap().unwrap();
        assert_eq!(
            stored.balance_nano,
            1_000_000 - 602 * 10 + 7 + 100,
            "{backend}"
        );
        let checks = store.balance_checks().await.unwrap();
        let mine = checks.iter().find(|c| c.user_id == user.id).unwrap();
        assert_eq!(mine.balance_nano, mine.entries_nano, "{backend}");
    }
}

/// SQLite keeps its temporary files (the statement journals of the write-behind's multi-row inserts) in
/// memory on every pooled connection: none is created in /var/tmp.
#[tokio::test]
async fn sqlite_keeps_temporary_files_in_memory() {
    let store = Store::connect(&temp_sqlite_url(), 2).await.unwrap();
    let Store::Sqlite(pool) = &store else {
        panic!("an SQLite URL opens an SQLite store");
    };
    let mut first = pool.acquire().await.unwrap();
    let mut second = pool.acquire().await.unwrap();
    for conn in [&mut first, &mut second] {
        let mode: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(mode, 2, "temp_store = MEMORY");
    }
}

/// A task's owed callback on every backend: owed with the change that moved it, kept through changes
/// that do not owe one, cleared only by the end of the delivery that version owes.
#[tokio::test]
async fn an_owed_callback_is_kept_until_its_own_delivery_ends() {
    use uniapi_core::store::tasks::{TaskChange, TaskRow};
    for (backend, url) in stores().await {
        let store = Store::connect(&url, 2).await.unwrap();
        let task = TaskRow {
            id: "task_cb".into(),
            user_id: 1,
            key_id: 1,
            family: "suno".into(),
            action: "MUSIC".into(),
            price_name: "suno_music".into(),
            channel_id: 1,
            upstream_id: "up-1".into(),
            state: "SUBMITTED".into(),
            progress: "0%".into(),
            result: None,
            raw: None,
            fail_reason: None,
            charged_nano: 0,
            refunded: false,
            idempotency_key: None,
            request: Some(serde_json::json!({"notify_hook": "https://client.example/hook"})),
            version: 0,
            polls: 0,
            next_poll_at: 0,
            created_at: 0,
            started_at: None,
            finished_at: None,
            updated_at: 0,
        };
        store.insert_task(&task).await.unwrap();
        // each step: a change at a version (its state, whether it owes a callback) or the end of the
        // delivery a version owed; then the version still owed, if any
        enum Step {
            Change(i64, &'static str, bool),
            Done(i64),
        }
        let steps = [
            (Step::Change(0, "IN_PROGRESS", true), Some(1)),
            // a poll that moved nothing keeps what is owed
            (Step::Change(1, "IN_PROGRESS", false), Some(1)),
            // a later change owes its own delivery; the end of the earlier one does not clear it
            (Step::Change(2, "SUCCESS", true), Some(3)),
            (Step::Done(1), Some(3)),
            (Step::Done(3), None),
        ];
        assert!(
            store.callbacks_due("", 10).await.unwrap().is_empty(),
            "{backend}"
        );
        for (step, owed) in steps {
            match step {
                Step::Change(version, state, owes_callback) => {
                    let change = TaskChange {
                        state: state.into(),
                        progress: "50%".into(),
                        owes_callback,
                        ..Default::default()
                    };
                    assert!(
                        store
                            .update_task("task_cb", version, &change)
                            .await
                            .unwrap()
                    );
                }
                Step::Done(version) => store.callback_done("task_cb", version).await.unwrap(),
            }
            let expected: Vec<(String, i64)> = owed
                .map(|v| ("task_cb".to_string(), v))
                .into_iter()
                .collect();
            assert_eq!(
                store.callbacks_due("", 10).await.unwrap(),
                expected,
                "{backend}"
            );
            // pages go by id: nothing after this task
            assert!(
                store.callbacks_due("task_cb", 10).await.unwrap().is_empty(),
                "{backend}"
            );
        }
    }
}
