//! Integration tests of semhitok-data (one binary). All fixtures are generated here.

mod data {
    pub mod common;
    mod photos;
}
