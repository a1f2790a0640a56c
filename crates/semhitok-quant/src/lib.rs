//! SemHiTok codebook math on the CPU (no LibTorch): nearest-code search, SGHC hierarchical
//! search, unified ids, codebook learning and usage statistics.
