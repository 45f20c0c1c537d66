//! Chunk compression: each chunk is one independent zstd frame, kept only when it shrinks the
//! chunk by at least [`MIN_SAVING_PERCENT`]; otherwise the chunk travels raw.
//!
//! Incompressible data (media, archives, encrypted volumes) is common in volumes. After
//! [`GIVE_UP_AFTER`] incompressible chunks in a row a [`Compressor`] stops trying and only
//! re-probes every [`REPROBE_EVERY`] chunks, so such files cost almost no CPU.

use std::io;

/// A chunk is sent compressed only if that saves at least this share of its size.
pub const MIN_SAVING_PERCENT: usize = 10;
/// Incompressible chunks in a row before the compressor stops trying.
pub const GIVE_UP_AFTER: u32 = 4;
/// While given up, try again every this many chunks.
pub const REPROBE_EVERY: u32 = 16;

/// A chunk ready for the wire: the raw input itself when compression did not pay (no copy).
#[derive(Debug)]
pub struct Packed<'a> {
    /// Whether `bytes` is a zstd frame.
    pub compressed: bool,
    /// The bytes to send.
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// Compresses chunks of one stream of data (one file), adapting to what it sees.
pub struct Compressor {
    inner: zstd::bulk::Compressor<'static>,
    level: i32,
    misses: u32,
    skipped: u32,
}

impl Compressor {
    /// A compressor at zstd `level`; level 0 disables compression.
    pub fn new(level: i32) -> io::Result<Self> {
        Ok(Compressor { inner: zstd::bulk::Compressor::new(level.max(1))?, level, misses: 0, skipped: 0 })
    }

    /// Changes the level (0 disables compression) for the next chunks.
    pub fn set_level(&mut self, level: i32) -> io::Result<()> {
        if level != self.level && level > 0 {
            self.inner.set_compression_level(level)?;
        }
        self.level = level;
        Ok(())
    }

    /// Starts a new file: forget what the previous file's data looked like.
    pub fn reset(&mut self) {
        self.misses = 0;
        self.skipped = 0;
    }

    /// Packs one chunk.
    pub fn pack<'a>(&mut self, raw: &'a [u8]) -> io::Result<Packed<'a>> {
        if self.level == 0 {
            return Ok(Packed { compressed: false, bytes: raw.into() });
        }
        if self.misses >= GIVE_UP_AFTER {
            self.skipped += 1;
            if self.skipped < REPROBE_EVERY {
                return Ok(Packed { compressed: false, bytes: raw.into() });
            }
            self.skipped = 0;
        }
        let compressed = self.inner.compress(raw)?;
        if compressed.len() * 100 <= raw.len() * (100 - MIN_SAVING_PERCENT) {
            self.misses = 0;
            Ok(Packed { compressed: true, bytes: compressed.into() })
        } else {
            self.misses += 1;
            Ok(Packed { compressed: false, bytes: raw.into() })
        }
    }
}

/// Highest zstd level a peer may ask for: past 19 ("ultra" levels) zstd needs far more memory.
pub const MAX_LEVEL: i32 = 19;

/// A level asked for by the session's options (which a peer chose), kept within 0..=[`MAX_LEVEL`].
#[must_use]
pub fn capped_level(level: i32) -> i32 {
    level.clamp(0, MAX_LEVEL)
}

