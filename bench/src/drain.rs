//! Worker processes and the drain clock, the same for every system.
//!
//! A worker process prints `ready` on its own line once its code is loaded,
//! before it connects to anything; the drain clock starts when that line
//! arrives, so connecting, registering and fetching all count, but loading
//! a runtime (node's, or ours) does not. The clock stops at the start of the
//! first completion count that finds every job done; counts are taken often
//! near the end (every 2 ms) and rarely before (up to every 50 ms) so that
//! counting costs the database little while it is busy.

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A started worker process and when it said it was ready.
pub struct WorkerProcess {
    child: Child,
    ready_at: Instant,
}

impl WorkerProcess {
    /// Starts `command` and waits for its `ready` line.
    pub async fn start(mut command: Command) -> anyhow::Result<WorkerProcess> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("the worker's stdout is not piped"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready_at = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.trim() == "ready" {
                    return Ok(Instant::now());
                }
            }
            anyhow::bail!("the worker exited before it was ready")
        })
        .await
        .map_err(|_| anyhow::anyhow!("the worker was not ready within 60 s"))??;
        // Keep reading, so that a chatty worker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(WorkerProcess { child, ready_at })
    }

    /// Waits until `done()` counts `jobs` finished jobs and returns the time
    /// since the worker was ready. Fails when the worker exits first or
    /// when it takes longer than `limit`.
    pub async fn wait_until_done<F, Fut>(
        &mut self,
        jobs: usize,
        limit: Duration,
        mut done: F,
    ) -> anyhow::Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<usize>>,
    {
        loop {
            let counted_at = Instant::now();
            let finished = done().await?;
            if finished >= jobs {
                return Ok(counted_at.duration_since(self.ready_at));
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the worker exited ({status}) with {finished} of {jobs} jobs done");
            }
            let elapsed = self.ready_at.elapsed();
            if elapsed > limit {
                anyhow::bail!(
                    "only {finished} of {jobs} jobs were done after {:.1} s",
                    elapsed.as_secs_f64()
                );
            }
            tokio::time::sleep(pace(elapsed, finished, jobs)).await;
        }
    }

    /// Kills the worker (its scratch database or key prefix is thrown away
    /// next, so nothing needs a graceful stop).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// How long to wait before counting again: a quarter of the time the rest
/// should take at the rate so far, between 2 and 50 ms.
fn pace(elapsed: Duration, finished: usize, jobs: usize) -> Duration {
    let (min, max) = (Duration::from_millis(2), Duration::from_millis(50));
    if finished == 0 {
        return Duration::from_millis(10);
    }
    let rest = elapsed.mul_f64(jobs.saturating_sub(finished) as f64 / finished as f64);
    (rest / 4).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_often_near_the_end_and_rarely_before() {
        let second = Duration::from_secs(1);
        assert_eq!(pace(second, 1_000, 20_000), Duration::from_millis(50));
        assert_eq!(pace(second, 19_990, 20_000), Duration::from_millis(2));
        let middle = pace(second, 19_000, 20_000);
        assert!(middle > Duration::from_millis(2) && middle < Duration::from_millis(50));
    }
}
