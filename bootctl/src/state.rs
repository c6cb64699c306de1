//! The A/B boot state of DESIGN.md §4 as a value: decoded from an env block,
//! changed by typed transitions that refuse illegal moves, encoded back with
//! GRUB's own set algorithm.
//!
//! Every variable holds exactly one byte, so an encode into a block that already
//! holds the four variables is a same-length, in-place rewrite: only the value
//! bytes change, which is what GRUB's `save_env` needs (it rewrites raw sectors).

use crate::envblk::{self, EnvError};

pub use wire::Slot;

/// `A`, `B` or `N` (none), the encoding of `ab_trial` and `ab_fail`.
fn opt_slot_byte(s: Option<Slot>) -> u8 {
    s.map_or(b'N', Slot::as_byte)
}

pub const VAR_ACTIVE: &str = "ab_active";
pub const VAR_TRIAL: &str = "ab_trial";
pub const VAR_TRIES: &str = "ab_tries";
pub const VAR_FAIL: &str = "ab_fail";
/// The four variables, in the order they are created and saved.
pub const VARS: [&str; 4] = [VAR_ACTIVE, VAR_TRIAL, VAR_TRIES, VAR_FAIL];

/// Largest number of trial boots a single digit can count.
pub const MAX_TRIES: u8 = 9;
/// Trial boots armed when the caller does not say (DESIGN.md §4).
pub const DEFAULT_TRIES: u8 = 3;

/// Why a block does not hold a usable A/B state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// The block itself is unusable (bad signature, too short).
    Env(EnvError),
    /// A variable is absent.
    Missing(&'static str),
    /// A variable occurs more than once (only the strict decoder refuses this).
    Duplicate(&'static str),
    /// A variable's value is outside its domain.
    BadValue(&'static str),
    /// `ab_trial` names the committed slot, which no writer produces.
    TrialIsActive,
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateError::Env(e) => write!(f, "{e}"),
            StateError::Missing(v) => write!(f, "variable {v} is missing"),
            StateError::Duplicate(v) => write!(f, "variable {v} occurs more than once"),
            StateError::BadValue(v) => write!(f, "variable {v} has an invalid value"),
            StateError::TrialIsActive => f.write_str("ab_trial names the committed slot"),
        }
    }
}

impl From<EnvError> for StateError {
    fn from(e: EnvError) -> Self {
        StateError::Env(e)
    }
}

/// A transition the state machine refuses. The state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionError {
    /// A trial is already armed; confirm it or mark it failed first.
    TrialAlreadyArmed { trial: Slot },
    /// The slot named is the committed one; only the other slot can be tried.
    SlotIsActive { slot: Slot },
    /// The number of trial boots is outside 1..=9.
    TriesOutOfRange { tries: u8 },
    /// The slot named is not on trial (and, for confirm, not committed either).
    NotOnTrial { slot: Slot, trial: Option<Slot> },
    /// A rollback while a trial is armed would leave the trial dangling.
    TrialInProgress { trial: Slot },
}

impl core::fmt::Display for TransitionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TransitionError::TrialAlreadyArmed { trial } => write!(
                f,
                "a trial of slot {trial} is already armed; confirm or mark-failed it first"
            ),
            TransitionError::SlotIsActive { slot } => {
                write!(f, "slot {slot} is the committed slot; only the other slot can be tried")
            }
            TransitionError::TriesOutOfRange { tries } => {
                write!(f, "tries must be between 1 and {MAX_TRIES}, not {tries}")
            }
            TransitionError::NotOnTrial { slot, trial: Some(t) } => {
                write!(f, "slot {slot} is not on trial (slot {t} is)")
            }
            TransitionError::NotOnTrial { slot, trial: None } => {
                write!(f, "slot {slot} is not on trial (no trial is armed)")
            }
            TransitionError::TrialInProgress { trial } => write!(
                f,
                "a trial of slot {trial} is armed; confirm or mark-failed it instead of rolling back"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StateError {}
#[cfg(feature = "std")]
impl std::error::Error for TransitionError {}

/// The boot state held by each env copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbState {
    /// Committed slot: boots when nothing is on trial.
    pub active: Slot,
    /// Slot on trial, if any.
    pub trial: Option<Slot>,
    /// Trial boots left (0..=9).
    pub tries: u8,
    /// Last trial that failed, kept for the agent to report.
    pub fail: Option<Slot>,
}

/// How [`AbState::confirm`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The trial slot is now the committed slot.
    Committed,
    /// The slot was already committed and nothing was on trial; nothing changed.
    AlreadyCommitted,
}

impl AbState {
    /// A committed slot with no trial and no failure on record.
    pub fn new(active: Slot) -> Self {
        AbState {
            active,
            trial: None,
            tries: 0,
            fail: None,
        }
    }

