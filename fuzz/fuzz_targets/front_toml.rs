//! Fuzzes the toml front end through lowering, error rendering and the DSL emitter.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check("fuzz.toml", data));
