//! The middleware's clock: chosen once per layer, read twice per request.

use std::time::Instant;

/// Where the kernel names the clocksource it trusts.
const KERNEL_CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// The clock that times requests, chosen with
/// [`HttpMetricsBuilder::clock`](super::HttpMetricsBuilder::clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatencyClock {
    /// [`Tsc`](Self::Tsc) where the kernel's clocksource is `tsc` (read from
    /// `/sys/devices/system/clocksource/clocksource0/current_clocksource`),
    /// [`Monotonic`](Self::Monotonic) otherwise: on a virtual machine whose
    /// TSC the kernel does not trust, neither should the middleware.
    #[default]
    Auto,
    /// quanta's calibrated TSC reader: two reads cost less than half of two
    /// `Instant::now()` calls on the benchmark machine. quanta itself falls
    /// back to the monotonic clock on a CPU without an invariant TSC.
    Tsc,
    /// The standard monotonic clock, [`std::time::Instant`].
    Monotonic,
}

/// The chosen clock, in raw readings: ticks for the TSC, nanoseconds since
/// the clock was made for the monotonic clock.
#[derive(Debug, Clone)]
pub(crate) struct RawClock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// quanta reads the TSC: read it here with one inline `rdtsc` (quanta's
    /// `Clock::raw` is a call and a match per read, not inlined across
    /// crates) and leave the scaling to quanta, whose readings these are.
    InlineTsc(quanta::Clock),
    /// quanta reads something else (its monotonic fallback, or another
    /// architecture's counter).
    Quanta(quanta::Clock),
    /// `Instant`, as nanoseconds since `base`.
    Monotonic(Instant),
    /// Readings set by the test (nanoseconds).
    #[cfg(test)]
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl RawClock {
    /// The clock `choice` asks for, and why it was picked.
    pub(crate) fn choose(choice: LatencyClock) -> (Self, &'static str) {
        match choice {
            LatencyClock::Tsc => (Self::tsc(), "requested"),
            LatencyClock::Monotonic => (Self::monotonic(), "requested"),
            LatencyClock::Auto => match std::fs::read_to_string(KERNEL_CLOCKSOURCE) {
                Ok(source) if source.trim() == "tsc" => (Self::tsc(), "kernel clocksource is tsc"),
                Ok(_) => (Self::monotonic(), "kernel clocksource is not tsc"),
                Err(_) => (Self::monotonic(), "kernel clocksource unknown"),
            },
        }
    }

    /// quanta's clock, calibrated once per process.
    pub(crate) fn tsc() -> Self {
        let clock = quanta::Clock::new();
        let source = if reads_tsc(&clock) {
            Source::InlineTsc(clock)
        } else {
            Source::Quanta(clock)
        };
        Self { source }
    }

    /// `std::time::Instant`.
    pub(crate) fn monotonic() -> Self {
        Self {
            source: Source::Monotonic(Instant::now()),
        }
    }

    /// A clock that reads what the test stores (nanoseconds).
    #[cfg(test)]
    pub(crate) fn manual(now: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            source: Source::Manual(now),
        }
    }

    /// What the clock reads, for the start-up log.
    pub(crate) fn name(&self) -> &'static str {
        match self.source {
            Source::InlineTsc(_) => "tsc",
            Source::Quanta(_) => "quanta (no invariant TSC: monotonic)",
            Source::Monotonic(_) => "monotonic",
            #[cfg(test)]
            Source::Manual(_) => "manual",
        }
    }

    /// A raw reading; see [`delta_as_nanos`](Self::delta_as_nanos).
    #[inline(always)]
    pub(crate) fn raw(&self) -> u64 {
        match &self.source {
            #[cfg(target_arch = "x86_64")]
            Source::InlineTsc(_) => tsc(),
            #[cfg(not(target_arch = "x86_64"))]
            Source::InlineTsc(clock) => clock.raw(),
            Source::Quanta(clock) => clock.raw(),
            // Truncation: u64 nanoseconds last 584 years.
            Source::Monotonic(base) => base.elapsed().as_nanos() as u64,
            #[cfg(test)]
            Source::Manual(now) => now.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Nanoseconds between two raw readings (0 if `end` is not later).
    #[inline(always)]
    pub(crate) fn delta_as_nanos(&self, start: u64, end: u64) -> u64 {
        match &self.source {
            Source::InlineTsc(clock) | Source::Quanta(clock) => clock.delta_as_nanos(start, end),
            Source::Monotonic(_) => end.saturating_sub(start),
            #[cfg(test)]
            Source::Manual(_) => end.saturating_sub(start),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn tsc() -> u64 {
    // SAFETY: `rdtsc` is available on every x86_64 CPU and has no
    // preconditions; quanta reads the counter the same way.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether quanta's raw readings are TSC readings: a quanta reading taken
/// between two TSC readings falls between them only if it is one (its
/// fallback, monotonic nanoseconds, runs at a different rate).
#[cfg(target_arch = "x86_64")]
fn reads_tsc(clock: &quanta::Clock) -> bool {
    (0..3).all(|_| {
        let before = tsc();
        let reading = clock.raw();
        let after = tsc();
        before <= reading && reading <= after
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn reads_tsc(_: &quanta::Clock) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether the CPU says its TSC is invariant and has `rdtscp`: what
    /// quanta requires before it reads the TSC (asked here independently
    /// of quanta, with CPUID).
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code, unused_unsafe)]
    fn cpu_has_invariant_tsc() -> bool {
        use core::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU; leaves above the
        // maximum extended leaf are not asked.
        let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
        max_extended >= 0x8000_0007
            && unsafe { __cpuid(0x8000_0007) }.edx & (1 << 8) != 0
            && unsafe { __cpuid(0x8000_0001) }.edx & (1 << 27) != 0
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn cpu_has_invariant_tsc() -> bool {
        false
    }

    /// Checks that `clock` measures a sleep within what `Instant` measured
    /// around it (scaled readings may round; 1 % is far above quanta's
    /// calibration error and far below any wrong rate).
    fn measures_a_sleep_like_instant(clock: &RawClock) {
        let outer_start = Instant::now();
        let start = clock.raw();
        std::thread::sleep(Duration::from_millis(10));
        let end = clock.raw();
        let outer = outer_start.elapsed().as_nanos() as u64;
        let nanos = clock.delta_as_nanos(start, end);
        assert!(nanos >= 9_900_000, "{} measured {nanos} ns", clock.name());
        assert!(
            nanos <= outer + outer / 100,
            "{} measured {nanos} ns inside {outer} ns",
            clock.name()
        );
    }

    #[test]
    fn inline_tsc_and_quanta_readings_agree() {
        if !cpu_has_invariant_tsc() {
            println!("skipped: this CPU reports no invariant TSC, quanta reads no TSC here");
            return;
        }
        let clock = RawClock::tsc();
        let Source::InlineTsc(quanta) = &clock.source else {
            panic!("invariant TSC, yet quanta's readings are not TSC readings");
        };
        for _ in 0..1000 {
            let a = clock.raw();
            let q = quanta.raw();
            let b = clock.raw();
            assert!(a <= q && q <= b, "{a} <= {q} <= {b}");
        }
        measures_a_sleep_like_instant(&clock);
    }

    #[test]
    fn monotonic_clock_reads_instant() {
        let clock = RawClock::monotonic();
        assert!(matches!(clock.source, Source::Monotonic(_)));
        let a = clock.raw();
        let b = clock.raw();
        assert!(a <= b);
        // Nanoseconds: the delta is the difference itself.
        assert_eq!(clock.delta_as_nanos(1_000, 4_500), 3_500);
        assert_eq!(clock.delta_as_nanos(4_500, 1_000), 0);
        measures_a_sleep_like_instant(&clock);
    }

    #[test]
    fn requested_clocks_are_the_ones_chosen() {
        let (clock, _) = RawClock::choose(LatencyClock::Monotonic);
        assert_eq!(clock.name(), "monotonic");
        let (clock, _) = RawClock::choose(LatencyClock::Tsc);
        let expected = if cpu_has_invariant_tsc() {
            "tsc"
        } else {
            "quanta (no invariant TSC: monotonic)"
        };
        assert_eq!(clock.name(), expected);
    }

    #[test]
    fn auto_follows_the_kernel_clocksource() {
        let (clock, _) = RawClock::choose(LatencyClock::Auto);
        let kernel = std::fs::read_to_string(KERNEL_CLOCKSOURCE).ok();
        match kernel.as_deref().map(str::trim) {
            Some("tsc") => assert_ne!(clock.name(), "monotonic"),
            _ => assert_eq!(clock.name(), "monotonic"),
        }
    }
}
