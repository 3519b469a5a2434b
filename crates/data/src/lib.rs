//! Pair data (issue 4).
