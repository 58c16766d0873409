//! Secrets stay secret: the operator runs at `RUST_LOG=debug,ecs_operator=trace` through
//! every bad-input path of `e2e_bad_input.rs` (shared in `bad_input/mod.rs`) with a
//! recognizable secret key and session tokens, and none of them (nor their base64 or hex
//! forms) appears in any operator log, any Event or any EcsInstance. `Debug` output of the
//! configuration and the client, `--help` and clap's errors are checked as well.

mod bad_input;
use ecs_test_harness as support;

use std::process::Command;

use bad_input::*;
use base64::Engine;
use clap::Parser;
use ecs_operator::cloud::client::EcsClient;
use ecs_operator::config::{Cli, Command as Sub};

const SECRETS: Mode = Mode {
    tag: "secrets",
    sk: "SK-do-not-log-7b1d9e3f0a",
    wrong_sk: "SK-wrong-do-not-log-55aa21c4",
    token: Some("STS-valid-do-not-log-4c2a8f61"),
    expired_token: "STS-expired-do-not-log-9e5b1a07",
    rust_log: "debug,ecs_operator=trace",
};

/// The ways a secret could show: as is, its distinctive tail alone, base64, hex.
fn forms(secret: &str) -> Vec<String> {
    let tail = secret.rsplit('-').next().unwrap().to_string();
    vec![
        secret.to_string(),
        tail,
        base64::engine::general_purpose::STANDARD.encode(secret),
        hex::encode(secret),
    ]
}

/// Fails naming where a secret showed, with a little context (these are test secrets).
fn assert_clean(what: &str, text: &str) {
    for s in SECRETS.secrets() {
        for f in forms(s) {
            if let Some(at) = text.find(&f) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                let ctx: String = text[from..].chars().take(200).collect();
                panic!("{what} shows {f:?}: ...{ctx}...");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_show_in_logs_events_or_status() {
    let ev = Evidence::default();
    let (config_rows, answer_rows) = tokio::join!(
        run_config_cases(SECRETS, &ev),
        run_answer_cases(SECRETS, &ev)
    );
    let ev2 = ev.clone();
    tokio::task::spawn_blocking(move || run_startup_cases(&SECRETS, &ev2))
        .await
        .unwrap();
    let items = ev.items();
    // The scan is only worth something if the paths were really taken and really logged.
    let all: String = items.iter().map(|(_, t)| t.as_str()).collect();
    for row in config_rows.iter().chain(&answer_rows) {
        assert!(all.contains(&row.code), "no evidence of {}", row.code);
    }
    let logs: Vec<&(String, String)> = items
        .iter()
        .filter(|(w, _)| w.starts_with("log "))
        .collect();
    assert!(logs.len() > 2 * config_rows.len(), "{} logs", logs.len());
    assert!(
        logs.iter().any(|(_, t)| t.contains(" DEBUG ")),
        "debug logging was on"
    );
    assert!(items.iter().any(|(w, _)| w.starts_with("event ")));
    assert!(items.iter().any(|(w, _)| w.starts_with("EcsInstance ")));
    for (what, text) in &items {
        assert_clean(what, text);
    }
    println!("scanned {} items, {} bytes", items.len(), all.len());
}

fn assert_debug_clean(what: &str, shown: &str) {
    assert_clean(what, shown);
    assert!(shown.contains("<redacted>"), "{what}: {shown}");
}

#[test]
fn debug_output_of_config_and_client_never_shows_credentials() {
    let sk = SECRETS.sk;
    let tok = SECRETS.token.unwrap();
    let cli = Cli::try_parse_from([
        "ecs-operator",
        "run",
        "--access-key",
        AK,
        "--secret-key",
        sk,
        "--session-token",
        tok,
        "--endpoint",
        "http://127.0.0.1:9",
    ])
    .unwrap();
    let shown = format!("{cli:?}");
    assert!(
        shown.contains(AK),
        "Debug shows the (non-secret) access key: {shown}"
    );
    assert_debug_clean("Cli Debug", &shown);
    assert_debug_clean("Cli pretty Debug", &format!("{cli:#?}"));
    let Sub::Run(args) = cli.command else {
        panic!("run")
    };
    assert_debug_clean("CloudArgs", &format!("{:?}", args.cloud));
    let cfg = args.cloud.client_config();
    assert_eq!(cfg.credentials.secret_key.expose(), sk, "the value is kept");
    assert_debug_clean("ClientConfig", &format!("{cfg:?}"));
    assert_debug_clean("Credentials", &format!("{:?}", cfg.credentials));
    let client = EcsClient::new(cfg, None).unwrap();
    assert_debug_clean("EcsClient", &format!("{client:?}"));

    let emu = EmulatorCli::try_parse_from(["ecs-emulator", "--secret-key", sk]).unwrap();
    assert_debug_clean("emulator args", &format!("{emu:?}"));
}

/// The emulator binary's command line, as its main parses it.
#[derive(Parser, Debug)]
struct EmulatorCli {
    #[command(flatten)]
    args: ecs_emulator::EmulatorArgs,
}

/// `--help` shows no environment values, and clap's own errors do not echo them.
#[test]
fn help_and_usage_errors_never_show_credentials() {
    let operator = support::operator_bin();
    let emulator = support::emulator_bin();
    for (bin, args) in [
        (&operator, &["run", "--help"][..]),
        (&emulator, &["--help"]),
        (&operator, &["run", "--no-such-flag"]),
        (&operator, &["run", "--max-attempts", "many"]),
    ] {
        let out = Command::new(bin)
            .args(args)
            .env_clear()
            .env("VOLCENGINE_ACCESS_KEY", AK)
            .env("VOLCENGINE_SECRET_KEY", SECRETS.sk)
            .env("VOLCENGINE_SESSION_TOKEN", SECRETS.token.unwrap())
            .env("EMULATOR_SECRET_KEY", SECRETS.wrong_sk)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.is_empty(), "{args:?}");
        assert_clean(&format!("{args:?}"), &text);
    }
}
