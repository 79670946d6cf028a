//! The machine's CPU time, from /proc/stat: what the generator and the
//! iperf3 measurements divide their packets by.
use anyhow::{Context as _, Result};

/// The machine's CPU time counters (/proc/stat, first line).
pub struct CpuTimes {
    busy: u64,
    total: u64,
    cpus: u32,
}

impl CpuTimes {
    pub fn read() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        let cpus = u32::try_from(stat.lines().filter(|line| line.starts_with("cpu")).count())
            .unwrap_or(2)
            .saturating_sub(1);
        Ok(Self {
            busy: total - idle,
            total,
            cpus,
        })
    }

    /// CPU time spent busy, on all CPUs, since `earlier`.
    pub fn busy_ns_since(&self, earlier: &Self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        #[expect(clippy::cast_precision_loss, reason = "jiffies fit f64 well")]
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        #[expect(clippy::cast_precision_loss, reason = "a small constant")]
        let ticks_per_second = ticks_per_second as f64;
        busy * 1e9 / ticks_per_second
    }

    /// How many CPUs were busy on average since `earlier`.
    pub fn busy_cpus_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        let busy = self.busy.saturating_sub(earlier.busy);
        #[expect(clippy::cast_precision_loss, reason = "jiffies fit f64 well")]
        let share = busy as f64 / total as f64;
        share * f64::from(self.cpus)
    }
}
