//! `conveyor dlq`: review dead letters (list, show, retry, discard).
//!
//! The same functions serve the worker's ops HTTP API
//! (`conveyor_jobs::dead_letter`), so a retry or a discard means the same
//! thing from here as from the page.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use conveyor_jobs::dead_letter::{self, Filter, Outcome};
use sqlx::PgPool;

#[derive(Subcommand)]
pub enum DlqAction {
    /// Dead letters, the most recent first (open ones unless --state says otherwise).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: its payload and every failed run of its job.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run dead letters' jobs again from their own step, with a fresh attempt budget.
    Retry {
        /// Dead letters to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Retry every open dead letter matching the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Who (kept in the audit log); default: $USER.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Close dead letters without running them again.
    Discard {
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Why (required; kept with the dead letter and in the audit log).
        #[arg(long)]
        reason: String,
        /// Who (kept in the audit log); default: $USER.
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Args, Default)]
pub struct FilterArgs {
    #[arg(long)]
    queue: Option<String>,
    #[arg(long)]
    channel: Option<String>,
    /// permanent, retryable, unknown_outcome, rate_limited or circuit_open.
    #[arg(long)]
    error_class: Option<String>,
    /// Dead since: an RFC 3339 time (2026-11-21T08:00:00Z) or an age (90m, 2h, 3d).
    #[arg(long)]
    since: Option<String>,
    /// open (default), retried, discarded or all.
    #[arg(long)]
    state: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> anyhow::Result<Filter> {
        let since = self.since.as_deref().map(parse_since).transpose()?;
        let filter = Filter {
            queue: self.queue,
            channel: self.channel,
            error_class: self.error_class,
            since,
            state: self.state,
        };
        filter.validate().map_err(anyhow::Error::msg)?;
        Ok(filter)
    }
}

/// An RFC 3339 time, or an age before now (`90m`, `2h`, `3d`).
pub fn parse_since(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(s).with_context(|| {
        format!(
            "--since {s:?}: give an RFC 3339 time (2026-11-21T08:00:00Z) or an age (90m, 2h, 3d)"
        )
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(age)?)
}

fn actor(given: Option<String>) -> String {
    let who = given
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{who}")
}

pub async fn run(pool: &PgPool, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List {
            filter,
            limit,
            json,
        } => {
            let letters = dead_letter::list(pool, &filter.filter()?, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            println!(
                "{:>6}  {:<8} {:<8} {:>8}  {:<15} {:>3}  {:<20}  error",
                "id", "queue", "channel", "order", "class", "att", "dead at"
            );
            for d in &letters {
                println!(
                    "{:>6}  {:<8} {:<8} {:>8}  {:<15} {:>3}  {:<20}  {}",
                    d.id,
                    d.queue,
                    d.channel.as_deref().unwrap_or("-"),
                    d.order_id
                        .map(|o| o.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.error_class,
                    d.attempts,
                    d.last_dead_at.format("%Y-%m-%d %H:%M:%S"),
                    one_line(&d.error, 100)
                );
            }
            println!("{} dead letter(s)", letters.len());
        }
        DlqAction::Show { id, json } => {
            let Some(d) = dead_letter::show(pool, id).await? else {
                bail!("no dead letter {id}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let l = &d.letter;
            println!("dead letter {} ({})", l.id, l.state);
            println!(
                "  job        {} on {} (key {})",
                l.job_id,
                l.queue,
                l.job_key.as_deref().unwrap_or("-")
            );
            if let Some(order) = l.order_id {
                println!(
                    "  order      {order} on {}",
                    l.channel.as_deref().unwrap_or("-")
                );
            }
            println!("  class      {}", l.error_class);
            println!("  error      {}", l.error);
            println!("  attempts   {} (died {} time(s))", l.attempts, l.deaths);
            println!("  worker     {}", l.worker);
            println!("  first dead {}", l.created_at);
            println!("  last dead  {}", l.last_dead_at);
            if let Some(at) = l.reviewed_at {
                println!(
                    "  reviewed   {at} by {}: {}",
                    l.reviewed_by.as_deref().unwrap_or("-"),
                    l.review_reason.as_deref().unwrap_or("")
                );
            }
            match (&d.payload, &d.payload_hex) {
                (Some(text), _) => println!("  payload    {text}"),
                (None, Some(hex)) => println!("  payload    (not UTF-8) hex {hex}"),
                _ => {}
            }
            println!("  runs that failed:");
            for f in &d.failures {
                println!(
                    "    #{:<3} {}  {:<15} {}  [{}]",
                    f.run,
                    f.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    f.error_class,
                    one_line(&f.error, 120),
                    f.worker
                );
            }
        }
        DlqAction::Retry {
            ids,
            all,
            filter,
            reason,
            actor: who,
        } => {
            let who = actor(who);
            let outcome = if all {
                dead_letter::retry_matching(pool, &filter.filter()?, &who, &reason).await?
            } else {
                dead_letter::retry(pool, &ids, &who, &reason).await?
            };
            report("retried", &outcome)?;
        }
        DlqAction::Discard {
            ids,
            reason,
            actor: who,
        } => {
            let outcome = dead_letter::discard(pool, &ids, &actor(who), &reason).await?;
            report("discarded", &outcome)?;
        }
    }
    Ok(())
}

fn report(verb: &str, outcome: &Outcome) -> anyhow::Result<()> {
    let ids: Vec<String> = outcome.done.iter().map(i64::to_string).collect();
    println!(
        "{verb} {}{}",
        outcome.done.len(),
        if ids.is_empty() {
            String::new()
        } else {
            format!(": {}", ids.join(" "))
        }
    );
    for (id, why) in &outcome.skipped {
        eprintln!("skipped {id}: {why}");
    }
    if !outcome.skipped.is_empty() && outcome.done.is_empty() {
        bail!("nothing was {verb}");
    }
    Ok(())
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}
