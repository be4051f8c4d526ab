//! The body both fuzz targets share: any text, read as the file `name`, must give a
//! model (whose IR prints and whose spec re-emits as DSL) or rendered errors, never a
//! panic, hang or crash.

use multigate::pipeline::compile_source;
use multigate::source::SourceFile;

pub fn check(name: &str, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let src = SourceFile::from_text(name, text);
    match compile_source(&src) {
        Ok(c) => {
            let _ = c.model.to_string();
            let _ = multigate::spec::to_dsl(&multigate::spec::parse(&src).expect("compiled, so it parses"));
        }
        Err(e) => {
            let _ = e.render(Some(&src), false);
        }
    }
}
