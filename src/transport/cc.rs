//! Congestion control for tunnel connections.
//!
//! A tunnel carries other people's TCP, which already reacts to loss: an outer
//! loss-based controller (quinn's default Cubic) then collapses on a lossy path
//! (0.75 Gbit/s at 5 % loss measured here), and quinn 0.11's BBR grows its
//! window without bound because it samples bandwidth between two back-to-back
//! ACKs. This controller keeps BBR's model and nothing else: the window is
//! twice the bandwidth-delay product, with the bandwidth measured over at least
//! one round trip (so ACK bursts cannot inflate it) and its maximum kept for a
//! second of traffic (so a stalled receiver, common on a busy host, does not
//! talk it down within a few RTTs, and a flow after an idle spell starts at
//! the rate the path last had, not from the initial window: 200 Mbit/s of
//! UDP lost 5-8 % of a 3 s run to that ramp). Idle time advances that second
//! by two sample intervals per keepalive (one a second), so the maximum
//! outlives some 25 s of idle on a 20 ms path and 2 s on a 250 ms one. Loss
//! alone never shrinks the window; quinn paces at the window per RTT, so the
//! queue the tunnel adds at a bottleneck stays near one BDP (or near the
//! floor below, on a path whose BDP is smaller).
//!
//! The RTT in that product is the path's base RTT, which the controller keeps
//! itself rather than taking quinn's lifetime minimum: when the path's RTT
//! rises for good (a new route, a moved site, a connection set up on an idle
//! LAN path that later crosses a WAN), a stale minimum would size the window
//! below one BDP, every bandwidth sample would then come out lower than the
//! last, and the tunnel would ratchet down to its minimum window. Measured:
//! a connection set up at 0.1 ms whose path then took 24 ms fell to 5 KiB and
//! 2 Mbit/s. So when every sample over a probe period is above twice the
//! base (at least 2 ms, the least RTT the window is sized for), and the
//! window or the pacer held something back meanwhile, the path may have
//! changed. But the tunnel's own queue at a bottleneck doubles the RTT too
//! (two BDPs in flight leave one queued; measured, the base then climbed 21,
//! 45, 72, 151 ms at 100 Mbit/s and the window with it), and so does a path
//! whose rate fell under a window sized for the old rate. So the controller
//! looks, as BBR's ProbeRTT does: the window drops to one BDP at the rate
//! the period delivered, which still fills the path, for up to three raised
//! RTTs. If the RTT falls back, it was a queue and the window is restored;
//! if not, the path changed and its lowest RTT becomes the base. (Without
//! that look, a queue re-learned as the base grows the window, whose queue
//! is re-learned in turn; and a route change of 2 to 2.5 times with the
//! window full looks exactly like a queue.)
//!
//! A receiver short of CPU acknowledges late while the path stays as short
//! as ever: the lowest RTT of a probe period stays at the base, the mean
//! does not. The window then grows by the bandwidth times the part of that
//! lag its second BDP does not cover (up to `MAX_ACK_LAG`), unless a look
//! has found the tunnel's own queue. Measured: a 40 Mbit/s flow on a LAN
//! path under CPU load was held to 64 KiB per 15-30 ms round trip and
//! overflowed its send buffer.
//!
//! Outside a look (and a restart after persistent congestion), the window
//! never drops below the initial window, so that a burst after set-up or an
//! idle second does not start from 4 packets, unless a look has found the
//! tunnel's own queue while the path set the rate (within the last second):
//! then that floor is cut to what drains in `FLOOR_QUEUE` at the measured
//! rate, since 64 KiB is 105 ms of queue at 5 Mbit/s. Cut on the estimate
//! alone (which pings or a flow's first samples keep low), it would shrink
//! a LAN path's window to a few packets with no queue to show for it. (The floor comes back after an idle second while the
//! bandwidth stays: the window still grows only by what is acknowledged.)

use quinn_proto::congestion::{Controller, ControllerFactory};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In-flight bytes allowed per byte of BDP: room to probe for more bandwidth.
const WINDOW_GAIN: u64 = 2;
/// How long the highest bandwidth sample counts, in time with traffic.
const BW_WINDOW: Duration = Duration::from_secs(1);
/// The most one sample advances that time, in sample intervals: an idle
/// spell (keepalives only) or a stall is not evidence of a slower path.
const ACTIVE_STEP: u32 = 2;
/// Shortest sampling interval, and the least RTT the window is sized for: on
/// loopback the RTT is tens of microseconds, shorter than the spacing of ACK
/// bursts and of scheduler stalls.
const MIN_SAMPLE: Duration = Duration::from_millis(2);
/// Samples without 25 % growth before start-up ends.
const FULL_BW_ROUNDS: u32 = 3;
/// Shortest period over which the RTT must stay high before it is looked
/// at (at least four RTTs of samples are taken too).
const RTT_PROBE_PERIOD: Duration = Duration::from_millis(250);
/// An RTT this many times the base (at least `MIN_SAMPLE`) is a queue or a
/// longer path.
const RTT_RISE_FACTOR: u32 = 2;
/// How long a look at a raised RTT lasts at most, in raised RTTs: the queue
/// drains within one, packets sent at the lower window come back within the
/// next.
const LOOK_RTTS: u32 = 3;
/// The most queue the initial-window floor may keep at a measured rate.
const FLOOR_QUEUE: Duration = Duration::from_millis(25);
/// The most ACK lag the window makes room for.
const MAX_ACK_LAG: Duration = Duration::from_millis(50);

