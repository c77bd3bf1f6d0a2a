//! Loss hiding over one QUIC connection to another site, for both slaves
//! that carry packets between sites (tunnel and DHT). On the way out each
//! packet is numbered and kept for resending (`transport::arq`); on the way
//! in holes are asked for again and TCP waits in order behind them
//! (`transport::hold`). The state machines live in `transport`; this moves
//! their bytes over a connection and counts what they did.

use crate::packet::{Ipv6Packet, PacketArena};
use crate::transport::arq::{
    self, ArqError, ArqReceiver, ArqSender, Frame, ReceiverConfig, ReceiverStats, Verdict,
};
use crate::transport::hold::{HoldStats, InOrder, PlayoutFlows, Wait};
use crate::transport::{self, RESEND_RESERVE};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Flows the in-order hold tells apart (see `transport::hold::PlayoutFlows`).
const PLAYOUT_FLOWS: usize = 4096;

/// The least RTT NACK retries are timed by: below it, scheduling jitter
/// would ask again for packets already on their way.
const MIN_NACK_RTT: Duration = Duration::from_millis(1);

/// What loss hiding did: holes in what the peer sent, holes filled by a late
/// or resent packet, holes given up (the inner flows see these as losses),
/// packets that came after their hole was filled or given up, packets
/// resent on the peer's request, requests for packets no longer kept,
/// packets that waited in order behind a hole, holes passed over because
/// that wait ran out, and times the hold started delaying every TCP packet
/// (playout, see `transport::hold`).
#[derive(Debug, Default, Serialize)]
pub struct LossCounters {
    pub arq_holes: AtomicU64,
    pub arq_recovered: AtomicU64,
    pub arq_lost: AtomicU64,
    pub arq_duplicates: AtomicU64,
    pub arq_resent: AtomicU64,
    pub arq_expired: AtomicU64,
    pub hold_held: AtomicU64,
    pub hold_passed_over: AtomicU64,
    pub hold_playouts: AtomicU64,
}