/// Picks the zstd level from the throughput it gets.
///
/// Whether compression pays depends on what limits the transfer: on a slow link every byte
/// saved is time saved, on a fast local link (or when the receiver's CPU is the limit) it only
/// costs time. So the control measures what matters, content bytes delivered per second, over
/// periods of [`LevelControl::PERIOD`], and climbs: it moves the level one step at a time and
/// turns around when a step made things worse. It starts at level 1, tries no compression
/// first, and settles where throughput is best, re-probing the neighbour now and then. (Starting
/// uncompressed saved a fifth of a second on loopback but sent the first burst, what the socket
/// buffers take in, raw: 20 MiB more and 1.6 s longer over 100 Mbit/s.)
///
/// Throughput from one period to the next varies more with what is being sent (text, random
/// data, holes) than with the level, so the climb alone can wander upwards on a fast link and
/// spend the CPU the copy needs. Two bounds come from the link rate itself: a link seen
/// carrying [`LevelControl::FAST_LINK`] (beyond what buffers may have taken in,
/// [`LevelControl::BURST_PER_LANE`]) is not what limits the copy, so nothing is compressed for
/// the rest of the session while it stays above [`LevelControl::SLOW_LINK`]; a link slower than
/// that is the limit, so the level stays at least 3 (exactly 1 on a link once seen fast).
///
/// A low wire rate alone does not show a slow link: a sender busy with many small files (or
/// waiting for the receiver's verdicts) hands the link little whatever the link could carry.
/// The link is the limit only when it pushes back: the connections kept the writers waiting
/// (a full socket, or the bandwidth limit) for at least [`LevelControl::PUSHBACK`] of a period,
/// summed over the connections. A period without that sends raw: compressing cannot make a
/// copy faster that the link does not hold back.
/// (Files of 1-8 KiB over loopback: the climb, floored at 3 by the wire rate, reached levels 5
/// and 6 and spent about 80 µs of the source's CPU per file on random content; see
/// docs/benchmarks.md, case s.)
#[derive(Debug, Clone)]
pub struct LevelControl {
    level: i32,
    direction: i32,
    /// Whether the period that just ended ran at another level than the one before it.
    moved: bool,
    last_rate: f64,
    period_start: std::time::Instant,
    period_bytes: u64,
    period_wire_start: u64,
    /// The time the link held the writers back, in nanoseconds, when the period started.
    period_waited_start: u64,
    /// The link was seen carrying [`LevelControl::FAST_LINK`].
    fast_link: bool,
    /// What buffers may take in faster than the link ([`Self::BURST_PER_LANE`] per connection).
    burst: f64,
    /// Wire bytes and seconds of the periods decided so far.
    wire_seen: f64,
    seconds: f64,
}

impl LevelControl {
    /// Highest level the control climbs to (past this zstd costs far more CPU for little gain
    /// on volume data).
    pub const MAX: i32 = 6;
    /// Wire rate (bytes per second) below which the link is taken as the bottleneck.
    pub const SLOW_LINK: f64 = 64.0 * 1024.0 * 1024.0;
    /// Wire rate (bytes per second) at which compressing costs more than the bytes it saves
    /// take on the link: zstd 1 compresses this machine's mixed tree at about 500 MB/s on one
    /// core, and loopback or a fast LAN carries 250 MB/s and more. Measured on the benchmark
    /// tree over loopback (3 runs each): 2.61-2.79 s and 2.1 CPU-seconds at the source
    /// uncompressed, against 3.65-3.85 s and 4.1 s at level 1. On a migration the nodes run
    /// applications too: CPU spent for nothing is taken from them.
    pub const FAST_LINK: f64 = 256.0 * 1024.0 * 1024.0;
    /// Bytes per connection that may leave faster than the link carries them: taken in by the
    /// sending socket buffer (up to 4 MiB on Linux by default, more on tuned hosts) or a proxy.
    /// A link counts as fast once it carried [`Self::FAST_LINK`] beyond this (times the
    /// session's connections), over the session so far or within one period. On loopback that
    /// is seen by the second period; a time-based grace (the first second) instead let the
    /// climb compress a third of a loopback copy for nothing.
    pub const BURST_PER_LANE: f64 = 16.0 * 1024.0 * 1024.0;
    /// Length of one measurement period.
    pub const PERIOD: std::time::Duration = std::time::Duration::from_millis(200);
    /// Share of a period the connections must have kept the writers waiting (summed over the
    /// connections) for the link to count as what limits the copy.
    pub const PUSHBACK: f64 = 0.25;

    /// For a session of 4 connections (the default `--streams`).
    #[must_use]
    pub fn new() -> Self {
        Self::for_lanes(4)
    }

    /// Starts at level 1, about to try level 0, for a session of `lanes` connections.
    #[must_use]
    pub fn for_lanes(lanes: u32) -> Self {
        LevelControl {
            burst: Self::BURST_PER_LANE * f64::from(lanes.max(1)),
            level: 1,
            direction: -1,
            moved: true,
            last_rate: 0.0,
            period_start: std::time::Instant::now(),
            period_bytes: 0,
            period_wire_start: 0,
            period_waited_start: 0,
            fast_link: false,
            wire_seen: 0.0,
            seconds: 0.0,
        }
    }

