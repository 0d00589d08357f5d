//! Probes a daemon attaches for part of each window only (duty cycles): the syscall probes and
//! the socket receive probe run on calls every process on the host makes, so while attached
//! they cost all of them, and detached, none. What they count while attached is scaled to the
//! window by the time they were attached, which a [`Cycle`] keeps.

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

    /// Attaches the programs again (under a new number, if numbered).
    pub fn attach(&mut self, ebpf: &mut Ebpf, now: u64) -> Result<(), ProbeError> {
        if self.since.is_some() {
            return Ok(());
        }
        if let Some(phase) = self.phase.as_mut() {
            *phase = *phase % start::PHASE_MASK as u32 + 1;
            super::set_scalar(ebpf, maps::SYSCALL_PHASE, *phase)?;
        }
        for &(program, tracepoint) in &self.programs {
            let link = match ebpf.program_mut(program) {
                Some(Program::BtfTracePoint(p)) => p.attach().map(Link::Typed),
                Some(Program::RawTracePoint(p)) => p.attach(tracepoint).map(Link::Raw),
                _ => Err(ProgramError::UnexpectedProgramType),
            }
            .map_err(|e| cycle_error(self.what, program, tracepoint, &e))?;
            self.links.push(link);
        }
        self.since = Some(now);
        // Only now, with every program in place, is what the flag promises true.
        if let Some(flag) = self.flag {
            super::set_scalar(ebpf, flag, 1_u32)?;
        }
        Ok(())
    }

    /// Detaches the programs: from here on no call on the host pays for them. Also takes off
    /// what a failed [`Self::attach`] left attached.
    pub fn detach(&mut self, ebpf: &mut Ebpf, now: u64) -> Result<(), ProbeError> {
        if let Some(since) = self.since.take() {
            if let Some(flag) = self.flag {
                super::set_scalar(ebpf, flag, 0_u32)?;
            }
            self.banked_ns += now.saturating_sub(since.max(self.window_start));
        }
        let links: Vec<Link> = self.links.drain(..).collect();
        for (&(program, tracepoint), link) in self.programs.iter().zip(links) {
            let result = match (ebpf.program_mut(program), link) {
                (Some(Program::BtfTracePoint(p)), Link::Typed(link)) => p.detach(link),
                (Some(Program::RawTracePoint(p)), Link::Raw(link)) => p.detach(link),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            result.map_err(|e| cycle_error(self.what, program, tracepoint, &e))?;
        }
        Ok(())
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
