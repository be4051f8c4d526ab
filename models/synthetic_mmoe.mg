// MMoE: 8 experts x 16 units shared by both tasks, one softmax gate per task.
// Sizes follow the MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3.2):
// d = 100 inputs, towers of 8 hidden units; shared-bottom uses 113 units so that the
// three models have about the same number of parameters.

model synthetic_mmoe {
  data synthetic(test_fraction = 0.1)

  feature x: dense(width = 100)

  layer mmoe { experts 8 x [16] relu }

  task y1: regression(label = "y1") tower [8]
  task y2: regression(label = "y2") tower [8]

  train { adam batch 256 epochs 30 seed 42 }
}
