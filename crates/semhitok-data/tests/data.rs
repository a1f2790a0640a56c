//! Integration tests of semhitok-data (one binary). All fixtures are generated here.

mod data {
    pub mod common;
    mod decode;
    mod photos;
    mod sampling;
    mod sources;
    mod stream;
    mod transform;
}
