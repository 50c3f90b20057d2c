//! The manifest parser against hostile input: arbitrary text and random edits of a full manifest
//! never panic, and every diagnostic points inside the file.

use std::path::Path;

use proptest::prelude::*;

const FULL: &str = include_str!("ui/north_star_example.toml");

fn check(text: &str) -> Result<(), TestCaseError> {
    match nimbus_config::parse(Path::new("nimbus.toml"), text) {
        Ok(_) => Ok(()),
        Err(e) => {
            let lines = text.split('\n').count();
            for d in e.diagnostics() {
                prop_assert!(d.line >= 1 && d.line <= lines, "line {} of {lines}: {d}", d.line);
                prop_assert!(d.column >= 1, "{d}");
                prop_assert!(!d.message.is_empty());
            }
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        check(&text)?;
    }

    #[test]
    fn edited_manifests_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), "[\\PC\n\"'=\\[\\]{}.,#$]{0,6}", 0usize..8), 1..6)
    ) {
        let mut text = FULL.to_owned();
        for (at, insert, delete) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut end = (i + delete).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(i..end, &insert);
        }
        check(&text)?;
    }
}
