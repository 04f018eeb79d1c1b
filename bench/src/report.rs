//! The figures of one system and the table that compares them.

use std::fmt::Write;
use std::time::Duration;

/// Every run of one system: enqueue rates (one per run, all
/// concurrencies together) and drain rates by concurrency, in jobs/s.
#[derive(Debug, Clone)]
pub struct SystemResult {
    pub name: String,
    pub enqueue: Vec<f64>,
    pub drain: Vec<(usize, Vec<f64>)>,
}

impl SystemResult {
    pub fn new(name: impl Into<String>) -> SystemResult {
        SystemResult {
            name: name.into(),
            enqueue: Vec::new(),
            drain: Vec::new(),
        }
    }

    /// Records one run: `jobs` enqueued in `enqueue`, drained in `drain` at
    /// `concurrency`; prints it as it comes.
    pub fn record(&mut self, concurrency: usize, jobs: usize, enqueue: Duration, drain: Duration) {
        let enqueue_rate = rate(jobs, enqueue);
        let drain_rate = rate(jobs, drain);
        println!(
            "  {:<28} c={:<3} enqueue {:>8.0} jobs/s ({:>7.3} s)  drain {:>8.0} jobs/s ({:>7.3} s)  load {}",
            self.name,
            concurrency,
            enqueue_rate,
            enqueue.as_secs_f64(),
            drain_rate,
            drain.as_secs_f64(),
            crate::server::load_average()
        );
        self.enqueue.push(enqueue_rate);
        match self.drain.iter_mut().find(|(c, _)| *c == concurrency) {
            Some((_, runs)) => runs.push(drain_rate),
            None => self.drain.push((concurrency, vec![drain_rate])),
        }
    }

    pub fn drain_median(&self, concurrency: usize) -> Option<f64> {
        self.drain
            .iter()
            .find(|(c, _)| *c == concurrency)
            .and_then(|(_, runs)| median(runs))
    }
}

pub fn rate(jobs: usize, took: Duration) -> f64 {
    jobs as f64 / took.as_secs_f64().max(1e-9)
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Medians per system, and each system's drain rate against Conveyor's
/// (the first row) at the same concurrency: above 1 means faster than
/// Conveyor.
pub fn table(rows: &[SystemResult], concurrencies: &[usize]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| system | enqueue jobs/s |");
    for c in concurrencies {
        let _ = write!(out, " drain jobs/s c={c} |");
    }
    for c in concurrencies {
        let _ = write!(out, " vs Conveyor c={c} |");
    }
    out.push('\n');
    out.push_str("|---|---:|");
    for _ in 0..concurrencies.len() * 2 {
        out.push_str("---:|");
    }
    out.push('\n');
    let base = rows.first();
    for row in rows {
        let _ = write!(out, "| {} | {} |", row.name, fmt_rate(median(&row.enqueue)));
        for c in concurrencies {
            let _ = write!(out, " {} |", fmt_rate(row.drain_median(*c)));
        }
        for c in concurrencies {
            let ratio = match (row.drain_median(*c), base.and_then(|b| b.drain_median(*c))) {
                (Some(this), Some(conveyor)) if conveyor > 0.0 => {
                    format!("{:.2}x", this / conveyor)
                }
                _ => "-".into(),
            };
            let _ = write!(out, " {ratio} |");
        }
        out.push('\n');
    }
    out
}

fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{:.0}", r),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_whatever_the_order() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[10.0, 1.0, 2.0, 4.0]), Some(3.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_table_compares_each_system_with_conveyor_at_the_same_concurrency() {
        let mut conveyor = SystemResult::new("Conveyor");
        conveyor.enqueue = vec![50_000.0];
        conveyor.drain = vec![(10, vec![10_000.0]), (50, vec![20_000.0])];
        let mut peer = SystemResult::new("peer");
        peer.enqueue = vec![40_000.0];
        peer.drain = vec![(10, vec![30_000.0]), (50, vec![10_000.0])];
        let table = table(&[conveyor, peer], &[10, 50]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(
            lines[2],
            "| Conveyor | 50000 | 10000 | 20000 | 1.00x | 1.00x |"
        );
        assert_eq!(lines[3], "| peer | 40000 | 30000 | 10000 | 3.00x | 0.50x |");
    }
}
