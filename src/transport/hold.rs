//! In-order delivery behind a hole, for a bounded time.
//!
//! Loss hiding (`arq`) fills a hole one round trip after it opened. Handed on
//! at once, the packets behind the hole reach the inner TCP first and the
//! resent one a round trip late: the inner TCP reads that as loss or heavy
//! reordering, retransmits spuriously and may cut its rate. So the receiver
//! holds the packets behind a hole until it is filled, and releases them in
//! order. A packet is held at most `rtts` round trips plus `extra` after it
//! arrived; then the hole is passed over (its packet, if it still comes, is
//! handed on late). Holding is bounded in packets too: when full, the oldest
//! hole is passed over. A plain state machine, time passed in.
//!
//! Only what the caller marks as holdable waits (the tunnel holds TCP):
//! the rest goes on at once, because releasing a held run is a burst, and a
//! burst of UDP overflows the receiving socket (measured: 24-30 % of a
//! 200 Mbit/s UDP flow lost on a lossy 20 ms path with everything held).
//! Such a packet still counts for the order of the held ones.

use super::arq::unwrap_near;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct HoldConfig {
    /// How long a packet may wait, in round trips of the tunnel path...
    pub rtts: f64,
    /// ...plus this, for jitter and the sender's own queue.
    pub extra: Duration,
    /// Most packets held at once.
    pub max_packets: usize,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            // A resend arrives about one round trip after the hole opened;
            // the rest covers the sender's queue and path jitter.
            rtts: 1.5,
            extra: Duration::from_millis(1),
            // About 6 MB of 1.4 KB packets: 1.5 RTTs of 300 Mbit/s on a
            // 20 ms path, or 4 ms of 2 Gbit/s.
            max_packets: 4096,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// Packets that waited behind a hole.
    pub held: u64,
    /// Holes passed over because the wait ran out or the hold was full: the
    /// inner flows see these as reordering or loss.
    pub passed_over: u64,
}

#[derive(Debug)]
pub struct InOrder<T> {
    cfg: HoldConfig,
    /// The next sequence number to hand on, unwrapped to 64 bits.
    next: Option<u64>,
    /// Packets behind a hole by sequence number, with when each must go at
    /// the latest; `None` for one already handed on (not holdable).
    held: BTreeMap<u64, (Instant, Option<T>)>,
    stats: HoldStats,
}

impl<T> InOrder<T> {
    pub fn new(cfg: HoldConfig) -> Self {
        InOrder {
            cfg,
            next: None,
            held: BTreeMap::new(),
            stats: HoldStats::default(),
        }
    }

    pub fn stats(&self) -> HoldStats {
        self.stats
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A new packet (duplicates are filtered before): handed on into `out`
    /// now, with any packets it was the missing piece for, or held if
    /// `holdable` and behind a hole.
    pub fn push(
        &mut self,
        seq: u32,
        packet: T,
        holdable: bool,
        now: Instant,
        rtt: Duration,
        out: &mut Vec<T>,
    ) {
        self.place(seq, Some(packet), holdable, now, rtt, out);
    }

    /// A numbered datagram with nothing to hand on (it was dropped as
    /// invalid): it still fills its place, so nothing waits for it.
    pub fn skip(&mut self, seq: u32, now: Instant, rtt: Duration, out: &mut Vec<T>) {
        self.place(seq, None, false, now, rtt, out);
    }

    fn place(
        &mut self,
        seq: u32,
        packet: Option<T>,
        holdable: bool,
        now: Instant,
        rtt: Duration,
        out: &mut Vec<T>,
    ) {
        let s = unwrap_near(self.next, seq);
        let Some(next) = self.next else {
            self.next = Some(s + 1);
            out.extend(packet);
            return;
        };
        if s < next {
            // Its hole was passed over already: late beats never.
            out.extend(packet);
        } else if s == next {
            out.extend(packet);
            self.next = Some(s + 1);
            self.release_ready(out);
        } else {
            let deadline = now + rtt.mul_f64(self.cfg.rtts) + self.cfg.extra;
            let packet = match packet {
                Some(p) if holdable => {
                    self.stats.held += 1;
                    Some(p)
                }
                other => {
                    out.extend(other);
                    None
                }
            };
            self.held.insert(s, (deadline, packet));
            if self.held.len() > self.cfg.max_packets {
                self.pass_over_first_hole(out);
            }
        }
    }

    /// Hands on what waited long enough.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<T>) {
        while self
            .held
            .first_key_value()
            .is_some_and(|(_, (deadline, _))| *deadline <= now)
        {
            self.pass_over_first_hole(out);
        }
    }

