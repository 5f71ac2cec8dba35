//! The search behind [`plan`]: candidates, evaluation of one set of
//! locations, exact enumeration and the budgeted heuristic.

use std::cmp::Ordering;

use crate::ids::MAX_LINES_PER_RESERVATION;

use super::{
    Candidate, Destination, Exclusion, FillRule, MAX_ALTERNATIVES, MAX_SHIPMENTS, Order, Plan,
    Planned, Policy, Rules, Shipment, haversine_km,
};

/// Chooses the best plan for `order` from `candidates` under `rules` (see
/// the module documentation for the order of plans and the search).
pub fn plan(
    candidates: &[Candidate],
    destination: &Destination,
    order: &Order,
    rules: &Rules,
) -> Planned {
    search(candidates, destination, order, rules, true)
}

/// [`plan`] filling every set the exact search meets (the bound off): the
/// reference the bounded search is tested against.
#[cfg(test)]
pub(crate) fn plan_filling_every_set(
    candidates: &[Candidate],
    destination: &Destination,
    order: &Order,
    rules: &Rules,
) -> Planned {
    search(candidates, destination, order, rules, false)
}

fn search(
    candidates: &[Candidate],
    destination: &Destination,
    order: &Order,
    rules: &Rules,
    bound: bool,
) -> Planned {
    let mut excluded = Vec::new();
    let mut sites: Vec<Site<'_>> = Vec::new();
    for candidate in candidates {
        match exclusion(candidate, destination, order) {
            Some(reason) => excluded.push((candidate.location.clone(), reason)),
            None => {
                sites.push(Site { candidate, km: haversine_km(candidate.point, destination.point) })
            }
        }
    }
    sites.sort_by(|a, b| {
        (a.candidate.priority, &a.candidate.location)
            .cmp(&(b.candidate.priority, &b.candidate.location))
    });
    let most = rules.max_shipments.clamp(1, MAX_SHIPMENTS).min(sites.len());
    let exact = sets_up_to(sites.len(), most, u64::from(rules.work_budget)).is_some();
    let mut search = Search { sites, order, rules, bound, work: 0, leaders: Vec::new() };
    if exact {
        search.every_set(most);
    } else {
        search.heuristic(most);
    }
    let mut leaders = search.leaders.into_iter().map(|scored| scored.plan);
    let plan = leaders.next();
    Planned { plan, alternatives: leaders.collect(), work: search.work, exact, excluded }
}

/// Why `candidate` cannot ship any of `order`, if it cannot.
fn exclusion(candidate: &Candidate, destination: &Destination, order: &Order) -> Option<Exclusion> {
    let used_up = |left: Option<i64>| left.is_some_and(|left| left <= 0);
    let has_stock = order
        .demand
        .iter()
        .enumerate()
        .any(|(item, demand)| *demand > 0 && candidate.atp.get(item).copied().unwrap_or(0) > 0);
    if !candidate.active {
        Some(Exclusion::NotActive)
    } else if !candidate.ships_to(destination) {
        Some(Exclusion::DoesNotShipThere)
    } else if used_up(candidate.orders_left) || used_up(candidate.units_left) {
        Some(Exclusion::NoCapacity)
    } else if !has_stock {
        Some(Exclusion::NoStock)
    } else {
        None
    }
}

/// Σ C(n, s) for s in 1..=k, if it is at most `limit`.
fn sets_up_to(n: usize, k: usize, limit: u64) -> Option<u64> {
    let (n, mut total, mut choose) = (n as u64, 0u64, 1u64);
    for size in 1..=k as u64 {
        choose = choose.checked_mul(n - size + 1)? / size;
        total = total.checked_add(choose)?;
        if total > limit {
            return None;
        }
    }
    Some(total)
}

/// A candidate that passed, with its distance.
struct Site<'a> {
    candidate: &'a Candidate,
    km: f64,
}

/// A plan with the sites (indices, ascending) it ships from.
struct Scored {
    members: Vec<usize>,
    plan: Plan,
}

struct Search<'a> {
    sites: Vec<Site<'a>>,
    order: &'a Order,
    rules: &'a Rules,
    /// Whether the exact search skips sets that cannot lead.
    bound: bool,
    work: u32,
    /// The best admissible plans so far, best first (the answer and its alternatives).
    leaders: Vec<Scored>,
}

