//! Probes a daemon attaches for part of each window only (duty cycles): the syscall probes and
//! the socket receive probe run on calls every process on the host makes, so while attached
//! they cost all of them, and detached, none. What they count while attached is scaled to the
//! window by the time they were attached, which a [`Cycle`] keeps.

use std::{
    fmt,
    time::{Duration, Instant},
};

use agent_ebpf::{maps, start};
use aya::{
    Ebpf,
    programs::{
        Program, ProgramError, raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId,
    },
};

use crate::error::ProbeError;

/// The probes that may be cycled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cycled {
    /// `sys_enter`/`sys_exit` (`syscall_duty_cycle`).
    Syscalls,
    /// `sock_recv_length` (`socket_receive_duty_cycle`).
    Receives,
}

impl Cycled {
    /// The probe group the programs belong to.
    pub fn group(self) -> &'static str {
        match self {
            Self::Syscalls => "syscalls",
            Self::Receives => "net",
        }
    }

    /// What they are, in messages.
    pub fn what(self) -> &'static str {
        match self {
            Self::Syscalls => "syscall probes",
            Self::Receives => "socket receive probe",
        }
    }

    /// The configuration key that sets their share of each window.
    pub fn key(self) -> &'static str {
        match self {
            Self::Syscalls => "syscall_duty_cycle",
            Self::Receives => "socket_receive_duty_cycle",
        }
    }
}

/// An attached program's link, to detach it by.
pub enum Link {
    Raw(RawTracePointLinkId),
    Typed(BtfTracePointLinkId),
}

/// A program as attached at load: the program itself or its raw twin.
pub struct Attached {
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub link: Link,
}

/// One program's attach or detach, and how long the kernel took over it: a change of the probes
/// blocks the agent's loop for as long as its steps take (the bench found one taking seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub program: &'static str,
    pub attach: bool,
    pub took: Duration,
}

impl Step {
    /// A step that began at `started` and has just ended.
    fn since(program: &'static str, attach: bool, started: Instant) -> Self {
        Self {
            program,
            attach,
            took: started.elapsed(),
        }
    }

    /// The slower of two steps.
    pub fn slower(a: Option<Step>, b: Option<Step>) -> Option<Step> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.took > a.took { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn verb(self) -> &'static str {
        if self.attach {
            "attaching"
        } else {
            "detaching"
        }
    }

    /// `attaching|detaching PROGRAM NS`: the form the bench toggle's log lines carry.
    pub fn words(self) -> String {
        format!("{} {} {}", self.verb(), self.program, self.took.as_nanos())
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} took {:.1} ms",
            self.verb(),
            self.program,
            self.took.as_secs_f64() * 1e3
        )
    }
}

/// Programs attached and detached together. Each attach may get a new number (the syscall
/// probes' `SYSCALL_PHASE`, so their programs tell a call begun in this attach from one left
/// over from an earlier one), and a flag map tells the other programs whether these run
/// (`ON_CPU_KEPT`, `RECEIVES_SEEN`): 1 only once all are attached, 0 before any is detached.
pub struct Cycle {
    /// What the programs are, in messages.
    what: &'static str,
    programs: Vec<(&'static str, &'static str)>,
    links: Vec<Link>,
    flag: Option<&'static str>,
    phase: Option<u32>,
    /// Monotonic ns of the current attach; `None` while detached.
    since: Option<u64>,
    /// Start of the window being measured, and the attached time already ended in it.
    window_start: u64,
    banked_ns: u64,
}

impl Cycle {
    /// The syscall probes' first attach number; set before they are first attached.
    pub fn first_phase(ebpf: &mut Ebpf) -> Result<u32, ProbeError> {
        super::set_scalar(ebpf, maps::SYSCALL_PHASE, 1_u32)?;
        Ok(1)
    }

    /// Programs as [`super::Probes::load`] attached them at `now`; `what` they are, in
    /// messages. `flag`: the map set to 1 while they run; `phase`: the number of this attach,
    /// for the syscall probes.
    pub fn attached(
        ebpf: &mut Ebpf,
        what: &'static str,
        attached: Vec<Attached>,
        flag: Option<&'static str>,
        phase: Option<u32>,
        now: u64,
    ) -> Result<Self, ProbeError> {
        if let Some(flag) = flag {
            super::set_scalar(ebpf, flag, 1_u32)?;
        }
        let (programs, links) = attached
            .into_iter()
            .map(|a| ((a.program, a.tracepoint), a.link))
            .unzip();
        Ok(Self {
            what,
            programs,
            links,
            flag,
            phase,
            since: Some(now),
            window_start: now,
            banked_ns: 0,
        })
    }

