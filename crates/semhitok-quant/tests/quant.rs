//! Integration tests of semhitok-quant: properties against brute force written plainly here.

mod quant {
    pub mod ema;
    pub mod io;
    pub mod kmeans;
    pub mod search;
    pub mod sghc;
    pub mod usage;
}
