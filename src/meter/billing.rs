//! Billing one closed hour of one dimension, exactly. MeterUsage is sent quantities in steps
//! (whole units, until the AWS SDK for Rust sends `UsageQuantityAsDecimal`: see
//! [`crate::aws::metering::BILLABLE_STEP`]), so the hour bills the whole steps of the fraction
//! carried in plus the hour's usage, and carries what remains into the dimension's next hour.
//! Over any run the steps billed are the floor of what was acknowledged, and what is not yet
//! billed is under one step.
//!
//! The billed steps are allocated to the hour's tag sets in proportion to their usage, by the
//! largest-remainder method, so the allocations sum exactly to the record's quantity and the
//! carried fraction is attributed to tag sets as their usage is.
//!
//! Everything is in micro-units.

/// Where the remaining fraction goes when an hour closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Bill the whole units; the fraction is carried into the next hour (every hour, and the
    /// last one by default: the buyer is never billed for what they did not use).
    Down,
    /// Bill the fraction as one more unit and carry the difference as a credit (negative),
    /// which a later hour on the same state consumes (`--final-fraction up`, at shutdown).
    Up,
}

/// One closed hour's bill for a dimension, in micro-units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourBill<K> {
    /// The record's quantity: a whole number of steps.
    pub quantity: u64,
    /// Whole steps per tag set, summing to `quantity`; tag sets allocated nothing are left out.
    pub allocations: Vec<(K, u64)>,
    /// Carried into the dimension's next hour, within (-1, 1) step.
    pub carried_out: i64,
}

/// Bills an hour: `carried_in` (within (-1, 1) step) and the hour's `usage` per tag set (keys
/// unique), in whole `step`s, at most `max` (a whole number of steps).
pub fn bill_hour<K: Clone + Ord>(
    carried_in: i64,
    usage: &[(K, u64)],
    rounding: Rounding,
    step: u64,
    max: u64,
) -> HourBill<K> {
    let per_step = i128::from(step);
    let used: u128 = usage.iter().map(|(_, micros)| u128::from(*micros)).sum();
    let total = i128::from(carried_in) + used as i128;
    let steps = match rounding {
        Rounding::Down => total.div_euclid(per_step),
        Rounding::Up => (total + per_step - 1).div_euclid(per_step),
    }
    .clamp(0, i128::from(max / step));
    let carried_out = total - steps * per_step;
    let steps = steps as u64;
    HourBill {
        quantity: steps * step,
        allocations: allocate(steps, usage, used)
            .into_iter()
            .map(|(key, whole)| (key, whole * step))
            .collect(),
        carried_out: i64::try_from(carried_out).expect("under one step fits"),
    }
}

