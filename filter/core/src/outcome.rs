//! Classifying a completed request as a success or a failure.

use crate::config::FailurePolicy;

/// What the filter saw of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseSummary {
    /// The status sent downstream; `None` when the stream ended without one (a reset).
    pub status: Option<u16>,
    /// The gRPC status of a gRPC response (from trailers-only headers, headers or trailers);
    /// `None` for other requests or when none was sent.
    pub grpc_status: Option<u32>,
    /// Envoy's response flags (`response.flags`, the bits of `%RESPONSE_FLAGS%`).
    pub flags: u64,
}

/// Envoy's response flag bits (`StreamInfo::CoreResponseFlag`, as the `response.flags` attribute
/// reports them) that mean the upstream did not give a whole answer: timeouts, resets,
/// connection failures and terminations, overflow, no healthy host, retries exhausted, protocol
/// errors. A response cut off after its headers keeps its `200` and carries one of these.
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2; // UH
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4; // UT
    pub const LOCAL_RESET: u64 = 0x8; // LR
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10; // UR
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20; // UF
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40; // UC
    pub const UPSTREAM_OVERFLOW: u64 = 0x80; // UO
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000; // URX
    pub const STREAM_IDLE_TIMEOUT: u64 = 0x10000; // SI
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x80000; // UMSDR
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x0080_0000; // UPE

    /// Every flag above.
    pub const UPSTREAM_FAILURE: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | LOCAL_RESET
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_OVERFLOW
        | UPSTREAM_RETRY_LIMIT_EXCEEDED
        | STREAM_IDLE_TIMEOUT
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | UPSTREAM_PROTOCOL_ERROR;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure,
}

impl FailurePolicy {
    /// Whether [`classify`](Self::classify) reads [`ResponseSummary::flags`]: only with `resets`
    /// on. The filter skips the `response.flags` property (a host call) otherwise.
    pub fn reads_flags(&self) -> bool {
        self.resets
    }

    pub fn classify(&self, response: ResponseSummary) -> Outcome {
        let by_status = match response.status {
            None | Some(0) => self.resets,
            Some(code) => self.statuses.iter().any(|m| m.matches(code)),
        };
        let by_flags = self.resets && response.flags & flags::UPSTREAM_FAILURE != 0;
        let by_grpc = response.grpc_status.is_some_and(|g| self.grpc_statuses.iter().any(|c| u32::from(*c) == g));
        let failed = by_status || by_flags || by_grpc;
        if failed { Outcome::Failure } else { Outcome::Success }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusMatch;

    #[test]
    fn default_policy_fails_5xx_and_resets() {
        let p = FailurePolicy::default();
        let c = |status| p.classify(ResponseSummary { status, ..ResponseSummary::default() });
        assert_eq!(c(Some(200)), Outcome::Success);
        assert_eq!(c(Some(404)), Outcome::Success);
        assert_eq!(c(Some(429)), Outcome::Success);
        assert_eq!(c(Some(500)), Outcome::Failure);
        assert_eq!(c(Some(503)), Outcome::Failure);
        assert_eq!(c(None), Outcome::Failure);
    }

    #[test]
    fn custom_policy_counts_exact_codes() {
        let p = FailurePolicy { statuses: vec![StatusMatch::Code(429)], resets: false, grpc_statuses: vec![] };
        let s = |status| ResponseSummary { status, ..ResponseSummary::default() };
        assert_eq!(p.classify(s(Some(429))), Outcome::Failure);
        assert_eq!(p.classify(s(Some(500))), Outcome::Success);
        assert_eq!(p.classify(s(None)), Outcome::Success);
        let cut = ResponseSummary { status: Some(200), flags: flags::UPSTREAM_REMOTE_RESET, grpc_status: None };
        assert_eq!(p.classify(cut), Outcome::Success, "resets: false ignores the flags too");
    }

    #[test]
    fn a_response_cut_off_or_timed_out_after_its_status_is_a_failure() {
        let p = FailurePolicy::default();
        for f in [flags::UPSTREAM_REMOTE_RESET, flags::UPSTREAM_CONNECTION_TERMINATION, flags::UPSTREAM_REQUEST_TIMEOUT]
        {
            let r = ResponseSummary { status: Some(200), flags: f, grpc_status: None };
            assert_eq!(p.classify(r), Outcome::Failure, "flag {f:#x}");
        }
        // Flags that say nothing about the upstream (a fault filter's delay, DI = 0x200) do not.
        let r = ResponseSummary { status: Some(200), flags: 0x200, grpc_status: None };
        assert_eq!(p.classify(r), Outcome::Success);
    }

    #[test]
    fn without_resets_the_flags_never_change_an_outcome_so_they_need_not_be_read() {
        let off = FailurePolicy { resets: false, ..FailurePolicy::default() };
        assert!(!off.reads_flags() && FailurePolicy::default().reads_flags());
        let all_flags = (0..64).map(|b| 1u64 << b).chain([0, flags::UPSTREAM_FAILURE, u64::MAX]);
        for f in all_flags {
            for status in [None, Some(0), Some(200), Some(404), Some(500), Some(503)] {
                for grpc_status in [None, Some(0), Some(14)] {
                    let with = ResponseSummary { status, grpc_status, flags: f };
                    let without = ResponseSummary { flags: 0, ..with };
                    assert_eq!(off.classify(with), off.classify(without), "{with:?}");
                }
            }
        }
    }

    #[test]
    fn grpc_server_errors_are_failures_and_client_errors_are_not() {
        let p = FailurePolicy::default();
        let g = |code| p.classify(ResponseSummary { status: Some(200), grpc_status: Some(code), flags: 0 });
        assert_eq!(g(0), Outcome::Success);
        for code in [2, 4, 12, 13, 14, 15] {
            assert_eq!(g(code), Outcome::Failure, "grpc-status {code}");
        }
        for code in [1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert_eq!(g(code), Outcome::Success, "grpc-status {code}");
        }
    }
}
