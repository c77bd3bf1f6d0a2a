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
//!
//! **Playout.** Where holes keep opening on a long path, most packets wait
//! behind one anyway, for anything from nothing to a round trip. An inner
//! sender that sizes its window by the lowest RTT it sees (BBR) then runs
//! short of window: a single BBR flow over 5 % loss and 20 ms saw 21 ms at
//! best and 55-70 ms as a rule. So when half the TCP data of a period
//! arrived behind a hole, every packet of a TCP flow begun from then on
//! (handshake and ACKs too) waits the full wait, in order: one steady RTT
//! to size by (the caller tells flows apart, [`PlayoutFlows`]). It stops
//! when fewer than a quarter did.

use super::arq::unwrap_near;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which packets may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Never (the tunnel's UDP and the rest, and TCP without data of a flow
    /// that began outside playout: TCP takes ACKs in any order).
    Never,
    /// Only in playout: TCP without data (ACKs, SYNs) of a flow that began
    /// in playout. Where its data waits the full wait these must too, or the
    /// inner sender measures its lowest RTT on a handshake or an ACK.
    InPlayout,
    /// Behind a hole only: TCP data of a flow that began outside playout. Its
    /// sender measured the RTT without the steady delay and, given it, would
    /// run short of window until it measures again (BBR: 10 s; a single
    /// flow over 1 % loss and 20 ms fell from 303 to 65 Mbit/s).
    BehindHoles,
    /// Behind a hole, and in playout: TCP data of a flow that began in it.
    Always,
}

impl Wait {
    /// TCP data: what decides playout.
    fn is_data(self) -> bool {
        matches!(self, Wait::BehindHoles | Wait::Always)
    }
}

/// Which TCP flows began (their SYN went through) in playout: only those
/// get the steady delay. Direct-mapped by a hash of the flow's addresses
/// and ports; a flow whose slot another takes loses the delay, which only
/// lowers its RTT.
#[derive(Debug)]
pub struct PlayoutFlows {
    slots: Box<[u64]>,
}

impl PlayoutFlows {
    pub fn new(slots: usize) -> Self {
        PlayoutFlows {
            slots: vec![0; slots.max(1)].into_boxed_slice(),
        }
    }