    /// The current level (0 = off).
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    #[must_use]
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Records `bytes` of content handed to the link, with the link's byte counter
    /// (`wire_total`, after compression) and the time the link held the writers back so far
    /// (`waited_ns_total`, in nanoseconds); returns the level to use from now on.
    pub fn observe(&mut self, bytes: usize, wire_total: u64, waited_ns_total: u64) -> i32 {
        self.period_bytes += bytes as u64;
        let elapsed = self.period_start.elapsed();
        if elapsed >= Self::PERIOD {
            let seconds = elapsed.as_secs_f64();
            let wire_bytes = wire_total.saturating_sub(self.period_wire_start) as f64;
            let waited = waited_ns_total.saturating_sub(self.period_waited_start) as f64 / 1e9;
            let pushed_back = waited >= seconds * Self::PUSHBACK;
            self.step(self.period_bytes as f64 / seconds, (wire_bytes, pushed_back), seconds);
            self.period_start = std::time::Instant::now();
            self.period_bytes = 0;
            self.period_wire_start = wire_total;
            self.period_waited_start = waited_ns_total;
        }
        self.level
    }

    /// One decision, given the content throughput, the wire bytes, whether the link pushed
    /// back, and the length of the period that ended.
    fn step(&mut self, rate: f64, (wire_bytes, pushed_back): (f64, bool), seconds: f64) {
        let wire_rate = wire_bytes / seconds;
        self.wire_seen += wire_bytes;
        self.seconds += seconds;
        // What buffers took in faster than the link is bounded, not the time it took.
        let carried = |bytes: f64, seconds: f64| (bytes - self.burst) / seconds >= Self::FAST_LINK;
        self.fast_link |= carried(self.wire_seen, self.seconds) || carried(wire_bytes, seconds);
        // A link seen fast that turns slow (shared later, or a buffering proxy misled us):
        // level 1, which compresses text about as well as 3, rather than nothing.
        let ceiling = match (self.fast_link, wire_rate < Self::SLOW_LINK) {
            _ if !pushed_back => 0,
            (false, _) => Self::MAX,
            (true, true) => 1,
            (true, false) => 0,
        };
        // A link this slow is the limit whatever we do: never send less compressed than
        // `rsync -z` would (zstd 3); the climb decides whether more pays.
        let floor = match (wire_rate < Self::SLOW_LINK, self.fast_link) {
            _ if !pushed_back => 0,
            (true, false) => 3,
            (true, true) => 1,
            (false, _) => 0,
        };
        // A step that lowered throughput is undone. Held at an end of the range, the level did
        // not move and only a clear drop is worth probing the neighbour again.
        let tolerance = if self.moved { 0.97 } else { 0.85 };
        if rate < self.last_rate * tolerance {
            self.direction = -self.direction;
        }
        self.last_rate = rate;
        if floor > 0 && self.level + self.direction < floor {
            // Lifted by the floor: keep exploring upwards from there.
            self.direction = 1;
        }
        let next = (self.level + self.direction).clamp(floor, ceiling);
        self.moved = next != self.level;
        self.level = next;
    }
}

impl Default for LevelControl {
    fn default() -> Self {
        Self::new()
    }
}

/// Decompresses chunks, refusing any that expand past their declared size.
pub struct Decompressor {
    inner: zstd::bulk::Decompressor<'static>,
}

impl Decompressor {
    /// A decompressor whose window is limited to what one chunk can need.
    pub fn new() -> io::Result<Self> {
        let mut inner = zstd::bulk::Decompressor::new()?;
        // A chunk is at most 1 MiB, so no honest frame needs a window over 2^20; this caps what
        // a hostile frame can make us allocate.
        inner.window_log_max(20)?;
        Ok(Decompressor { inner })
    }

