//! A seeded, deterministic network impairment: Gilbert-Elliott bursty loss,
//! added delay, jitter and reordering, for benches on a kernel without netem.
//!
//! [`Impairment`] is a pure state machine: the caller passes the time in (as
//! a `Duration` since any fixed origin), so the same seed and the same
//! arrival times always give the same drops and release times. [`relay`]
//! wraps it in a tokio UDP relay.

pub mod relay;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// SplitMix64: tiny, fast, and its output for a seed never changes with a
/// dependency upgrade (decisions must be reproducible across builds).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

/// Two-state Markov loss: in Good a packet is lost with `loss_good`, in Bad
/// with `loss_bad`; the state changes before each packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
    pub loss_good: f64,
    pub loss_bad: f64,
    /// A path idle this long leaves Bad. The chain is clocked by packets, so
    /// without this a TCP flow stalled in a burst would draw every
    /// retransmission from the same burst (75 % loss each at a mean burst
    /// of 4) and stall for tens of seconds: bursts are short in time.
    pub idle_reset: Duration,
}

/// Gap after which a burst has ended (see [`GilbertElliott::idle_reset`]).
pub const IDLE_RESET: Duration = Duration::from_millis(10);

impl GilbertElliott {
    /// No loss at all.
    pub fn none() -> GilbertElliott {
        GilbertElliott {
            p_good_to_bad: 0.0,
            p_bad_to_good: 1.0,
            loss_good: 0.0,
            loss_bad: 0.0,
            idle_reset: IDLE_RESET,
        }
    }

    /// Every packet in Bad is lost, none in Good: losses come in bursts of
    /// geometric length with mean `mean_burst` packets, `mean_loss` overall
    /// (the stationary share of Bad).
    pub fn bursty(mean_loss: f64, mean_burst: f64) -> GilbertElliott {
        let mean_loss = mean_loss.clamp(0.0, 0.99);
        let p_bad_to_good = 1.0 / mean_burst.max(1.0);
        GilbertElliott {
            p_good_to_bad: (mean_loss * p_bad_to_good / (1.0 - mean_loss)).min(1.0),
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
            idle_reset: IDLE_RESET,
        }
    }

    /// The long-run loss ratio.
    pub fn mean_loss(&self) -> f64 {
        let moves = self.p_good_to_bad + self.p_bad_to_good;
        if moves == 0.0 {
            return self.loss_good;
        }
        let bad = self.p_good_to_bad / moves;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub seed: u64,
    pub loss: GilbertElliott,
    /// Added one-way delay of every packet.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter]. Jitter alone never reorders:
    /// a packet waits for the one before it.
    pub jitter: Duration,
    /// Probability that a packet is held back by `reorder_extra`, letting
    /// later packets overtake it.
    pub reorder: f64,
    pub reorder_extra: Duration,
}

impl Config {
    /// Passes every packet at once, unchanged.
    pub fn transparent(seed: u64) -> Config {
        Config {
            seed,
            loss: GilbertElliott::none(),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_extra: Duration::ZERO,
        }
    }
}

/// What happened to an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Dropped,
    /// Queued for release at this time.
    Release(Duration),
}

/// One direction of an impaired path.
#[derive(Debug)]
pub struct Impairment<T> {
    cfg: Config,
    rng: Rng,
    bad: bool,
    last_arrival: Duration,
    /// Release time of the last in-order packet: jitter must not reorder.
    last_in_order: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued<T>>>,
}

#[derive(Debug)]
struct Queued<T> {
    at: Duration,
    seq: u64,
    packet: T,
}

// Ordered by (release time, arrival): equal release times keep arrival order.
impl<T> PartialEq for Queued<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Queued<T> {}
impl<T> PartialOrd for Queued<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Queued<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<T> Impairment<T> {
    pub fn new(cfg: Config) -> Impairment<T> {
        Impairment {
            cfg,
            rng: Rng::new(cfg.seed),
            bad: false,
            last_arrival: Duration::ZERO,
            last_in_order: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
        }
    }

