//! Black-box tests of the real binary: `uniapi sandbox` and `uniapi serve --config` on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_uniapi");
const USER_KEY: &str = "sk-cli-test-key-00000000000000000000000000000000000000";

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> Running {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first printed line containing `marker`.
    fn wait_for(&self, marker: &str) -> String {
        self.lines_until(marker).pop().unwrap()
    }

    /// Every printed line up to and including the first containing `marker`.
    fn lines_until(&self, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the process printed nothing in time");
            let done = line.contains(marker);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    fn url(&self) -> String {
        let line = self.wait_for("listening on http://");
        line[line.find("http://").unwrap()..].trim().to_string()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("the process did not stop on SIGTERM");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("uniapi-cli-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn post(url: &str, key: &str, body: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

#[test]
fn serve_with_a_config_file_relays_to_the_sandbox_binary_and_stops_cleanly() {
    let dir = temp_dir();
    let mut sandbox = Running::start(
        &[
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "sk-upstream-cli",
        ],
        &dir,
        &[],
    );
    let sandbox_url = sandbox.url();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
[admin]
key = "env:CLI_ADMIN_KEY"
[[channels]]
name = "sandbox"
kind = "openai"
base_url = "{sandbox_url}/v1"
keys = ["env:CLI_UPSTREAM_KEY"]
models = ["gpt-4o-mini"]
[prices."gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.60
[[users]]
name = "cli"
balance_usd = 1.0
[[users.keys]]
name = "k"
key = "{USER_KEY}"
"#,
        db = dir.join("gw.db").display()
    );
    std::fs::write(dir.join("uniapi.toml"), config).unwrap();
    let env = [
        ("CLI_ADMIN_KEY", "cli-admin-key-0123456789"),
        ("CLI_UPSTREAM_KEY", "sk-upstream-cli"),
    ];
    let mut gateway = Running::start(&["serve", "--config", "uniapi.toml"], &dir, &env);
    let url = gateway.url();
    let (status, body) = post(
        &format!("{url}/v1/chat/completions"),
        USER_KEY,
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Sandbox reply to: hello"), "{body}");
    assert!(gateway.terminate().success());
    // the request log was flushed on the way out
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let logs = runtime.block_on(async {
        let store = uniapi_core::store::Store::connect(
            &format!("sqlite://{}", dir.join("gw.db").display()),
            1,
        )
        .await
        .unwrap();
        store.logs(&Default::default()).await.unwrap()
    });
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].outcome, "complete");
    sandbox.terminate();
}

/// SIGKILL loses at most one flush interval (200 ms): what is older than that is in the database.
#[test]
fn a_kill_after_the_flush_interval_loses_no_charge_and_no_log() {
    let dir = temp_dir();
    let mut sandbox = Running::start(
        &[
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "sk-upstream-cli",
        ],
        &dir,
        &[],
    );
    let sandbox_url = sandbox.url();
    let db = format!("sqlite://{}", dir.join("kill.db").display());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{db}\"\n[admin]\nkey = \"cli-admin-key-0123456789\"\n\
         [[channels]]\nname = \"s\"\nkind = \"openai\"\nbase_url = \"{sandbox_url}\"\nkeys = [\"sk-upstream-cli\"]\nmodels = [\"m\"]\n\
         [prices.m]\nper_call = 0.001\n[[users]]\nname = \"u\"\nbalance_usd = 1.0\n[[users.keys]]\nname = \"k\"\nkey = \"{USER_KEY}\"\n"
    );
    std::fs::write(dir.join("kill.toml"), config).unwrap();
    let mut gateway = Running::start(&["serve", "--config", "kill.toml"], &dir, &[]);
    let url = gateway.url();
    for _ in 0..10 {
        let (status, body) = post(
            &format!("{url}/v1/chat/completions"),
            USER_KEY,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
        );
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(600));
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = uniapi_core::store::Store::connect(&db, 1).await.unwrap();
        assert_eq!(store.logs(&Default::default()).await.unwrap().len(), 10);
        let user = store.user_by_name("u").await.unwrap().unwrap();
        assert_eq!(user.balance_nano, 1_000_000_000 - 10 * 1_000_000);
        let checks = store.balance_checks().await.unwrap();
        assert!(
            checks.iter().all(|c| c.balance_nano == c.entries_nano),
            "{checks:?}"
        );
    });
    sandbox.terminate();
}