    /// Attaches the programs again (under a new number, if numbered); returns the slowest
    /// program step, if it attached any.
    pub fn attach(&mut self, ebpf: &mut Ebpf, now: u64) -> Result<Option<Step>, ProbeError> {
        if self.since.is_some() {
            return Ok(None);
        }
        if let Some(phase) = self.phase.as_mut() {
            *phase = *phase % start::PHASE_MASK as u32 + 1;
            super::set_scalar(ebpf, maps::SYSCALL_PHASE, *phase)?;
        }
        let mut slowest = None;
        for &(program, tracepoint) in &self.programs {
            let started = Instant::now();
            let link = match ebpf.program_mut(program) {
                Some(Program::BtfTracePoint(p)) => p.attach().map(Link::Typed),
                Some(Program::RawTracePoint(p)) => p.attach(tracepoint).map(Link::Raw),
                _ => Err(ProgramError::UnexpectedProgramType),
            }
            .map_err(|e| cycle_error(self.what, program, tracepoint, &e))?;
            self.links.push(link);
            slowest = Step::slower(slowest, Some(Step::since(program, true, started)));
        }
        self.since = Some(now);
        // Only now, with every program in place, is what the flag promises true.
        if let Some(flag) = self.flag {
            super::set_scalar(ebpf, flag, 1_u32)?;
        }
        Ok(slowest)
    }

    /// Detaches the programs: from here on no call on the host pays for them. Also takes off
    /// what a failed [`Self::attach`] left attached. Returns the slowest program step, if it
    /// detached any.
    pub fn detach(&mut self, ebpf: &mut Ebpf, now: u64) -> Result<Option<Step>, ProbeError> {
        if let Some(since) = self.since.take() {
            if let Some(flag) = self.flag {
                super::set_scalar(ebpf, flag, 0_u32)?;
            }
            self.banked_ns += now.saturating_sub(since.max(self.window_start));
        }
        let links: Vec<Link> = self.links.drain(..).collect();
        let mut slowest = None;
        for (&(program, tracepoint), link) in self.programs.iter().zip(links) {
            let started = Instant::now();
            let result = match (ebpf.program_mut(program), link) {
                (Some(Program::BtfTracePoint(p)), Link::Typed(link)) => p.detach(link),
                (Some(Program::RawTracePoint(p)), Link::Raw(link)) => p.detach(link),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            result.map_err(|e| cycle_error(self.what, program, tracepoint, &e))?;
            slowest = Step::slower(slowest, Some(Step::since(program, false, started)));
        }
        Ok(slowest)
    }

    /// How long the programs were attached since the last call (or since they were first
    /// attached), up to `now`; the next window starts at `now`.
    pub fn take_attached_ns(&mut self, now: u64) -> u64 {
        let open = self
            .since
            .map_or(0, |since| now.saturating_sub(since.max(self.window_start)));
        let total = self.banked_ns + open;
        self.banked_ns = 0;
        self.window_start = now;
        total
    }
}

fn cycle_error(
    what: &'static str,
    program: &str,
    tracepoint: &str,
    e: &ProgramError,
) -> ProbeError {
    ProbeError::Cycle {
        what,
        reason: format!(
            "{program} on tracepoint {tracepoint}: {}",
            super::error_chain(e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Step;

    #[test]
    fn the_slower_step_is_kept_and_named_with_its_time() {
        let step = |program, ms: u64| Step {
            program,
            attach: false,
            took: Duration::from_micros(ms * 1000 + 250),
        };
        let (fast, slow) = (step("sock_recv_length", 1), step("sys_enter", 3012));
        assert_eq!(Step::slower(Some(fast), Some(slow)), Some(slow));
        assert_eq!(Step::slower(Some(slow), Some(fast)), Some(slow));
        assert_eq!(Step::slower(None, Some(fast)), Some(fast));
        assert_eq!(Step::slower(None, None), None);
        assert_eq!(slow.to_string(), "detaching sys_enter took 3012.2 ms");
        assert_eq!(slow.words(), "detaching sys_enter 3012250000");
    }
}
