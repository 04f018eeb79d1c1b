//! `conveyor dlq` as ops run it: the real binary against a database with
//! dead letters in it.

use std::process::Output;
use std::time::Duration;

use conveyor_jobs::queue::Queue;
use conveyor_tests::{AppOptions, TestApp, spawn_app, wait_for};

struct Cli {
    config: std::path::PathBuf,
}

impl Cli {
    fn new(app: &TestApp) -> Cli {
        let config = std::env::temp_dir().join(format!(
            "conveyor-cli-dlq-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&config, app.config_toml()).unwrap();
        Cli { config }
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .env("CONVEYOR_CONFIG", &self.config)
            .env("RUST_LOG", "warn")
            .env("USER", "bob")
            .args(args)
            .output()
            .await
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "conveyor {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Three dead letters: two reserve jobs whose payload cannot be read, one
/// split job for an order that does not exist.
async fn dead_letters(app: &mut TestApp) -> Vec<i64> {
    for (queue, key, payload) in [
        ("reserve", "r1", b"\xffnope".as_slice()),
        ("reserve", "r2", b"\xffnope".as_slice()),
        (
            "split",
            "s1",
            br#"{"order_id": 987654, "version": 1}"#.as_slice(),
        ),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
             VALUES ($1, $2, $3, 'Pending', 0, 12, now(), 0, $4)",
        )
        .bind(ulid::Ulid::generate().to_string())
        .bind(queue)
        .bind(payload)
        .bind(key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.start_worker_for(&[Queue::Reserve, Queue::Split]);
    wait_for(Duration::from_secs(30), "three dead letters", || async {
        app.count("SELECT count(*) FROM dead_letters").await == 3
            && app
                .count("SELECT count(*) FROM apalis.jobs WHERE status = 'Killed'")
                .await
                == 3
    })
    .await;
    sqlx::query_scalar("SELECT id FROM dead_letters ORDER BY job_key")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ops_list_show_retry_and_discard_dead_letters_from_the_command_line() {
    let mut app = spawn_app(AppOptions::default()).await;
    let ids = dead_letters(&mut app).await;
    let (r1, r2, s1) = (ids[0], ids[1], ids[2]);
    let cli = Cli::new(&app);

    let all = cli.ok(&["dlq", "list"]).await;
    assert!(all.contains("3 dead letter(s)"), "{all}");
    let reserve = cli
        .ok(&["dlq", "list", "--queue", "reserve", "--since", "1h"])
        .await;
    assert!(reserve.contains("2 dead letter(s)"), "{reserve}");
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(&["dlq", "list", "--queue", "split", "--json"]).await)
            .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["id"], s1);
    assert!(
        json[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    let future = cli
        .ok(&["dlq", "list", "--since", "2099-01-01T00:00:00Z"])
        .await;
    assert!(future.contains("0 dead letter(s)"), "{future}");
    let bad = cli.run(&["dlq", "list", "--queue", "nope"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown queue"));

    let shown = cli.ok(&["dlq", "show", &r1.to_string()]).await;
    assert!(
        shown.contains("payload    (not UTF-8) hex ff6e6f7065"),
        "{shown}"
    );
    assert!(shown.contains("runs that failed:"), "{shown}");
    assert!(shown.contains("#1"), "{shown}");

    // A discard needs a reason; with one, it closes the dead letter.
    let no_reason = cli.run(&["dlq", "discard", &r2.to_string()]).await;
    assert!(!no_reason.status.success());
    let done = cli
        .ok(&["dlq", "discard", &r2.to_string(), "--reason", "test data"])
        .await;
    assert!(done.contains("discarded 1"), "{done}");
    let again = cli
        .run(&["dlq", "discard", &r2.to_string(), "--reason", "again"])
        .await;
    assert!(
        !again.status.success(),
        "a reviewed dead letter stays as it is"
    );

    // Retry everything open on the split queue.
    let retried = cli
        .ok(&[
            "dlq",
            "retry",
            "--all",
            "--queue",
            "split",
            "--reason",
            "order restored",
        ])
        .await;
    assert!(retried.contains(&format!("retried 1: {s1}")), "{retried}");
    // The job ran again and, the order still missing, died again.
    wait_for(
        Duration::from_secs(30),
        "the split job dies again",
        || async {
            app.count_with(
                "SELECT count(*) FROM dead_letters WHERE id = $1 AND deaths = 2 AND state = 'open'",
                s1,
            )
            .await
                == 1
        },
    )
    .await;
    cli.ok(&["dlq", "retry", &r1.to_string()]).await;

    let audit: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor, action, detail->>'reason' FROM audit_log WHERE entity = 'dead_letter' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        vec![
            (
                "cli:bob".into(),
                "dead_letter.discard".into(),
                "test data".into()
            ),
            (
                "cli:bob".into(),
                "dead_letter.retry".into(),
                "order restored".into()
            ),
            ("cli:bob".into(), "dead_letter.retry".into(), "".into()),
        ]
    );
    let stats: serde_json::Value =
        serde_json::from_str(&cli.ok(&["stats", "--json"]).await).unwrap();
    assert!(stats["dead_letters"].is_object(), "{stats}");
    drop(cli);
    app.shutdown().await;
}