    /// A packet of flow `key` (a hash of its addresses and ports), `syn` if
    /// it opens the flow, while playout is on or not: whether the flow
    /// began in playout.
    pub fn observe(&mut self, key: u64, syn: bool, playout: bool) -> bool {
        let key = key | 1;
        let slot = &mut self.slots[(key % self.slots.len() as u64) as usize];
        if syn && playout {
            *slot = key;
        } else if syn && *slot == key {
            *slot = 0;
        }
        *slot == key
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HoldConfig {
    /// How long a packet may wait, in round trips of the tunnel path...
    pub rtts: f64,
    /// ...plus this, for jitter and the sender's own queue.
    pub extra: Duration,
    /// Most packets held at once.
    pub max_packets: usize,
    /// How often the share of packets arriving behind a hole is judged, to
    /// start or stop delaying every holdable packet by the full wait.
    pub playout_period: Duration,
    /// Paths with a shorter round trip never start playout.
    pub playout_min_rtt: Duration,
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
            playout_period: Duration::from_millis(250),
            // A hole on a LAN path costs the inner flows a millisecond or
            // two, which their timers and window floors absorb; a steady
            // delay there would cost a flow that measured its RTT before it
            // started a third of its rate (1.77 to 1.23 Gbit/s).
            playout_min_rtt: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// Packets that waited behind a hole (or, in playout, for their turn).
    pub held: u64,
    /// Holes passed over because the wait ran out or the hold was full: the
    /// inner flows see these as reordering or loss.
    pub passed_over: u64,
    /// Times playout started: most packets arrived behind a hole, so every
    /// holdable packet now waits the full wait.
    pub playouts: u64,
}

/// Periods with fewer holdable packets than this do not change the mode.
const PLAYOUT_MIN_PACKETS: u32 = 32;

#[derive(Debug)]
struct Entry<T> {
    /// When the hole before it, if any, is passed over.
    deadline: Instant,
    /// When it may go, once everything before it has.
    not_before: Instant,
    /// `None` for one already handed on (not holdable).
    packet: Option<T>,
}

#[derive(Debug)]
pub struct InOrder<T> {
    cfg: HoldConfig,
    /// The next sequence number to hand on, unwrapped to 64 bits.
    next: Option<u64>,
    /// Every number below this arrived, was handed on or passed over.
    arrived_to: u64,
    /// The highest number placed.
    highest: u64,
    /// Packets waiting, by sequence number.
    held: BTreeMap<u64, Entry<T>>,
    /// Every holdable packet waits the full wait, not only those behind a
    /// hole (see [`InOrder::playout`]).
    playout: bool,
    period_start: Option<Instant>,
    period_packets: u32,
    period_behind: u32,
    stats: HoldStats,
}

impl<T> InOrder<T> {
    pub fn new(cfg: HoldConfig) -> Self {
        InOrder {
            cfg,
            next: None,
            arrived_to: 0,
            highest: 0,
            held: BTreeMap::new(),
            playout: false,
            period_start: None,
            period_packets: 0,
            period_behind: 0,
            stats: HoldStats::default(),
        }
    }

    pub fn stats(&self) -> HoldStats {
        self.stats
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether packets of flows begun in playout ([`Wait::InPlayout`],
    /// [`Wait::Always`]) are delayed by the full wait (see the module
    /// docs). Starts when half the TCP data of a period arrived behind a
    /// hole on a path of at least `playout_min_rtt`, stops below a quarter.
    pub fn playout(&self) -> bool {
        self.playout
    }

    /// A new packet (duplicates are filtered before): handed on into `out`
    /// now, with any packets it was the missing piece for, or held if
    /// `holdable` and behind a hole (or, in playout, until its turn).
    pub fn push(
        &mut self,
        seq: u32,
        packet: T,
        wait: Wait,
        now: Instant,
        rtt: Duration,
        out: &mut Vec<T>,
    ) {
        self.place(seq, Some(packet), wait, now, rtt, out);
    }

    /// A numbered datagram with nothing to hand on (it was dropped as
    /// invalid): it still fills its place, so nothing waits for it.
    pub fn skip(&mut self, seq: u32, now: Instant, rtt: Duration, out: &mut Vec<T>) {
        self.place(seq, None, Wait::Never, now, rtt, out);
    }

    fn place(
        &mut self,
        seq: u32,
        packet: Option<T>,
        wait: Wait,
        now: Instant,
        rtt: Duration,
        out: &mut Vec<T>,
    ) {
        let s = unwrap_near(self.next, seq);
        let Some(next) = self.next else {
            self.next = Some(s + 1);
            (self.arrived_to, self.highest) = (s + 1, s);
            out.extend(packet);
            return;
        };
        let fresh = s > self.highest;
        let holdable = match wait {
            Wait::Never => false,
            Wait::InPlayout => self.playout,
            Wait::BehindHoles | Wait::Always => true,
        };
        if wait.is_data() && fresh {
            self.judge(s > self.arrived_to, now, rtt);
        }
        self.highest = self.highest.max(s);
        if s < next {
            // Its hole was passed over already: late beats never.
            out.extend(packet);
            return;
        }
        let full_wait = rtt.mul_f64(self.cfg.rtts) + self.cfg.extra;
        // A resend or a reordered packet is late already: it goes as soon as
        // those before it have.
        let steady = self.playout && fresh && matches!(wait, Wait::InPlayout | Wait::Always);
        let not_before = if steady { now + full_wait } else { now };
        if s == next && !steady {
            out.extend(packet);
            self.next = Some(s + 1);
            self.release_ready(now, out);
        } else {
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
            let entry = Entry {
                deadline: now + full_wait,
                not_before,
                packet,
            };
            self.held.insert(s, entry);
            if self.held.len() > self.cfg.max_packets {
                self.force_first(now, out);
            }
        }
        self.advance_arrived();
    }

    /// Counts a fresh holdable packet and, once a period is over, judges it.
    fn judge(&mut self, behind: bool, now: Instant, rtt: Duration) {
        let start = *self.period_start.get_or_insert(now);
        self.period_packets += 1;
        self.period_behind += u32::from(behind);
        if now.duration_since(start) < self.cfg.playout_period {
            return;
        }
        let (n, b) = (self.period_packets, self.period_behind);
        if n >= PLAYOUT_MIN_PACKETS {
            let playout = if self.playout {
                b * 4 >= n
            } else {
                b * 2 >= n && rtt >= self.cfg.playout_min_rtt
            };
            self.stats.playouts += u64::from(playout && !self.playout);
            self.playout = playout;
        }
        (self.period_start, self.period_packets, self.period_behind) = (Some(now), 0, 0);
    }

    fn advance_arrived(&mut self) {
        let mut to = self.arrived_to.max(self.next.unwrap_or(0));
        while self.held.contains_key(&to) {
            to += 1;
        }
        self.arrived_to = to;
    }

    /// Hands on what waited long enough.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<T>) {
        self.release_ready(now, out);
        while let (Some(next), Some((&first, entry))) = (self.next, self.held.first_key_value()) {
            if first == next || entry.deadline > now {
                break;
            }
            self.stats.passed_over += 1;
            self.next = Some(first);
            self.release_ready(now, out);
        }
        self.advance_arrived();
    }

    /// When [`InOrder::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (&first, entry) = self.held.first_key_value()?;
        Some(if Some(first) == self.next {
            entry.not_before
        } else {
            entry.deadline
        })
    }

    /// The hold is full: the first packet goes now, its turn or not.
    fn force_first(&mut self, now: Instant, out: &mut Vec<T>) {
        if let Some((first, entry)) = self.held.pop_first() {
            if Some(first) != self.next {
                self.stats.passed_over += 1;
            }
            out.extend(entry.packet);
            self.next = Some(first + 1);
            self.release_ready(now, out);
        }
    }

    fn release_ready(&mut self, now: Instant, out: &mut Vec<T>) {
        let Some(mut next) = self.next else { return };
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != next || entry.get().not_before > now {
                break;
            }
            out.extend(entry.remove().packet);
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
            ..HoldConfig::default()
        })
    }

