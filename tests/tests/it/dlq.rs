//! Dead letters and their review: a job out of attempts is kept with every
//! attempt's error and worker, a retry after the cause is fixed reaches the
//! same end state as a clean run, and the ops HTTP API guards its changes
//! with a bearer token and writes each one to the audit log.

use std::time::Duration;

use conveyor_jobs::dead_letter::{self, Filter};
use conveyor_jobs::ops_http::{self, OpsState};
use conveyor_jobs::queue::Queue;
use conveyor_jobs::settings::{BreakerSettings, QueueConfig};
use conveyor_sandbox::{ApiFaults, Faults};
use conveyor_tests::{AppOptions, TestApp, spawn_app, wait_for};
use secrecy::SecretString;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_out_of_attempts_keep_their_history_and_a_retry_ships_every_order() {
    let mut app = spawn_app(AppOptions {
        orders: 10,
        seed: 13,
        configure: |s| {
            // Two tries per rate job, retried quickly; a breaker that never
            // opens, so that every try reaches the failing carrier.
            s.queues.insert(
                Queue::Rate,
                QueueConfig {
                    max_attempts: Some(2),
                    backoff_base_ms: Some(20),
                    backoff_cap_secs: Some(1),
                    ..QueueConfig::default()
                },
            );
            s.breaker = BreakerSettings {
                failures: 1_000_000,
                window_secs: 1,
                open_secs: 1,
            };
        },
        ..AppOptions::default()
    })
    .await;
    app.start_scheduler();
    app.start_worker_for(&[Queue::Import, Queue::Reserve, Queue::Split]);
    let created = app.sandbox.stats().orders_created as i64;
    wait_for(Duration::from_secs(60), "every order is split", || async {
        app.count("SELECT count(*) FROM orders").await >= created
            && app
                .count("SELECT count(*) FROM apalis.jobs WHERE job_type IN ('reserve', 'split') AND status <> 'Done'")
                .await
                == 0
    })
    .await;
    let packages = app.count("SELECT count(*) FROM packages").await;
    assert!(packages > 0);

    // The carrier fails every call: each rate job uses its two attempts.
    app.sandbox.set_faults(Faults::everywhere(ApiFaults {
        server_error_rate: 1.0,
        ..ApiFaults::default()
    }));
    app.start_worker_for(&[Queue::Rate, Queue::Render, Queue::Purchase, Queue::Commit]);
    wait_for(
        Duration::from_secs(60),
        "every rate job is dead",
        // The dead letter is written before the worker records the run's
        // end; a retry waits for both.
        || async {
            app.count(
                "SELECT count(*) FROM apalis.jobs WHERE job_type = 'rate' AND status = 'Killed'",
            )
            .await
                >= packages
                && app.count("SELECT count(*) FROM dead_letters").await >= packages
        },
    )
    .await;
    let letters = dead_letter::list(&app.pool, &Filter::default(), 1_000)
        .await
        .unwrap();
    assert_eq!(letters.len() as i64, packages);
    for d in &letters {
        assert_eq!(d.queue, "rate");
        assert_eq!(d.error_class, "retryable");
        assert_eq!(d.attempts, 2);
        assert!(
            d.error.starts_with("gave up after 2 attempts"),
            "{}",
            d.error
        );
        let detail = dead_letter::show(&app.pool, d.id).await.unwrap().unwrap();
        assert_eq!(detail.failures.len(), 2, "every attempt is kept");
        assert_eq!(
            detail.failures.iter().map(|f| f.run).collect::<Vec<_>>(),
            vec![1, 2]
        );
        for f in &detail.failures {
            assert_eq!(f.error_class, "retryable");
            assert!(!f.worker.is_empty(), "the worker is named");
            assert!(
                f.error.contains("500") || f.error.to_lowercase().contains("server"),
                "{}",
                f.error
            );
        }
        assert!(detail.payload.unwrap().contains("package_id"));
    }
    let stats = conveyor_jobs::stats::collect(&app.pool).await.unwrap();
    assert_eq!(stats.dead_letters.get("rate").copied(), Some(packages));
    assert_eq!(app.sandbox.stats().labels_sold, 0);

    // The carrier is back: retry every open dead letter.
    app.sandbox.set_faults(Faults::default());
    let outcome =
        dead_letter::retry_matching(&app.pool, &Filter::default(), "test:ops", "carrier back")
            .await
            .unwrap();
    assert_eq!(outcome.done.len() as i64, packages);
    assert!(outcome.skipped.is_empty());
    app.drain(Duration::from_secs(120)).await;

    let not_done = app
        .count("SELECT count(*) FROM orders WHERE state NOT IN ('shipped', 'backordered')")
        .await;
    assert_eq!(
        not_done, 0,
        "every order ships or waits on stock, as in a clean run"
    );
    let sandbox = app.sandbox.stats();
    assert_eq!(
        sandbox.labels_sold as i64, packages,
        "one label per package"
    );
    assert!(sandbox.labels_per_reference.values().all(|n| *n == 1));
    let unfulfilled = app
        .count(
            "SELECT count(*) FROM order_lines l JOIN orders o ON o.id = l.order_id
             WHERE o.state = 'shipped' AND l.quantity <> (
                 SELECT COALESCE(sum(pi.quantity), 0) FROM package_items pi WHERE pi.order_line_id = l.id)",
        )
        .await;
    assert_eq!(
        unfulfilled, 0,
        "each shipped line is packed exactly its quantity"
    );
    let reviews = app
        .count("SELECT count(*) FROM audit_log WHERE action = 'dead_letter.retry' AND actor = 'test:ops'")
        .await;
    assert_eq!(reviews, packages);
    let stats = conveyor_jobs::stats::collect(&app.pool).await.unwrap();
    assert_eq!(stats.dead_letters.values().sum::<i64>(), 0);
    app.shutdown().await;
}

