//! One file per detector.

mod fd;
mod feature;