    /// Unpacks `bytes` into `out`, which must end up exactly `raw_len` bytes long.
    pub fn unpack(&mut self, compressed: bool, bytes: &[u8], raw_len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        if !compressed {
            if bytes.len() != raw_len {
                return Err(io::Error::other("raw chunk length differs from its declared length"));
            }
            out.extend_from_slice(bytes);
            return Ok(());
        }
        out.reserve(raw_len);
        let n = self
            .inner
            .decompress_to_buffer(bytes, out)
            .map_err(|error| io::Error::other(format!("bad zstd chunk: {error}")))?;
        if n != raw_len {
            return Err(io::Error::other("compressed chunk expands to another length than declared"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn peer_levels_are_capped() {
        assert_eq!(capped_level(22), MAX_LEVEL);
        assert_eq!(capped_level(i32::MAX), MAX_LEVEL);
        assert_eq!(capped_level(-5), 0);
        assert_eq!(capped_level(3), 3);
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..70_000), repeat in 1usize..20) {
            let raw: Vec<u8> = data.iter().copied().cycle().take(data.len() * repeat).collect();
            let mut compressor = Compressor::new(1).unwrap();
            let packed = compressor.pack(&raw).unwrap();
            let mut out = Vec::new();
            Decompressor::new().unwrap().unpack(packed.compressed, &packed.bytes, raw.len(), &mut out).unwrap();
            prop_assert_eq!(out, raw);
        }
    }

    #[test]
    fn incompressible_goes_raw_and_text_compresses() {
        let mut compressor = Compressor::new(1).unwrap();
        let random: Vec<u8> = (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(1000);
        assert!(compressor.pack(&text).unwrap().compressed);
        let random_packed = blake3::Hasher::new().update(&random).finalize_xof();
        let mut noise = vec![0u8; 65_536];
        let mut reader = random_packed;
        reader.fill(&mut noise);
        assert!(!compressor.pack(&noise).unwrap().compressed);
    }

    /// Runs the control against a model of content throughput and wire rate by level, over
    /// periods of [`LevelControl::PERIOD`]; returns the levels visited.
    /// The link pushes back in every period (it, or the receiver behind it, is the limit).
    fn settle(throughput: impl Fn(i32) -> (f64, f64)) -> Vec<i32> {
        settle_pushed(|level| {
            let (rate, wire) = throughput(level);
            (rate, wire, true)
        })
    }

    /// [`settle`], the model also saying whether the link pushed back in each period.
    fn settle_pushed(throughput: impl Fn(i32) -> (f64, f64, bool)) -> Vec<i32> {
        let mut control = LevelControl::new();
        let seconds = LevelControl::PERIOD.as_secs_f64();
        (0..60)
            .map(|_| {
                let (rate, wire, pushed_back) = throughput(control.level());
                control.step(rate, (wire * seconds, pushed_back), seconds);
                control.level()
            })
            .collect()
    }

    #[test]
    fn a_link_that_never_pushes_back_is_not_compressed() {
        // Many small files: 25 MB/s on the wire, far below a slow link's rate, and measurements
        // (noise) that favour higher levels; the link never holds the writers back.
        let levels = settle_pushed(|level| (25e6 * (1.0 + 0.05 * f64::from(level)), 25e6, false));
        assert!(levels.iter().all(|&l| l == 0), "{levels:?}");
    }

    #[test]
    fn a_slow_link_that_starts_pushing_back_is_compressed() {
        // 100 Mbit/s: the first periods fill the buffers without waiting, then the link holds
        // the senders back.
        let period = std::cell::Cell::new(0u32);
        let levels = settle_pushed(|level| {
            period.set(period.get() + 1);
            (12.5e6 * (1.0 + 0.08 * f64::from(level)), 12.5e6, period.get() > 2)
        });
        assert!(levels[..2].iter().all(|&l| l == 0), "{levels:?}");
        assert!(levels[2..].iter().all(|&l| l >= 3), "{levels:?}");
        assert!(levels[20..].iter().all(|&l| l >= LevelControl::MAX - 1), "{levels:?}");
    }

    #[test]
    fn an_observed_wait_counts_as_pushback() {
        let mut control = LevelControl::new();
        let period_ns = u64::try_from(LevelControl::PERIOD.as_nanos()).unwrap();
        let mut waited = 0;
        for _ in 0..3 {
            control.period_start -= LevelControl::PERIOD;
            // The writers were held back all period: a slow link.
            waited += period_ns;
            control.observe(1 << 20, 0, waited);
        }
        assert!(control.level() >= 3, "{}", control.level());
        control.period_start -= LevelControl::PERIOD;
        // A tenth of the period: not the link's doing.
        control.observe(1 << 20, 0, waited + period_ns / 10);
        assert_eq!(control.level(), 0);
    }

    #[test]
    fn a_fast_link_settles_without_compression() {
        // CPU-bound: every level costs throughput.
        let levels = settle(|level| (2e9 / (1.0 + f64::from(level)), 2e9 / (1.0 + f64::from(level)) / 2.0));
        assert!(levels[10..].iter().filter(|&&l| l == 0).count() >= 45, "{levels:?}");
    }

    #[test]
    fn a_slow_link_climbs_to_high_levels() {
        // Link-bound: each level saves a few more bytes.
        let levels = settle(|level| (12.5e6 * (1.0 + 0.08 * f64::from(level)), 12.5e6));
        assert!(levels[20..].iter().all(|&l| l >= LevelControl::MAX - 1), "{levels:?}");
    }

    #[test]
    fn a_slow_link_never_goes_below_level_3() {
        // Even when measurements say lower levels are as good (noise), the floor holds.
        let levels = settle(|_| (12.5e6, 12.5e6));
        assert!(levels[2..].iter().all(|&l| l >= 3), "{levels:?}");
    }

    #[test]
    fn a_link_once_seen_fast_is_not_compressed() {
        // Measurements that favour higher levels, while every other period (random data, sent
        // raw at any level) shows a link carrying 500 MB/s.
        let period = std::cell::Cell::new(0u32);
        let alternating = |level: i32| {
            period.set(period.get() + 1);
            (4e8 * (1.0 + 0.1 * f64::from(level)), if period.get().is_multiple_of(2) { 5e8 } else { 1e8 })
        };
        let levels = settle(alternating);
        // 300 MB/s on average: past the burst allowance after 11 periods.
        assert!(levels[11..].iter().all(|&l| l == 0), "{levels:?}");
        // The same measurements on a link never seen that fast: the climb goes up.
        let levels = settle(|level| (4e8 * (1.0 + 0.1 * f64::from(level)), 1e8));
        assert!(levels[20..].iter().all(|&l| l >= LevelControl::MAX - 1), "{levels:?}");
        // A burst into buffers at the start, as much as they may take in, then 100 Mbit/s: not
        // taken for a fast link.
        let period = std::cell::Cell::new(0u32);
        let burst = |level: i32| {
            period.set(period.get() + 1);
            let first = 4.0 * LevelControl::BURST_PER_LANE / LevelControl::PERIOD.as_secs_f64();
            (12.5e6 * (1.0 + 0.08 * f64::from(level)), if period.get() == 1 { first + 12.5e6 } else { 12.5e6 })
        };
        let levels = settle(burst);
        assert!(levels[20..].iter().all(|&l| l >= LevelControl::MAX - 1), "{levels:?}");
    }

    #[test]
    fn loopback_is_seen_fast_within_two_periods() {
        // What a loopback copy showed (content and wire rates of its first periods, MiB/s):
        // the data compresses, so the wire rate drops with every level.
        let mib = 1024.0 * 1024.0;
        // Measurements favour higher levels a little (noise): the climb alone would go up.
        let levels =
            settle(|level| (800.0 * mib * (1.0 + 0.05 * f64::from(level)), 800.0 * mib / (1.0 + f64::from(level))));
        assert!(levels.iter().all(|&l| l == 0), "{levels:?}");
    }

    #[test]
    fn a_link_seen_fast_that_turns_slow_still_compresses() {
        let period = std::cell::Cell::new(0u32);
        let levels = settle(|level| {
            period.set(period.get() + 1);
            // Fast for two seconds, then 100 Mbit/s with measurements (noise) that favour lower
            // levels: without the floor the climb ends at no compression.
            if period.get() <= 10 { (5e8, 5e8) } else { (12.5e6 * (1.0 - 0.05 * f64::from(level)), 12.5e6) }
        });
        assert!(levels[12..].iter().all(|&l| l == 1), "{levels:?}");
    }

    #[test]
    fn a_middle_optimum_is_found() {
        let levels = settle(|level| (1e9 - f64::from((level - 3) * (level - 3)) * 5e7, 2e8));
        assert!(levels[20..].iter().all(|&l| (2..=4).contains(&l)), "{levels:?}");
    }

    #[test]
    fn level_zero_sends_raw() {
        let mut compressor = Compressor::new(1).unwrap();
        compressor.set_level(0).unwrap();
        assert!(!compressor.pack(&[b'a'; 10_000]).unwrap().compressed);
        compressor.set_level(3).unwrap();
        assert!(compressor.pack(&[b'a'; 10_000]).unwrap().compressed);
    }

    #[test]
    fn refuses_expansion_past_declared_size() {
        let text = vec![b'a'; 100_000];
        let frame = zstd::bulk::compress(&text, 1).unwrap();
        let mut out = Vec::new();
        let error = Decompressor::new().unwrap().unpack(true, &frame, 1000, &mut out).unwrap_err();
        assert!(error.to_string().contains("zstd") || error.to_string().contains("length"), "{error}");
        assert!(out.capacity() < 100_000);
    }
}