/// `units` (steps) split over `usage` in proportion to it: each tag set gets the whole part of its
/// quota, and the units left go one each to the largest remainders (ties to the first key).
fn allocate<K: Clone + Ord>(units: u64, usage: &[(K, u64)], used: u128) -> Vec<(K, u64)> {
    if units == 0 || used == 0 {
        return Vec::new();
    }
    let mut shares: Vec<(K, u64, u128)> = usage
        .iter()
        .map(|(key, micros)| {
            let quota = u128::from(units) * u128::from(*micros);
            (key.clone(), (quota / used) as u64, quota % used)
        })
        .collect();
    let given: u64 = shares.iter().map(|(_, whole, _)| whole).sum();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        shares[b]
            .2
            .cmp(&shares[a].2)
            .then_with(|| shares[a].0.cmp(&shares[b].0))
    });
    for &index in order.iter().take((units - given) as usize) {
        shares[index].1 += 1;
    }
    shares.sort_by(|a, b| a.0.cmp(&b.0));
    shares
        .into_iter()
        .filter(|(_, whole, _)| *whole > 0)
        .map(|(key, whole, _)| (key, whole))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quantity::MICROS_PER_UNIT;
    use proptest::prelude::*;

    const UNIT: u64 = MICROS_PER_UNIT;
    const MAX: u64 = 2_147_483_647 * UNIT;

    /// Billed in whole units, as MeterUsage is sent today; quantities below in units.
    fn bill(
        carried_in: i64,
        usage: &[(&'static str, u64)],
        rounding: Rounding,
    ) -> HourBill<&'static str> {
        let mut bill = bill_hour(carried_in, usage, rounding, UNIT, MAX);
        bill.quantity /= UNIT;
        for (_, units) in &mut bill.allocations {
            *units /= UNIT;
        }
        bill
    }

    #[test]
    fn the_whole_part_is_billed_and_the_fraction_carried() {
        let first = bill(0, &[("", 2 * UNIT + 750_000)], Rounding::Down);
        assert_eq!((first.quantity, first.carried_out), (2, 750_000));
        let second = bill(first.carried_out, &[("", 500_000)], Rounding::Down);
        assert_eq!((second.quantity, second.carried_out), (1, 250_000));
        let idle = bill(second.carried_out, &[], Rounding::Down);
        assert_eq!((idle.quantity, idle.carried_out), (0, 250_000));
        assert!(idle.allocations.is_empty());
    }

    #[test]
    fn rounding_up_bills_the_fraction_and_carries_a_credit() {
        let last = bill(250_000, &[("", 100_000)], Rounding::Up);
        assert_eq!((last.quantity, last.carried_out), (1, -650_000));
        // A later start on the same state consumes the credit first.
        let next = bill(last.carried_out, &[("", 1_000_000)], Rounding::Down);
        assert_eq!((next.quantity, next.carried_out), (0, 350_000));
        let exact = bill(0, &[("", 3 * UNIT)], Rounding::Up);
        assert_eq!(
            (exact.quantity, exact.carried_out),
            (3, 0),
            "nothing to round"
        );
    }

    #[test]
    fn a_credit_larger_than_the_hour_bills_nothing() {
        let hour = bill(-900_000, &[("a", 100_000)], Rounding::Down);
        assert_eq!((hour.quantity, hour.carried_out), (0, -800_000));
        assert!(hour.allocations.is_empty());
    }

    #[test]
    fn allocations_sum_to_the_quantity_by_largest_remainder() {
        // 0.6 + 0.6 + 0.6 = 1.8, plus 0.5 carried in: 2 units, 0.3 carried out.
        let hour = bill(
            500_000,
            &[("a", 600_000), ("b", 600_000), ("c", 600_000)],
            Rounding::Down,
        );
        assert_eq!(hour.quantity, 2);
        assert_eq!(hour.carried_out, 300_000);
        // Quotas 2/3 each: equal remainders, so the first keys get the units.
        assert_eq!(hour.allocations, vec![("a", 1), ("b", 1)]);
        let uneven = bill(
            0,
            &[("a", 5 * UNIT), ("b", 2_500_000), ("c", 500_000)],
            Rounding::Down,
        );
        assert_eq!(uneven.quantity, 8);
        // Quotas 5, 2.5 and 0.5: the one unit left goes to the first of the equal remainders.
        assert_eq!(uneven.allocations, vec![("a", 5), ("b", 3)]);
    }

    #[test]
    fn the_quantity_never_passes_meter_usages_maximum() {
        let hour = bill_hour(900_000, &[("", MAX)], Rounding::Up, UNIT, MAX);
        assert_eq!(hour.quantity, MAX);
        assert_eq!(hour.carried_out, 900_000);
    }

    #[test]
    fn a_micro_unit_step_bills_everything_and_carries_nothing() {
        // The day MeterUsage is sent decimals: the same arithmetic, one micro-unit per step.
        let hour = bill_hour(0, &[("a", 250_001), ("b", 3)], Rounding::Down, 1, MAX);
        assert_eq!(hour.quantity, 250_004);
        assert_eq!(hour.allocations, vec![("a", 250_001), ("b", 3)]);
        assert_eq!(hour.carried_out, 0);
    }

    proptest! {
        #[test]
        fn every_micro_unit_is_billed_carried_or_credited_never_lost(
            carried_in in -999_999i64..=999_999,
            usage in proptest::collection::vec(0u64..=50 * UNIT, 0..8),
            up in any::<bool>(),
        ) {
            let usage: Vec<(usize, u64)> = usage.into_iter().enumerate().collect();
            let rounding = if up { Rounding::Up } else { Rounding::Down };
            let hour = bill_hour(carried_in, &usage, rounding, UNIT, MAX);
            let used: i128 = usage.iter().map(|(_, m)| i128::from(*m)).sum();
            prop_assert_eq!(
                i128::from(carried_in) + used,
                i128::from(hour.quantity) + i128::from(hour.carried_out)
            );
            prop_assert_eq!(hour.quantity % UNIT, 0);
            prop_assert!(hour.carried_out.unsigned_abs() < UNIT);
            if !up && i128::from(carried_in) + used >= 0 {
                prop_assert!(hour.carried_out >= 0);
            }
            if used > 0 {
                prop_assert_eq!(hour.allocations.iter().map(|(_, u)| u).sum::<u64>(), hour.quantity);
                let unit = i128::from(UNIT);
                for (key, micros) in &hour.allocations {
                    prop_assert_eq!(micros % UNIT, 0);
                    let quota = i128::from(hour.quantity) * i128::from(usage[*key].1);
                    prop_assert!(i128::from(*micros) * used >= quota - unit * used);
                    prop_assert!(i128::from(*micros) * used <= quota + unit * used);
                }
            }
        }

        #[test]
        fn over_a_run_the_billed_units_are_the_floor_of_the_usage(
            hours in proptest::collection::vec(proptest::collection::vec(0u64..=3 * UNIT, 0..4), 1..40),
        ) {
            let mut carried = 0i64;
            let mut billed = 0u64;
            let mut used = 0u64;
            for usage in &hours {
                let usage: Vec<(usize, u64)> = usage.iter().copied().enumerate().collect();
                used += usage.iter().map(|(_, m)| m).sum::<u64>();
                let hour = bill_hour(carried, &usage, Rounding::Down, UNIT, MAX);
                billed += hour.quantity / UNIT;
                carried = hour.carried_out;
                prop_assert!(billed <= used / UNIT, "never more than was used");
            }
            prop_assert_eq!(billed, used / UNIT);
            prop_assert_eq!(carried as u64, used % UNIT);
        }
    }
}