    /// Offers a packet arriving at `now`.
    pub fn push(&mut self, now: Duration, packet: T) -> Verdict {
        let ge = self.cfg.loss;
        if now.saturating_sub(self.last_arrival) >= ge.idle_reset {
            self.bad = false;
        }
        self.last_arrival = now;
        let flip = if self.bad {
            ge.p_bad_to_good
        } else {
            ge.p_good_to_bad
        };
        if self.rng.chance(flip) {
            self.bad = !self.bad;
        }
        let loss = if self.bad { ge.loss_bad } else { ge.loss_good };
        if self.rng.chance(loss) {
            return Verdict::Dropped;
        }
        let jitter = self.cfg.jitter.mul_f64(self.rng.next_f64());
        let mut at = now + self.cfg.delay + jitter;
        if self.rng.chance(self.cfg.reorder) {
            at += self.cfg.reorder_extra;
        } else {
            at = at.max(self.last_in_order);
            self.last_in_order = at;
        }
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            packet,
        }));
        Verdict::Release(at)
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<T> {
        if self.queue.peek()?.0.at > now {
            return None;
        }
        self.queue.pop().map(|q| q.0.packet)
    }

    /// When the earliest queued packet is due.
    pub fn next_release(&self) -> Option<Duration> {
        self.queue.peek().map(|q| q.0.at)
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Applies `cfg` to packets from now on; those already queued keep
    /// their release times, as packets on a real path keep their delay when
    /// its conditions change. (Flushed at once instead, they came back with
    /// near-zero RTT and taught the tunnels' controllers a base RTT well
    /// under the path's.)
    pub fn reconfigure(&mut self, cfg: Config) {
        let queue = std::mem::take(&mut self.queue);
        let (seq, last_in_order) = (self.seq, self.last_in_order);
        *self = Impairment::new(cfg);
        self.queue = queue;
        self.seq = seq;
        self.last_in_order = last_in_order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy(ge: GilbertElliott, seed: u64) -> Config {
        Config {
            loss: ge,
            ..Config::transparent(seed)
        }
    }

    /// Drop (true) or pass for `n` packets, all arriving at time zero.
    fn decisions(cfg: Config, n: usize) -> Vec<bool> {
        let mut imp = Impairment::new(cfg);
        (0..n)
            .map(|i| imp.push(Duration::ZERO, i) == Verdict::Dropped)
            .collect()
    }

    #[test]
    fn a_new_setting_leaves_queued_packets_their_release_times() {
        let slow = Config {
            delay: Duration::from_millis(20),
            ..Config::transparent(1)
        };
        let mut imp = Impairment::new(slow);
        let ms = Duration::from_millis;
        assert_eq!(imp.push(ms(0), 'a'), Verdict::Release(ms(20)));
        imp.reconfigure(Config::transparent(2));
        assert_eq!(
            imp.push(ms(1), 'b'),
            Verdict::Release(ms(20)),
            "never overtakes"
        );
        assert_eq!(imp.pop_due(ms(19)), None, "a keeps its delay");
        assert_eq!(imp.pop_due(ms(20)), Some('a'));
        assert_eq!(imp.pop_due(ms(20)), Some('b'));
        assert_eq!(imp.push(ms(30), 'c'), Verdict::Release(ms(30)));
    }

    #[test]
    fn loss_ratio_converges() {
        for (mean, burst) in [(0.001, 1.0), (0.01, 3.0), (0.05, 4.0), (0.2, 10.0)] {
            let ge = GilbertElliott::bursty(mean, burst);
            assert!((ge.mean_loss() - mean).abs() < 1e-12);
            let n = 1_000_000;
            let lost = decisions(lossy(ge, 7), n).iter().filter(|d| **d).count();
            let ratio = lost as f64 / n as f64;
            assert!(
                (ratio - mean).abs() < mean * 0.1,
                "mean {mean} burst {burst}: measured {ratio}"
            );
        }
    }

    #[test]
    fn bursts_have_the_configured_mean_length() {
        for burst in [1.0, 4.0, 12.0] {
            let d = decisions(lossy(GilbertElliott::bursty(0.05, burst), 11), 1_000_000);
            let mut runs = Vec::new();
            let mut run = 0;
            for lost in d {
                if lost {
                    run += 1;
                } else if run > 0 {
                    runs.push(run);
                    run = 0;
                }
            }
            let mean = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
            assert!(
                (mean - burst).abs() < burst * 0.05,
                "burst {burst}: measured {mean} over {} runs",
                runs.len()
            );
        }
    }

    #[test]
    fn same_seed_same_decisions() {
        let cfg = Config {
            jitter: Duration::from_millis(5),
            reorder: 0.1,
            reorder_extra: Duration::from_millis(3),
            ..lossy(GilbertElliott::bursty(0.05, 4.0), 42)
        };
        let run = |cfg: Config| {
            let mut imp = Impairment::new(cfg);
            (0..10_000u64)
                .map(|i| imp.push(Duration::from_micros(i * 10), i))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(cfg), run(cfg));
        assert_ne!(run(cfg), run(Config { seed: 43, ..cfg }));
    }

    #[test]
    fn an_idle_path_leaves_a_burst() {
        // Every burst lasts forever unless the path goes idle.
        let ge = GilbertElliott {
            p_good_to_bad: 1.0,
            p_bad_to_good: 0.0,
            ..GilbertElliott::bursty(0.5, 4.0)
        };
        let mut imp = Impairment::new(lossy(ge, 9));
        let t = Duration::from_millis(100);
        assert_eq!(imp.push(t, 0), Verdict::Dropped);
        assert_eq!(imp.push(t + Duration::from_millis(1), 1), Verdict::Dropped);
        // Good again after the gap, then Bad at once for the next packet.
        let mut ge_after = imp.cfg.loss;
        ge_after.p_good_to_bad = 0.0;
        imp.cfg.loss = ge_after;
        assert_eq!(
            imp.push(t + Duration::from_millis(1) + IDLE_RESET, 2),
            Verdict::Release(t + Duration::from_millis(1) + IDLE_RESET)
        );
    }

    #[test]
    fn delay_holds_packets_and_keeps_order() {
        let cfg = Config {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(8),
            ..Config::transparent(1)
        };
        let mut imp = Impairment::new(cfg);
        for i in 0..1000u64 {
            let now = Duration::from_micros(i * 50);
            match imp.push(now, i) {
                Verdict::Release(at) => assert!(at >= now + cfg.delay),
                Verdict::Dropped => panic!("no loss configured"),
            }
        }
        assert_eq!(imp.pop_due(Duration::from_millis(19)), None);
        let mut out = Vec::new();
        while let Some(p) = imp.pop_due(Duration::from_secs(1)) {
            out.push(p);
        }
        assert_eq!(out, (0..1000).collect::<Vec<_>>(), "jitter alone reordered");
        assert_eq!(imp.next_release(), None);
    }

    #[test]
    fn reordering_lets_later_packets_overtake() {
        let cfg = Config {
            delay: Duration::from_millis(1),
            reorder: 0.05,
            reorder_extra: Duration::from_millis(2),
            ..Config::transparent(5)
        };
        let mut imp = Impairment::new(cfg);
        for i in 0..10_000u64 {
            imp.push(Duration::from_micros(i * 100), i);
        }
        let mut out = Vec::new();
        while let Some(p) = imp.pop_due(Duration::from_secs(10)) {
            out.push(p);
        }
        assert_eq!(out.len(), 10_000);
        let late = out.windows(2).filter(|w| w[0] > w[1]).count();
        let share = late as f64 / out.len() as f64;
        assert!((0.04..0.06).contains(&share), "reordered share {share}");
    }
}
