//! Pure routing: (workflow, item, stage, outcome) -> next stage. No IO.
