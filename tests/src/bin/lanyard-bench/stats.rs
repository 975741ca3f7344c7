//! Fixed-duration load windows and latency percentiles.
//!
//! Every worker owns its connection and runs calls back to back. Calls that
//! start during the warm-up are not counted; calls that start inside the
//! window and finish by its end are. Latencies are kept whole (a sorted `Vec`
//! of every call's duration), so percentiles are exact, not bucketed.

use std::future::Future;
use std::time::{Duration, Instant};

/// One caller: a connection and what it asks, call after call.
pub(crate) trait Worker: Send + 'static {
    /// The `n`th call of this worker.
    fn call(&mut self, n: u64) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What a window measured.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub calls: u64,
    pub window: Duration,
    /// Sorted, shortest first.
    pub latencies: Vec<Duration>,
    /// CPU time the whole machine spent busy during the window (every
    /// process, the load generator's included), when /proc/stat says.
    pub machine_busy: Option<Duration>,
}

impl Sample {
    pub(crate) fn per_second(&self) -> f64 {
        self.calls as f64 / self.window.as_secs_f64()
    }

    /// The machine's busy CPU time per call counted in the window: what one
    /// call costs on this machine, all its processes and the kernel included.
    pub(crate) fn cpu_per_call(&self) -> Option<Duration> {
        let busy = self.machine_busy?;
        let calls = u32::try_from(self.calls).ok().filter(|&calls| calls > 0)?;
        Some(busy / calls)
    }

    /// The `p`-th percentile (0–100) of the call latencies.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `p`-th percentile (0–100) of `sorted` (nearest rank).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs every worker concurrently on the current runtime for `warmup`, then
/// measures for `window`.
pub(crate) async fn run<W: Worker>(
    workers: Vec<W>,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        tasks.spawn(drive(worker, measure_from, end));
    }
    let busy = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let from = machine_busy_so_far()?;
        tokio::time::sleep_until(end.into()).await;
        machine_busy_so_far()?.checked_sub(from)
    });
    let mut calls = 0;
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (n, mut lat) = joined??;
        calls += n;
        latencies.append(&mut lat);
    }
    latencies.sort_unstable();
    Ok(Sample {
        calls,
        window,
        latencies,
        machine_busy: busy.await?,
    })
}

/// CPU time every core of the machine has spent busy since boot: user,
/// nice, system, irq and softirq (not idle, I/O wait or a hypervisor's steal).
fn machine_busy_so_far() -> Option<Duration> {
    use procfs::CurrentSI;
    let total = procfs::KernelStats::current().ok()?.total;
    let ticks = total.user
        + total.nice
        + total.system
        + total.irq.unwrap_or(0)
        + total.softirq.unwrap_or(0);
    let per_second = procfs::ticks_per_second();
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

async fn drive<W: Worker>(
    mut worker: W,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut n = 0;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        worker.call(n).await?;
        n += 1;
        let finished = Instant::now();
        if started >= measure_from && finished <= end {
            latencies.push(finished - started);
        }
    }
    Ok((latencies.len() as u64, latencies))
}

/// Runs `op` on this thread for `window` after `warmup`; calls per second.
pub(crate) fn single_thread_rate(
    warmup: Duration,
    window: Duration,
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let warm_end = Instant::now() + warmup;
    while Instant::now() < warm_end {
        op()?;
    }
    let start = Instant::now();
    let mut calls = 0u64;
    // Check the clock every few calls only: each call is microseconds long.
    while start.elapsed() < window {
        for _ in 0..16 {
            op()?;
        }
        calls += 16;
    }
    Ok(calls as f64 / start.elapsed().as_secs_f64())
}

pub(crate) fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Human count: 12,345.
pub(crate) fn count(value: f64) -> String {
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(count(1234567.4), "1,234,567");
    }
}
