//! What a run leaves for people besides its bundle: TensorBoard event files, PNG
//! learning curves and gate heatmaps.

pub mod events;
pub mod plots;
pub mod tensorboard;
