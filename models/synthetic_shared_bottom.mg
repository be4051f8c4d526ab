// Shared-bottom: one 113-unit MLP under both towers (no gate).
// Sizes follow the MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3.2):
// d = 100 inputs, towers of 8 hidden units; shared-bottom uses 113 units so that the
// three models have about the same number of parameters.

model synthetic_shared_bottom {
  data synthetic(test_fraction = 0.1)

  feature x: dense(width = 100)

  layer shared_bottom { units [113] relu }

  task y1: regression(label = "y1") tower [8]
  task y2: regression(label = "y2") tower [8]

  train { adam batch 256 epochs 30 seed 42 }
}
