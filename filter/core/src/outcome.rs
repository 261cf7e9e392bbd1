//! Classifying a completed request as a success or a failure.

use crate::config::FailurePolicy;

/// What the filter saw of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseSummary {
    /// The status sent downstream; `None` when the stream ended without one (a reset).
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure,
}

impl FailurePolicy {
    pub fn classify(&self, response: ResponseSummary) -> Outcome {
        let failed = match response.status {
            None | Some(0) => self.resets,
            Some(code) => self.statuses.iter().any(|m| m.matches(code)),
        };
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
        let c = |status| p.classify(ResponseSummary { status });
        assert_eq!(c(Some(200)), Outcome::Success);
        assert_eq!(c(Some(404)), Outcome::Success);
        assert_eq!(c(Some(429)), Outcome::Success);
        assert_eq!(c(Some(500)), Outcome::Failure);
        assert_eq!(c(Some(503)), Outcome::Failure);
        assert_eq!(c(None), Outcome::Failure);
    }

    #[test]
    fn custom_policy_counts_exact_codes() {
        let p = FailurePolicy { statuses: vec![StatusMatch::Code(429)], resets: false };
        assert_eq!(p.classify(ResponseSummary { status: Some(429) }), Outcome::Failure);
        assert_eq!(p.classify(ResponseSummary { status: Some(500) }), Outcome::Success);
        assert_eq!(p.classify(ResponseSummary { status: None }), Outcome::Success);
    }
}
