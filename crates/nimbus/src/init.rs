//! `nimbus init`: writes a runnable app folder (a manifest and one HTTP function) so that
//! `nimbus up` has something to serve. Existing files are never overwritten without `--force`.

use std::path::Path;

use anyhow::{Context, anyhow};

use crate::Failure;
use crate::cli::{InitArgs, Template};

pub fn run(args: InitArgs) -> Result<(), Failure> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = app_name(&dir);
    let files = files(args.template, &name);
    if !args.force {
        let existing: Vec<_> = files.iter().map(|(p, _)| *p).filter(|p| dir.join(p).exists()).collect();
        if !existing.is_empty() {
            return Err(anyhow!(
                "{} already has {}; use --force to overwrite",
                dir.display(),
                existing.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            )
            .into());
        }
    }
    for (path, contents) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        println!("created {}", path.display());
    }
    println!("\nNext: nimbus up {}", dir.display());
    Ok(())
}

fn files(template: Template, name: &str) -> Vec<(&'static str, String)> {
    let (runtime, entry, code) = match template {
        Template::Python => ("python", "functions/app.py", PYTHON_APP),
        Template::Node => ("node", "functions/app.js", NODE_APP),
    };
    let manifest = format!(
        r#"# The app manifest; every section is described in the Nimbus README.
[app]
name = "{name}"

[workers.main]                  # the code; functions are declared in it with the SDK
runtime = "{runtime}"
entry = "{entry}"

[[routes]]                      # gateway policy: anyone may call /hello
path = "/hello"
auth = "anonymous"
"#
    );
    vec![("nimbus.toml", manifest), (entry, code.to_owned()), (".gitignore", ".nimbus/\n".to_owned())]
}

const PYTHON_APP: &str = r#"import nimbus

app = nimbus.App()


@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    return {"hello": req.query.get("name", "world")}
"#;

const NODE_APP: &str = r#"const { App } = require("nimbus");

const app = new App();

app.http("/hello", { methods: ["GET"] }, async (req, ctx) => ({
  hello: req.query.get("name") ?? "world",
}));

module.exports = app;
"#;

/// The folder's name made into a valid app name (lowercase letters, digits, `-`, `_`).
fn app_name(dir: &Path) -> String {
    let raw = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let cleaned: String =
        raw.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '-' }).collect();
    let trimmed = cleaned.trim_matches(|c| c == '-' || c == '_');
    let name: String = trimmed.chars().take(63).collect();
    if name.is_empty() { "app".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_valid() {
        assert_eq!(app_name(Path::new("/x/My Chat App")), "my-chat-app");
        assert_eq!(app_name(Path::new("/x/__")), "app");
        assert_eq!(app_name(Path::new("/x/été")), "t");
    }

    #[test]
    fn templates_pass_validation() {
        for template in [Template::Python, Template::Node] {
            let files = files(template, "demo");
            let manifest = &files[0].1;
            nimbus_config::parse(Path::new("nimbus.toml"), manifest).unwrap();
        }
    }
}
