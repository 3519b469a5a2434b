//! Interventions (issue 3).
