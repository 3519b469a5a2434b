//! Position rules typed at the command line or stored in an export: `last`, `all`, a token index
//! (negative counts from the end), or pyreft's `f<k>` / `l<k>` (the first / last k tokens),
//! joinable with `+` as in `f5+l5`.

/// A position rule that does not fit the sequence it is resolved against; the message names the
/// rule and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position `{rule}` for the {what}: {reason}")]
pub struct PositionError {
    /// The rule as written.
    pub rule: String,
    /// What the positions are for (`prompt`, `source`).
    pub what: String,
    /// What is wrong and how to write it.
    pub reason: String,
}

/// Resolves position rules against a sequence of `len` tokens (`what` names the sequence in
/// errors). Positions come out in order, each once.
pub fn resolve(specs: &[String], len: usize, what: &str) -> Result<Vec<usize>, PositionError> {
    let mut out = Vec::new();
    for spec in specs {
        for rule in spec.split('+').map(str::trim) {
            out.extend(resolve_one(rule, len).map_err(|reason| PositionError {
                rule: rule.to_string(),
                what: what.to_string(),
                reason,
            })?);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// One rule without `+`.
fn resolve_one(s: &str, len: usize) -> Result<Vec<usize>, String> {
    let count = |k: &str| -> Result<usize, String> {
        let k: usize = k.parse().map_err(|_| "`f` and `l` take a token count, as in f5 or l5".to_string())?;
        if k == 0 || k > len {
            return Err(format!("asks for {k} tokens of a sequence that has {len}"));
        }
        Ok(k)
    };
    if let Some(k) = s.strip_prefix('f').filter(|k| !k.is_empty()) {
        return Ok((0..count(k)?).collect());
    }
    if let Some(k) = s.strip_prefix('l').filter(|k| !k.is_empty() && *k != "ast") {
        return Ok((len - count(k)?..len).collect());
    }
    if s == "all" {
        return Ok((0..len).collect());
    }
    let i: i64 = if s == "last" {
        len as i64 - 1
    } else {
        s.parse().map_err(|_| {
            "write `last`, `all`, a token index (negative counts from the end), or f<k>/l<k> (first/last k tokens)"
                .to_string()
        })?
    };
    let i = if i < 0 { len as i64 + i } else { i };
    if i < 0 || i >= len as i64 {
        return Err(format!("outside the sequence, which has {len} tokens"));
    }
    Ok(vec![i as usize])
}

#[cfg(test)]
mod tests {
    use super::resolve;

    fn r(specs: &[&str], len: usize) -> Result<Vec<usize>, String> {
        resolve(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), len, "prompt").map_err(|e| e.to_string())
    }

    #[test]
    fn position_rules_resolve_like_pyreft() {
        assert_eq!(r(&["last"], 5).unwrap(), vec![4]);
        assert_eq!(r(&["0", "-2"], 5).unwrap(), vec![0, 3]);
        assert_eq!(r(&["f2+l2"], 10).unwrap(), vec![0, 1, 8, 9]);
        assert_eq!(r(&["f3+l3"], 4).unwrap(), vec![0, 1, 2, 3], "overlapping rules give each position once");
        assert_eq!(r(&["all"], 3).unwrap(), vec![0, 1, 2]);
        let e = r(&["f6"], 5).unwrap_err();
        assert!(e.contains("asks for 6 tokens") && e.contains("`f6`") && e.contains("prompt"), "{e}");
        assert!(r(&["7"], 5).unwrap_err().contains("outside the sequence"));
        assert!(r(&["middle"], 5).unwrap_err().contains("f<k>/l<k>"));
    }
}
