//! Arbitrary bytes as a GGUF file: parsing may fail, but must never panic, hang or allocate
//! without bound; whatever parses must also be safe to read a model config from.
#![no_main]

use edgechat::gguf::{GgufFile, MemorySource};
use edgechat::model::LlamaConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = MemorySource::new(data.to_vec());
    if let Ok(file) = GgufFile::read(&source) {
        let _ = LlamaConfig::from_gguf(&file);
        for info in &file.tensors {
            // Bounds were checked at parse time: reading every tensor must succeed.
            let bytes = file.tensor_bytes(&source, info).expect("a parsed tensor lies inside the file");
            assert_eq!(bytes.len() as u64, info.n_bytes);
        }
    }
});