impl LossCounters {
    /// (event label, counter) pairs, as the metrics module exports them.
    pub fn events(&self) -> [(&'static str, &AtomicU64); 9] {
        [
            ("hole", &self.arq_holes),
            ("recovered", &self.arq_recovered),
            ("lost", &self.arq_lost),
            ("duplicate", &self.arq_duplicates),
            ("resent", &self.arq_resent),
            ("expired", &self.arq_expired),
            ("held", &self.hold_held),
            ("passed_over", &self.hold_passed_over),
            ("playout", &self.hold_playouts),
        ]
    }
}

fn bump(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A hash of a TCP packet's addresses and ports.
fn flow_key(packet: &Ipv6Packet<&[u8]>) -> u64 {
    let mut key = rustc_hash::FxHasher::default();
    key.write(packet.as_bytes().get(8..40).unwrap_or_default());
    key.write(packet.payload().get(..4).unwrap_or_default());
    key.finish()
}

/// The sending half: numbers packets and resends what the peer asks for.
#[derive(Debug)]
pub struct LinkSender {
    arq: ArqSender,
    resend: Vec<(u32, Bytes)>,
    reported_expired: u64,
}

impl Default for LinkSender {
    fn default() -> Self {
        LinkSender {
            arq: ArqSender::new(Default::default()),
            resend: Vec::new(),
            reported_expired: 0,
        }
    }
}

impl LinkSender {
    /// Sends `packet` numbered, leaving send-buffer room for resends.
    /// `Ok(false)`: the buffer is full and the packet dropped. The number is
    /// taken only if the datagram leaves: a local drop must not become a
    /// hole the peer asks for.
    pub fn send(
        &mut self,
        conn: &quinn::Connection,
        arena: &mut PacketArena,
        packet: &[u8],
        now: Instant,
    ) -> Result<bool, quinn::SendDatagramError> {
        let header = arq::data_header(self.arq.seq());
        let d = arena.copy_parts(&[&header, packet]).freeze();
        let sent = transport::send_datagram_leaving(conn, d.clone(), RESEND_RESERVE)?;
        if sent {
            self.arq.sent(d, now);
        }
        Ok(sent)
    }

    /// Resends what the peer asked for again, if still kept.
    pub fn on_nack(
        &mut self,
        conn: &quinn::Connection,
        ranges: &[(u32, u16)],
        now: Instant,
        counters: &LossCounters,
    ) {
        self.arq.on_nack(ranges, now, &mut self.resend);
        for (_, d) in self.resend.drain(..) {
            if matches!(transport::send_datagram(conn, d), Ok(true)) {
                bump(&counters.arq_resent, 1);
            }
        }
        let expired = self.arq.stats().expired;
        bump(&counters.arq_expired, expired - self.reported_expired);
        self.reported_expired = expired;
    }
}

/// One datagram from the peer, as loss hiding sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A packet numbered `seq`, not received before.
    Data { seq: u32, packet: &'a [u8] },
    /// The peer asks for these again.
    Nack(Vec<(u32, u16)>),
    /// A resend that crossed the original.
    Duplicate,
}

/// The receiving half: notices holes, asks for them, and holds TCP behind
/// them. The caller checks each packet [`LinkReceiver::classify`] finds,
/// hands it to [`LinkReceiver::push`] or [`LinkReceiver::skip`], and calls
/// [`LinkReceiver::flush`] once per batch.
#[derive(Debug)]
pub struct LinkReceiver {
    holes: ArqReceiver,
    in_order: Option<(InOrder<BytesMut>, PlayoutFlows)>,
    arena: PacketArena,
    // TCP gets its own blocks: a held packet keeps its whole 64 KB block
    // alive, and among other traffic each could pin one. Packets held
    // together then share blocks, and held memory stays about what they are.
    tcp_arena: PacketArena,
    reported: (ReceiverStats, HoldStats),
}

impl LinkReceiver {
    /// `in_order`: hold TCP behind holes (see `transport::hold`).
    pub fn new(in_order: bool) -> Self {
        LinkReceiver {
            holes: ArqReceiver::new(ReceiverConfig::default()),
            in_order: in_order.then(|| {
                (
                    InOrder::new(Default::default()),
                    PlayoutFlows::new(PLAYOUT_FLOWS),
                )
            }),
            arena: PacketArena::default(),
            tcp_arena: PacketArena::default(),
            reported: Default::default(),
        }
    }

    /// The round trip holes are timed by.
    pub fn rtt(conn: &quinn::Connection) -> Duration {
        conn.rtt().max(MIN_NACK_RTT)
    }

    /// When [`LinkReceiver::flush`] next has something to do without a datagram.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hold_due = self.in_order.as_ref().and_then(|(h, _)| h.poll_timeout());
        self.holes.poll_timeout().into_iter().chain(hold_due).min()
    }

    /// Parses a datagram; a data packet's number counts as received.
    pub fn classify<'a>(&mut self, datagram: &'a [u8]) -> Result<Incoming<'a>, ArqError> {
        Ok(match Frame::parse(datagram)? {
            Frame::Data { seq, .. } if self.holes.on_data(seq) == Verdict::Duplicate => {
                Incoming::Duplicate
            }
            Frame::Data { seq, packet } => Incoming::Data { seq, packet },
            Frame::Nack(ranges) => Incoming::Nack(ranges),
        })
    }

    /// A checked packet numbered `seq`: into `out` now, or once the holes
    /// before it are filled.
    pub fn push(
        &mut self,
        seq: u32,
        packet: Ipv6Packet<&[u8]>,
        now: Instant,
        rtt: Duration,
        out: &mut Vec<BytesMut>,
    ) {
        let Some((h, flows)) = &mut self.in_order else {
            out.push(self.arena.copy(packet.as_bytes()));
            return;
        };
        // Only TCP waits in order: see `transport::hold`.
        let wait = if packet.is_tcp() {
            let syn = packet.opens_tcp_flow();
            // Which flow began in playout matters only in playout; a SYN
            // outside it still clears its flow's slot.
            let playout = h.playout();
            let steady = (syn || playout) && flows.observe(flow_key(&packet), syn, playout);
            match (packet.carries_tcp_data(), steady) {
                (true, true) => Wait::Always,
                (true, false) => Wait::BehindHoles,
                (false, true) => Wait::InPlayout,
                (false, false) => Wait::Never,
            }
        } else {
            Wait::Never
        };
        let arena = match wait {
            Wait::Never => &mut self.arena,
            _ => &mut self.tcp_arena,
        };
        h.push(seq, arena.copy(packet.as_bytes()), wait, now, rtt, out);
    }

    /// A fresh number whose packet was dropped: nothing waits for it.
    pub fn skip(&mut self, seq: u32, now: Instant, rtt: Duration, out: &mut Vec<BytesMut>) {
        if let Some((h, _)) = &mut self.in_order {
            h.skip(seq, now, rtt, out);
        }
    }

    /// After a batch or a timeout: hands on what waited long enough, asks
    /// for holes, and counts.
    pub fn flush(
        &mut self,
        conn: &quinn::Connection,
        now: Instant,
        rtt: Duration,
        out: &mut Vec<BytesMut>,
        counters: &LossCounters,
    ) {
        if let Some((h, _)) = &mut self.in_order {
            h.poll(now, out);
        }
        for nack in arq::encode_nacks(&self.holes.poll_nack(now, rtt)) {
            let _ = transport::send_datagram(conn, nack);
        }
        let seen = (
            self.holes.stats(),
            self.in_order
                .as_ref()
                .map(|(h, _)| h.stats())
                .unwrap_or_default(),
        );
        let (was, c) = (&self.reported, counters);
        bump(&c.arq_holes, seen.0.holes - was.0.holes);
        bump(&c.arq_recovered, seen.0.recovered - was.0.recovered);
        bump(&c.arq_lost, seen.0.lost - was.0.lost);
        bump(&c.arq_duplicates, seen.0.duplicates - was.0.duplicates);
        bump(&c.hold_held, seen.1.held - was.1.held);
        bump(&c.hold_passed_over, seen.1.passed_over - was.1.passed_over);
        bump(&c.hold_playouts, seen.1.playouts - was.1.playouts);
        self.reported = seen;
    }

    /// The next datagrams from `conn`, or an empty batch when
    /// [`LinkReceiver::flush`] is due; `None` once the connection is gone.
    pub async fn next_batch(&self, conn: &quinn::Connection, max: usize) -> Option<Vec<Bytes>> {
        tokio::select! {
            got = transport::read_datagrams(conn, max) => got.ok(),
            () = transport::sleep_until(self.poll_timeout()) => Some(Vec::new()),
        }
    }
}
