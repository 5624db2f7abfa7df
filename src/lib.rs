pub mod cpu;
pub mod model;