    /// When [`InOrder::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held
            .first_key_value()
            .map(|(_, (deadline, _))| *deadline)
    }

    fn pass_over_first_hole(&mut self, out: &mut Vec<T>) {
        if let Some((&first, _)) = self.held.first_key_value() {
            self.stats.passed_over += 1;
            self.next = Some(first);
            self.release_ready(out);
        }
    }

    fn release_ready(&mut self, out: &mut Vec<T>) {
        let Some(mut next) = self.next else { return };
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != next {
                break;
            }
            out.extend(entry.remove().1);
            next += 1;
        }
        self.next = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(20);

    fn hold() -> InOrder<u32> {
        InOrder::new(HoldConfig {
            rtts: 1.5,
            extra: Duration::from_millis(1),
            max_packets: 100,
        })
    }

    fn push_all(h: &mut InOrder<u32>, seqs: &[u32], now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        for &s in seqs {
            h.push(s, s, true, now, RTT, &mut out);
        }
        out
    }

    #[test]
    fn what_may_not_wait_goes_at_once_and_still_keeps_its_place() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[0, 2], t0), [0]);
        let mut out = Vec::new();
        h.push(3, 3, false, t0, RTT, &mut out);
        assert_eq!(out, [3], "not holdable: handed on behind the hole");
        assert_eq!(push_all(&mut h, &[4], t0), Vec::<u32>::new());
        assert_eq!(
            push_all(&mut h, &[1], t0),
            [1, 2, 4],
            "3 is not handed on twice"
        );
        assert_eq!(h.held(), 0);
    }

    #[test]
    fn a_skipped_number_fills_its_place_without_handing_anything_on() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[0, 2, 3], t0), [0]);
        let mut out = Vec::new();
        h.skip(1, t0, RTT, &mut out);
        assert_eq!(
            out,
            [2, 3],
            "1 was dropped as invalid: 2 and 3 need not wait"
        );
        out.clear();
        h.skip(5, t0, RTT, &mut out);
        assert!(out.is_empty());
        assert_eq!(push_all(&mut h, &[4], t0), [4]);
        assert_eq!(push_all(&mut h, &[6], t0), [6], "5 holds nothing back");
        assert_eq!(h.stats().passed_over, 0);
    }

    #[test]
    fn packets_behind_a_hole_wait_for_it_and_leave_in_order() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[0, 1, 3, 4], t0), [0, 1]);
        assert_eq!(h.held(), 2);
        assert_eq!(h.poll_timeout(), Some(t0 + Duration::from_millis(31)));
        // The resend of 2 arrives one round trip later.
        assert_eq!(push_all(&mut h, &[2, 5], t0 + RTT), [2, 3, 4, 5]);
        assert_eq!(h.held(), 0);
        assert_eq!(h.stats().passed_over, 0);
    }

    #[test]
    fn a_hole_not_filled_in_time_is_passed_over_and_its_packet_still_delivered_late() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[7, 9, 10], t0), [7]);
        let mut out = Vec::new();
        h.poll(t0 + Duration::from_millis(30), &mut out);
        assert!(out.is_empty(), "nothing is due before 1.5 RTT + 1 ms");
        h.poll(t0 + Duration::from_millis(31), &mut out);
        assert_eq!(out, [9, 10]);
        assert_eq!(h.stats().passed_over, 1);
        assert_eq!(push_all(&mut h, &[8, 11], t0 + RTT * 3), [8, 11]);
    }

    #[test]
    fn each_later_hole_gets_its_own_wait() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[0, 2], t0), [0]);
        assert!(push_all(&mut h, &[4], t0 + RTT).is_empty());
        let mut out = Vec::new();
        h.poll(t0 + Duration::from_millis(31), &mut out);
        assert_eq!(out, [2], "4 still waits for 3");
        assert_eq!(h.poll_timeout(), Some(t0 + RTT + Duration::from_millis(31)));
        assert_eq!(push_all(&mut h, &[3], t0 + RTT * 2), [3, 4]);
    }

    #[test]
    fn the_hold_is_bounded_in_packets() {
        let t0 = Instant::now();
        let mut h = hold();
        push_all(&mut h, &[0], t0);
        let out = push_all(&mut h, &(2..=101).collect::<Vec<_>>(), t0);
        assert!(out.is_empty());
        assert_eq!(h.held(), 100);
        // One more overflows: the hole at 1 is passed over and all of them go.
        let out = push_all(&mut h, &[102], t0);
        assert_eq!(out, (2..=102).collect::<Vec<_>>());
        assert_eq!(h.held(), 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut h = hold();
        let out = push_all(&mut h, &[u32::MAX - 1, u32::MAX, 1, 2], t0);
        assert_eq!(out, [u32::MAX - 1, u32::MAX]);
        assert_eq!(push_all(&mut h, &[0], t0), [0, 1, 2]);
    }
}