#[test]
fn a_bad_config_stops_the_start_naming_the_key() {
    let dir = temp_dir();
    std::fs::write(dir.join("bad.toml"), "[server]\nlisten = \"127.0.0.1:0\"\n[[channels]]\nname = \"c\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = [\"k\"]\nweight = 0\n").unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config", "bad.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("channels[0].weight"), "{stderr}");

    let output = Command::new(BIN)
        .args(["serve"])
        .current_dir(&dir)
        .env("UNIAPI_DATABASE__URL", "mysql://nope")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("database.url"));
}

#[test]
fn demo_mode_prints_a_working_key_and_an_admin_key_once() {
    let dir = temp_dir();
    let mut first = Running::start(&["serve", "--demo", "--listen", "127.0.0.1:0"], &dir, &[]);
    let url = first.url();
    let admin = first.wait_for("admin key");
    assert!(admin.contains("ua-admin-"), "{admin}");
    let demo_key = first.wait_for("API key: ");
    let key = demo_key
        .split("API key: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let (status, body) = post(
        &format!("{url}/v1/embeddings"),
        &key,
        r#"{"model":"text-embedding-3-small","input":"hi","encoding_format":"float"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(first.terminate().success());
    // a second start on the same data keeps the admin key and does not print it again
    let mut second = Running::start(&["serve", "--demo", "--listen", "127.0.0.1:0"], &dir, &[]);
    let printed = second.lines_until("Demo user");
    assert!(printed.iter().any(|l| l.contains("listening on")));
    assert!(
        !printed.iter().any(|l| l.contains("admin key")),
        "{printed:?}"
    );
    second.terminate();
}

fn get(url: &str, key: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

/// Kill the gateway (SIGKILL) right after two task submits, start it again on the same database:
/// polling resumes, both tasks finish, the successful one stays charged once and the failed one is
/// refunded once.
#[test]
fn tasks_survive_a_kill_and_the_money_is_right() {
    let dir = temp_dir();
    let mut sandbox = Running::start(
        &[
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "sk-upstream-cli",
        ],
        &dir,
        &[],
    );
    let sandbox_url = sandbox.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::Client::new()
            .put(format!("{sandbox_url}/__sandbox/config"))
            .header("content-type", "application/json")
            .body(r#"{"task_ms": 1500}"#)
            .send()
            .await
            .unwrap();
    });
    let db = format!("sqlite://{}", dir.join("tasks.db").display());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{db}\"\n[admin]\nkey = \"cli-admin-key-0123456789\"\n\
         [tasks]\npoll_interval_ms = 100\n\
         [[channels]]\nname = \"suno\"\nkind = \"suno\"\nbase_url = \"{sandbox_url}\"\nkeys = [\"sk-upstream-cli\"]\n\
         [prices.suno_lyrics]\nper_call = 0.02\n[[users]]\nname = \"u\"\nbalance_usd = 1.0\n[[users.keys]]\nname = \"k\"\nkey = \"{USER_KEY}\"\n"
    );
    std::fs::write(dir.join("tasks.toml"), config).unwrap();
    let mut gateway = Running::start(&["serve", "--config", "tasks.toml"], &dir, &[]);
    let url = gateway.url();
    let mut ids = Vec::new();
    for prompt in ["a calm song", "please fail"] {
        let (status, body) = post(
            &format!("{url}/suno/submit/lyrics"),
            USER_KEY,
            &serde_json::json!({ "prompt": prompt }).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        ids.push(answer["data"].as_str().unwrap().to_string());
    }
    // at once: nothing has had time to be written behind
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();

    let mut gateway = Running::start(&["serve", "--config", "tasks.toml"], &dir, &[]);
    let url = gateway.url();
    let mut states = Vec::new();
    for id in &ids {
        let mut state = String::new();
        for _ in 0..100 {
            let (status, body) = get(&format!("{url}/suno/fetch/{id}"), USER_KEY);
            assert_eq!(status, 200, "{body}");
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            state = answer["data"]["status"].as_str().unwrap().to_string();
            if state == "SUCCESS" || state == "FAILURE" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        states.push(state);
    }
    assert_eq!(states, ["SUCCESS", "FAILURE"]);
    gateway.terminate();
    runtime.block_on(async {
        let store = uniapi_core::store::Store::connect(&db, 1).await.unwrap();
        let user = store.user_by_name("u").await.unwrap().unwrap();
        assert_eq!(user.balance_nano, 1_000_000_000 - 20_000_000);
        let checks = store.balance_checks().await.unwrap();
        assert!(
            checks.iter().all(|c| c.balance_nano == c.entries_nano),
            "{checks:?}"
        );
    });
    sandbox.terminate();
}
