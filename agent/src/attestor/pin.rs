//! Pinning the calling process, so that selectors read from `/proc/<pid>` are
//! known to describe the process that connected and not a later one that was
//! given its recycled PID.
//!
//! Best: the kernel's pidfd for the peer taken at accept time (`SO_PEERPIDFD`,
//! Linux ≥ 6.5). Only where the kernel lacks that option, a pidfd opened by
//! PID right after accept; else the process start time from
//! `/proc/<pid>/stat`. Both fallbacks pin whatever owns the PID at that
//! moment, so they are never used when SO_PEERPIDFD exists but fails: then
//! the peer is gone, and its PID may already be someone else's.
//!
//! A pidfd becomes readable when its process exits, and a PID cannot be
//! reused while the process behind a pidfd has not exited, so "not yet
//! readable" after attestation proves that every `/proc/<pid>` read was of
//! the pinned process.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    #[error("the calling process {0} has exited")]
    Exited(i32),
    #[error("PID {0} now belongs to another process")]
    Replaced(i32),
    /// Shared, so that a caller's error can be handed to every call on its connection.
    #[error("cannot read /proc/{pid}/stat: {source}")]
    Stat {
        pid: i32,
        source: Arc<std::io::Error>,
    },
    #[error("cannot read /proc/{0}/stat: unexpected format")]
    StatFormat(i32),
    /// `call`: what failed, as a prefix of the error ("" for the pidfd poll).
    #[error("cannot check the calling process {pid}: {call}{source}")]
    Check {
        pid: i32,
        call: &'static str,
        source: Errno,
    },
}

/// How a caller is pinned; see the module comment.
#[derive(Debug)]
pub(crate) enum ProcessPin {
    Pidfd { pid: i32, pidfd: OwnedFd },
    StartTime { pid: i32, start_ticks: u64 },
}

impl ProcessPin {
    /// Pins the process at the other end of `socket`, whose PID SO_PEERCRED gave as `pid`.
    pub(crate) fn for_peer(socket: BorrowedFd<'_>, pid: i32) -> Result<Self, PinError> {
        match getsockopt(&socket, sockopt::PeerPidfd) {
            Ok(pidfd) => return Ok(Self::Pidfd { pid, pidfd }),
            Err(errno) => peer_pidfd_unsupported(errno, pid)?,
        }
        match pidfd_open(pid) {
            Ok(pidfd) => Ok(Self::Pidfd { pid, pidfd }),
            Err(Errno::ESRCH) => Err(PinError::Exited(pid)),
            // No pidfd_open (Linux < 5.3, or a seccomp filter refusing it).
            Err(_) => Self::by_start_time(pid),
        }
    }

