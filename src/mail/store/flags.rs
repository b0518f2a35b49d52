//! The flags a Maildir file name carries after `:2,`.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// A set of Maildir flags: one ASCII letter each, written after `:2,` in ASCII order.
/// Besides the six standard flags it keeps any other letter it is given (the
/// lowercase letters are the IMAP keywords other Maildir programs assign), so a flag
/// change never drops what another client set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u64);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// `D`: the message is a draft (IMAP `\Draft`).
    pub const DRAFT: Flags = Flags::upper(b'D');
    /// `F`: flagged for urgent attention (IMAP `\Flagged`).
    pub const FLAGGED: Flags = Flags::upper(b'F');
    /// `P`: passed on, resent or forwarded.
    pub const PASSED: Flags = Flags::upper(b'P');
    /// `R`: replied to (IMAP `\Answered`).
    pub const REPLIED: Flags = Flags::upper(b'R');
    /// `S`: seen (IMAP `\Seen`).
    pub const SEEN: Flags = Flags::upper(b'S');
    /// `T`: trashed, to be expunged (IMAP `\Deleted`).
    pub const TRASHED: Flags = Flags::upper(b'T');

    const fn upper(letter: u8) -> Flags {
        Flags(1 << (letter - b'A'))
    }

    /// The flag written as `letter`, or `None` when it is not an ASCII letter.
    pub fn letter(letter: char) -> Option<Flags> {
        match letter {
            'A'..='Z' => Some(Flags(1 << (letter as u32 - 'A' as u32))),
            'a'..='z' => Some(Flags(1 << (26 + letter as u32 - 'a' as u32))),
            _ => None,
        }
    }

    /// The flags named by the letters in `letters` (what follows `:2,`); characters
    /// that are not ASCII letters are ignored.
    pub fn from_letters(letters: &str) -> Flags {
        letters
            .chars()
            .filter_map(Flags::letter)
            .fold(Flags::NONE, BitOr::bitor)
    }

    /// Whether every flag in `other` is set here.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags with those in `other` cleared.
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, other: Flags) {
        self.0 |= other.0;
    }
}

/// The letters in ASCII order, as they appear after `:2,` (empty when none is set).
impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for bit in 0..52u8 {
            if self.0 & (1 << bit) != 0 {
                let letter = if bit < 26 {
                    b'A' + bit
                } else {
                    b'a' + bit - 26
                };
                write!(f, "{}", letter as char)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({self})")
    }
}
