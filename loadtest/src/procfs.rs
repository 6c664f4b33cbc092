//! Process sampling from Linux `/proc`, and the open-file limit.
//!
//! * Resident memory: `VmRSS` in `/proc/PID/status` (kB).
//! * CPU time: `utime + stime` (fields 14 and 15) of `/proc/PID/stat`, in clock ticks
//!   of `sysconf(_SC_CLK_TCK)` — all threads of the process together; `utime` alone is
//!   kept too, so a report can split user-space from kernel time.

use std::fs;
use std::io;
use std::time::Instant;

/// One reading of a process's memory and CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// User + system CPU time in seconds.
    pub cpu_seconds: f64,
    /// User-space CPU time in seconds (the part of `cpu_seconds` outside the kernel).
    pub user_seconds: f64,
    /// When the sample was taken.
    pub at: Instant,
}

/// Which process to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// The calling process (`/proc/self`).
    Current,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Self::Current => "/proc/self".to_owned(),
            Self::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Reads `pid`'s RSS and CPU time.
pub fn sample(pid: Pid) -> io::Result<ProcSample> {
    let dir = pid.dir();
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let rss_bytes = parse_vm_rss(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in status"))?;
    let (user, system) = parse_user_system_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    let hz = clock_ticks_per_second();
    Ok(ProcSample {
        rss_bytes,
        cpu_seconds: (user + system) as f64 / hz,
        user_seconds: user as f64 / hz,
        at: Instant::now(),
    })
}

/// `VmRSS:  1234 kB` → bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    parse_user_system_ticks(stat).map(|(user, system)| user + system)
}

/// `(utime, stime)` from a `/proc/PID/stat` line, fields counted as in
/// [`parse_cpu_ticks`].
pub fn parse_user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the resulting soft
/// limit (the number of file descriptors this process may open).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tcat\nVmPeak:\t  9999 kB\nVmRSS:\t    1740 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(1740 * 1024));
        assert_eq!(parse_vm_rss("Name: kthreadd\n"), None);
    }

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat =
            "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 1 0 123 1000 10";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
        assert_eq!(parse_user_system_ticks(stat), Some((37, 5)));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(Pid::Current).expect("/proc/self is readable");
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_seconds >= s.user_seconds && s.user_seconds >= 0.0);
    }

    #[test]
    fn nofile_limit_is_positive() {
        assert!(raise_nofile_limit().expect("getrlimit works") > 0);
    }
}
