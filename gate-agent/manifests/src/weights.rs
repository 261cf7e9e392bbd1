//! Route weights as Istio applies them, and what a mistyped pair probably meant.
//!
//! Istio 1.15 and later treat weights as relative: a destination gets `weight / sum` of the
//! requests (an omitted weight is 0; a lone destination gets everything whatever its weight), and
//! only an all-zero split is rejected. Older Istio rejected any sum but 100. All arithmetic here is
//! on integers; percentages are rounded only for display.

use canary_core::Weight;

/// `weight / total` in percent, to one decimal: `52.6%`, `99%`.
pub(crate) fn percent(weight: u64, total: u64) -> String {
    if total == 0 {
        return "0%".into();
    }
    let tenths = div_round(u128::from(weight) * 1000, u128::from(total));
    if tenths.is_multiple_of(10) { format!("{}%", tenths / 10) } else { format!("{}.{}%", tenths / 10, tenths % 10) }
}

/// `weight / total` as a canary weight (rounded to the nearest basis point).
pub(crate) fn share(weight: u64, total: u64) -> Weight {
    if total == 0 {
        return Weight::ZERO;
    }
    let bp = div_round(u128::from(weight.min(total)) * 10_000, u128::from(total));
    u16::try_from(bp).ok().and_then(Weight::from_basis_points).unwrap_or(Weight::FULL)
}

/// Whether `weight / total` is strictly above `max` (exact, no rounding).
pub(crate) fn above(weight: u64, total: u64, max: Weight) -> bool {
    u128::from(weight) * 10_000 > u128::from(max.basis_points()) * u128::from(total)
}

fn div_round(n: u128, d: u128) -> u128 {
    (n + d / 2) / d
}

/// The stable/canary pair the author most likely meant, for weights that give the canary the
/// larger share or do not sum to 100: the pair swapped (`1/99` → `99/1`), or one number off by a
/// factor of ten (`9/10` → `90/10`, `90/100` → `90/10`). Always sums to 100 with stable ahead.
pub(crate) fn meant(stable: u64, canary: u64) -> Option<(u64, u64)> {
    let fits = |(s, c): (u64, u64)| s.checked_add(c) == Some(100) && s > c;
    if stable.checked_add(canary) == Some(100) && canary > stable {
        return Some((canary, stable));
    }
    let tenth = |w: u64| w.is_multiple_of(10).then_some(w / 10);
    [
        Some((stable.saturating_mul(10), canary)),
        tenth(canary).map(|c| (stable, c)),
        tenth(stable).map(|s| (s, canary)),
        Some((stable, canary.saturating_mul(10))),
    ]
    .into_iter()
    .flatten()
    .find(|pair| fits(*pair))
}

/// The same split written as percentages: `90/5` → `95/5`.
pub(crate) fn as_percentages(stable: u64, canary: u64) -> (u64, u64) {
    let total = stable.saturating_add(canary);
    if total == 0 {
        return (100, 0);
    }
    let c = u64::try_from(div_round(u128::from(canary) * 100, u128::from(total))).unwrap_or(100).min(100);
    (100 - c, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_what_istio_sends() {
        assert_eq!(percent(10, 19), "52.6%", "9/10 sends 52.6% to the second");
        assert_eq!(percent(9, 19), "47.4%");
        assert_eq!(percent(99, 100), "99%");
        assert_eq!(percent(100, 190), "52.6%");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(5, 0), "0%");
        assert_eq!(percent(u64::MAX, u64::MAX), "100%");
    }

    #[test]
    fn share_and_above_are_exact_enough() {
        assert_eq!(share(10, 19).basis_points(), 5263);
        assert_eq!(share(1, 100), Weight::from_percent(1.0).unwrap());
        assert_eq!(share(3, 0), Weight::ZERO);
        let fifty = Weight::from_percent(50.0).unwrap();
        assert!(!above(50, 100, fifty) && above(5001, 10_000, fifty) && !above(1, 2, fifty));
    }

    #[test]
    fn what_was_meant() {
        assert_eq!(meant(1, 99), Some((99, 1)), "the incident");
        assert_eq!(meant(10, 90), Some((90, 10)));
        assert_eq!(meant(9, 10), Some((90, 10)));
        assert_eq!(meant(90, 100), Some((90, 10)));
        assert_eq!(meant(90, 1), Some((90, 10)));
        assert_eq!(meant(90, 5), None);
        assert_eq!(meant(50, 50), None);
        assert_eq!(meant(u64::MAX, u64::MAX), None);
        assert_eq!(as_percentages(90, 5), (95, 5));
        assert_eq!(as_percentages(0, 0), (100, 0));
    }
}