    /// The four values, in [`VARS`] order, as GRUB stores them.
    pub fn encoded(&self) -> [(&'static str, u8); 4] {
        [
            (VAR_ACTIVE, self.active.as_byte()),
            (VAR_TRIAL, opt_slot_byte(self.trial)),
            (VAR_TRIES, b'0' + self.tries.min(MAX_TRIES)),
            (VAR_FAIL, opt_slot_byte(self.fail)),
        ]
    }

    /// Decodes the state the way the generated GRUB script does: for each
    /// variable the last occurrence wins (that is what `load_env` leaves set),
    /// then every value is checked against its domain.
    pub fn decode_grub(block: &[u8]) -> Result<AbState, StateError> {
        let mut bytes = [0u8; 4];
        for (i, var) in VARS.iter().enumerate() {
            let value = envblk::get(block, var.as_bytes())?.ok_or(StateError::Missing(var))?;
            bytes[i] = single_byte(value).ok_or(StateError::BadValue(var))?;
        }
        Self::from_bytes(bytes)
    }

    /// Decodes a block that a writer may rewrite in place: each variable must
    /// occur exactly once with a one-byte value, so setting new values moves
    /// nothing else in the block.
    pub fn decode_strict(block: &[u8]) -> Result<AbState, StateError> {
        let mut bytes = [None::<u8>; 4];
        for (name, value) in envblk::iter(block)? {
            let Some(i) = VARS.iter().position(|v| v.as_bytes() == name) else {
                continue;
            };
            if bytes[i].is_some() {
                return Err(StateError::Duplicate(VARS[i]));
            }
            if value.0.len() != 1 {
                return Err(StateError::BadValue(VARS[i]));
            }
            bytes[i] = Some(value.0[0]);
        }
        let mut out = [0u8; 4];
        for i in 0..4 {
            out[i] = bytes[i].ok_or(StateError::Missing(VARS[i]))?;
        }
        Self::from_bytes(out)
    }

    fn from_bytes([active, trial, tries, fail]: [u8; 4]) -> Result<AbState, StateError> {
        let active = Slot::from_byte(active).ok_or(StateError::BadValue(VAR_ACTIVE))?;
        let trial = parse_opt_slot(trial).ok_or(StateError::BadValue(VAR_TRIAL))?;
        if !tries.is_ascii_digit() {
            return Err(StateError::BadValue(VAR_TRIES));
        }
        let fail = parse_opt_slot(fail).ok_or(StateError::BadValue(VAR_FAIL))?;
        if trial == Some(active) {
            return Err(StateError::TrialIsActive);
        }
        Ok(AbState {
            active,
            trial,
            tries: tries - b'0',
            fail,
        })
    }

    /// Writes the four variables into `block` with GRUB's set algorithm, in
    /// [`VARS`] order. On a block accepted by [`decode_strict`](Self::decode_strict)
    /// only the four value bytes change.
    pub fn encode_into(&self, block: &mut [u8]) -> Result<(), EnvError> {
        for (name, value) in self.encoded() {
            envblk::set(block, name.as_bytes(), &[value])?;
        }
        Ok(())
    }

    /// A fresh `grub-editenv`-style block holding this state.
    pub fn to_block(&self) -> [u8; envblk::DEFAULT_SIZE] {
        let mut block = envblk::create();
        // Four short variables always fit in an empty 1024-byte block.
        self.encode_into(&mut block)
            .expect("four variables fit in a fresh block");
        block
    }

    /// The slot a boot without a trial (or after the trial is spent) uses.
    pub fn committed(&self) -> Slot {
        self.active
    }

    /// Arms a trial of `slot` with `tries` boots, clearing the failure record.
    pub fn arm_trial(&mut self, slot: Slot, tries: u8) -> Result<(), TransitionError> {
        if let Some(trial) = self.trial {
            return Err(TransitionError::TrialAlreadyArmed { trial });
        }
        if slot == self.active {
            return Err(TransitionError::SlotIsActive { slot });
        }
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(TransitionError::TriesOutOfRange { tries });
        }
        self.trial = Some(slot);
        self.tries = tries;
        self.fail = None;
        Ok(())
    }

    /// Makes the trial slot the committed slot. Confirming the committed slot
    /// when nothing is on trial is a no-op, so a repeated confirm is harmless.
    pub fn confirm(&mut self, slot: Slot) -> Result<Confirmed, TransitionError> {
        match self.trial {
            Some(t) if t == slot => {
                self.active = slot;
                self.trial = None;
                self.tries = 0;
                Ok(Confirmed::Committed)
            }
            None if self.active == slot => Ok(Confirmed::AlreadyCommitted),
            trial => Err(TransitionError::NotOnTrial { slot, trial }),
        }
    }

    /// Ends the trial of `slot` as failed: the committed slot boots next and the
    /// failure stays on record.
    pub fn mark_failed(&mut self, slot: Slot) -> Result<(), TransitionError> {
        if self.trial != Some(slot) {
            return Err(TransitionError::NotOnTrial {
                slot,
                trial: self.trial,
            });
        }
        self.trial = None;
        self.tries = 0;
        self.fail = Some(slot);
        Ok(())
    }

