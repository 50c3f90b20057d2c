//! Embeds the SDKs (`sdk/python/nimbus`, `sdk/node/nimbus`) in the binary, so a user's function
//! needs no `pip install` or `npm install` of ours: the host writes them into the data dir.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "__pycache__" && name != "node_modules" {
                collect(&path, root, out);
            }
        } else if name.ends_with(".py") || name.ends_with(".js") || name == "package.json" {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((rel, path));
        }
    }
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let sdk = manifest_dir.join("../../sdk").canonicalize().expect("the sdk folder sits at the repository root");
    let mut files = Vec::new();
    for package in ["python/nimbus", "node/nimbus"] {
        collect(&sdk.join(package), &sdk, &mut files);
        println!("cargo:rerun-if-changed={}", sdk.join(package).display());
    }
    let mut code = String::from(
        "/// The SDK files, by path relative to `sdk/`.\npub(crate) static SDK_FILES: &[(&str, &[u8])] = &[\n",
    );
    for (rel, path) in &files {
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("sdk_files.rs");
    std::fs::write(out, code).expect("write sdk_files.rs");
}
