//! CPU time and memory of a process, read from /proc.

use std::fs;
use std::io;

/// CPU time and memory of a process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time of all threads, in seconds.
    pub cpu_secs: f64,
    /// Resident set size now (VmRSS), in bytes.
    pub rss_bytes: u64,
    /// Peak resident set size since the process started (VmHWM), in bytes.
    pub peak_rss_bytes: u64,
}

/// Reads /proc/PID/stat and /proc/PID/status; `None` reads this process.
///
/// # Errors
///
/// Fails when the process does not exist or a file does not have the fields
/// Linux documents in proc(5).
pub fn sample(pid: Option<u32>) -> io::Result<ProcessSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| invalid(&dir, "stat"))?;
    Ok(ProcessSample {
        cpu_secs: ticks as f64 / clock_ticks_per_sec(),
        rss_bytes: parse_status_kib(&status, "VmRSS:").ok_or_else(|| invalid(&dir, "status"))?
            * 1024,
        peak_rss_bytes: parse_status_kib(&status, "VmHWM:")
            .ok_or_else(|| invalid(&dir, "status"))?
            * 1024,
    })
}

fn invalid(dir: &str, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected format of {dir}/{file}"),
    )
}

/// Returns utime + stime (fields 14 and 15 of /proc/PID/stat) in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name in field 2 is in parentheses and may contain spaces,
    // so the numbered fields are counted from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name come field 3 (state) onwards: utime is field 14, so the
    // 12th item here, and stime follows it.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Returns the value in KiB of a `Key:   123 kB` line of /proc/PID/status.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the C library and has no
    // preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    4 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn status_kib_lines() {
        let status = "Name:\tmosquitto\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(5120));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(4096));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn sample_own_process() {
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i ^ (spin >> 3));
        }
        std::hint::black_box(spin);
        let own = sample(None).expect("/proc/self is readable");
        assert!(own.rss_bytes > 0);
        assert!(own.peak_rss_bytes >= own.rss_bytes);
        assert!(own.cpu_secs >= 0.0);
    }

    #[test]
    fn sample_missing_process_fails() {
        assert!(sample(Some(u32::MAX)).is_err());
    }
}