/// A look at a raised RTT: the window is held at one BDP to see whether the
/// RTT falls back.
#[derive(Debug, Clone, Copy)]
struct Look {
    until: Instant,
    window: u64,
    /// Restored, as far as the model allows, when the look ends.
    prior_window: u64,
    /// The lowest RTT seen, and whether the window or the pacer held anything
    /// back meanwhile (a verdict of "new path" needs that).
    lowest: Duration,
    path_limited: bool,
}

#[derive(Debug, Clone)]
pub struct TunnelCcConfig {
    pub initial_window: u64,
    /// Hard ceiling: bounds the memory a connection can hold in flight.
    pub max_window: u64,
}

impl Default for TunnelCcConfig {
    fn default() -> Self {
        TunnelCcConfig {
            initial_window: 64 * 1024,
            max_window: 16 << 20,
        }
    }
}

impl ControllerFactory for TunnelCcConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(TunnelCc::new((*self).clone(), now, current_mtu))
    }
}

#[derive(Debug, Clone)]
pub struct TunnelCc {
    config: TunnelCcConfig,
    mtu: u64,
    window: u64,
    /// The path's base RTT: the lowest seen since the path last changed.
    min_rtt: Option<Duration>,
    /// The lowest RTT of the current probe period, the bytes it delivered,
    /// whether the window or the pacer held anything back, and when it began.
    probe_min_rtt: Duration,
    probe_bytes: u64,
    probe_path_limited: bool,
    probe_start: Instant,
    /// The RTT samples of the current probe period, summed, and how many.
    probe_rtt_sum: Duration,
    probe_rtt_samples: u32,
    /// How far the mean RTT of the last probe period sat above its lowest
    /// while no queue of the tunnel's own was seen: the receiver's ACKs
    /// running late, as on a host short of CPU. The window makes room for
    /// what of it the model's second BDP does not already cover.
    ack_lag: Duration,
    look: Option<Look>,
    sample_start: Instant,
    sample_bytes: u64,
    sample_app_limited: bool,
    /// When a sample last ran into the window or the pacer: the path, not
    /// the application, set its rate.
    path_set_rate_at: Option<Instant>,
    /// A look found the tunnel's own queue since the path last set a rate:
    /// the floor may be what keeps it.
    queue_seen: bool,
    /// Time with traffic: each sample's interval, at most [`ACTIVE_STEP`]
    /// sample intervals.
    active: Duration,
    /// Delivery rates (bytes per second) of the last [`BW_WINDOW`] of
    /// traffic, stamped with `active`, as a monotonic queue: each entry is
    /// higher than every later one, so the front is the maximum.
    samples: VecDeque<(Duration, u64)>,
    full_bw: bool,
    full_bw_reference: u64,
    rounds_without_growth: u32,
}

impl TunnelCc {
    pub fn new(config: TunnelCcConfig, now: Instant, mtu: u16) -> Self {
        let window = config.initial_window.max(min_window(mtu as u64));
        TunnelCc {
            config,
            mtu: mtu as u64,
            window,
            min_rtt: None,
            probe_min_rtt: Duration::MAX,
            probe_bytes: 0,
            probe_path_limited: false,
            probe_start: now,
            probe_rtt_sum: Duration::ZERO,
            probe_rtt_samples: 0,
            ack_lag: Duration::ZERO,
            look: None,
            sample_start: now,
            sample_bytes: 0,
            sample_app_limited: false,
            path_set_rate_at: None,
            queue_seen: false,
            active: Duration::ZERO,
            samples: VecDeque::new(),
            full_bw: false,
            full_bw_reference: 0,
            rounds_without_growth: 0,
        }
    }

    /// The highest recent delivery rate, bytes per second.
    pub fn bandwidth(&self) -> u64 {
        self.samples.front().map_or(0, |&(_, rate)| rate)
    }

    pub fn in_startup(&self) -> bool {
        !self.full_bw
    }

    fn sample_interval(&self) -> Duration {
        self.min_rtt.unwrap_or(MIN_SAMPLE).max(MIN_SAMPLE)
    }