    fn push_all(h: &mut InOrder<u32>, seqs: &[u32], now: Instant) -> Vec<u32> {
        push_as(h, seqs, Wait::Always, now)
    }

    fn push_as(h: &mut InOrder<u32>, seqs: &[u32], wait: Wait, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        for &s in seqs {
            h.push(s, s, wait, now, RTT, &mut out);
        }
        out
    }

    #[test]
    fn what_may_not_wait_goes_at_once_and_still_keeps_its_place() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[0, 2], t0), [0]);
        let out = push_as(&mut h, &[3], Wait::Never, t0);
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

    /// One packet a millisecond for `ms` ms from `t0`, starting at `seq`;
    /// every `hole_every`th (if any) is lost and its resend comes one RTT
    /// later. Returns when each packet was handed on, by sequence number.
    fn stream(
        h: &mut InOrder<u32>,
        t0: Instant,
        seq: u32,
        ms: u32,
        hole_every: Option<u32>,
    ) -> BTreeMap<u32, Duration> {
        let mut resends = Vec::new();
        let mut handed = BTreeMap::new();
        let mut out = Vec::new();
        let rtt_ms = RTT.as_millis() as u32;
        for t in 0..ms + 3 * rtt_ms {
            let now = t0 + Duration::from_millis(u64::from(t));
            h.poll(now, &mut out);
            resends.retain(|&(at, s)| {
                if at == t {
                    h.push(s, s, Wait::Always, now, RTT, &mut out);
                }
                at != t
            });
            let s = seq + t;
            if t < ms {
                if hole_every.is_some_and(|k| s.is_multiple_of(k)) {
                    resends.push((t + rtt_ms, s));
                } else {
                    h.push(s, s, Wait::Always, now, RTT, &mut out);
                }
            }
            for p in out.drain(..) {
                handed.insert(p, now - t0);
            }
        }
        handed
    }

    /// A hold that has seen 600 ms of a hole every 4 packets: in playout.
    fn in_playout() -> (InOrder<u32>, Instant) {
        let t0 = Instant::now();
        let mut h = hold();
        h.push(0, 0, Wait::Always, t0, RTT, &mut Vec::new());
        stream(&mut h, t0, 1, 600, Some(4));
        assert!(h.playout());
        (h, t0)
    }

    #[test]
    fn where_most_packets_wait_behind_holes_every_packet_waits_the_full_wait() {
        let t0 = Instant::now();
        let mut h = hold();
        h.push(0, 0, Wait::Always, t0, RTT, &mut Vec::new());
        // A hole every 4 packets: nearly every packet arrives behind one.
        let handed = stream(&mut h, t0, 1, 600, Some(4));
        assert!(h.playout());
        assert_eq!(h.stats().playouts, 1);
        let wait = Duration::from_millis(31);
        // Once in playout, each packet goes the full wait after it came
        // (resends as soon as those before them have): one steady delay.
        for s in 400..500u32 {
            let arrived = Duration::from_millis(u64::from(s - 1));
            let expected = if s % 4 == 0 {
                arrived + wait - Duration::from_millis(1)
            } else {
                arrived + wait
            };
            let got = handed[&s];
            assert!(
                got == expected || (s % 4 == 0 && got <= arrived + wait),
                "packet {s} handed on at {got:?}, expected {expected:?}"
            );
        }
        assert_eq!(h.stats().passed_over, 0);
        assert_eq!(handed.len(), 600);
        assert!(
            handed.keys().copied().eq(1..=600),
            "all in order, none lost"
        );
    }

    #[test]
    fn playout_stops_once_holes_are_rare_and_packets_go_at_once_again() {
        let (mut h, t0) = in_playout();
        let later = t0 + Duration::from_secs(2);
        let handed = stream(&mut h, later, 601, 600, None);
        assert!(
            !h.playout(),
            "no holes for a period: back to holding only behind one"
        );
        for s in 1000..1100u32 {
            let arrived = Duration::from_millis(u64::from(s - 601));
            assert_eq!(handed[&s], arrived, "packet {s} waits for nothing");
        }
    }

    #[test]
    fn occasional_holes_do_not_start_playout() {
        let t0 = Instant::now();
        let mut h = hold();
        h.push(0, 0, Wait::Always, t0, RTT, &mut Vec::new());
        // A hole every 100 packets holds 20 of them: a fifth.
        let handed = stream(&mut h, t0, 1, 1000, Some(100));
        assert!(!h.playout());
        assert_eq!(
            handed[&150],
            Duration::from_millis(149),
            "not behind a hole: goes at once"
        );
    }

    #[test]
    fn what_may_not_wait_still_goes_at_once_in_playout() {
        let (mut h, t0) = in_playout();
        let now = t0 + Duration::from_secs(1);
        let mut out = Vec::new();
        h.push(602, 602, Wait::Always, now, RTT, &mut out);
        assert!(out.is_empty(), "TCP waits its turn");
        h.push(603, 603, Wait::Never, now, RTT, &mut out);
        assert_eq!(out, [603]);
        assert_eq!(h.poll_timeout(), Some(now + Duration::from_millis(31)));
    }

    #[test]
    fn short_paths_never_start_playout() {
        let t0 = Instant::now();
        let mut h = hold();
        let rtt = Duration::from_millis(1);
        let mut out = Vec::new();
        for s in 0..2000u32 {
            let now = t0 + Duration::from_micros(u64::from(s) * 250);
            if s % 4 != 1 {
                h.push(s, s, Wait::Always, now, rtt, &mut out);
            }
            h.poll(now, &mut out);
        }
        assert!(
            !h.playout(),
            "every packet behind a hole, but on a 1 ms path"
        );
    }

    #[test]
    fn tcp_without_data_waits_only_in_playout() {
        let t0 = Instant::now();
        let mut h = hold();
        assert_eq!(push_all(&mut h, &[0, 2], t0), [0]);
        let out = push_as(&mut h, &[3], Wait::InPlayout, t0);
        assert_eq!(out, [3], "an ACK behind a hole goes at once");
        stream(&mut h, t0, 4, 600, Some(4));
        assert!(h.playout());
        let now = t0 + Duration::from_secs(1);
        let mut out = push_as(&mut h, &[604], Wait::InPlayout, now);
        assert!(out.is_empty(), "in playout an ACK waits as data does");
        h.poll(now + Duration::from_millis(31), &mut out);
        assert_eq!(out, [604]);
    }

    #[test]
    fn data_of_a_flow_begun_outside_playout_waits_only_behind_holes() {
        let (mut h, t0) = in_playout();
        let now = t0 + Duration::from_secs(1);
        let mut out = Vec::new();
        h.push(601, 601, Wait::BehindHoles, now, RTT, &mut out);
        assert_eq!(out, [601], "in order: no steady delay for it");
        out.clear();
        h.push(603, 603, Wait::BehindHoles, now, RTT, &mut out);
        assert!(out.is_empty(), "behind a hole it still waits");
        h.push(602, 602, Wait::BehindHoles, now + RTT, RTT, &mut out);
        assert_eq!(out, [602, 603]);
    }

    #[test]
    fn flows_that_began_in_playout_are_told_from_older_ones() {
        let mut flows = PlayoutFlows::new(64);
        assert!(!flows.observe(7, false, true), "never seen opening: older");
        assert!(!flows.observe(9, true, false), "opened outside playout");
        assert!(!flows.observe(9, false, true));
        assert!(flows.observe(11, true, true), "opened in playout");
        assert!(
            flows.observe(11, false, false),
            "stays so once playout ends"
        );
        assert!(
            !flows.observe(11, true, false),
            "the same ports reopened outside it"
        );
        assert!(!flows.observe(11, false, true));
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