    /// Commits the other slot. Whether that slot holds a good image is for the
    /// caller to know (the agent checks its slot records); this only refuses to
    /// abandon an armed trial. Returns the newly committed slot.
    pub fn rollback(&mut self) -> Result<Slot, TransitionError> {
        if let Some(trial) = self.trial {
            return Err(TransitionError::TrialInProgress { trial });
        }
        self.active = self.active.other();
        self.tries = 0;
        self.fail = None;
        Ok(self.active)
    }
}

fn single_byte(value: envblk::RawValue<'_>) -> Option<u8> {
    let mut bytes = value.bytes();
    let b = bytes.next()?;
    bytes.next().is_none().then_some(b)
}

fn parse_opt_slot(b: u8) -> Option<Option<Slot>> {
    match b {
        b'N' => Some(None),
        other => Slot::from_byte(other).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trip() {
        let s = AbState {
            active: Slot::B,
            trial: Some(Slot::A),
            tries: 7,
            fail: Some(Slot::A),
        };
        let block = s.to_block();
        assert_eq!(AbState::decode_strict(&block), Ok(s));
        assert_eq!(AbState::decode_grub(&block), Ok(s));
    }

    #[test]
    fn encode_changes_only_value_bytes() {
        let mut block = AbState::new(Slot::A).to_block();
        let before = block;
        let mut s = AbState::new(Slot::A);
        s.arm_trial(Slot::B, 3).unwrap();
        s.encode_into(&mut block).unwrap();
        let changed: usize = before
            .iter()
            .zip(block.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 2, "ab_trial and ab_tries values only");
    }

    #[test]
    fn decode_rejects_bad_values() {
        let mut block = AbState::new(Slot::A).to_block();
        envblk::set(&mut block, b"ab_tries", b"x").unwrap();
        assert_eq!(
            AbState::decode_grub(&block),
            Err(StateError::BadValue(VAR_TRIES))
        );
        let mut block = AbState::new(Slot::A).to_block();
        envblk::set(&mut block, b"ab_trial", b"A").unwrap();
        assert_eq!(AbState::decode_grub(&block), Err(StateError::TrialIsActive));
        let mut block = AbState::new(Slot::A).to_block();
        envblk::unset(&mut block, b"ab_fail").unwrap();
        assert_eq!(
            AbState::decode_strict(&block),
            Err(StateError::Missing(VAR_FAIL))
        );
        let mut block = AbState::new(Slot::A).to_block();
        envblk::set(&mut block, b"ab_active", b"AB").unwrap();
        assert_eq!(
            AbState::decode_grub(&block),
            Err(StateError::BadValue(VAR_ACTIVE))
        );
    }

    #[test]
    fn strict_rejects_duplicates_grub_takes_last() {
        let mut block = AbState::new(Slot::A).to_block();
        let at = block.iter().rposition(|&c| c == b'\n').unwrap() + 1;
        block[at..at + 12].copy_from_slice(b"ab_active=B\n");
        assert_eq!(
            AbState::decode_strict(&block),
            Err(StateError::Duplicate(VAR_ACTIVE))
        );
        assert_eq!(AbState::decode_grub(&block).unwrap().active, Slot::B);
    }

    #[test]
    fn transitions() {
        let mut s = AbState::new(Slot::A);
        assert_eq!(
            s.arm_trial(Slot::A, 3),
            Err(TransitionError::SlotIsActive { slot: Slot::A })
        );
        assert_eq!(
            s.arm_trial(Slot::B, 0),
            Err(TransitionError::TriesOutOfRange { tries: 0 })
        );
        assert_eq!(
            s.arm_trial(Slot::B, 10),
            Err(TransitionError::TriesOutOfRange { tries: 10 })
        );
        assert_eq!(
            s.mark_failed(Slot::B),
            Err(TransitionError::NotOnTrial {
                slot: Slot::B,
                trial: None
            })
        );
        s.arm_trial(Slot::B, 3).unwrap();
        assert_eq!(
            s.arm_trial(Slot::B, 3),
            Err(TransitionError::TrialAlreadyArmed { trial: Slot::B })
        );
        assert_eq!(
            s.rollback(),
            Err(TransitionError::TrialInProgress { trial: Slot::B })
        );
        assert_eq!(
            s.confirm(Slot::A),
            Err(TransitionError::NotOnTrial {
                slot: Slot::A,
                trial: Some(Slot::B)
            })
        );
        assert_eq!(s.confirm(Slot::B), Ok(Confirmed::Committed));
        assert_eq!(s, AbState::new(Slot::B));
        assert_eq!(s.confirm(Slot::B), Ok(Confirmed::AlreadyCommitted));
        s.arm_trial(Slot::A, 2).unwrap();
        s.mark_failed(Slot::A).unwrap();
        assert_eq!(
            s,
            AbState {
                active: Slot::B,
                trial: None,
                tries: 0,
                fail: Some(Slot::A)
            }
        );
        assert_eq!(s.rollback(), Ok(Slot::A));
        assert_eq!(s, AbState::new(Slot::A));
    }
}
