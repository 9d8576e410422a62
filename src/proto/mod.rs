//! Protocol rules that need no I/O: duplicate suppression and the sync
//! dictionary's lease and merge rules. Clocks are passed in.

pub mod seen;

pub mod sync;
