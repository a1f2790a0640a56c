//! SemHiTok data pipelines. The only crate of the workspace that opens dataset files.
