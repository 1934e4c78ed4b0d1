//! Random choices (`-m statistic`) as an oracle, so that a caller can either
//! follow one path or enumerate every path with its probability.
//!
//! kube-proxy spreads a Service over its endpoints with a cascade of
//! `-m statistic --mode random --probability 1/(n-i)` rules. To prove that a
//! VIP reaches *all* its endpoints, [`explore`] runs the same closure once
//! per sequence of choices (depth first, "match" before "no match"), each run
//! answering the choices differently, and returns every outcome with the
//! product of the probabilities of the choices that led to it.

use std::collections::BTreeMap;

/// Answers the random decisions of one packet traversal.
pub trait Branches {
    /// Whether an event of the given probability happens (for the statistic
    /// match: whether the rule matches). Probabilities outside `(0, 1)` are
    /// certain and should not be treated as a choice.
    fn choose(&mut self, probability: f64) -> bool;
}

/// Always takes the "match" side of a possible choice: the first of a
/// kube-proxy cascade's endpoints. Useful for a single, predictable trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct TakeFirst;

impl Branches for TakeFirst {
    fn choose(&mut self, probability: f64) -> bool {
        probability > 0.0
    }
}

/// Decides with a deterministic pseudo-random sequence (splitmix64) from a
/// seed: the same seed gives the same decisions on every machine.
#[derive(Debug, Clone)]
pub struct SeededBranches {
    state: u64,
}

impl SeededBranches {
    pub fn new(seed: u64) -> SeededBranches {
        SeededBranches { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Branches for SeededBranches {
    fn choose(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        if probability >= 1.0 {
            return true;
        }
        // 53 random bits as a uniform number in [0, 1).
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        u < probability
    }
}

/// One path through the choices, with what the closure returned for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    pub value: T,
    /// Product of the probabilities of the choices taken on this path.
    pub probability: f64,
    /// The answers given, in order (only real choices, `0 < p < 1`).
    pub choices: Vec<bool>,
}

/// Why [`explore`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExploreError {
    /// More paths than the limit: the caller's rules branch too much.
    #[error("more than {limit} random paths; stopped exploring")]
    TooManyPaths { limit: usize },
    /// A replay with the same answers asked different questions: the
    /// closure is not deterministic (it must not share state between runs).
    #[error(
        "the traversal is not deterministic: replaying choice {at} asked a different question"
    )]
    NotDeterministic { at: usize },
}

/// Run `run` once per possible sequence of choices and return every
/// outcome with its probability, in depth-first order ("match" first). The
/// closure must be deterministic given the answers and start from the same
/// state each time (clone the conntrack tables inside it). At most `limit`
/// paths are explored.
pub fn explore<T>(
    limit: usize,
    mut run: impl FnMut(&mut dyn Branches) -> T,
) -> Result<Vec<Outcome<T>>, ExploreError> {
    let mut outcomes = Vec::new();
    // Answers to replay, with the probability each question had last time.
    let mut forced: Vec<(bool, f64)> = Vec::new();
    loop {
        if outcomes.len() >= limit {
            return Err(ExploreError::TooManyPaths { limit });
        }
        let mut rec = Recorder {
            forced: &forced,
            points: Vec::new(),
            mismatch: None,
        };
        let value = run(&mut rec);
        if let Some(at) = rec.mismatch {
            return Err(ExploreError::NotDeterministic { at });
        }
        if rec.points.len() < forced.len() {
            return Err(ExploreError::NotDeterministic {
                at: rec.points.len(),
            });
        }
        let probability = rec
            .points
            .iter()
            .map(|p| {
                if p.taken {
                    p.probability
                } else {
                    1.0 - p.probability
                }
            })
            .product();
        let choices: Vec<bool> = rec.points.iter().map(|p| p.taken).collect();
        // Backtrack to the deepest choice still on its first ("match") side.
        let next = choices.iter().rposition(|&taken| taken);
        let points = rec.points;
        if let Some(k) = next {
            let mut replay: Vec<(bool, f64)> = points[..k]
                .iter()
                .map(|p| (p.taken, p.probability))
                .collect();
            replay.push((false, points[k].probability));
            forced = replay;
        }
        outcomes.push(Outcome {
            value,
            probability,
            choices,
        });
        if next.is_none() {
            return Ok(outcomes);
        }
    }
}

/// Sum the probabilities of outcomes with equal values: the set of places a
/// packet can end up, each with its total probability.
pub fn merge_outcomes<T: Ord + Clone>(outcomes: &[Outcome<T>]) -> BTreeMap<T, f64> {
    let mut merged = BTreeMap::new();
    for o in outcomes {
        *merged.entry(o.value.clone()).or_insert(0.0) += o.probability;
    }
    merged
}

struct Point {
    probability: f64,
    taken: bool,
}

/// Replays forced answers, then answers "match" to every new choice.
struct Recorder<'a> {
    forced: &'a [(bool, f64)],
    points: Vec<Point>,
    mismatch: Option<usize>,
}

impl Branches for Recorder<'_> {
    fn choose(&mut self, probability: f64) -> bool {
        // Certain events are not choices: a rule with probability 0 can never
        // match and one with probability 1 always does.
        if probability <= 0.0 || probability.is_nan() {
            return false;
        }
        if probability >= 1.0 {
            return true;
        }
        let i = self.points.len();
        let taken = match self.forced.get(i) {
            Some(&(t, p)) => {
                if p != probability {
                    self.mismatch.get_or_insert(i);
                }
                t
            }
            None => true,
        };
        self.points.push(Point { probability, taken });
        taken
    }
}
