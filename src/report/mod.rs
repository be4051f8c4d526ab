//! What a run leaves for people besides its bundle: TensorBoard event files.

pub mod tensorboard;
