//! LLaVA-style understanding and autoregressive text-to-image glue around SemHiTok ids.
