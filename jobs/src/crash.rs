//! Crash-injection points: named places in the handlers where the process
//! can be made to die at once, so that tests can prove a worker killed at
//! the worst moment loses nothing, repeats nothing that matters and buys
//! nothing twice.
//!
//! `CONVEYOR_CRASH_AT` names one or more points (comma separated);
//! `CONVEYOR_CRASH_AFTER=N` makes the Nth pass through a named point the one
//! that crashes (default 1, counted per point). The crash is
//! [`std::process::abort`]: no destructors, no flushing, no transaction
//! rollback message to Postgres, no acknowledgement to the queue, which is as
//! close to `kill -9` as a process can do to itself. The environment is read
//! once; when `CONVEYOR_CRASH_AT` is unset a point costs one load of an
//! initialised `OnceLock`.
//!
//! ```
//! // In a handler, right after the carrier sold the label and before it is
//! // recorded:
//! conveyor_jobs::crash::point("purchase.after_buy");
//! ```
//!
//! [`POINTS`] lists every point the handlers pass through.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every crash-injection point, in pipeline order.
pub const POINTS: &[&str] = &[
    "import.after_upsert",
    "reserve.after_commit",
    "split.after_commit",
    "rate.after_quotes",
    "render.after_store",
    "purchase.after_record",
    "purchase.after_buy",
    "purchase.after_merge",
    "commit.after_push",
    "commit.after_record",
];

/// The environment variable naming the points to crash at.
pub const CRASH_AT_ENV: &str = "CONVEYOR_CRASH_AT";
/// The environment variable saying on which pass through a point to crash.
pub const CRASH_AFTER_ENV: &str = "CONVEYOR_CRASH_AFTER";

/// Which points crash, and how many passes each has seen.
#[derive(Debug)]
pub struct Plan {
    points: Vec<(String, AtomicU64)>,
    after: u64,
}

impl Plan {
    /// Reads `CONVEYOR_CRASH_AT` and `CONVEYOR_CRASH_AFTER`; `None` when no
    /// point is named.
    pub fn parse(at: Option<&str>, after: Option<&str>) -> Result<Option<Plan>, String> {
        let names: Vec<String> = at
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        if let Some(unknown) = names.iter().find(|n| !POINTS.contains(&n.as_str())) {
            return Err(format!(
                "{CRASH_AT_ENV}: unknown crash point {unknown:?}; points are {}",
                POINTS.join(", ")
            ));
        }
        let after = match after.map(str::trim).filter(|a| !a.is_empty()) {
            None => 1,
            Some(a) => match a.parse::<u64>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                        "{CRASH_AFTER_ENV}: {a:?} is not a whole number of at least 1"
                    ));
                }
            },
        };
        Ok(Some(Plan {
            points: names.into_iter().map(|n| (n, AtomicU64::new(0))).collect(),
            after,
        }))
    }

    /// Counts a pass through `name`; true when this pass is the one to
    /// crash on.
    pub fn hit(&self, name: &str) -> bool {
        match self.points.iter().find(|(n, _)| n == name) {
            Some((_, hits)) => hits.fetch_add(1, Ordering::SeqCst) + 1 == self.after,
            None => false,
        }
    }
}

static PLAN: OnceLock<Option<Plan>> = OnceLock::new();

fn plan() -> Option<&'static Plan> {
    PLAN.get_or_init(|| {
        let at = std::env::var(CRASH_AT_ENV).ok();
        let after = std::env::var(CRASH_AFTER_ENV).ok();
        match Plan::parse(at.as_deref(), after.as_deref()) {
            Ok(plan) => plan,
            Err(why) => {
                // A typo must not silently turn a crash test into a clean
                // run; it is not worth stopping a production worker either.
                tracing::error!(error = %why, "crash injection disabled");
                None
            }
        }
    })
    .as_ref()
}

/// Aborts the process here when `CONVEYOR_CRASH_AT` names `name` and this is
/// the `CONVEYOR_CRASH_AFTER`th pass; otherwise does nothing.
#[inline]
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "undeclared crash point {name}");
    if let Some(plan) = plan()
        && plan.hit(name)
    {
        // One line to say why the process died; then nothing else runs.
        eprintln!("conveyor: crash point {name} reached; aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_planned_when_no_point_is_named() {
        assert!(Plan::parse(None, None).unwrap().is_none());
        assert!(Plan::parse(Some(""), Some("3")).unwrap().is_none());
        assert!(Plan::parse(Some(" , "), None).unwrap().is_none());
    }

    #[test]
    fn the_first_pass_crashes_by_default_and_other_points_never_do() {
        let plan = Plan::parse(Some("purchase.after_buy"), None)
            .unwrap()
            .unwrap();
        assert!(!plan.hit("purchase.after_record"));
        assert!(plan.hit("purchase.after_buy"));
        assert!(!plan.hit("purchase.after_buy"), "only one pass crashes");
    }

    #[test]
    fn the_nth_pass_of_each_named_point_crashes() {
        let plan = Plan::parse(Some("commit.after_push, import.after_upsert"), Some("3"))
            .unwrap()
            .unwrap();
        assert!(!plan.hit("commit.after_push"));
        assert!(!plan.hit("import.after_upsert"));
        assert!(!plan.hit("commit.after_push"));
        assert!(plan.hit("commit.after_push"));
        assert!(!plan.hit("import.after_upsert"));
        assert!(plan.hit("import.after_upsert"));
    }

    #[test]
    fn unknown_points_and_bad_counts_are_refused() {
        let err = Plan::parse(Some("purchase.after_bye"), None).unwrap_err();
        assert!(err.contains("purchase.after_bye"), "{err}");
        assert!(Plan::parse(Some("purchase.after_buy"), Some("0")).is_err());
        assert!(Plan::parse(Some("purchase.after_buy"), Some("two")).is_err());
    }

    #[test]
    fn every_declared_point_is_used_by_a_handler() {
        let sources = [
            include_str!("import.rs"),
            include_str!("reserve.rs"),
            include_str!("split.rs"),
            include_str!("rate.rs"),
            include_str!("render.rs"),
            include_str!("purchase.rs"),
            include_str!("commit.rs"),
        ];
        for name in POINTS {
            let call = format!("crash::point(\"{name}\")");
            assert!(
                sources.iter().any(|s| s.contains(&call)),
                "no handler passes through {name}"
            );
        }
    }
}
