//! The canary's share of traffic, in basis points.
//!
//! Users write a percentage with at most two decimals (`10`, `12.5`, `0.25`); inside it is an
//! integer in `0..=10_000` so that comparisons with a hash bucket are exact and the stable share
//! is always `10_000 - canary`: there is no second number to get wrong.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Basis points in one hundred percent.
pub const FULL: u16 = 10_000;

/// A canary weight: `0..=10_000` basis points (0.01% each).
/// Serialised as a JSON number of percent: a whole number when it is one (`10`), else `12.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
#[serde(try_from = "f64")]
pub struct Weight(u16);

impl Serialize for Weight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(100) { s.serialize_u16(self.0 / 100) } else { s.serialize_f64(self.percent()) }
    }
}

/// Why a number is not a weight.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightError {
    NotFinite,
    OutOfRange(f64),
    TooPrecise(f64),
}

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFinite => write!(f, "weight must be a finite number of percent"),
            Self::OutOfRange(v) => write!(f, "weight {v} is outside 0..=100 (percent)"),
            Self::TooPrecise(v) => {
                write!(f, "weight {v} has more than two decimals (the finest step is 0.01%)")
            }
        }
    }
}

impl std::error::Error for WeightError {}

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(FULL);

    /// A weight from basis points; `None` above 10 000.
    pub const fn from_basis_points(bp: u16) -> Option<Weight> {
        if bp <= FULL { Some(Weight(bp)) } else { None }
    }

    /// A weight from a percentage with at most two decimals.
    pub fn from_percent(percent: f64) -> Result<Weight, WeightError> {
        if !percent.is_finite() {
            return Err(WeightError::NotFinite);
        }
        if !(0.0..=100.0).contains(&percent) {
            return Err(WeightError::OutOfRange(percent));
        }
        let scaled = percent * 100.0;
        let rounded = scaled.round();
        // 1e-6 bp absorbs binary float noise (12.34 * 100 = 1233.9999999999998) and nothing more.
        if (scaled - rounded).abs() > 1e-6 {
            return Err(WeightError::TooPrecise(percent));
        }
        // In range 0..=10_000 by the check above, so the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Weight(rounded as u16))
    }

    pub const fn basis_points(self) -> u16 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// The rest of the traffic, which goes to the stable subset.
    pub const fn complement(self) -> Weight {
        Weight(FULL - self.0)
    }
}

impl TryFrom<f64> for Weight {
    type Error = WeightError;
    fn try_from(v: f64) -> Result<Self, Self::Error> {
        Weight::from_percent(v)
    }
}

impl From<Weight> for f64 {
    fn from(w: Weight) -> f64 {
        w.percent()
    }
}

impl fmt::Display for Weight {
    /// `10%`, `12.5%`, `0.25%`: the shortest exact form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 100;
        let frac = self.0 % 100;
        match frac {
            0 => write!(f, "{whole}%"),
            f10 if f10 % 10 == 0 => write!(f, "{whole}.{}%", f10 / 10),
            _ => write!(f, "{whole}.{frac:02}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_decimals_are_exact() {
        assert_eq!(Weight::from_percent(12.34).unwrap().basis_points(), 1234);
        let json = |p: f64| serde_json::to_string(&Weight::from_percent(p).unwrap()).unwrap();
        assert_eq!(
            (json(10.0), json(0.0), json(100.0), json(12.5), json(0.25)),
            ("10".into(), "0".into(), "100".into(), "12.5".into(), "0.25".into())
        );
        assert_eq!(Weight::from_percent(0.01).unwrap().basis_points(), 1);
        assert_eq!(Weight::from_percent(100.0).unwrap(), Weight::FULL);
        assert_eq!(Weight::from_percent(0.0).unwrap(), Weight::ZERO);
    }

    #[test]
    fn three_decimals_and_out_of_range_are_rejected() {
        assert_eq!(Weight::from_percent(10.005), Err(WeightError::TooPrecise(10.005)));
        assert_eq!(Weight::from_percent(100.01), Err(WeightError::OutOfRange(100.01)));
        assert_eq!(Weight::from_percent(-1.0), Err(WeightError::OutOfRange(-1.0)));
        assert_eq!(Weight::from_percent(f64::NAN), Err(WeightError::NotFinite));
    }

    #[test]
    fn display_is_short_and_exact() {
        let show = |bp| Weight::from_basis_points(bp).unwrap().to_string();
        assert_eq!(show(1000), "10%");
        assert_eq!(show(1250), "12.5%");
        assert_eq!(show(25), "0.25%");
        assert_eq!(show(1), "0.01%");
    }

    #[test]
    fn stable_gets_the_rest() {
        assert_eq!(Weight::from_percent(10.0).unwrap().complement().basis_points(), 9000);
    }
}
