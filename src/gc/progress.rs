//! How long-running passes (GC, verify) report progress: the command line draws bars, tests
//! and the scheduled GC of `serve` draw nothing.

/// Progress of a pass made of phases.
pub trait Progress: Send + Sync {
    /// A phase starts; `total` is the number of steps, when known.
    fn start(&self, phase: &str, total: Option<u64>);
    /// `steps` more steps of the current phase are done.
    fn advance(&self, steps: u64);
    /// The current phase is done; `summary` says what it did.
    fn finish(&self, summary: &str);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: Option<u64>) {}
    fn advance(&self, _steps: u64) {}
    fn finish(&self, _summary: &str) {}
}