    /// The base RTT the window is sized for.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn end_sample(&mut self, now: Instant) {
        if self.sample_bytes == 0 {
            // Only ACKs of ACK-only packets: nothing was delivered, so this
            // says nothing about the path.
            self.sample_start = now;
            self.sample_app_limited = false;
            return;
        }
        let elapsed = now.saturating_duration_since(self.sample_start);
        let rate = rate_of(self.sample_bytes, elapsed);
        self.active += elapsed.min(ACTIVE_STEP * self.sample_interval());
        let active = self.active;
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| active.saturating_sub(at) > BW_WINDOW)
        {
            self.samples.pop_front();
        }
        if !self.sample_app_limited {
            self.path_set_rate_at = Some(now);
        } else if !self.path_set_rate(now) {
            self.queue_seen = false;
        }
        // An app-limited sample says only that the path carries at least this much.
        if !self.sample_app_limited || rate > self.bandwidth() {
            while self.samples.back().is_some_and(|&(_, r)| r <= rate) {
                self.samples.pop_back();
            }
            self.samples.push_back((active, rate));
        }
        // App-limited samples count here too: quinn calls the connection
        // app-limited whenever the tunnel has emptied its queue, which it does
        // after nearly every packet when something else (the inner TCP, a
        // slower bottleneck) sets the pace. Waiting for a sample that is not
        // would keep start-up, and its window growth, going for good:
        // measured, 5.3 MiB at a 100 Mbit/s bottleneck of 20 ms, and the
        // excess dropped there and resent into it.
        if !self.full_bw {
            let bw = self.bandwidth();
            if bw >= self.full_bw_reference + self.full_bw_reference / 4 {
                self.full_bw_reference = bw;
                self.rounds_without_growth = 0;
            } else {
                self.rounds_without_growth += 1;
                self.full_bw = self.rounds_without_growth >= FULL_BW_ROUNDS;
                if self.full_bw {
                    tracing::debug!(
                        bandwidth = bw,
                        window = self.window,
                        "congestion control: start-up ended"
                    );
                }
            }
        }
        tracing::trace!(
            rate,
            app_limited = self.sample_app_limited,
            bandwidth = self.bandwidth(),
            window = self.window,
            elapsed_us = elapsed.as_micros() as u64,
            "congestion control: sample"
        );
        self.sample_start = now;
        self.sample_bytes = 0;
        self.sample_app_limited = false;
    }

    /// One acknowledged packet, with the RTT the latest ACK measured.
    pub fn on_ack_sample(&mut self, now: Instant, bytes: u64, app_limited: bool, rtt: Duration) {
        self.track_rtt(now, rtt, bytes, app_limited);
        self.sample_bytes += bytes;
        self.sample_app_limited |= app_limited;
        if self.full_bw || self.look.is_some() {
            // Follow the model, growing at most by what was acknowledged.
            let target = self.target_window(now);
            self.window = target.min(self.window + bytes);
        } else if !app_limited {
            // Start-up doubles per round trip, never below the model.
            self.window = (self.window + bytes)
                .max(self.target_window(now))
                .min(self.config.max_window);
        }
    }

    fn track_rtt(&mut self, now: Instant, rtt: Duration, bytes: u64, app_limited: bool) {
        let base = self.min_rtt.map_or(rtt, |m| m.min(rtt));
        self.min_rtt = Some(base);
        let raised = RTT_RISE_FACTOR * self.sample_interval();
        if let Some(mut look) = self.look {
            look.lowest = look.lowest.min(rtt);
            look.path_limited |= !app_limited;
            if rtt <= raised {
                tracing::debug!(
                    rtt_ms = rtt.as_secs_f64() * 1e3,
                    "congestion control: the raised RTT was a queue"
                );
                self.queue_seen = true;
                self.end_probe(now, None);
            } else if now >= look.until {
                // Only a sample the window held back shows the path's RTT;
                // after an idle spell, a lone delayed ACK decides nothing.
                self.end_probe(now, look.path_limited.then_some(look.lowest));
            } else {
                self.look = Some(look);
            }
            return;
        }
        self.probe_min_rtt = self.probe_min_rtt.min(rtt);
        self.probe_bytes += bytes;
        self.probe_path_limited |= !app_limited;
        self.probe_rtt_sum += rtt;
        self.probe_rtt_samples += 1;
        let elapsed = now.saturating_duration_since(self.probe_start);
        if elapsed < RTT_PROBE_PERIOD.max(4 * self.probe_min_rtt) {
            return;
        }
        // Keepalives and light traffic (app-limited throughout) cannot tell
        // a longer path from a delayed ACK, and a window they never fill
        // does not need resizing.
        if self.probe_min_rtt > raised && self.probe_path_limited {
            // The rate the period delivered: the kept maximum may be stale
            // (the path got slower), and one BDP of it would keep a queue.
            let delivered = rate_of(self.probe_bytes, elapsed);
            self.ack_lag = Duration::ZERO;
            self.look = Some(Look {
                until: now + LOOK_RTTS * self.probe_min_rtt,
                window: self.bdp(self.bandwidth().min(delivered)),
                prior_window: self.window,
                lowest: Duration::MAX,
                path_limited: false,
            });
            return;
        }
        // A queue of the tunnel's own lags every ACK alike, so its mean
        // stays near its lowest; and once a look has found one, the window
        // must not grow with it. Only a period the window or the pacer held
        // back measures the lag under load (light traffic's ACKs are delayed
        // on purpose); one that did not keep the last, or the window that
        // just sufficed would shrink again.
        if self.queue_seen {
            self.ack_lag = Duration::ZERO;
        } else if self.probe_path_limited {
            let mean = self.probe_rtt_sum / self.probe_rtt_samples.max(1);
            self.ack_lag = mean.saturating_sub(self.probe_min_rtt).min(MAX_ACK_LAG);
        }
        self.end_probe(now, None);
    }

    /// Ends a probe period and any look; `relearned`: the path's RTT rose
    /// to that for good.
    fn end_probe(&mut self, now: Instant, relearned: Option<Duration>) {
        if let (Some(new), Some(old)) = (relearned, self.min_rtt) {
            tracing::debug!(
                old_ms = old.as_secs_f64() * 1e3,
                new_ms = new.as_secs_f64() * 1e3,
                "congestion control: the path's RTT rose, re-learning it"
            );
            self.min_rtt = Some(new);
        }
        if let Some(look) = self.look.take() {
            self.window = self
                .window
                .max(look.prior_window.min(self.target_window(now)));
        }
        self.probe_min_rtt = Duration::MAX;
        self.probe_bytes = 0;
        self.probe_path_limited = false;
        self.probe_start = now;
        self.probe_rtt_sum = Duration::ZERO;
        self.probe_rtt_samples = 0;
    }

    /// Whether a sample ran into the window or the pacer within the last
    /// second: wall time, unlike the bandwidth (see the module's last
    /// paragraph).
    fn path_set_rate(&self, now: Instant) -> bool {
        self.path_set_rate_at
            .is_some_and(|at| now.saturating_duration_since(at) <= BW_WINDOW)
    }

    /// One BDP at `rate`, within the window's bounds.
    fn bdp(&self, rate: u64) -> u64 {
        bytes_in(rate, self.sample_interval())
            .max(min_window(self.mtu))
            .min(self.config.max_window)
    }

    fn target_window(&self, now: Instant) -> u64 {
        if let Some(look) = &self.look {
            return look.window;
        }
        let bdp = bytes_in(self.bandwidth(), self.sample_interval());
        let least = min_window(self.mtu);
        let initial = self.config.initial_window.max(least);
        // Cut only for a queue seen: a bandwidth estimate low for want of
        // traffic (pings, a flow's first sample) must not shrink a LAN
        // path's window to a few packets.
        let floor = if self.queue_seen && self.path_set_rate(now) {
            initial.min(bytes_in(self.bandwidth(), FLOOR_QUEUE).max(least))
        } else {
            initial
        };
        let lagging = bytes_in(
            self.bandwidth(),
            self.ack_lag.saturating_sub(self.sample_interval()),
        );
        (WINDOW_GAIN * bdp + lagging)
            .clamp(floor.min(self.config.max_window), self.config.max_window)
    }
}

