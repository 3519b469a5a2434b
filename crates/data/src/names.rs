//! Names that come from data (a suite's tasks) and become file or folder names: the one check
//! they all go through, so that no name can leave the run folder or collide with another.

/// Checks that `name` can be used as it is as one file or folder name on any common file
/// system: not empty, at most 200 bytes, no `/` or `\`, no `..`, no leading dot, no control
/// characters and none of `<>:"|?*` (refused on Windows). Returns why not.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 200 {
        "it is longer than 200 bytes"
    } else if name.contains('/') || name.contains('\\') {
        "it contains a path separator (`/` or `\\`)"
    } else if name.contains("..") {
        "it contains `..`"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if name.chars().any(|c| c.is_control()) {
        "it contains a control character"
    } else if name.chars().any(|c| "<>:\"|?*".contains(c)) {
        "it contains one of < > : \" | ? *"
    } else {
        return Ok(());
    };
    Err(format!("{why}; such a name becomes a file name: use letters, digits, `_`, `-` and single dots"))
}

/// The first two of `names` that only differ in case (they would be one file on macOS and
/// Windows), if any.
pub fn case_collision<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<(&'a str, &'a str)> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for n in names {
        if let Some(first) = seen.insert(n.to_lowercase(), n) {
            return Some((first, n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_a_folder_are_refused() {
        for ok in ["agr_gender", "npi-any.v2", "Tâche_1"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../../../../escaped_task",
            "a/b",
            "a\\b",
            "..",
            ".hidden",
            "a..b",
            "tab\there",
            "a:b",
            "x\u{0}y",
            &"x".repeat(201),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(case_collision(["Task", "other", "task"]), Some(("Task", "task")));
        assert_eq!(case_collision(["a", "b"]), None);
    }
}
