//! SemHiTok two-stage trainer.
