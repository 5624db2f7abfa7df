//! Building blocks of `vitk pretrain` (masked image modelling): the reconstructions picture.
//! The colour objective's ops are `cpu::mim_colour` and `gpu::kernels::mim_colour`.

pub mod reconstructions;