/// Two jobs whose payload cannot be read, dead-lettered by a worker.
async fn two_dead_letters(app: &mut TestApp) -> (i64, i64) {
    for key in ["a", "b"] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
             VALUES ($1, 'reserve', '\\x00ff'::bytea, 'Pending', 0, 12, now(), 0, $2)",
        )
        .bind(ulid::Ulid::generate().to_string())
        .bind(key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.start_worker_for(&[Queue::Reserve]);
    wait_for(Duration::from_secs(30), "both jobs are dead", || async {
        app.count("SELECT count(*) FROM dead_letters WHERE state = 'open'")
            .await
            == 2
            && app
                .count("SELECT count(*) FROM apalis.jobs WHERE status = 'Killed'")
                .await
                == 2
    })
    .await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM dead_letters ORDER BY job_key")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    (ids[0], ids[1])
}

struct Ops {
    base: String,
    http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve_ops(app: &TestApp, token: Option<&str>) -> Ops {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = OpsState {
        pool: app.pool.clone(),
        redis_url: app.settings.redis.url.clone(),
        metrics: app.deps.metrics.clone(),
        dlq: true,
        token: token.map(|t| SecretString::from(t.to_string())),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ops_http::serve_on(listener, state, async move {
        let _ = stopped.await;
    }));
    Ops {
        base,
        http: reqwest::Client::new(),
        stop,
    }
}

impl Ops {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-conveyor-actor", "alice")
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

async fn audit_rows(app: &TestApp) -> Vec<(String, String, String, Value)> {
    sqlx::query_as(
        "SELECT actor, action, entity_id, detail FROM audit_log
         WHERE entity = 'dead_letter' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_token_the_ops_api_reads_but_changes_nothing() {
    let mut app = spawn_app(AppOptions::default()).await;
    let (a, _) = two_dead_letters(&mut app).await;
    let ops = serve_ops(&app, None).await;

    let (status, list) = ops.get("/dlq", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, one) = ops.get(&format!("/dlq/{a}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(one["payload_hex"], "00ff");
    assert_eq!(one["failures"].as_array().unwrap().len(), 1);

    for path in [format!("/dlq/{a}/retry"), format!("/dlq/{a}/discard")] {
        let (status, body) = ops.post(&path, None, json!({"reason": "x"})).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("off"));
    }
    let (status, _) = ops.post("/dlq/retry", None, json!({"all": true})).await;
    assert_eq!(status, 403);
    assert!(audit_rows(&app).await.is_empty());
    assert_eq!(
        app.count("SELECT count(*) FROM dead_letters WHERE state = 'open'")
            .await,
        2
    );
    let _ = ops.stop.send(());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ops_api_wants_the_right_token_and_audits_every_retry_and_discard() {
    let mut app = spawn_app(AppOptions::default()).await;
    let (a, b) = two_dead_letters(&mut app).await;
    let ops = serve_ops(&app, Some("s3cret-token")).await;

    // No token, or a wrong one: 401 on every route, and nothing changes.
    assert_eq!(ops.get("/dlq", None).await.0, 401);
    assert_eq!(ops.get("/dlq", Some("wrong")).await.0, 401);
    assert_eq!(
        ops.get(&format!("/dlq/{a}"), Some("s3cret-tokex")).await.0,
        401
    );
    let (status, _) = ops.post(&format!("/dlq/{a}/retry"), None, json!({})).await;
    assert_eq!(status, 401);
    let (status, _) = ops
        .post(
            &format!("/dlq/{a}/discard"),
            Some("wrong"),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, 401);
    assert!(audit_rows(&app).await.is_empty());

    // The right token.
    let (status, list) = ops.get("/dlq?queue=reserve", Some("s3cret-token")).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        ops.get("/dlq?queue=nope", Some("s3cret-token")).await.0,
        400
    );
    assert_eq!(ops.get("/dlq/999999", Some("s3cret-token")).await.0, 404);

    let (status, body) = ops
        .post(
            &format!("/dlq/{a}/retry"),
            Some("s3cret-token"),
            json!({"reason": "codec fixed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], json!([a]));
    // The job runs again from its step, and (its bytes being what they are)
    // dies again: the same dead letter opens again, having died twice.
    wait_for(
        Duration::from_secs(30),
        "the retried job dies again",
        || async {
            app.count_with(
                "SELECT count(*) FROM dead_letters WHERE id = $1 AND state = 'open' AND deaths = 2",
                a,
            )
            .await
                == 1
        },
    )
    .await;

    let (status, body) = ops
        .post(
            &format!("/dlq/{b}/discard"),
            Some("s3cret-token"),
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "a discard needs a reason: {body}");
    let (status, _) = ops
        .post(
            &format!("/dlq/{b}/discard"),
            Some("s3cret-token"),
            json!({"reason": "test data"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = ops
        .post(&format!("/dlq/{b}/retry"), Some("s3cret-token"), json!({}))
        .await;
    assert_eq!(status, 409, "a discarded dead letter is not retried");

    let rows = audit_rows(&app).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "http:alice");
    assert_eq!(rows[0].1, "dead_letter.retry");
    assert_eq!(rows[0].2, a.to_string());
    assert_eq!(rows[0].3["reason"], "codec fixed");
    assert_eq!(rows[1].0, "http:alice");
    assert_eq!(rows[1].1, "dead_letter.discard");
    assert_eq!(rows[1].2, b.to_string());
    assert_eq!(rows[1].3["reason"], "test data");
    let (reviewed_by, reason): (String, String) =
        sqlx::query_as("SELECT reviewed_by, review_reason FROM dead_letters WHERE id = $1")
            .bind(b)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (reviewed_by.as_str(), reason.as_str()),
        ("http:alice", "test data")
    );

    let page = reqwest::get(format!("{}/dlq/page", ops.base))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("Dead letters"));
    let _ = ops.stop.send(());
    app.shutdown().await;
}