impl Search<'_> {
    fn exhausted(&self) -> bool {
        self.work >= self.rules.work_budget
    }

    /// Evaluates every set of 1..=`most` sites, smallest sets first. A set
    /// whose best possible plan is already worse than every leader is
    /// counted but not filled: it could not have become a leader, so the
    /// answer, the alternatives and the work are those of filling it.
    fn every_set(&mut self, most: usize) {
        let n = self.sites.len();
        // The cheapest shipment from each site (one unit; costs are never
        // negative in configuration: a negative one turns the bound off).
        let floors: Option<Vec<i64>> = self
            .sites
            .iter()
            .map(|site| {
                let cost = &site.candidate.cost;
                let non_negative = cost.per_shipment >= 0 && cost.per_km >= 0 && cost.per_unit >= 0;
                non_negative.then(|| cost.shipment(site.km, 1))
            })
            .collect();
        let ceiling = self.order.demand.iter().enumerate().fold(0i64, |sum, (item, demand)| {
            let limit = self.order.limit.get(item).copied().unwrap_or(i64::MAX).max(0);
            sum.saturating_add((*demand).min(limit).max(0))
        });
        for size in 1..=most {
            let mut set: Vec<usize> = (0..size).collect();
            loop {
                if self.cannot_lead(&set, floors.as_deref(), ceiling) {
                    self.work += 1;
                } else {
                    self.evaluate(&set);
                }
                if !next_set(&mut set, n) {
                    break;
                }
            }
        }
    }

    /// Whether every plan shipping from each site of `set` is worse (by the
    /// policy, before ties) than the worst of a full list of leaders that
    /// all fill `ceiling` units, the most any plan can.
    fn cannot_lead(&self, set: &[usize], floors: Option<&[i64]>, ceiling: i64) -> bool {
        if !self.bound || self.leaders.len() <= MAX_ALTERNATIVES {
            return false;
        }
        let Some(worst) = self.leaders.last().map(|leader| &leader.plan) else { return false };
        if worst.filled < ceiling {
            return false;
        }
        let cost_floor = || {
            let floors = floors?;
            let penalty = self.rules.split_penalty.max(0).saturating_mul(set.len() as i64 - 1);
            Some(set.iter().fold(penalty, |sum, site| sum.saturating_add(floors[*site])))
        };
        match self.rules.policy {
            Policy::LowestCost => cost_floor().is_some_and(|floor| floor > worst.cost),
            Policy::FewestShipments => match set.len().cmp(&worst.shipments.len()) {
                Ordering::Greater => true,
                Ordering::Equal => cost_floor().is_some_and(|floor| floor > worst.cost),
                Ordering::Less => false,
            },
            Policy::Nearest => {
                // Exact, not a bound: every site of a plan ships, and the
                // plan sums its distances in the set's order.
                let max_km = set.iter().map(|site| self.sites[*site].km).fold(0.0, f64::max);
                let total_km: f64 = set.iter().map(|site| self.sites[*site].km).sum();
                max_km.total_cmp(&worst.max_km).then(total_km.total_cmp(&worst.total_km))
                    == Ordering::Greater
            }
        }
    }

    /// Singles, greedy growth, then improving moves, while the budget lasts.
    fn heuristic(&mut self, most: usize) {
        let n = self.sites.len();
        let mut current: Option<Scored> = None;
        for site in 0..n {
            if self.exhausted() {
                return;
            }
            current = self.better(current, vec![site]);
        }
        let Some(mut current) = current else { return };
        while current.members.len() < most && !current.plan.is_complete() {
            let mut grown: Option<Scored> = None;
            for site in (0..n).filter(|site| !current.members.contains(site)) {
                if self.exhausted() {
                    return;
                }
                grown = self.better(grown, with(&current.members, site));
            }
            match grown {
                Some(grown) if grown.plan.filled > current.plan.filled => current = grown,
                _ => break,
            }
        }
        let mut base = match self.leaders.first() {
            Some(best) => best.members.clone(),
            None => current.members,
        };
        while let Some(next) = self.improve(&base, most) {
            base = next;
        }
    }

    /// The first neighbour of `base` (a site dropped, swapped or added)
    /// better than the best plan so far, if the budget finds one.
    fn improve(&mut self, base: &[usize], most: usize) -> Option<Vec<usize>> {
        let n = self.sites.len();
        let mut neighbours: Vec<Vec<usize>> = Vec::new();
        if base.len() > 1 {
            neighbours.extend(base.iter().map(|gone| without(base, *gone)));
        }
        for gone in base {
            let rest = without(base, *gone);
            for site in (0..n).filter(|site| !base.contains(site)) {
                neighbours.push(with(&rest, site));
            }
        }
        if base.len() < most {
            for site in (0..n).filter(|site| !base.contains(site)) {
                neighbours.push(with(base, site));
            }
        }
        for set in neighbours {
            if self.exhausted() {
                return None;
            }
            let best_before = self.leaders.first().map(|best| best.members.clone());
            self.evaluate(&set);
            let best_after = self.leaders.first().map(|best| &best.members);
            if best_after != best_before.as_ref() && best_after == Some(&set) {
                return Some(set);
            }
        }
        None
    }

    /// Evaluates `set` and returns the better of it and `other` by the
    /// policy (filled first), admissible or not.
    fn better(&mut self, other: Option<Scored>, set: Vec<usize>) -> Option<Scored> {
        let Some(plan) = self.evaluate(&set) else { return other };
        match other {
            Some(other) if other.plan.compare(&plan, self.rules.policy) != Ordering::Greater => {
                Some(other)
            }
            _ => Some(Scored { members: set, plan }),
        }
    }

    /// The plan shipping from exactly the sites of `set`, if each of them
    /// ships something; kept among the leaders when the fill rule admits it.
    fn evaluate(&mut self, set: &[usize]) -> Option<Plan> {
        self.work += 1;
        let plan = self.fill(set)?;
        let admissible =
            plan.filled > 0 && (self.rules.fill == FillRule::Partial || plan.is_complete());
        if admissible {
            self.offer(Scored { members: set.to_vec(), plan: plan.clone() });
        }
        Some(plan)
    }

    fn offer(&mut self, scored: Scored) {
        if self.leaders.iter().any(|leader| leader.members == scored.members) {
            return;
        }
        let policy = self.rules.policy;
        let at = self
            .leaders
            .iter()
            .position(|leader| scored.plan.compare(&leader.plan, policy) == Ordering::Less)
            .unwrap_or(self.leaders.len());
        if at <= MAX_ALTERNATIVES {
            self.leaders.insert(at, scored);
            self.leaders.truncate(MAX_ALTERNATIVES + 1);
        }
    }

    /// Splits the order over `set`: items with the fewest sources first,
    /// each from the cheapest per unit first (then priority, id), within
    /// ATP, the channel's limit and units left today.
    fn fill(&self, set: &[usize]) -> Option<Plan> {
        let items = self.order.demand.len();
        let atp = |site: usize, item: usize| -> i64 {
            self.sites[site].candidate.atp.get(item).copied().unwrap_or(0).max(0)
        };
        let mut by_unit_cost: Vec<usize> = (0..set.len()).collect();
        by_unit_cost.sort_by_key(|at| (self.sites[set[*at]].candidate.cost.per_unit, set[*at]));
        let mut units_left: Vec<i64> = set
            .iter()
            .map(|site| self.sites[*site].candidate.units_left.unwrap_or(i64::MAX))
            .collect();
        let mut units = vec![vec![0i64; items]; set.len()];
        let mut by_sources: Vec<usize> =
            (0..items).filter(|item| self.order.demand[*item] > 0).collect();
        by_sources
            .sort_by_key(|item| (set.iter().filter(|site| atp(**site, *item) > 0).count(), *item));
        let mut backordered = vec![0i64; items];
        for item in by_sources {
            let wanted = self.order.demand[item];
            let limit = self.order.limit.get(item).copied().unwrap_or(i64::MAX).max(0);
            let mut remaining = wanted.min(limit);
            for at in &by_unit_cost {
                let take = remaining.min(atp(set[*at], item)).min(units_left[*at]);
                if take > 0 {
                    units[*at][item] += take;
                    units_left[*at] -= take;
                    remaining -= take;
                }
            }
            backordered[item] = remaining + (wanted - wanted.min(limit));
        }
        // The reservation's lines: one per (item, location), and up to two
        // capacity counters per location.
        let reservation_lines = units.iter().flatten().filter(|units| **units > 0).count();
        if reservation_lines + 2 * set.len() > MAX_LINES_PER_RESERVATION {
            return None;
        }
        let mut shipments = Vec::with_capacity(set.len());
        for (at, site) in set.iter().enumerate() {
            let shipped: i64 = units[at].iter().sum();
            if shipped == 0 {
                return None;
            }
            let Site { candidate, km } = &self.sites[*site];
            shipments.push(Shipment {
                location: candidate.location.clone(),
                priority: candidate.priority,
                km: *km,
                cost: candidate.cost.shipment(*km, shipped),
                units: std::mem::take(&mut units[at]),
                orders_left: candidate.orders_left.map(|left| left - 1),
                units_left: candidate.units_left.map(|left| left - shipped),
            });
        }
        let penalty = self.rules.split_penalty.saturating_mul(shipments.len() as i64 - 1);
        let cost =
            shipments.iter().fold(penalty, |sum, shipment| sum.saturating_add(shipment.cost));
        let max_km = shipments.iter().map(|shipment| shipment.km).fold(0.0, f64::max);
        let total_km = shipments.iter().map(|shipment| shipment.km).sum();
        let filled = shipments.iter().map(Shipment::total_units).sum();
        Some(Plan { shipments, backordered, filled, cost, max_km, total_km })
    }
}

/// `set` (ascending) with `site` added, still ascending.
fn with(set: &[usize], site: usize) -> Vec<usize> {
    let mut grown = set.to_vec();
    let at = grown.partition_point(|member| *member < site);
    grown.insert(at, site);
    grown
}

/// `set` without `site`.
fn without(set: &[usize], site: usize) -> Vec<usize> {
    set.iter().copied().filter(|member| *member != site).collect()
}

/// Advances `set` to the next combination of its size from 0..n
/// (lexicographic); false after the last.
fn next_set(set: &mut [usize], n: usize) -> bool {
    let size = set.len();
    for at in (0..size).rev() {
        if set[at] < n - size + at {
            set[at] += 1;
            for next in at + 1..size {
                set[next] = set[next - 1] + 1;
            }
            return true;
        }
    }
    false
}
