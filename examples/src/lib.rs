//! Lanyard examples.
