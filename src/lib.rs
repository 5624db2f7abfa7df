pub mod cpu;
pub mod data;
pub mod model;
