#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod error;
pub mod value;
pub mod wire;

pub use error::{DecodeError, Error, Result, ValueError};
pub use value::{from_value, to_value, Integer, Value};
