//! Fuzzes the toml front end through lowering and error rendering: any bytes must give
//! a model or errors, never a panic, hang or crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multigate::pipeline::compile_source;
use multigate::source::SourceFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let src = SourceFile::from_text("fuzz.toml", text);
    match compile_source(&src) {
        Ok(c) => {
            let _ = c.model.to_string();
            let _ = multigate::spec::to_dsl(&multigate::spec::parse(&src).expect("compiled, so it parses"));
        }
        Err(e) => {
            let _ = e.render(Some(&src), false);
        }
    }
});
