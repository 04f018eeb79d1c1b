//! `conveyor`: the operator's command line.
//!
//! ```text
//! conveyor migrate
//! conveyor catalog load examples/catalog.csv
//! conveyor warehouses load examples/warehouses.csv
//! conveyor stock load examples/stock.csv
//! conveyor restock examples/restock.csv
//! conveyor stats --json
//! conveyor watch --until-quiet
//! conveyor labels export --dir out/labels
//! conveyor dlq list --queue purchase --since 2h
//! conveyor dlq retry --all --error-class retryable --reason "carrier back up"
//! ```

mod dlq;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use conveyor_jobs::catalog::{LoadKind, load_file};
use conveyor_jobs::process::{init_tracing, load_settings};
use conveyor_jobs::settings::Settings;
use conveyor_jobs::stats;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sqlx::PgPool;

#[derive(Parser)]
#[command(
    version,
    about = "Operate Conveyor: schema, catalog and stock, and what the fleet is doing"
)]
struct Cli {
    /// Settings file (TOML); `CONVEYOR_*` environment variables override it.
    #[arg(long, global = true, env = "CONVEYOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed and bring its schema up to date.
    Migrate,
    /// Products: sku, name, weight_g, length_mm, width_mm, height_mm.
    Catalog {
        #[command(subcommand)]
        action: LoadAction,
    },
    /// Warehouses: code, name, address1, city, province, zip, country, latitude, longitude, priority.
    Warehouses {
        #[command(subcommand)]
        action: LoadAction,
    },
    /// Stock levels: sku, warehouse, quantity (sets on-hand).
    Stock {
        #[command(subcommand)]
        action: LoadAction,
    },
    /// Adds stock (sku, warehouse, quantity) and resumes backordered orders, oldest first.
    Restock { file: PathBuf },
    /// Orders, packages, jobs and dead letters by state.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Live progress of orders through the pipeline.
    Watch {
        /// Return once no job is waiting or running (and at least one order exists).
        #[arg(long)]
        until_quiet: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Print-ready label documents.
    Labels {
        #[command(subcommand)]
        action: LabelsAction,
    },
    /// Review dead letters: list, show, retry, discard.
    Dlq {
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
}

#[derive(Subcommand)]
enum LoadAction {
    /// Load a CSV or JSON file, all rows or none.
    Load { file: PathBuf },
}

#[derive(Subcommand)]
enum LabelsAction {
    /// Write every print-ready PDF (label + packing slip) into a folder.
    Export {
        #[arg(long, default_value = "out/labels")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    init_tracing();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = load_settings(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate => {
            conveyor_jobs::db::ensure_database(&settings.database.url).await?;
            let pool = pool(&settings).await?;
            conveyor_jobs::db::migrate(&pool).await?;
            conveyor_jobs::runner::register_channels(&pool, &settings).await?;
            println!("database is up to date");
        }
        Command::Catalog {
            action: LoadAction::Load { file },
        } => load(&settings, LoadKind::Catalog, &file).await?,
        Command::Warehouses {
            action: LoadAction::Load { file },
        } => load(&settings, LoadKind::Warehouses, &file).await?,
        Command::Stock {
            action: LoadAction::Load { file },
        } => load(&settings, LoadKind::Stock, &file).await?,
        Command::Restock { file } => load(&settings, LoadKind::Restock, &file).await?,
        Command::Stats { json } => {
            let stats = stats::collect(&pool(&settings).await?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_stats(&stats);
            }
        }
        Command::Watch {
            until_quiet,
            timeout_secs,
        } => watch(&pool(&settings).await?, until_quiet, timeout_secs).await?,
        Command::Labels {
            action: LabelsAction::Export { dir },
        } => export_labels(&pool(&settings).await?, &dir).await?,
        Command::Dlq { action } => dlq::run(&pool(&settings).await?, action).await?,
    }
    Ok(())
}

async fn pool(settings: &Settings) -> anyhow::Result<PgPool> {
    conveyor_jobs::db::connect(&settings.database.url, 4)
        .await
        .context("cannot reach PostgreSQL (is it running, and did you run `conveyor migrate`?)")
}

async fn load(settings: &Settings, kind: LoadKind, file: &Path) -> anyhow::Result<()> {
    let pool = pool(settings).await?;
    let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let report = load_file(&pool, kind, file, &format!("cli:{actor}")).await?;
    let mut line = format!(
        "{}: {} rows from {} ({} new, {} updated)",
        report.kind,
        report.rows,
        file.display(),
        report.inserted,
        report.updated
    );
    if matches!(kind, LoadKind::Restock) {
        line.push_str(&format!(
            "; {} backordered orders now fully reserved",
            report.orders_resumed
        ));
    }
    println!("{line}");
    Ok(())
}

fn print_stats(s: &stats::Stats) {
    println!("orders:");
    for (state, n) in &s.orders {
        println!("  {state:<12} {n}");
    }
    println!("packages:");
    for (state, n) in &s.packages {
        println!("  {state:<12} {n}");
    }
    println!("jobs:");
    for (queue, states) in &s.jobs {
        let parts: Vec<String> = states.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {queue:<9} {}", parts.join(" "));
    }
    println!("dead letters (open):");
    for (queue, n) in &s.dead_letters {
        println!("  {queue:<9} {n}");
    }
    println!("labels purchased: {}", s.labels_purchased);
    println!(
        "stock: {} on hand, {} reserved",
        s.stock_on_hand, s.stock_reserved
    );
}

/// Progress bars for the orders; returns when the pipeline is quiet (with
/// `until_quiet`) or on Ctrl-C.
async fn watch(pool: &PgPool, until_quiet: bool, timeout_secs: u64) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:40.cyan/blue}] {pos}/{len} {msg}")?
            .progress_chars("=> ");
    let names = ["labelled", "shipped"];
    let progress: Vec<ProgressBar> = names
        .iter()
        .map(|n| {
            let b = bars.add(ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(n.to_string());
            b
        })
        .collect();
    let status = bars.add(ProgressBar::new_spinner());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    let mut quiet_polls = 0;
    let plain = !std::io::stderr().is_terminal();
    let mut polls = 0u64;
    let mut last_line;
    loop {
        let s = stats::collect(pool).await?;
        let total: i64 = s.orders.values().sum();
        let get = |k: &str| s.orders.get(k).copied().unwrap_or(0);
        let labelled = get("labelled") + get("shipped");
        for (bar, value) in progress.iter().zip([labelled, get("shipped")]) {
            bar.set_length(total as u64);
            bar.set_position(value as u64);
        }
        let line = format!(
            "orders {total}: imported {} reserved {} packed {} labelled {} shipped {} backordered {} rejected {} | labels {} | dead letters {}",
            get("imported"),
            get("reserved"),
            get("packed"),
            get("labelled"),
            get("shipped"),
            get("backordered"),
            get("rejected"),
            s.labels_purchased,
            s.dead_letters.values().sum::<i64>()
        );
        // Progress bars need a terminal; elsewhere (a log, CI) print the
        // figures as plain lines every few seconds instead.
        if plain && polls.is_multiple_of(4) {
            println!("{line}");
        }
        polls += 1;
        last_line = line.clone();
        status.set_message(line);
        status.tick();
        let unfinished = stats::unfinished_jobs(pool).await?;
        quiet_polls = if unfinished == 0 && total > 0 {
            quiet_polls + 1
        } else {
            0
        };
        if until_quiet && quiet_polls >= 3 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("still busy after {timeout_secs} s ({unfinished} jobs unfinished)");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    for b in &progress {
        b.finish();
    }
    status.finish();
    println!("{last_line}");
    Ok(())
}

async fn export_labels(pool: &PgPool, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rows: Vec<(String, i32, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT o.name, p.seq, p.id, d.pdf FROM documents d
         JOIN packages p ON p.id = d.package_id JOIN orders o ON o.id = p.order_id
         WHERE d.kind = 'print_ready' ORDER BY o.id, p.seq",
    )
    .fetch_all(pool)
    .await?;
    for (order, seq, package_id, pdf) in &rows {
        let name = format!(
            "{}-{seq}-package{package_id}.pdf",
            order.trim_start_matches('#')
        );
        let mut f = std::fs::File::create(dir.join(&name))?;
        f.write_all(pdf)?;
    }
    println!("wrote {} print-ready PDFs to {}", rows.len(), dir.display());
    Ok(())
}
