//! The agent's audit records: the SVIDs it has the server mint for
//! workloads. Each is a `tracing` event with target `lanyard::audit` and a
//! stable `event` name, routed by `lanyard_host::logging` to the log or to
//! `[log] audit_file` (JSON lines). Never a token or a key.

use lanyard_host::audit;

/// The workload process a mint was made for, as the kernel named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    pub uid: u32,
    pub pid: i32,
}

/// Why the agent asked the server: a workload's request, a background
/// refresh a request set off, or the renewal loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Request,
    Refresh,
    Renewal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Refresh => "refresh",
            Self::Renewal => "renewal",
        }
    }
}

/// `jwt_svid.minted`: a JWT-SVID the server minted at this agent's request.
pub(crate) fn jwt_svid_minted(
    spiffe_id: &str,
    audience_count: usize,
    caller: Option<Caller>,
    trigger: Trigger,
    expires_at: i64,
) {
    audit!(
        "jwt_svid.minted",
        spiffe_id,
        audience_count,
        uid = caller.map(|c| c.uid),
        pid = caller.map(|c| c.pid),
        trigger = trigger.as_str(),
        expires_at,
        "JWT-SVID minted for a workload"
    );
}

/// `x509_svid.minted`: an X509-SVID the server signed for a key this agent made.
pub(crate) fn x509_svid_minted(
    spiffe_id: &str,
    caller: Option<Caller>,
    trigger: Trigger,
    expires_at: i64,
) {
    audit!(
        "x509_svid.minted",
        spiffe_id,
        uid = caller.map(|c| c.uid),
        pid = caller.map(|c| c.pid),
        trigger = trigger.as_str(),
        expires_at,
        "X509-SVID minted for a workload"
    );
}