    /// The fallback pin: the start time the process has now.
    pub(crate) fn by_start_time(pid: i32) -> Result<Self, PinError> {
        Ok(Self::StartTime {
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// Ok while the pinned process is alive and still owns its PID.
    pub(crate) fn verify(&self) -> Result<(), PinError> {
        match self {
            Self::Pidfd { pid, pidfd } => {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(PinError::Exited(*pid)),
                    Err(source) => Err(PinError::Check {
                        pid: *pid,
                        call: "",
                        source,
                    }),
                }
            }
            Self::StartTime {
                pid,
                start_ticks: pinned,
            } => match start_ticks(*pid) {
                Ok(now) if now == *pinned => Ok(()),
                Ok(_) => Err(PinError::Replaced(*pid)),
                Err(_) => Err(PinError::Exited(*pid)),
            },
        }
    }
}

/// Ok when SO_PEERPIDFD failed with `errno` only because the kernel does not
/// have it, so pinning by PID is the best there is; else why the caller
/// cannot be pinned.
fn peer_pidfd_unsupported(errno: Errno, pid: i32) -> Result<(), PinError> {
    match errno {
        // Linux < 6.5: sock_getsockopt answers every SOL_SOCKET option it
        // does not know with ENOPROTOOPT.
        Errno::ENOPROTOOPT => Ok(()),
        // The option exists but the peer has no live process any more
        // (pidfd_prepare: EINVAL; no peer PID recorded: ENODATA).
        Errno::EINVAL | Errno::ESRCH | Errno::ENODATA => Err(PinError::Exited(pid)),
        // Out of descriptors or memory, or refused by a security module: the
        // peer may be alive, but falling back to its bare PID would be racy.
        source => Err(PinError::Check {
            pid,
            call: "SO_PEERPIDFD: ",
            source,
        }),
    }
}

/// `pidfd_open(2)` (Linux ≥ 5.3) for kernels without SO_PEERPIDFD.
#[allow(unsafe_code)]
fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new file descriptor
    // or -1 with errno set; nix has no wrapper for it.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(Errno::result(fd)?).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: the syscall just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
pub(crate) fn start_ticks(pid: i32) -> Result<u64, PinError> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| PinError::Stat {
            pid,
            source: Arc::new(e),
        })?;
    parse_start_ticks(&stat).ok_or(PinError::StatFormat(pid))
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces
    // or parentheses, so fields are counted from the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After comm come field 3 (state) … field 22 (starttime): index 19.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn start_time_is_parsed_past_odd_command_names() {
        let fields: Vec<String> = (3..=22).map(|n| n.to_string()).collect();
        let stat = format!("42 (a) b (c)) {}", fields.join(" "));
        assert_eq!(parse_start_ticks(&stat), Some(22));
        assert_eq!(parse_start_ticks("42 (x) R 1"), None);
    }

    #[test]
    fn a_live_process_verifies() -> Result<(), Box<dyn std::error::Error>> {
        let me = i32::try_from(std::process::id())?;
        let (ours, _theirs) = UnixStream::pair()?;
        let pin = ProcessPin::for_peer(ours.as_fd(), me)?;
        assert!(matches!(pin, ProcessPin::Pidfd { .. }), "{pin:?}");
        pin.verify()?;
        ProcessPin::by_start_time(me)?.verify()?;
        Ok(())
    }

    /// What a recycled PID looks like to the start-time pin: same PID, another start time.
    #[test]
    fn another_start_time_means_another_process() -> Result<(), Box<dyn std::error::Error>> {
        let pid = i32::try_from(std::process::id())?;
        let pin = ProcessPin::StartTime {
            pid,
            start_ticks: start_ticks(pid)? + 1,
        };
        assert!(matches!(pin.verify(), Err(PinError::Replaced(p)) if p == pid));
        Ok(())
    }

    /// Only a kernel without SO_PEERPIDFD lets the pin fall back to the bare
    /// PID; any other failure means no pin (and no identity).
    #[test]
    fn only_a_missing_so_peerpidfd_falls_back_to_the_pid() {
        assert!(peer_pidfd_unsupported(Errno::ENOPROTOOPT, 7).is_ok());
        for gone in [Errno::EINVAL, Errno::ESRCH, Errno::ENODATA] {
            assert!(
                matches!(peer_pidfd_unsupported(gone, 7), Err(PinError::Exited(7))),
                "{gone}"
            );
        }
        for other in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::EPERM,
            Errno::EOPNOTSUPP,
        ] {
            assert!(
                matches!(
                    peer_pidfd_unsupported(other, 7),
                    Err(PinError::Check { pid: 7, .. })
                ),
                "{other}"
            );
        }
    }

    /// A child is pinned both ways, exits and is reaped (its PID is now free
    /// for reuse): neither pin verifies any more.
    #[test]
    fn pins_fail_once_the_process_has_exited() -> Result<(), Box<dyn std::error::Error>> {
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let pid = i32::try_from(child.id())?;
        let by_fd = ProcessPin::Pidfd {
            pid,
            pidfd: pidfd_open(pid)?,
        };
        let by_time = ProcessPin::by_start_time(pid)?;
        by_fd.verify()?;
        by_time.verify()?;
        child.kill()?;
        child.wait()?;
        assert!(matches!(by_fd.verify(), Err(PinError::Exited(_))));
        assert!(by_time.verify().is_err());
        Ok(())
    }
}