fn min_window(mtu: u64) -> u64 {
    4 * mtu
}

/// Bytes per second for `bytes` over `elapsed`.
fn rate_of(bytes: u64, elapsed: Duration) -> u64 {
    (bytes as u128 * 1_000_000_000 / elapsed.as_nanos().max(1)) as u64
}

/// Bytes that `rate` (bytes per second) moves in `d`.
fn bytes_in(rate: u64, d: Duration) -> u64 {
    (rate as u128 * d.as_nanos() / 1_000_000_000) as u64
}

impl Controller for TunnelCc {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        // quinn 0.11 does not expose its latest RTT sample; this packet's own
        // round trip is that sample (ACK delay included, which the probe's
        // minimum filters out).
        let rtt = now.saturating_duration_since(sent);
        self.on_ack_sample(now, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        _in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        if now.saturating_duration_since(self.sample_start) >= self.sample_interval() {
            self.end_sample(now);
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        // Random loss is the inner TCP's business. A path that went silent for
        // several RTTs may have changed: start measuring afresh.
        if is_persistent_congestion {
            tracing::debug!(
                window = self.window,
                "congestion control: persistent congestion, measuring afresh"
            );
            // Everything as at set-up, but from RFC 9002's minimum window.
            *self = TunnelCc {
                window: min_window(self.mtu),
                ..TunnelCc::new(self.config.clone(), now, self.mtu as u16)
            };
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu as u64;
        self.window = self.window.max(min_window(self.mtu));
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.config.initial_window.max(min_window(self.mtu))
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated path; [`Path::run`] steps it in 50 us ticks.
    #[derive(Clone, Copy)]
    struct Path {
        /// Bottleneck rate, bytes/s.
        rate: u64,
        /// Base round-trip delay.
        rtt: Duration,
        /// Random loss fraction.
        loss: f64,
        /// What the application offers, bytes/s (`None`: all it can).
        app_rate: Option<u64>,
        /// `(period, length)`: the bottleneck stops for `length` every
        /// `period`, like a receiver that loses its CPU.
        stall: Option<(Duration, Duration)>,
        /// Packets are acknowledged this long after they arrive, but one in
        /// 50 at once: a receiving process that waits for a CPU on a busy
        /// host, the path itself still as short as ever.
        ack_delay: Option<Duration>,
        /// Bytes offered but not yet sent that the sender keeps (quinn's
        /// datagram send buffer); more is dropped. `None`: all of it.
        app_buffer: Option<u64>,
        /// `(at, rtt)`: the base delay changes to `rtt` at `at` (a new route).
        rtt_change: Option<(Duration, Duration)>,
        /// `(at, rate)`: the bottleneck's rate changes to `rate` at `at`.
        rate_change: Option<(Duration, u64)>,
        /// The application offers `app_rate` in lumps this far apart, as
        /// the TCP inside a tunnel does.
        burst: Option<Duration>,
        /// quinn's pacer: 1.25 windows per smoothed RTT, bursts of 2 ms. A
        /// send it holds back makes the connection not app-limited.
        paced: bool,
        steps: u32,
    }

    impl Path {
        fn new(rate: u64, rtt: Duration) -> Path {
            Path {
                rate,
                rtt,
                loss: 0.0,
                app_rate: None,
                stall: None,
                ack_delay: None,
                app_buffer: None,
                rtt_change: None,
                rate_change: None,
                burst: None,
                paced: false,
                steps: 40_000,
            }
        }
    }

    /// Runs `path` with a random `loss` and an application offering
    /// `app_rate`. Returns the controller, the delivered bytes/s and the
    /// longest bottleneck queue (packets) over the last half of the run.
    fn simulate(
        rate: u64,
        rtt: Duration,
        loss: f64,
        app_rate: Option<u64>,
    ) -> (TunnelCc, u64, u64) {
        Path {
            loss,
            app_rate,
            ..Path::new(rate, rtt)
        }
        .run()
    }

    impl Path {
        fn run(self) -> (TunnelCc, u64, u64) {
            let Path {
                rate,
                loss,
                app_rate,
                stall,
                steps,
                ..
            } = self;
            let start = Instant::now();
            let mut cc = TunnelCc::new(TunnelCcConfig::default(), start, 1400);
            let tick = Duration::from_micros(50);
            let packet = 1400u64;
            let mut in_flight = 0u64;
            // Packets waiting at the bottleneck, then in propagation: (ready time, sent time).
            let mut queue: VecDeque<Instant> = VecDeque::new();
            let mut wire: VecDeque<(Instant, Instant)> = VecDeque::new();
            // Arrived packets whose ACK the receiver holds back, and those it sends now.
            let mut late: VecDeque<(Instant, Instant)> = VecDeque::new();
            let mut due: Vec<Instant> = Vec::new();
            let mut arrived = 0u64;
            let mut link_credit = 0f64;
            let mut app_credit = 0f64;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut delivered_late = 0u64;
            let mut max_queue = 0usize;
            let mut tokens = 0f64;
            let mut srtt = self.rtt;
            for step in 0..steps {
                let now = start + tick * step;
                // Send what the window and the application allow.
                app_credit += match (app_rate, self.burst) {
                    (None, _) => f64::INFINITY,
                    (Some(r), None) => r as f64 * tick.as_secs_f64(),
                    (Some(r), Some(b)) if (tick * step).as_nanos().is_multiple_of(b.as_nanos()) => {
                        r as f64 * b.as_secs_f64()
                    }
                    (Some(_), Some(_)) => 0.0,
                };
                if self.paced {
                    let per_rtt = cc.window() as f64 / srtt.as_secs_f64();
                    let capacity = (per_rtt * 0.002).clamp(10.0 * 1400.0, 256.0 * 1400.0);
                    tokens = (tokens + 1.25 * per_rtt * tick.as_secs_f64()).min(capacity);
                }
                while in_flight + packet <= cc.window()
                    && app_credit >= packet as f64
                    && (!self.paced || tokens >= packet as f64)
                {
                    tokens -= packet as f64;
                    app_credit -= packet as f64;
                    in_flight += packet;
                    cc.on_sent(now, packet, 0);
                    queue.push_back(now);
                }
                if app_credit.is_infinite() {
                    app_credit = 0.0;
                }
                if let Some(b) = self.app_buffer {
                    app_credit = app_credit.min(b as f64);
                }
                // As quinn says: app-limited when everything offered went out.
                let limited = app_rate.is_some() && app_credit < packet as f64;
                if step > steps / 2 {
                    max_queue = max_queue.max(queue.len());
                }
                // The bottleneck drains at its rate; loss happens on the wire.
                let stalled = stall.is_some_and(|(period, length)| {
                    (tick * step).as_nanos() % period.as_nanos() < length.as_nanos()
                });
                let rate = match self.rate_change {
                    Some((at, r)) if tick * step >= at => r,
                    _ => rate,
                };
                if !stalled {
                    link_credit += rate as f64 * tick.as_secs_f64();
                }
                while link_credit >= packet as f64 {
                    let Some(sent) = queue.pop_front() else {
                        link_credit = 0.0;
                        break;
                    };
                    link_credit -= packet as f64;
                    let rtt = match self.rtt_change {
                        Some((at, rtt)) if tick * step >= at => rtt,
                        _ => self.rtt,
                    };
                    wire.push_back((now + rtt, sent));
                }
                while wire.front().is_some_and(|(t, _)| *t <= now) {
                    let Some((_, sent)) = wire.pop_front() else {
                        break;
                    };
                    arrived += 1;
                    match self.ack_delay {
                        Some(d) if !arrived.is_multiple_of(50) => late.push_back((now + d, sent)),
                        _ => due.push(sent),
                    }
                }
                while late.front().is_some_and(|(t, _)| *t <= now) {
                    due.extend(late.pop_front().map(|(_, sent)| sent));
                }
                for sent in due.drain(..) {
                    in_flight -= packet;
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if (seed % 10_000) as f64 / 10_000.0 < loss {
                        cc.on_congestion_event(now, sent, false, packet);
                        continue;
                    }
                    srtt = (srtt * 7 + (now - sent)) / 8;
                    cc.on_ack_sample(now, packet, limited, now - sent);
                    if step > steps / 2 {
                        delivered_late += packet;
                    }
                }
                cc.on_end_acks(now, in_flight, limited, None);
            }
            let secs = (tick * (steps / 2)).as_secs_f64();
            (cc, (delivered_late as f64 / secs) as u64, max_queue as u64)
        }
    }

    #[test]
    fn fills_the_bottleneck_with_a_bounded_window() {
        let rate = 500_000_000 / 8 * 8; // 500 MB/s (4 Gbit/s)
        let rtt = Duration::from_millis(2);
        let (cc, goodput, max_queue) = simulate(rate, rtt, 0.0, None);
        assert!(!cc.in_startup(), "start-up never ended");
        assert!(goodput > rate * 9 / 10, "goodput {goodput} of {rate}");
        let bdp = rate * 2 / 1000;
        assert!(
            cc.window() <= 3 * bdp,
            "window {} vs BDP {bdp}",
            cc.window()
        );
        assert!(cc.window() >= bdp, "window {} vs BDP {bdp}", cc.window());
        // Once start-up is over the standing queue stays near one BDP.
        assert!(max_queue * 1400 <= 4 * bdp, "queue {max_queue} packets");
    }

    #[test]
    fn random_loss_does_not_collapse_the_window() {
        let rate = 125_000_000; // 1 Gbit/s
        let rtt = Duration::from_millis(20);
        let (_, clean, _) = simulate(rate, rtt, 0.0, None);
        let (cc, lossy, _) = simulate(rate, rtt, 0.05, None);
        assert!(lossy > clean * 85 / 100, "5 % loss: {lossy} vs {clean}");
        assert!(cc.window() >= rate * 20 / 1000, "window {}", cc.window());
    }

    #[test]
    fn an_app_limited_sender_keeps_its_estimate_and_the_window_stays_bounded() {
        let rate = 125_000_000;
        let rtt = Duration::from_millis(5);
        let (cc, goodput, _) = simulate(rate, rtt, 0.0, Some(rate / 10));
        assert!(goodput > rate / 12, "goodput {goodput}");
        assert!(cc.window() <= TunnelCcConfig::default().max_window);
        assert!(
            cc.window() <= 4 * rate / 10 * 5 / 1000 + 256 * 1024,
            "window {}",
            cc.window()
        );
    }

    #[test]
    fn receiver_stalls_on_a_fast_short_path_do_not_talk_the_rate_down() {
        let rate = 500_000_000; // 4 Gbit/s
        let rtt = Duration::from_micros(100);
        // The receiver loses its CPU for 15 ms in every 40.
        let stall = Some((Duration::from_millis(40), Duration::from_millis(15)));
        let (_, goodput, _) = Path {
            stall,
            ..Path::new(rate, rtt)
        }
        .run();
        assert!(goodput > rate / 2, "goodput {goodput} of {}", rate * 5 / 8);
    }

    #[test]
    fn late_acks_do_not_hold_an_offered_rate_back() {
        // 40 Mbit/s offered over a 1 Gbit/s, 0.5 ms path whose receiver,
        // short of CPU, acknowledges each packet up to 40 ms late: the
        // window must carry what is sent meanwhile, or the send buffer
        // overflows.
        let offered = 5_000_000;
        let (cc, goodput, _) = Path {
            app_rate: Some(offered),
            ack_delay: Some(Duration::from_millis(20)),
            app_buffer: Some(256 * 1024),
            steps: 100_000,
            ..Path::new(125_000_000, Duration::from_micros(500))
        }
        .run();
        assert!(
            goodput > offered * 99 / 100,
            "goodput {goodput} of {offered}, window {}",
            cc.window()
        );
    }

    #[test]
    fn a_paced_flow_on_a_long_lossy_path_gets_its_rate() {
        let rate = 125_000_000; // 1 Gbit/s
        let offered = 12_500_000; // 100 Mbit/s
        let (_, goodput, _) = simulate(rate, Duration::from_millis(20), 0.01, Some(offered));
        assert!(
            goodput > offered * 9 / 10 * 99 / 100,
            "goodput {goodput} of {offered}"
        );
    }

    /// A path of `rate` whose RTT goes from `from` to `to` half a second in:
    /// the controller and the delivered bytes/s over the last half.
    fn rerouted(rate: u64, from: Duration, to: Duration, steps: u32) -> (TunnelCc, u64) {
        let (cc, goodput, _) = Path {
            rtt_change: Some((Duration::from_millis(500), to)),
            steps,
            ..Path::new(rate, from)
        }
        .run();
        (cc, goodput)
    }

    #[test]
    fn a_path_whose_rtt_rises_for_good_gets_its_rate_back() {
        // Set up on a LAN-like path, then rerouted over 20 ms: sized for the
        // old RTT, the window would ratchet down to its minimum.
        let rate = 125_000_000; // 1 Gbit/s
        let new_rtt = Duration::from_millis(20);
        let (cc, goodput) = rerouted(rate, Duration::from_micros(100), new_rtt, 80_000);
        assert!(goodput > rate * 8 / 10, "goodput {goodput} of {rate}");
        assert!(
            cc.base_rtt().is_some_and(|r| r >= new_rtt),
            "base RTT {:?}",
            cc.base_rtt()
        );
    }

    #[test]
    fn a_tunnel_paced_by_the_flows_inside_it_keeps_its_window_near_the_model() {
        // The inner TCP sends 90 Mbit/s in bursts through a 100 Mbit/s path,
        // so quinn reports nearly every ACK app-limited, and the few its
        // pacer holds back not. Start-up must still end, or each of those
        // grows the window (and with it the pacing rate) without bound.
        let rate = 12_500_000; // 100 Mbit/s
        let rtt = Duration::from_millis(20);
        let offered = rate * 9 / 10;
        let (cc, goodput, _) = Path {
            app_rate: Some(offered),
            burst: Some(Duration::from_millis(10)),
            paced: true,
            steps: 80_000,
            ..Path::new(rate, rtt)
        }
        .run();
        assert!(!cc.in_startup(), "start-up never ended");
        let bdp = rate * 20 / 1000;
        assert!(
            cc.window() <= 3 * bdp,
            "window {} vs BDP {bdp}",
            cc.window()
        );
        assert!(
            goodput > offered * 95 / 100,
            "goodput {goodput} of {offered}"
        );
    }

    /// Feeds `cc` `ms` milliseconds of ACKs at `rate` bytes/s, each with
    /// round trip `rtt`.
    fn acks(
        cc: &mut TunnelCc,
        now: &mut Instant,
        ms: u32,
        (rate, app_limited): (u64, bool),
        rtt: Duration,
    ) {
        for _ in 0..ms {
            *now += Duration::from_millis(1);
            cc.on_ack_sample(*now, rate / 1000, app_limited, rtt);
            cc.on_end_acks(*now, 0, app_limited, None);
        }
    }

    #[test]
    fn a_raised_rtt_is_looked_at_before_it_is_believed() {
        // 100 Mbit/s over 20 ms, then 45 ms: the tunnel's own data draining
        // through the bottleneck (a 100 Mbit/s token bucket with 25 ms of
        // queue, as measured), or a longer path.
        let rate = 12_500_000;
        let bdp = rate * 20 / 1000;
        let base = Duration::from_millis(20);
        let raised = Duration::from_millis(45);
        let mut now = Instant::now();
        let mut cc = TunnelCc::new(TunnelCcConfig::default(), now, 1400);
        acks(&mut cc, &mut now, 1000, (rate, false), base);
        let before = cc.window();
        acks(&mut cc, &mut now, 300, (rate, false), raised);
        assert_eq!(cc.base_rtt(), Some(base), "a queue taken for a longer path");
        assert!(cc.window() <= bdp, "window {} while looking", cc.window());
        // At one BDP in flight the RTT falls back: it was a queue, and the
        // window is what it was.
        acks(&mut cc, &mut now, 1, (rate, false), base);
        assert_eq!(cc.base_rtt(), Some(base));
        assert_eq!(cc.window(), before);
        // A rise that stays while the window is down is a longer path.
        acks(&mut cc, &mut now, 600, (rate, false), raised);
        assert_eq!(cc.base_rtt(), Some(raised));
    }

    #[test]
    fn keepalives_after_a_burst_do_not_move_the_base_rtt() {
        // quinn delays the ACK of a lone packet by up to 25 ms: an idle
        // tunnel's keepalives come back late, and say nothing of the path.
        let rate = 12_500_000;
        let base = Duration::from_millis(20);
        let mut now = Instant::now();
        let mut cc = TunnelCc::new(TunnelCcConfig::default(), now, 1400);
        acks(&mut cc, &mut now, 1000, (rate, false), base);
        for _ in 0..5 {
            now += Duration::from_secs(1);
            cc.on_ack_sample(now, 60, true, base + Duration::from_millis(25));
            cc.on_end_acks(now, 0, true, None);
        }
        assert_eq!(cc.base_rtt(), Some(base));
    }

    #[test]
    fn a_path_whose_rtt_rises_by_less_than_the_queue_can_explain_gets_its_rate_back() {
        // 20 to 45 ms with the window full: the in-flight bytes explain the
        // rise as well as a queue would, so only its lasting tells.
        let rate = 125_000_000;
        let new_rtt = Duration::from_millis(45);
        let (cc, goodput) = rerouted(rate, Duration::from_millis(20), new_rtt, 120_000);
        assert_eq!(cc.base_rtt(), Some(new_rtt));
        assert!(goodput > rate * 9 / 10, "goodput {goodput} of {rate}");
    }

    #[test]
    fn the_tunnels_own_queue_is_not_taken_for_a_longer_path() {
        let rtt = Duration::from_millis(5);
        let (cc, _, max_queue) = Path {
            steps: 100_000,
            ..Path::new(125_000_000, rtt)
        }
        .run();
        assert!(max_queue > 0, "no standing queue: the test shows nothing");
        assert!(
            cc.base_rtt().is_some_and(|r| r < rtt * 3 / 2),
            "base RTT {:?}",
            cc.base_rtt()
        );
    }

    #[test]
    fn a_connection_idle_since_set_up_starts_from_the_initial_window() {
        // Keepalives alone end start-up (the bandwidth they show stops
        // growing); the first burst after them must not start from 4 packets.
        let mut now = Instant::now();
        let mut cc = TunnelCc::new(TunnelCcConfig::default(), now, 1400);
        let keepalives = (20_000, true);
        let rtt = Duration::from_millis(20);
        acks(&mut cc, &mut now, 500, keepalives, rtt);
        assert!(!cc.in_startup(), "keepalives did not end start-up");
        assert!(
            cc.window() >= TunnelCcConfig::default().initial_window,
            "window {}",
            cc.window()
        );
    }

    /// What a run at `rate` over `rtt` should end with: 90 % of the rate, a
    /// window of at most 3 BDPs and a queue of at most 2, and the real base.
    fn assert_near_the_model(
        cc: &TunnelCc,
        goodput: u64,
        max_queue: u64,
        rate: u64,
        rtt: Duration,
    ) {
        assert!(goodput > rate * 9 / 10, "goodput {goodput} of {rate}");
        let bdp = bytes_in(rate, rtt);
        assert!(
            cc.window() <= 3 * bdp,
            "window {} vs BDP {bdp}",
            cc.window()
        );
        assert!(max_queue * 1400 <= 2 * bdp, "queue {max_queue} packets");
        assert!(
            cc.base_rtt().is_some_and(|r| r < rtt * 3 / 2),
            "base RTT {:?}",
            cc.base_rtt()
        );
    }

    #[test]
    fn a_slow_path_keeps_no_standing_queue_of_the_initial_window() {
        // 5 Mbit/s over 20 ms: a BDP of 12.5 KB. Held at the 64 KiB initial
        // window the RTT would stand at 125 ms, be taken in time for the
        // path's, and the window would grow with it.
        let rate = 625_000;
        let rtt = Duration::from_millis(20);
        let (cc, goodput, max_queue) = Path {
            steps: 200_000,
            ..Path::new(rate, rtt)
        }
        .run();
        assert_near_the_model(&cc, goodput, max_queue, rate, rtt);
    }

    #[test]
    fn a_sub_millisecond_path_keeps_its_base_rtt_under_its_own_queue() {
        // The window is sized for at least 2 ms, so on a 0.1 ms path its
        // queue raises the RTT some twenty times: still not a longer path.
        let rtt = Duration::from_micros(100);
        let (cc, goodput, _) = Path {
            steps: 100_000,
            ..Path::new(500_000_000, rtt)
        }
        .run();
        assert!(goodput > 450_000_000, "goodput {goodput}");
        assert!(
            cc.base_rtt().is_some_and(|r| r < Duration::from_millis(1)),
            "base RTT {:?}",
            cc.base_rtt()
        );
        assert!(cc.window() <= 3_000_000, "window {}", cc.window());
    }

    #[test]
    fn a_path_whose_rate_halves_keeps_its_base_rtt_and_no_lasting_queue() {
        // 100 Mbit/s, then 50, over 20 ms with a deep buffer: the window
        // sized for the old rate fills the buffer until that rate expires,
        // and the RTT it raises is the tunnel's queue, not a longer path.
        let rtt = Duration::from_millis(20);
        let new_rate = 6_250_000;
        let (cc, goodput, max_queue) = Path {
            rate_change: Some((Duration::from_secs(1), new_rate)),
            steps: 160_000,
            ..Path::new(12_500_000, rtt)
        }
        .run();
        assert_near_the_model(&cc, goodput, max_queue, new_rate, rtt);
    }

    #[test]
    fn a_bottleneck_queue_never_ratchets_the_base_rtt_up() {
        // 100 Mbit/s over 20 ms, driven flat out for 10 s: the tunnel's own
        // queue raises the RTT up to twice the base, again and again.
        let rate = 12_500_000;
        let rtt = Duration::from_millis(20);
        let (cc, goodput, max_queue) = Path {
            paced: true,
            steps: 200_000,
            ..Path::new(rate, rtt)
        }
        .run();
        assert_near_the_model(&cc, goodput, max_queue, rate, rtt);
    }

    #[test]
    fn a_flow_after_an_idle_spell_starts_at_the_rate_the_path_had() {
        // 200 Mbit/s over 20 ms for a second, then two seconds of
        // keepalives: the next burst may go at the old rate at once.
        let rate = 25_000_000;
        let rtt = Duration::from_millis(20);
        let bdp = rate * 20 / 1000;
        let mut now = Instant::now();
        let mut cc = TunnelCc::new(TunnelCcConfig::default(), now, 1400);
        acks(&mut cc, &mut now, 1000, (rate, false), rtt);
        assert!(cc.window() >= 2 * bdp * 9 / 10, "window {}", cc.window());
        for _ in 0..2 {
            now += Duration::from_secs(1);
            cc.on_ack_sample(now, 60, true, rtt);
            cc.on_end_acks(now, 0, true, None);
        }
        acks(&mut cc, &mut now, 5, (rate, true), rtt);
        assert!(
            cc.bandwidth() >= rate * 9 / 10,
            "bandwidth {}",
            cc.bandwidth()
        );
        assert!(cc.window() >= 2 * bdp * 9 / 10, "window {}", cc.window());
    }

    #[test]
    fn acks_that_deliver_nothing_do_not_end_start_up() {
        // ACKs of ACK-only packets acknowledge no bytes.
        let start = Instant::now();
        let mut cc = TunnelCc::new(TunnelCcConfig::default(), start, 1400);
        for i in 1..=10 {
            cc.on_end_acks(start + Duration::from_millis(10 * i), 0, false, None);
        }
        assert!(cc.in_startup());
        assert_eq!(cc.bandwidth(), 0);
    }

    #[test]
    fn persistent_congestion_restarts_measurement() {
        let now = Instant::now();
        let mut cc = TunnelCc::new(TunnelCcConfig::default(), now, 1400);
        cc.window = 1 << 20;
        cc.full_bw = true;
        cc.on_congestion_event(now, now, false, 1400);
        assert_eq!(
            cc.window(),
            1 << 20,
            "a single loss must not shrink the window"
        );
        cc.on_congestion_event(now, now, true, 1400);
        assert_eq!(cc.window(), 4 * 1400);
        assert!(cc.in_startup());
    }
}
