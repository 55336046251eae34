//! The middleware's clock.

/// quanta's calibrated clock, read inline.
///
/// Two reads per request are the largest fixed item of the middleware's
/// cost. `quanta::Clock::raw` is not inlined across crates (a call and a
/// match per read); when quanta reads the TSC itself, this reads it with one
/// inline `rdtsc` and leaves the scaling to quanta, so readings are
/// interchangeable. Elsewhere (no invariant TSC, other architectures) it
/// calls quanta.
#[derive(Debug, Clone)]
pub(crate) struct RawClock {
    clock: quanta::Clock,
    tsc: bool,
}

impl RawClock {
    /// Calibrates quanta (once per process) and checks what it reads.
    pub(crate) fn new() -> Self {
        let clock = quanta::Clock::new();
        let tsc = reads_tsc(&clock);
        Self { clock, tsc }
    }

    /// A raw reading; see [`delta_as_nanos`](Self::delta_as_nanos).
    #[inline(always)]
    pub(crate) fn raw(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.tsc {
            return tsc();
        }
        self.clock.raw()
    }

    /// Nanoseconds between two raw readings (0 if `end` is not later).
    #[inline(always)]
    pub(crate) fn delta_as_nanos(&self, start: u64, end: u64) -> u64 {
        self.clock.delta_as_nanos(start, end)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
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

    #[test]
    fn inline_and_quanta_readings_agree() {
        let clock = RawClock::new();
        let a = clock.raw();
        let q = clock.clock.raw();
        let b = clock.raw();
        assert!(a <= b);
        if clock.tsc {
            assert!(a <= q && q <= b);
        }
        let start = clock.raw();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let nanos = clock.delta_as_nanos(start, clock.raw());
        assert!((10_000_000..1_000_000_000).contains(&nanos), "{nanos}");
    }
}
