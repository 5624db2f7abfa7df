pub mod cpu;
pub mod gpu;
pub mod model;
