//! One file per detector.

mod fd;
mod feature;
mod hung_task;
mod oom;
mod oops;
